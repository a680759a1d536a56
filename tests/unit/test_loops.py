"""dominoes.loops: the built-in policies, lookup by name, and entry-point plugins.

Third-party policies are faked by replacing ``entry_points`` in the registry
module with one returning real ``EntryPoint`` objects that point back into
this module, so loading goes through the real ``EntryPoint.load``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from typing import ClassVar

import pytest
import uvloop

from dominoes import loops

GROUP = "dominoes.loops"


# --- policies the fake entry points point at ------------------------------------------------


class MyPolicy(loops.LoopPolicy):
    """A third-party policy: the stdlib loop under another name."""

    name: ClassVar[str] = "mine"

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


class MyOtherPolicy(MyPolicy):
    name: ClassVar[str] = "mine"


class UnavailablePolicy(loops.LoopPolicy):
    name: ClassVar[str] = "nowhere"

    @classmethod
    def available(cls) -> bool:
        return False

    @classmethod
    def unavailable_reason(cls) -> str:
        return "needs hardware this machine lacks"

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        raise AssertionError("never called")


class SilentlyUnavailablePolicy(MyPolicy):
    """Unavailable without saying why: the default reason is used."""

    name: ClassVar[str] = "silent"

    @classmethod
    def available(cls) -> bool:
        return False


class ExplodingAvailablePolicy(MyPolicy):
    name: ClassVar[str] = "exploding"

    @classmethod
    def available(cls) -> bool:
        raise OSError("probe failed")


class AbstractPolicy(loops.LoopPolicy):
    name: ClassVar[str] = "abstract"


def not_a_policy() -> None:
    """An entry point must name a LoopPolicy subclass, not any callable."""


def ep(name: str, target: str) -> EntryPoint:
    value = target if ":" in target else f"{__name__}:{target}"
    return EntryPoint(name=name, value=value, group=GROUP)


BROKEN = ep("broken", "tests.unit.no_such_module:Policy")

Install = Callable[..., None]


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Install:
    """Make the registry see the built-ins' real entry points plus the given ones."""

    def install_(*extra: EntryPoint) -> None:
        def fake(*, group: str) -> EntryPoints:
            assert group == GROUP
            return EntryPoints([*entry_points(group=GROUP), *extra])

        monkeypatch.setattr("dominoes.loops._registry.entry_points", fake)

    return install_


# --- a coroutine that needs a working loop ----------------------------------------------------


async def eventfd_roundtrip(value: int) -> tuple[type[asyncio.AbstractEventLoop], int]:
    """Wake the running loop through an eventfd reader, as replicas do."""
    loop = asyncio.get_running_loop()
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        readable: asyncio.Future[int] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(os.eventfd_read(fd))

        loop.add_reader(fd, on_readable)
        try:
            loop.call_soon(os.eventfd_write, fd, value)
            got = await asyncio.wait_for(readable, timeout=5)
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return type(loop), got


# --- the built-ins ----------------------------------------------------------------------


def test_the_default_is_uvloop_here() -> None:
    policy = loops.get()
    assert isinstance(policy, loops.UvloopPolicy)
    assert policy.name == "uvloop"


def test_the_default_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops.UvloopPolicy, "available", classmethod(lambda cls: False))
    assert isinstance(loops.get(), loops.AsyncioPolicy)
    assert "uvloop" not in loops.available()


def test_asyncio_policy_makes_a_stdlib_loop() -> None:
    loop = loops.get("asyncio").new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert type(loop).__module__.startswith("asyncio.")
    finally:
        loop.close()


def test_uvloop_policy_makes_a_uvloop_loop() -> None:
    loop = loops.get("uvloop").new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("name", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)]
)
def test_run_drives_an_eventfd_reader_and_returns_the_result(
    name: str, loop_type: type[asyncio.AbstractEventLoop]
) -> None:
    kind, got = loops.get(name).run(eventfd_roundtrip(7))
    assert issubclass(kind, loop_type)
    assert got == 7


def test_run_closes_its_loop_and_leaves_no_current_loop() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    loops.get("uvloop").run(main())
    assert seen[0].is_closed()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_unavailable_uvloop_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> ImportError:
        return ModuleNotFoundError("No module named 'uvloop'")

    monkeypatch.setattr("dominoes.loops._builtin._import_error", missing)
    with pytest.raises(RuntimeError, match=r"'uvloop' is not available.*pip install uvloop"):
        loops.get("uvloop")


def test_builtins_are_registered_as_entry_points() -> None:
    registered = {e.name: e.value for e in entry_points(group=GROUP)}
    assert registered["uvloop"] == "dominoes.loops:UvloopPolicy"
    assert registered["asyncio"] == "dominoes.loops:AsyncioPolicy"
    assert [e.load() for e in entry_points(group=GROUP, name="uvloop")] == [loops.UvloopPolicy]


def test_available_lists_the_builtins_in_name_order() -> None:
    assert loops.available() == {"asyncio": loops.AsyncioPolicy, "uvloop": loops.UvloopPolicy}


def test_get_returns_a_fresh_instance() -> None:
    assert loops.get("asyncio") is not loops.get("asyncio")


# --- lookup errors ----------------------------------------------------------------------


def test_unknown_name_is_a_lookup_error_naming_the_available_ones(install: Install) -> None:
    install(ep("mine", "MyPolicy"), BROKEN)
    with pytest.raises(LookupError, match=r"'nope'.*available: asyncio, mine, uvloop$"):
        loops.get("nope")


def test_an_unavailable_policy_is_a_runtime_error_saying_why(install: Install) -> None:
    install(ep("nowhere", "UnavailablePolicy"), ep("silent", "SilentlyUnavailablePolicy"))
    with pytest.raises(RuntimeError, match="'nowhere' is not available here: needs hardware"):
        loops.get("nowhere")
    with pytest.raises(RuntimeError, match=r"SilentlyUnavailablePolicy.available\(\) returned"):
        loops.get("silent")
    assert "nowhere" not in loops.available()


# --- third-party policies ----------------------------------------------------------------


def test_a_third_party_policy_is_found_through_its_entry_point(install: Install) -> None:
    install(ep("mine", "MyPolicy"))
    policy = loops.get("mine")
    assert type(policy) is MyPolicy
    assert loops.available()["mine"] is MyPolicy
    kind, got = policy.run(eventfd_roundtrip(3))
    assert issubclass(kind, asyncio.BaseEventLoop)
    assert got == 3


def test_the_first_of_several_same_named_entry_points_wins(install: Install) -> None:
    install(ep("mine", "MyOtherPolicy"), ep("mine", "MyPolicy"))
    assert type(loops.get("mine")) is MyOtherPolicy


def test_a_broken_entry_point_is_skipped_with_a_warning_when_listing(install: Install) -> None:
    install(ep("mine", "MyPolicy"), BROKEN)
    with pytest.warns(RuntimeWarning, match=r"entry point broken = .*failed to load.*skipped"):
        names = loops.available()
    assert list(names) == ["asyncio", "mine", "uvloop"]


def test_a_broken_entry_point_does_not_affect_other_policies(install: Install) -> None:
    install(ep("mine", "MyPolicy"), BROKEN, ep("uvloop", "MyPolicy"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(loops.get(), loops.UvloopPolicy)
        assert isinstance(loops.get("uvloop"), loops.UvloopPolicy)
        assert isinstance(loops.get("asyncio"), loops.AsyncioPolicy)
        assert type(loops.get("mine")) is MyPolicy


def test_importing_the_package_does_not_load_plugins(install: Install) -> None:
    install(BROKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(loops)


def test_a_broken_duplicate_is_skipped_with_a_warning_when_requested(install: Install) -> None:
    install(ep("mine", "tests.unit.no_such_module:MyPolicy"), ep("mine", "MyPolicy"))
    with pytest.warns(RuntimeWarning, match=r"mine = 'tests.unit.no_such_module.*skipped"):
        policy = loops.get("mine")
    assert type(policy) is MyPolicy


def test_requesting_a_broken_entry_point_raises_with_the_cause(install: Install) -> None:
    install(BROKEN)
    with pytest.raises(RuntimeError, match=r"entry point broken = .*failed to load") as info:
        loops.get("broken")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_all_broken_duplicates_raise_with_every_cause(install: Install) -> None:
    install(ep("mine", "no_such_module_a:P"), ep("mine", "no_such_module_b:P"))
    with pytest.raises(RuntimeError, match=r"'mine' cannot be loaded: .*_a.*_b"):
        loops.get("mine")


@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        (ep("thing", "not_a_policy"), "not a LoopPolicy subclass"),
        (ep("abstract", "AbstractPolicy"), "abstract class"),
        (ep("other", "MyPolicy"), r"registered as 'other' but MyPolicy.name is 'mine'"),
        (ep("exploding", "ExplodingAvailablePolicy"), r"cannot tell.*OSError\('probe failed'\)"),
        (ep("uvloop", "MyPolicy"), "claims the built-in loop policy name 'uvloop'"),
    ],
    ids=["not-a-policy", "abstract", "wrong-name", "available-raises", "shadows-builtin"],
)
def test_bad_entry_points_are_skipped_with_a_warning(
    install: Install, entry_point: EntryPoint, message: str
) -> None:
    install(entry_point)
    with pytest.warns(RuntimeWarning, match=message):
        names = loops.available()
    assert list(names) == ["asyncio", "uvloop"]
    if entry_point.name not in names:
        with pytest.raises(RuntimeError, match=message):
            loops.get(entry_point.name)
