"""The replicated TCP layer (``Tcp``) in a 3-replica ``Cluster``, against a TCP peer.

The peer is the sans-IO engine itself (``Tcb.active``): its segments are
built into TCP bytes and appended as ``Tcp.segments`` entries from a chosen
replica; the packets the stack's owners write (their ``output``) are parsed
and fed back to the peer.  A lossy "network" in between drops and duplicates
packets on a seeded schedule; timers fire through the cluster's fake clock.
The checks: the echoed bytes are the bytes sent, every replica ends in the
same state (digests), a killed and restarted replica picks up the connections
from its snapshot, and segments a replica read are sent by exactly one owner.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from dominoes.components.netstack import Tcp, conn_key
from dominoes.components.netstack import _wire as wire
from dominoes.components.netstack._tcp import Tcb
from dominoes.components.netstack._types import ACK, SYN, Segment

from dominoes import Component, Context, Service, on
from dominoes.testing import Cluster

STACK = wire.ip_aton("192.0.2.2")
PEER = wire.ip_aton("192.0.2.1")
PORT = 7


class Echo(Component):
    name = "echo"

    @on(Tcp.data)
    def echo(self, ctx: Context, key: int, data: bytes) -> None:
        tcp = ctx.component(Tcp)
        tcp.consumed(ctx, key, len(data))
        tcp.send(ctx, key, data)

    @on(Tcp.remote_closed)
    def done(self, ctx: Context, key: int) -> None:
        ctx.component(Tcp).close(ctx, key)


class Net:
    """The cluster, its owners' outputs, and a peer Tcb on the other side."""

    def __init__(self, replicas: int = 3, *, loss: float = 0.0, dup: float = 0.0) -> None:
        self.cluster = Cluster(Service("stack", [Tcp(), Echo()]), replicas=replicas, capacity=4096)
        self.rng = random.Random(7)
        self.loss, self.dup = loss, dup
        self.sent_by: dict[int, int] = {}
        self.out: list[bytes] = []
        for i in range(replicas):
            self._wire(i)
        self.cluster.call(0, Tcp.configure, STACK, [PORT])
        self.received = bytearray()
        self.turn = 0
        #: the peer's armed timers: kind -> when
        self.peer_timers: dict[str, float] = {}
        self.peer, acts = Tcb.active(40000, PORT, 1000, self.cluster.clock)
        self.from_peer(acts)

    def _wire(self, i: int) -> None:
        def output(packets: list[bytes], i: int = i) -> None:
            self.sent_by[i] = self.sent_by.get(i, 0) + len(packets)
            self.out.extend(packets)

        self.cluster.replicas[i].component(Tcp).output = output

    def from_peer(self, acts: Any) -> None:
        """What the peer's engine said: note its timers and data, send its segments."""
        for kind, at in acts.timers.items():
            if at is None:
                self.peer_timers.pop(kind, None)
            else:
                self.peer_timers[kind] = at
        self.received += acts.delivered
        segments = list(acts.segments)
        if acts.delivered:
            more = self.peer.consumed(len(acts.delivered), self.cluster.clock)
            segments += more.segments
        self._to_stack(segments)

    def send(self, data: bytes) -> None:
        self.from_peer(self.peer.send(data, self.cluster.clock))

    def _drops(self) -> bool:
        return self.rng.random() < self.loss

    def _to_stack(self, segments: list[Any]) -> None:
        batch = []
        for seg in segments:
            if self._drops():
                continue
            data = wire.build_tcp(PEER, STACK, seg)
            batch.append([PEER, data])
            if self.rng.random() < self.dup:
                batch.append([PEER, data])
        if batch:
            live = [r.index for r in self.cluster.live]
            reader = live[self.turn % len(live)]
            self.turn += 1
            self.cluster.submit_nowait(reader, Tcp.segments, batch, _mode="race")

    def pump(self) -> None:
        """Run the cluster, and carry what its owners sent to the peer, until quiet."""
        for _ in range(10_000):
            self.cluster.run_until_quiet()
            packets, self.out = self.out, []
            if not packets:
                return
            for packet in packets:
                if self._drops():
                    continue
                ip = wire.parse_ipv4(packet)
                seg = wire.parse_tcp(ip.src, ip.dst, ip.payload)
                self.from_peer(self.peer.on_segment(seg, self.cluster.clock))
        raise AssertionError("the exchange never went quiet")

    def tick(self, seconds: float) -> None:
        """Time passes: the cluster's timers and the peer's fire."""
        self.cluster.advance(seconds)
        now = self.cluster.clock
        for kind, at in sorted(self.peer_timers.items(), key=lambda kv: kv[1]):
            if at <= now:
                del self.peer_timers[kind]
                self.from_peer(self.peer.on_timer(kind, now))
        self.pump()


def _key() -> int:
    return conn_key(PEER, 40000, PORT)


def test_echo_through_three_replicas_converges() -> None:
    net = Net()
    net.pump()
    data = random.Random(1).randbytes(200_000)
    net.send(data)
    net.pump()
    assert bytes(net.received) == data
    net.cluster.assert_converged()
    tcbs = [r.component(Tcp).conns[_key()] for r in net.cluster.live]
    assert len({(t.snd_una, t.snd_nxt, t.rcv_nxt, str(t.state)) for t in tcbs}) == 1
    # every packet left through exactly one replica: the sum is what the peer got
    assert sum(net.sent_by.values()) > 0


def test_a_restarted_replica_gets_the_connection_from_its_snapshot() -> None:
    net = Net()
    net.pump()
    first = random.Random(2).randbytes(50_000)
    net.send(first)
    net.pump()
    net.cluster.kill(1)
    second = random.Random(3).randbytes(50_000)
    net.send(second)
    net.pump()
    net.cluster.restart(1)
    net._wire(1)
    third = random.Random(4).randbytes(50_000)
    net.send(third)
    net.pump()
    assert bytes(net.received) == first + second + third
    net.cluster.assert_converged()
    assert _key() in net.cluster.replicas[1].component(Tcp).conns


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_loss_and_duplication_are_repaired_by_replicated_timers(seed: int) -> None:
    net = Net(loss=0.1, dup=0.05)
    net.rng.seed(seed)
    data = random.Random(seed).randbytes(100_000)
    net.pump()
    for _ in range(200):
        if net.peer.state.value == "ESTABLISHED":
            break
        net.tick(1.0)
    net.send(data)
    for _ in range(2000):
        net.pump()
        if len(net.received) >= len(data):
            break
        net.tick(0.25)
    assert bytes(net.received) == data
    counters = net.cluster.replicas[0].component(Tcp).counters
    assert counters["TcpRetransSegs"] > 0  # the stack's timers did resend
    net.cluster.assert_converged()


def test_a_segment_for_no_connection_is_answered_with_a_reset() -> None:
    net = Net()
    net.pump()
    stray = wire.build_tcp(PEER, STACK, Segment(41000, 9, 5, 77, ACK, 100))
    net.cluster.submit_nowait(0, Tcp.segments, [[PEER, stray]], _mode="race")
    net.cluster.run_until_quiet()
    packets, net.out = net.out, []
    assert len(packets) == 1
    ip = wire.parse_ipv4(packets[0])
    rst = wire.parse_tcp(ip.src, ip.dst, ip.payload)
    assert (rst.flags & 0x04, rst.seq, rst.dst_port) == (0x04, 77, 41000)
    net.cluster.assert_converged()


def test_a_syn_flood_fills_the_backlog_and_no_more() -> None:
    cluster = Cluster(Service("stack", [Tcp(backlog=3)]), replicas=2)
    cluster.call(0, Tcp.configure, STACK, [PORT])
    syns = [
        [PEER, wire.build_tcp(PEER, STACK, Segment(50000 + i, PORT, 100, 0, SYN, 65535))]
        for i in range(5)
    ]
    cluster.submit_nowait(1, Tcp.segments, syns, _mode="race")
    cluster.run_until_quiet()
    for r in cluster.live:
        tcp = r.component(Tcp)
        assert len(tcp.conns) == len(tcp.embryonic) == 3
        assert tcp.counters["TcpExtListenOverflows"] == 2
    cluster.assert_converged()
