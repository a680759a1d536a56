"""The replicated TCP layer: connections in the replicated state, segments through the log.

What each replica does with a packet
------------------------------------
A replica reads packets from its own queue of the TUN device (:mod:`._tun`).
That replica, the packet's first dequeuer, does the per-packet work once:
it checks the IPv4 header and the TCP checksum (a bad one is dropped and
counted, and never reaches the log), answers ICMP echo requests itself (no
state to replicate), and appends the TCP segments it read, as one entry that
it owns, to the log (:meth:`Tcp.segments`, ``affinity``: the first dequeuer
does the full processing).

Every replica applies the entry: it re-parses each segment's header without
its checksum (``verify=False``) and runs the connection's TCP engine
(:mod:`._tcp`), which updates the connection's state: sequence numbers,
windows, buffers, timers.  The entry's owner alone turns the engine's output
segments into packets (pseudo-header checksums, IPv4 headers) and writes them
to its TUN queue (an effect).  So what a replica that does not own an entry
applies is the state delta of each segment: no checksum over the payload,
no packet building, no write.

Timers (retransmission, persist, TIME_WAIT) are replicated timers
(``ctx.raise_later``): if the replica that sent a segment dies, the timer
still fires on another and that one retransmits.  Initial sequence numbers
are RFC 6528's: a clock (the entry's replicated time, in 4 µs ticks) plus a
keyed hash of the connection's addresses, with the key drawn once from the
replicated random source, so every replica picks the same one.

Applications are components too
-------------------------------
An application binds handlers to the connection events :meth:`Tcp.accepted`,
:meth:`Tcp.data`, :meth:`Tcp.remote_closed` and :meth:`Tcp.closed` and
answers with :meth:`Tcp.send` and :meth:`Tcp.close`, inside the same entry,
deterministically: its state is replicated with the stack's, so a connection
outlives the replica that accepted it (see ``examples/tcp_echo.py``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any, ClassVar, Final

from dominoes import Component, Context, update

from . import _wire as wire
from ._tcp import Actions, Tcb, TcpError, reset_for
from ._types import ACK, FIN, RST, SYN, Segment

__all__ = ("Tcp", "conn_key", "key_parts")

#: The counters kept in the replicated state (the kernel's nstat names).
COUNTERS: Final = (
    "TcpInSegs",
    "TcpOutSegs",
    "TcpRetransSegs",
    "TcpOutRsts",
    "TcpActiveOpens",
    "TcpPassiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpExtTCPFastRetrans",
    "TcpExtTCPTimeouts",
    "TcpExtListenDrops",
)


#: Half-open connections a stack keeps at most (Linux's default ``somaxconn``).
BACKLOG: Final = 4096
#: The ephemeral ports of active opens (Linux's default ``ip_local_port_range``).
EPHEMERAL: Final = (32768, 60999)


def conn_key(remote_ip: int, remote_port: int, local_port: int) -> int:
    """A connection's id: its remote address and port and its local port in one int."""
    return remote_ip << 32 | remote_port << 16 | local_port


def key_parts(key: int) -> tuple[int, int, int]:
    """``(remote_ip, remote_port, local_port)`` of a :func:`conn_key`."""
    return key >> 32, (key >> 16) & 0xFFFF, key & 0xFFFF


class Tcp(Component):
    """The replicated TCP connections of the stack (see the module doc)."""

    name = "tcp"
    transient: ClassVar[tuple[str, ...]] = ("output", "_ident", "local")

    def __init__(
        self,
        *,
        mss: int = 1460,
        wscale: int = 7,
        rcv_buffer: int = 1 << 20,
        backlog: int = BACKLOG,
    ) -> None:
        self.mss = mss
        #: half-open connections (SYN_RCVD) at most: a SYN beyond them is dropped
        self.backlog = backlog
        #: the half-open ones now
        self.embryonic: list[int] = []
        self.wscale = wscale
        self.rcv_buffer = rcv_buffer
        #: the stack's own IPv4 address (an int), set by :meth:`configure`
        self.local_ip = 0
        #: listening ports
        self.listening: list[int] = []
        #: conn_key -> the connection's engine
        self.conns: dict[int, Tcb] = {}
        #: conn_key -> timer kind -> replicated timer id
        self.timers: dict[int, dict[str, int]] = {}
        #: RFC 6528's secret (0: not drawn yet)
        self.secret = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: ports the streams interface listens on (their connections get a home)
        self.stream_ports: list[int] = []
        #: conn_key -> its home replica, for the connections of the streams interface:
        #: the replica that appended the SYN (or the active open), whose application
        #: task serves the connection
        self.homes: dict[int, int] = {}
        #: the next ephemeral port an active open tries
        self.next_port = EPHEMERAL[0]
        #: this replica's streams interface (:mod:`._streams`), None when unused: the
        #: connections and listeners its application tasks hold (local, not replicated)
        self.local: Any = None
        #: this replica's way out: ``output(packets)`` writes IPv4 packets to its TUN
        #: queue (set by the runtime; None in tests that only look at the state)
        self.output: Callable[[list[bytes]], None] | None = None
        self._ident = itertools.count(1)

    # --- configuration --------------------------------------------------------------------

    @update
    def configure(self, ctx: Context, address: int, ports: list[int]) -> None:
        """The stack's address and listening ports (idempotent: every replica sends it)."""
        self.local_ip = address
        for port in ports:
            if port not in self.listening:
                self.listening.append(port)

    # --- segments in ----------------------------------------------------------------------

    @update
    def segments(self, ctx: Context, batch: list[list[Any]]) -> None:
        """Segments one replica read and checked: ``[[src_ip, tcp bytes], ...]``."""
        for src, data in batch:
            try:
                seg = wire.parse_tcp(src, self.local_ip, data, verify=False)
            except wire.WireError:
                continue  # checked at ingress: only a replica's own bug lands here
            self._segment(ctx, int(src), seg)

    def _segment(self, ctx: Context, src: int, seg: Segment) -> None:
        key = conn_key(src, seg.src_port, seg.dst_port)
        tcb = self.conns.get(key)
        if tcb is None:
            # a connection's engine counts its own segments, in and out; these are the rest
            self.counters["TcpInSegs"] += 1
            if seg.dst_port in self.listening and not seg.flags & ACK:
                # RFC 9293 3.10.7.2 (LISTEN): a RST is ignored, an ACK draws a RST (below),
                # a SYN opens a connection, and anything else (SYN+FIN, FIN, no flags) is
                # dropped, as Linux does
                if seg.flags & (SYN | RST | FIN) != SYN:
                    self.counters["ListenDrops"] = self.counters.get("ListenDrops", 0) + 1
                    return
                if len(self.embryonic) >= self.backlog:  # a SYN flood: keep what is open
                    self.counters["TcpExtListenOverflows"] = (
                        self.counters.get("TcpExtListenOverflows", 0) + 1
                    )
                    self.counters["TcpExtListenDrops"] += 1
                    return
                tcb, actions = Tcb.passive(
                    seg.dst_port,
                    seg.src_port,
                    seg,
                    self._isn(ctx, key),
                    ctx.now,
                    mss=self.mss,
                    wscale=self.wscale,
                    rcv_buffer=self.rcv_buffer,
                )
                self.conns[key] = tcb
                self.embryonic.append(key)
                if seg.dst_port in self.stream_ports:
                    self.homes[key] = ctx.origin
                self._apply(ctx, key, actions)
                return
            rst = reset_for(seg)
            if rst is not None:
                self.counters["TcpOutRsts"] += 1
                self.counters["TcpOutSegs"] += 1
                self._transmit(ctx, src, [rst])
            return
        self._apply(ctx, key, tcb.on_segment(seg, ctx.now))

    # --- the application's verbs ------------------------------------------------------------

    def send(self, ctx: Context, key: int, data: bytes) -> None:
        """Queue ``data`` on connection ``key`` (inside an entry, from an application)."""
        tcb = self.conns.get(key)
        if tcb is None:
            return
        try:
            actions = tcb.send(data, ctx.now)
        except TcpError:
            self.counters["SendAfterClose"] = self.counters.get("SendAfterClose", 0) + 1
            return
        self._apply(ctx, key, actions)

    def close(self, ctx: Context, key: int) -> None:
        """Close connection ``key`` after its queued data (a FIN)."""
        tcb = self.conns.get(key)
        if tcb is not None:
            self._apply(ctx, key, tcb.close(ctx.now))

    def abort(self, ctx: Context, key: int) -> None:
        tcb = self.conns.get(key)
        if tcb is not None:
            self._apply(ctx, key, tcb.abort(ctx.now))

    def consumed(self, ctx: Context, key: int, n: int) -> None:
        """The application has taken ``n`` bytes of what :meth:`data` gave it."""
        tcb = self.conns.get(key)
        if tcb is not None:
            self._apply(ctx, key, tcb.consumed(n, ctx.now))

    # --- the streams interface's entries (from a connection's home replica) ---------------

    @update
    def listen(self, ctx: Context, port: int) -> None:
        """Accept connections on ``port`` for the streams interface (idempotent)."""
        if port not in self.listening:
            self.listening.append(port)
        if port not in self.stream_ports:
            self.stream_ports.append(port)

    @update
    def app_send(self, ctx: Context, key: int, data: bytes) -> None:
        self.send(ctx, key, data)

    @update
    def app_close(self, ctx: Context, key: int) -> None:
        self.close(ctx, key)

    @update
    def app_abort(self, ctx: Context, key: int) -> None:
        self.abort(ctx, key)

    @update
    def app_consumed(self, ctx: Context, key: int, n: int) -> None:
        tcb = self.conns.get(key)
        if tcb is not None:
            try:
                actions = tcb.consumed(n, ctx.now)
            except ValueError:
                return  # more than was delivered: an application's bug, not the stack's
            self._apply(ctx, key, actions)

    @update
    def app_connect(self, ctx: Context, remote_ip: int, remote_port: int) -> int:
        """An active open from replica ``ctx.origin``: the new connection's key (0: no
        ephemeral port free)."""
        key = 0
        for _ in range(EPHEMERAL[1] - EPHEMERAL[0] + 1):
            port = self.next_port
            self.next_port = port + 1 if port < EPHEMERAL[1] else EPHEMERAL[0]
            candidate = conn_key(remote_ip, remote_port, port)
            if candidate not in self.conns:
                key = candidate
                break
        if not key:
            return 0
        tcb, actions = Tcb.active(
            key & 0xFFFF,
            remote_port,
            self._isn(ctx, key),
            ctx.now,
            mss=self.mss,
            wscale=self.wscale,
            rcv_buffer=self.rcv_buffer,
        )
        self.conns[key] = tcb
        self.homes[key] = ctx.origin
        if self.local is not None and ctx.replica == ctx.origin:
            self.local.opened(key)
        self._apply(ctx, key, actions)
        return key

    @update
    def orphaned(self, ctx: Context, replica: int) -> None:
        """Replica ``replica`` (re)started: its application tasks are gone, so the
        connections homed there are reset, not left hanging."""
        for key in [k for k, home in self.homes.items() if home == replica]:
            self.abort(ctx, key)

    # --- the connection events (applications bind to them) ---------------------------------

    @update
    def accepted(self, ctx: Context, key: int) -> None:
        """A connection to a listening port is established."""

    @update
    def data(self, ctx: Context, key: int, data: bytes) -> None:
        """In-order data arrived on ``key``; the application calls :meth:`consumed`."""

    @update
    def remote_closed(self, ctx: Context, key: int) -> None:
        """The peer sent its FIN: no more data will come."""

    @update
    def closed(self, ctx: Context, key: int, reason: str) -> None:
        """The connection is gone (``"closed"``, ``"reset"``, ``"timeout"``)."""

    # --- timers ------------------------------------------------------------------------------

    @update
    def timer(self, ctx: Context, key: int, kind: str) -> None:
        """A connection's replicated timer fired."""
        armed = self.timers.get(key)
        if armed is not None:
            armed.pop(kind, None)
        tcb = self.conns.get(key)
        if tcb is not None:
            self._apply(ctx, key, tcb.on_timer(kind, ctx.now))

    # --- the engine's output -----------------------------------------------------------------

    def _apply(self, ctx: Context, key: int, actions: Actions) -> None:
        remote_ip = key >> 32
        for name, n in actions.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        if actions.segments:
            self._transmit(ctx, remote_ip, actions.segments)
        if actions.timers:
            armed = self.timers.setdefault(key, {})
            for kind, at in actions.timers.items():
                old = armed.pop(kind, None)
                if old is not None:
                    ctx.cancel(old)
                if at is not None:
                    armed[kind] = ctx.raise_later(max(0.0, at - ctx.now), Tcp.timer, key, kind)
        # in the order things happened: accepted, then the data, then the peer's FIN
        events = actions.events
        local = (
            self.local if self.local is not None and self.homes.get(key) == ctx.replica else None
        )
        if "established" in events:
            if key in self.embryonic:
                self.embryonic.remove(key)
            if self.conns[key].passive_open:
                ctx.raise_event(Tcp.accepted, key)
            if local is not None:
                local.established(key, self.conns[key].passive_open)
        if actions.delivered:
            ctx.raise_event(Tcp.data, key, actions.delivered)
            if local is not None:
                local.delivered(key, actions.delivered)
        if "remote_fin" in events and key in self.conns:
            ctx.raise_event(Tcp.remote_closed, key)
            if local is not None:
                local.remote_closed(key)
        if local is not None and key in self.conns:
            local.progress(key, len(self.conns[key].sbuf))
        ended = next((e for e in ("reset", "refused", "timeout", "closed") if e in events), None)
        if ended is not None:
            self._forget(ctx, key)
            ctx.raise_event(Tcp.closed, key, ended)
            if local is not None:
                local.closed(key, ended)

    def _forget(self, ctx: Context, key: int) -> None:
        self.conns.pop(key, None)
        if key in self.embryonic:
            self.embryonic.remove(key)
        self.homes.pop(key, None)
        for timer_id in self.timers.pop(key, {}).values():
            ctx.cancel(timer_id)

    def _transmit(self, ctx: Context, remote_ip: int, segments: list[Segment]) -> None:
        if ctx.is_owner and self.output is not None:
            ctx.effect(self._send_packets, self.local_ip, remote_ip, segments)

    def _send_packets(self, local_ip: int, remote_ip: int, segments: list[Segment]) -> None:
        """On the owner, after the entry applied: build the packets and write them."""
        output = self.output
        if output is None:
            return
        packets = []
        ident = self._ident
        for seg in segments:
            tcp = wire.build_tcp(local_ip, remote_ip, seg)
            packets.append(
                wire.build_ipv4(
                    local_ip, remote_ip, wire.PROTO_TCP, tcp, ident=next(ident) & 0xFFFF
                )
            )
        output(packets)

    # --- RFC 6528 ----------------------------------------------------------------------------

    def _isn(self, ctx: Context, key: int) -> int:
        if not self.secret:
            self.secret = ctx.random.getrandbits(64) | 1
        digest = hashlib.blake2b(
            key.to_bytes(10, "big") + self.local_ip.to_bytes(4, "big"),
            key=self.secret.to_bytes(8, "big"),
            digest_size=4,
        ).digest()
        return (int(ctx.now * 250_000) + int.from_bytes(digest, "big")) & 0xFFFFFFFF

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        state = super().snapshot()
        state["conns"] = {k: tcb.to_plain() for k, tcb in self.conns.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        conns = state.pop("conns", {})
        homes = state.pop("homes", {})
        super().restore(state)
        self.conns = {int(k): Tcb.from_plain(v) for k, v in conns.items()}
        self.homes = {int(k): int(v) for k, v in homes.items()}
