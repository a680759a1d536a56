"""The sans-IO TCP engine (``dominoes.components.netstack._tcp``).

Two Tcbs talk through :class:`Sim`, a simulated network with a virtual clock: a
seeded queue that can lose, duplicate and delay (so reorder) segments, and the two
ends' timers; the clock jumps to whichever comes first.  Then the table, checked
for totality and fuzzed, and the RFC cases one by one, driving a Tcb by hand.
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Final

import msgspec
import pytest
from dominoes.components.netstack._tcp import (
    Actions,
    State,
    Tcb,
)
from dominoes.components.netstack._types import ACK, FIN, RST, SYN, Segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MSS: Final = 1460
MB: Final = 1 << 20
SIZES: Final = (0, 1, MSS, MSS + 1, MB)
A_PORT: Final = 40000
B_PORT: Final = 80


def roundtrip(tcb: Tcb) -> Tcb:
    """``tcb`` through msgpack and back."""
    plain = msgspec.msgpack.decode(msgspec.msgpack.encode(tcb.to_plain()))
    return Tcb.from_plain(plain)


class End:
    """One side: its Tcb, its timers, its application."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.tcb: Tcb | None = None
        self.data = data
        self.received = bytearray()
        self.events: list[str] = []
        self.timers: dict[str, float] = {}
        self.states: set[str] = set()
        self.counters: dict[str, int] = {}


class Sim:
    """Two Tcbs over a lossy, duplicating, reordering network, in virtual time.

    ``a`` opens; ``b`` is created by a listener when a SYN arrives.  ``a`` queues
    its data before the handshake and closes once established; ``b`` sends and
    closes once established.  Both read everything at once.
    """

    def __init__(
        self,
        seed: int,
        a_data: bytes,
        b_data: bytes,
        *,
        loss: float = 0.0,
        dup: float = 0.0,
        reorder: float = 0.0,
        snapshot_every: int = 0,
        **options: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.now = 0.0
        self.queue: list[tuple[float, int, str, Segment]] = []
        self.counter = 0
        self.snapshot_every = snapshot_every
        self.options = options
        self.trace: list[tuple[float, str, Segment]] = []
        self.a = End("a", a_data)
        self.b = End("b", b_data)
        self.a.tcb, acts = Tcb.active(A_PORT, B_PORT, 0xFFFFF000, self.now, **options)
        self.apply(self.a, acts)
        self.apply(self.a, self.a.tcb.send(a_data, self.now))

    def other(self, end: End) -> End:
        return self.b if end is self.a else self.a

    def transmit(self, src: End, seg: Segment) -> None:
        self.trace.append((self.now, src.name, seg))
        dst = self.other(src).name
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = 0.01
            if self.rng.random() < self.reorder:
                delay += self.rng.uniform(0, 0.03)
            self.counter += 1
            heapq.heappush(self.queue, (self.now + delay, self.counter, dst, seg))

    def apply(self, end: End, acts: Actions) -> None:
        tcb = end.tcb
        assert tcb is not None
        for seg in acts.segments:
            self.transmit(end, seg)
        for kind, at in acts.timers.items():
            if at is None:
                end.timers.pop(kind, None)
            else:
                end.timers[kind] = at
        end.events += acts.events
        end.states.add(tcb.state.value)
        for name, n in acts.counters.items():
            end.counters[name] = end.counters.get(name, 0) + n
        if acts.delivered:
            end.received += acts.delivered
            self.apply(end, tcb.consumed(len(acts.delivered), self.now))
        if "established" in acts.events:
            if end is self.b:
                self.apply(end, tcb.send(end.data, self.now))
            self.apply(end, tcb.close(self.now))

    def deliver(self, end: End, seg: Segment) -> None:
        if end.tcb is None:
            if seg.flags & (SYN | ACK | RST | FIN) == SYN:
                end.tcb, acts = Tcb.passive(
                    B_PORT, A_PORT, seg, 0x7FFFFFF0, self.now, **self.options
                )
                self.apply(end, acts)
            return
        self.apply(end, end.tcb.on_segment(seg, self.now))

    def run(self, max_steps: int = 400_000, *, partial: bool = False) -> None:
        """Until nothing is left to happen (or ``max_steps`` events, if ``partial``)."""
        steps = 0
        while steps < max_steps:
            steps += 1
            if self.snapshot_every and steps % self.snapshot_every == 0:
                for end in (self.a, self.b):
                    if end.tcb is not None:
                        end.tcb = roundtrip(end.tcb)
            best: tuple[float, End | None, str] | None = None
            if self.queue:
                best = (self.queue[0][0], None, "")
            for end in (self.a, self.b):
                for kind, at in end.timers.items():
                    if best is None or at < best[0]:
                        best = (at, end, kind)
            if best is None:
                return
            at, owner, kind = best
            self.now = max(self.now, at)
            if owner is None:
                _, _, dst, seg = heapq.heappop(self.queue)
                self.deliver(self.a if dst == "a" else self.b, seg)
            else:
                del owner.timers[kind]
                assert owner.tcb is not None
                self.apply(owner, owner.tcb.on_timer(kind, self.now))
        if partial:
            return
        raise AssertionError(f"no end after {max_steps} steps")

    def check_clean_close(self) -> None:
        assert bytes(self.b.received) == self.a.data
        assert bytes(self.a.received) == self.b.data
        for end in (self.a, self.b):
            assert end.tcb is not None
            assert end.tcb.state is State.CLOSED, end.name
            assert end.events.count("closed") == 1, end.events
            assert "reset" not in end.events
            assert "timeout" not in end.events
            assert end.events.count("remote_fin") == 1
            assert not end.timers
        assert "TIME_WAIT" in self.a.states | self.b.states


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# -- transfers -------------------------------------------------------------------------


@pytest.mark.parametrize("a_size", SIZES)
@pytest.mark.parametrize("b_size", [0, 1, MSS + 1, MB])
def test_transfer_without_loss(a_size: int, b_size: int) -> None:
    sim = Sim(1, payload(a_size, 1), payload(b_size, 2))
    sim.run()
    sim.check_clean_close()
    assert "TcpRetransSegs" not in sim.a.counters
    assert "TcpRetransSegs" not in sim.b.counters


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    a_size=st.sampled_from(SIZES),
    b_size=st.sampled_from(SIZES),
    loss=st.floats(0, 0.1),
    dup=st.floats(0, 0.05),
    reorder=st.floats(0, 0.5),
)
def test_transfer_with_loss_duplication_and_reordering(
    seed: int, a_size: int, b_size: int, loss: float, dup: float, reorder: float
) -> None:
    if a_size == MB and b_size == MB:
        b_size = MSS  # one megabyte per example is enough to stay fast
    sim = Sim(
        seed, payload(a_size, seed), payload(b_size, ~seed), loss=loss, dup=dup, reorder=reorder
    )
    sim.run()
    sim.check_clean_close()


def test_transfer_with_ten_percent_loss_both_ways() -> None:
    sim = Sim(7, payload(MB, 3), payload(MB, 4), loss=0.1, dup=0.05, reorder=0.3)
    sim.run()
    sim.check_clean_close()
    for end in (sim.a, sim.b):
        assert end.counters["TcpRetransSegs"] > 0
        assert end.counters.get("TcpExtTCPFastRetrans", 0) > 0


@pytest.mark.parametrize(
    "options",
    [{}, {"wscale": None}, {"mss": 536}, {"rcv_buffer": 4096}, {"rcv_buffer": 70000, "wscale": 2}],
)
def test_transfer_with_options(options: dict[str, Any]) -> None:
    sim = Sim(5, payload(200_000, 5), payload(3000, 6), loss=0.05, reorder=0.2, **options)
    sim.run()
    sim.check_clean_close()


def test_snapshot_round_trip_mid_transfer_behaves_identically() -> None:
    def run(snapshot_every: int) -> Sim:
        sim = Sim(
            11, payload(300_000, 1), payload(100_000, 2), loss=0.05, dup=0.02, reorder=0.2,
            snapshot_every=snapshot_every,
        )  # fmt: skip
        sim.run()
        return sim

    plain, snapped = run(0), run(37)
    assert snapped.trace == plain.trace
    snapped.check_clean_close()


def test_to_plain_is_plain_data_and_round_trips() -> None:
    sim = Sim(3, payload(50_000, 1), payload(9000, 2), loss=0.2, reorder=0.5)
    sim.run(max_steps=40, partial=True)
    for end in (sim.a, sim.b):
        assert end.tcb is not None
        plain = end.tcb.to_plain()
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(plain)) == plain
        assert roundtrip(end.tcb).to_plain() == plain


def test_determinism() -> None:
    def run() -> Sim:
        sim = Sim(99, payload(200_000, 1), payload(50_000, 2), loss=0.08, dup=0.03, reorder=0.3)
        sim.run()
        return sim

    one, two = run(), run()
    assert one.trace == two.trace
    assert one.a.counters == two.a.counters
    for x, y in ((one.a, two.a), (one.b, two.b)):
        assert x.tcb is not None
        assert y.tcb is not None
        assert x.tcb.to_plain() == y.tcb.to_plain()
