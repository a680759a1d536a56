"""Group commit: several calls of one replica in one entry apply as if each were its own."""

from __future__ import annotations

from typing import Any

import pytest

from dominoes import Component, Context, EventRef, LogFullError, Mode, Service, update
from dominoes.lowlevel import Batch, Call, decode, encode
from dominoes.testing import Cluster


class Ledger(Component):
    def __init__(self) -> None:
        self.lines: list[tuple[str, float, float]] = []

    @update
    def add(self, ctx: Context, what: str) -> int:
        if what == "boom":
            raise ValueError("boom")
        self.lines.append((what, ctx.now, ctx.random.random()))
        ctx.effect(EFFECTS.append, (ctx.replica, what))
        return len(self.lines)


EFFECTS: list[tuple[int, str]] = []


@pytest.fixture
def cluster() -> Cluster:
    EFFECTS.clear()
    return Cluster(Service("ledger", [Ledger()]), replicas=3)


def test_a_batch_is_one_entry_and_each_call_gets_its_own_result(cluster: Cluster) -> None:
    calls: list[tuple[EventRef, tuple[Any, ...], dict[str, Any]]] = [
        (Ledger.add, (w,), {}) for w in ("a", "b", "boom", "c")
    ]
    pendings = cluster.submit_batch_nowait(1, calls)
    assert cluster.log.tail == 2  # one entry
    cluster.run_until_quiet()
    assert [p.seq for p in pendings] == [1, 1, 1, 1]
    assert pendings[0].result() == 1
    assert pendings[1].result() == 2
    with pytest.raises(ValueError, match="boom"):
        pendings[2].result()  # an error stays that call's outcome
    assert pendings[3].result() == 3
    cluster.assert_converged()


def test_batched_calls_own_their_effects_on_the_origin_only(cluster: Cluster) -> None:
    cluster.submit_batch_nowait(2, [(Ledger.add, ("x",), {}), (Ledger.add, ("y",), {})])
    cluster.run_until_quiet()
    assert EFFECTS == [(2, "x"), (2, "y")]
    assert cluster[2].owned == [1]
    assert cluster[0].owned == []


def test_batched_calls_get_distinct_randomness_the_same_on_every_replica(
    cluster: Cluster,
) -> None:
    cluster.submit_batch_nowait(0, [(Ledger.add, (w,), {}) for w in "pqr"])
    cluster.run_until_quiet()
    rolls = [[line[2] for line in r.component(Ledger).lines] for r in cluster]
    assert rolls[0] == rolls[1] == rolls[2]
    assert len(set(rolls[0])) == 3


def test_a_batch_survives_a_restart_from_snapshot(cluster: Cluster) -> None:
    cluster.submit_batch_nowait(0, [(Ledger.add, (w,), {}) for w in "ab"])
    cluster.run_until_quiet()
    cluster.kill(1)
    cluster.restart(1)
    cluster.run_until_quiet()
    cluster.submit_batch_nowait(1, [(Ledger.add, (w,), {}) for w in "cd"])
    cluster.assert_converged()
    assert [line[0] for line in cluster[1].component(Ledger).lines] == list("abcd")


def test_the_codec_round_trips_a_batch() -> None:
    calls = [Call("Ledger.add", ["a"], {}, 1.0, 0), Call("Ledger.add", ["b"], {}, 2.0, 0)]
    got = decode(encode(Batch(calls, 2.0, 0)), 9)
    assert isinstance(got, Batch)
    assert got.seq == 9
    assert [c.args for c in got.calls] == [["a"], ["b"]]


def test_only_affinity_calls_of_the_origin_batch(cluster: Cluster) -> None:
    core = cluster[0].core
    foreign = Call("Ledger.add", ["a"], {}, 1.0, 1)
    with pytest.raises(ValueError, match="affinity"):
        core.encode_batch([foreign], now=1.0)


def test_a_batch_framed_from_encoded_calls_is_the_batch_encoding() -> None:
    from dominoes._core._codec import batch_payload

    calls = [Call("Ledger.add", ["a"], {}, 1.0, 0), Call("Ledger.add", ["b"], {"x": 1}, 2.0, 0)]
    assert batch_payload([encode(c) for c in calls], 2.0, 0) == encode(Batch(calls, 2.0, 0))


def test_a_call_in_another_mode_is_appended_alone_in_its_turn(cluster: Cluster) -> None:
    """submit_soon in race mode between affinity calls: three entries, order kept."""
    pendings = [
        cluster.submit_soon(0, Ledger.add, "a"),
        cluster.submit_soon(0, Ledger.add, "b"),
        cluster.submit_soon(0, Ledger.add, "r", _mode=Mode.RACE),
        cluster.submit_soon(0, Ledger.add, "c"),
    ]
    assert cluster.commit(0) == 3
    cluster.run_until_quiet()
    assert [p.seq for p in pendings] == [1, 1, 2, 3]
    assert [p.result() for p in pendings] == [1, 2, 3, 4]
    assert [what for what, _, _ in cluster[1].component(Ledger).lines] == ["a", "b", "r", "c"]
    cluster.assert_converged()


def test_a_full_log_keeps_the_group_queued_in_order_until_there_is_room() -> None:
    cluster = Cluster(Service("ledger", [Ledger()]), replicas=2, capacity=4, slot_size=128)
    while True:  # fill the log without applying anything
        try:
            cluster.submit_nowait(0, Ledger.add, "fill")
        except LogFullError:
            break
    queued = [cluster.submit_soon(1, Ledger.add, w) for w in "xyz"]
    assert cluster.commit(1) == 0  # no room: still queued, nothing refused
    assert [p.seq for p in queued] == [0, 0, 0]
    with pytest.raises(LogFullError):
        cluster.submit_nowait(1, Ledger.add, "behind")  # may not overtake the group
    cluster.run_until_quiet()  # step() commits the group once the log has room
    assert all(p.done for p in queued)
    lines = [what for what, _, _ in cluster[0].component(Ledger).lines]
    assert lines[-3:] == ["x", "y", "z"]
    cluster.assert_converged()


def test_timer_fires_refused_by_a_full_log_are_asked_for_again() -> None:
    small = Cluster(Service("ledger", [Ledger(), Alarm()]), replicas=2, capacity=4, slot_size=128)
    small.call(0, Alarm.arm, 1.0)
    small.clock += 2.0
    while True:  # fill the log: the due timer's Fire entry finds no room
        try:
            small.submit_nowait(0, Ledger.add, "fill")
        except LogFullError:
            break
    assert small.fire_due(0) == 0
    small.run_until_quiet()  # room again
    assert small.fire_due(0) == 1  # asked again, not forgotten
    small.run_until_quiet()
    assert small[1].component(Alarm).rang == 1


class Alarm(Component):
    def __init__(self) -> None:
        self.rang = 0

    @update
    def arm(self, ctx: Context, delay: float) -> None:
        ctx.raise_later(delay, Alarm.ring)

    @update
    def ring(self, ctx: Context) -> None:
        self.rang += 1
