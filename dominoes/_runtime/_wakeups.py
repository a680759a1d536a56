"""Wake-ups: how a producer wakes a sleeping replica (the ``Wakeups`` protocol).

The protocol, both halves (docs/design/log.md):

* a replica going to sleep stores its asleep flag (seq_cst), looks at the
  log once more, and only then waits;
* a producer, after publishing, takes the set of sleepers
  (``LogBackend.take_sleepers``: their flags are cleared) and signals each.

So a wake-up costs nothing while replicas are busy, and none is lost: a
producer either sees the flag, or the replica's re-check sees the entry.

:class:`EventfdWakeups` signals through one eventfd per replica (shared by
every process of a service: the ``shm`` backend).  :class:`LoopWakeups` calls
back on the loop, for replicas that run in one process over the ``memory``
backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol

from .._core._backend import LogBackend

__all__ = ("EventfdWakeups", "LoopWakeups", "Wakeups", "wake_sleepers")


class Wakeups(Protocol):
    """How producers wake a sleeping replica and how a replica waits on an event loop."""

    def signal(self, replica: int, /) -> bool:
        """Wake ``replica`` (it had set its asleep flag); False if it could not be."""
        ...

    def listen(
        self, loop: asyncio.AbstractEventLoop, replica: int, callback: Callable[[], None], /
    ) -> None:
        """Call ``callback`` on ``loop`` after each signal to ``replica``."""
        ...

    def unlisten(self, loop: asyncio.AbstractEventLoop, replica: int, /) -> None:
        """Stop calling back (idempotent)."""
        ...


def wake_sleepers(log: LogBackend, wakeups: Wakeups, replicas: int, skip: int = -1) -> int:
    """The producer's half: signal every replica asleep now (but ``skip``); how many."""
    sent = 0
    for i in log.take_sleepers(replicas):
        if i != skip and wakeups.signal(i):
            sent += 1
    return sent


class EventfdWakeups:
    """One eventfd per replica, inherited by every process of the service."""

    __slots__ = ("fds",)

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def signal(self, replica: int) -> bool:
        if replica >= len(self.fds):
            return False
        try:
            os.eventfd_write(self.fds[replica], 1)
        except (BlockingIOError, OSError):
            return False  # the counter is saturated (a wake-up is pending) or closed
        return True

    def listen(
        self, loop: asyncio.AbstractEventLoop, replica: int, callback: Callable[[], None]
    ) -> None:
        fd = self.fds[replica]

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            callback()

        loop.add_reader(fd, readable)

    def unlisten(self, loop: asyncio.AbstractEventLoop, replica: int) -> None:
        if replica < len(self.fds):
            loop.remove_reader(self.fds[replica])


class LoopWakeups:
    """Wake-ups between replicas that share one event loop (the ``memory`` backend)."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}

    def signal(self, replica: int) -> bool:
        got = self._listeners.get(replica)
        if got is None:
            return False
        loop, callback = got
        loop.call_soon(callback)
        return True

    def listen(
        self, loop: asyncio.AbstractEventLoop, replica: int, callback: Callable[[], None]
    ) -> None:
        self._listeners[replica] = (loop, callback)

    def unlisten(self, loop: asyncio.AbstractEventLoop, replica: int) -> None:
        self._listeners.pop(replica, None)
