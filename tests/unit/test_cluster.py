"""``dominoes.testing.Cluster``: N replicas stepped explicitly in one process."""

from __future__ import annotations

from typing import TypedDict, Unpack

import msgspec
import pytest

from dominoes import Component, Context, LogFullError, Service, query, update
from dominoes.testing import Cluster, DivergenceError, Pending, ReplicaDeadError


class Counter(Component):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]

    @update
    def fail(self, ctx: Context) -> None:
        raise KeyError("nope")

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)


class ClusterOptions(TypedDict, total=False):
    """The keyword options of :class:`Cluster` a test may set."""

    capacity: int
    slot_size: int
    max_entry_slots: int | None
    timer_grace: float
    start_time: float


def counter_cluster(replicas: int = 3, **kwargs: Unpack[ClusterOptions]) -> Cluster:
    return Cluster(Service("counter", [Counter()]), replicas=replicas, **kwargs)


def joining(cluster: Cluster, replica: int) -> bool:
    """``cluster[replica].joining``, read by a call.

    mypy keeps an asserted attribute narrowed across the steps that change it
    (and then calls the code after the opposite assert unreachable); it keeps
    no result of a call.
    """
    return cluster[replica].joining


def counts(cluster: Cluster, replica: int) -> dict[str, int]:
    return cluster[replica].component(Counter).counts


# --- call, submit ----------------------------------------------------------------------


def test_call_returns_the_result_once_the_origin_applied_it() -> None:
    cluster = counter_cluster()

    assert cluster.call(1, Counter.incr, "k", by=2) == 2
    assert cluster[1].applied == [1]


def test_call_raises_the_handlers_exception() -> None:
    cluster = counter_cluster()
    with pytest.raises(KeyError, match="nope"):
        cluster.call(0, Counter.fail)


async def test_submit_is_the_awaitable_call() -> None:
    cluster = counter_cluster()

    assert await cluster.submit(0, Counter.incr, "k") == 1
    assert await cluster.submit(2, Counter.incr, "k", by=5) == 6
    cluster.assert_converged()
    assert counts(cluster, 1) == {"k": 6}


async def test_submit_raises_the_handlers_exception() -> None:
    cluster = counter_cluster()
    with pytest.raises(KeyError, match="nope"):
        await cluster.submit(1, Counter.fail)


def test_submit_nowait_appends_without_applying() -> None:
    cluster = counter_cluster()

    p = cluster.submit_nowait(0, Counter.incr, "k")

    assert isinstance(p, Pending)
    assert (p.seq, p.origin, p.done) == (1, 0, False)
    assert cluster.log.tail == 2
    assert [r.cursor for r in cluster] == [1, 1, 1]
    with pytest.raises(RuntimeError, match="not applied"):
        p.result()


def test_pending_resolves_when_its_origin_applies_it() -> None:
    cluster = counter_cluster()
    p = cluster.submit_nowait(0, Counter.incr, "k")

    done = []  # p.done after each step
    cluster.step(1)
    done.append(p.done)
    cluster.step(0)
    done.append(p.done)
    assert done == [False, True]
    assert p.result() == 1


def test_a_query_catches_up_to_what_any_replica_applied() -> None:
    cluster = counter_cluster()
    cluster.submit_nowait(0, Counter.incr, "k")
    cluster.step(2)  # replica 2 applied it: its reply could have left

    assert cluster.replicas[0].cursor == 1
    assert cluster.query(0, Counter.get, "k") == 1  # linearizable: replica 0 caught up
    assert cluster.replicas[0].cursor == 2
    assert cluster.replicas[1].cursor == 1  # only the replica that was read


def test_a_query_does_not_apply_what_no_replica_applied() -> None:
    cluster = counter_cluster()
    cluster.submit_nowait(0, Counter.incr, "k")  # appended, applied nowhere: not acknowledged

    assert cluster.query(1, Counter.get, "k") == 0
    assert cluster.replicas[1].cursor == 1


def test_local_reads_show_the_stale_state_the_default_prevents() -> None:
    cluster = Cluster(Service("counter", [Counter()], reads="local"), replicas=3)
    cluster.submit_nowait(0, Counter.incr, "k")
    cluster.step(2)

    assert cluster.query(2, Counter.get, "k") == 1
    assert cluster.query(0, Counter.get, "k") == 0  # stale: replica 0 has not applied it
    assert cluster.replicas[0].cursor == 1


class _Mixed(Component):
    def __init__(self) -> None:
        self.n = 0

    @update
    def bump(self, ctx: Context) -> int:
        self.n += 1
        return self.n

    @query
    def fresh(self) -> int:
        return self.n

    @query.local
    def cached(self) -> int:
        return self.n


def test_query_local_reads_locally_inside_a_linearizable_service() -> None:
    cluster = Cluster(Service("mixed", [_Mixed()]), replicas=2)
    cluster.submit_nowait(0, _Mixed.bump)
    cluster.step(0)

    assert cluster.query(1, _Mixed.cached) == 0
    assert cluster.query(1, _Mixed.fresh) == 1


# --- stepping ---------------------------------------------------------------------------


def test_step_of_one_replica_moves_only_that_replica() -> None:
    cluster = counter_cluster()
    cluster.submit_nowait(0, Counter.incr, "a")
    cluster.submit_nowait(1, Counter.incr, "b")

    assert cluster.step(2) == 2
    assert [r.cursor for r in cluster] == [1, 1, 3]
    assert [r.applied for r in cluster] == [[], [], [1, 2]]
    assert counts(cluster, 2) == {"a": 1, "b": 1}
    assert counts(cluster, 0) == {}


def test_step_of_all_moves_every_live_replica() -> None:
    cluster = counter_cluster()
    cluster.submit_nowait(0, Counter.incr, "a")
    cluster.submit_nowait(1, Counter.incr, "b")
    cluster.step(2)

    assert cluster.step() == 4  # replicas 0 and 1, two entries each
    assert [r.cursor for r in cluster] == [3, 3, 3]
    assert cluster.step() == 0


def test_step_with_a_limit() -> None:
    cluster = counter_cluster()
    for key in "abc":
        cluster.submit_nowait(0, Counter.incr, key)

    assert cluster.step(0, limit=2) == 2
    assert cluster[0].applied == [1, 2]
    assert cluster.step(0, limit=2) == 1


def test_step_with_nothing_published_applies_nothing() -> None:
    cluster = counter_cluster(replicas=1)
    assert cluster.step() == 0
    cluster.submit_nowait(0, Counter.incr, "a")
    assert cluster.step(0) == 1
    assert cluster.step(0) == 0


def test_run_until_quiet_applies_everything_everywhere() -> None:
    cluster = counter_cluster()
    for i in range(3):
        cluster.submit_nowait(i, Counter.incr, "k")

    assert cluster.run_until_quiet() == 9
    assert cluster.run_until_quiet() == 0
    assert [r.applied for r in cluster] == [[1, 2, 3]] * 3
    assert [counts(cluster, i) for i in range(3)] == [{"k": 3}] * 3


def test_advance_moves_the_fake_clock() -> None:
    cluster = counter_cluster()
    start = cluster.clock
    cluster.advance(1.5)
    assert cluster.clock == start + 1.5
    with pytest.raises(ValueError, match="backwards"):
        cluster.advance(-1)


def test_replicas_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="replicas must be"):
        counter_cluster(replicas=0)


def test_statistics_are_frozen_structs() -> None:
    cluster = counter_cluster(replicas=2)
    cluster.call(0, Counter.incr, "k")

    stats = cluster.statistics()
    assert [(s.index, s.cursor, s.applied_entries) for s in stats] == [(0, 2, 1), (1, 2, 1)]
    assert [s.appended for s in stats] == [1, 0]
    with pytest.raises(AttributeError):
        stats[0].cursor = 5  # type: ignore[misc]  # a frozen field, written on purpose
    assert msgspec.structs.asdict(stats[0])["owned_entries"] == 1


# --- kill ----------------------------------------------------------------------------------


def test_submitting_to_a_dead_replica_raises() -> None:
    cluster = counter_cluster()
    cluster.kill(1)

    with pytest.raises(ReplicaDeadError):
        cluster.submit_nowait(1, Counter.incr, "k")
    with pytest.raises(ReplicaDeadError):
        cluster.call(1, Counter.incr, "k")
    with pytest.raises(ReplicaDeadError):
        cluster.query(1, Counter.get, "k")
    with pytest.raises(ReplicaDeadError):
        cluster.kill(1)
    assert cluster.log.tail == 1


def test_a_dead_replica_stops_applying_and_the_rest_go_on() -> None:
    cluster = counter_cluster()
    cluster.kill(1)

    assert cluster.call(0, Counter.incr, "k") == 1
    assert cluster.step(1) == 0
    assert cluster[1].cursor == 1
    assert [r.index for r in cluster.live] == [0, 2]
    cluster.assert_converged()


def test_killing_a_replica_fails_its_pending_submits() -> None:
    cluster = counter_cluster()
    p = cluster.submit_nowait(1, Counter.incr, "k")

    cluster.kill(1)

    assert p.done
    with pytest.raises(ReplicaDeadError):
        p.result()
    # The entry itself is in the log and applies on the survivors.
    cluster.run_until_quiet()
    assert counts(cluster, 0) == {"k": 1}


def test_a_dead_replica_does_not_hold_the_log_back() -> None:
    cluster = counter_cluster(replicas=2, capacity=4)
    cluster.kill(1)
    for i in range(10):
        assert cluster.call(0, Counter.incr, "k") == i + 1


# --- restart -----------------------------------------------------------------------------------


def test_restart_loads_a_snapshot_through_the_log_and_catches_up() -> None:
    cluster = counter_cluster()
    for _ in range(3):
        cluster.call(0, Counter.incr, "k")
    cluster.kill(2)
    cluster.call(1, Counter.incr, "k")
    request_seq = cluster.log.tail

    cluster.restart(2)
    assert joining(cluster, 2)
    with pytest.raises(ReplicaDeadError, match="joining"):
        cluster.submit_nowait(2, Counter.incr, "k")
    after = cluster.submit_nowait(0, Counter.incr, "k")
    cluster.run_until_quiet()

    assert not joining(cluster, 2)
    # It did not apply the entries before the snapshot: it loaded them.
    assert cluster[2].applied == [after.seq]
    assert after.seq > request_seq
    assert counts(cluster, 2) == {"k": 5}
    cluster.assert_converged()

    # And it is a full member again.
    assert cluster.call(2, Counter.incr, "k") == 6
    cluster.assert_converged()


def test_restart_from_a_chosen_source() -> None:
    cluster = counter_cluster()
    cluster.call(0, Counter.incr, "k")
    cluster.kill(0)

    cluster.restart(0, source=2)
    request_seq = cluster.log.tail - 1
    cluster.step(1)
    assert joining(cluster, 0)  # replica 1 applied the request, but is not the source
    cluster.step(2)
    assert not joining(cluster, 0)
    assert cluster[0].cursor == request_seq + 1
    cluster.run_until_quiet()
    assert cluster[0].applied == []
    cluster.assert_converged()


def test_restart_when_the_source_dies_before_answering() -> None:
    cluster = counter_cluster()
    cluster.call(0, Counter.incr, "k", by=7)
    cluster.kill(2)

    cluster.restart(2, source=0)
    first_request = cluster.log.tail - 1
    cluster.kill(0)  # before it applied the snapshot request
    cluster.run_until_quiet()  # the cluster asks replica 1 instead

    assert not cluster[2].joining
    second_request = first_request + 1
    assert cluster[1].applied == [1, first_request, second_request]
    assert cluster[2].applied == []
    assert cluster[2].cursor == second_request + 1
    assert [r.index for r in cluster.live] == [1, 2]
    assert counts(cluster, 2) == {"k": 7}
    assert cluster.call(2, Counter.incr, "k") == 8
    cluster.assert_converged()


def test_run_until_quiet_counts_entries_applied_after_a_snapshot_retry() -> None:
    cluster = counter_cluster()
    cluster.call(0, Counter.incr, "k")
    cluster.kill(2)
    cluster.restart(2, source=0)
    cluster.kill(0)
    before = sum(len(r.applied) for r in cluster)

    n = cluster.run_until_quiet()

    assert n == sum(len(r.applied) for r in cluster) - before  # 2: both requests, on 1


def test_restart_of_a_live_replica_is_refused() -> None:
    with pytest.raises(ValueError, match="alive"):
        counter_cluster().restart(0)


def test_restart_needs_a_live_source() -> None:
    cluster = counter_cluster(replicas=1)
    cluster.kill(0)
    with pytest.raises(ReplicaDeadError, match="no live replica"):
        cluster.restart(0)


# --- convergence ---------------------------------------------------------------------------------


def test_assert_converged_passes_for_identical_replicas() -> None:
    cluster = counter_cluster()
    cluster.submit_nowait(0, Counter.incr, "a")
    cluster.submit_nowait(2, Counter.incr, "b")
    cluster.assert_converged()  # runs until quiet first
    assert [r.cursor for r in cluster] == [3, 3, 3]


def test_assert_converged_names_the_diverging_component() -> None:
    cluster = counter_cluster()
    cluster.call(0, Counter.incr, "x")

    cluster[1].component(Counter).counts["x"] = 99

    with pytest.raises(DivergenceError, match="component 'Counter'") as info:
        cluster.assert_converged()
    assert "replicas 0 and 1" in str(info.value)
    assert isinstance(info.value, AssertionError)


# --- backpressure -------------------------------------------------------------------------


def test_a_full_log_refuses_appends_and_overwrites_nothing() -> None:
    cluster = counter_cluster(replicas=2, capacity=8)
    pending = [cluster.submit_nowait(0, Counter.incr, "k") for _ in range(8)]

    cluster.step(0)  # replica 1 is never stepped: it holds all 8 slots
    with pytest.raises(LogFullError):
        cluster.submit_nowait(0, Counter.incr, "k")
    with pytest.raises(LogFullError):
        cluster.submit_nowait(1, Counter.incr, "k")
    assert cluster.log.tail == 9
    assert [p.result() for p in pending] == list(range(1, 9))
    assert [s.append_refusals for s in cluster.statistics()] == [1, 1]

    # The slow replica still finds every entry intact, in order.
    assert cluster.step(1) == 8
    assert cluster[1].applied == list(range(1, 9))
    assert counts(cluster, 1) == {"k": 8}

    # Space is back.
    assert cluster.submit_nowait(0, Counter.incr, "k").seq == 9
    cluster.assert_converged()


def test_call_makes_room_in_a_full_log_by_stepping() -> None:
    cluster = counter_cluster(replicas=2, capacity=8)
    for _ in range(8):
        cluster.submit_nowait(0, Counter.incr, "k")

    assert cluster.call(1, Counter.incr, "k") == 9
    cluster.assert_converged()


# --- known bugs ------------------------------------------------------------------------------


class Users(Component):
    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    @update
    def add(self, ctx: Context, uid: int, name: str) -> None:
        self.names[uid] = name


def test_assert_converged_handles_int_keyed_state() -> None:
    cluster = Cluster(Service("users", [Users()]), replicas=2)
    cluster.call(0, Users.add, 7, "ada")
    cluster.assert_converged()


class Maker(Component):
    def __init__(self) -> None:
        self.made = 0

    @update
    def make(self, ctx: Context) -> object:
        self.made += 1
        return object()  # fine as a local result, but not msgpack-encodable


def test_restart_after_a_request_with_an_unencodable_result() -> None:
    cluster = Cluster(Service("maker", [Maker()]), replicas=3)
    cluster.submit_nowait(0, Maker.make, _request_id="r")
    cluster.run_until_quiet()
    cluster.kill(2)

    cluster.restart(2)
    cluster.run_until_quiet()

    assert not cluster[2].joining
    cluster.assert_converged()


class Alarm(Component):
    def __init__(self) -> None:
        self.rang = 0
        self.sets = 0

    @update
    def set(self, ctx: Context, delay: float) -> int:
        self.sets += 1
        return ctx.raise_later(delay, Alarm.ring)

    @update
    def ring(self, ctx: Context) -> None:
        self.rang += 1


def test_a_restarted_replica_keeps_pending_timers_and_request_ids() -> None:
    cluster = Cluster(Service("alarm", [Alarm()]), replicas=3)
    cluster.submit_nowait(0, Alarm.set, 10.0, _request_id="set-1")
    cluster.run_until_quiet()
    cluster.kill(2)
    cluster.restart(2)
    cluster.run_until_quiet()

    # A retry through the restarted replica is recognised...
    retry = cluster.submit_nowait(2, Alarm.set, 10.0, _request_id="set-1")
    cluster.run_until_quiet()
    assert retry.result() == 1
    # ...and the timer it armed before the snapshot fires once, everywhere.
    assert cluster[2].statistics().timers_pending == 1
    cluster.advance(60.0)
    assert [r.component(Alarm).rang for r in cluster] == [1, 1, 1]
    assert [r.component(Alarm).sets for r in cluster] == [1, 1, 1]
    cluster.assert_converged()
