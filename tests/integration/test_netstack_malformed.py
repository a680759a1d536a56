"""Malformed and hostile segments against the replicated netstack, sent from the kernel's side.

One network namespace (:mod:`.netns`) and one 2-replica ``examples.tcp_echo`` service for
the module: each test runs this module's *driver half* (:func:`_drive`, below the tests'
helpers) inside the namespace with ``ip netns exec``, which prints its results as JSON.

The driver injects hand-made IPv4 packets (built with scapy) with an ``AF_PACKET`` socket
bound to ``dn0``: a packet socket sends the bytes as they are, where a raw IP socket would
have the kernel fix the very fields under test (``IP_HDRINCL`` always fills in the IPv4
checksum and total length).  The same socket captures the stack's answers (packets coming
*in* on ``dn0``) before the kernel's IP layer sees them.

Answers to forged ports, and why the kernel does not interfere
--------------------------------------------------------------
The forged segments come from 192.0.2.1, the kernel's own address, on source ports no
kernel socket uses (:data:`RAW_PORTS`, below the kernel's ephemeral range, 32768 up).
Left alone, the kernel would answer every stack segment to those ports from CLOSED: a RST
for the SYN-ACK of a handshake the driver makes itself, which (its sequence number being
the SYN-ACK's ack, i.e. exactly RCV.NXT) would reset that connection under the test.  So
the module's nftables rule drops the stack's packets to :data:`RAW_PORTS` on the kernel's
``input`` hook.  A packet socket sees a packet before the IP layer does (the taps run in
``__netif_receive_skb_core``, before ``ip_rcv``), so the driver still captures every one,
and the kernel never answers any.  The kernel's own client connections, used to check
that the service still serves, come from ephemeral ports and are untouched.

Silence, and how long to listen for it
--------------------------------------
"Dropped" means no answer.  After the packet under test the driver sends *fences*: SYNs
to a closed port from four other source ports, each of which must draw a RST+ACK through
the log.  Once every fence is answered, and :data:`GRACE` more has passed with nothing
for the port under test, the stack has been shown alive and processing, and silent for
that packet.  (The fences may land on the other replica's queue: the TUN device spreads
flows by a hash of their addresses and ports; the grace covers that replica being a
little behind.  A segment on a connection the driver holds is fenced by more data on the
same connection instead: the same flow reaches the same queue, in order.)

After every attack the service must still serve: a kernel TCP connection opened before
the attack echoes again, a new one echoes, the ``dominoes run`` process and both
replicas have the pids they had when the module started (the supervisor restarts a dead
replica with a new pid, so a crash cannot hide), and neither was restarted.

What the stack counts for each drop (``Ingress.counters``, ``Tcp.counters``) cannot be
read from outside yet, so these tests check the wire only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from .harness import ROOT, Service, alive, wait_until
from .netns import DEVICE, KERNEL_ADDR, STACK_ADDR, Namespace, namespace, why_not

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(why_not() is not None, reason=str(why_not())),
]

# scapy builds the packets.  scapy.layers.inet, not scapy.all: the driver half of this
# module is imported again, in the namespace, for every test, and scapy.all takes ~2 s.
inet = pytest.importorskip("scapy.layers.inet", reason="scapy builds the hostile packets")

ECHO: Final = "examples.tcp_echo:service"

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10

#: Source ports of the forged segments (the nftables rule keeps the kernel out of them).
RAW_PORTS: Final = (20000, 32767)
#: Each test's own block of source ports (base, base + 1, ...; fences at base + 8..11).
PORT_BLOCK: Final = 32
#: The flood's source ports, cycled.
FLOOD_PORTS: Final = (30000, 32767)
#: A port the stack does not listen on.
CLOSED_PORT: Final = 9
#: How long to go on listening, after the fences' answers, for an answer that must not come.
GRACE: Final = 0.3
#: How long to wait for an answer that must come.
ANSWER_TIMEOUT: Final = 5.0

NFT_RULES: Final = f"""
table ip netstack_raw {{
  chain input {{
    type filter hook input priority 0;
    ip saddr {STACK_ADDR} tcp dport {RAW_PORTS[0]}-{RAW_PORTS[1]} counter drop
  }}
}}
"""

#: tcpdump's letters for the flags.
_LETTERS: Final = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))

ETH_P_IP: Final = 0x0800
PACKET_HOST: Final = 0

# ============================================================================================
# The driver: runs inside the namespace (``python -c`` imports this module and calls _drive).
# ============================================================================================


@dataclasses.dataclass(frozen=True)
class Seg:
    """A TCP segment the stack sent to one of the driver's ports."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "payload": self.payload.hex()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Seg:
        return cls(**{**d, "payload": bytes.fromhex(d["payload"])})

    def __str__(self) -> str:
        names = "".join(c for bit, c in _LETTERS if self.flags & bit)
        return (
            f"{self.sport}>{self.dport} [{names}] seq={self.seq} ack={self.ack} "
            f"win={self.window} len={len(self.payload)}"
        )


def _parse(packet: bytes) -> Seg | None:
    """The TCP segment in an IPv4 packet from the stack (None: anything else)."""
    if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != 6:
        return None
    if socket.inet_ntoa(packet[12:16]) != STACK_ADDR:
        return None
    hlen = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    tcp = packet[hlen:total]
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", tcp)
    return Seg(sport, dport, seq, ack, flags, window, bytes(tcp[(off >> 4) * 4 :]))


def _checksum(data: bytes) -> int:
    """RFC 1071's Internet checksum (for the flood's packets, patched without scapy)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(
    sport: int,
    dport: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    payload: bytes = b"",
    *,
    ip: dict[str, Any] | None = None,
    **tcp: Any,
) -> bytes:
    """An IPv4 packet from the kernel's address to the stack's, made by scapy; ``ip`` and
    ``tcp`` set header fields (scapy fills in what is not given: lengths, checksums)."""
    fields: dict[str, Any] = {"src": KERNEL_ADDR, "dst": STACK_ADDR, **(ip or {})}
    pkt = inet.IP(**fields) / inet.TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535, **tcp
    )
    if payload:
        pkt = pkt / payload
    return bytes(pkt)


def syn_to_closed(sport: int, seq: int = 1000, **kwargs: Any) -> bytes:
    """A SYN to :data:`CLOSED_PORT`: a stack that accepts it answers with a RST+ACK."""
    return tcp_packet(sport, CLOSED_PORT, SYN, seq, **kwargs)


def _bad_tcp_checksum(sport: int) -> bytes:
    packet = bytearray(syn_to_closed(sport))
    good = int.from_bytes(packet[36:38], "big")
    packet[36:38] = ((good + 1) & 0xFFFF).to_bytes(2, "big")  # not 0 <-> 0xFFFF: truly wrong
    return bytes(packet)


def _tcp_truncated(sport: int) -> bytes:
    tcp = syn_to_closed(sport)[20:32]  # 12 bytes of a TCP header, in a correct IPv4 packet
    return bytes(inet.IP(src=KERNEL_ADDR, dst=STACK_ADDR, proto=6) / tcp)


def _ip_truncated(sport: int) -> bytes:
    # the header says 20 bytes more than the packet has (its checksum is right for that)
    return syn_to_closed(sport, ip={"len": 60})


def _bad_option(sport: int) -> bytes:
    # data offset 6: options b"\x02\x00\x05\xb4", an MSS option of length 0 (the classic
    # option-walk that never advances); dropped, as the codec documents
    return tcp_packet(sport, CLOSED_PORT, SYN, 1000, payload=b"\x02\x00\x05\xb4", dataofs=6)


#: Packets the stack must drop without an answer, by name: each carries a SYN to a closed
#: port, which a stack that took it in would answer.
MALFORMED: Final[dict[str, Callable[[int], bytes]]] = {
    "tcp_checksum": _bad_tcp_checksum,
    "tcp_data_offset_4": lambda sport: syn_to_closed(sport, dataofs=4),
    "tcp_data_offset_0": lambda sport: syn_to_closed(sport, dataofs=0),
    "tcp_data_offset_past_end": lambda sport: syn_to_closed(sport, dataofs=15),
    "tcp_data_offset_one_word_past": lambda sport: syn_to_closed(sport, dataofs=6),
    "tcp_truncated_header": _tcp_truncated,
    "tcp_option_of_length_0": _bad_option,
    "ip_checksum": lambda sport: syn_to_closed(sport, ip={"chksum": 0x1234}),
    "ip_truncated": _ip_truncated,
    "ip_ihl_4": lambda sport: syn_to_closed(sport, ip={"ihl": 4}),
    "ip_fragment_mf": lambda sport: syn_to_closed(sport, ip={"flags": "MF"}),
    "ip_fragment_offset": lambda sport: syn_to_closed(sport, ip={"frag": 1}),
    "ip_not_for_us": lambda sport: syn_to_closed(sport, ip={"dst": "192.0.2.3"}),
}


class Wire:
    """An ``AF_PACKET`` socket on dn0: sends IPv4 packets verbatim, reads the stack's."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((DEVICE, ETH_P_IP))

    def send(self, *packets: bytes) -> None:
        for packet in packets:
            self.sock.send(packet)

    def read(
        self, ports: set[int], until: Callable[[list[Seg]], bool], timeout: float
    ) -> list[Seg]:
        """The stack's segments to ``ports``, read until ``until(them)`` or ``timeout``."""
        got: list[Seg] = []
        end = time.monotonic() + timeout
        while not until(got):
            left = end - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            if addr[2] != PACKET_HOST:  # one of ours, on its way out
                continue
            seg = _parse(data)
            if seg is not None and seg.dport in ports:
                got.append(seg)
        return got

    def exchange(
        self, packets: list[bytes], port: int, base: int, answers: int = 0
    ) -> tuple[list[Seg], int]:
        """Send ``packets``, then the fences; wait for ``answers`` answers to ``port`` and
        the fences', then :data:`GRACE` more.  Returns (the answers to ``port``, how many
        fences were answered)."""
        fences = {base + 8 + i for i in range(4)}
        self.send(*packets)
        self.send(*(syn_to_closed(f, seq=7) for f in sorted(fences)))

        def done(segs: list[Seg]) -> bool:
            return fences <= {s.dport for s in segs} and sum(s.dport == port for s in segs) >= (
                answers
            )

        segs = self.read({port, *fences}, done, ANSWER_TIMEOUT)
        segs += self.read({port, *fences}, lambda _: False, GRACE)
        answered = len({s.dport for s in segs} & fences)
        return [s for s in segs if s.dport == port], answered

    def close(self) -> None:
        self.sock.close()


class RawConn:
    """A connection to the stack made by hand, from a raw port (no window scaling)."""

    def __init__(self, wire: Wire, sport: int, dport: int, isn: int) -> None:
        self.wire = wire
        self.sport = sport
        self.dport = dport
        self.isn = isn
        #: our next sequence number (the stack's RCV.NXT) and the stack's (our RCV.NXT)
        self.snd_nxt = isn
        self.rcv_nxt = 0

    def packet(self, flags: int, seq: int | None = None, payload: bytes = b"") -> bytes:
        return tcp_packet(
            self.sport,
            self.dport,
            flags,
            self.snd_nxt if seq is None else seq,
            self.rcv_nxt if flags & ACK else 0,
            payload,
        )

    def read(
        self, until: Callable[[list[Seg]], bool], timeout: float = ANSWER_TIMEOUT
    ) -> list[Seg]:
        return self.wire.read({self.sport}, until, timeout)

    def open(self) -> None:
        """The three-way handshake (AssertionError if the stack does not answer it)."""
        self.wire.send(tcp_packet(self.sport, self.dport, SYN, self.isn, options=[("MSS", 1460)]))
        segs = self.read(lambda s: any(x.flags & (SYN | ACK) == SYN | ACK for x in s))
        synack = next((s for s in segs if s.flags & (SYN | ACK) == SYN | ACK), None)
        assert synack is not None, f"no SYN-ACK: {[str(s) for s in segs]}"
        assert synack.ack == (self.isn + 1) & 0xFFFFFFFF, str(synack)
        self.snd_nxt = (self.isn + 1) & 0xFFFFFFFF
        self.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
        self.wire.send(self.packet(ACK))

    def echo(self, data: bytes, before: Sequence[bytes] = ()) -> tuple[list[Seg], bytes]:
        """Send ``before`` (packets), then ``data``; read until the echo of ``data`` is back
        (ACKing it).  Returns (every segment the stack sent meanwhile, the echo)."""
        self.wire.send(*before, self.packet(PSH | ACK, payload=data))
        self.snd_nxt = (self.snd_nxt + len(data)) & 0xFFFFFFFF
        start = self.rcv_nxt

        def back(segs: list[Seg]) -> bool:
            return sum(len(s.payload) for s in segs if s.payload) >= len(data)

        segs = self.read(back)
        echo = b"".join(s.payload for s in sorted(segs, key=lambda s: s.seq) if s.payload)
        if echo:
            self.rcv_nxt = (start + len(echo)) & 0xFFFFFFFF
            self.wire.send(self.packet(ACK))
        return segs, echo


class KernelConn:
    """A connection from the kernel's own TCP to the echo service."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((STACK_ADDR, port), timeout=timeout)

    def roundtrip(self, data: bytes) -> str:
        """``"ok"`` if ``data`` came back, else what happened."""
        try:
            self.sock.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = self.sock.recv(65536)
                if not chunk:
                    return f"closed after {len(got)} of {len(data)} bytes"
                got += chunk
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok" if got == data else f"got {got!r}"

    def close(self) -> None:
        self.sock.close()


def _tx_stats() -> tuple[int, int]:
    """dn0's (packets sent to the stack's queues, packets dropped instead)."""
    path = Path("/sys/class/net", DEVICE, "statistics")
    return int((path / "tx_packets").read_text()), int((path / "tx_dropped").read_text())


def _case_malformed(wire: Wire, port: int, base: int, kind: str) -> dict[str, Any]:
    sent, dropped = _tx_stats()
    answers, fences = wire.exchange([MALFORMED[kind](base)], base, base)
    sent_after, dropped_after = _tx_stats()
    return {
        "answers": [s.to_json() for s in answers],
        "fences": fences,
        # the device passed the packet and the fences on to the stack (a sanity check: the
        # kernel's own packets on the connections the driver holds may add to it)
        "tun_sent": sent_after - sent,
        "tun_dropped": dropped_after - dropped,
    }


#: Segments to the closed port, by name: (flags, payload).
CLOSED_PORT_SEGMENTS: Final[dict[str, tuple[int, bytes]]] = {
    "syn": (SYN, b""),
    "syn_with_data": (SYN, b"hello"),
    "ack": (ACK, b""),
    "ack_with_data": (PSH | ACK, b"hello"),
    "fin": (FIN, b""),
    "rst": (RST, b""),
    "rst_ack": (RST | ACK, b""),
}
#: The sequence and acknowledgment numbers of those segments.
CLOSED_SEQ: Final = 0x12345678
CLOSED_ACK: Final = 0x9ABCDEF0


def _case_closed_port(wire: Wire, port: int, base: int, kind: str) -> dict[str, Any]:
    flags, payload = CLOSED_PORT_SEGMENTS[kind]
    packet = tcp_packet(base, CLOSED_PORT, flags, CLOSED_SEQ, CLOSED_ACK, payload)
    answers, fences = wire.exchange([packet], base, base, answers=0 if flags & RST else 1)
    return {"answers": [s.to_json() for s in answers], "fences": fences}


#: Segments to the listening port that open nothing and must be dropped, by name: their
#: flags.  RFC 9293 3.10.7.2 (LISTEN): a segment with neither RST, ACK nor SYN is dropped
#: ("fourth, other data or control"); Linux drops those and a SYN+FIN too
#: (``tcp_rcv_state_process``, LISTEN).
LISTEN_DROPS: Final[dict[str, int]] = {"syn_fin": SYN | FIN, "fin": FIN, "no_flags": 0}


def _case_listen(wire: Wire, port: int, base: int, kind: str) -> dict[str, Any]:
    """The segment to the listening port, then a SYN from the same port with another ISN.

    A fresh connection's SYN-ACK acknowledges the new ISN; a connection left over from
    the first segment would answer the SYN (another sequence number) with a challenge
    ACK of the old one instead."""
    first = tcp_packet(base, port, LISTEN_DROPS[kind], 5000)
    answers, fences = wire.exchange([first], base, base)
    conn = RawConn(wire, base, port, 900_000)
    wire.send(tcp_packet(base, port, SYN, conn.isn))
    after = conn.read(lambda s: bool(s))
    if after and after[0].flags & (SYN | ACK) == SYN | ACK:
        # drop it again: a RST at exactly its RCV.NXT
        wire.send(tcp_packet(base, port, RST, conn.isn + 1))
    return {
        "answers": [s.to_json() for s in answers],
        "fences": fences,
        "after": [s.to_json() for s in after],
    }


#: Attacks on an established connection, by name: the packet, given the connection.
def _attack(conn: RawConn, kind: str) -> bytes:
    nxt = conn.snd_nxt
    return {
        "rst_above_window": lambda: conn.packet(RST, (nxt + 70_000) & 0xFFFFFFFF),
        "rst_far_above_window": lambda: conn.packet(RST, (nxt + (1 << 30)) & 0xFFFFFFFF),
        "rst_below_window": lambda: conn.packet(RST, (nxt - 1) & 0xFFFFFFFF),
        "rst_ack_above_window": lambda: conn.packet(RST | ACK, (nxt + 70_000) & 0xFFFFFFFF),
        "rst_in_window": lambda: conn.packet(RST, (nxt + 100) & 0xFFFFFFFF),
        "rst_ack_in_window": lambda: conn.packet(RST | ACK, (nxt + 1000) & 0xFFFFFFFF),
        "syn_in_window": lambda: conn.packet(SYN, (nxt + 100) & 0xFFFFFFFF),
    }[kind]()


def _case_established(wire: Wire, port: int, base: int, kind: str) -> dict[str, Any]:
    """Handshake, echo, the attack, echo again (the fence: same flow, same queue, in order),
    then a RST at exactly RCV.NXT (which must end the connection silently) and an ACK
    (which, the connection gone, must draw a RST)."""
    conn = RawConn(wire, base, port, 3_000_000_000)
    conn.open()
    _, first = conn.echo(b"first")
    at = {"snd_nxt": conn.snd_nxt, "rcv_nxt": conn.rcv_nxt}
    segs, second = conn.echo(b"second", before=[_attack(conn, kind)])
    end = {"snd_nxt": conn.snd_nxt, "rcv_nxt": conn.rcv_nxt}
    exact_rst, _ = wire.exchange([conn.packet(RST)], base, base)
    gone, _ = wire.exchange([conn.packet(ACK)], base, base, answers=1)
    return {
        "first": first.hex(),
        "second": second.hex(),
        "at": at,
        "end": end,
        "segs": [s.to_json() for s in segs],
        "exact_rst": [s.to_json() for s in exact_rst],
        "gone": [s.to_json() for s in gone],
    }


FLOOD: Final = 10_000


def _case_flood(wire: Wire, port: int, base: int) -> dict[str, Any]:
    """10,000 SYNs to a closed port from :data:`FLOOD_PORTS`, as fast as dn0 takes them."""
    template = bytearray(syn_to_closed(FLOOD_PORTS[0], seq=0))
    pseudo = template[12:20] + struct.pack("!BBH", 0, 6, len(template) - 20)
    span = FLOOD_PORTS[1] - FLOOD_PORTS[0] + 1
    packets = []
    for i in range(FLOOD):
        p = bytearray(template)
        struct.pack_into(
            "!HxxI", p, 20, FLOOD_PORTS[0] + i % span, (i * 2_654_435_761) & 0xFFFFFFFF
        )
        p[36:38] = b"\0\0"
        p[36:38] = _checksum(bytes(pseudo + p[20:])).to_bytes(2, "big")
        packets.append(bytes(p))
    refused = 0
    tx_sent, tx_dropped = _tx_stats()
    start = time.monotonic()
    for packet in packets:
        try:
            wire.sock.send(packet)
        except OSError:  # ENOBUFS: dn0's queue discipline is full; a flood goes on
            refused += 1
    took = time.monotonic() - start
    tx_sent_after, tx_dropped_after = _tx_stats()
    # how many were answered (the socket's buffer may have overflowed: a lower bound)
    answered = wire.read(set(range(FLOOD_PORTS[0], FLOOD_PORTS[1] + 1)), lambda _: False, 0.5)
    return {
        "sent": FLOOD,
        "took": took,
        "refused": refused,
        # what dn0 passed on to the stack's queues, and dropped (its queues full)
        "tun_sent": tx_sent_after - tx_sent,
        "tun_dropped": tx_dropped_after - tx_dropped,
        "answered": len(answered),
    }


CASES: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "malformed": _case_malformed,
    "closed_port": _case_closed_port,
    "listen": _case_listen,
    "established": _case_established,
    "flood": _case_flood,
}


def _drive(argv: list[str]) -> None:
    """The driver's main: ``CASE LISTEN_PORT BASE_PORT [ARG...]``; prints a JSON object.

    Around the case: a kernel connection echoes before it, again after it, and a new
    one echoes after it."""
    case, port, base, *args = argv
    old = KernelConn(int(port))
    result: dict[str, Any] = {"before": old.roundtrip(b"before the attack")}
    wire = Wire()
    try:
        result.update(CASES[case](wire, int(port), int(base), *args))
    finally:
        wire.close()
    result["old_after"] = old.roundtrip(b"after the attack, on the old connection" * 50)
    new = KernelConn(int(port))
    result["new_after"] = new.roundtrip(b"after the attack, on a new connection")
    new.close()
    old.close()
    print(json.dumps(result), flush=True)


def _serve() -> None:
    """The driver as one process for the module: a JSON argv per stdin line, the result
    per stdout line (scapy is imported once, not per test)."""
    for line in sys.stdin:
        try:
            _drive(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)


# ============================================================================================
# The tests: run by pytest, outside the namespace.
# ============================================================================================

_BOOT: Final = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tests.integration.test_netstack_malformed import _serve; _serve()"
)
_bases = itertools.count(RAW_PORTS[0], PORT_BLOCK)


@dataclasses.dataclass
class Stack:
    """The module's namespace and echo service, and the pids it started with."""

    ns: Namespace
    svc: Service
    pids: list[int]
    driver: subprocess.Popen[str]

    def drive(self, case: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run the driver's ``case`` in the namespace; its result, once the service is
        shown to be still serving (both connections echo, no replica died)."""
        base = next(_bases)
        assert base + PORT_BLOCK <= FLOOD_PORTS[0]
        stdin, stdout = self.driver.stdin, self.driver.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps([case, str(self.svc.port), str(base), *args]) + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], timeout)
        assert ready, f"the driver did not answer {case} {args} in {timeout} s"
        line = stdout.readline()
        assert line, f"the driver exited (code {self.driver.poll()})"
        result: dict[str, Any] = json.loads(line)
        assert "error" not in result, result
        assert result["before"] == "ok", result
        assert result["old_after"] == "ok", result  # the connection opened before echoes
        assert result["new_after"] == "ok", result
        self.check_alive()
        return result

    def check_alive(self) -> None:
        assert self.svc.proc.poll() is None, self.svc.output
        status = self.svc.status()["replicas"]
        assert [r["pid"] for r in status] == self.pids, status
        assert all(alive(pid) for pid in self.pids)
        assert all(r["ready"] and r["restarts"] == 0 for r in status), status


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("nft") is None:
        pytest.skip("no nft (nftables)")
    tmp = tmp_path_factory.mktemp("netstack_malformed")
    (tmp / "raw.nft").write_text(NFT_RULES)
    with namespace() as ns:
        ns.run("nft", "-f", str(tmp / "raw.nft"))
        svc = Service(
            ECHO,
            tmp / "run",
            replicas=2,
            args=("--tun", DEVICE, "--addr", f"{STACK_ADDR}/24"),
            wrap=ns.wrap,
        )
        driver: subprocess.Popen[str] | None = None
        try:
            svc.wait_for_line("tcp_echo serving", timeout=60)
            driver = ns.popen(
                sys.executable, "-c", _BOOT, str(ROOT),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert driver is not None
            yield Stack(ns, svc, svc.replica_pids(), driver)
        finally:
            if driver is not None:
                assert driver.stdin is not None
                assert driver.stdout is not None
                driver.stdin.close()
                driver.wait(30)
                driver.stdout.close()
            svc.stop()


def _segs(result: dict[str, Any], key: str = "answers") -> list[Seg]:
    return [Seg.from_json(d) for d in result[key]]


#: The nstat counter each malformed packet bumps in the ingress of the replica that read it.
DROP_COUNTERS: Final = {
    "tcp_checksum": "TcpInCsumErrors",
    "tcp_data_offset_4": "TcpInErrs",
    "tcp_data_offset_0": "TcpInErrs",
    "tcp_data_offset_past_end": "TcpInErrs",
    "tcp_data_offset_one_word_past": "TcpInErrs",
    "tcp_truncated_header": "TcpInErrs",
    "tcp_option_of_length_0": "TcpInErrs",
    "ip_checksum": "IpInHdrErrors",
    "ip_truncated": "IpInTruncatedPkts",
    "ip_ihl_4": "IpInHdrErrors",
    "ip_fragment_mf": "IpReasmReqds",
    "ip_fragment_offset": "IpReasmReqds",
    "ip_not_for_us": "IpInAddrErrors",
}


def _ingress_count(stack: Stack, counter: str) -> int:
    """``counter`` summed over the replicas' ingress (``dominoes stats``' netstack reports)."""
    doc = stack.svc.control({"op": "stats"})
    return sum(
        r["report"]["reports"]["netstack"]["ingress"].get(counter, 0) for r in doc["replicas"]
    )


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_packet_is_dropped(stack: Stack, kind: str) -> None:
    """Each carries a SYN to a closed port: taken in, it would draw a RST+ACK."""
    assert set(DROP_COUNTERS) == set(MALFORMED)
    counted = _ingress_count(stack, DROP_COUNTERS[kind])
    result = stack.drive("malformed", kind)
    # ...dropped, and counted once, under the kernel's name for that drop (by the replica
    # whose queue it reached, which may still be reading it: a bounded wait)
    wait_until(lambda: _ingress_count(stack, DROP_COUNTERS[kind]) > counted, timeout=30)
    assert _ingress_count(stack, DROP_COUNTERS[kind]) == counted + 1
    # dn0 passed it and the fences on to the stack's queues (dropping none)...
    assert result["tun_dropped"] == 0, result
    assert result["tun_sent"] >= 5, result
    assert result["fences"] == 4, result  # ...and the stack answered the fences meanwhile
    assert _segs(result) == [], [str(s) for s in _segs(result)]


@pytest.mark.parametrize("kind", sorted(LISTEN_DROPS))
def test_a_segment_that_opens_nothing_on_the_listening_port_is_dropped(
    stack: Stack, kind: str
) -> None:
    result = stack.drive("listen", kind)
    assert result["fences"] == 4, result
    assert _segs(result) == [], [str(s) for s in _segs(result)]


def test_syn_fin_to_the_listening_port_makes_no_connection(stack: Stack) -> None:
    result = stack.drive("listen", "syn_fin")
    after = _segs(result, "after")
    # a fresh SYN from the same port starts a fresh handshake: no connection was left
    assert after, result
    assert (after[0].flags, after[0].ack) == (SYN | ACK, 900_001), str(after[0])


def test_a_syn_to_a_closed_port_gets_rst_ack(stack: Stack) -> None:
    """RFC 9293 3.10.7.1: no ACK -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    result = stack.drive("closed_port", "syn")
    assert [(s.flags, s.seq, s.ack, s.payload) for s in _segs(result)] == [
        (RST | ACK, 0, CLOSED_SEQ + 1, b"")
    ]


def test_a_syn_with_data_to_a_closed_port_acks_the_data_too(stack: Stack) -> None:
    result = stack.drive("closed_port", "syn_with_data")
    assert [(s.flags, s.seq, s.ack) for s in _segs(result)] == [
        (RST | ACK, 0, CLOSED_SEQ + 1 + len(b"hello"))
    ]


def test_a_fin_to_a_closed_port_gets_rst_ack(stack: Stack) -> None:
    result = stack.drive("closed_port", "fin")
    assert [(s.flags, s.seq, s.ack) for s in _segs(result)] == [(RST | ACK, 0, CLOSED_SEQ + 1)]


@pytest.mark.parametrize("kind", ["ack", "ack_with_data"])
def test_an_ack_to_a_closed_port_gets_rst_at_its_ack(stack: Stack, kind: str) -> None:
    """RFC 9293 3.10.7.1: ACK on -> <SEQ=SEG.ACK><CTL=RST>."""
    result = stack.drive("closed_port", kind)
    assert [(s.flags, s.seq, s.payload) for s in _segs(result)] == [(RST, CLOSED_ACK, b"")]


@pytest.mark.parametrize("kind", ["rst", "rst_ack"])
def test_a_rst_to_a_closed_port_is_not_answered(stack: Stack, kind: str) -> None:
    result = stack.drive("closed_port", kind)
    assert result["fences"] == 4, result
    assert _segs(result) == [], [str(s) for s in _segs(result)]


def _established(stack: Stack, kind: str) -> tuple[dict[str, Any], list[Seg]]:
    """Run the attack; check what must hold whatever it is: the connection echoed before
    and after it, and a RST at exactly RCV.NXT then ended it, silently."""
    result = stack.drive("established", kind)
    assert bytes.fromhex(result["first"]) == b"first", result
    assert bytes.fromhex(result["second"]) == b"second", result  # it goes on working
    assert _segs(result, "exact_rst") == [], result  # an exact RST resets, unanswered
    gone = _segs(result, "gone")  # and the connection is gone: an ACK gets a RST
    assert [(s.flags, s.seq) for s in gone] == [(RST, result["end"]["rcv_nxt"])], result
    return result, _segs(result, "segs")


@pytest.mark.parametrize(
    "kind",
    ["rst_above_window", "rst_far_above_window", "rst_below_window", "rst_ack_above_window"],
)
def test_a_rst_out_of_the_window_is_ignored(stack: Stack, kind: str) -> None:
    """RFC 5961 3.2: a RST outside the receive window is dropped, unanswered."""
    result, segs = _established(stack, kind)
    # what the stack sent for the attack and the data after it: only the data's ACK and
    # its echo, both acknowledging the data (a challenge ACK would acknowledge less)
    after_data = result["end"]["snd_nxt"]
    assert all(s.ack == after_data and not s.flags & RST for s in segs), [str(s) for s in segs]


@pytest.mark.parametrize("kind", ["rst_in_window", "rst_ack_in_window", "syn_in_window"])
def test_an_inexact_rst_or_a_syn_in_the_window_gets_a_challenge_ack(
    stack: Stack, kind: str
) -> None:
    """RFC 5961 3.2 (RST) and 4.2 (SYN): in the window but not exactly RCV.NXT: a
    challenge ACK, <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, and the connection stays."""
    result, segs = _established(stack, kind)
    at = result["at"]
    challenge = [s for s in segs if s.ack == at["snd_nxt"]]
    assert [(s.flags, s.seq, s.payload) for s in challenge] == [(ACK, at["rcv_nxt"], b"")], [
        str(s) for s in segs
    ]
    assert segs.index(challenge[0]) == 0  # before the data's ACK: answered in order


def test_a_syn_flood_to_a_closed_port(stack: Stack) -> None:
    """10,000 SYNs to a closed port: no replica dies, and the connection opened before the
    flood echoes after it (checked by drive, with a new connection's echo)."""
    result = stack.drive("flood", timeout=120)
    assert result["sent"] == FLOOD, result
    assert result["refused"] < FLOOD, result
    # dn0 passed (most of) them on, dropping what overflowed its queues, and the stack
    # answered them
    assert result["tun_sent"] > 0, result
    assert result["answered"] > 0, result
