"""The values every micro-protocol shares: events, segments and sessions.

A :class:`Segment` is one unit of the transport, in the replicated state (a
micro-protocol keeps the segments it may have to send again) and on the way
through the handlers.  A :class:`Session` is the state that several
micro-protocols read and write (Cactus's *shared variables*): the sequence
counters, the sending allowance, the round-trip estimate.  Each
micro-protocol keeps whatever else it needs in its own component.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = (
    "ACK",
    "ACK_RECEIVED",
    "CLOSED",
    "DATA",
    "DATAGRAM",
    "DATAGRAM_FROM_NET",
    "DELIVER_TO_APP",
    "DRAINED",
    "ERROR",
    "EVENTS",
    "LOSS",
    "MESSAGE",
    "NAK",
    "NAK_RECEIVED",
    "OACK",
    "OPENED",
    "PARITY",
    "PUMP",
    "RTT_SAMPLE",
    "SEGMENT_FROM_APP",
    "SEGMENT_OUT",
    "SEGMENT_TO_NET",
    "SEND",
    "TIMEOUT",
    "Segment",
    "Session",
    "UNLIMITED",
)

# --- events (every name a micro-protocol may bind) -------------------------------------------

#: ``(sid, source)``: the application hands the transport a message (bytes, or a file)
SEND: Final = "ctp.send"
#: ``(sid)``: there may be room to send: segmentation cuts the next segments
PUMP: Final = "ctp.pump"
#: ``(sid, seg)``: a new segment from the application, before it is numbered and sent
SEGMENT_FROM_APP: Final = "ctp.segment_from_app"
#: ``(sid, seg)``: a numbered segment leaves for the first time
SEGMENT_OUT: Final = "ctp.segment_out"
#: ``(sid, seg)``: a segment (data, acknowledgement, parity, ...) to encode and send
SEGMENT_TO_NET: Final = "ctp.segment_to_net"
#: ``(sid, data, host, port)``: a raw datagram, before any codec looked at it
DATAGRAM: Final = "ctp.datagram"
#: ``(sid, seg)``: a decoded data or parity segment from the peer
DATAGRAM_FROM_NET: Final = "ctp.datagram_from_net"
#: ``(sid, seg)``: an acknowledgement (``seg.ack``: every seq below it; ``seg.sack``: more)
ACK_RECEIVED: Final = "ctp.ack_received"
#: ``(sid, seg)``: a negative acknowledgement (``seg.sack``: the seqs the peer misses)
NAK_RECEIVED: Final = "ctp.nak_received"
#: ``(sid)``: the retransmission timer of a session expired (a replicated timer)
TIMEOUT: Final = "ctp.timeout"
#: ``(sid, why)``: a loss was detected (``"timeout"`` or ``"nak"``)
LOSS: Final = "ctp.loss"
#: ``(sid, rtt)``: a round-trip time was measured
RTT_SAMPLE: Final = "ctp.rtt_sample"
#: ``(sid, seg)``: a data segment for the application (in order, if the profile orders)
DELIVER_TO_APP: Final = "ctp.deliver_to_app"
#: ``(sid, msg, data)``: a whole message, reassembled
MESSAGE: Final = "ctp.message"
#: ``(sid)``: a session began
OPENED: Final = "ctp.opened"
#: ``(sid, reason)``: a session ended (``"done"``, ``"timeout"``, ``"idle"``, an error)
CLOSED: Final = "ctp.closed"
#: ``(sid)``: everything sent was acknowledged and nothing waits
DRAINED: Final = "ctp.drained"

EVENTS: Final = (
    SEND,
    PUMP,
    SEGMENT_FROM_APP,
    SEGMENT_OUT,
    SEGMENT_TO_NET,
    DATAGRAM,
    DATAGRAM_FROM_NET,
    ACK_RECEIVED,
    NAK_RECEIVED,
    TIMEOUT,
    LOSS,
    RTT_SAMPLE,
    DELIVER_TO_APP,
    MESSAGE,
    OPENED,
    CLOSED,
    DRAINED,
)

# --- segment kinds ------------------------------------------------------------------------------

DATA: Final = 1
ACK: Final = 2
NAK: Final = 3
PARITY: Final = 4
#: TFTP only: an option acknowledgement (RFC 2347), sent and retransmitted as seq 0
OACK: Final = 5
#: an error for the peer (TFTP's ERROR packet; the native wire's close)
ERROR: Final = 6

#: no limit (a window or congestion window that is not configured)
UNLIMITED: Final = 1 << 30


class Segment(msgspec.Struct, omit_defaults=True):
    """One segment.  Fields a micro-protocol does not use keep their defaults."""

    kind: int
    #: the sequence number (data, parity: the group's first seq)
    seq: int = 0
    #: acknowledgements: every seq below ``ack`` arrived
    ack: int = 0
    #: acknowledgements: more seqs that arrived (selective); NAK: the seqs missing
    sack: list[int] = []
    #: the receiver's advertised window, in segments (flow control)
    wnd: int = UNLIMITED
    #: the bytes carried (empty when ``src`` names a file)
    payload: bytes = b""
    #: a file the payload is read from at send time (``off``, ``length``), by the owner
    src: str = ""
    length: int = 0
    #: segmentation: the message this segment is part of, its offset and total length
    msg: int = 0
    off: int = 0
    total: int = 0
    #: forward error correction: the group, this block's index, the group's k
    group: int = -1
    index: int = 0
    k: int = 0
    #: when it was first sent (replicated time), and how often again
    sent: float = 0.0
    retx: int = 0
    last_tx: float = 0.0
    #: on receipt: already seen (set by sequencing), rebuilt by FEC
    dup: bool = False
    recovered: bool = False
    #: OACK: the options
    options: dict[str, str] = {}

    def size(self) -> int:
        """The payload's length, whether carried or read from a file at send time."""
        return self.length if self.src else len(self.payload)


class Session(msgspec.Struct, omit_defaults=True):
    """One peer and channel: the variables several micro-protocols share."""

    sid: str
    host: str
    port: int
    channel: int = 0
    opened: float = 0.0
    #: replicated time of the last datagram from the peer
    last: float = 0.0
    #: sending: the next seq to assign, segments sent and not acknowledged
    snd_next: int = 0
    in_flight: int = 0
    #: how many segments may be in flight: the receiver's window, the congestion
    #: window (flow control and congestion control narrow them)
    rwnd: int = UNLIMITED
    cwnd: float = float(UNLIMITED)
    #: new segments the pacer still allows before its next tick (rate control)
    budget: int = UNLIMITED
    #: the retransmission timeout, and the smoothed round trip (0: no sample yet)
    rto: float = 1.0
    #: the RTO a timeout backs off from: par's static one (or a driver's), until the
    #: RTT estimate gives one
    rto_base: float = 1.0
    #: the RTO was agreed with the peer (TFTP's timeout option): no estimate moves it
    rto_pinned: bool = False
    srtt: float = 0.0
    rttvar: float = 0.0
    #: receiving: every seq below ``rcv_next`` arrived; ``rcv_above``: later ones that did
    rcv_next: int = 0
    rcv_above: list[int] = []
    #: how many segments the acknowledgement being handled released (par sets it)
    newly_acked: int = 0
    #: an application closed it: end once everything is acknowledged
    closing: bool = False
    #: a free-form tag for the driver above (TFTP: "rrq", "wrq")
    role: str = ""
    #: the segment size a driver negotiated for this session (0: segmentation's own)
    mss: int = 0

    def allowance(self) -> int:
        """How many more segments may be sent now."""
        return max(0, min(self.rwnd, int(self.cwnd), self.budget + self.in_flight) - self.in_flight)
