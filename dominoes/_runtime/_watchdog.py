"""The supervisor's watchdog: stuck, frozen and poisoned replicas, and dead replicas' leftovers.

Every ``WATCHDOG_EVERY`` seconds it looks at the log's header (cursors,
heartbeats, reservations, gave-up seqs) and acts on what it finds:

* **Poison verdicts** (:meth:`Watchdog._judge_poison`): an entry every live
  replica gave up applying is declared poison (invariant 9).
* **Stuck replicas**: a live replica that sits on a published entry for
  ``stuck_after`` seconds is killed (it restarts from a snapshot).
* **Liveness** (:meth:`Watchdog._watch_liveness`): a replica whose heartbeat
  stopped, or that alone holds a full log for ``eject_after`` seconds, is
  killed (ejected).
* **Unpublished reservations**: a producer that holds the first unpublished
  seq for ``stuck_after`` seconds is killed (a replica) or reported (a local
  client).
* **Dead replicas' blobs**: the files of entries too large for the ring that
  a dead replica wrote are removed once every replica is past them.

Waiting on a slow replica is backpressure; waiting forever on a stuck one
would stall the service (invariant 7, docs/design/invariants.md).  The
liveness pass kills a replica only while another live one serves: killing the
last would lose the state.  The stuck and unpublished passes do not ask: an
entry that wedges every replica beyond ``--apply-timeout``'s reach (C code
that never checks for signals) gets them all killed, and the supervisor
stops with status 1 (docs/design/reads-and-poison.md, "Where it stops").
Killed replicas are restarted by the supervisor like any dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._core._backend import SupervisedLog
from .._core._log import LogStatistics, ReplicaState

if TYPE_CHECKING:
    from ._supervisor import Child

__all__ = ("STUCK_AFTER", "WATCHDOG_EVERY", "Watchdog")

log = logging.getLogger("dominoes.supervisor")

#: A live replica that has not applied its next, published entry for this
#: long is stuck (a handler blocked, a frozen process): the supervisor kills
#: it, so it stops holding the log back, and restarts it from a snapshot.
#: Slow replicas that make progress are never killed; they cause backpressure.
STUCK_AFTER: Final = 5.0
WATCHDOG_EVERY: Final = 0.25


class Watchdog:
    """Looks at the log every ``WATCHDOG_EVERY`` seconds; kills what holds the others back."""

    def __init__(
        self,
        *,
        children: list[Child],
        log: SupervisedLog,
        run_dir: Path,
        stuck_after: float | None,
        eject_after: float | None,
        wake: Callable[[], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.children = children
        self._log = log
        self._run_dir = run_dir
        self._stuck_after = stuck_after
        self._eject_after = eject_after
        self._wake = wake
        self._stopping = stopping
        #: poison entries declared so far
        self.poisoned = 0
        self._last_watch = time.monotonic()
        # (glob of a dead replica's blob files, the tail at its death)
        self._dead_blobs: list[tuple[str, int]] = []
        # the first unpublished seq every reader waits at, and since when
        self._held_head: int | None = None
        self._held_since = 0.0

    def start(self) -> None:
        asyncio.get_running_loop().call_later(WATCHDOG_EVERY, self._tick)

    def remove_blobs_later(self, pattern: str, tail: int) -> None:
        """Remove the files matching ``pattern`` once every replica is past ``tail``."""
        self._dead_blobs.append((pattern, tail))

    def _tick(self) -> None:
        """One round: poison verdicts, dead replicas' blobs, then what holds the log back.

        Live replicas that sit on a published entry for ``stuck_after``
        seconds are killed.  A replica that does not apply holds the log back; once the log is full,
        every writer waits on it.  Waiting on a slow replica is backpressure;
        waiting forever on a stuck one would stall the service (invariant 7,
        docs/design/invariants.md), so a stuck one is treated as dead.
        """
        if self._stopping():
            return
        loop = asyncio.get_running_loop()
        loop.call_later(WATCHDOG_EVERY, self._tick)
        waiting = self._judge_poison()
        stats = self._log.statistics()  # one reading of the header for the whole round
        if self._dead_blobs:
            low = stats.slowest_cursor
            for pattern, tail in [d for d in self._dead_blobs if d[1] <= low]:
                self._dead_blobs.remove((pattern, tail))
                for path in self._run_dir.glob(pattern):
                    path.unlink(missing_ok=True)
        limit = self._stuck_after
        if limit is None and self._eject_after is None:
            return
        now = time.monotonic()
        if now - self._last_watch > 4 * WATCHDOG_EVERY:
            # The supervisor itself did not run for a while (a paused VM, an
            # overloaded host): what it measured since is unreliable, so
            # every clock restarts rather than blame a replica for the gap.
            for c in self.children:
                c.stuck_since = c.holding_since = None
                c.beat_since = now
        self._last_watch = now
        if limit is not None:
            self._watch_unpublished(now, limit, stats)
        # Even with --stuck-after 0: --eject-after bounds writers' waits on its own.
        self._watch_liveness(now, limit, stats)
        if limit is None:
            return
        for c in self.children:
            if not c.ready or c.proc is None or self._log.state(c.index) != ReplicaState.LIVE:
                c.stuck_since = None
                continue
            cursor = self._log.cursor(c.index)
            if cursor != c.seen_cursor or not self._log.published(cursor) or c.index in waiting:
                c.seen_cursor, c.stuck_since = cursor, None
                continue
            if c.stuck_since is None:
                c.stuck_since = now
            elif now - c.stuck_since >= limit:
                lag = stats.tail - cursor
                self._kill(c, f"stuck seq={cursor} for {now - c.stuck_since:.1f}s with lag {lag}")

    def _watch_liveness(self, now: float, limit: float | None, stats: LogStatistics) -> None:
        """Kill a replica that stopped serving, or that alone holds a full log.

        * **No heartbeat.**  A replica's event loop bumps its heartbeat word
          every few milliseconds.  One that has not moved for ``stuck_after``
          seconds means a loop that no longer runs (SIGSTOP, a blocked
          handler, a frozen process): its clients and its accept queue wait
          in vain, even when no write exposes it.
        * **Holding a full log.**  A replica whose cursor has not moved for
          ``eject_after`` seconds while the log is (nearly) full and another
          live replica is ahead of it stalls every writer of the service.
          It is ejected and restarts from a snapshot, so no write waits on it
          for longer than that bound.  A slow replica that makes progress is
          never ejected; it causes backpressure.

        Either way only while another live replica is serving (fresh
        heartbeat): killing the last one would lose the state.  With no
        ``limit`` (``--stuck-after 0``) heartbeats are not judged, and every
        live replica counts as serving.
        """
        log_ = self._log
        live = [
            c
            for c in self.children
            if c.ready and c.proc is not None and log_.state(c.index) == ReplicaState.LIVE
        ]
        for c in live:
            beat = log_.heartbeat(c.index)
            if beat != c.seen_beat:
                c.seen_beat, c.beat_since = beat, now
        fresh = {c.index for c in live if limit is None or now - c.beat_since < limit}
        nearly_full = stats.free_slots < max(1, stats.capacity // 16)
        cursors = {c.index: log_.cursor(c.index) for c in live}
        eject = self._eject_after
        for c in live:
            others_fresh = bool(fresh - {c.index})
            if c.index not in fresh and others_fresh:
                self._kill(c, f"stopped serving: no heartbeat for {now - c.beat_since:.1f}s")
                continue
            cursor = cursors[c.index]
            ahead = any(cursors[o] > cursor for o in cursors if o != c.index)
            if not (nearly_full and ahead and stats.slowest_replica == c.index):
                c.holding_since = None
            elif c.holding_since is None or cursor != c.holding_cursor:
                c.holding_cursor, c.holding_since = cursor, now  # holding, or it moved
            elif eject is not None and now - c.holding_since >= eject and others_fresh:
                self._kill(
                    c,
                    f"held the full log for {now - c.holding_since:.1f}s at seq "
                    f"{cursor} while others were ahead (ejected; "
                    "--eject-after bounds how long writers wait on one replica)",
                )

    def _kill(self, child: Child, why: str) -> None:
        log.error("replica %d %s; killing it (it restarts from a snapshot)", child.index, why)
        child.holding_since = child.stuck_since = None
        child.beat_since = time.monotonic()
        if child.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()

    def _judge_poison(self) -> set[int]:
        """Declare a poison entry when every live replica gave up on the same seq.

        A replica that gave up on an apply (it ran past ``--apply-timeout``)
        rolled back to just before the entry and announces the seq in its log
        line.  If another replica applied the entry, it is not poison: the one
        that gave up applies it again by itself.  If every live replica gave
        up on it, nobody can apply it: the supervisor declares it poison, and
        each replica applies it as an error (invariant 9,
        docs/design/invariants.md).  Returns the
        replicas legitimately waiting for this verdict (the stuck-replica
        watchdog spares them).
        """
        log_ = self._log
        # Every live line has a say, ready or not: a replica that joined (live
        # from its snapshot on) but still runs on_start applies entries too,
        # and may yet apply the one the others gave up on.
        live = [c.index for c in self.children if log_.state(c.index) == ReplicaState.LIVE]
        if not live:
            return set()
        cursors = {i: log_.cursor(i) for i in live}
        stuck = {i: log_.stuck(i) for i in live}
        waiting = {i for i in live if stuck[i] and stuck[i] == cursors[i]}
        if not waiting:
            return waiting
        seqs = {stuck[i] for i in waiting}
        if any(cursors[i] > min(seqs) for i in live):
            return {i for i in waiting if not any(cursors[j] > stuck[i] for j in live)}
        if len(waiting) == len(live) and len(seqs) == 1:
            seq = seqs.pop()
            if log_.poisoned != seq:
                log_.declare_poisoned(seq)
                self.poisoned += 1
                what = self._describe(seq)
                # The record first: whoever reads the log line finds it written.
                with contextlib.suppress(OSError), open(self._run_dir / "poisoned.log", "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} seq={seq} {what}\n")
                log.error(
                    "POISON seq=%d (%s): every live replica (%s) gave up applying it; "
                    "each applies it as an error and goes on from the state before it",
                    seq,
                    what,
                    ",".join(map(str, sorted(live))),
                )
                self._wake()
        return waiting

    def _describe(self, seq: int) -> str:
        """The events of the entry at ``seq``, for the poison record."""
        from .._core._codec import decode

        got = self._log.read(seq)
        if got is None:
            return "unreadable"
        try:
            entry = decode(got[2], seq)
        except Exception as exc:  # noqa: BLE001 - a record, not a decision
            return f"undecodable: {exc}"
        calls = getattr(entry, "calls", None) or [entry]
        names = sorted({getattr(c, "event", type(c).__name__) for c in calls})
        return f"{type(entry).__name__} of {', '.join(names)}"

    def _watch_unpublished(self, now: float, limit: float, stats: LogStatistics) -> None:
        """Kill a replica that holds a reservation unpublished for ``limit`` seconds.

        Every reader waits at the first unpublished seq.  Its producer never
        waits between reserve and publish, so a head unpublished this long
        means the producer is frozen or wedged: a replica is killed (SIGKILL:
        it can never write that slot late), and its death fills the slot.  A
        local client cannot be killed safely from here; it is reported.
        """
        head = stats.slowest_cursor
        if head >= stats.tail or self._log.published(head):
            self._held_head = None
            return
        if self._held_head != head:
            self._held_head, self._held_since = head, now
            return
        if now - self._held_since < limit:
            return
        self._held_since = now  # act (or report) once per period
        line = self._log.announcer(head)
        n = len(self.children)
        child = self.children[line] if line is not None and line < n else None
        if child is not None and child.proc is not None:
            self._kill(child, f"reserved seq={head} and has not published it for {limit:.1f}s")
        else:
            log.error(
                "seq=%d has been reserved and unpublished for %.1fs (line %s): every replica "
                "waits on it",
                head,
                limit,
                line,
            )
