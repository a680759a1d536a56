"""The sans-IO TCP connection engine: one :class:`Tcb` per connection, segments in,
segments out, shaped like h11.

No I/O, no clock, no randomness
-------------------------------
A :class:`Tcb` never reads a clock, draws a random number or touches a socket: every
call takes the current time ``now`` (seconds, a float the caller owns) and returns an
:class:`Actions` saying what to do.  Given the same calls with the same arguments it
returns the same actions and reaches the same state, on every replica: each replica
runs the engine on every logged segment, and only the entry's owner performs the
actions' effects.  The initial sequence number is an argument for the same reason.

API
---
* ``Tcb.passive(local_port, remote_port, syn, iss, now, *, mss=1460, wscale=7,
  rcv_buffer=1 << 20, msl=30.0, ...) -> (Tcb, Actions)``: a SYN arrived for a
  listening port (the listener itself lives outside); the Tcb is in SYN_RCVD and
  the actions carry the SYN-ACK.
* ``Tcb.active(local_port, remote_port, iss, now, *, ...) -> (Tcb, Actions)``:
  the Tcb is in SYN_SENT and the actions carry the SYN.
* :meth:`Tcb.on_segment`, :meth:`Tcb.send`, :meth:`Tcb.close`, :meth:`Tcb.abort`,
  :meth:`Tcb.on_timer`, :meth:`Tcb.consumed`: each ``(..., now) -> Actions``.
* :func:`reset_for`: the RST answering a segment for no connection.
* :meth:`Tcb.to_plain` / :meth:`Tcb.from_plain`: the whole state as plain data (ints,
  floats, strs, bytes, bools, None, lists and dicts of those), for a msgpack snapshot.

An :class:`Actions` carries ``segments`` to transmit in order; ``timers``, each kind
(``"rto"``, ``"persist"``, ``"time_wait"``) mapped to the absolute time to fire at,
or None to cancel (a kind not mentioned keeps its previous setting); ``delivered``,
new in-order bytes for the application; ``events`` (``"established"``,
``"remote_fin"``, ``"closed"``, ``"reset"``, ``"refused"``, ``"timeout"``); and
``counters``, increments named like Linux's ``nstat`` (``TcpOutSegs``,
``TcpRetransSegs``, ``TcpExtTCPTimeouts``, ...).  When a timer fires the caller
calls :meth:`Tcb.on_timer` with its kind; a timer that is no longer armed is
ignored, and one that fires early is re-armed (``timers`` says when).

Documented exceptions: :class:`TcpError` from :meth:`Tcb.send` when the
connection no longer accepts data; :exc:`ValueError` for a misuse of the API (an
unknown timer kind, consuming more than was delivered, ``passive`` without a SYN).

The table
---------
Segment arrival follows RFC 9293 section 3.10.7.  Pure functions do the sequence
arithmetic (:func:`seq_diff` and friends, mod 2**32; :func:`segment_acceptable`,
RFC 9293's acceptability test; :func:`rst_verdict`, RFC 5961's RST check).
:meth:`Tcb._classify` turns a segment into one :class:`Event` with them, and
:data:`TRANSITIONS` maps ``(State, Event)`` to ``(action, next State)``, as h11
does.  The application's calls and the timers are events too.  One segment may
make two steps: its ACK part (``ACK`` or ``FIN_ACKED``, which also takes in its
data), then ``FIN`` once the peer's FIN is in order.  The table is total over
every state but LISTEN and every event but OPEN (checked at import); LISTEN has
only ``SYN`` (the passive constructor) and OPEN only ``CLOSED`` (the active one).

Sending
-------
The send buffer is a ``bytearray`` starting at ``buf_seq`` (the first unacked data
byte), trimmed from the front as ACKs arrive (CPython makes that O(1) amortized);
:meth:`to_plain` hands it out as ``bytes``.  Segments go out while the usable
window, ``min(snd_wnd, cwnd)`` minus what is in flight, allows, at most one MSS
each; a runt segment is only sent when it ends the buffer or nothing is in
flight (sender-side silly window avoidance, no Nagle).  After :meth:`close`, the
FIN rides on the last data segment, or goes alone once everything is sent.

Retransmission is RFC 6298: SRTT/RTTVAR, initial RTO 1 s, at least 0.2 s (like
Linux), at most 60 s, one timed segment at a time, no sample from a retransmitted
one (Karn), the RTO doubled on every timeout and kept until a new sample.  On a
timeout the head is resent whatever cwnd says (within the peer's window, at least
one byte) and sending goes back to ``snd_una`` (go-back-N), with cwnd = 1 MSS.
Segments without data carry the highest sequence number sent (Linux's
``tcp_acceptable_seq``), not the rewound ``snd_nxt``, so that the peer finds them
acceptable.  Three duplicate ACKs trigger a fast retransmit and NewReno's
recovery (RFC 5681, RFC 6582): ssthresh = half the flight, cwnd inflated by the
duplicates, partial ACKs resend the next hole; ``recover`` is SND.MAX then, so an
ACK at or past it may start a new fast retransmit.  Each of the first two
duplicates lets one new segment out beyond cwnd (RFC 3042 limited transmit, not
counted in the flight that sets ssthresh): without it a small window (a few MSS,
as 5 % loss keeps it) never sees three duplicates and every loss costs a
timeout.  Slow start from an initial window of 10 MSS, then congestion avoidance.
A zero window arms the ``persist`` timer, whose probe is Linux's: an ACK with
sequence ``snd_una - 1``, which the peer must answer with its current window.  The
connection gives up
(event ``timeout``) after ``max_retries`` timeouts in a row (``syn_retries`` for
the handshake), like Linux's ``tcp_retries2`` and ``tcp_syn_retries``.

Receiving
---------
In-order data is delivered at once (``delivered``); the window advertised is the
free buffer, ``rcv_buffer`` minus what the application has not yet
:meth:`consumed`, scaled, and never shrinks (``rcv_adv`` keeps the right edge
promised).  Data beyond the window is trimmed.  Out-of-order data waits in a
queue of disjoint ``[stream offset, bytes]`` blocks, trimmed against each other,
bounded by the window.  Every segment carrying data or a FIN is ACKed at once (no
delayed ACK), an out-of-order one with a pure duplicate ACK.  :meth:`consumed`
sends a window update when the right edge moves by min(MSS, half the buffer), and
no ACK moves it by less (receiver SWS avoidance; beyond one unit of the window
scale's rounding): so duplicate ACKs repeat the window of the ACK before them, as
the sender needs to count them (RFC 5681).

Options: MSS (effective MSS = min(ours, theirs), 536 if they sent none) and window
scaling (RFC 7323: only when both SYNs carry it; a SYN's own window is never scaled;
the scale offered is the smallest covering ``rcv_buffer``, at most ``wscale``).

Simplified, compared with RFC 9293
----------------------------------
* No SACK, timestamps, urgent data, PAWS, delayed ACKs, Nagle, ECN, keepalive,
  precedence/security checks, or challenge-ACK rate limiting.
* Data and FIN on a SYN or SYN-ACK are ignored (the peer resends them: we do not
  ACK them); our own SYNs carry none.
* An unacceptable segment (say data into a zero window) is dropped whole, its
  ACK field unused, as in Linux (RFC 9293 asks to still take valid ACKs from a
  zero window); the ACK we answer with makes the peer send a pure ACK.
* A RST in SYN_RCVD closes the Tcb (the listener outside stays; RFC 9293's
  "return to LISTEN" is the listener's business); a retransmission of the
  peer's SYN in SYN_RCVD is answered with our SYN-ACK again (as Linux does).
* close() in SYN_SENT forgets the connection; close() after close() is ignored;
  FIN_WAIT_2 has no timeout (Linux's ``tcp_fin_timeout`` is for orphans).
* A RST in TIME_WAIT is dropped, as RFC 1337 recommends (Linux with
  ``tcp_rfc1337=1``); RFC 9293 and Linux's default close.  Otherwise a peer that
  got our last ACK twice answers the duplicate from CLOSED with a RST, which would
  end a clean close with "reset".
* ``TcpOutSegs`` counts every segment sent, retransmissions included (Linux does).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

import msgspec

from ._types import ACK, FIN, PSH, RST, SYN, Segment

__all__ = (
    "DEFAULT_MSS",
    "RTO_INITIAL",
    "RTO_MAX",
    "RTO_MIN",
    "TRANSITIONS",
    "Actions",
    "Event",
    "State",
    "Tcb",
    "TcpError",
    "reset_for",
    "rst_verdict",
    "segment_acceptable",
    "seq_add",
    "seq_diff",
    "seq_ge",
    "seq_gt",
    "seq_le",
    "seq_lt",
)

MOD: Final = 1 << 32
HALF: Final = 1 << 31
#: RFC 9293's default send MSS when the peer's SYN carries no MSS option.
DEFAULT_MSS: Final = 536
#: The smallest MSS the engine accepts from a peer (Linux's TCP_MIN_SND_MSS).
MIN_MSS: Final = 48
RTO_INITIAL: Final = 1.0
RTO_MIN: Final = 0.2
RTO_MAX: Final = 60.0
#: The initial congestion window, in MSS (RFC 6928).
INITIAL_WINDOW: Final = 10
MAX_WSCALE: Final = 14

RTO_TIMER: Final = "rto"
PERSIST_TIMER: Final = "persist"
TIME_WAIT_TIMER: Final = "time_wait"


class TcpError(Exception):
    """The application asked for something the connection's state does not allow."""


# -- sequence space ---------------------------------------------------------------


def seq_add(a: int, n: int) -> int:
    """``a + n`` in sequence space (mod 2**32)."""
    return (a + n) % MOD


def seq_diff(a: int, b: int) -> int:
    """``a - b`` as a signed distance in sequence space, in ``[-2**31, 2**31)``."""
    return (a - b + HALF) % MOD - HALF


def seq_lt(a: int, b: int) -> bool:
    """``a < b`` in sequence space."""
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    """``a <= b`` in sequence space."""
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    """``a > b`` in sequence space."""
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    """``a >= b`` in sequence space."""
    return seq_diff(a, b) >= 0


def segment_acceptable(seq: int, seg_len: int, rcv_nxt: int, rcv_wnd: int) -> bool:
    """RFC 9293's acceptability test (3.10.7.4, the four cases).

    A segment of ``seg_len`` sequence numbers at ``seq`` is acceptable if it is
    empty and at the window's left edge (zero window) or inside it, or if its
    first or last sequence number falls inside a non-zero window.
    """
    d = seq_diff(seq, rcv_nxt)
    if seg_len == 0:
        return d == 0 if rcv_wnd == 0 else 0 <= d < rcv_wnd
    if rcv_wnd == 0:
        return False
    return 0 <= d < rcv_wnd or 0 <= d + seg_len - 1 < rcv_wnd


def rst_verdict(seq: int, rcv_nxt: int, rcv_wnd: int) -> str:
    """RFC 5961's check of a RST in a synchronized state.

    ``"reset"`` if its sequence number is exactly ``rcv_nxt``, ``"challenge"`` if it
    is elsewhere in the window (answer with a challenge ACK), ``"drop"`` otherwise.
    """
    d = seq_diff(seq, rcv_nxt)
    if d == 0:
        return "reset"
    if 0 <= d < max(rcv_wnd, 1):
        return "challenge"
    return "drop"


def reset_for(seg: Segment) -> Segment | None:
    """The reply to ``seg`` arriving for no connection (RFC 9293 3.10.7.1).

    None for a RST; ``<SEQ=SEG.ACK><CTL=RST>`` if it carries an ACK; otherwise
    ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>``.
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return Segment(seg.dst_port, seg.src_port, 0, seq_add(seg.seq, seg.seg_len), RST | ACK, 0)


# -- the table --------------------------------------------------------------------


class State(StrEnum):
    """RFC 9293's connection states."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"


class Event(StrEnum):
    """What drives the table: segment kinds (after the checks), calls, and timers."""

    #: the active open (the ``active`` constructor)
    OPEN = "open"
    #: SYN without ACK (in LISTEN: a new connection; in SYN_SENT: simultaneous open)
    SYN = "syn"
    #: SYN+ACK with an acceptable ACK (SYN_SENT), or any in-window SYN+ACK later
    SYN_ACK = "syn_ack"
    #: SYN and FIN together: always dropped
    SYN_FIN = "syn_fin"
    #: the peer's SYN again (sequence number IRS, no ACK) once we know IRS
    SYN_RETRANSMIT = "syn_retransmit"
    #: a RST that resets: exact sequence number (or an acceptable ACK, SYN_SENT)
    RST = "rst"
    #: a RST in the window but not at RCV.NXT: challenge ACK (RFC 5961)
    RST_INEXACT = "rst_inexact"
    #: a RST outside the window (or, in SYN_SENT, without an acceptable ACK)
    RST_UNACCEPTABLE = "rst_unacceptable"
    #: a non-RST segment failing the acceptability test
    UNACCEPTABLE = "unacceptable"
    #: an acceptable segment without ACK in a synchronized state
    NO_ACK = "no_ack"
    #: an ACK acknowledging something not sent (or, RFC 5961, too old)
    BAD_ACK = "bad_ack"
    #: an acceptable segment with an acceptable ACK (data, if any, taken in)
    ACK = "ack"
    #: the same, and its ACK newly covers our FIN
    FIN_ACKED = "fin_acked"
    #: the peer's FIN is in order
    FIN = "fin"
    SEND = "send"
    CLOSE = "close"
    ABORT = "abort"
    #: the retransmission timer fired
    RTO = "rto"
    #: the retransmission timer fired once too often
    GIVE_UP = "give_up"
    #: the persist (zero window) timer fired
    PERSIST = "persist"
    #: the TIME_WAIT timer fired
    TIME_WAIT_EXPIRY = "time_wait"


S = State
E = Event

#: The states in which both sides' sequence numbers are known.
SYNCHRONIZED: Final = frozenset(
    {
        S.SYN_RCVD,
        S.ESTABLISHED,
        S.FIN_WAIT_1,
        S.FIN_WAIT_2,
        S.CLOSE_WAIT,
        S.CLOSING,
        S.LAST_ACK,
        S.TIME_WAIT,
    }
)
#: The states whose output step may send data or a FIN.
_SENDING: Final = frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK})

_Row = dict[Event, tuple[str, State | None]]

#: What a synchronized state does unless its own row says otherwise (None: stay).
_COMMON: Final[_Row] = {
    E.SYN: ("challenge_ack", None),
    E.SYN_ACK: ("challenge_ack", None),
    E.SYN_FIN: ("drop", None),
    E.SYN_RETRANSMIT: ("send_ack", None),
    E.RST: ("reset", S.CLOSED),
    E.RST_INEXACT: ("challenge_ack", None),
    E.RST_UNACCEPTABLE: ("drop", None),
    E.UNACCEPTABLE: ("send_ack", None),
    E.NO_ACK: ("drop", None),
    E.BAD_ACK: ("send_ack", None),
    E.ACK: ("ack", None),
    E.FIN_ACKED: ("ack", None),
    E.FIN: ("send_ack", None),
    E.SEND: ("error", None),
    E.CLOSE: ("ignore", None),
    E.ABORT: ("abort", S.CLOSED),
    E.RTO: ("retransmit", None),
    E.GIVE_UP: ("give_up", S.CLOSED),
    E.PERSIST: ("probe", None),
    E.TIME_WAIT_EXPIRY: ("ignore", None),
}

_ROWS: Final[dict[State, _Row]] = {
    S.CLOSED: {
        **{e: ("reply_rst", None) for e in _COMMON if e not in {E.SEND, E.CLOSE, E.ABORT}},
        E.RTO: ("ignore", None),
        E.GIVE_UP: ("ignore", None),
        E.PERSIST: ("ignore", None),
        E.TIME_WAIT_EXPIRY: ("ignore", None),
        E.SEND: ("error", None),
        E.CLOSE: ("ignore", None),
        E.ABORT: ("ignore", None),
        E.OPEN: ("connect", S.SYN_SENT),
    },
    S.LISTEN: {E.SYN: ("accept", S.SYN_RCVD)},
    S.SYN_SENT: {
        E.SYN: ("simultaneous_open", S.SYN_RCVD),
        E.SYN_ACK: ("establish", S.ESTABLISHED),
        E.SYN_FIN: ("drop", None),
        E.SYN_RETRANSMIT: ("drop", None),
        E.RST: ("refuse", S.CLOSED),
        E.RST_INEXACT: ("drop", None),
        E.RST_UNACCEPTABLE: ("drop", None),
        E.UNACCEPTABLE: ("drop", None),
        E.NO_ACK: ("drop", None),
        E.BAD_ACK: ("send_rst", None),
        E.ACK: ("drop", None),
        E.FIN_ACKED: ("drop", None),
        E.FIN: ("drop", None),
        E.SEND: ("queue", None),
        E.CLOSE: ("forget", S.CLOSED),
        E.ABORT: ("forget", S.CLOSED),
        E.RTO: ("retransmit", None),
        E.GIVE_UP: ("give_up", S.CLOSED),
        E.PERSIST: ("ignore", None),
        E.TIME_WAIT_EXPIRY: ("ignore", None),
    },
    S.SYN_RCVD: {
        **_COMMON,
        E.SYN_RETRANSMIT: ("resend_syn_ack", None),
        E.BAD_ACK: ("send_rst", None),
        E.ACK: ("establish_passive", S.ESTABLISHED),
        E.FIN_ACKED: ("establish_passive", S.ESTABLISHED),
        E.FIN: ("fin", S.CLOSE_WAIT),
        E.SEND: ("queue", None),
        E.CLOSE: ("queue_fin", S.FIN_WAIT_1),
    },
    S.ESTABLISHED: {
        **_COMMON,
        E.FIN: ("fin", S.CLOSE_WAIT),
        E.SEND: ("queue", None),
        E.CLOSE: ("queue_fin", S.FIN_WAIT_1),
    },
    S.FIN_WAIT_1: {
        **_COMMON,
        E.FIN_ACKED: ("ack", S.FIN_WAIT_2),
        E.FIN: ("fin", S.CLOSING),
    },
    S.FIN_WAIT_2: {
        **_COMMON,
        E.FIN: ("fin", S.TIME_WAIT),
    },
    S.CLOSE_WAIT: {
        **_COMMON,
        E.SEND: ("queue", None),
        E.CLOSE: ("queue_fin", S.LAST_ACK),
    },
    S.CLOSING: {
        **_COMMON,
        E.FIN_ACKED: ("ack", S.TIME_WAIT),
        E.ABORT: ("forget", S.CLOSED),
    },
    S.LAST_ACK: {
        **_COMMON,
        E.FIN_ACKED: ("ack", S.CLOSED),
        E.ABORT: ("forget", S.CLOSED),
    },
    S.TIME_WAIT: {
        **_COMMON,
        E.RST: ("drop", None),
        E.UNACCEPTABLE: ("time_wait_ack", None),
        E.SYN_RETRANSMIT: ("time_wait_ack", None),
        E.ACK: ("drop", None),
        E.FIN_ACKED: ("drop", None),
        E.FIN: ("time_wait_ack", None),
        E.ABORT: ("forget", S.CLOSED),
        E.RTO: ("ignore", None),
        E.GIVE_UP: ("ignore", None),
        E.PERSIST: ("ignore", None),
        E.TIME_WAIT_EXPIRY: ("expire", S.CLOSED),
    },
}

#: ``(state, event) -> (action, next state)``: the whole state machine.
TRANSITIONS: Final[dict[tuple[State, Event], tuple[str, State]]] = {
    (state, event): (action, state if nxt is None else nxt)
    for state, row in _ROWS.items()
    for event, (action, nxt) in row.items()
}


def _check_total() -> None:
    for state in State:
        for event in Event:
            expected = (
                event is E.SYN
                if state is S.LISTEN
                else (state is S.CLOSED if event is E.OPEN else True)
            )
            if ((state, event) in TRANSITIONS) != expected:
                raise AssertionError(f"TRANSITIONS: ({state}, {event}) is wrong")


_check_total()


# -- the result of a call -----------------------------------------------------------


class Actions(msgspec.Struct, kw_only=True):
    """What one call asks the caller to do (see the module docstring)."""

    #: to transmit, in this order
    segments: list[Segment] = msgspec.field(default_factory=list)
    #: timer kind -> absolute time to fire at, or None to cancel it
    timers: dict[str, float | None] = msgspec.field(default_factory=dict)
    #: new in-order data for the application
    delivered: bytes = b""
    #: what happened, for the application
    events: list[str] = msgspec.field(default_factory=list)
    #: counter increments, by nstat name
    counters: dict[str, int] = msgspec.field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + n


# -- the connection -------------------------------------------------------------------

#: The fields of a Tcb that make its state, in :meth:`Tcb.to_plain`'s order.
_FIELDS: Final = (
    "state",
    "local_port",
    "remote_port",
    "passive_open",
    "msl",
    "max_retries",
    "syn_retries",
    # send side
    "iss",
    "snd_una",
    "snd_nxt",
    "snd_max",
    "snd_wnd",
    "snd_wl1",
    "snd_wl2",
    "max_snd_wnd",
    "snd_wscale",
    "sbuf",
    "buf_seq",
    "fin_queued",
    "fin_seq",
    "our_mss",
    "mss",
    "wscale_offer",
    # congestion control and RTT
    "cwnd",
    "ssthresh",
    "dupacks",
    "limited",
    "in_recovery",
    "recover",
    "srtt",
    "rttvar",
    "rto",
    "rtt_seq",
    "rtt_at",
    "retries",
    "persist_backoff",
    # receive side
    "irs",
    "rcv_nxt",
    "rcv_adv",
    "rcv_wscale",
    "rcv_buffer",
    "rcv_unread",
    "rcv_total",
    "ooo",
    "rfin_off",
    "remote_fin",
    # armed timers: kind -> absolute time
    "timers",
)


class Tcb:
    """One TCP connection: all of its state, and the engine that updates it.

    Build one with :meth:`passive` or :meth:`active`; see the module docstring.
    """

    __slots__ = (
        *_FIELDS,
        "_fin_reached",
        "_force_ack",
        "_need_ack",
        "_now",
        "_out",
        "_rto_restart",
        "_rx",
    )

    state: State
    local_port: int
    remote_port: int
    #: made by :meth:`passive` (a SYN arrived), not :meth:`active`
    passive_open: bool
    msl: float
    max_retries: int
    syn_retries: int
    iss: int
    snd_una: int
    snd_nxt: int
    snd_max: int
    snd_wnd: int
    snd_wl1: int
    snd_wl2: int
    max_snd_wnd: int
    snd_wscale: int
    sbuf: bytearray
    buf_seq: int
    fin_queued: bool
    fin_seq: int | None
    our_mss: int
    mss: int
    wscale_offer: int | None
    cwnd: int
    ssthresh: int
    dupacks: int
    limited: int
    in_recovery: bool
    recover: int
    srtt: float | None
    rttvar: float
    rto: float
    rtt_seq: int | None
    rtt_at: float
    retries: int
    persist_backoff: int
    irs: int
    rcv_nxt: int
    rcv_adv: int
    rcv_wscale: int
    rcv_buffer: int
    rcv_unread: int
    rcv_total: int
    ooo: list[list[Any]]
    rfin_off: int | None
    remote_fin: bool
    timers: dict[str, float]
    # per call, not state
    _out: Actions
    _rx: list[bytes]
    _now: float
    _need_ack: bool
    _force_ack: bool
    _fin_reached: bool
    _rto_restart: bool

    def __init__(
        self,
        local_port: int,
        remote_port: int,
        iss: int,
        *,
        mss: int = 1460,
        wscale: int | None = 7,
        rcv_buffer: int = 1 << 20,
        msl: float = 30.0,
        max_retries: int = 15,
        syn_retries: int = 6,
    ) -> None:
        """A Tcb in CLOSED; use :meth:`passive` or :meth:`active` instead."""
        if not 0 <= iss < MOD:
            raise ValueError(f"iss {iss} is not a 32-bit sequence number")
        if mss < MIN_MSS or rcv_buffer < 1 or (wscale is not None and not 0 <= wscale <= 14):
            raise ValueError("bad mss, rcv_buffer or wscale")
        self.state = S.CLOSED
        self.local_port = local_port
        self.remote_port = remote_port
        self.passive_open = False
        self.msl = msl
        self.max_retries = max_retries
        self.syn_retries = syn_retries
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.sbuf = bytearray()
        self.buf_seq = seq_add(iss, 1)
        self.fin_queued = False
        self.fin_seq = None
        self.our_mss = mss
        self.mss = min(mss, DEFAULT_MSS)
        if wscale is not None:
            # no more than the buffer needs (as Linux's tcp_select_initial_window):
            # a larger scale would round a small free space down to a zero window
            needed = max((rcv_buffer - 1).bit_length() - 16, 0)
            wscale = min(wscale, needed)
        self.wscale_offer = wscale
        self.cwnd = INITIAL_WINDOW * self.mss
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.limited = 0
        self.in_recovery = False
        self.recover = iss
        self.srtt = None
        self.rttvar = 0.0
        self.rto = RTO_INITIAL
        self.rtt_seq = None
        self.rtt_at = 0.0
        self.retries = 0
        self.persist_backoff = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.rcv_buffer = rcv_buffer
        self.rcv_unread = 0
        self.rcv_total = 0
        self.ooo = []
        self.rfin_off = None
        self.remote_fin = False
        self.timers = {}
        self._begin(0.0)

    # -- constructors ------------------------------------------------------------

    @classmethod
    def passive(
        cls,
        local_port: int,
        remote_port: int,
        syn: Segment,
        iss: int,
        now: float,
        *,
        mss: int = 1460,
        wscale: int | None = 7,
        rcv_buffer: int = 1 << 20,
        msl: float = 30.0,
        max_retries: int = 15,
        syn_retries: int = 6,
    ) -> tuple[Tcb, Actions]:
        """A connection for ``syn`` (SYN without ACK, RST or FIN) to a listening port.

        The Tcb is in SYN_RCVD; the actions carry the SYN-ACK.  ``wscale`` is the
        largest window scale to offer (the scale offered is the smallest that lets
        the window field cover ``rcv_buffer``); None never offers window scaling.
        """
        if syn.flags & (SYN | ACK | RST | FIN) != SYN:
            raise ValueError(f"passive open needs a SYN, got {syn!r}")
        tcb = cls(
            local_port,
            remote_port,
            iss,
            mss=mss,
            wscale=wscale,
            rcv_buffer=rcv_buffer,
            msl=msl,
            max_retries=max_retries,
            syn_retries=syn_retries,
        )
        tcb.state = S.LISTEN
        tcb.passive_open = True
        tcb._begin(now)
        tcb._step(E.SYN, syn)
        return tcb, tcb._finish()

    @classmethod
    def active(
        cls,
        local_port: int,
        remote_port: int,
        iss: int,
        now: float,
        *,
        mss: int = 1460,
        wscale: int | None = 7,
        rcv_buffer: int = 1 << 20,
        msl: float = 30.0,
        max_retries: int = 15,
        syn_retries: int = 6,
    ) -> tuple[Tcb, Actions]:
        """A connection we open: the Tcb is in SYN_SENT, the actions carry the SYN."""
        tcb = cls(
            local_port,
            remote_port,
            iss,
            mss=mss,
            wscale=wscale,
            rcv_buffer=rcv_buffer,
            msl=msl,
            max_retries=max_retries,
            syn_retries=syn_retries,
        )
        tcb._begin(now)
        tcb._step(E.OPEN, None)
        return tcb, tcb._finish()

    # -- snapshots -----------------------------------------------------------------

    def to_plain(self) -> dict[str, Any]:
        """The whole state as plain data (msgpack-able); see :meth:`from_plain`."""
        d: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        d["state"] = self.state.value
        d["sbuf"] = bytes(self.sbuf)
        d["ooo"] = [[off, data] for off, data in self.ooo]
        d["timers"] = dict(self.timers)
        return d

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> Tcb:
        """The Tcb :meth:`to_plain` described (after any plain-data round trip)."""
        tcb = cls.__new__(cls)
        for name in _FIELDS:
            setattr(tcb, name, d[name])
        tcb.state = State(d["state"])
        tcb.sbuf = bytearray(d["sbuf"])
        tcb.ooo = [[int(off), bytes(data)] for off, data in d["ooo"]]
        tcb.timers = {str(k): float(v) for k, v in d["timers"].items()}
        tcb._begin(0.0)
        return tcb

    def __repr__(self) -> str:
        return (
            f"<Tcb {self.local_port}>{self.remote_port} {self.state.value} "
            f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>"
        )

    # -- the calls -------------------------------------------------------------------

    def on_segment(self, seg: Segment, now: float) -> Actions:
        """A segment arrived for this connection."""
        self._begin(now)
        self._out.count("TcpInSegs")
        self._step(self._classify(seg), seg)
        if self._fin_reached:
            self._fin_reached = False
            self._step(E.FIN, seg)
        return self._finish()

    def send(self, data: bytes, now: float) -> Actions:
        """Append ``data`` to the send buffer and send what the windows allow.

        Raises :class:`TcpError` once the connection no longer sends (after
        :meth:`close`, or closed).
        """
        self._begin(now)
        self._step(E.SEND, None, data)
        return self._finish()

    def close(self, now: float) -> Actions:
        """No more data to send: a FIN follows the buffered data."""
        self._begin(now)
        self._step(E.CLOSE, None)
        return self._finish()

    def abort(self, now: float) -> Actions:
        """Drop the connection, with a RST if the peer may hold state for it."""
        self._begin(now)
        self._step(E.ABORT, None)
        return self._finish()

    def on_timer(self, kind: str, now: float) -> Actions:
        """Timer ``kind`` (``"rto"``, ``"persist"`` or ``"time_wait"``) fired.

        A kind no longer armed is ignored; one armed for later than ``now`` is
        re-armed (the actions say when).  Raises :exc:`ValueError` for an
        unknown kind.
        """
        if kind not in (RTO_TIMER, PERSIST_TIMER, TIME_WAIT_TIMER):
            raise ValueError(f"unknown timer kind {kind!r}")
        self._begin(now)
        deadline = self.timers.get(kind)
        if deadline is None:
            return self._finish()
        if now < deadline:
            self._out.timers[kind] = deadline
            return self._finish()
        del self.timers[kind]
        if kind == RTO_TIMER:
            limit = self.syn_retries if self.state in (S.SYN_SENT, S.SYN_RCVD) else self.max_retries
            self._step(E.GIVE_UP if self.retries >= limit else E.RTO, None)
        elif kind == PERSIST_TIMER:
            self._step(E.PERSIST, None)
        else:
            self._step(E.TIME_WAIT_EXPIRY, None)
        return self._finish()

    def consumed(self, n: int, now: float) -> Actions:
        """The application read ``n`` delivered bytes: the receive window opens.

        Sends a window update when the right edge moves by min(MSS, half the
        buffer).  Raises :exc:`ValueError` if more than the unread bytes.
        """
        if not 0 <= n <= self.rcv_unread:
            raise ValueError(f"consumed {n} of {self.rcv_unread} unread bytes")
        self._begin(now)
        self.rcv_unread -= n
        if (
            n
            and self.state in SYNCHRONIZED
            and self.state is not S.SYN_RCVD
            and not self.remote_fin
        ):
            free = self.rcv_buffer - self.rcv_unread
            field = min(free >> self.rcv_wscale, 0xFFFF)
            edge = seq_add(self.rcv_nxt, field << self.rcv_wscale)
            if seq_diff(edge, self.rcv_adv) >= min(self.our_mss, self.rcv_buffer // 2):
                self._need_ack = True
        return self._finish()

    # -- the steps -------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self._out = Actions()
        self._rx = []
        self._now = now
        self._need_ack = False
        self._force_ack = False
        self._fin_reached = False
        self._rto_restart = False

    def _step(self, event: Event, seg: Segment | None, data: bytes = b"") -> None:
        action, nxt = TRANSITIONS[(self.state, event)]
        _ACTIONS[action](self, seg, data)
        if nxt is not self.state:
            self._enter(nxt)

    def _enter(self, state: State) -> None:
        old, self.state = self.state, state
        if state is S.TIME_WAIT:
            self._cancel(RTO_TIMER)
            self._cancel(PERSIST_TIMER)
            self._arm(TIME_WAIT_TIMER, self._now + 2 * self.msl)
        elif state is S.CLOSED:
            for kind in sorted(self.timers):
                self._cancel(kind)
            if old in (S.ESTABLISHED, S.CLOSE_WAIT):
                self._out.count("TcpEstabResets")
            elif old in (S.SYN_SENT, S.SYN_RCVD):
                self._out.count("TcpAttemptFails")
            self.sbuf = bytearray()
            self.ooo = []
            self._need_ack = self._force_ack = False
            self._out.events.append("closed")

    def _finish(self) -> Actions:
        out = self._out
        if self.state is not S.CLOSED:
            if self._force_ack:
                self._send_ack()
            if self.state in _SENDING and self.snd_una != self.iss:
                self._output()
            if self._need_ack and self.state in SYNCHRONIZED:
                self._send_ack()
            self._update_timers()
        if self._rx:
            out.delivered = b"".join(self._rx)
        self._rx = []
        return out

    def _classify(self, seg: Segment) -> Event:
        """The segment's event, after RFC 9293's (and RFC 5961's) checks."""
        f = seg.flags
        state = self.state
        if state is S.CLOSED:
            return E.RST_UNACCEPTABLE if f & RST else E.UNACCEPTABLE
        if f & SYN and f & FIN:
            return E.SYN_FIN
        if state is S.SYN_SENT:
            if f & ACK and not (seq_lt(self.iss, seg.ack) and seq_le(seg.ack, self.snd_max)):
                return E.RST_UNACCEPTABLE if f & RST else E.BAD_ACK
            if f & RST:
                return E.RST if f & ACK else E.RST_UNACCEPTABLE
            if f & SYN:
                return E.SYN_ACK if f & ACK else E.SYN
            return E.ACK if f & ACK else E.NO_ACK
        if f & (SYN | ACK | RST) == SYN and seg.seq == self.irs:
            return E.SYN_RETRANSMIT
        wnd = self._rcv_wnd()
        if f & RST:
            verdict = rst_verdict(seg.seq, self.rcv_nxt, wnd)
            if verdict == "reset":
                return E.RST
            return E.RST_INEXACT if verdict == "challenge" else E.RST_UNACCEPTABLE
        if not segment_acceptable(seg.seq, seg.seg_len, self.rcv_nxt, wnd):
            return E.UNACCEPTABLE
        if f & SYN:
            return E.SYN_ACK if f & ACK else E.SYN
        if not f & ACK:
            return E.NO_ACK
        ack = seg.ack
        if state is S.SYN_RCVD:
            if not (seq_lt(self.snd_una, ack) and seq_le(ack, self.snd_max)):
                return E.BAD_ACK
        elif seq_gt(ack, self.snd_max) or seq_lt(
            ack, seq_add(self.snd_una, -max(self.max_snd_wnd, 1))
        ):
            return E.BAD_ACK
        if self.fin_seq is not None and ack == seq_add(self.fin_seq, 1) and self.snd_una != ack:
            return E.FIN_ACKED
        return E.ACK

    def _rcv_wnd(self) -> int:
        return max(seq_diff(self.rcv_adv, self.rcv_nxt), 0)

    def _window_field(self, free: int) -> int:
        """The (scaled) window field to advertise with ``free`` bytes of buffer free.

        The right edge only moves forward by less than one scale unit (rounding) or
        by min(MSS, half the buffer), as :meth:`consumed`'s window update does
        (receiver SWS avoidance, RFC 9293 3.8.6.2.2): so an ACK sent after a read
        too small for a window update carries the same window as the one before,
        and a sender still counts it as a duplicate (RFC 5681 needs an unchanged
        window).  Never shrinks the edge promised (``rcv_adv``).
        """
        unit = 1 << self.rcv_wscale
        field = min(max(free, 0) >> self.rcv_wscale, 0xFFFF)
        moved = seq_diff(seq_add(self.rcv_nxt, field * unit), self.rcv_adv)
        if moved < unit or moved >= min(self.our_mss, self.rcv_buffer // 2):
            field = max(field, self._rcv_wnd() // unit)
        else:
            field = self._rcv_wnd() // unit
        return min(field, 0xFFFF)

    # -- actions (the table's second column) --------------------------------------------

    def _a_ignore(self, seg: Segment | None, data: bytes) -> None:
        """Nothing to do (a call or timer that does not apply)."""

    def _a_drop(self, seg: Segment | None, data: bytes) -> None:
        """Drop the segment silently."""

    def _a_error(self, seg: Segment | None, data: bytes) -> None:
        raise TcpError(f"connection {self.state.value}: cannot send")

    def _a_connect(self, seg: Segment | None, data: bytes) -> None:
        self._out.count("TcpActiveOpens")
        self._send_syn(False)

    def _a_accept(self, seg: Segment | None, data: bytes) -> None:
        assert seg is not None
        self._out.count("TcpPassiveOpens")
        self._learn_syn(seg)
        self.snd_wnd = seg.window
        self.max_snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = self.iss
        self._send_syn(True)

    def _a_simultaneous_open(self, seg: Segment | None, data: bytes) -> None:
        assert seg is not None
        self._learn_syn(seg)
        self.snd_wnd = seg.window
        self.max_snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = self.iss
        self._send_syn(True)

    def _a_resend_syn_ack(self, seg: Segment | None, data: bytes) -> None:
        self._send_syn(True)

    def _a_establish(self, seg: Segment | None, data: bytes) -> None:
        """SYN_SENT got an acceptable SYN-ACK."""
        assert seg is not None
        self._learn_syn(seg)
        self._ack_advance(seg.ack)
        self.snd_wnd = seg.window
        self.max_snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self._need_ack = True
        self._out.events.append("established")

    def _a_establish_passive(self, seg: Segment | None, data: bytes) -> None:
        """SYN_RCVD got the handshake's ACK: continue as ESTABLISHED would."""
        self._out.events.append("established")
        self._a_ack(seg, data)

    def _a_ack(self, seg: Segment | None, data: bytes) -> None:
        """An acceptable segment: its ACK and window, then its data and FIN."""
        assert seg is not None
        self._process_ack(seg)
        if not self.remote_fin:
            self._receive(seg)

    def _a_fin(self, seg: Segment | None, data: bytes) -> None:
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self.remote_fin = True
        self._need_ack = True
        self._out.events.append("remote_fin")

    def _a_send_ack(self, seg: Segment | None, data: bytes) -> None:
        self._send_ack()

    def _a_time_wait_ack(self, seg: Segment | None, data: bytes) -> None:
        """TIME_WAIT: the peer's FIN again; ACK it and restart the 2 MSL timer."""
        self._send_ack()
        self._arm(TIME_WAIT_TIMER, self._now + 2 * self.msl)

    def _a_challenge_ack(self, seg: Segment | None, data: bytes) -> None:
        assert seg is not None
        self._out.count("TcpExtTCPChallengeACK")
        if seg.flags & SYN:
            self._out.count("TcpExtTCPSYNChallenge")
        self._send_ack()

    def _a_send_rst(self, seg: Segment | None, data: bytes) -> None:
        """An unacceptable ACK before synchronization: ``<SEQ=SEG.ACK><CTL=RST>``."""
        assert seg is not None
        self._emit(seg.ack, RST)

    def _a_reply_rst(self, seg: Segment | None, data: bytes) -> None:
        assert seg is not None
        reply = reset_for(seg)
        if reply is not None:
            self._out.segments.append(reply)
            self._out.count("TcpOutSegs")
            self._out.count("TcpOutRsts")

    def _a_reset(self, seg: Segment | None, data: bytes) -> None:
        self._out.events.append("reset")

    def _a_refuse(self, seg: Segment | None, data: bytes) -> None:
        self._out.events.append("refused")

    def _a_forget(self, seg: Segment | None, data: bytes) -> None:
        """Delete the connection without telling the peer."""

    def _a_abort(self, seg: Segment | None, data: bytes) -> None:
        self._emit(self._ack_seq(), RST)

    def _a_give_up(self, seg: Segment | None, data: bytes) -> None:
        self._out.count("TcpExtTCPAbortOnTimeout")
        self._out.events.append("timeout")

    def _a_expire(self, seg: Segment | None, data: bytes) -> None:
        """TIME_WAIT is over."""

    def _a_queue(self, seg: Segment | None, data: bytes) -> None:
        self.sbuf += data

    def _a_queue_fin(self, seg: Segment | None, data: bytes) -> None:
        self.fin_queued = True

    def _a_retransmit(self, seg: Segment | None, data: bytes) -> None:
        """RFC 6298 5.4-5.6: back off, resend the head, go back to SND.UNA."""
        if self.snd_max == self.snd_una:
            return
        out = self._out
        out.count("TcpExtTCPTimeouts")
        self.retries += 1
        self.rto = min(self.rto * 2, RTO_MAX)
        self.rtt_seq = None
        self._rto_restart = True
        if self.snd_una == self.iss:
            out.count("TcpExtTCPSynRetrans")
            self._send_syn(self.state is not S.SYN_SENT)
            return
        flight = seq_diff(self.snd_max, self.snd_una)
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.in_recovery = False
        self.dupacks = 0
        self.limited = 0
        self.recover = self.snd_max
        self.snd_nxt = seq_add(self.snd_una, self._resend_head())

    def _a_probe(self, seg: Segment | None, data: bytes) -> None:
        """Zero-window probe (Linux's): an ACK at ``snd_una - 1``, answered with the window."""
        if self.snd_wnd or not self._unsent():
            return
        self._out.count("TcpExtTCPWinProbe")
        self.persist_backoff += 1
        self._emit(seq_add(self.snd_una, -1), ACK)

    # -- receiving -------------------------------------------------------------------------

    def _learn_syn(self, seg: Segment) -> None:
        """Take the peer's ISN and options from its SYN."""
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self.rcv_adv = self.rcv_nxt
        self.mss = max(min(self.our_mss, seg.mss if seg.mss is not None else DEFAULT_MSS), MIN_MSS)
        self.cwnd = INITIAL_WINDOW * self.mss
        if seg.wscale is not None and self.wscale_offer is not None:
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            self.rcv_wscale = self.wscale_offer
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
            self.wscale_offer = None

    def _receive(self, seg: Segment) -> None:
        """Take in the segment's data (trimmed to the window) and note its FIN."""
        payload = seg.payload
        fin = bool(seg.flags & FIN)
        if not payload and not fin:
            return
        self._need_ack = True
        start = seq_diff(seg.seq, self.rcv_nxt)
        end = start + len(payload)
        wnd = self._rcv_wnd()
        if end > wnd:
            payload = payload[: max(wnd - start, 0)]
            end = start + len(payload)
            fin = False
        if start < 0:
            payload = payload[-start:] if end > 0 else b""
            start = min(end, 0) if not payload else 0
        base = self.rcv_total
        if fin and self.rfin_off is None and end >= 0:
            self.rfin_off = base + end
        if self.rfin_off is not None and base + start + len(payload) > self.rfin_off:
            payload = payload[: max(self.rfin_off - base - start, 0)]  # nothing after a FIN
        if start == 0:
            if payload:
                self._deliver(payload)
            if self.ooo:
                self._drain()
        elif payload:
            self._out.count("TcpExtTCPOFOQueue")
            self._insert(base + start, payload)
            self._force_ack = True
        elif start > 0:
            self._force_ack = True
        if self.rfin_off is not None and self.rfin_off == self.rcv_total:
            self._fin_reached = True

    def _deliver(self, data: bytes) -> None:
        self._rx.append(data)
        n = len(data)
        self.rcv_nxt = seq_add(self.rcv_nxt, n)
        self.rcv_total += n
        self.rcv_unread += n

    def _drain(self) -> None:
        ooo = self.ooo
        while ooo and ooo[0][0] <= self.rcv_total:
            off, data = ooo.pop(0)
            skip = self.rcv_total - off
            if skip < len(data):
                self._deliver(data[skip:])

    def _insert(self, off: int, data: bytes) -> None:
        """Queue ``data`` at stream offset ``off``, keeping blocks disjoint and sorted."""
        end = off + len(data)
        pieces: list[list[Any]] = []
        cur = off
        for boff, bdata in self.ooo:
            bend = boff + len(bdata)
            if bend <= cur:
                continue
            if boff >= end:
                break
            if boff > cur:
                pieces.append([cur, data[cur - off : boff - off]])
            cur = max(cur, bend)
            if cur >= end:
                break
        if cur < end:
            pieces.append([cur, data[cur - off :]])
        if pieces:
            self.ooo.extend(pieces)
            self.ooo.sort(key=lambda block: int(block[0]))

    # -- acknowledgments ------------------------------------------------------------------

    def _ack_advance(self, ack: int) -> int:
        """SND.UNA moves to ``ack``: trim the buffer, take an RTT sample.  Returns the advance."""
        advance = seq_diff(ack, self.snd_una)
        if advance <= 0:
            return 0
        data_end = seq_add(self.buf_seq, len(self.sbuf))
        upto = ack if seq_le(ack, data_end) else data_end
        n = seq_diff(upto, self.buf_seq)
        if n > 0:
            del self.sbuf[:n]
            self.buf_seq = upto
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self.retries = 0
        self._rto_restart = True
        if self.rtt_seq is not None and seq_ge(ack, self.rtt_seq):
            self._rtt_sample(self._now - self.rtt_at)
            self.rtt_seq = None
        return advance

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2-2.3 (with Linux's 0.2 s floor)."""
        if r < 0:
            return
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + 4 * self.rttvar, RTO_MIN), RTO_MAX)

    def _process_ack(self, seg: Segment) -> None:
        """RFC 9293's ACK step in a synchronized state, with RFC 5681/6582."""
        ack = seg.ack
        mss = self.mss
        d = seq_diff(ack, self.snd_una)
        new_wnd = seg.window << self.snd_wscale
        if d > 0:
            self._ack_advance(ack)
            if self.in_recovery:
                if seq_ge(ack, self.recover):
                    flight = seq_diff(self.snd_max, self.snd_una)
                    self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
                    self.in_recovery = False
                    self.dupacks = 0
                    self.limited = 0
                else:
                    self._resend_head()
                    self.cwnd = max(self.cwnd - d + (mss if d >= mss else 0), mss)
            else:
                self.dupacks = 0
                self.limited = 0
                if self.cwnd < self.ssthresh:
                    self.cwnd += min(d, mss)
                else:
                    self.cwnd += max(mss * mss // self.cwnd, 1)
        elif (
            d == 0
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and new_wnd == self.snd_wnd
            and self.snd_max != self.snd_una
        ):
            self.dupacks += 1
            if self.in_recovery:
                self.cwnd += mss
            elif self.dupacks == 3 and seq_ge(ack, self.recover):
                self._out.count("TcpExtTCPFastRetrans")
                # RFC 5681 3.2: what limited transmit sent is not in FlightSize here
                flight = seq_diff(self.snd_max, self.snd_una) - self.limited
                self.ssthresh = max(flight // 2, 2 * mss)
                self.recover = self.snd_max
                self.in_recovery = True
                self.rtt_seq = None
                self._resend_head()
                self.cwnd = self.ssthresh + 3 * mss
        if d >= 0 and (
            seq_lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and seq_le(self.snd_wl2, ack))
        ):
            self.snd_wnd = new_wnd
            self.snd_wl1 = seg.seq
            self.snd_wl2 = ack
            self.max_snd_wnd = max(self.max_snd_wnd, new_wnd)
            if new_wnd:
                self.persist_backoff = 0

    # -- sending ---------------------------------------------------------------------------

    def _unsent(self) -> bool:
        """Data or a FIN not sent yet."""
        off = seq_diff(self.snd_nxt, self.buf_seq)
        return off < len(self.sbuf) or (self.fin_queued and off == len(self.sbuf))

    def _output(self) -> None:
        """Send new data (and the FIN) as the windows allow."""
        mss = self.mss
        cwnd = self.cwnd
        if not self.in_recovery and self.dupacks in (1, 2) and self.snd_nxt == self.snd_max:
            # RFC 3042 limited transmit: a new segment for each of the first two
            # duplicate ACKs, so that a small window still gets three of them
            cwnd += self.dupacks * mss
        while True:
            off = seq_diff(self.snd_nxt, self.buf_seq)
            rem = len(self.sbuf) - off
            if rem > 0:
                flight = seq_diff(self.snd_nxt, self.snd_una)
                usable = min(self.snd_wnd, cwnd) - flight
                n = min(mss, usable, rem)
                if n <= 0 or (n < mss and n < rem and flight > 0):
                    return
            elif rem == 0 and self.fin_queued:
                n = 0
            else:
                return
            sent = self._xmit(self.snd_nxt, n)
            if not sent:
                return
            self.snd_nxt = seq_add(self.snd_nxt, sent)
            if cwnd > self.cwnd:
                flight = seq_diff(self.snd_nxt, self.snd_una)
                self.limited += max(flight - max(self.cwnd, flight - sent), 0)

    def _resend_head(self) -> int:
        """Resend the first unacknowledged segment: at most one MSS and, as Linux does,
        no more than the peer's window (at least one byte, a probe if it is zero)."""
        return self._xmit(self.snd_una, min(self.mss, max(self.snd_wnd, 1)))

    def _xmit(self, seq: int, maxlen: int) -> int:
        """Send (or resend) up to ``maxlen`` data bytes at ``seq``, with the FIN if it
        follows them.  Returns the sequence space sent; does not move SND.NXT."""
        off = seq_diff(seq, self.buf_seq)
        rem = len(self.sbuf) - off
        if rem < 0:
            return 0
        n = min(maxlen, rem)
        flags = ACK
        payload = b""
        if n > 0:
            payload = bytes(self.sbuf[off : off + n])
            if n == rem:
                flags |= PSH
        if self.fin_queued and n == rem:
            flags |= FIN
            if self.fin_seq is None:
                self.fin_seq = seq_add(seq, n)
        length = n + (1 if flags & FIN else 0)
        if length == 0:
            return 0
        end = seq_add(seq, length)
        if seq_lt(seq, self.snd_max):
            self._out.count("TcpRetransSegs")
            self.rtt_seq = None
        elif self.rtt_seq is None:
            self.rtt_seq = end
            self.rtt_at = self._now
        self._emit(seq, flags, payload)
        if seq_gt(end, self.snd_max):
            self.snd_max = end
        return length

    def _send_syn(self, synack: bool) -> None:
        """Send our SYN (a SYN-ACK once the peer's ISN is known), or send it again."""
        if self.snd_max != self.iss:
            self._out.count("TcpRetransSegs")
            self.rtt_seq = None
        else:
            self.rtt_seq = seq_add(self.iss, 1)
            self.rtt_at = self._now
        self._emit(self.iss, SYN | ACK if synack else SYN, syn=True)
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)

    def _ack_seq(self) -> int:
        """The sequence number for a segment without data (Linux's tcp_acceptable_seq).

        The highest sent, SND.MAX, not SND.NXT: after a timeout SND.NXT goes back to
        SND.UNA, and the peer, which may have received up to SND.MAX, would find a
        pure ACK at SND.NXT unacceptable and ignore the ACK it carries; both ends
        doing so at once deadlocks.  Capped at the peer's window's right edge.
        """
        edge = seq_add(self.snd_una, self.snd_wnd)
        return self.snd_max if seq_le(self.snd_max, edge) else edge

    def _send_ack(self) -> None:
        self._emit(self._ack_seq(), ACK)

    def _emit(self, seq: int, flags: int, payload: bytes = b"", *, syn: bool = False) -> None:
        out = self._out
        if flags & RST:
            seg = Segment(self.local_port, self.remote_port, seq, 0, flags, 0)
            out.count("TcpOutRsts")
        else:
            free = max(self.rcv_buffer - self.rcv_unread, 0)
            if syn:
                window = min(free, 0xFFFF)
                if flags & ACK:
                    self.rcv_adv = seq_add(self.rcv_nxt, window)
            else:
                window = self._window_field(free)
                edge = seq_add(self.rcv_nxt, window << self.rcv_wscale)
                if seq_gt(edge, self.rcv_adv):
                    self.rcv_adv = edge
            seg = Segment(
                self.local_port,
                self.remote_port,
                seq,
                self.rcv_nxt if flags & ACK else 0,
                flags,
                window,
                payload,
                mss=self.our_mss if syn else None,
                wscale=self.wscale_offer if syn else None,
            )
            if flags & ACK:
                self._need_ack = False
        out.segments.append(seg)
        out.count("TcpOutSegs")

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, kind: str, at: float) -> None:
        self.timers[kind] = at
        self._out.timers[kind] = at

    def _cancel(self, kind: str) -> None:
        if self.timers.pop(kind, None) is not None:
            self._out.timers[kind] = None

    def _update_timers(self) -> None:
        """RFC 6298 5.1-5.3 for "rto"; "persist" while a zero window holds data back."""
        if self.state is S.TIME_WAIT:
            return
        if self.snd_max != self.snd_una:
            if self._rto_restart or RTO_TIMER not in self.timers:
                self._arm(RTO_TIMER, self._now + self.rto)
            self._cancel(PERSIST_TIMER)
            return
        self._cancel(RTO_TIMER)
        if self.snd_wnd == 0 and self.state in _SENDING and self._unsent():
            if PERSIST_TIMER not in self.timers:
                interval = min(max(self.rto, RTO_MIN) * (1 << min(self.persist_backoff, 10)), 60)
                self._arm(PERSIST_TIMER, self._now + interval)
        else:
            self._cancel(PERSIST_TIMER)


_Action = Callable[[Tcb, Segment | None, bytes], None]

#: The table's action names, bound to the methods that do them.
_ACTIONS: Final[dict[str, _Action]] = {
    name: getattr(Tcb, "_a_" + name) for name in {a for a, _ in TRANSITIONS.values()}
}
