"""The supervisor's watchdog, on a log header it is shown (no processes).

A poison verdict waits for every live replica, ready or not; the ejection of
a replica holding a full log works with the stuck-replica watchdog off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dominoes._core._log import LogStatistics, ReplicaState
from dominoes._runtime._supervisor import Child
from dominoes._runtime._watchdog import Watchdog


class FakeLog:
    """The part of a SupervisedLog the watchdog reads, set by the test."""

    def __init__(self, n: int, capacity: int = 64) -> None:
        self.capacity = capacity
        self.states = dict.fromkeys(range(n), ReplicaState.LIVE)
        self.cursors = dict.fromkeys(range(n), 1)
        self.stucks = dict.fromkeys(range(n), 0)
        self.beats = dict.fromkeys(range(n), 0)
        self.tail = 1
        self.poisoned = 0

    def state(self, i: int) -> int:
        return self.states[i]

    def cursor(self, i: int) -> int:
        return self.cursors[i]

    def stuck(self, i: int) -> int:
        return self.stucks[i]

    def heartbeat(self, i: int) -> int:
        return self.beats[i]

    def published(self, seq: int) -> bool:
        return seq < self.tail

    def slowest_cursor(self) -> int:
        return min(self.cursors.values())

    def statistics(self) -> LogStatistics:
        slowest = min(self.cursors, key=self.cursors.__getitem__)
        return LogStatistics(
            capacity=self.capacity,
            slot_size=64,
            tail=self.tail,
            free_slots=self.capacity - (self.tail - self.cursors[slowest]),
            slowest_replica=slowest,
            slowest_cursor=self.cursors[slowest],
            live=tuple(i for i, s in self.states.items() if s == ReplicaState.LIVE),
            joining=(),
            dead=(),
        )

    def announcer(self, seq: int) -> int | None:
        return None

    def declare_poisoned(self, seq: int) -> None:
        self.poisoned = seq

    def read(self, seq: int) -> Any:
        return None


class FakeProc:
    pid = 4242

    def __init__(self) -> None:
        self.killed = False

    def kill(self) -> None:
        self.killed = True


def children(n: int) -> list[Child]:
    return [Child(i, None, proc=FakeProc(), ready=True) for i in range(n)]  # type: ignore[arg-type]


def watchdog(kids: list[Child], log: FakeLog, tmp_path: Path, **limits: float | None) -> Watchdog:
    return Watchdog(
        children=kids,
        log=log,  # type: ignore[arg-type]
        run_dir=tmp_path,
        stuck_after=limits.get("stuck_after"),
        eject_after=limits.get("eject_after"),
        wake=lambda: None,
        stopping=lambda: False,
    )


def ticks(dog: Watchdog, n: int) -> None:
    async def run() -> None:
        for _ in range(n):
            dog._tick()

    asyncio.run(run())


def test_no_poison_verdict_while_a_live_replica_not_ready_yet_may_apply_the_entry(
    tmp_path: Path,
) -> None:
    log = FakeLog(2)
    kids = children(2)
    kids[1].ready = False  # live from its snapshot on, still running on_start
    log.tail = 10
    log.cursors = {0: 5, 1: 3}
    log.stucks = {0: 5, 1: 0}  # replica 0 gave up on seq 5; replica 1 is not there yet
    dog = watchdog(kids, log, tmp_path, stuck_after=5.0)
    ticks(dog, 1)
    assert log.poisoned == 0
    assert dog.poisoned == 0
    log.cursors[1] = log.stucks[1] = 5  # it gave up on it too: now nobody can apply it
    ticks(dog, 1)
    assert log.poisoned == 5
    assert dog.poisoned == 1
    assert "seq=5" in (tmp_path / "poisoned.log").read_text()


def test_a_replica_holding_a_full_log_is_ejected_with_the_stuck_watchdog_off(
    tmp_path: Path,
) -> None:
    log = FakeLog(2, capacity=64)
    kids = children(2)
    log.tail = 101
    log.cursors = {0: 100, 1: 40}  # 61 of 64 slots held by replica 1, replica 0 ahead
    dog = watchdog(kids, log, tmp_path, stuck_after=None, eject_after=0.0)
    ticks(dog, 2)
    assert kids[1].proc.killed  # type: ignore[union-attr]
    assert not kids[0].proc.killed  # type: ignore[union-attr]


def test_a_slow_replica_that_moves_is_not_ejected(tmp_path: Path) -> None:
    log = FakeLog(2, capacity=64)
    kids = children(2)
    log.tail = 101
    log.cursors = {0: 100, 1: 40}
    dog = watchdog(kids, log, tmp_path, stuck_after=None, eject_after=0.0)
    for cursor in range(41, 45):  # it applies one entry between every two looks
        ticks(dog, 1)
        log.cursors[1] = cursor
    assert not kids[1].proc.killed  # type: ignore[union-attr]
