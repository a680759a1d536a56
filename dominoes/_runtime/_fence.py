"""Read fences: linearizable reads when the log is shared across machines.

On one machine a read catches up to the log's completed tail (``Replica.sync``):
every acknowledged write is below it.  With ``--log nats://`` a write may have
been acknowledged on another machine, and is in the stream before this
machine's ring holds it.  So a read first takes a *fence*:

1. the replica raises the ring's ``B_ASKED`` word to a new generation and
   wakes the bridge;
2. the bridge appends an empty batch to the stream (after that raise), waits
   until its ingest has copied the stream up to it, and raises ``B_SERVED``
   to the generation (every replica of the machine is woken);
3. the replica then applies up to the ring's tail as it was after ``B_SERVED``
   passed its generation, and the read runs.

The stream orders that append after every write committed before it, and a
write is acknowledged only after its commit, so the read sees every write
acknowledged before it arrived, on any machine.  Every read asked on any
replica of the machine before the append shares it.  A fence costs one
append to the stream; reads that ask for ``local`` skip it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._core._errors import LogUnavailableError
from .._core._layout import B_ASKED, B_SERVED

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("ReadFences",)


class ReadFences:
    """A replica's read fences (active only when its log is a ``BridgedLog``)."""

    def __init__(self, replica: Replica) -> None:
        self._r = replica
        log = replica.log
        #: the bridge's wake-up index (None: the log is this machine's alone)
        self.bridge: int | None = getattr(log, "bridge_line", None)
        self._outbox = getattr(log, "outbox", None)
        #: generations asked for, in order, with the future each resolves
        self._asked: list[tuple[int, asyncio.Future[None]]] = []
        #: served generations: the ring tail to reach, and the future
        self._reaching: list[tuple[int, asyncio.Future[None]]] = []
        self.asked = 0
        self.served = 0

    @property
    def active(self) -> bool:
        return self.bridge is not None

    @property
    def waiting(self) -> bool:
        return bool(self._asked or self._reaching)

    def refusal(self) -> LogUnavailableError | None:
        """The error updates and fenced reads get while the bridge cannot reach the stream."""
        if not self._r.log.write_error:
            return None
        return LogUnavailableError(
            "the log's stream cannot be reached (the bridge has tried for a few seconds); "
            "updates and linearizable reads are refused until it can, local reads go on"
        )

    def ask(self) -> asyncio.Future[None]:
        """A future that completes once a read arriving now may run (see the module doc).

        It fails with :class:`LogUnavailableError` while the stream cannot be
        reached (at once, or when the bridge says so while it waits).
        """
        r = self._r
        log = r.log
        refused = self.refusal()
        if refused is not None:
            assert r.loop is not None
            fut: asyncio.Future[None] = r.loop.create_future()
            fut.set_exception(refused)
            return fut
        while True:
            gen = log.durability_word(B_ASKED) + 1
            if log.raise_durability_word(B_ASKED, gen):
                break
        loop = r.loop
        assert loop is not None
        assert self._outbox is not None
        assert self.bridge is not None
        fut = loop.create_future()
        self._asked.append((gen, fut))
        self.asked += 1
        if self._outbox.wake_writer():
            r.wakeups.signal(self.bridge)
        return fut

    def check(self) -> None:
        """After applying: move served fences on, and complete those the replica reached."""
        log = self._r.log
        if log.write_error and (refused := self.refusal()) is not None:
            self.cancel(refused)
            return
        if self._asked:
            served = log.durability_word(B_SERVED)
            if served >= self._asked[0][0]:
                tail = log.tail  # loaded after B_SERVED: past every entry the fence needs
                while self._asked and self._asked[0][0] <= served:
                    self._reaching.append((tail, self._asked.pop(0)[1]))
        if self._reaching:
            cursor = self._r.core.machine.cursor
            while self._reaching and self._reaching[0][0] <= cursor:
                fut = self._reaching.pop(0)[1]
                self.served += 1
                if not fut.done():
                    fut.set_result(None)

    def cancel(self, exc: BaseException | None = None) -> None:
        """The replica closes: fail every waiting read."""
        for _, fut in [*self._asked, *self._reaching]:
            if not fut.done():
                fut.set_exception(exc or ConnectionError("the replica is closing"))
        self._asked.clear()
        self._reaching.clear()

    def summary(self) -> dict[str, Any]:
        return {"asked": self.asked, "served": self.served, "waiting": len(self._asked)}
