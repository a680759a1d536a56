"""Reconfiguration through the log: components and bindings changed at one log position.

The parts added here are ``examples.limits``'s (``cap`` and ``Audit``) on
``examples.counter``'s service, as a user would add them to a running one.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes import Component, Context, Mode, RemoteError, Service, reconfiguration, update
from dominoes.testing import Cluster
from examples.counter import Counter, service

EVENT = reconfiguration.EVENT
CAP = reconfiguration.bind("Counter.incr", "examples.limits:cap", -1, limit=10)
AUDIT = reconfiguration.add("examples.limits:Audit")


def registries(cluster: Cluster) -> list[list[tuple[int, str, float]]]:
    """Every live replica's bindings, as (id, event, order)."""
    return [
        [(b.id, b.event, b.order) for b in r.core.machine.registry.bindings()] for r in cluster.live
    ]


def test_a_handler_bound_at_one_position_applies_from_there_on_every_replica() -> None:
    cluster = Cluster(service, replicas=3)
    assert cluster.call(0, Counter.incr, "k", by=50) == 50
    binding = cluster.call(1, EVENT, CAP)
    with pytest.raises(ValueError, match="over the limit of 10"):
        cluster.call(2, Counter.incr, "k", by=50)
    assert cluster.call(0, Counter.incr, "k", by=5) == 55
    cluster.assert_converged()
    assert len({str(r) for r in registries(cluster)}) == 1
    assert cluster.call(2, EVENT, reconfiguration.unbind(binding)) == binding
    assert cluster.call(0, Counter.incr, "k", by=50) == 105
    cluster.assert_converged()


def test_a_component_added_live_starts_at_its_position_and_can_be_removed() -> None:
    cluster = Cluster(service, replicas=3)
    cluster.call(0, Counter.incr, "a")
    assert cluster.call(1, EVENT, AUDIT) == "audit"
    for i in range(3):
        cluster.call(i, Counter.incr, "a")
    cluster.assert_converged()
    assert [cluster.query(i, "audit.of", "a") for i in range(3)] == [3, 3, 3]
    assert cluster.call(2, EVENT, reconfiguration.remove("audit")) == "audit"
    cluster.call(0, Counter.incr, "a")
    cluster.assert_converged()
    for replica in cluster.live:
        assert "audit" not in replica.core.machine.components
    assert [cluster.query(i, Counter.get, "a") for i in range(3)] == [5, 5, 5]


def test_a_replica_that_joins_later_gets_the_same_components_and_bindings() -> None:
    cluster = Cluster(service, replicas=3)
    cluster.call(0, EVENT, AUDIT)
    cluster.call(1, EVENT, CAP)
    cluster.call(0, Counter.incr, "k", by=3)
    cluster.kill(2)
    cluster.call(0, Counter.incr, "k", by=4)
    cluster.restart(2)
    cluster.run_until(lambda: not cluster[2].joining)
    cluster.assert_converged()
    assert cluster.query(2, "audit.of", "k") == 2
    with pytest.raises(ValueError, match="over the limit"):
        cluster.call(2, Counter.incr, "k", by=11)
    assert len({str(r) for r in registries(cluster)}) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (reconfiguration.add("examples.nowhere:Audit"), "cannot import examples.nowhere:Audit"),
        (reconfiguration.add("examples.limits:cap"), "is not a Component class"),
        (reconfiguration.add("examples.counter:Counter"), "already in the service"),
        (reconfiguration.remove("nobody"), "no component named 'nobody'"),
        (reconfiguration.unbind(9999), "no binding 9999"),
        (reconfiguration.bind("Counter.incr", "examples.limits:Audit.nothing"), "cannot import"),
        ({"do": "explode"}, "add, remove, bind, unbind, copies or mode"),
        ("add", "add, remove, bind, unbind, copies or mode"),
    ],
)
def test_a_spec_that_cannot_apply_is_an_error_everywhere_and_changes_nothing(
    spec: Any, message: str
) -> None:
    cluster = Cluster(service, replicas=2)
    before = registries(cluster)
    with pytest.raises((ValueError, RemoteError), match=message):
        cluster.call(0, EVENT, spec)
    cluster.assert_converged()
    assert registries(cluster) == before
    assert all(r.core.machine.config == [] for r in cluster.live)


SPECS = st.sampled_from(["cap", "uncap", "audit", "unaudit"])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("incr"), st.integers(0, 2), st.integers(1, 20)),
            st.tuples(st.just("reconf"), st.integers(0, 2), SPECS),
            st.tuples(st.just("crash"), st.integers(1, 2), st.just(0)),
        ),
        max_size=25,
    )
)
def test_replies_and_state_match_a_twin_that_never_crashed(ops: list[tuple[str, int, Any]]) -> None:
    """Random increments and reconfigurations on three replicas, some of them
    killed and restarted, against a one-replica twin given the same calls."""
    cluster, twin = Cluster(service, replicas=3), Cluster(service, replicas=1)
    bindings: list[int] = []
    for op, replica, arg in ops:
        if op == "crash":
            cluster.kill(replica)
            cluster.restart(replica)
            cluster.run_until(lambda r=replica: not cluster[r].joining)  # type: ignore[misc]
            continue
        if op == "incr":
            call: tuple[Any, ...] = (Counter.incr, "k")
            kwargs: dict[str, Any] = {"by": arg}
        else:
            spec = {
                "cap": CAP,
                "uncap": reconfiguration.unbind(bindings[-1] if bindings else -1),
                "audit": AUDIT,
                "unaudit": reconfiguration.remove("audit"),
            }[arg]
            call, kwargs = (EVENT, spec), {}
        got, want = _outcome(cluster, replica, call, kwargs), _outcome(twin, 0, call, kwargs)
        assert got == want
        if arg == "cap" and isinstance(got, int):
            bindings.append(got)
    cluster.assert_converged()
    # the same state as the twin's (Audit.last_seq aside: log positions differ,
    # since a restart adds entries of its own)
    mine, its = cluster[0].machine, twin[0].machine
    assert mine.digest()["Counter"] == its.digest()["Counter"]
    assert mine.config == its.config
    assert sorted(mine.components) == sorted(its.components)
    if "audit" in its.components:
        assert mine.component("audit").increments == its.component("audit").increments


def _outcome(cluster: Cluster, replica: int, call: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return cluster.call(replica, *call, **kwargs)
    except (ValueError, RemoteError) as exc:
        return f"error: {exc}"


def test_a_rollback_past_a_reconfiguration_rebuilds_the_same_registry() -> None:
    """A recovery point taken before a reconfiguration, then a rollback (what a
    poison entry causes): the machine goes back to the service's own
    configuration, the journal's reconfigurations are applied again, and the
    binding ids come out as before."""
    cluster = Cluster(service, replicas=2)
    core = cluster[0].core
    core.enable_recovery()
    cluster.call(0, Counter.incr, "k")
    binding = cluster.call(1, EVENT, CAP)
    cluster.call(0, EVENT, AUDIT)
    cluster.call(1, Counter.incr, "k")
    before = registries(cluster)[0]
    digest = cluster[0].machine.digest()
    core.rollback()
    assert registries(cluster)[0] == before
    assert cluster[0].machine.digest() == digest
    with pytest.raises(ValueError, match="over the limit"):
        cluster.call(0, Counter.incr, "k", by=11)
    cluster.call(0, EVENT, reconfiguration.unbind(binding))
    cluster.assert_converged()


def test_a_snapshot_without_reconfigurations_restores_the_defined_service() -> None:
    cluster = Cluster(service, replicas=2)
    machine = cluster[0].machine
    plain = machine.snapshot()
    defined = registries(cluster)[0]
    cluster.call(0, EVENT, AUDIT)
    reconfigured = machine.snapshot()
    machine.restore(plain)
    assert sorted(machine.components) == ["Counter"]
    assert registries(cluster)[0] == defined
    assert machine.config == []
    machine.restore(reconfigured)
    assert sorted(machine.components) == ["Counter", "audit"]
    assert registries(cluster)[0] == registries(cluster)[1]


SENT: list[tuple[int, str]] = []


class Notifier(Component):
    """Each notice is an effect: it runs where the call is owned."""

    @update
    def notify(self, ctx: Context, what: str) -> None:
        ctx.effect(SENT.append, (ctx.replica, what))


@pytest.mark.parametrize("batched", [False, True])
def test_an_event_s_ownership_mode_changes_at_one_log_position(batched: bool) -> None:
    cluster = Cluster(Service("notes", [Notifier()]), replicas=3)
    SENT.clear()

    def send(what: str) -> list[int]:
        SENT.clear()
        if batched:  # calls of a group commit: one entry, owned by its origin until set
            for p in cluster.submit_batch_nowait(1, [(Notifier.notify, (what,), {})] * 2):
                cluster.run_until(lambda p=p: p.done)  # type: ignore[misc]
        else:
            cluster.call(1, Notifier.notify, what)
        cluster.run_until_quiet()
        return sorted(r for r, _ in SENT)

    per = 2 if batched else 1
    assert send("a") == [1] * per  # affinity: the origin
    assert cluster.call(0, EVENT, reconfiguration.mode("Notifier.notify", "every")) == "every"
    assert send("b") == sorted([0, 1, 2] * per)
    cluster.call(2, EVENT, reconfiguration.mode("Notifier.notify", "race"))
    owners = send("c")
    assert len(owners) == per  # exactly one replica each
    # a replica restarted now gets the configuration from its snapshot
    cluster.kill(2)
    cluster.restart(2)
    cluster.run_until_quiet()
    assert cluster.replicas[2].core.machine.modes == {"Notifier.notify": Mode.RACE}
    assert len(send("d")) == per
    assert cluster.call(0, EVENT, reconfiguration.mode("Notifier.notify", None)) == "the caller's"
    assert send("e") == [1] * per
    cluster.assert_converged()
    with pytest.raises(ValueError, match="one of race, affinity, every"):
        cluster.call(0, EVENT, reconfiguration.mode("Notifier.notify", "sometimes"))
