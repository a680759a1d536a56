"""The conformance suite against the ``shm`` backend (the ring in a shared memfd).

Each log is a ``SharedLog`` made with ``SharedLog.create``.  Participants in
other processes are started with ``spawn`` and reach the memfd through
``/proc/<pid>/fd/<fd>`` (the runtime hands it over with ``pass_fds``
instead); each maps it with ``SharedLog.attach`` and closes it before it
exits.  Every log is closed when its test ends, and the test checks that
nothing of it is left: no mapping, no fd, and no file in ``/dev/shm``.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pytest

from dominoes._runtime._shm import SharedLog

from .suite import ELSEWHERE_TIMEOUT, LogBackendSuite, Opened

DEV_SHM = Path("/dev/shm")


def _participant(
    conn: Connection, path: str, target: Callable[..., Any], sync: Any, args: tuple[Any, ...]
) -> None:
    """In a child: attach to the log, run ``target``, send back its result or traceback."""
    try:
        shared = SharedLog.attach(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        try:
            conn.send(("ok", target(shared.log(), sync, *args)))
        finally:
            shared.close()
    except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
        conn.send(("error", traceback.format_exc()))
        sync.abort()  # partners waiting on the barrier fail at once instead of timing out
    finally:
        conn.close()


def run_elsewhere(
    shared: SharedLog, target: Callable[..., Any], args_list: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """``target(handle, sync, *args)`` in one spawned process per ``args``; their results."""
    ctx = multiprocessing.get_context("spawn")
    sync = ctx.Barrier(len(args_list))
    path = f"/proc/{os.getpid()}/fd/{shared.fd}"
    procs, conns = [], []
    try:
        for args in args_list:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_participant, args=(send, path, target, sync, args), daemon=True
            )
            proc.start()
            send.close()
            procs.append(proc)
            conns.append(recv)
        results: dict[int, tuple[str, Any]] = {}
        pending = dict(enumerate(conns))
        while pending:
            ready = wait(list(pending.values()), timeout=ELSEWHERE_TIMEOUT)
            if not ready:
                pytest.fail(f"participants still running after {ELSEWHERE_TIMEOUT}s")
            for i, conn in list(pending.items()):
                if conn in ready:
                    try:
                        results[i] = conn.recv()
                    except EOFError:
                        results[i] = ("error", "the participant died without a result")
                    del pending[i]
        for proc in procs:
            proc.join(ELSEWHERE_TIMEOUT)
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    errors = [detail for status, detail in results.values() if status != "ok"]
    if errors:
        pytest.fail("a participant failed:\n" + "\n".join(errors))
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return [results[i][1] for i in range(len(args_list))]


class ShmBackend:
    """Opens logs with ``SharedLog.create``; closes them and checks nothing is left."""

    name = "shm"

    def __init__(self) -> None:
        self.logs: list[tuple[str, SharedLog]] = []

    def open(self, *, capacity: int, slot_size: int, replicas: int) -> Opened:
        name = f"conformance-{uuid.uuid4().hex}"
        shared = SharedLog.create(
            name, capacity=capacity, slot_size=slot_size, max_replicas=replicas
        )
        self.logs.append((name, shared))
        return Opened(
            host=shared.log(),
            handle=shared.log,
            close=shared.close,
            elsewhere=lambda target, args_list: run_elsewhere(shared, target, args_list),
        )

    def close_all(self) -> None:
        for name, shared in self.logs:
            fd = shared.fd
            shared.close()
            shared.close()  # idempotent
            assert shared.fd == -1
            maps = Path("/proc/self/maps").read_text()
            assert name not in maps, "the log is still mapped"
            links = []
            for entry in Path("/proc/self/fd").iterdir():
                try:
                    links.append(os.readlink(entry))
                except OSError:
                    continue  # the fd listing's own fd, gone by now
            assert not any(name in link for link in links), f"fd {fd} is still open"
            assert not any(name in p.name for p in DEV_SHM.iterdir())


class TestShm(LogBackendSuite):
    @pytest.fixture
    def backend(self) -> Iterator[ShmBackend]:
        backend = ShmBackend()
        yield backend
        backend.close_all()
