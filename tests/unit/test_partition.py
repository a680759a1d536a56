"""Partitioned components, against an all-replicated twin of the same service.

Every operation goes to a random replica of a partitioned service and of a
twin whose component is the same class replicated everywhere; their results
(and errors) must be equal, and so must what each partition's copies hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes import (
    KEY_ORDER,
    Component,
    Context,
    Partition,
    PartitionError,
    PartitionUnavailableError,
    RemoteError,
    Service,
    combine,
    hash_tag,
    on,
    query,
    reconfiguration,
    update,
)
from dominoes.testing import Cluster

EVENT = reconfiguration.EVENT

LIMIT = 1000


class Counts(Component):
    """The component under test, replicated (the twin) or partitioned (subclasses)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        if by > LIMIT:
            raise ValueError(f"{by} is over the limit")
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]

    @combine(sum)
    @update
    def delete(self, ctx: Context, key: list[str]) -> int:
        return sum(self.counts.pop(k, None) is not None for k in key)

    @update
    def put(self, ctx: Context, key: dict[str, int]) -> str:
        """Several keys at once: one entry, so no other write comes between them.

        Its arguments are checked by ``Limits``, a replicated component that
        sees them all: a part sees only its own partition's keys.
        """
        self.counts.update(key)
        return "OK"

    @combine(sum)
    @update
    def clear(self, ctx: Context) -> int:
        """No key parameter: every partition."""
        n = len(self.counts)
        self.counts.clear()
        return n

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)

    @combine(KEY_ORDER)
    @query
    def many(self, key: list[str]) -> list[int]:
        return [self.counts.get(k, 0) for k in key]

    @combine(sum)
    @query
    def total(self) -> int:
        return sum(self.counts.values())


class Limits(Component):
    """Checks a multi-key write as a whole, on every replica, before any part runs."""

    @on("Counts.put", order=-1)
    def check(self, ctx: Context, key: dict[str, int]) -> None:
        for k, v in key.items():
            if v > LIMIT:
                raise ValueError(f"{k}={v} is over the limit")


def partitioned(copies: int, partitions: int = 8) -> type[Counts]:
    class Split(Counts, partition=Partition("key", copies=copies, partitions=partitions)):
        name = "Counts"

    return Split


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except RemoteError as exc:  # forwarded: "Type: message"
        return ("error", str(exc))
    except Exception as exc:  # noqa: BLE001
        return ("error", f"{type(exc).__name__}: {exc}")


keys = st.sampled_from([f"k{i}" for i in range(12)] + ["{u}:a", "{u}:b"])
ops = st.one_of(
    st.tuples(st.just("incr"), keys, st.integers(-5, LIMIT + 5)),
    st.tuples(st.just("delete"), st.lists(keys, max_size=4)),
    st.tuples(st.just("put"), st.dictionaries(keys, st.integers(0, LIMIT + 1), max_size=4)),
    st.tuples(st.just("clear")),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("many"), st.lists(keys, max_size=4)),
    st.tuples(st.just("total")),
)


def run(cluster: Cluster, replica: int, op: tuple[Any, ...]) -> Any:
    name, *args = op
    if name in ("get", "many", "total"):
        return outcome(cluster.query, replica, f"Counts.{name}", *args)
    return outcome(cluster.call, replica, f"Counts.{name}", *args)


@settings(max_examples=60, deadline=None)
@given(
    replicas=st.integers(2, 3),
    copies=st.integers(1, 3),
    script=st.lists(st.tuples(st.integers(0, 2), ops), max_size=30),
)
def test_a_partitioned_service_answers_like_its_replicated_twin(
    replicas: int, copies: int, script: list[tuple[int, tuple[Any, ...]]]
) -> None:
    split = Cluster(Service("s", [partitioned(copies)(), Limits()]), replicas=replicas)
    twin = Cluster(Service("s", [Counts(), Limits()]), replicas=replicas)
    for replica, op in script:
        replica %= replicas
        assert run(split, replica, op) == run(twin, replica, op), op
    split.assert_converged()
    # each replica holds only its partitions, and together they hold the twin's state
    held: dict[str, int] = {}
    for r in split.live:
        for part in r.core.machine.partitioned["Counts"].parts.values():
            held.update(part.counts)  # type: ignore[attr-defined]
    assert held == twin.replicas[0].component(Counts).counts


def test_each_write_is_applied_only_where_its_partition_lives() -> None:
    cls = partitioned(1, partitions=4)
    cluster = Cluster(Service("s", [cls()]), replicas=2)
    spec = cls.partition
    assert spec is not None
    for i in range(40):
        cluster.call(i % 2, cls.incr, f"k{i}")
    for r in cluster.live:
        held = r.core.machine.partitioned["Counts"].parts
        assert sorted(held) == [p for p in range(4) if p % 2 == r.index]
        for pid, part in held.items():
            assert part.counts  # type: ignore[attr-defined]
            assert all(spec.of(k) == pid for k in part.counts)  # type: ignore[attr-defined]
    # either replica reads every key
    assert [cluster.query(r, cls.get, f"k{i}") for r in (0, 1) for i in range(40)] == [1] * 80


def test_a_read_of_a_partition_held_elsewhere_is_refused_synchronously_and_named() -> None:
    cls = partitioned(1, partitions=2)
    cluster = Cluster(Service("s", [cls()]), replicas=2)
    machine = cluster.replicas[0].core.machine
    key = next(k for k in (f"k{i}" for i in range(50)) if cls.partition.of(k) == 1)  # type: ignore[union-attr]
    assert not machine.holds("Counts.get", key)
    with pytest.raises(PartitionError, match=r"replicas \[1\] do"):
        machine.query("Counts.get", key)
    cluster.call(1, cls.incr, key, 5)
    assert cluster.query(0, cls.get, key) == 5  # Cluster.query forwards it through the log


def test_a_retried_request_is_applied_once_per_partition() -> None:
    cls = partitioned(1, partitions=4)
    cluster = Cluster(Service("s", [cls()]), replicas=2)
    for _ in range(3):
        pending = cluster.submit_nowait(0, cls.put, {"a": 1, "b": 2, "c": 3}, _request_id="r1")
        cluster.run_until(lambda p=pending: p.done)  # type: ignore[misc]
        assert pending.result() == "OK"
        pending = cluster.submit_nowait(1, cls.incr, "a", 10, _request_id="r2")
        cluster.run_until(lambda p=pending: p.done)  # type: ignore[misc]
        assert pending.result() == 11
    assert [cluster.query(0, cls.get, k) for k in "abc"] == [11, 2, 3]
    cluster.assert_converged()


def test_effects_of_a_part_run_once_on_a_holder() -> None:
    ran: list[tuple[int, str]] = []

    class Noisy(Component, partition=Partition("key", partitions=4)):
        @update
        def touch(self, ctx: Context, key: str) -> int:
            ctx.effect(ran.append, (ctx.replica, key))
            return ctx.replica

    cluster = Cluster(Service("s", [Noisy()]), replicas=2)
    for i in range(20):
        cluster.call(i % 2, Noisy.touch, f"k{i}")
    cluster.run_until_quiet()
    assert sorted(k for _, k in ran) == sorted(f"k{i}" for i in range(20))
    spec = Noisy.partition
    assert spec is not None
    assert all(spec.holders(spec.of(k), 2)[0] == r for r, k in ran)


class Sessions(Component, partition=Partition("key", copies=2, partitions=8)):
    """Sessions that expire: each arms its partition's own timer."""

    def __init__(self) -> None:
        self.alive: dict[str, int] = {}  # key -> its timer
        self.expired: list[str] = []

    @update
    def open(self, ctx: Context, key: str, ttl: float) -> int:
        old = self.alive.get(key)
        if old is not None:
            ctx.cancel(old)
        self.alive[key] = ctx.raise_later(ttl, "Sessions.expire", key)
        return self.alive[key]

    @update
    def expire(self, ctx: Context, key: str) -> None:
        del self.alive[key]
        self.expired.append(key)

    @query
    def is_open(self, key: str) -> bool:
        return key in self.alive


def test_a_partition_s_timer_fires_once_on_its_holders_even_when_one_dies() -> None:
    cluster = Cluster(Service("s", [Sessions()]), replicas=3)
    for i in range(12):
        cluster.call(i % 3, Sessions.open, f"s{i}", 1.0 + i % 3)
    cluster.call(0, Sessions.open, "s0", 10.0)  # renewed: the first timer is cancelled
    cluster.advance(1.5)
    cluster.kill(2)  # timers of its partitions fire on their other holder
    cluster.advance(2.0)
    assert [cluster.query(i % 2, Sessions.is_open, f"s{i}") for i in range(12)] == [
        i == 0 for i in range(12)
    ]
    cluster.restart(2)
    cluster.advance(8.0)
    cluster.assert_converged()
    expired: list[str] = []
    for r in cluster.live:
        for part in r.core.machine.partitioned["Sessions"].parts.values():
            expired += part.expired  # type: ignore[attr-defined]
    # each partition on 2 replicas: every session expired exactly once per copy
    assert sorted(expired) == sorted(f"s{i}" for i in range(12) for _ in range(2))
    assert cluster.replicas[0].core.machine.pending_timers == 0


def test_a_timer_for_another_component_s_event_is_refused() -> None:
    class Timed(Component, partition=Partition("key")):
        @update
        def later(self, ctx: Context, key: str) -> None:
            ctx.raise_later(1.0, "Other.event", key)

        @update
        def publish(self, ctx: Context, key: str) -> None:
            ctx.publish("topic", key)

    cluster = Cluster(Service("s", [Timed()]), replicas=2)
    with pytest.raises((PartitionError, RemoteError), match="fires into its partition"):
        cluster.call(0, Timed.later, "k")
    with pytest.raises((PartitionError, RemoteError), match="not available in a partitioned"):
        cluster.call(1, Timed.publish, "k")
    cluster.assert_converged()


def test_hash_tags_keep_keys_together() -> None:
    spec = Partition("key", tag=hash_tag, partitions=1024)
    assert spec.of("{user1}:cart") == spec.of("{user1}:profile") == spec.of("user1")
    assert spec.of(b"{user1}:cart") == spec.of("user1")
    assert hash_tag("{}x") == "{}x"  # an empty tag: the whole key, as Redis does
    assert hash_tag("a{b}{c}") == "b"
    with pytest.raises(ValueError, match="must name a parameter"):
        Partition("not a name")
    with pytest.raises(ValueError, match="copies must be"):
        Partition("key", copies=0)


def play(split: Cluster, twin: Cluster, script: list[tuple[Any, Any]], copies: int = 2) -> int:
    """Run ``script`` on 3 replicas of each, one death at a time; the final ``copies``.

    Steps: ``(replica, op)``, compared with the twin; ``("kill", i)``, which kills
    replica i, or restarts the dead one; ``("copies", k)``, a change of copies
    through the log (each partition then has k copies once the gainers loaded).
    A replica is killed only while every partition has 2 copies, and copies go
    down to 1 only while none is dead: else data is lost by design.
    """
    dead: int | None = None
    for first, second in script:
        if first == "copies":
            if dead is None or second >= 2:
                copies = second
                split.call(0 if dead != 0 else 1, EVENT, reconfiguration.copies("Counts", copies))
                split.run_until_quiet()  # the gainers load: only then are there k copies
        elif first == "kill":
            if dead is not None:
                split.restart(dead)
                split.run_until_quiet()
                dead = None
            elif copies >= 2:
                dead = second
                split.kill(second)
        else:
            replica = first if first != dead else (first + 1) % 3
            assert run(split, replica, second) == run(twin, replica, second), second
    if dead is not None:
        split.restart(dead)
    return copies


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.one_of(st.tuples(st.integers(0, 2), ops), st.tuples(st.just("kill"), st.integers(0, 2))),
        max_size=30,
    )
)
def test_with_two_copies_of_three_a_killed_replica_loses_nothing(
    script: list[tuple[Any, Any]],
) -> None:
    """Each partition on 2 of 3 replicas: one death at a time, and the restarted
    replica gets its partitions from the live holders (two snapshots at one position)."""
    split = Cluster(Service("s", [partitioned(2)(), Limits()]), replicas=3)
    twin = Cluster(Service("s", [Counts(), Limits()]), replicas=3)
    play(split, twin, script)
    split.assert_converged()
    for r in split.live:
        assert r.core.machine.lost == []
    assert [run(split, i % 3, ("get", f"k{i}")) for i in range(12)] == [
        run(twin, 0, ("get", f"k{i}")) for i in range(12)
    ]


def test_with_one_copy_a_dead_replica_s_partitions_fail_fast_and_come_back_empty() -> None:
    cls = partitioned(1, partitions=4)
    cluster = Cluster(Service("s", [cls()]), replicas=2)
    spec = cls.partition
    assert spec is not None
    mine = next(f"k{i}" for i in range(50) if spec.holders(spec.of(f"k{i}"), 2) == (0,))
    theirs = next(f"k{i}" for i in range(50) if spec.holders(spec.of(f"k{i}"), 2) == (1,))
    cluster.call(0, cls.incr, mine, 1)
    cluster.call(0, cls.incr, theirs, 1)
    cluster.kill(1)
    # replica 0 keeps serving its own partitions
    assert cluster.call(0, cls.incr, mine, 1) == 2
    # and says at once that the dead replica's are unavailable, reads and writes
    with pytest.raises(PartitionUnavailableError, match="no live holder"):
        cluster.call(0, cls.incr, theirs, 1)
    with pytest.raises(PartitionUnavailableError):
        cluster.query(0, cls.get, theirs)
    cluster.restart(1)
    cluster.run_until_quiet()
    # its only copy died with it: the partitions start empty, and say so
    lost = cluster.replicas[1].core.machine.lost
    assert lost == [("Counts", 1), ("Counts", 3)]
    assert cluster.query(0, cls.get, theirs) == 0
    assert cluster.query(1, cls.get, mine) == 2
    cluster.assert_converged()


@settings(max_examples=50, deadline=None)
@given(
    script=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 2), ops),
            st.tuples(st.just("copies"), st.integers(1, 3)),
            st.tuples(st.just("kill"), st.integers(0, 2)),
        ),
        max_size=40,
    )
)
def test_copies_change_at_one_log_position_and_nothing_is_lost(
    script: list[tuple[Any, Any]],
) -> None:
    """``copies`` changed through the log, between writes, reads and a death:
    the gainers load each partition from a holder and answer like the twin."""
    split = Cluster(Service("s", [partitioned(2)(), Limits()]), replicas=3)
    twin = Cluster(Service("s", [Counts(), Limits()]), replicas=3)
    k = play(split, twin, script)
    split.assert_converged()
    machines = [r.core.machine for r in split.live]
    for m in machines:
        assert m.partitioned["Counts"].loading == {}
        assert m.lost == []
        assert sorted(m.partitioned["Counts"].parts) == sorted(
            p
            for p in range(8)
            if m.index in partitioned(k).partition.holders(p, 3, k)  # type: ignore[union-attr]
        )
    assert [run(split, i % 3, ("get", f"k{i}")) for i in range(12)] == [
        run(twin, 0, ("get", f"k{i}")) for i in range(12)
    ]


def test_limits_of_a_partition_s_numbering_are_refused() -> None:
    with pytest.raises(ValueError, match="from 1 to 65536"):
        Partition("key", partitions=65537)

    class Timed(Component, partition=Partition("key", partitions=2)):
        @update
        def cancel(self, ctx: Context, key: str, timer: int) -> bool:
            return ctx.cancel(timer)

    cluster = Cluster(Service("s", [Timed()]), replicas=2)
    for bogus in (5, -1 - (7 << 16)):  # a replicated timer's id; no such component
        with pytest.raises((PartitionError, RemoteError), match="not a partition's timer"):
            cluster.call(0, Timed.cancel, "k", bogus)
    cluster.assert_converged()


# --- scoped entries: a replica holding none of an entry's partitions passes over it ------


def scoped_service(copies: int = 1) -> Service:
    """Counts partitioned over 8 partitions, named ``Counter`` so that
    ``examples.limits:Audit`` (an ``@on("Counter.incr")`` handler) can be added."""

    class Counter(Counts, partition=Partition("key", copies=copies, partitions=8)):
        name = "Counter"

    return Service("s", [Counter()])


def key_held_only_by(replica: int, replicas: int = 3) -> str:
    """A key whose partition (of 8, one copy) is held by ``replica`` alone."""
    spec = Partition("key", partitions=8)
    return next(f"k{i}" for i in range(1000) if spec.of(f"k{i}") % replicas == replica)


def test_a_replica_holding_none_of_an_entry_s_partitions_passes_over_it() -> None:
    """3 replicas, one copy: a call from replica 0 on replica 1's key is applied by
    0 (its origin) and 1 (the holder); replica 2 passes over it undecoded.  Calls
    batched by group commit are scoped to the union of their partitions."""
    cluster = Cluster(scoped_service(), replicas=3)
    key = key_held_only_by(1)
    for n in range(1, 6):
        assert cluster.call(0, "Counter.incr", key) == n
    skipped = [r.core.machine.skipped_entries for r in cluster.live]
    assert skipped == [0, 0, 5]
    # a batch of calls on replicas 1's and 2's keys: nobody passes over it
    other = key_held_only_by(2)
    pendings = [cluster.submit_soon(0, "Counter.incr", k) for k in (key, other, key)]
    cluster.commit(0)
    cluster.run_until_quiet()
    assert [p.result() for p in pendings] == [6, 1, 7]
    assert [r.core.machine.skipped_entries for r in cluster.live] == skipped
    assert [cluster.query(1, "Counter.get", key), cluster.query(2, "Counter.get", other)] == [7, 1]
    cluster.assert_converged()
    assert [r.core.statistics().skipped_entries for r in cluster.live] == [0, 0, 5]


def test_a_scoped_entry_is_applied_everywhere_once_its_event_has_another_handler() -> None:
    """The appender scoped a call while ``Counter.incr`` had partitioned handlers
    only; a replicated component bound to it (``Audit``) was added at an earlier
    log position, which the appender had not applied yet.  Every replica then
    decodes and applies the call, so Audit counts it everywhere."""
    cluster = Cluster(scoped_service(), replicas=3)
    key = key_held_only_by(1)
    add = cluster.submit_soon(1, EVENT, reconfiguration.add("examples.limits:Audit"))
    cluster.commit(1)  # appended, not applied by replica 0 yet
    incr = cluster.submit_soon(0, "Counter.incr", key)
    assert cluster.replicas[0].core.group[0][3] is not None  # scoped on the old handlers
    cluster.commit(0)
    cluster.run_until_quiet()
    assert add.result() == "audit"
    assert incr.result() == 1
    assert [cluster.query(i, "audit.of", key) for i in range(3)] == [1, 1, 1]
    assert [r.core.machine.skipped_entries for r in cluster.live] == [0, 0, 0]
    cluster.assert_converged()


@pytest.mark.parametrize(("replicas", "copies"), [(2, 1), (3, 2), (3, 3)])
def test_calls_are_not_scoped_where_no_replica_but_the_origin_could_pass_over_them(
    replicas: int, copies: int
) -> None:
    """With fewer than two replicas holding no copy of a partition, a scoped
    header would cost the appender its routing for nothing: calls go unscoped."""
    cluster = Cluster(scoped_service(copies), replicas=replicas)
    for i in range(20):
        cluster.call(i % replicas, "Counter.incr", f"k{i}")
    assert all(r.core.machine.skipped_entries == 0 for r in cluster.live)
    core = cluster.replicas[0].core
    assert core.machine.scope("Counter.incr", ["k1"], {}) is None
    cluster.assert_converged()
