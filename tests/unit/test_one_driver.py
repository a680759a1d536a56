"""``testing.Cluster`` and the runtime's ``Replica`` run the same driver logic.

Both are thin shells over ``ReplicaCore``: group commit (how queued calls
become log entries) and timer firing (which ``Fire`` entries a replica
appends) live there once.  Each scenario below runs on both drivers; the
sabotage tests break that shared code and show that *both* drivers see it,
which they could not if either kept a copy of its own.

The runtime driver here is the real ``Replica`` class on a running event
loop, over the ``memory`` log backend with loop wake-ups: two replicas in one
process, no fork, no shared memory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import dominoes._core._replica as core_replica
from dominoes import Component, Context, Replica, Service, update
from dominoes._core._codec import Fire
from dominoes._core._memory import MemoryLogHost
from dominoes._runtime._wakeups import LoopWakeups
from dominoes.testing import Cluster

DRIVERS = ["cluster", "runtime"]
#: events the timer's effect sets (on whichever replica owns the Fire entry)
RANG: list[asyncio.Event] = []


def rang() -> None:
    for event in RANG:
        event.set()


CALLS = 5
DELAY = 0.05


class Ledger(Component):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fired: list[tuple[float, float]] = []  # (ctx.now at fire, deadline)

    @update
    def add(self, ctx: Context, line: str) -> int:
        self.lines.append(line)
        return len(self.lines)

    @update
    def arm(self, ctx: Context, delay: float) -> float:
        ctx.raise_later(delay, Ledger.ring, ctx.now + delay)
        return ctx.now + delay

    @update
    def ring(self, ctx: Context, deadline: float) -> None:
        self.fired.append((ctx.now, deadline))
        ctx.effect(rang)


def service() -> Service:
    return Service("ledger", [Ledger()])


class Observed:
    def __init__(self, results: list[Any], entries: int, lines: list[str], fired: list[Any]):
        self.results = results
        self.entries = entries
        self.lines = lines
        self.fired = fired

    def problems(self) -> list[str]:
        out = []
        if self.results != list(range(1, CALLS + 1)):
            out.append(f"results {self.results}")
        if self.lines != [f"l{i}" for i in range(CALLS)]:
            out.append(f"lines {self.lines}")
        if self.entries != 1:
            out.append(f"{CALLS} calls of one loop iteration took {self.entries} entries")
        if len(self.fired) != 1:
            out.append(f"fired {self.fired}")
        else:
            now, deadline = self.fired[0]
            if not deadline <= now < deadline + 60:
                out.append(f"fired at {now}, deadline {deadline}")
        return out


def on_cluster() -> Observed:
    cluster = Cluster(service(), replicas=2)
    pendings = [cluster.submit_soon(0, Ledger.add, f"l{i}") for i in range(CALLS)]
    cluster.run_until_quiet()
    entries = cluster[1].statistics().applied_entries
    results = [p.result() for p in pendings]
    cluster.call(1, Ledger.arm, DELAY)
    cluster.advance(DELAY * 2)
    ledger = cluster[1].component(Ledger)
    return Observed(results, entries, ledger.lines, ledger.fired)


async def on_runtime(tmp_path: Path) -> Observed:
    host = MemoryLogHost(capacity=64, slot_size=128, replicas=2)
    wakeups = LoopWakeups()
    loop = asyncio.get_running_loop()
    replicas = []
    for i in range(2):
        host.log.join(i, cursor=1)
        host.log.set_live(i)
        r = Replica(
            service(),
            i,
            host.handle(),
            wakeups,
            replicas=2,
            run_dir=tmp_path,
            apply_timeout=None,
            fork_snapshots=False,
        )
        r.attach(loop)
        r.start_fresh()
        replicas.append(r)
    try:
        a, b = replicas
        futs = [a.submit_soon(Ledger.add, f"l{i}") for i in range(CALLS)]
        results = await asyncio.wait_for(asyncio.gather(*futs), 10)
        fired = asyncio.Event()
        RANG.append(fired)
        try:
            await b.submit(Ledger.arm, DELAY)
            await asyncio.wait_for(fired.wait(), 10)  # the replicas' own timers fire it
        finally:
            RANG.remove(fired)
        b.sync()  # the owner of the Fire entry may have been the other replica
        entries = b.statistics().core.applied_entries
        ledger = b.component(Ledger)
        return Observed(list(results), entries - 2, ledger.lines, ledger.fired)
    finally:
        for r in replicas:
            r.close()
        host.close()


async def observe(driver: str, tmp_path: Path) -> Observed:
    if driver == "cluster":
        return on_cluster()
    return await on_runtime(tmp_path)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_group_commit_and_timers_work_on_both_drivers(driver: str, tmp_path: Path) -> None:
    assert (await observe(driver, tmp_path)).problems() == []


@pytest.mark.parametrize("driver", DRIVERS)
async def test_broken_group_commit_breaks_both_drivers(
    driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core_replica, "GROUP_MAX", 1)  # every call its own entry
    problems = (await observe(driver, tmp_path)).problems()
    assert problems == [f"{CALLS} calls of one loop iteration took {CALLS} entries"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_broken_timer_firing_breaks_both_drivers(
    driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def late_fire(timer_id: int, ts: float, origin: int) -> Fire:
        return Fire(timer_id, ts + 3600, origin)  # a Fire stamped an hour late

    monkeypatch.setattr(core_replica, "Fire", late_fire)
    problems = (await observe(driver, tmp_path)).problems()
    assert len(problems) == 1
    assert problems[0].startswith("fired at")
