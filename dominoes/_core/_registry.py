"""The Cactus registry: events, the handlers bound to them, and dispatch.

Theory of operation
-------------------
An *event* is a name.  Handlers are bound to it with an ``order`` (a number)
and optional *static arguments*, fixed at bind time.  Raising the event calls
every bound handler synchronously as ``handler(ctx, *dynamic_args,
**dynamic_kwargs, **static_args)``.

Each event's handlers are kept in one tuple, sorted by ``(order, binding id)``.
Binding ids only grow, so handlers with equal ``order`` run in bind order.  The
tuple is rebuilt on ``bind`` and ``unbind`` (rare: at start-up, or when a
micro-protocol is swapped) and never sorted during dispatch (every entry on
every replica).

:func:`dispatch` is a free function over such a tuple, so it can be tested
without a registry.  It stops after the handler during which ``ctx.halt()`` was
called.  Its result is the last non-``None`` value a handler returned.

An ``async def`` handler may be bound.  Dispatch drives its coroutine by hand:
if the coroutine finishes without really suspending (it awaited nothing, or
only other such coroutines) its result is used; if it suspends, the apply would
no longer be atomic, so the coroutine is closed and
:class:`~dominoes._core._errors.ApplySuspendedError` is raised.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ._errors import ApplySuspendedError

if TYPE_CHECKING:
    from ._context import Context

__all__ = ("Binding", "Handler", "Registry", "dispatch")

Handler = Callable[..., Any]


class Binding(NamedTuple):
    """One handler bound to one event.  Sorts by ``(order, id)``."""

    order: float
    id: int
    event: str
    handler: Handler
    static: dict[str, Any]


_EMPTY: Final[tuple[Binding, ...]] = ()


class Registry:
    """Events and their ordered handlers."""

    __slots__ = ("_by_event", "_by_id", "_next")

    def __init__(self) -> None:
        self._by_event: dict[str, tuple[Binding, ...]] = {}
        self._by_id: dict[int, Binding] = {}
        #: the next binding's id (ids only grow)
        self._next = 1

    def bind(self, event: str, handler: Handler, order: float = 0, **static: Any) -> int:
        """Bind ``handler`` to ``event``; returns the binding id for :meth:`unbind`."""
        if not callable(handler):
            raise TypeError(f"handler for {event!r} is not callable: {handler!r}")
        b = Binding(order, self._next, event, handler, static)
        self._next += 1
        handlers = list(self._by_event.get(event, _EMPTY))
        bisect.insort(handlers, b, key=_sort_key)
        self._by_event[event] = tuple(handlers)
        self._by_id[b.id] = b
        return b.id

    def unbind(self, binding_id: int) -> None:
        """Remove one binding.  Unknown ids raise ``KeyError``."""
        b = self._by_id.pop(binding_id)
        rest = tuple(x for x in self._by_event[b.event] if x.id != binding_id)
        if rest:
            self._by_event[b.event] = rest
        else:
            del self._by_event[b.event]

    def handlers(self, event: str) -> tuple[Binding, ...]:
        """The bindings of ``event`` in dispatch order (empty if none)."""
        return self._by_event.get(event, _EMPTY)

    def events(self) -> list[str]:
        return sorted(self._by_event)

    def bindings(self) -> list[Binding]:
        """Every binding, by id."""
        return [self._by_id[i] for i in sorted(self._by_id)]

    def ids(self) -> frozenset[int]:
        return frozenset(self._by_id)

    def save(self) -> tuple[list[Binding], int]:
        """Every binding and the next id: what :meth:`load` puts back."""
        return self.bindings(), self._next

    def load(self, saved: tuple[list[Binding], int]) -> None:
        """Make this registry what :meth:`save` saw (a reconfigured machine's reset)."""
        bindings, next_id = saved
        self._by_event, self._by_id = {}, {}
        for b in bindings:
            self._by_id[b.id] = b
            handlers = list(self._by_event.get(b.event, _EMPTY))
            bisect.insort(handlers, b, key=_sort_key)
            self._by_event[b.event] = tuple(handlers)
        self._next = next_id

    def binding(self, binding_id: int) -> Binding:
        """One binding by id.  Unknown ids raise ``KeyError``."""
        return self._by_id[binding_id]

    def __contains__(self, event: object) -> bool:
        return event in self._by_event

    def __len__(self) -> int:
        return len(self._by_id)


def _sort_key(b: Binding) -> tuple[float, int]:
    return (b.order, b.id)


def dispatch(
    bindings: tuple[Binding, ...],
    ctx: Context,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``bindings`` in order for one occurrence of an event; see the module doc."""
    result = None
    outer = ctx._halted
    ctx._halted = False
    try:
        for b in bindings:
            if b.static:
                r = b.handler(ctx, *args, **kwargs, **b.static)
            else:
                r = b.handler(ctx, *args, **kwargs)
            if r is not None:
                if type(r) is CoroutineType:
                    r = drive(r, b)
                if r is not None:
                    result = r
            if ctx._halted:
                break
    finally:
        ctx._halted = outer
    return result


def drive(coro: CoroutineType[Any, Any, Any], binding: Binding | None = None) -> Any:
    """Run a coroutine that must complete without suspending; return its value."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    where = f" bound to {binding.event!r}" if binding else ""
    name = getattr(binding.handler, "__qualname__", repr(binding.handler)) if binding else ""
    raise ApplySuspendedError(
        f"async handler {name}{where} suspended during an apply; an apply is atomic, "
        "so await nothing that waits (move I/O into ctx.effect)"
    )
