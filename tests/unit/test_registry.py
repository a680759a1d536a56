"""The Cactus registry and the free ``dispatch`` function."""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from dominoes import ApplySuspendedError, Context, Mode, Service
from dominoes.lowlevel import Binding, Registry, dispatch


def make_ctx() -> Context:
    """A real context over an empty service's machine (dispatch needs no more)."""
    machine = Service("registry-tests").new_machine(0)
    return Context(machine, seq=1, now=0.0, origin=0, mode=Mode.AFFINITY, is_owner=True)


def recorder(trace: list[str], tag: str, result: Any = None) -> Callable[..., Any]:
    def handler(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        trace.append(tag)
        return result

    handler.__qualname__ = f"handler_{tag}"
    return handler


def bindings(*handlers: Callable[..., Any]) -> tuple[Binding, ...]:
    """Bindings in the given order, built by hand (no registry)."""
    return tuple(Binding(0, i, "e", h, {}) for i, h in enumerate(handlers, 1))


# --- bind order -----------------------------------------------------------------


def test_handlers_are_kept_in_ascending_order() -> None:
    reg = Registry()
    trace: list[str] = []
    reg.bind("e", recorder(trace, "five"), order=5)
    reg.bind("e", recorder(trace, "minus-one"), order=-1)
    reg.bind("e", recorder(trace, "zero"))
    reg.bind("e", recorder(trace, "half"), order=0.5)

    assert [b.order for b in reg.handlers("e")] == [-1, 0, 0.5, 5]


def test_equal_orders_keep_bind_order() -> None:
    reg = Registry()
    trace: list[str] = []
    first = recorder(trace, "first")
    second = recorder(trace, "second")
    early = recorder(trace, "early")
    third = recorder(trace, "third")
    reg.bind("e", first, order=1)
    reg.bind("e", second, order=1)
    reg.bind("e", early, order=0)
    reg.bind("e", third, order=1)

    assert [b.handler for b in reg.handlers("e")] == [early, first, second, third]


def test_handlers_is_one_tuple_built_at_bind_time() -> None:
    reg = Registry()
    reg.bind("e", recorder([], "a"), order=2)
    reg.bind("e", recorder([], "b"), order=1)

    got = reg.handlers("e")
    assert type(got) is tuple
    # No copy or sort on lookup: the same tuple until the next bind/unbind.
    assert reg.handlers("e") is got
    reg.bind("e", recorder([], "c"), order=0)
    assert reg.handlers("e") is not got
    assert [b.order for b in reg.handlers("e")] == [0, 1, 2]


def test_dispatch_never_sorts() -> None:
    trace: list[str] = []
    late = Binding(10, 1, "e", recorder(trace, "late"), {})
    early = Binding(-10, 2, "e", recorder(trace, "early"), {})

    dispatch((late, early), make_ctx(), (), {})

    assert trace == ["late", "early"]


def test_unknown_event_has_no_handlers() -> None:
    reg = Registry()
    assert reg.handlers("nothing") == ()
    assert "nothing" not in reg
    assert len(reg) == 0


def test_bind_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="not callable"):
        Registry().bind("e", 42)  # type: ignore[arg-type]


def test_events_lists_bound_event_names() -> None:
    reg = Registry()
    reg.bind("b", recorder([], "x"))
    reg.bind("a", recorder([], "y"))
    reg.bind("b", recorder([], "z"))

    assert reg.events() == ["a", "b"]
    assert len(reg) == 3


# --- unbind -----------------------------------------------------------------------


def test_unbind_removes_only_that_binding() -> None:
    reg = Registry()
    trace: list[str] = []
    keep1 = reg.bind("e", recorder(trace, "keep1"), order=1)
    drop = reg.bind("e", recorder(trace, "drop"), order=1)
    keep2 = reg.bind("e", recorder(trace, "keep2"), order=1)

    reg.unbind(drop)

    assert [b.id for b in reg.handlers("e")] == [keep1, keep2]
    dispatch(reg.handlers("e"), make_ctx(), (), {})
    assert trace == ["keep1", "keep2"]


def test_unbinding_the_last_handler_forgets_the_event() -> None:
    reg = Registry()
    bid = reg.bind("e", recorder([], "only"))

    reg.unbind(bid)

    assert "e" not in reg
    assert reg.handlers("e") == ()
    assert reg.events() == []


def test_unbind_of_an_unknown_id_raises_key_error() -> None:
    reg = Registry()
    bid = reg.bind("e", recorder([], "x"))
    reg.unbind(bid)
    with pytest.raises(KeyError):
        reg.unbind(bid)


def test_rebinding_after_unbind_goes_last_among_equals() -> None:
    reg = Registry()
    a = recorder([], "a")
    b = recorder([], "b")
    reg.bind("e", b)
    bid = reg.bind("e", a)
    reg.unbind(bid)
    reg.bind("e", a)
    reg.unbind(reg.handlers("e")[0].id)  # b
    reg.bind("e", b)

    assert [x.handler for x in reg.handlers("e")] == [a, b]


# --- arguments ---------------------------------------------------------------------


def test_static_args_are_passed_as_keywords_after_dynamic_ones() -> None:
    reg = Registry()
    calls: list[tuple[Any, ...]] = []

    def handler(ctx: Context, key: str, *, by: int = 1, prefix: str, scale: int) -> None:
        calls.append((key, by, prefix, scale))

    reg.bind("e", handler, prefix="p:", scale=10)

    dispatch(reg.handlers("e"), make_ctx(), ("k",), {"by": 3})
    dispatch(reg.handlers("e"), make_ctx(), ["j"], {})

    assert calls == [("k", 3, "p:", 10), ("j", 1, "p:", 10)]


def test_each_binding_gets_its_own_static_args() -> None:
    reg = Registry()
    seen: list[str] = []

    def tag(ctx: Context, *, label: str) -> None:
        seen.append(label)

    reg.bind("e", tag, label="one")
    reg.bind("e", tag, order=-1, label="zero")

    dispatch(reg.handlers("e"), make_ctx(), (), {})

    assert seen == ["zero", "one"]


def test_a_dynamic_keyword_cannot_override_a_static_arg() -> None:
    def handler(ctx: Context, *, label: str) -> str:
        return label

    chain = (Binding(0, 1, "e", handler, {"label": "static"}),)
    assert dispatch(chain, make_ctx(), (), {}) == "static"
    with pytest.raises(TypeError, match="multiple values"):
        dispatch(chain, make_ctx(), (), {"label": "dynamic"})


def test_handlers_receive_the_context_first() -> None:
    ctx = make_ctx()
    got: list[Context] = []
    dispatch(bindings(lambda c: got.append(c)), ctx, (), {})
    assert got == [ctx]


# --- dispatch as a free function ---------------------------------------------------------


def test_dispatch_runs_hand_built_bindings_in_tuple_order() -> None:
    trace: list[str] = []
    dispatch(
        bindings(recorder(trace, "a"), recorder(trace, "b"), recorder(trace, "c")),
        make_ctx(),
        (),
        {},
    )
    assert trace == ["a", "b", "c"]


def test_dispatch_of_no_bindings_returns_none() -> None:
    assert dispatch((), make_ctx(), (), {}) is None


def test_result_is_the_last_non_none_return() -> None:
    trace: list[str] = []
    result = dispatch(
        bindings(
            recorder(trace, "a", 1),
            recorder(trace, "b", 2),
            recorder(trace, "c", None),
        ),
        make_ctx(),
        (),
        {},
    )
    assert result == 2
    assert trace == ["a", "b", "c"]


def test_falsy_results_other_than_none_count() -> None:
    result = dispatch(
        bindings(recorder([], "a", 5), recorder([], "b", 0), recorder([], "c", None)),
        make_ctx(),
        (),
        {},
    )
    assert result == 0


def test_exceptions_propagate_and_stop_the_chain() -> None:
    trace: list[str] = []

    def boom(ctx: Context) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        dispatch(bindings(recorder(trace, "a"), boom, recorder(trace, "c")), make_ctx(), (), {})
    assert trace == ["a"]


# --- halt -------------------------------------------------------------------------------


def test_halt_stops_the_remaining_handlers() -> None:
    trace: list[str] = []

    def halting(ctx: Context) -> str:
        trace.append("halting")
        ctx.halt()
        return "halted"

    result = dispatch(
        bindings(recorder(trace, "a"), halting, recorder(trace, "never")), make_ctx(), (), {}
    )

    assert trace == ["a", "halting"]
    assert result == "halted"


def test_halt_lets_the_halting_handler_finish() -> None:
    trace: list[str] = []

    def halting(ctx: Context) -> None:
        ctx.halt()
        trace.append("after halt, same handler")

    dispatch(bindings(halting, recorder(trace, "never")), make_ctx(), (), {})
    assert trace == ["after halt, same handler"]


def test_halt_applies_to_one_occurrence_only() -> None:
    ctx = make_ctx()
    trace: list[str] = []

    def halting(ctx: Context) -> None:
        trace.append("halting")
        ctx.halt()

    chain = bindings(halting, recorder(trace, "never"))
    dispatch(chain, ctx, (), {})
    dispatch(chain, ctx, (), {})

    assert trace == ["halting", "halting"]


def test_a_nested_halt_does_not_halt_the_outer_occurrence() -> None:
    ctx = make_ctx()
    trace: list[str] = []

    def inner_halt(ctx: Context) -> None:
        trace.append("inner-halt")
        ctx.halt()

    inner = bindings(inner_halt, recorder(trace, "inner-never"))

    def outer_raiser(ctx: Context) -> None:
        trace.append("outer-1")
        dispatch(inner, ctx, (), {})
        trace.append("outer-1 resumed")

    outer = bindings(outer_raiser, recorder(trace, "outer-2"))
    dispatch(outer, ctx, (), {})

    assert trace == ["outer-1", "inner-halt", "outer-1 resumed", "outer-2"]


def test_a_halt_before_a_nested_event_still_halts_the_outer_occurrence() -> None:
    ctx = make_ctx()
    trace: list[str] = []
    inner = bindings(recorder(trace, "inner-1"), recorder(trace, "inner-2"))

    def outer_raiser(ctx: Context) -> None:
        ctx.halt()
        dispatch(inner, ctx, (), {})  # a fresh occurrence: not halted

    dispatch(bindings(outer_raiser, recorder(trace, "outer-never")), ctx, (), {})

    assert trace == ["inner-1", "inner-2"]


def test_a_nested_halt_then_error_leaves_the_outer_occurrence_running() -> None:
    ctx = make_ctx()
    trace: list[str] = []

    def halt_then_fail(ctx: Context) -> None:
        ctx.halt()
        raise KeyError("inner")

    inner = bindings(halt_then_fail)

    def outer_raiser(ctx: Context) -> None:
        with pytest.raises(KeyError):
            dispatch(inner, ctx, (), {})

    dispatch(bindings(outer_raiser, recorder(trace, "outer-2")), ctx, (), {})
    assert trace == ["outer-2"]


def test_halt_inside_raise_event_does_not_halt_the_caller() -> None:
    # The same rule through the registry and Context.raise_event.
    svc = Service("halting")
    trace: list[str] = []

    def inner_halt(ctx: Context) -> None:
        trace.append("inner")
        ctx.halt()

    def outer(ctx: Context) -> None:
        trace.append("outer-1")
        ctx.raise_event("inner")

    svc.bind("inner", inner_halt)
    svc.bind("inner", recorder(trace, "inner-never"), order=1)
    svc.bind("outer", outer)
    svc.bind("outer", recorder(trace, "outer-2"), order=1)
    machine = svc.new_machine(0)
    ctx = Context(machine, seq=1, now=0.0, origin=0, mode=Mode.AFFINITY, is_owner=True)

    dispatch(machine.registry.handlers("outer"), ctx, (), {})

    assert trace == ["outer-1", "inner", "outer-2"]


# --- async def handlers ----------------------------------------------------------------------


def test_async_handler_that_completes_synchronously_returns_its_value() -> None:
    async def helper(x: int) -> int:
        return x * 2

    async def handler(ctx: Context, x: int) -> int:
        return await helper(x)  # awaiting a coroutine that never suspends

    assert dispatch(bindings(handler), make_ctx(), (21,), {}) == 42


def test_async_handler_returning_none_keeps_the_previous_result() -> None:
    trace: list[str] = []

    async def quiet(ctx: Context) -> None:
        trace.append("quiet")

    assert dispatch(bindings(recorder(trace, "a", "kept"), quiet), make_ctx(), (), {}) == "kept"
    assert trace == ["a", "quiet"]


def test_async_handler_can_halt() -> None:
    trace: list[str] = []

    async def halting(ctx: Context) -> None:
        ctx.halt()

    dispatch(bindings(halting, recorder(trace, "never")), make_ctx(), (), {})
    assert trace == []


def test_async_handler_errors_propagate_unchanged() -> None:
    async def failing(ctx: Context) -> None:
        raise ValueError("from a coroutine")

    with pytest.raises(ValueError, match="from a coroutine"):
        dispatch(bindings(failing), make_ctx(), (), {})


def test_async_handler_that_suspends_raises_apply_suspended() -> None:
    trace: list[str] = []

    async def suspending(ctx: Context) -> None:
        trace.append("before")
        await asyncio.sleep(0)
        trace.append("after")  # never reached

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ApplySuspendedError, match="suspending"):
            dispatch(bindings(suspending, recorder(trace, "next")), make_ctx(), (), {})
        gc.collect()

    assert trace == ["before"]
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_suspended_coroutine_is_closed() -> None:
    async def suspending() -> None:
        await asyncio.sleep(0)

    coro = suspending()
    with pytest.raises(ApplySuspendedError):
        dispatch(bindings(lambda ctx: coro), make_ctx(), (), {})
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_apply_suspended_is_a_runtime_error() -> None:
    assert issubclass(ApplySuspendedError, RuntimeError)


async def test_async_handler_awaiting_a_real_future_raises_apply_suspended() -> None:
    # Inside a running loop a real wait (a timer future) is refused the same
    # way, and the coroutine's cleanup runs (the timer handle is cancelled).
    cleaned: list[str] = []

    async def waits(ctx: Context) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("closed")

    with pytest.raises(ApplySuspendedError):
        dispatch(bindings(waits), make_ctx(), (), {})
    assert cleaned == ["closed"]
