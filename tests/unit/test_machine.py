"""The state machine: applying entries, the context's facts and verbs, timers, dedup, snapshots.

Each rule is checked through ``dominoes.testing.Cluster`` (the replicas as a
user sees them) and, where it helps, by applying hand-built
``dominoes.lowlevel`` entries to machines from ``Service.new_machine``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from dominoes import (
    Component,
    Context,
    Mode,
    QueryWroteStateError,
    RemoteError,
    Service,
    UnknownEventError,
    on,
    query,
    update,
)
from dominoes.lowlevel import Applied, Call, Control, Fire, StateMachine
from dominoes.testing import Cluster

#: What effects observed when they ran: (replica, seq, what they saw).  Effects
#: must not touch replicated state, so they report here.
observed: list[tuple[int, int, Any]] = []


@pytest.fixture(autouse=True)
def _clear_observed() -> Iterator[None]:
    observed.clear()
    yield
    observed.clear()


def observe(replica: int, seq: int, what: Any) -> None:
    observed.append((replica, seq, what))


class Probe(Component):
    transient = ("ownership",)

    def __init__(self) -> None:
        self.nows: list[float] = []
        self.rolls: list[list[float]] = []
        self.trace: list[str] = []
        self.n = 0
        # local: which entries this replica owned
        self.ownership: list[tuple[int, bool]] = []

    @update
    def stamp(self, ctx: Context) -> float:
        self.nows.append(ctx.now)
        return ctx.now

    @update
    def roll(self, ctx: Context) -> list[float]:
        values = [ctx.random.random() for _ in range(3)]
        self.rolls.append(values)
        return values

    @update
    def own(self, ctx: Context) -> None:
        self.ownership.append((ctx.seq, ctx.is_owner))
        ctx.effect(observe, ctx.replica, ctx.seq, "effect")

    @update
    def traced(self, ctx: Context, tag: str) -> str:
        self.trace.append(f"handler {tag}")
        ctx.effect(lambda: observe(ctx.replica, ctx.seq, list(self.trace)))
        return tag

    @on(traced, order=1)
    def traced_later(self, ctx: Context, tag: str) -> None:
        self.trace.append(f"later {tag}")

    @update
    def fail_after_change(self, ctx: Context) -> None:
        self.n += 1
        ctx.effect(observe, ctx.replica, ctx.seq, "must not run")
        raise ValueError("handler failed")

    @update
    def replying(self, ctx: Context, value: Any) -> str:
        ctx.reply("first")
        ctx.reply(value)
        return "returned"

    @update
    def nested(self, ctx: Context) -> tuple[Any, list[str]]:
        got = ctx.raise_event(Probe.traced, "inner")
        return got, list(self.trace)

    @update
    def raise_unknown(self, ctx: Context) -> None:
        ctx.raise_event("no.such.event")

    @update
    def deferred(self, ctx: Context, tag: str) -> str:
        ctx.raise_async(Probe.async_part, tag, depth=0)
        self.trace.append(f"handler {tag}")
        return "result of the entry"

    @on(deferred, order=1)
    def deferred_later(self, ctx: Context, tag: str) -> None:
        self.trace.append(f"later {tag}")

    @update
    def async_part(self, ctx: Context, tag: str, depth: int) -> str:
        self.trace.append(f"async {tag} {depth}")
        if depth < 1:
            ctx.raise_async(Probe.async_part, tag, depth=depth + 1)
        return "ignored"

    @update
    def deferred_failing(self, ctx: Context) -> None:
        ctx.effect(observe, ctx.replica, ctx.seq, "must not run")
        ctx.raise_async("Probe.fail_after_change")

    @update
    def bump(self, ctx: Context) -> int:
        self.n += 1
        return self.n

    @query
    def peek(self) -> int:
        return self.n

    @query
    def sneaky(self) -> int:
        self.n += 100
        return self.n

    @query
    def touch_local(self) -> int:
        self.ownership.append((0, False))
        return self.n


class Timers(Component):
    def __init__(self) -> None:
        self.fired: list[tuple[str, float]] = []
        self.ids: dict[str, int] = {}

    @update
    def arm(self, ctx: Context, what: str, delay: float) -> int:
        tid = ctx.raise_later(delay, Timers.ring, what)
        self.ids[what] = tid
        return tid

    @update
    def ring(self, ctx: Context, what: str) -> None:
        self.fired.append((what, ctx.now))
        ctx.effect(observe, ctx.replica, ctx.seq, f"rang {what}")

    @update
    def disarm(self, ctx: Context, what: str) -> bool:
        return ctx.cancel(self.ids[what])

    @update
    def deadline(self, ctx: Context, what: str) -> float | None:
        return ctx.timer_deadline(self.ids[what])


def service(**kwargs: Any) -> Service:
    return Service("machine-tests", [Probe(), Timers()], **kwargs)


def call(event: str, *args: Any, ts: float, seq: int, origin: int = 0, **kw: Any) -> Call:
    return Call(event, list(args), kw, ts, origin, seq=seq)


C = TypeVar("C", bound=Component)


def component(machine: StateMachine, cls: type[C]) -> C:
    """The machine's instance of ``cls`` (``StateMachine.component`` returns a ``Component``)."""
    found = machine.component(cls)
    assert isinstance(found, cls)
    return found


def probe(where: Cluster | StateMachine, replica: int = 0) -> Probe:
    if isinstance(where, Cluster):
        return where[replica].component(Probe)
    return component(where, Probe)


# --- ctx.now -----------------------------------------------------------------------------


def test_now_is_the_entry_timestamp() -> None:
    cluster = Cluster(service(), replicas=3)
    start = cluster.clock

    assert cluster.call(0, Probe.stamp) == start
    cluster.advance(2.5)
    assert cluster.call(2, Probe.stamp) == start + 2.5

    cluster.assert_converged()
    assert all(probe(cluster, i).nows == [start, start + 2.5] for i in range(3))


def test_now_never_runs_backwards() -> None:
    m = service().new_machine(0)

    got = [
        m.apply(call("Probe.stamp", ts=ts, seq=seq), owner=True).result
        for seq, ts in enumerate([100.0, 50.0, 100.5, 99.0, 200.0], 1)
    ]

    assert got == [100.0, 100.0, 100.5, 100.5, 200.0]
    assert m.now == 200.0


def test_now_is_the_same_on_replicas_whose_appenders_clocks_differ() -> None:
    a, b = service().new_machine(0), service().new_machine(1)
    entries = [
        call("Probe.stamp", ts=10.0, seq=1, origin=0),
        call("Probe.stamp", ts=9.0, seq=2, origin=1),  # origin 1's clock lags
    ]
    assert [a.apply(e, owner=e.origin == 0).result for e in entries] == [10.0, 10.0]
    assert [b.apply(e, owner=e.origin == 1).result for e in entries] == [10.0, 10.0]


# --- ctx.random ------------------------------------------------------------------------------


def test_random_is_the_same_sequence_on_every_replica() -> None:
    cluster = Cluster(service(), replicas=3)
    first = cluster.call(0, Probe.roll)
    second = cluster.call(1, Probe.roll)

    cluster.assert_converged()
    assert all(probe(cluster, i).rolls == [first, second] for i in range(3))
    assert first != second


def test_random_is_seeded_from_seq() -> None:
    svc = service()
    a, b = svc.new_machine(0), svc.new_machine(1)
    entry = call("Probe.roll", ts=1.0, seq=1)
    later = call("Probe.roll", ts=1.0, seq=2)

    r1, r2 = a.apply(entry, owner=True).result, b.apply(entry, owner=False).result
    expected = random.Random(1)
    assert r1 == r2 == [expected.random() for _ in range(3)]
    assert a.apply(later, owner=True).result != r1


# --- ctx.is_owner --------------------------------------------------------------------------


def ownership(cluster: Cluster) -> list[list[tuple[int, bool]]]:
    return [probe(cluster, i).ownership for i in range(cluster.size)]


def test_affinity_owner_is_the_origin() -> None:
    cluster = Cluster(service(), replicas=3)
    p = cluster.submit_nowait(2, Probe.own)
    cluster.run_until_quiet()

    assert ownership(cluster) == [[(p.seq, False)], [(p.seq, False)], [(p.seq, True)]]
    assert [r.owned for r in cluster] == [[], [], [p.seq]]
    assert observed == [(2, p.seq, "effect")]


@pytest.mark.parametrize("first", [0, 1, 2])
def test_race_owner_is_the_first_replica_to_step(first: int) -> None:
    cluster = Cluster(service(), replicas=3)
    p = cluster.submit_nowait(0, Probe.own, _mode="race")

    cluster.step(first)
    cluster.run_until_quiet()

    assert [owned for ((_, owned),) in ownership(cluster)] == [i == first for i in range(3)]
    assert observed == [(first, p.seq, "effect")]
    assert cluster.log.claimant(p.seq) == first


def test_race_owner_is_decided_per_entry() -> None:
    cluster = Cluster(service(), replicas=2)
    p1 = cluster.submit_nowait(0, Probe.own, _mode="race")
    p2 = cluster.submit_nowait(0, Probe.own, _mode="race")

    cluster.step(1, limit=1)  # replica 1 claims seq 1 only
    cluster.step(0)  # replica 0 applies 1 (lost) and claims 2
    cluster.run_until_quiet()

    assert [r.owned for r in cluster] == [[p2.seq], [p1.seq]]


def test_every_mode_makes_every_replica_an_owner() -> None:
    cluster = Cluster(service(), replicas=3)
    p = cluster.submit_nowait(1, Probe.own, _mode="every")
    cluster.run_until_quiet()

    assert ownership(cluster) == [[(p.seq, True)]] * 3
    assert sorted(observed) == [(0, p.seq, "effect"), (1, p.seq, "effect"), (2, p.seq, "effect")]


def test_context_reports_the_entrys_facts() -> None:
    seen: list[Context] = []
    svc = Service("facts")
    svc.bind("look", lambda ctx: seen.append(ctx))
    m = svc.new_machine(3)

    m.apply(Call("look", [], {}, 5.0, 1, Mode.RACE, "rid-1", seq=1), owner=False)

    (ctx,) = seen
    assert (ctx.seq, ctx.now, ctx.origin, ctx.mode, ctx.is_owner) == (1, 5.0, 1, Mode.RACE, False)
    assert (ctx.request_id, ctx.replica) == ("rid-1", 3)


# --- effects -----------------------------------------------------------------------------


def test_effects_run_only_on_the_owner() -> None:
    cluster = Cluster(service(), replicas=3)
    p = cluster.submit_nowait(1, Probe.traced, "x")
    cluster.run_until_quiet()

    assert [(replica, seq) for replica, seq, _ in observed] == [(1, p.seq)]
    assert [(i, seq) for i, seq, _ in cluster.effects_run] == [(1, p.seq)]


def test_effects_run_after_every_handler_of_the_entry() -> None:
    cluster = Cluster(service(), replicas=2)
    cluster.call(0, Probe.traced, "x")

    # The effect was queued by the first handler but saw the later one's change.
    ((_, _, trace),) = observed
    assert trace == ["handler x", "later x"]


def test_non_owner_queues_no_effects() -> None:
    m = service().new_machine(0)
    out = m.apply(call("Probe.own", ts=1.0, seq=1), owner=False)
    assert out.effects == []
    assert observed == []


def test_machine_hands_effects_back_instead_of_running_them() -> None:
    m = service().new_machine(0)
    out = m.apply(call("Probe.own", ts=1.0, seq=1), owner=True)

    assert observed == []
    ((fn, args, kwargs),) = out.effects
    fn(*args, **kwargs)
    assert observed == [(0, 1, "effect")]


def test_effects_are_dropped_when_a_handler_raises() -> None:
    cluster = Cluster(service(), replicas=2)
    with pytest.raises(ValueError, match="handler failed"):
        cluster.call(0, Probe.fail_after_change)

    assert observed == []
    assert cluster.effects_run == []


def test_effects_are_dropped_when_a_raise_async_handler_raises() -> None:
    cluster = Cluster(service(), replicas=2)
    with pytest.raises(ValueError, match="handler failed"):
        cluster.call(0, Probe.deferred_failing)
    assert observed == []


async def test_awaitable_effects_are_scheduled_on_the_running_loop() -> None:
    done: list[int] = []

    async def send(replica: int) -> None:
        done.append(replica)

    svc = Service("async-effects")
    svc.bind("go", lambda ctx: ctx.effect(send, ctx.replica))
    cluster = Cluster(svc, replicas=2)
    cluster.call(1, "go")

    tasks = list(cluster.effect_tasks)
    assert len(tasks) == 1
    await tasks[0]
    assert done == [1]


# --- ctx.reply ---------------------------------------------------------------------------------


def test_reply_overrides_the_return_value() -> None:
    cluster = Cluster(service(), replicas=2)
    assert cluster.call(0, Probe.replying, "replied") == "replied"


def test_reply_of_none_still_overrides() -> None:
    cluster = Cluster(service(), replicas=2)
    assert cluster.call(0, Probe.replying, None) is None


def test_reply_is_the_result_on_every_replica() -> None:
    m0, m1 = service().new_machine(0), service().new_machine(1)
    entry = call("Probe.replying", 7, ts=1.0, seq=1)
    assert m0.apply(entry, owner=True).result == m1.apply(entry, owner=False).result == 7


# --- handler exceptions ---------------------------------------------------------------------


def test_handler_exception_is_the_replicated_outcome() -> None:
    cluster = Cluster(service(), replicas=3)

    with pytest.raises(ValueError, match="handler failed"):
        cluster.call(1, Probe.fail_after_change)

    # No rollback: the change before the raise happened everywhere.
    cluster.assert_converged()
    assert [probe(cluster, i).n for i in range(3)] == [1, 1, 1]
    assert [s.errors for s in cluster.statistics()] == [1, 1, 1]
    # And the log goes on.
    assert cluster.call(0, Probe.bump) == 2


def test_handler_exception_is_recorded_on_every_machine() -> None:
    entry = call("Probe.fail_after_change", ts=1.0, seq=1)
    outs = [service().new_machine(i).apply(entry, owner=i == 0) for i in range(2)]

    assert [type(o.error) for o in outs] == [ValueError, ValueError]
    assert [o.effects for o in outs] == [[], []]


def test_an_unknown_event_is_refused_before_anything_is_appended() -> None:
    cluster = Cluster(service(), replicas=3)

    with pytest.raises(UnknownEventError, match=r"not\.bound"):
        cluster.call(2, "not.bound", 1)

    assert cluster.log.tail == 1
    assert [r.cursor for r in cluster] == [1, 1, 1]


def test_an_unknown_event_in_the_log_is_the_replicated_outcome() -> None:
    svc = service()
    machines = [svc.new_machine(i) for i in range(2)]
    outs = [m.apply(call("not.bound", 1, ts=1.0, seq=1), owner=True) for m in machines]

    assert all(isinstance(o.error, UnknownEventError) for o in outs)
    assert [m.cursor for m in machines] == [2, 2]
    assert [m.errors for m in machines] == [1, 1]
    assert machines[0].digest() == machines[1].digest()


def test_raising_an_unknown_event_inside_a_handler_fails_the_entry() -> None:
    cluster = Cluster(service(), replicas=2)
    with pytest.raises(UnknownEventError, match=r"no\.such\.event"):
        cluster.call(0, Probe.raise_unknown)


def test_apply_out_of_order_is_refused() -> None:
    m = service().new_machine(0)
    with pytest.raises(RuntimeError, match="applies seq 2 at cursor 1"):
        m.apply(call("Probe.bump", ts=1.0, seq=2), owner=True)


# --- raise_event, raise_async -----------------------------------------------------------------


def test_raise_event_is_nested_and_synchronous() -> None:
    cluster = Cluster(service(), replicas=2)

    result, trace_inside = cluster.call(0, Probe.nested)

    assert result == "inner"
    # The nested event's handlers all ran before raise_event returned.
    assert trace_inside == ["handler inner", "later inner"]
    cluster.assert_converged()


def test_raise_async_runs_after_the_entrys_handlers_and_before_the_next_entry() -> None:
    cluster = Cluster(service(), replicas=3)
    cluster.submit_nowait(0, Probe.deferred, "a")
    cluster.submit_nowait(1, Probe.deferred, "b")
    cluster.run_until_quiet()

    expected = [
        "handler a",
        "later a",
        "async a 0",
        "async a 1",
        "handler b",
        "later b",
        "async b 0",
        "async b 1",
    ]
    assert [probe(cluster, i).trace for i in range(3)] == [expected] * 3
    cluster.assert_converged()


def test_raise_async_completes_inside_one_apply() -> None:
    m = service().new_machine(0)
    out = m.apply(call("Probe.deferred", "a", ts=1.0, seq=1), owner=True)

    assert probe(m).trace == ["handler a", "later a", "async a 0", "async a 1"]
    # The entry's result is its own handlers', not the async events'.
    assert out.result == "result of the entry"


# --- timers -------------------------------------------------------------------------------------


def timers(cluster: Cluster, replica: int) -> Timers:
    return cluster[replica].component(Timers)


def test_raise_later_fires_at_its_deadline() -> None:
    cluster = Cluster(service(), replicas=3)
    start = cluster.clock
    cluster.call(0, Timers.arm, "t", 10.0)
    assert cluster.call(0, Timers.deadline, "t") == start + 10.0

    cluster.advance(9.0)
    assert all(timers(cluster, i).fired == [] for i in range(3))

    cluster.advance(1.0)
    assert all(timers(cluster, i).fired == [("t", start + 10.0)] for i in range(3))
    cluster.assert_converged()


def test_a_timer_fires_once_despite_duplicate_fire_entries() -> None:
    cluster = Cluster(service(), replicas=3)
    cluster.call(0, Timers.arm, "t", 1.0)
    tail = cluster.log.tail

    cluster.advance(5.0)  # past every replica's grace: each asks to fire

    fires = cluster.log.tail - tail
    assert fires == 3
    assert all(len(timers(cluster, i).fired) == 1 for i in range(3))
    assert [s.timers_fired for s in cluster.statistics()] == [1, 1, 1]
    assert [s.timers_pending for s in cluster.statistics()] == [0, 0, 0]
    assert [what for _, _, what in observed] == ["rang t"]  # one effect, one owner
    cluster.assert_converged()


def test_a_timer_fires_when_its_arming_replica_died() -> None:
    cluster = Cluster(service(), replicas=3)
    tid = cluster.call(1, Timers.arm, "t", 10.0)
    assert tid % cluster.size == 1  # replica 1 is also the designated firer
    cluster.kill(1)

    cluster.advance(10.0)  # the designee would fire now, but it is dead
    assert timers(cluster, 0).fired == []
    assert [s.timers_pending for s in cluster.statistics()] == [1, 1]

    cluster.advance(1.0)  # the others step in after the grace period
    assert timers(cluster, 0).fired == timers(cluster, 2).fired
    assert len(timers(cluster, 0).fired) == 1
    assert [what for _, _, what in observed] == ["rang t"]
    cluster.advance(60.0)
    assert len(timers(cluster, 2).fired) == 1
    cluster.assert_converged()


def test_cancel_is_replicated() -> None:
    cluster = Cluster(service(), replicas=3)
    cluster.call(2, Timers.arm, "t", 10.0)

    assert cluster.call(0, Timers.disarm, "t") is True
    assert cluster.call(1, Timers.disarm, "t") is False  # already cancelled

    cluster.advance(60.0)
    assert all(timers(cluster, i).fired == [] for i in range(3))
    assert [s.timers_pending for s in cluster.statistics()] == [0, 0, 0]
    assert cluster.call(0, Timers.deadline, "t") is None
    cluster.assert_converged()


def test_cancel_after_firing_returns_false() -> None:
    cluster = Cluster(service(), replicas=2)
    cluster.call(0, Timers.arm, "t", 1.0)
    cluster.advance(1.0)
    assert cluster.call(0, Timers.disarm, "t") is False


def test_fire_entries_by_hand() -> None:
    svc = service()
    machines = [svc.new_machine(i) for i in range(2)]
    arm = call("Timers.arm", "t", 30.0, ts=100.0, seq=1)
    early = Fire(1, 110.0, 0, seq=2)  # an appender whose clock runs ahead
    again = Fire(1, 140.0, 1, seq=3)

    for m in machines:
        assert m.apply(arm, owner=m.index == 0).result == 1
        assert m.next_deadline() == 130.0
        m.apply(early, owner=m.index == 0)
        m.apply(again, owner=m.index == 1)

    # ctx.now of a timer is at least its deadline; the second Fire is a no-op.
    assert [component(m, Timers).fired for m in machines] == [[("t", 130.0)]] * 2
    assert [m.timers_fired for m in machines] == [1, 1]
    assert machines[0].digest() == machines[1].digest()


def test_due_timers_spreads_the_first_ask() -> None:
    svc = service()
    machines = [svc.new_machine(i) for i in range(3)]
    for m in machines:
        m.apply(call("Timers.arm", "t", 10.0, ts=0.0, seq=1), owner=m.index == 0)

    # Timer 1 is asked for first by replica 1, the rest wait out the grace.
    assert [m.due_timers(10.0, replicas=3, grace=1.0) for m in machines] == [[], [1], []]
    assert [m.due_timers(11.0, replicas=3, grace=1.0) for m in machines] == [[1], [1], [1]]
    # Asked once; asked again only after the resend interval.
    assert [m.due_timers(11.5, replicas=3, grace=1.0) for m in machines] == [[], [], []]


# --- request ids ------------------------------------------------------------------------------


def test_a_retried_request_id_is_applied_once() -> None:
    cluster = Cluster(service(), replicas=3)
    first = cluster.submit_nowait(0, Probe.bump, _request_id="x")
    retry = cluster.submit_nowait(2, Probe.bump, _request_id="x")
    cluster.run_until_quiet()

    assert first.result() == 1
    assert retry.result() == 1
    assert retry.applied is not None
    assert retry.applied.duplicate
    assert [probe(cluster, i).n for i in range(3)] == [1, 1, 1]
    cluster.assert_converged()


def test_a_retry_after_other_entries_gets_the_recorded_result() -> None:
    cluster = Cluster(service(), replicas=2)
    cluster.submit_nowait(0, Probe.bump, _request_id="x")
    cluster.call(0, Probe.bump)
    retry = cluster.submit_nowait(1, Probe.bump, _request_id="x")
    cluster.run_until_quiet()

    assert retry.result() == 1
    assert probe(cluster).n == 2


def test_a_retried_failure_replays_the_error() -> None:
    cluster = Cluster(service(), replicas=2)
    first = cluster.submit_nowait(0, Probe.fail_after_change, _request_id="f")
    retry = cluster.submit_nowait(1, Probe.fail_after_change, _request_id="f")
    cluster.run_until_quiet()

    with pytest.raises(ValueError, match="handler failed"):
        first.result()
    with pytest.raises(RemoteError, match="ValueError: handler failed"):
        retry.result()
    assert [probe(cluster, i).n for i in range(2)] == [1, 1]


def test_entries_without_a_request_id_are_never_deduplicated() -> None:
    cluster = Cluster(service(), replicas=2)
    cluster.call(0, Probe.bump)
    cluster.call(0, Probe.bump)
    assert probe(cluster, 1).n == 2


def test_request_ids_older_than_the_window_are_applied_again() -> None:
    cluster = Cluster(service(dedup_window=2), replicas=2)
    for rid in ["a", "b", "c"]:  # "a" falls out of a window of two
        cluster.submit_nowait(0, Probe.bump, _request_id=rid)
    cluster.run_until_quiet()

    again_a = cluster.submit_nowait(0, Probe.bump, _request_id="a")
    again_c = cluster.submit_nowait(1, Probe.bump, _request_id="c")
    cluster.run_until_quiet()

    assert again_a.result() == 4
    assert again_a.applied is not None
    assert not again_a.applied.duplicate
    assert again_c.result() == 3
    assert again_c.applied is not None
    assert again_c.applied.duplicate
    cluster.assert_converged()


class Log(Component):
    def __init__(self) -> None:
        self.items: list[int] = []

    @update
    def append(self, ctx: Context, x: int) -> list[int]:
        self.items.append(x)
        return self.items  # aliases the state


def test_a_retry_gets_the_result_as_it_was_recorded() -> None:
    cluster = Cluster(Service("alias", [Log()]), replicas=2)
    first = cluster.submit_nowait(0, Log.append, 1, _request_id="r")
    cluster.run_until_quiet()
    recorded = list(first.result())
    cluster.call(0, Log.append, 2)

    retry = cluster.submit_nowait(0, Log.append, 1, _request_id="r")
    cluster.run_until_quiet()

    assert retry.result() == recorded == [1]


# --- snapshots ------------------------------------------------------------------------------


def test_snapshot_loaded_into_a_fresh_machine_continues_from_the_next_seq() -> None:
    svc = service()
    a = svc.new_machine(0)
    entries: list[Call | Fire] = [
        call("Probe.bump", ts=1.0, seq=1),
        Call("Probe.bump", [], {}, 2.0, 0, Mode.AFFINITY, "rid", seq=2),
        call("Timers.arm", "t", 5.0, ts=3.0, seq=3),
        call("Probe.roll", ts=4.0, seq=4),
    ]
    for e in entries:
        a.apply(e, owner=True)
    snap = a.snapshot()

    b = svc.new_machine(1)
    b.restore(snap)

    assert b.cursor == a.cursor == 5
    assert b.now == a.now == 4.0
    assert b.digest() == a.digest()
    assert b.pending_timers == 1
    assert b.next_deadline() == 8.0

    # Both continue identically: a retry, a timer, a plain entry.
    rest: list[Call | Fire] = [
        Call("Probe.bump", [], {}, 5.0, 1, Mode.AFFINITY, "rid", seq=5),
        Fire(1, 9.0, 0, seq=6),
        call("Probe.bump", ts=10.0, seq=7),
    ]
    for e in rest:
        out_a, out_b = a.apply(e, owner=True), b.apply(e, owner=False)
        assert (out_a.result, out_a.duplicate) == (out_b.result, out_b.duplicate)
    assert probe(b).n == 3
    assert component(b, Timers).fired == [("t", 9.0)]
    assert b.digest() == a.digest()


def test_a_snapshot_control_entry_is_answered_by_its_source_only() -> None:
    svc = service()
    machines = [svc.new_machine(i) for i in range(3)]
    for m in machines:
        m.apply(call("Probe.bump", ts=1.0, seq=1), owner=m.index == 0)
    request = Control("snapshot", [1, 2], 2.0, 2, seq=2)

    outs: list[Applied] = [m.apply(request, owner=m.index == 2) for m in machines]

    assert [o.snapshot is not None for o in outs] == [False, True, False]
    fresh = svc.new_machine(2)
    assert outs[1].snapshot is not None
    fresh.restore(outs[1].snapshot)
    assert fresh.cursor == 3
    assert fresh.digest() == machines[0].digest()


def test_restore_refuses_another_services_snapshot() -> None:
    snap = service().new_machine(0).snapshot()
    with pytest.raises(ValueError, match="snapshot of service"):
        Service("other", [Probe(), Timers()]).new_machine(0).restore(snap)
    with pytest.raises(ValueError, match="components differ"):
        Service("machine-tests", [Probe()]).new_machine(0).restore(snap)


def test_digest_names_every_component_and_the_machine() -> None:
    assert set(service().new_machine(0).digest()) == {"Probe", "Timers", "_dominoes"}


# --- queries and debug mode -------------------------------------------------------------------


def test_queries_are_not_checked_outside_debug_mode() -> None:
    cluster = Cluster(service(), replicas=2)
    assert cluster.query(0, Probe.sneaky) == 100  # a bug, but undetected


def test_debug_mode_detects_a_query_that_writes_state() -> None:
    cluster = Cluster(service(debug=True), replicas=2)
    with pytest.raises(QueryWroteStateError, match="Probe"):
        cluster.query(0, Probe.sneaky)


def test_debug_mode_allows_read_only_queries_and_transient_writes() -> None:
    cluster = Cluster(service(debug=True), replicas=2)
    cluster.call(0, Probe.bump)
    assert cluster.query(1, Probe.peek) == 1
    assert cluster.query(1, Probe.touch_local) == 1


def test_unknown_query_raises() -> None:
    cluster = Cluster(service(), replicas=1)
    with pytest.raises(UnknownEventError, match="no query named"):
        cluster.query(0, "Probe.nothing")
