"""Each CTP profile keeps its promise over a fake network that drops, duplicates and
reorders datagrams between two replicated services (``testing.Cluster``).

A sender service (2 replicas) sends messages to a receiver service (2
replicas).  Every datagram either side's owner sends goes into the network,
where hypothesis decides its fate: delivered (to either replica of the other
side, as a ``race`` entry), dropped, duplicated, or held back while later ones
pass.  When nothing is in flight, both fake clocks move on, so replicated
timers fire.  Then:

* ``reliable-ordered``: every message arrives exactly once, in order;
* ``reliable-unordered``: every message arrives exactly once;
* ``unreliable-fec``: never a duplicate; with at most ``m`` blocks of a group
  lost, every message arrives, and the receiver rebuilt exactly the data blocks
  the network dropped;
* both services' replicas converge (same state digests), and a sender replica
  killed mid-way stalls nothing.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from dominoes.components.ctp import (
    PROFILES,
    RELIABLE_ORDERED,
    RELIABLE_UNORDERED,
    UNRELIABLE_FEC,
    Fec,
    Par,
    Profile,
    Transport,
    compose,
)
from dominoes.components.ctp import _types as t
from dominoes.components.ctp._transport import decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dominoes import Component, Context, Mode, on
from dominoes.testing import Cluster

A = ("10.0.0.1", 1000)
B = ("10.0.0.2", 2000)


class Sink(Component):
    """The receiving application: every whole message, in delivery order."""

    name = "sink"

    def __init__(self) -> None:
        self.got: list[bytes] = []

    @on(t.MESSAGE)
    def message(self, ctx: Context, sid: str, msg: int, data: bytes) -> None:
        self.got.append(data)


def small(profile: Profile) -> Profile:
    """Small segments, so messages span several (and FEC groups fill)."""
    return profile.with_args("segment", size=64)


class Net:
    """Two clusters joined by a network whose behaviour ``rng`` decides."""

    def __init__(
        self, profile: Profile, rng: random.Random, *, loss: float, dup: float, reorder: bool = True
    ) -> None:
        self.a = Cluster(compose(profile, "sender", on_start=None), replicas=2)
        self.b = Cluster(compose(profile, "receiver", [Sink()], on_start=None), replicas=2)
        self.rng = rng
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        #: (destination cluster, data, source address)
        self.wire: list[tuple[Cluster, bytes, tuple[str, int]]] = []
        self.dropped: list[bytes] = []
        self.streak = 0
        self.wire_up()

    def wire_up(self) -> None:
        """Every replica's way out (again after a restart: it is per replica)."""
        for cluster, me, peer in ((self.a, A, self.b), (self.b, B, self.a)):
            for r in cluster:
                r.component(Transport).output = self._output(peer, me)

    def _output(self, peer: Cluster, me: tuple[str, int]) -> Any:
        def output(data: bytes, addr: tuple[str, int]) -> None:
            self.wire.append((peer, data, me))

        return output

    def random_loss(self) -> bool:
        return self.rng.random() < self.loss and self.streak < 3

    def deliver_one(self, drop: Any = None) -> None:
        i = self.rng.randrange(len(self.wire)) if self.reorder else 0
        if self.rng.random() < 0.7:
            i = 0  # mostly in order, sometimes not
        peer, data, src = self.wire.pop(i)
        # a planned loss (the test counts what it dropped), or a random one: hypothesis'
        # random may say "drop" every time, and a network that loses everything is no
        # test of recovery, so at most 3 random losses in a row
        lose = drop(data) if drop is not None else self.random_loss()
        if lose:
            self.streak += 1
            self.dropped.append(data)
            return
        self.streak = 0
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            live = [r.index for r in peer.live]
            replica = self.rng.choice(live)
            peer.submit_nowait(replica, Transport.datagram, data, src[0], src[1], _mode=Mode.RACE)
            peer.run_until_quiet()

    def run(self, done: Any, drop: Any = None, kill_at: int = -1, rounds: int = 4000) -> None:
        for step in range(rounds):
            if done():
                return
            if step == kill_at:
                self.a.kill(1)
            if kill_at >= 0 and step == kill_at + 20:
                # back from a snapshot taken mid-transfer, and in the game again
                self.a.restart(1)
                self.a.run_until_quiet()
                self.wire_up()
            if self.wire:
                self.deliver_one(drop)
            else:
                self.a.advance(0.25)
                self.b.advance(0.25)
        raise AssertionError("the transfer did not finish")

    def send(self, messages: list[bytes]) -> str:
        sid = self.a.call(0, Transport.open, *B)
        for m in messages:
            self.a.call(self.rng.randrange(len(self.a.live)), Transport.send, sid, m)
        return str(sid)

    def got(self) -> list[bytes]:
        views = [r.component(Sink).got for r in self.b.live]
        assert all(v == views[0] for v in views)
        return list(views[0])

    def converged(self) -> None:
        self.a.assert_converged()
        self.b.assert_converged()


messages = st.lists(st.binary(min_size=0, max_size=700), min_size=1, max_size=6)
faults = settings(
    max_examples=25,
    deadline=None,
    # a simulated transfer draws many random numbers: its "smallest" input is large
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)


@faults
@given(messages, st.randoms(use_true_random=False), st.integers(-1, 60))
def test_reliable_ordered_delivers_every_message_once_in_order(
    sent: list[bytes], rng: random.Random, kill_at: int
) -> None:
    net = Net(small(RELIABLE_ORDERED), rng, loss=0.15, dup=0.1)
    net.send(sent)
    net.run(lambda: len(net.got()) >= len(sent) and not net.wire, kill_at=kill_at)
    assert net.got() == sent
    net.converged()


@faults
@given(messages, st.randoms(use_true_random=False))
def test_reliable_unordered_delivers_every_message_exactly_once(
    sent: list[bytes], rng: random.Random
) -> None:
    net = Net(small(RELIABLE_UNORDERED), rng, loss=0.15, dup=0.1)
    net.send(sent)
    net.run(lambda: len(net.got()) >= len(sent) and not net.wire)
    assert sorted(net.got()) == sorted(sent)
    net.converged()


@faults
@given(messages, st.randoms(use_true_random=False))
def test_reliable_profiles_retransmit_from_the_replicated_timer(
    sent: list[bytes], rng: random.Random
) -> None:
    """The first transmission of everything is lost: only the timers recover it."""
    net = Net(small(RELIABLE_ORDERED).without("nak"), rng, loss=0.0, dup=0.0)
    first = set()

    def drop_first(data: bytes) -> bool:
        _, seg = decode(data)
        key = (seg.kind, seg.seq)
        if seg.kind == t.DATA and key not in first:
            first.add(key)
            return True
        return False

    net.send(sent)
    net.run(lambda: len(net.got()) >= len(sent) and not net.wire, drop=drop_first)
    assert net.got() == sent
    assert all(r.component(Par).timeouts > 0 for r in net.a.live)


@faults
@given(messages, st.randoms(use_true_random=False))
def test_unreliable_fec_rebuilds_what_the_parity_covers(
    sent: list[bytes], rng: random.Random
) -> None:
    k, m = 4, 2
    profile = small(UNRELIABLE_FEC).with_args("fec", k=k, m=m)
    # in order: a group's parity comes after its data, so the receiver rebuilds exactly
    # the data blocks the network lost (reordered, parity may overtake data it rebuilds)
    net = Net(profile, rng, loss=0.0, dup=0.05, reorder=False)
    lost: dict[int, int] = {}
    lost_data = 0

    def drop_within_redundancy(data: bytes) -> bool:
        nonlocal lost_data
        _, seg = decode(data)
        if seg.group < 0 or lost.get(seg.group, 0) >= m or rng.random() < 0.6:
            return False
        lost[seg.group] = lost.get(seg.group, 0) + 1
        if seg.kind == t.DATA:
            lost_data += 1
        return True

    net.send(sent)
    net.run(lambda: not net.wire and len(net.got()) >= len(sent), drop=drop_within_redundancy)
    assert sorted(net.got()) == sorted(sent)
    for r in net.b.live:
        assert r.component(Fec).recovered == lost_data
        assert r.component(Fec).late == 0
    net.converged()


@faults
@given(messages, st.randoms(use_true_random=False))
def test_unreliable_fec_never_duplicates_under_heavy_loss(
    sent: list[bytes], rng: random.Random
) -> None:
    sent = [bytes([i]) + m for i, m in enumerate(sent)]  # distinct, so a repeat shows
    net = Net(small(UNRELIABLE_FEC), rng, loss=0.4, dup=0.2)
    net.send(sent)
    for _ in range(5000):
        if not net.wire:
            break
        net.deliver_one()
    got = net.got()
    remaining = list(sent)
    for g in got:
        assert g in remaining  # at most once: nothing invented, nothing twice
        remaining.remove(g)
    net.converged()


def test_profiles_differ_only_in_bindings() -> None:
    """Two profiles are the same classes and events; only the bindings differ."""
    ordered = compose(RELIABLE_ORDERED, "o", on_start=None)
    unordered = compose(RELIABLE_UNORDERED, "u", on_start=None)
    assert set(unordered.events()) <= set(ordered.events())
    holders = {type(c).__name__ for c in ordered.components} - {
        type(c).__name__ for c in unordered.components
    }
    assert holders == {"Resequencer"}
    for profile in PROFILES.values():
        compose(profile, on_start=None)  # every named profile composes


def test_a_profile_refuses_a_missing_dependency_and_unknown_arguments() -> None:
    import pytest

    with pytest.raises(ValueError, match="needs par"):
        RELIABLE_ORDERED.without("par").compose()
    with pytest.raises(ValueError, match="takes no argument"):
        RELIABLE_ORDERED.with_args("window", sise=3).compose()
    with pytest.raises(ValueError, match="unknown micro-protocol"):
        Profile.of("x", "transport", "nope").compose()


# --- the tftp profile, against a scripted lock-step client over the same kind of network ---


class TftpClient:
    """RFC 1350's client side, lock-step, retransmitting on its own timer: just
    enough to drive the server's profile through a lossy, duplicating network."""

    def __init__(self, net: TftpNet) -> None:
        self.net = net
        self.got = bytearray()
        self.expect = 1
        self.last: bytes = b""
        self.done = False
        self.error: tuple[int, str] | None = None
        self.upload: bytes = b""
        self.uploading = False
        self.acked = -1

    def send(self, packet: bytes) -> None:
        self.last = packet
        self.net.to_server(packet)

    def retransmit(self) -> None:
        if not self.done and self.last:
            self.net.to_server(self.last)

    def received(self, packet: bytes) -> None:
        if self.done:
            return  # a finished client has closed its port: what comes later is lost
        op, block = struct.unpack_from("!HH", packet)
        if op == 5:
            self.error = (block, packet[4:-1].decode())
            self.done = True
        elif op == 3 and not self.uploading:  # DATA of a download
            if block == self.expect & 0xFFFF:
                self.got += packet[4:]
                self.expect += 1
                if len(packet) - 4 < 512:
                    self.done = True
            self.send(struct.pack("!HH", 4, block))  # (re-)acknowledge what arrived
        elif op == 4 and self.uploading and block == (self.acked + 1) & 0xFFFF:  # ACK
            self.acked += 1
            off = self.acked * 512
            if off > len(self.upload):  # the last block (shorter than 512) is acknowledged
                self.done = True
                return
            chunk = self.upload[off : off + 512]
            self.send(struct.pack("!HH", 3, (self.acked + 1) & 0xFFFF) + chunk)


class TftpNet(Net):
    def __init__(self, rng: random.Random, root: str, *, loss: float, dup: float) -> None:
        from dominoes.components.ctp import TFTP, Tftp

        self.a = self.b = Cluster(compose(TFTP, "tftp", on_start=None), replicas=2)
        self.rng, self.loss, self.dup, self.reorder, self.streak = rng, loss, dup, True, 0
        self.wire = []
        self.dropped = []
        self.client = TftpClient(self)
        self.wire_server()
        self.b.call(0, Tftp.configure, root, True)

    def wire_server(self) -> None:
        for r in self.b:
            transport = r.component(Transport)
            transport.output = self._to_client
            transport.submit = self._submitter(r.index)

    def _submitter(self, index: int) -> Any:
        def submit(event: Any, *args: Any) -> None:
            self.b.submit_nowait(index, event, *args)

        return submit

    def _to_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self.wire.append((self.b, data, ("client", 0)))

    def to_server(self, data: bytes) -> None:
        self.wire.append((self.b, data, A))

    def deliver_one(self, drop: Any = None) -> None:
        i = self.rng.randrange(len(self.wire)) if self.rng.random() >= 0.7 else 0
        _, data, src = self.wire.pop(i)
        if self.random_loss():
            self.streak += 1
            return
        self.streak = 0
        for _ in range(2 if self.rng.random() < self.dup else 1):
            if src == A:
                replica = self.rng.choice([r.index for r in self.b.live])
                self.b.submit_nowait(replica, Transport.datagram, data, *A, _mode=Mode.RACE)
                self.b.run_until_quiet()
            else:
                self.client.received(data)

    def run_tftp(self, kill_at: int = -1, rounds: int = 6000) -> None:
        for step in range(rounds):
            if self.client.done and not self.wire:
                return
            if step == kill_at:
                self.b.kill(1)
            if kill_at >= 0 and step == kill_at + 20:
                self.b.restart(1)
                self.b.run_until_quiet()
                self.wire_server()
            if self.wire:
                self.deliver_one()
            else:
                self.client.retransmit()
                self.b.advance(0.5)
        raise AssertionError("the TFTP transfer did not finish")


@faults
@given(st.binary(max_size=3000), st.randoms(use_true_random=False), st.integers(-1, 40))
def test_tftp_profile_serves_a_download_through_loss_and_duplication(
    data: bytes, rng: random.Random, kill_at: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        with open(f"{root}/f", "wb") as f:
            f.write(data)
        net = TftpNet(rng, root, loss=0.15, dup=0.1)
        net.client.send(b"\x00\x01f\x00octet\x00")
        net.run_tftp(kill_at=kill_at)
        assert net.client.error is None
        assert bytes(net.client.got) == data
        net.b.assert_converged()


@faults
@given(st.binary(max_size=3000), st.randoms(use_true_random=False), st.integers(-1, 40))
def test_tftp_profile_takes_an_upload_through_loss_and_duplication(
    data: bytes, rng: random.Random, kill_at: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        net = TftpNet(rng, root, loss=0.15, dup=0.1)
        net.client.upload = data
        net.client.uploading = True
        net.client.send(b"\x00\x02up\x00octet\x00")
        net.run_tftp(kill_at=kill_at)
        assert net.client.error is None
        with open(f"{root}/up", "rb") as f:
            assert f.read() == data
        net.b.assert_converged()


def test_a_failing_micro_protocol_costs_one_datagram_not_the_service() -> None:
    """An exception in a micro-protocol ends that datagram's chain on every replica
    alike: counted, nothing sent back, the replicas identical, the next datagram
    served."""
    from dominoes.components.ctp import MICRO_PROTOCOLS, MicroProtocol, register

    if "boom" not in MICRO_PROTOCOLS:

        @register("boom")
        class Boom(MicroProtocol):
            binds = ((t.DATAGRAM, "check", 1),)

            def check(self, ctx: Context, data: bytes, host: str, port: int) -> None:
                if data == b"boom":
                    raise ValueError("boom")

    net = Net(
        small(RELIABLE_ORDERED).adding("boom", after="transport"),
        random.Random(0),
        loss=0.0,
        dup=0.0,
    )
    net.b.call(0, Transport.datagram, b"boom", *A, _mode=Mode.RACE)
    assert net.wire == []
    for r in net.b:
        transport = r.component(Transport)
        assert transport.counters["handler_errors"] == 1
        assert transport.last_error == "ValueError: boom"
    net.send([b"after"])
    net.run(lambda: net.got() == [b"after"] and not net.wire)
    net.converged()


def test_a_seq_far_ahead_costs_bounded_work() -> None:
    """A crafted data segment numbered 2**32 - 1 is one datagram's worth of work on
    every replica (no poison request): the NAK micro-protocol tracks gaps within a
    bounded span of what arrived, and the session still serves afterwards."""
    from dominoes.components.ctp import Nak
    from dominoes.components.ctp._transport import encode

    net = Net(small(RELIABLE_ORDERED), random.Random(0), loss=0.0, dup=0.0)
    net.send([b"first"])
    net.run(lambda: net.got() == [b"first"] and not net.wire)
    crafted = encode(t.Segment(t.DATA, seq=2**32 - 1, msg=7, total=1, payload=b"x"), 0, b"x")
    net.b.call(0, Transport.datagram, crafted, *A, _mode=Mode.RACE)
    for r in net.b:
        assert all(len(gaps) <= 4096 for gaps in r.component(Nak).gaps.values())
    net.converged()


# --- the tftp profile's first answer, step by step (what real clients do with a second one) --


class TftpBench:
    """The tftp service (2 replicas) and one client address: each datagram is delivered
    to replica 0, which owns it and answers; ``out`` has what the service sent."""

    CLIENT = ("10.0.0.9", 4242)

    def __init__(self, root: str) -> None:
        from dominoes.components.ctp import TFTP, Tftp

        self.b = Cluster(compose(TFTP, "tftp", on_start=None), replicas=2)
        self.out: list[bytes] = []
        for r in self.b:
            transport = r.component(Transport)
            transport.output = lambda data, addr: self.out.append(data)
            transport.submit = self._submitter(r.index)
        self.b.call(0, Tftp.configure, root, True)

    def _submitter(self, index: int) -> Any:
        def submit(event: Any, *args: Any) -> None:
            self.b.submit_nowait(index, event, *args)

        return submit

    def send(self, packet: bytes) -> list[bytes]:
        """Deliver ``packet``; what the service answered."""
        self.out.clear()
        self.b.submit_nowait(0, Transport.datagram, packet, *self.CLIENT, _mode=Mode.RACE)
        self.b.run_until_quiet()
        return list(self.out)

    def wait(self, seconds: float) -> list[bytes]:
        """Let the replicated clocks move on; what the service sent meanwhile."""
        self.out.clear()
        for _ in range(int(seconds * 4)):
            self.b.advance(0.25)
            self.b.run_until_quiet()
        return list(self.out)


def _request(op: int, name: str, **options: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return struct.pack("!H", op) + name.encode() + b"\0octet\0" + body


def _opcodes(packets: list[bytes]) -> list[tuple[int, int]]:
    return [struct.unpack_from("!HH", p) if len(p) >= 4 else (p[1], -1) for p in packets]


def test_tftp_upload_data_1_lost_brings_no_second_oack(tmp_path: Any) -> None:
    """curl's upload over a lossy link stored 1 byte of 513: its DATA 1 was lost, the
    server's retransmission timer sent the OACK again, and curl (7.88, tftp_tx) answers
    any OACK with block 1 read *on* from its stream: the 1-byte tail, which the server
    stored as the whole file.  Now the OACK goes again only for a repeated request."""
    bench = TftpBench(str(tmp_path))
    upload = random.Random(513).randbytes(513)
    wrq = _request(2, "up", tsize="513", blksize="512", timeout="5")
    assert [p[:2] for p in bench.send(wrq)] == [b"\x00\x06"]
    # DATA 1 is lost: the server waits (its timer runs, sends nothing) for curl's own
    # retransmission of DATA 1
    assert bench.wait(12) == []
    # the client repeats its WRQ (its OACK was lost, or is late): the OACK again
    assert [p[:2] for p in bench.send(wrq)] == [b"\x00\x06"]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 1) + upload[:512])) == [(4, 1)]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 2) + upload[512:])) == [(4, 2)]
    assert (tmp_path / "up").read_bytes() == upload
    # a repeated WRQ (a late duplicate) while dallying: nothing again, the file intact
    assert bench.send(wrq) == []
    assert (tmp_path / "up").read_bytes() == upload
    bench.b.assert_converged()


def test_tftp_upload_that_ends_short_of_its_tsize_is_refused(tmp_path: Any) -> None:
    """What curl sends after a second OACK (a 1-byte block 1 of a 513-byte file) is
    refused: the client announced 513 bytes (tsize); no file is renamed into place."""
    bench = TftpBench(str(tmp_path))
    wrq = _request(2, "up", tsize="513", blksize="512")
    bench.send(wrq)
    got = bench.send(struct.pack("!HH", 3, 1) + b"x")
    assert _opcodes(got) == [(5, 4)], got
    assert b"tsize 513" in got[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    bench.b.assert_converged()


def test_tftp_download_ack_0_lost_brings_no_second_oack(tmp_path: Any) -> None:
    """atftp 0.8 aborts on a second OACK ("tftp: unexpected OACK"); the server sends
    it again only for a repeated RRQ (the OACK was lost), and retransmits DATA, never
    the OACK, once the transfer is under way."""
    data = random.Random(1).randbytes(1000)
    (tmp_path / "f").write_bytes(data)
    bench = TftpBench(str(tmp_path))
    rrq = _request(1, "f", blksize="512")
    assert [p[:2] for p in bench.send(rrq)] == [b"\x00\x06"]
    assert bench.wait(20) == []  # ACK 0 lost: the client's to send again
    assert [p[:2] for p in bench.send(rrq)] == [b"\x00\x06"]
    assert _opcodes(bench.send(struct.pack("!HH", 4, 0))) == [(3, 1)]
    assert set(_opcodes(bench.wait(2))) == {(3, 1)}  # ACK 1 lost: DATA 1 again
    assert bench.send(rrq) == []  # a late repeated RRQ: no OACK mid-transfer
    assert _opcodes(bench.send(struct.pack("!HH", 4, 1))) == [(3, 2)]
    assert bench.send(struct.pack("!HH", 4, 2)) == []
    bench.b.assert_converged()


def test_tftp_write_failing_on_one_replica_keeps_the_replicas_alike(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """The replicated state (the transfer's state, counters, the dally timer) moves
    on before the disk is touched: a write that fails on one replica only (not the
    owner, which would end the transfer for all) leaves the replicas identical."""
    from dominoes.components.ctp import Tftp

    bench = TftpBench(str(tmp_path))

    other = bench.b[1].component(Tftp)
    write_block = Tftp._write_block

    def full_on_the_other(self: Tftp, *args: Any) -> None:
        if self is other:
            raise OSError(28, "No space left on device")
        write_block(self, *args)

    monkeypatch.setattr(Tftp, "_write_block", full_on_the_other)
    upload = random.Random(2).randbytes(700)
    bench.send(_request(2, "up"))
    assert _opcodes(bench.send(struct.pack("!HH", 3, 1) + upload[:512])) == [(4, 1)]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 2) + upload[512:])) == [(4, 2)]
    assert (tmp_path / "up").read_bytes() == upload  # the owner wrote it
    assert other.write_errors == 2
    bench.b.assert_converged()
    assert other.transfers == bench.b[0].component(Tftp).transfers


def test_tftp_upload_final_ack_lost_is_acknowledged_again_after_the_client_timeout(
    tmp_path: Any,
) -> None:
    """tftpy's 1 MB upload over a lossy link ended in "Unknown transfer ID": the final
    ACK was lost, and the server had stopped dallying (two of its own RTOs, 0.4 s)
    before the client resent the last block (after its own 1 s timeout).  The server
    dallies for two of the client's timeouts (5 s when none was negotiated), and
    after that still acknowledges a late copy of the last block (curl retried past a
    10 s dally on a lossy link)."""
    bench = TftpBench(str(tmp_path))
    upload = random.Random(7).randbytes(700)
    assert _opcodes(bench.send(_request(2, "up"))) == [(4, 0)]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 1) + upload[:512])) == [(4, 1)]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 2) + upload[512:])) == [(4, 2)]
    # ACK 2 is lost; the client resends DATA 2 after its timeout (1 s, or up to 5 s)
    assert bench.wait(4.5) == []
    assert _opcodes(bench.send(struct.pack("!HH", 3, 2) + upload[512:])) == [(4, 2)]
    assert (tmp_path / "up").read_bytes() == upload
    # quiet for two client timeouts: the transfer is over, but a copy of its last
    # block still gets its ACK (the client's retries may outlast any dally);
    # another block from that address is a stranger's
    bench.wait(11)
    assert _opcodes(bench.send(struct.pack("!HH", 3, 2) + upload[512:])) == [(4, 2)]
    assert _opcodes(bench.send(struct.pack("!HH", 3, 1) + upload[:512])) == [(5, 5)]
    assert (tmp_path / "up").read_bytes() == upload
    bench.b.assert_converged()
