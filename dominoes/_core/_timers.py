"""Replicated timers: one object holding their replicated and local state.

Replicated (in snapshots and digests, the same on every replica): the
pending timers ``id -> (deadline, event, args, kwargs)`` and the next id.
Local (each replica's own): a heap of ``(deadline, id)`` for finding due
timers, and the ids this replica has asked to fire and when.

A timer fires through the log: when it is due, replicas append ``Fire``
entries (:meth:`Timers.due` says which ones this replica should ask for), and
the first ``Fire`` applied runs it; later ones find it gone and do nothing.
"""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ("Timers",)

Timer = tuple[float, str, list[Any], dict[str, Any]]


class Timers:
    """The timers of one state machine (``StateMachine.timers``)."""

    __slots__ = ("_asked", "_heap", "fired", "next_id", "pending")

    def __init__(self) -> None:
        #: replicated: id -> (deadline, event, args, kwargs)
        self.pending: dict[int, Timer] = {}
        #: replicated: the id the next armed timer gets
        self.next_id = 1
        #: local: timers fired on this replica (a statistic)
        self.fired = 0
        self._heap: list[tuple[float, int]] = []
        self._asked: dict[int, float] = {}  # id -> local time this replica asked

    def __len__(self) -> int:
        return len(self.pending)

    # --- replicated changes (called while applying) --------------------------------

    def arm(self, deadline: float, event: str, args: Any, kwargs: dict[str, Any]) -> int:
        tid = self.next_id
        self.next_id += 1
        self.pending[tid] = (deadline, event, list(args), dict(kwargs))
        heapq.heappush(self._heap, (deadline, tid))
        return tid

    def cancel(self, timer_id: int) -> bool:
        self._asked.pop(timer_id, None)
        return self.pending.pop(timer_id, None) is not None

    def take(self, timer_id: int) -> Timer | None:
        """Remove a timer to fire it (None: fired or cancelled already)."""
        self._asked.pop(timer_id, None)
        return self.pending.pop(timer_id, None)

    def deadline(self, timer_id: int) -> float | None:
        timer = self.pending.get(timer_id)
        return None if timer is None else timer[0]

    # --- local: when to ask --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest pending deadline (replicated time), or None."""
        heap, pending = self._heap, self.pending
        while heap and heap[0][1] not in pending:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(
        self, local_now: float, index: int, replicas: int, grace: float, resend: float | None = None
    ) -> list[int]:
        """Timers replica ``index`` should ask to fire now (by appending ``Fire`` entries).

        Timer ``id`` is asked for first by replica ``id % replicas``; every
        other replica asks ``grace`` seconds later, so a timer still fires when
        its designated replica is dead.  Duplicate ``Fire`` entries are
        harmless.  A replica asks again after ``resend`` seconds (default:
        ``grace``) in case its append was lost with a dying process.
        """
        if resend is None:
            resend = grace
        heap, pending, asked = self._heap, self.pending, self._asked
        due: list[int] = []
        keep: list[tuple[float, int]] = []
        while heap and heap[0][0] <= local_now:
            deadline, tid = heapq.heappop(heap)
            if tid not in pending:
                continue
            keep.append((deadline, tid))
            start = deadline if tid % replicas == index % replicas else deadline + grace
            last = asked.get(tid)
            if local_now >= start and (last is None or local_now - last >= resend):
                asked[tid] = local_now
                due.append(tid)
        for item in keep:
            heapq.heappush(heap, item)
        return due

    def refused(self) -> None:
        """The log refused this replica's asks: ask for every due timer again next time."""
        self._asked.clear()

    # --- snapshots and digests ------------------------------------------------------------

    def dump(self) -> list[tuple[int, float, str, list[Any], dict[str, Any]]]:
        return [(tid, d, e, list(a), kw) for tid, (d, e, a, kw) in self.pending.items()]

    def load(
        self, next_id: int, timers: list[tuple[int, float, str, list[Any], dict[str, Any]]]
    ) -> None:
        self.next_id = next_id
        self.pending = {tid: (d, e, a, kw) for tid, d, e, a, kw in timers}
        self._heap = [(d, tid) for tid, (d, _, _, _) in self.pending.items()]
        heapq.heapify(self._heap)
        self._asked = {}

    def digest_items(self) -> list[tuple[Any, ...]]:
        return sorted((k, *v[:2]) for k, v in self.pending.items())
