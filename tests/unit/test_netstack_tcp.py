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
    RTO_MAX,
    TRANSITIONS,
    Actions,
    Event,
    State,
    Tcb,
    TcpError,
    reset_for,
    rst_verdict,
    segment_acceptable,
    seq_add,
    seq_diff,
)
from dominoes.components.netstack._types import ACK, FIN, PSH, RST, SYN, Segment
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

    ``loss`` applies to both directions unless ``loss_to_a`` sets the one to ``a``;
    every segment takes ``delay`` (plus a random one if reordered).

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
        loss_to_a: float | None = None,
        delay: float = 0.01,
        **options: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.loss_to_a = loss if loss_to_a is None else loss_to_a
        self.delay = delay
        self.lost = {"a": 0, "b": 0}  # segments each end sent that were lost
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
        if self.rng.random() < (self.loss_to_a if dst == "a" else self.loss):
            self.lost[src.name] += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.delay
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


@pytest.mark.parametrize(("loss_to_a", "dup"), [(0.0, 0.0), (0.05, 0.02)])
def test_bulk_transfer_with_loss_recovers_by_fast_retransmit_not_timeouts(
    loss_to_a: float, dup: float
) -> None:
    # 5 % of the data lost (then also of the ACKs, some duplicated), an RTT of
    # 0.3 ms: a timeout (RTO at least 0.2 s) costs hundreds of RTTs.  Loss keeps
    # cwnd at a few MSS, too few for three duplicate ACKs without limited
    # transmit (RFC 3042): before it, 19 timeouts for 71 losses here (now 3).
    sim = Sim(11, payload(2 * MB, 5), b"", loss=0.05, loss_to_a=loss_to_a, dup=dup, delay=0.00015)
    sim.run(2_000_000)
    sim.check_clean_close()
    counters = sim.a.counters
    lost = sim.lost["a"]
    assert lost > 50
    assert counters["TcpRetransSegs"] >= lost
    timeouts = counters.get("TcpExtTCPTimeouts", 0)
    assert timeouts <= lost // 8, (timeouts, lost)
    assert counters["TcpExtTCPFastRetrans"] >= 4 * timeouts


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


# -- driving Tcbs by hand -----------------------------------------------------------------

A_ISS: Final = 1000
B_ISS: Final = 0xFFFFFFF0  # wraps during the tests


def handshake(
    a_options: dict[str, Any] | None = None, b_options: dict[str, Any] | None = None
) -> tuple[Tcb, Tcb]:
    """An established pair: ``a`` opened at t=0, ``b`` answered; RTT 0.01 s."""
    a, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0, **(a_options or {}))
    b, synack = Tcb.passive(B_PORT, A_PORT, syn.segments[0], B_ISS, 0.0, **(b_options or {}))
    ack = a.on_segment(synack.segments[0], 0.01)
    assert ack.events == ["established"]
    done = b.on_segment(ack.segments[0], 0.01)
    assert done.events == ["established"]
    assert state_of(a) is State.ESTABLISHED
    assert state_of(b) is State.ESTABLISHED
    return a, b


def state_of(tcb: Tcb) -> State:
    """``tcb.state``, opaque to mypy's narrowing (it changes behind its back)."""
    return tcb.state


def in_recovery(tcb: Tcb) -> bool:
    return tcb.in_recovery


def pump(src: Tcb, dst: Tcb, segments: list[Segment], now: float) -> dict[int, bytes]:
    """Deliver ``segments`` (from ``src``) and every reply, losslessly, until quiet."""
    queue = [(dst, seg) for seg in segments]
    got: dict[int, bytes] = {id(src): b"", id(dst): b""}
    while queue:
        to, seg = queue.pop(0)
        acts = to.on_segment(seg, now)
        got[id(to)] += acts.delivered
        back = src if to is dst else dst
        queue += [(back, s) for s in acts.segments]
    return got


def from_a(a: Tcb, flags: int, payload: bytes = b"", **fields: int) -> Segment:
    """A segment as ``a`` would send it next (fields overridable)."""
    values = {"seq": a.snd_nxt, "ack": a.rcv_nxt, "window": 1000}
    values.update(fields)
    return Segment(A_PORT, B_PORT, values["seq"], values["ack"], flags, values["window"], payload)


def test_sequence_arithmetic_wraps() -> None:
    assert seq_add(0xFFFFFFFF, 2) == 1
    assert seq_diff(1, 0xFFFFFFFF) == 2
    assert seq_diff(0xFFFFFFFF, 1) == -2
    assert segment_acceptable(5, 0, 5, 0)
    assert not segment_acceptable(6, 0, 5, 0)
    assert segment_acceptable(0xFFFFFFFF, 10, 3, 100)  # starts before, ends inside
    assert not segment_acceptable(5, 1, 5, 0)
    assert segment_acceptable(104, 0, 5, 100)
    assert not segment_acceptable(105, 0, 5, 100)
    assert rst_verdict(5, 5, 100) == "reset"
    assert rst_verdict(6, 5, 100) == "challenge"
    assert rst_verdict(4, 5, 100) == "drop"
    assert rst_verdict(105, 5, 100) == "drop"


def test_reset_for_its_three_cases() -> None:
    assert reset_for(Segment(1, 2, 10, 20, RST, 0)) is None
    assert reset_for(Segment(1, 2, 10, 20, RST | ACK, 0)) is None
    assert reset_for(Segment(1, 2, 10, 20, ACK | PSH, 0, b"abc")) == Segment(2, 1, 20, 0, RST, 0)
    assert reset_for(Segment(1, 2, 0xFFFFFFFF, 0, SYN, 0)) == Segment(2, 1, 0, 0, RST | ACK, 0)
    assert reset_for(Segment(1, 2, 10, 0, FIN, 0, b"abc")) == Segment(2, 1, 0, 14, RST | ACK, 0)


def test_passive_open_needs_a_syn() -> None:
    with pytest.raises(ValueError, match="SYN"):
        Tcb.passive(B_PORT, A_PORT, Segment(A_PORT, B_PORT, 1, 1, SYN | ACK, 100), 5, 0.0)


def test_syn_fin_is_dropped() -> None:
    a, b = handshake()
    before = b.to_plain()
    acts = b.on_segment(from_a(a, SYN | FIN | ACK, seq=b.rcv_nxt), 1.0)
    assert acts.segments == []
    assert b.to_plain() == before
    a2, _ = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    acts = a2.on_segment(Segment(B_PORT, A_PORT, 7, A_ISS + 1, SYN | FIN | ACK, 100), 0.1)
    assert acts.segments == []
    assert state_of(a2) is State.SYN_SENT


def test_out_of_window_rst_is_ignored() -> None:
    a, b = handshake()
    for seq in (seq_add(b.rcv_nxt, -1), seq_add(b.rcv_nxt, 1 << 21), seq_add(b.rcv_nxt, 1 << 30)):
        acts = b.on_segment(from_a(a, RST, seq=seq), 1.0)
        assert acts.segments == []
        assert acts.events == []
        assert state_of(b) is State.ESTABLISHED


def test_in_window_inexact_rst_gets_a_challenge_ack() -> None:
    a, b = handshake()
    acts = b.on_segment(from_a(a, RST, seq=seq_add(b.rcv_nxt, 100)), 1.0)
    assert state_of(b) is State.ESTABLISHED
    [ack] = acts.segments
    assert (ack.flags, ack.seq, ack.ack) == (ACK, b.snd_nxt, b.rcv_nxt)
    assert acts.counters["TcpExtTCPChallengeACK"] == 1


def test_exact_rst_resets() -> None:
    a, b = handshake()
    acts = b.on_segment(from_a(a, RST, seq=b.rcv_nxt), 1.0)
    assert state_of(b) is State.CLOSED
    assert acts.events == ["reset", "closed"]
    assert acts.segments == []
    assert acts.counters["TcpEstabResets"] == 1


def test_syn_in_a_synchronized_state_gets_a_challenge_ack() -> None:
    a, b = handshake()
    acts = b.on_segment(from_a(a, SYN, seq=seq_add(b.rcv_nxt, 5)), 1.0)
    assert state_of(b) is State.ESTABLISHED
    [ack] = acts.segments
    assert (ack.flags, ack.seq, ack.ack) == (ACK, b.snd_nxt, b.rcv_nxt)
    assert acts.counters["TcpExtTCPSYNChallenge"] == 1


def test_rst_in_syn_sent_needs_an_acceptable_ack() -> None:
    a, _ = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    for seg in (
        Segment(B_PORT, A_PORT, 0, 0, RST, 0),
        Segment(B_PORT, A_PORT, 0, A_ISS, RST | ACK, 0),
        Segment(B_PORT, A_PORT, 0, A_ISS + 2, RST | ACK, 0),
    ):
        acts = a.on_segment(seg, 0.1)
        assert acts.segments == []
        assert state_of(a) is State.SYN_SENT
    acts = a.on_segment(Segment(B_PORT, A_PORT, 0, A_ISS + 1, RST | ACK, 0), 0.2)
    assert state_of(a) is State.CLOSED
    assert acts.events == ["refused", "closed"]
    assert acts.counters["TcpAttemptFails"] == 1
    assert acts.timers == {"rto": None}


def test_bad_ack_in_syn_sent_and_syn_rcvd_gets_a_rst() -> None:
    a, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    acts = a.on_segment(Segment(B_PORT, A_PORT, 7, 5000, ACK, 100), 0.1)
    assert acts.segments == [Segment(A_PORT, B_PORT, 5000, 0, RST, 0)]
    assert state_of(a) is State.SYN_SENT
    b, _ = Tcb.passive(B_PORT, A_PORT, syn.segments[0], B_ISS, 0.0)
    acts = b.on_segment(Segment(A_PORT, B_PORT, A_ISS + 1, 77, ACK, 100), 0.1)
    assert acts.segments == [Segment(B_PORT, A_PORT, 77, 0, RST, 0)]
    assert state_of(b) is State.SYN_RCVD


def test_segment_without_ack_is_dropped_when_synchronized() -> None:
    a, b = handshake()
    acts = b.on_segment(from_a(a, PSH, b"data", seq=b.rcv_nxt), 1.0)
    assert acts.segments == []
    assert acts.delivered == b""


def test_old_duplicate_data_is_acked_not_delivered() -> None:
    a, b = handshake()
    seg = a.send(b"hello", 1.0).segments[0]
    assert b.on_segment(seg, 1.01).delivered == b"hello"
    acts = b.on_segment(seg, 1.02)
    assert acts.delivered == b""
    [ack] = acts.segments
    assert ack.ack == b.rcv_nxt == seq_add(seg.seq, 5)


def test_data_beyond_the_window_is_trimmed() -> None:
    a, b = handshake(b_options={"rcv_buffer": 1000, "wscale": None})
    data = random.Random(1).randbytes(1500)
    acts = b.on_segment(from_a(a, ACK | PSH, data), 1.0)
    assert acts.delivered == data[:1000]
    [ack] = acts.segments
    assert ack.ack == seq_add(a.snd_nxt, 1000)
    assert ack.window == 0
    b.consumed(1000, 1.1)
    acts = b.on_segment(from_a(a, ACK | PSH, data[1000:], seq=seq_add(a.snd_nxt, 1000)), 1.2)
    assert acts.delivered == data[1000:]


def test_out_of_order_data_is_reassembled_with_overlaps_trimmed() -> None:
    a, b = handshake()
    data = random.Random(2).randbytes(5000)
    base = a.snd_nxt

    def piece(start: int, end: int) -> Segment:
        return from_a(a, ACK, data[start:end], seq=seq_add(base, start))

    for start, end in ((3000, 4000), (1000, 2500), (2000, 3500), (3900, 5000), (1500, 1600)):
        acts = b.on_segment(piece(start, end), 1.0)
        assert acts.delivered == b""
        [dup] = acts.segments
        assert dup.ack == base
        assert dup.payload == b""
    acts = b.on_segment(piece(0, 1200), 1.1)
    assert acts.delivered == data
    assert b.ooo == []
    assert acts.segments[-1].ack == seq_add(base, 5000)


def test_an_out_of_order_fin_waits_for_the_gap_and_ends_the_stream() -> None:
    a, b = handshake()
    base = a.snd_nxt
    acts = b.on_segment(from_a(a, ACK | FIN, b"world", seq=seq_add(base, 5)), 1.0)
    assert (acts.delivered, acts.events) == (b"", [])
    acts = b.on_segment(from_a(a, ACK, b"after the FIN", seq=seq_add(base, 10)), 1.0)
    assert (acts.delivered, acts.events) == (b"", [])
    acts = b.on_segment(from_a(a, ACK, b"hello", seq=base), 1.0)
    assert (acts.delivered, acts.events) == (b"helloworld", ["remote_fin"])
    assert state_of(b) is State.CLOSE_WAIT
    assert acts.segments[-1].ack == seq_add(base, 11)


def test_zero_window_then_persist_probe_and_window_update_resume_sending() -> None:
    a, b = handshake(b_options={"rcv_buffer": 3000, "wscale": None})
    data = random.Random(3).randbytes(10_000)
    got = pump(a, b, a.send(data, 1.0).segments, 1.0)
    assert got[id(b)] == data[:3000]
    assert a.snd_wnd == 0
    assert "rto" not in a.timers
    first = a.timers["persist"]
    probe = a.on_timer("persist", first)
    [seg] = probe.segments
    assert seg.seq == seq_add(a.snd_una, -1)
    assert seg.payload == b""
    assert probe.counters["TcpExtTCPWinProbe"] == 1
    [answer] = b.on_segment(seg, first).segments
    assert answer.window == 0
    assert a.on_segment(answer, first).segments == []
    second = a.timers["persist"]
    assert second - first > first - 1.0  # backed off
    # the application reads: b sends a window update, which is lost
    update = b.consumed(3000, second - 0.1)
    assert [s.window for s in update.segments] == [3000]
    [seg] = a.on_timer("persist", second).segments
    [answer] = b.on_segment(seg, second).segments
    assert answer.window == 3000
    resumed = a.on_segment(answer, second)
    # two full segments; the 80-byte rest of the window waits (sender-side SWS avoidance)
    assert [len(s.payload) for s in resumed.segments] == [MSS, MSS]
    assert resumed.segments[0].seq == a.snd_una
    assert resumed.timers == {"persist": None, "rto": second + a.rto}


def test_close_sends_the_buffered_data_before_the_fin() -> None:
    a, b = handshake(b_options={"rcv_buffer": 4000, "wscale": None})
    data = random.Random(4).randbytes(20_000)
    segs = a.send(data, 1.0).segments + a.close(1.0).segments
    assert state_of(a) is State.FIN_WAIT_1
    assert not any(s.flags & FIN for s in segs)
    now = 1.0
    got = pump(a, b, segs, now)[id(b)]
    while b.state is State.ESTABLISHED:
        assert len(got) < len(data)
        now += 0.1
        # the application reads: b's window update reopens a's window
        update = b.consumed(b.rcv_unread, now).segments
        assert update
        got += pump(b, a, update, now)[id(b)]
    assert got == data
    assert state_of(b) is State.CLOSE_WAIT
    assert state_of(a) is State.FIN_WAIT_2


def test_simultaneous_close() -> None:
    a, b = handshake()
    [fa] = a.close(1.0).segments
    [fb] = b.close(1.0).segments
    assert fa.flags & FIN
    assert fb.flags & FIN
    ra = a.on_segment(fb, 1.01)
    rb = b.on_segment(fa, 1.01)
    assert state_of(a) is State.CLOSING
    assert state_of(b) is State.CLOSING
    assert ra.events == rb.events == ["remote_fin"]
    a.on_segment(rb.segments[0], 1.02)
    b.on_segment(ra.segments[0], 1.02)
    assert state_of(a) is State.TIME_WAIT
    assert state_of(b) is State.TIME_WAIT
    at = a.timers["time_wait"]
    assert at == 1.02 + 2 * 30.0
    assert a.on_timer("time_wait", at - 1).segments == []
    assert state_of(a) is State.TIME_WAIT
    done = a.on_timer("time_wait", at)
    assert done.events == ["closed"]
    assert state_of(a) is State.CLOSED


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_the_timer() -> None:
    a, b = handshake(a_options={"msl": 0.5}, b_options={"msl": 0.5})
    [fin_a] = a.close(1.0).segments
    [ack_b] = b.on_segment(fin_a, 1.0).segments
    a.on_segment(ack_b, 1.0)
    assert state_of(a) is State.FIN_WAIT_2
    assert state_of(b) is State.CLOSE_WAIT
    [fin_b] = b.close(1.1).segments
    assert state_of(b) is State.LAST_ACK
    a.on_segment(fin_b, 1.1)  # its ACK is lost
    assert state_of(a) is State.TIME_WAIT
    assert a.timers == {"time_wait": 2.1}
    [again] = b.on_timer("rto", b.timers["rto"]).segments
    assert again.flags & FIN
    acts = a.on_segment(again, 1.5)
    [ack] = acts.segments
    assert ack.ack == seq_add(fin_b.seq, 1)
    assert acts.timers == {"time_wait": 2.5}
    done = b.on_segment(ack, 1.5)
    assert state_of(b) is State.CLOSED
    assert done.events == ["closed"]


def test_retransmitted_syn_in_syn_rcvd_gets_the_syn_ack_again() -> None:
    _, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    b, first = Tcb.passive(B_PORT, A_PORT, syn.segments[0], B_ISS, 0.0)
    acts = b.on_segment(syn.segments[0], 1.0)
    assert acts.segments == first.segments
    assert acts.counters["TcpRetransSegs"] == 1


def test_send_and_close_in_syn_rcvd_wait_for_the_handshake() -> None:
    a, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    b, synack = Tcb.passive(B_PORT, A_PORT, syn.segments[0], B_ISS, 0.0)
    assert b.send(b"early", 0.0).segments == []
    assert b.close(0.0).segments == []
    assert state_of(b) is State.FIN_WAIT_1
    [ack] = a.on_segment(synack.segments[0], 0.01).segments
    [data] = b.on_segment(ack, 0.02).segments
    assert (data.payload, data.flags) == (b"early", ACK | PSH | FIN)
    acts = a.on_segment(data, 0.03)
    assert acts.delivered == b"early"
    assert acts.events == ["remote_fin"]
    [fin] = a.close(0.04).segments
    [last] = b.on_segment(acts.segments[0], 0.05).segments + b.on_segment(fin, 0.05).segments
    assert state_of(b) is State.TIME_WAIT
    assert a.on_segment(last, 0.06).events == ["closed"]


def test_simultaneous_open() -> None:
    a, syn_a = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    b, syn_b = Tcb.active(B_PORT, A_PORT, B_ISS, 0.0)
    [sa_a] = a.on_segment(syn_b.segments[0], 0.01).segments
    [sa_b] = b.on_segment(syn_a.segments[0], 0.01).segments
    assert state_of(a) is State.SYN_RCVD
    assert sa_a.flags == SYN | ACK
    [ack_a] = a.on_segment(sa_b, 0.02).segments  # its SYN is old: just ACK it
    [ack_b] = b.on_segment(sa_a, 0.02).segments
    assert a.on_segment(ack_b, 0.03).events == ["established"]
    assert b.on_segment(ack_a, 0.03).events == ["established"]
    got = pump(a, b, a.send(b"ping", 0.1).segments, 0.1)
    assert got[id(b)] == b"ping"


def test_window_scaling_on() -> None:
    # the scale offered is the smallest covering the buffer: 4 for 1 MB, 6 for 4 MB
    a, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    assert (syn.segments[0].wscale, syn.segments[0].window) == (4, 0xFFFF)
    b, synack = Tcb.passive(B_PORT, A_PORT, syn.segments[0], B_ISS, 0.0, rcv_buffer=1 << 22)
    assert (synack.segments[0].wscale, synack.segments[0].window) == (6, 0xFFFF)
    [ack] = a.on_segment(synack.segments[0], 0.01).segments
    assert (a.snd_wscale, a.rcv_wscale) == (6, 4)
    assert a.snd_wnd == 0xFFFF  # the SYN's window is never scaled
    assert ack.window == 0xFFFF
    b.on_segment(ack, 0.01)
    assert (b.snd_wscale, b.rcv_wscale) == (4, 6)
    assert b.snd_wnd == 0xFFFF << 4
    data = random.Random(6).randbytes(300_000)
    got = pump(b, a, b.send(data, 0.1).segments, 0.1)
    assert got[id(a)] == data  # no reads: the window shrinks, scaled
    assert a.rcv_unread == len(data)
    [probe] = b.send(b"!", 0.2).segments
    [ack] = a.on_segment(probe, 0.2).segments
    assert ack.window == ((1 << 20) - len(data) - 1) >> 4
    b.on_segment(ack, 0.2)
    assert b.snd_wnd == ack.window << 4


def test_window_scale_is_capped_by_the_parameter_and_the_buffer() -> None:
    _, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0, wscale=2)
    assert syn.segments[0].wscale == 2
    _, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0, rcv_buffer=50_000)
    assert syn.segments[0].wscale == 0
    a, b = handshake({"rcv_buffer": 300}, {"rcv_buffer": 1 << 30, "wscale": 14})
    assert (a.rcv_wscale, a.snd_wscale) == (0, 14)
    [seg] = b.send(b"x" * 300, 0.1).segments
    [ack] = a.on_segment(seg, 0.1).segments
    assert ack.window == 0
    assert a.consumed(300, 0.2).segments[0].window == 300


@pytest.mark.parametrize(("a_ws", "b_ws"), [(None, 7), (7, None), (None, None)])
def test_window_scaling_off_unless_both_offer_it(a_ws: int | None, b_ws: int | None) -> None:
    a, b = handshake({"wscale": a_ws}, {"wscale": b_ws})
    for tcb in (a, b):
        assert (tcb.snd_wscale, tcb.rcv_wscale) == (0, 0)
    [data] = b.send(b"x", 0.1).segments
    assert data.window == 0xFFFF
    a.on_segment(data, 0.1)
    assert a.snd_wnd == 0xFFFF


def test_mss_negotiation() -> None:
    a, b = handshake({"mss": 1000}, {"mss": 1460})
    assert a.mss == b.mss == 1000
    assert [len(s.payload) for s in b.send(bytes(2500), 0.1).segments] == [1000, 1000, 500]
    b2, _ = Tcb.passive(B_PORT, A_PORT, Segment(A_PORT, B_PORT, 1, 0, SYN, 0xFFFF), B_ISS, 0.0)
    assert b2.mss == 536


def test_rto_backoff_doubles_and_caps_then_gives_up() -> None:
    a, syn = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0, syn_retries=12)
    assert syn.timers == {"rto": 1.0}
    intervals = []
    for _ in range(12):
        at = a.timers["rto"]
        acts = a.on_timer("rto", at)
        assert acts.segments == syn.segments
        intervals.append(acts.timers["rto"] - at)  # type: ignore[operator]
    assert intervals == [2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60, 60]
    assert a.rto == RTO_MAX
    acts = a.on_timer("rto", a.timers["rto"])
    assert acts.events == ["timeout", "closed"]
    assert acts.counters["TcpAttemptFails"] == 1
    assert state_of(a) is State.CLOSED


def test_a_timer_firing_early_is_rearmed_and_a_stale_one_ignored() -> None:
    a, _ = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    acts = a.on_timer("rto", 0.5)
    assert acts.segments == []
    assert acts.timers == {"rto": 1.0}
    assert a.on_timer("persist", 5.0) == Actions()
    with pytest.raises(ValueError, match="unknown timer"):
        a.on_timer("keepalive", 5.0)


def test_karn_no_rtt_sample_from_retransmitted_data() -> None:
    a, b = handshake()
    assert a.srtt == pytest.approx(0.01)
    srtt = a.srtt
    [seg] = a.send(b"x" * 100, 1.0).segments
    at = a.timers["rto"]
    assert at == pytest.approx(1.0 + 0.2)
    [again] = a.on_timer("rto", at).segments
    assert again == seg
    assert a.rto == pytest.approx(0.4)
    [ack] = b.on_segment(seg, 3.0).segments
    a.on_segment(ack, 3.0)
    assert a.srtt == srtt  # no sample
    assert a.rto == pytest.approx(0.4)  # the backed-off RTO is kept
    [seg] = a.send(b"y", 4.0).segments
    [ack] = b.on_segment(seg, 4.3).segments
    a.on_segment(ack, 4.3)
    assert a.srtt == pytest.approx(0.875 * 0.01 + 0.125 * 0.3)
    assert a.rto == pytest.approx(0.875 * 0.01 + 0.125 * 0.3 + 4 * a.rttvar)


def test_pure_acks_carry_the_highest_sequence_sent_after_a_timeout() -> None:
    # after an RTO, SND.NXT goes back; an ACK at SND.NXT would be out of the peer's
    # window (it got everything), which would then ignore the ACK it carries
    a, b = handshake()
    segs = a.send(bytes(3 * MSS), 1.0).segments
    for seg in segs:
        b.on_segment(seg, 1.01)  # b's ACKs are lost
    a.on_timer("rto", a.timers["rto"])
    assert seq_diff(a.snd_max, a.snd_nxt) == 2 * MSS
    [data] = b.send(b"hi", 2.0).segments
    [ack] = a.on_segment(data, 2.0).segments
    assert ack.seq == a.snd_max
    assert ack.payload == b""
    b.on_segment(ack, 2.0)
    [ack] = b.send(b"!", 2.1).segments
    a.on_segment(ack, 2.1)
    assert a.snd_una == a.snd_max


def test_fast_retransmit_after_three_duplicate_acks() -> None:
    a, b = handshake()
    pump(a, b, a.send(b"!", 1.0).segments, 1.0)  # b's window is now known to a
    data = random.Random(5).randbytes(6 * MSS)
    segs = a.send(data, 2.0).segments
    assert [len(s.payload) for s in segs] == [MSS] * 6
    dups = [b.on_segment(s, 2.01).segments[0] for s in segs[1:]]
    assert {d.ack for d in dups} == {segs[0].seq}
    cwnd = a.cwnd
    for dup in dups[:2]:
        assert a.on_segment(dup, 2.02).segments == []
    acts = a.on_segment(dups[2], 2.02)
    assert acts.segments[0] == segs[0]
    assert acts.counters["TcpExtTCPFastRetrans"] == 1
    assert acts.counters["TcpRetransSegs"] == 1
    assert in_recovery(a)
    assert a.ssthresh == 3 * MSS
    assert a.cwnd < cwnd
    [ack] = b.on_segment(acts.segments[0], 2.03).segments
    a.on_segment(dups[3], 2.03)
    a.on_segment(ack, 2.04)
    assert ack.ack == seq_add(segs[0].seq, 6 * MSS)
    assert not in_recovery(a)
    assert a.cwnd <= a.ssthresh


def test_limited_transmit_sends_new_data_on_the_first_two_duplicate_acks() -> None:
    a, b = handshake()
    pump(a, b, a.send(b"!", 1.0).segments, 1.0)
    data = random.Random(7).randbytes(13 * MSS)
    segs = a.send(data, 2.0).segments
    assert len(segs) == a.cwnd // MSS == 10
    dups = [b.on_segment(s, 2.01).segments[0] for s in segs[1:3]]  # segs[0] is lost
    for i, dup in enumerate(list(dups)):
        [new] = a.on_segment(dup, 2.02).segments  # one new segment each, beyond cwnd
        assert new.seq == seq_add(segs[-1].seq, (i + 1) * MSS)
        dups.append(b.on_segment(new, 2.03).segments[0])
    acts = a.on_segment(dups[2], 2.04)
    assert acts.segments[0] == segs[0]
    assert acts.counters["TcpExtTCPFastRetrans"] == 1
    assert a.ssthresh == 5 * MSS  # half the flight without the limited-transmit segments


def test_abort_sends_a_rst_and_close_in_syn_sent_forgets() -> None:
    a, b = handshake()
    acts = a.abort(1.0)
    assert acts.segments == [Segment(A_PORT, B_PORT, a.snd_nxt, 0, RST, 0)]
    assert acts.events == ["closed"]
    assert acts.counters["TcpEstabResets"] == 1
    assert b.on_segment(acts.segments[0], 1.0).events == ["reset", "closed"]
    with pytest.raises(TcpError):
        a.send(b"late", 1.1)
    c, _ = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0)
    acts = c.close(0.1)
    assert acts.segments == []
    assert acts.events == ["closed"]


def test_a_closed_tcb_answers_with_reset_for() -> None:
    a, b = handshake()
    a.abort(1.0)
    seg = from_a(b, ACK, b"zz", seq=7, ack=99)
    assert a.on_segment(seg, 1.0).segments == [reset_for(seg)]


def test_consumed_checks_its_argument() -> None:
    _, b = handshake()
    with pytest.raises(ValueError, match="unread"):
        b.consumed(1, 1.0)


# -- the table ---------------------------------------------------------------------------


def test_the_table_is_total() -> None:
    expected = {
        (state, event)
        for state in State
        for event in Event
        if state is not State.LISTEN and event is not Event.OPEN
    } | {(State.CLOSED, Event.OPEN), (State.LISTEN, Event.SYN)}
    assert set(TRANSITIONS) == expected
    for (state, _), (action, nxt) in TRANSITIONS.items():
        assert callable(getattr(Tcb, "_a_" + action))
        assert isinstance(nxt, State)
        if state is State.CLOSED:
            assert nxt in (State.CLOSED, State.SYN_SENT)


def test_the_table_covers_every_pair_the_engine_produces(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[tuple[State, Event]] = set()
    step = Tcb._step

    def recording(self: Tcb, event: Event, seg: Segment | None, data: bytes = b"") -> None:
        seen.add((self.state, event))
        step(self, event, seg, data)

    monkeypatch.setattr(Tcb, "_step", recording)
    for seed in range(6):
        Sim(seed, payload(30_000, seed), payload(5000, seed), loss=0.15, dup=0.1, reorder=0.5).run()
    for name, test in globals().items():
        if (
            name.startswith("test_")
            and name
            not in {
                "test_the_table_covers_every_pair_the_engine_produces",
                "test_window_scaling_off_unless_both_offer_it",
            }
            and test.__code__.co_argcount == 0
            and not hasattr(test, "hypothesis")
        ):
            test()
    assert seen <= set(TRANSITIONS)
    assert {state for state, _ in seen} == set(State)
    assert len(seen) > 45


OPS: Final = ("seg", "seg", "plausible", "plausible", "send", "close", "abort", "timer", "consume")


def _near(base: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-3, 3).map(lambda d: seq_add(base, d)),
        st.integers(-(1 << 21), 1 << 21).map(lambda d: seq_add(base, d)),
        st.integers(0, 2**32 - 1),
    )


@settings(max_examples=200, deadline=None)
@given(start=st.sampled_from(["syn_sent", "syn_rcvd", "established"]), data=st.data())
def test_random_events_never_leave_the_table(start: str, data: st.DataObject) -> None:
    if start == "syn_sent":
        tcb, _ = Tcb.active(A_PORT, B_PORT, A_ISS, 0.0, msl=1.0)
    elif start == "syn_rcvd":
        syn = Segment(A_PORT, B_PORT, 0xFFFFFF00, 0, SYN, 5000, mss=1000, wscale=3)
        tcb, _ = Tcb.passive(B_PORT, A_PORT, syn, B_ISS, 0.0, msl=1.0)
    else:
        tcb, _ = handshake({"msl": 1.0})
    now = 0.0
    for _ in range(data.draw(st.integers(1, 40))):
        now += data.draw(st.sampled_from([0.0, 0.01, 0.5, 3.0]))
        op = data.draw(st.sampled_from(OPS))
        if op == "seg":
            seg = Segment(
                B_PORT,
                A_PORT,
                data.draw(_near(tcb.rcv_nxt)),
                data.draw(_near(tcb.snd_una)),
                data.draw(st.integers(0, 63)),
                data.draw(st.integers(0, 0xFFFF)),
                data.draw(st.binary(max_size=40)),
                mss=data.draw(st.none() | st.integers(0, 0xFFFF)),
                wscale=data.draw(st.none() | st.integers(0, 255)),
            )
            acts = tcb.on_segment(seg, now)
        elif op == "plausible":
            flags = data.draw(st.sampled_from([ACK, ACK | FIN, ACK | PSH, RST, ACK | RST, SYN]))
            seg = Segment(
                B_PORT,
                A_PORT,
                tcb.rcv_nxt,
                tcb.snd_max,
                flags,
                data.draw(st.sampled_from([0, 1, 100, 0xFFFF])),
                data.draw(st.binary(max_size=3000)) if flags & ACK else b"",
            )
            acts = tcb.on_segment(seg, now)
        elif op == "send":
            try:
                acts = tcb.send(data.draw(st.binary(max_size=5000)), now)
            except TcpError:
                assert tcb.state not in (
                    State.SYN_SENT,
                    State.SYN_RCVD,
                    State.ESTABLISHED,
                    State.CLOSE_WAIT,
                )
                continue
        elif op == "close":
            acts = tcb.close(now)
        elif op == "abort":
            acts = tcb.abort(now)
        elif op == "timer":
            kind = data.draw(st.sampled_from(["rto", "persist", "time_wait"]))
            now = max(now, tcb.timers.get(kind, now))
            acts = tcb.on_timer(kind, now)
        else:
            acts = tcb.consumed(data.draw(st.integers(0, tcb.rcv_unread)), now)
        assert isinstance(tcb.state, State)
        for seg in acts.segments:
            assert 0 <= seg.seq < 2**32
            assert 0 <= seg.ack < 2**32
            assert 0 <= seg.window <= 0xFFFF
            assert len(seg.payload) <= tcb.mss
        if tcb.state is State.CLOSED:
            assert tcb.timers == {}
        assert all(at is None or at >= now for at in acts.timers.values())
        assert roundtrip(tcb).to_plain() == tcb.to_plain()
