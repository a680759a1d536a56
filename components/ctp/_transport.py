"""The transport driver (sessions, channels, the way out) and the native wire codec.

:class:`Transport` is the micro-protocol every profile starts with.  It keeps
the sessions, turns each datagram the service receives (a ``race`` log entry)
into the ``ctp.datagram`` event, and closes the chains the other
micro-protocols hook into: its handlers run last (order 90), so a
micro-protocol placed before them may change a segment, or ``halt`` it.  It
owns the way out: only the replica that owns an entry sends, from its own
socket on the service's port (``replica.udp``), so the peer sees one
address whichever replica answers.

:class:`Wire` is the native codec: a fixed header in network order, then
the selective acknowledgements, the FEC fields and the payload.  A
datagram it cannot decode is counted and dropped.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Final

from dominoes import Context, update

from . import _types as t
from ._base import MicroProtocol, register
from ._types import Segment, Session

__all__ = ("Transport", "Wire", "WireError", "decode", "encode", "session_id")

Output = Callable[[bytes, tuple[str, int]], None]

log = logging.getLogger("dominoes.ctp")


def session_id(host: str, port: int, channel: int = 0) -> str:
    return f"{host}:{port}/{channel}"


def _defaults(binds: tuple[tuple[str, str, float], ...]) -> tuple[tuple[str, str, float], ...]:
    bound = {b[0] for b in binds}
    return tuple((e, "ignore", 99.0) for e in t.EVENTS if e not in bound)


@register("transport")
class Transport(MicroProtocol):
    """Sessions and the bottom of every chain (see the module doc)."""

    transient: ClassVar[tuple[str, ...]] = ("output", "submit", "_files")
    # state, annotated so that a snapshot restores its types
    sessions: dict[str, Session]
    counters: dict[str, int]
    sweep_timer: int
    last_error: str

    binds: ClassVar[tuple[tuple[str, str, float], ...]] = (
        (t.SEND, "after_send", 90),
        (t.SEGMENT_FROM_APP, "from_app", 90),
        (t.SEGMENT_OUT, "out", 90),
        (t.DATAGRAM_FROM_NET, "up", 90),
        (t.ACK_RECEIVED, "acked", 90),
        (t.NAK_RECEIVED, "pump", 90),
        (t.TIMEOUT, "pump", 90),
        (t.OPENED, "arm_sweep", 90),
        ("ctp.sweep", "sweep", 0),
        ("ctp.backlog", "no_backlog", 0),
    )
    # every transport event has a handler, so raising one no profile uses is no error
    binds += _defaults(binds)

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.counters: dict[str, int] = {}
        #: the idle sweep's replicated timer (0: not armed)
        self.sweep_timer = 0
        #: the last exception a micro-protocol raised on a datagram ("" if none)
        self.last_error = ""
        #: this replica's way out (None: nothing is sent, as in tests of the state alone)
        self.output: Output | None = None
        #: this replica's way to append an entry (``submit(event, *args)``), for drivers
        #: whose owner learns something the others must apply (a file's size)
        self.submit: Callable[..., Any] | None = None
        self._files: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- entries ------------------------------------------------------------------------------

    @update
    def datagram(self, ctx: Context, data: bytes, host: str, port: int) -> None:
        """The service's UDP event: every datagram, as a ``race`` entry.

        A micro-protocol's exception stops this datagram's chain and is counted
        (``handler_errors``, the last one in ``last_error``) and logged by the
        owner: every replica stops at the same point, so they stay identical, and
        the peer gets nothing (the runtime would answer an error with a text
        datagram, which no binary protocol's peer understands).
        """
        self.count("datagrams_in")
        try:
            ctx.raise_event(t.DATAGRAM, bytes(data), host, port)
        except Exception as exc:  # noqa: BLE001 - counted, logged, and the peer is spared
            self.count("handler_errors")
            self.last_error = f"{type(exc).__name__}: {exc}"
            if ctx.is_owner:
                ctx.effect(log.error, "ctp: datagram from %s:%d failed: %r", host, port, exc)

    @update
    def open(self, ctx: Context, host: str, port: int, channel: int = 0) -> str:
        """Open a session to a peer (an active open); its id."""
        return self.session(ctx, host, port, channel).sid

    @update
    def send(self, ctx: Context, sid: str, data: bytes) -> int:
        """Send a message; its number in the session."""
        self._known(sid)
        return int(ctx.raise_event(t.SEND, sid, bytes(data), "", 0))

    @update
    def send_file(self, ctx: Context, sid: str, path: str, size: int) -> int:
        """Send ``size`` bytes of the file ``path`` as one message; the owner of each
        transmission reads its part at send time (the bytes never enter the log)."""
        self._known(sid)
        return int(ctx.raise_event(t.SEND, sid, b"", path, size))

    @update
    def close(self, ctx: Context, sid: str) -> None:
        """Close once everything sent is acknowledged."""
        s = self._known(sid)
        s.closing = True
        self.acked(ctx, sid, Segment(t.ACK))

    def _known(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise KeyError(f"no session {sid}")
        return s

    # --- sessions -----------------------------------------------------------------------------

    def session(
        self, ctx: Context, host: str, port: int, channel: int = 0, role: str = ""
    ) -> Session:
        """The session with this peer, opened (``ctp.opened``) if new."""
        sid = session_id(host, port, channel)
        s = self.sessions.get(sid)
        if s is None:
            s = Session(sid, host, port, channel, opened=ctx.now, last=ctx.now, role=role)
            self.sessions[sid] = s
            self.count("sessions_opened")
            ctx.raise_event(t.OPENED, sid)
        return s

    def end(self, ctx: Context, sid: str, reason: str) -> None:
        """End a session: every micro-protocol drops its state (``ctp.closed``)."""
        if self.sessions.pop(sid, None) is None:
            return
        self.count(f"sessions_closed_{reason.split(':')[0]}")
        ctx.raise_event(t.CLOSED, sid, reason)
        for key in [k for k in self._files if k.startswith(sid + "\0")]:
            os.close(self._files.pop(key))

    def arm_sweep(self, ctx: Context, sid: str, *, idle: float = 60.0) -> None:
        if not self.sweep_timer:
            self.sweep_timer = ctx.raise_later(idle / 2, "ctp.sweep", idle)

    def sweep(self, ctx: Context, idle: float) -> None:
        """Close the sessions the peer left silent for ``idle`` seconds."""
        self.sweep_timer = 0
        for sid, s in list(self.sessions.items()):
            if ctx.now - s.last >= idle:
                self.end(ctx, sid, "idle")
        if self.sessions:
            self.sweep_timer = ctx.raise_later(idle / 2, "ctp.sweep", idle)

    # --- the bottom of the chains ---------------------------------------------------------------

    def ignore(self, ctx: Context, *args: Any) -> None:
        return None

    def no_backlog(self, ctx: Context, sid: str) -> None:
        return None  # segmentation answers how much waits; with none, nothing does

    def after_send(self, ctx: Context, sid: str, *args: Any) -> None:
        ctx.raise_event(t.PUMP, sid)

    def from_app(self, ctx: Context, sid: str, seg: Segment) -> None:
        ctx.raise_event(t.SEGMENT_OUT, sid, seg)

    def out(self, ctx: Context, sid: str, seg: Segment) -> None:
        ctx.raise_event(t.SEGMENT_TO_NET, sid, seg)

    def up(self, ctx: Context, sid: str, seg: Segment) -> None:
        ctx.raise_event(t.DELIVER_TO_APP, sid, seg)

    def pump(self, ctx: Context, sid: str, *args: Any) -> None:
        if sid in self.sessions:
            ctx.raise_event(t.PUMP, sid)

    def acked(self, ctx: Context, sid: str, seg: Segment) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        ctx.raise_event(t.PUMP, sid)
        if s.in_flight == 0 and ctx.raise_event("ctp.backlog", sid) in (None, 0):
            ctx.raise_event(t.DRAINED, sid)
            if s.closing:
                self.end(ctx, sid, "done")

    # --- the way out ----------------------------------------------------------------------------

    def transmit(self, ctx: Context, sid: str, encode: Callable[[], bytes]) -> None:
        """On the owner only: ``encode()`` and send to the session's peer, after the
        entry applies (non-owners neither encode nor read files)."""
        if not ctx.is_owner or self.output is None:
            return
        s = self.sessions.get(sid)
        if s is None:
            return
        ctx.effect(self._send, encode, (s.host, s.port))

    def transmit_to(self, ctx: Context, host: str, port: int, data: bytes) -> None:
        """On the owner only: send ``data`` to an address that has no session."""
        if ctx.is_owner and self.output is not None:
            ctx.effect(self._send, lambda: data, (host, port))

    def _send(self, encode: Callable[[], bytes], addr: tuple[str, int]) -> None:
        if self.output is not None:
            self.output(encode(), addr)

    def read(self, sid: str, path: str, off: int, length: int) -> bytes:
        """Part of a file, for a segment whose payload is read at send time (owner);
        the file stays open for the session (closed when it ends)."""
        if sid not in self.sessions:  # it ended in this entry: read, keep nothing open
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, length, off)
            finally:
                os.close(fd)
        key = f"{sid}\0{path}"
        cached = self._files.get(key)
        if cached is None:
            cached = self._files[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(cached, length, off)

    def payload(self, sid: str, seg: Segment) -> bytes:
        return self.read(sid, seg.src, seg.off, seg.length) if seg.src else seg.payload


# --- the native wire ------------------------------------------------------------------------

MAGIC: Final = 0xD7
#: magic, kind, channel, seq, ack, wnd, msg, off, total, number of sacks, flags
HEADER: Final = struct.Struct("!BBHIIIIIIBB")
FEC: Final = struct.Struct("!IBB")
FLAG_FEC: Final = 1
MAX_SACK: Final = 64


class WireError(ValueError):
    """A datagram the native codec refuses."""


def encode(seg: Segment, channel: int, payload: bytes) -> bytes:
    sack = seg.sack[:MAX_SACK]
    flags = FLAG_FEC if seg.group >= 0 else 0
    wnd = min(seg.wnd, 0xFFFFFFFF)
    parts = [
        HEADER.pack(
            MAGIC,
            seg.kind,
            channel,
            seg.seq & 0xFFFFFFFF,
            seg.ack & 0xFFFFFFFF,
            wnd,
            seg.msg,
            seg.off,
            seg.total,
            len(sack),
            flags,
        )
    ]
    if sack:
        parts.append(struct.pack(f"!{len(sack)}I", *sack))
    if flags & FLAG_FEC:
        parts.append(FEC.pack(seg.group, seg.index, seg.k))
    parts.append(payload)
    return b"".join(parts)


def decode(data: bytes) -> tuple[int, Segment]:
    """(channel, segment); :class:`WireError` if it is not a native datagram."""
    if len(data) < HEADER.size:
        raise WireError("short header")
    magic, kind, channel, seq, ack, wnd, msg, off, total, nsack, flags = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad magic")
    if kind not in (t.DATA, t.ACK, t.NAK, t.PARITY, t.ERROR):
        raise WireError(f"unknown kind {kind}")
    at = HEADER.size
    if nsack > MAX_SACK or len(data) < at + 4 * nsack:
        raise WireError("bad sack list")
    sack = list(struct.unpack_from(f"!{nsack}I", data, at)) if nsack else []
    at += 4 * nsack
    group, index, k = -1, 0, 0
    if flags & FLAG_FEC:
        if len(data) < at + FEC.size:
            raise WireError("short fec header")
        group, index, k = FEC.unpack_from(data, at)
        at += FEC.size
    if kind == t.DATA and off + (len(data) - at) > total:
        raise WireError("payload beyond the message")
    seg = Segment(
        kind,
        seq,
        ack,
        sack,
        wnd,
        bytes(data[at:]),
        msg=msg,
        off=off,
        total=total,
        group=group,
        index=index,
        k=k,
    )
    return channel, seg


@register("wire")
class Wire(MicroProtocol):
    """The native codec (see the module doc)."""

    binds = (
        (t.DATAGRAM, "received", 50),
        (t.SEGMENT_TO_NET, "send", 100),
    )

    def received(self, ctx: Context, data: bytes, host: str, port: int) -> None:
        transport = ctx.component(Transport)
        try:
            channel, seg = decode(data)
        except WireError:
            transport.count("datagrams_refused")
            return
        s = transport.session(ctx, host, port, channel)
        s.last = ctx.now
        if seg.kind == t.ACK:
            ctx.raise_event(t.ACK_RECEIVED, s.sid, seg)
        elif seg.kind == t.NAK:
            ctx.raise_event(t.NAK_RECEIVED, s.sid, seg)
        elif seg.kind == t.ERROR:
            transport.end(ctx, s.sid, "reset")
        else:
            ctx.raise_event(t.DATAGRAM_FROM_NET, s.sid, seg)

    def send(self, ctx: Context, sid: str, seg: Segment) -> None:
        transport = ctx.component(Transport)
        s = transport.sessions.get(sid)
        if s is None:
            return
        channel = s.channel
        transport.transmit(ctx, sid, lambda: encode(seg, channel, transport.payload(sid, seg)))
