"""Waiting for room in a full log: the one back-off every producer uses.

A full log is backpressure, never an overwrite (invariant 4): an append
that finds no room returns 0 (or raises :class:`LogFullError`), and the
producer waits and tries again.  Room appears when the slowest replica
applies what holds it, usually within a batch (tens of microseconds), so the
wait starts short and doubles up to a few milliseconds: short enough to
follow a replica that catches up, long enough not to burn the core a
catching-up replica may share.

``Replica.submit``, the group commit, the KV server's delayed submissions and
``dominoes.connect`` all wait through here, with these constants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

from .._core._errors import LogFullError

__all__ = ("FULL_BACKOFF_MAX", "FULL_BACKOFF_MIN", "Backoff", "when_room")

#: The first wait after a refused append (seconds).
FULL_BACKOFF_MIN: Final = 0.0001
#: The longest wait between two tries (seconds).
FULL_BACKOFF_MAX: Final = 0.005

T = TypeVar("T")


class Backoff:
    """Delays between tries: ``FULL_BACKOFF_MIN``, doubling to ``FULL_BACKOFF_MAX``.

    For callback-style waiters (``loop.call_later(backoff.next(), retry)``);
    :meth:`reset` after an append that went through.
    """

    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = FULL_BACKOFF_MIN

    def next(self) -> float:
        """The delay before the next try (and double the one after it)."""
        delay = self.delay
        self.delay = min(delay * 2, FULL_BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self.delay = FULL_BACKOFF_MIN


async def when_room(attempt: Callable[[], T], *, stopped: Callable[[], bool] | None = None) -> T:
    """Call ``attempt()`` until it does not raise :class:`LogFullError`; its result.

    Between tries it sleeps (:class:`Backoff`).  ``stopped()`` returning True
    ends the wait with ``asyncio.CancelledError`` (the producer is closing).
    Any other exception from ``attempt`` propagates at once.
    """
    backoff = Backoff()
    while True:
        if stopped is not None and stopped():
            raise asyncio.CancelledError("stopping while the log is full")
        try:
            return attempt()
        except LogFullError:
            await asyncio.sleep(backoff.next())
