"""A ``Replica`` on a real loop over a real shared log, without processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dominoes import Component, Context, LogFullError, Replica, Service, query, update
from dominoes._core._errors import ApplyTimeout
from dominoes._runtime._joining import Joining
from dominoes._runtime._shm import SharedLog
from dominoes._runtime._wakeups import EventfdWakeups

pytestmark = pytest.mark.integration


class Trail(Component):
    def __init__(self) -> None:
        self.seen: list[str] = []

    @update
    def mark(self, ctx: Context, what: str) -> int:
        self.seen.append(what)
        return len(self.seen)


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    shared = SharedLog.create("trail", capacity=16, slot_size=128, max_replicas=2)
    log = shared.log()
    log.join(0, cursor=1)
    log.set_live(0)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    r = Replica(
        Service("trail", [Trail()]), 0, log, EventfdWakeups([efd]), replicas=1, run_dir=tmp_path
    )
    r.attach(asyncio.get_running_loop())
    r.start_fresh()
    try:
        yield r
    finally:
        r.close()
        shared.close()
        os.close(efd)


async def test_group_commit_keeps_order_with_the_other_submit_forms(replica: Replica) -> None:
    first = replica.submit_soon(Trail.mark, "soon-1")
    second = replica.submit_nowait(Trail.mark, "nowait")  # must land after soon-1
    third = replica.submit_soon(Trail.mark, "soon-2")
    fourth = asyncio.ensure_future(replica.submit(Trail.mark, "submit"))
    # gather's result is a list (typed as a tuple)
    results = await asyncio.wait_for(asyncio.gather(first, second, third, fourth), 5)
    assert list(results) == [1, 2, 3, 4]
    assert replica.component(Trail).seen == ["soon-1", "nowait", "soon-2", "submit"]


async def test_one_loop_iteration_of_submit_soon_is_one_entry(replica: Replica) -> None:
    futs = [replica.submit_soon(Trail.mark, f"m{i}") for i in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*futs), 5) == [1, 2, 3, 4, 5]
    stats = replica.statistics()
    assert stats.core.applied_entries == 1  # one entry (spanning several slots)
    assert stats.group_commits == 1


async def test_a_full_log_delays_the_group_and_refuses_nowait_behind_it(replica: Replica) -> None:
    pad = "x" * 40
    blockers = []
    while True:  # fill the log without applying (the loop does not run meanwhile)
        try:
            blockers.append(replica.submit_nowait(Trail.mark, pad))
        except LogFullError:
            break
    queued = replica.submit_soon(Trail.mark, "late")
    with pytest.raises(LogFullError):
        replica.submit_nowait(Trail.mark, "behind")  # would overtake "late"
    await asyncio.wait_for(asyncio.gather(*blockers, queued), 5)
    assert replica.component(Trail).seen[-1] == "late"


class GivesUp(Component):
    """``mark`` gives up (as an apply timeout would) once, on the replica that does not own it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @update
    def mark(self, ctx: Context, what: str) -> int:
        if not ctx.is_owner and what in _GIVE_UP_ONCE:
            _GIVE_UP_ONCE.discard(what)
            raise ApplyTimeout("slow here")
        self.seen.append(what)
        return len(self.seen)

    @query
    def count(self) -> int:
        return len(self.seen)


_GIVE_UP_ONCE: set[str] = set()


async def test_a_read_on_a_replica_that_gave_up_sees_the_entry_another_applied(
    tmp_path: Path,
) -> None:
    """Invariant 8 while waiting for a verdict: a write acknowledged by another
    replica is in the next read here, not only after the next safety tick."""
    shared = SharedLog.create("gives-up", capacity=16, slot_size=128, max_replicas=2)
    efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    wakeups = EventfdWakeups(efds)
    replicas = []
    for i in range(2):
        log = shared.log()
        log.join(i, cursor=1)
        log.set_live(i)
        r = Replica(
            Service("gives-up", [GivesUp()]),
            i,
            log,
            wakeups,
            replicas=2,
            run_dir=tmp_path,
            apply_timeout=None,  # the handler gives up by itself
            fork_snapshots=False,
        )
        r.attach(asyncio.get_running_loop())
        r.start_fresh()
        replicas.append(r)
    stuck, owner = replicas
    try:
        _GIVE_UP_ONCE.add("w")
        acked = owner.submit_nowait(GivesUp.mark, "w")
        # One loop iteration each, in this order and nothing in between: the
        # first gives up and rolls back, the second applies and replies.
        stuck._drain()
        assert stuck.core.gave_up
        owner._drain()
        assert acked.done()
        assert acked.result() == 1
        assert stuck.query(GivesUp.count) == 1
        assert not stuck.core.gave_up
    finally:
        _GIVE_UP_ONCE.clear()
        for r in replicas:
            r.close()
        shared.close()
        for fd in efds:
            os.close(fd)


class _BacklogCore:
    """What ``Joining.catch_up`` uses of a ``ReplicaCore``: batches, copying, applying."""

    def __init__(self, arriving: list[int]) -> None:
        self.batch = 3
        self.arriving = arriving  # seqs published while catching up, one per copy
        self.applied: list[int] = []
        self.live_at = 0

        class Machine:
            cursor = 1

        self.machine = Machine()

    def copy_backlog(self, backlog: list[tuple[int, int, int, bytes]], start: int) -> int:
        if self.arriving:
            backlog.append((self.arriving.pop(0), 0, 1, b""))
            return start + 1
        return start

    def apply_backlog(self, chunk: list[tuple[int, int, int, bytes]]) -> list[Any]:
        self.applied += [seq for seq, *_ in chunk]
        self.machine.cursor += len(chunk)
        return []

    def go_live(self, copied: int) -> None:
        self.live_at = copied


def test_catching_up_applies_the_backlog_once_in_order_while_it_grows() -> None:
    core = _BacklogCore(arriving=list(range(11, 16)))
    joining = Joining(SimpleNamespace(core=core, index=1))  # type: ignore[arg-type]
    joining.backlog = [(seq, 0, 1, b"") for seq in range(1, 11)]
    joining.copied = 11
    joining.catching_up = True
    rounds = 0
    while not joining.catch_up(lambda applied: None):
        rounds += 1
        assert rounds < 100
    assert core.applied == list(range(1, 16))
    assert core.live_at == 16
    assert joining.backlog == []
    assert joining.joined.is_set()
