"""Snapshots written by a forked child, so the replica never stops serving for one.

Why
---
Encoding a replica's whole state takes time proportional to its size: about
1.5 s at two million KV keys.  Done inside the replica's apply, as a join
snapshot once was, it stalls the replica's clients and, once the log fills,
every writer of the service.  ``fork()`` copies the process's memory lazily
(copy-on-write), so a child holds the state exactly as it was at the fork,
one log position, while the parent goes on applying and serving.  The child
encodes the state, writes it to a 0600 file (atomically: a temporary name,
then ``rename``), optionally signals someone, and exits.  Redis's BGSAVE works
the same way.

The parent pays for the fork itself (copying page tables: milliseconds for
hundreds of megabytes) and for the pages it writes while the child lives.
The child runs no event loop, takes no lock and logs nothing: it calls one
function and ``os._exit``s, whatever happens.  The parent reaps it through a
pidfd on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ._pdeath import die_with_parent

__all__ = ("BacklogCopier", "fork_pipe", "fork_write", "read_all", "watch_child", "write_all")


def fork_write(
    produce: Callable[[], bytes], path: Path, then: Callable[[], None] | None = None
) -> int:
    """Fork a child that writes ``produce()`` to ``path`` (mode 0600), calls
    ``then()`` and exits 0 (1 on any error).  Returns the child's pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the caller
        _become_background(parent)
        data = produce()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if then is not None:
            then()
        code = 0
    finally:
        os._exit(code)


def fork_pipe(produce: Callable[[], bytes]) -> tuple[int, int]:
    """Fork a child that writes ``produce()`` (small: it must fit the pipe's
    64 KiB buffer) to a pipe and exits.  Returns (pid, the pipe's read end)."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    code = 1
    try:  # the child: never returns into the caller
        os.close(r)
        _become_background(parent)
        write_all(w, produce())
        code = 0
    finally:
        os._exit(code)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _become_background(parent: int) -> None:
    """In a child: die with the replica, leave its loop's signals alone (the
    parent's loop owns the wake-up fd), and yield the replica's core: a child
    inherits its pinning, but may run on any core, below the replicas."""
    die_with_parent(parent)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    with contextlib.suppress(OSError):
        os.nice(10)


def read_all(fd: int) -> bytes:
    """Everything left in pipe ``fd`` (its writer has exited), then close it."""
    parts = []
    try:
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
    finally:
        os.close(fd)
    return b"".join(parts)


def watch_child(loop: asyncio.AbstractEventLoop, pid: int, done: Callable[[bool], None]) -> None:
    """Reap child ``pid`` when it exits and call ``done(exited_with_0)`` on ``loop``."""
    pidfd = os.pidfd_open(pid)

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        status = 1
        with contextlib.suppress(ChildProcessError):
            _, raw = os.waitpid(pid, 0)
            status = os.waitstatus_to_exitcode(raw)
        done(status == 0)

    loop.add_reader(pidfd, exited)


class BacklogCopier:
    """A forked child that keeps a joining replica's backlog moving while the
    replica itself is blocked restoring a large snapshot.

    The joiner holds the ring from the position it has copied up to; while it
    decodes seconds of snapshot it cannot copy, the ring fills and every
    writer waits.  The child shares the ring (the mapping is inherited), so it
    copies what arrives (``ReplicaCore.copy_backlog``, which also moves the
    joiner's hold) into a 0600 file until the joiner asks it to stop; the
    joiner then takes the file as the rest of its backlog.
    """

    def __init__(self, copy: Callable[[list[Any], int], int], start: int, path: Path) -> None:
        self.path = path
        self._stop_r, self._stop_w = os.pipe()
        self._done_r, done_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.pid = pid
            os.close(self._stop_r)
            os.close(done_w)
            return
        code = 1
        try:  # the child: never returns into the caller
            os.close(self._stop_w)
            os.close(self._done_r)
            die_with_parent(parent)
            signal.set_wakeup_fd(-1)
            encoder = msgspec.msgpack.Encoder()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            seq = start
            stopping = False
            while True:
                backlog: list[Any] = []
                seq = copy(backlog, seq)
                for item in backlog:
                    frame = encoder.encode(item)
                    write_all(fd, len(frame).to_bytes(4, "little") + frame)
                if stopping:
                    break
                stopping = bool(select.select([self._stop_r], [], [], 0.002)[0])
            os.close(fd)
            os.write(done_w, seq.to_bytes(8, "little"))
            code = 0
        finally:
            os._exit(code)

    def finish(self) -> tuple[list[tuple[int, int, int, bytes]], int]:
        """Stop the child; what it copied, and the next seq to copy."""
        os.write(self._stop_w, b"x")
        os.close(self._stop_w)
        try:
            raw = read_all(self._done_r)
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if len(raw) != 8:
            self.path.unlink(missing_ok=True)
            raise RuntimeError("the backlog copier failed")
        data = self.path.read_bytes()
        self.path.unlink(missing_ok=True)
        decoder = msgspec.msgpack.Decoder(tuple[int, int, int, bytes])
        out, pos = [], 0
        while pos < len(data):
            n = int.from_bytes(data[pos : pos + 4], "little")
            out.append(decoder.decode(data[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        return out, int.from_bytes(raw, "little")
