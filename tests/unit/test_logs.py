"""Log backends by name (the ``dominoes.logs`` group) and the ``shm`` backend's factory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest

from dominoes._core._log import KIND_ENTRY, Log
from dominoes._core._memory import MemoryLogFactory
from dominoes._runtime import _logs
from dominoes._runtime._shm import SharedLog, ShmLogFactory, ShmLogHost


def plugins(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Pretend the installed entry points of the group are ``values`` (name -> target)."""
    eps = [EntryPoint(name, value, _logs.GROUP) for name, value in values.items()]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return eps if group == _logs.GROUP else []

    monkeypatch.setattr(_logs, "entry_points", entry_points)


@pytest.fixture
def host() -> Iterator[ShmLogHost]:
    made = _logs.get("shm", service="unit").create(
        capacity=16, slot_size=128, replicas=3, max_entry_slots=4
    )
    assert isinstance(made, ShmLogHost)
    try:
        yield made
    finally:
        made.close()


def test_the_builtins_resolve_without_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins(monkeypatch)  # nothing installed
    assert isinstance(_logs.get("shm"), ShmLogFactory)
    assert isinstance(_logs.get("memory"), MemoryLogFactory)
    assert _logs.names() == ["memory", "shm"]
    assert _logs.DEFAULT == "shm"


def test_the_installed_entry_points_name_the_builtins() -> None:
    assert {"memory", "shm"} <= set(_logs.names())


def test_an_unknown_name_lists_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins(monkeypatch, other="dominoes._core._memory:MemoryLogFactory")
    expected = "no log backend named 'nope'; available: memory, other, shm"
    with pytest.raises(LookupError, match=expected):
        _logs.get("nope")


def test_a_plugin_is_loaded_by_name_and_cannot_take_a_builtin_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugins(
        monkeypatch,
        other="dominoes._core._memory:MemoryLogFactory",
        shm="dominoes._core._memory:MemoryLogFactory",
    )
    assert isinstance(_logs.get("other"), MemoryLogFactory)
    assert isinstance(_logs.get("shm"), ShmLogFactory)


def test_a_broken_plugin_is_a_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins(monkeypatch, gone="no_such_module:F", odd="collections:OrderedDict")
    with pytest.raises(RuntimeError, match=r"gone = 'no_such_module:F'.* failed to load"):
        _logs.get("gone")
    with pytest.raises(RuntimeError, match="not a LogFactory"):
        _logs.get("odd")


def test_processes_need_a_log_they_can_share() -> None:
    assert isinstance(_logs.for_processes("shm"), ShmLogFactory)
    with pytest.raises(ValueError, match="the memory log works in one process only"):
        _logs.for_processes("memory")
    with pytest.raises(LookupError):
        _logs.for_processes("nope")


def test_the_shm_host_is_a_memfd_replicas_inherit(host: ShmLogHost) -> None:
    assert isinstance(host.log, Log)
    assert (host.log.capacity, host.log.max_replicas, host.log.max_entry_slots) == (16, 3, 4)
    [fd] = host.handles()
    assert fd == host.shared.fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:dominoes-unit")
    # A second mapping of the fd (what a replica does) sees the same log.
    seq = host.log.try_append(0, b"hello")
    other = SharedLog.attach(os.dup(fd))
    try:
        got = other.log().read(seq)
        assert got is not None
        assert got[2] == b"hello"
    finally:
        other.close()
    host.close()
    host.close()  # idempotent


def test_a_shape_the_log_refuses_leaves_nothing_mapped() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="capacity must be a power of two"):
        ShmLogFactory().create(capacity=3, slot_size=128, replicas=2, max_entry_slots=None)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_replica_process_attaches_through_the_factory() -> None:
    """What ``_process`` does with the fds the supervisor's host hands out."""
    factory = _logs.get("shm", service="attach")
    host = factory.create(capacity=16, slot_size=128, replicas=2, max_entry_slots=None)
    try:
        seq = host.log.try_append(0, b"hello")
        attached = factory.attach([os.dup(fd) for fd in host.handles()])
        try:
            assert attached.log.read(seq) == (KIND_ENTRY, 1, b"hello")
        finally:
            attached.close()
    finally:
        host.close()


def test_the_memory_log_cannot_be_attached_from_elsewhere() -> None:
    with pytest.raises(ValueError, match="one process"):
        _logs.get("memory").attach([])
