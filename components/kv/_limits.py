"""Output limits: Redis's ``client-output-buffer-limit``, and their enforcement.

Limits exist for the normal and pubsub classes (``CONFIG SET``, replicated
through the log).  The output a client holds is its queued reply frames plus
the transport's write buffer; at the hard limit it is disconnected at once, at
or above the soft limit for its seconds it is disconnected too (a timer looks,
so an idle stuck client is found).  The flow-control watermark
(:data:`OUTPUT_WATERMARK`) stays under the soft limit and half the hard one, so
a client that reads keeps below them: it takes a client that stops reading
(soft), or a single reply larger than the limit (hard), to reach them.

:class:`Limits` is one class's values; :class:`OutputLimits` is the
connection's side (a mixin of :class:`~._connection.Connection`);
:func:`parse_output_limits` reads ``CONFIG SET``'s value.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Final

from ._errors import INT64_MAX, KvError

if TYPE_CHECKING:
    from collections import deque

    from ._entries import Entry
    from ._server import Server

__all__ = (
    "NORMAL_OUTPUT_LIMITS",
    "OUTPUT_LIMIT",
    "OUTPUT_WATERMARK",
    "PUBSUB_OUTPUT_LIMIT",
    "PUBSUB_OUTPUT_LIMITS",
    "Limits",
    "OutputLimits",
    "config_failed",
    "parse_output_limits",
)

log = logging.getLogger("dominoes.kv")

#: A subscriber whose unsent output exceeds this is disconnected (Redis: 32 MB).
PUBSUB_OUTPUT_LIMIT: Final = 32 * 1024 * 1024
#: ``client-output-buffer-limit`` for normal clients: hard bytes, soft bytes, soft
#: seconds.  Redis's default is ``0 0 0`` (unlimited), which let one client that
#: pipelined GETs of a large value without reading make a replica hold gigabytes.
#: 256 MB hard and 64 MB for 60 s are Redis's own limits for replica links, the
#: clients it expects to lag most: no healthy client waits on that much output,
#: and a handful of stuck ones cannot exhaust the machine.
NORMAL_OUTPUT_LIMITS: Final = (256 * 1024 * 1024, 64 * 1024 * 1024, 60)
#: The same for subscribers: a hard limit only (the behaviour before the limits
#: became configurable; Redis's is ``32mb 8mb 60``).
PUBSUB_OUTPUT_LIMITS: Final = (PUBSUB_OUTPUT_LIMIT, 0, 0)
#: Output a connection may hold before reading and running its commands stop
#: until the client reads (flow control, below the limits): large enough to
#: keep the socket busy, small enough that a stuck client costs little.  A soft
#: limit, or half a hard limit, set lower than it lowers it.
OUTPUT_WATERMARK: Final = 1024 * 1024

#: The configuration parameter's name (``CONFIG GET`` / ``CONFIG SET``).
OUTPUT_LIMIT: Final = b"client-output-buffer-limit"


class Limits:
    """One client class's output limits, and where its connections first look at them."""

    __slots__ = ("check", "first", "flow", "hard", "seconds", "soft")

    def __init__(self, hard: int, soft: int, seconds: int) -> None:
        self.hard = hard
        self.soft = soft
        self.seconds = seconds
        #: the output at which reading and running commands stop (flow control)
        self.flow = min(OUTPUT_WATERMARK, soft or OUTPUT_WATERMARK, hard // 2 or OUTPUT_WATERMARK)
        #: the least output at which a limit may apply (0 is no limit)
        self.check = min([n for n in (hard, soft) if n] or [sys.maxsize])
        #: ``next_check(held)`` for every ``held`` below it (the common case, precomputed)
        self.first = min(self.check, self.flow)

    def values(self) -> list[int]:
        return [self.hard, self.soft, self.seconds]

    def next_check(self, held: int) -> int:
        """The next output, above ``held``, at which something happens."""
        return min([n for n in (self.hard, self.soft, self.flow) if n > held] or [sys.maxsize])


class OutputLimits:
    """A connection's side of the limits: which apply to it, and enforcing them (``_cut``)."""

    if TYPE_CHECKING:  # provided by Connection
        server: Server
        id: int
        peer: str
        transport: asyncio.Transport | None
        channels: set[bytes]
        patterns: set[bytes]
        closing: bool
        backlog: list[list[bytes]]
        more: bool
        out: list[bytes]
        pending: deque[bytes | Entry]
        queued: int
        _push_bytes: int
        soft_since: float | None
        _soft_timer: asyncio.TimerHandle | None

        def _held(self) -> int: ...

    def _limits(self) -> Limits:
        return self.server.limits(bool(self.channels or self.patterns))

    def _output_full(self, held: int) -> bool:
        """Whether commands must stop running: ``held`` is over a limit (the client is
        cut off) or over the flow-control watermark (the rest waits until it reads)."""
        return self._check_limits(held) or self.closing or held >= self._limits().flow

    def _check_limits(self, held: int) -> bool:
        """Enforce the output limits on ``held`` bytes of output; True if the client is cut off.

        As in Redis: at or above the hard limit, at once; at or above the soft
        limit, once it has stayed there for the soft seconds (a timer looks
        again then, since a stuck client makes no callback of its own).
        """
        limits = self._limits()
        if limits.hard and held >= limits.hard:
            self._cut(held, "hard", limits.hard)
            return True
        if limits.soft and held >= limits.soft:
            now = time.monotonic()
            if self.soft_since is None:
                self.soft_since = now
                if self._soft_timer is None:
                    self._soft_timer = asyncio.get_running_loop().call_later(
                        limits.seconds, self._soft_due
                    )
            elif now - self.soft_since >= limits.seconds:
                self._cut(held, "soft", limits.soft, limits.seconds)
                return True
        else:
            self.soft_since = None
        return False

    def _soft_due(self) -> None:
        self._soft_timer = None
        if self.transport is None or self.soft_since is None:
            return
        limits = self._limits()
        held = self._held()
        if self._check_limits(held) or self.soft_since is None:
            return
        left = self.soft_since + limits.seconds - time.monotonic()
        self._soft_timer = asyncio.get_running_loop().call_later(max(left, 0.0), self._soft_due)

    def _cut(self, held: int, which: str, limit: int, seconds: int = 0) -> None:
        """Disconnect a client over its output limit, dropping what it holds."""
        server = self.server
        server.output_limit_disconnections += 1
        kind = "pubsub" if self.channels or self.patterns else "normal"
        during = f" for {seconds} s" if which == "soft" else ""
        log.warning(
            "replica %d: client id=%d addr=%s closed for its output buffer: %d bytes over "
            "the %s limit of %d bytes%s (client-output-buffer-limit %s)",
            server.index, self.id, self.peer, held, which, limit, during, kind,
        )  # fmt: skip
        transport = self.transport
        self.transport = None  # connection_lost still runs (unsubscribes, unwatches)
        self.closing = True
        self.backlog = []
        self.more = False
        self.out.clear()
        self.pending.clear()
        self.queued = self._push_bytes = 0
        if self._soft_timer is not None:
            self._soft_timer.cancel()
            self._soft_timer = None
        if transport is not None:
            transport.abort()


# --- CONFIG SET client-output-buffer-limit -----------------------------------------------

#: ``client-output-buffer-limit`` classes: where their three numbers go in the list
_CLASSES: Final = {b"normal": 0, b"pubsub": 3, b"replica": -1, b"slave": -1}
_UNITS: Final = {
    b"": 1,
    b"b": 1,
    b"k": 1000,
    b"kb": 1024,
    b"m": 1000**2,
    b"mb": 1024**2,
    b"g": 1000**3,
    b"gb": 1024**3,
}
_MEMORY: Final = re.compile(rb"([0-9]+)([a-z]*)")


def config_failed(why: str) -> KvError:
    return KvError(
        f"ERR CONFIG SET failed (possibly related to argument 'client-output-buffer-limit') - {why}"
    )


def parse_output_limits(value: bytes, limits: list[int]) -> None:
    """Redis's ``<class> <hard> <soft> <soft seconds>`` groups, applied to ``limits`` in place.

    Sizes take Redis's units (``kb``, ``mb``, ``gb``: powers of 1024; ``k``,
    ``m``, ``g``: of 1000).  The replica class is accepted and ignored: the
    service has no replica links.
    """
    words = value.split()
    if len(words) % 4:
        raise config_failed("Wrong number of arguments in buffer limit configuration.")
    for i in range(0, len(words), 4):
        at = _CLASSES.get(words[i].lower())
        if at is None:
            raise config_failed("Invalid client class specified in buffer limit configuration.")
        numbers: list[int] = []
        for word in words[i + 1 : i + 4]:
            match = _MEMORY.fullmatch(word.lower())
            unit = _UNITS.get(match[2]) if match else None
            if match is None or unit is None or (match[2] and len(numbers) == 2):
                raise config_failed(
                    "Error in hard, soft or soft_seconds setting in buffer limit configuration."
                )
            numbers.append(min(int(match[1]) * unit, INT64_MAX))
        if at >= 0:
            limits[at : at + 3] = numbers
