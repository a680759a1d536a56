"""Digest points: replicas compare state digests at the same log position."""

from __future__ import annotations

import random

from dominoes import Component, Context, Service, update
from dominoes.testing import Cluster


class Honest(Component):
    def __init__(self) -> None:
        self.total = 0
        self.rolls: list[float] = []

    @update
    def add(self, ctx: Context, n: int) -> int:
        self.total += n
        self.rolls.append(ctx.random.random())  # deterministic: seeded from seq
        return self.total


class Liar(Component):
    """Reads randomness that is not ``ctx.random``: a bug that replicas must catch."""

    def __init__(self) -> None:
        self.noise: list[float] = []

    @update
    def wobble(self, ctx: Context) -> None:
        self.noise.append(random.random())


def test_a_non_deterministic_component_is_caught_within_one_digest_period() -> None:
    service = Service("d", [Honest(), Liar()], digest_every=10)
    cluster = Cluster(service, replicas=3)
    for i in range(9):
        cluster.call(i % 3, Honest.add, i)
    assert cluster.divergences == []
    cluster.call(0, Liar.wobble)  # seq 10: a digest point
    cluster.run_until_quiet()
    assert cluster.divergences, "the divergence went unnoticed"
    first = cluster.divergences[0]
    assert first.seq == 10
    assert first.component == "Liar"
    assert first.replicas[0] != first.replicas[1]
    assert all(s.divergences >= 1 for s in cluster.statistics())


def test_deterministic_components_never_raise_a_false_alarm() -> None:
    service = Service("d", [Honest()], digest_every=7)
    cluster = Cluster(service, replicas=3)
    for i in range(200):
        cluster.submit_nowait(i % 3, Honest.add, i)
        cluster.step(i % 3)
    cluster.kill(1)
    cluster.restart(1)
    for i in range(50):
        cluster.call(i % 3, Honest.add, i)
    cluster.assert_converged()
    assert cluster.divergences == []
    reports = sum(s.appended for s in cluster.statistics()) - 250 - 1
    assert reports > 0, "digest reports were appended"


def test_digests_are_off_by_default() -> None:
    cluster = Cluster(Service("d", [Honest()]), replicas=2)
    for i in range(30):
        cluster.call(0, Honest.add, i)
    assert cluster.log.tail == 31


def test_a_digest_computed_later_is_compared_with_reports_that_came_first() -> None:
    """A driver may digest in the background (``StateMachine.digest_writer``):
    reports that arrive before its own digest are compared once it is done."""
    service = Service("d", [Honest(), Liar()], digest_every=5)
    cluster = Cluster(service, replicas=2)
    late: list[int] = []
    machine = cluster[1].core.machine

    def later(seq: int) -> bool:
        late.append(seq)
        return True

    machine.digest_writer = later
    for i in range(4):
        cluster.call(0, Honest.add, i)
    cluster.call(0, Liar.wobble)  # seq 5: a digest point; replica 0 digests at once
    cluster.run_until_quiet()  # replica 0's report reaches replica 1 before its digest
    assert late == [5]
    assert cluster.divergences == []
    assert machine.divergences == 0
    found = cluster[1].core.digest_done(5, machine.digest(), now=cluster.clock)
    assert [(d.seq, d.component) for d in found] == [(5, "Liar")]
    assert machine.divergences == 1
    assert cluster[1].core.outbox  # replica 1's own report waits to be appended
    assert cluster[1].core.flush_outbox() == 0
    cluster.run_until_quiet()
    assert [d.component for d in cluster.divergences] == ["Liar"]  # replica 0 compared it


def test_a_failed_background_digest_drops_its_early_reports() -> None:
    service = Service("d", [Honest()], digest_every=2)
    cluster = Cluster(service, replicas=2)
    machine = cluster[1].core.machine
    machine.digest_writer = lambda seq: True
    cluster.call(0, Honest.add, 1)
    cluster.call(0, Honest.add, 2)
    cluster.run_until_quiet()
    assert cluster[1].core.digest_done(2, None, now=cluster.clock) == []
    assert not cluster[1].core.outbox
