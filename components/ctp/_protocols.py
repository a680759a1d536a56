"""The micro-protocols: each a component, each a few handlers on the transport's events.

Orders within an event (lower runs first; the transport's own handlers run at
90, the codec's at 100):

=====================  =====================================================================
event                  handlers, in order
=====================  =====================================================================
``send``               segmentation 10 (queue the message), transport 90 (pump)
``pump``               segmentation 10 (cut segments while the allowance lasts)
``segment_from_app``   sequencing 10 (number), transport 90 (-> ``segment_out``)
``segment_out``        par 10 (keep, arm the timer), fec 15 (group), transport 90
                       (-> ``segment_to_net``), fec 95 (parity after a full group)
``segment_to_net``     window 50 (advertise), codec 100 (encode, owner sends)
``datagram_from_net``  fec 5 (keep blocks, rebuild), sequencing 10 (mark duplicates),
                       par 15 (acknowledge), nak 16 (report gaps), dedup 20 (drop
                       duplicates), resequence 30 (hold until in order), transport 90
                       (-> ``deliver_to_app``)
``ack_received``       window 5 (peer's window), par 10 (release, sample), aimd 20
                       (grow), transport 90 (pump, drained, close)
``nak_received``       nak 10 (retransmit), transport 90 (pump)
``timeout``            par 10 (retransmit, back off), transport 90 (pump)
``loss``               aimd 10 (shrink)
``rtt_sample``         aimd 10 (RFC 6298 estimate)
``deliver_to_app``     reassembly 10 (whole messages -> ``message``)
=====================  =====================================================================
"""

from __future__ import annotations

import bisect
import struct
from typing import Any, Final

import msgspec
import zfec

from dominoes import Context

from . import _types as t
from ._base import MicroProtocol, register
from ._transport import Transport
from ._types import Segment

__all__ = (
    "Aimd",
    "Dedup",
    "Fec",
    "Nak",
    "Par",
    "Rate",
    "Reassembly",
    "Resequencer",
    "Rtt",
    "Segmentation",
    "Sequencing",
    "Window",
)


def _session(ctx: Context, sid: str) -> t.Session | None:
    return ctx.component(Transport).sessions.get(sid)


@register("segment")
class Segmentation(MicroProtocol):
    """Fixed-size segmentation: each message (bytes, or a file read at send time) is
    cut into ``size``-byte segments as the allowance permits (a pull, so a long file
    is never queued whole).  ``terminal_short``: a message always ends with a
    segment shorter than ``size`` (TFTP: an empty one when the length is a multiple
    of it); otherwise a message of ``n * size`` bytes is ``n`` segments, and an
    empty message one empty segment."""

    binds = (
        (t.SEND, "queue", 10),
        (t.PUMP, "pump", 10),
        ("ctp.backlog", "backlog", 10),
        (t.CLOSED, "forget", 10),
    )

    def __init__(self) -> None:
        #: sid -> messages not fully cut: [msg, data, path, total, next offset, done]
        self.pending: dict[str, list[list[Any]]] = {}
        self.next_msg: dict[str, int] = {}

    def queue(self, ctx: Context, sid: str, data: bytes, path: str, size: int) -> int:
        msg = self.next_msg.get(sid, 0)
        self.next_msg[sid] = msg + 1
        total = size if path else len(data)
        self.pending.setdefault(sid, []).append([msg, data, path, total, 0, False])
        return msg

    def backlog(self, ctx: Context, sid: str) -> int:
        return len(self.pending.get(sid, ()))

    def pump(
        self, ctx: Context, sid: str, *, size: int = 1024, terminal_short: bool = False
    ) -> None:
        queue = self.pending.get(sid)
        s = _session(ctx, sid)
        if not queue or s is None:
            return
        size = s.mss or size
        while queue and s.allowance() > 0 and sid in self.pending:
            item = queue[0]
            msg, data, path, total, off, _ = item
            n = min(size, total - off)
            if path:
                seg = Segment(t.DATA, src=path, length=n, msg=msg, off=off, total=total)
            else:
                seg = Segment(t.DATA, payload=data[off : off + n], msg=msg, off=off, total=total)
            item[4] = off + n
            if s.budget < t.UNLIMITED:
                s.budget -= 1
            last = off + n >= total and (not terminal_short or n < size)
            if last:
                queue.pop(0)
                if not queue:
                    del self.pending[sid]
            ctx.raise_event(t.SEGMENT_FROM_APP, sid, seg)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.pending.pop(sid, None)
        self.next_msg.pop(sid, None)


@register("sequence")
class Sequencing(MicroProtocol):
    """Numbers outgoing segments; on receipt, marks segments already received
    (``seg.dup``) and keeps ``rcv_next``/``rcv_above`` for acknowledgements."""

    binds = (
        (t.SEGMENT_FROM_APP, "number", 10),
        (t.DATAGRAM_FROM_NET, "arrived", 10),
    )

    def number(self, ctx: Context, sid: str, seg: Segment) -> None:
        s = _session(ctx, sid)
        if s is not None:
            seg.seq = s.snd_next
            s.snd_next += 1

    def arrived(self, ctx: Context, sid: str, seg: Segment, *, horizon: int = 1 << 16) -> None:
        s = _session(ctx, sid)
        if s is None or seg.kind != t.DATA:
            return
        seq = seg.seq
        above = s.rcv_above
        if seq < s.rcv_next:
            seg.dup = True
            return
        i = bisect.bisect_left(above, seq)
        if i < len(above) and above[i] == seq:
            seg.dup = True
            return
        if seq == s.rcv_next:
            s.rcv_next += 1
            while above and above[0] == s.rcv_next:
                above.pop(0)
                s.rcv_next += 1
            return
        above.insert(i, seq)
        if len(above) > horizon:  # a gap that will not fill (an unreliable profile)
            s.rcv_next = above.pop(0) + 1
            while above and above[0] == s.rcv_next:
                above.pop(0)
                s.rcv_next += 1


@register("dedup")
class Dedup(MicroProtocol):
    """Duplicate suppression: a segment already received goes no further."""

    binds = ((t.DATAGRAM_FROM_NET, "check", 20),)
    requires = ("sequence",)

    def __init__(self) -> None:
        self.dropped = 0

    def check(self, ctx: Context, sid: str, seg: Segment) -> None:
        if seg.dup:
            self.dropped += 1
            ctx.halt()


@register("par")
class Par(MicroProtocol):
    """Positive acknowledgement and retransmission.  The sender keeps each segment
    until it is acknowledged, and one retransmission timer per session, a
    replicated timer: if the replica that sent a segment dies, the timer fires on
    another one, which sends it again.  The receiver acknowledges every data
    segment, cumulatively (``ack``) and selectively (``sack``)."""

    unacked: dict[str, dict[int, Segment]]
    timers: dict[str, int]
    tries: dict[str, int]

    binds = (
        (t.OPENED, "opened", 20),
        (t.SEGMENT_OUT, "keep", 10),
        (t.DATAGRAM_FROM_NET, "acknowledge", 15),
        (t.ACK_RECEIVED, "release", 10),
        (t.TIMEOUT, "expired", 10),
        (t.CLOSED, "forget", 20),
    )
    requires = ("sequence",)

    def __init__(self) -> None:
        #: sid -> seq -> the segment, until acknowledged
        self.unacked: dict[str, dict[int, Segment]] = {}
        #: sid -> the retransmission timer's id
        self.timers: dict[str, int] = {}
        #: sid -> consecutive timeouts without progress
        self.tries: dict[str, int] = {}
        self.retransmitted = 0
        self.timeouts = 0

    def opened(self, ctx: Context, sid: str, *, rto: float = 1.0) -> None:
        s = _session(ctx, sid)
        if s is not None:
            s.rto = s.rto_base = rto

    def keep(self, ctx: Context, sid: str, seg: Segment) -> None:
        s = _session(ctx, sid)
        if s is None or seg.kind not in (t.DATA, t.OACK):
            return
        seg.sent = seg.last_tx = ctx.now
        unacked = self.unacked.setdefault(sid, {})
        unacked[seg.seq] = seg
        s.in_flight = len(unacked)
        if sid not in self.timers:
            self.timers[sid] = ctx.raise_later(s.rto, t.TIMEOUT, sid)

    def acknowledge(self, ctx: Context, sid: str, seg: Segment, *, sack_limit: int = 32) -> None:
        s = _session(ctx, sid)
        if s is None or seg.kind != t.DATA:
            return
        ack = Segment(t.ACK, ack=s.rcv_next, sack=s.rcv_above[:sack_limit])
        ctx.raise_event(t.SEGMENT_TO_NET, sid, ack)

    def release(self, ctx: Context, sid: str, seg: Segment) -> None:
        s = _session(ctx, sid)
        unacked = self.unacked.get(sid)
        if s is None:
            return
        s.newly_acked = 0
        if not unacked:
            return
        acked = [q for q in unacked if q < seg.ack]
        acked.extend(q for q in seg.sack if q in unacked and q >= seg.ack)
        if not acked:
            return
        sample = None
        newest = max(acked)
        for q in acked:
            done = unacked.pop(q)
            if q == newest and done.retx == 0:
                sample = ctx.now - done.sent
        s.in_flight = len(unacked)
        s.newly_acked = len(acked)
        if self.tries.pop(sid, None) is not None:
            # progress after timeouts: undo the back-off (RFC 6298 5.7), to the
            # estimate's RTO, or the base one in a profile without an estimator
            s.rto = s.rto_base
        if sample is not None:
            ctx.raise_event(t.RTT_SAMPLE, sid, sample)
        timer = self.timers.pop(sid, None)
        if timer is not None:
            ctx.cancel(timer)
        if unacked:
            self.timers[sid] = ctx.raise_later(s.rto, t.TIMEOUT, sid)
        else:
            del self.unacked[sid]

    def expired(self, ctx: Context, sid: str, *, retries: int = 8, max_rto: float = 8.0) -> None:
        self.timers.pop(sid, None)
        s = _session(ctx, sid)
        unacked = self.unacked.get(sid)
        if s is None or not unacked:
            return
        tries = self.tries.get(sid, 0) + 1
        if tries > retries:
            ctx.component(Transport).end(ctx, sid, "timeout")
            return
        self.tries[sid] = tries
        self.timeouts += 1
        for seg in unacked.values():
            # an OACK (TFTP) goes again only in answer to a repeated request (the
            # driver's): clients take a second one for a new start (curl reads on and
            # sends the next block as block 1; atftp aborts)
            if seg.kind != t.OACK:
                self.resend(ctx, sid, seg)
        s.rto = min(s.rto * 2, max(max_rto, s.rto_base))
        ctx.raise_event(t.LOSS, sid, "timeout")
        if sid in self.unacked:
            self.timers[sid] = ctx.raise_later(s.rto, t.TIMEOUT, sid)

    def resend(self, ctx: Context, sid: str, seg: Segment) -> None:
        seg.retx += 1
        seg.last_tx = ctx.now
        self.retransmitted += 1
        ctx.raise_event(t.SEGMENT_TO_NET, sid, seg)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.unacked.pop(sid, None)
        self.tries.pop(sid, None)
        timer = self.timers.pop(sid, None)
        if timer is not None:
            ctx.cancel(timer)


@register("nak")
class Nak(MicroProtocol):
    """Negative acknowledgement.  The receiver notes when each gap (a seq missing
    below one that arrived) appeared; a gap still open ``delay`` seconds later (a
    replicated timer checks, so a sender stalled on a full window is not left
    waiting) is reported, and reported again every ``again`` seconds while it
    stays open.  A younger gap is reordering: two sending replicas interleave.
    The sender sends a reported seq again at once, without waiting for its
    retransmission timer (which stays, for a lost tail)."""

    gaps: dict[str, dict[int, float]]
    reported: dict[str, dict[int, float]]
    timers: dict[str, int]

    binds = (
        (t.DATAGRAM_FROM_NET, "gap", 16),
        ("ctp.nak_check", "check", 0),
        (t.NAK_RECEIVED, "resend", 10),
        (t.CLOSED, "forget", 30),
    )
    requires = ("par", "sequence")

    def __init__(self) -> None:
        #: sid -> missing seq -> when it was first seen missing
        self.gaps: dict[str, dict[int, float]] = {}
        #: sid -> seq -> when it was last reported
        self.reported: dict[str, dict[int, float]] = {}
        #: sid -> the check's replicated timer
        self.timers: dict[str, int] = {}
        self.naks_sent = 0
        self.resent = 0

    def gap(
        self, ctx: Context, sid: str, seg: Segment, *, delay: float = 0.01, span: int = 4096
    ) -> None:
        s = _session(ctx, sid)
        if s is None or seg.kind != t.DATA or seg.dup:
            return
        gaps = self.gaps.setdefault(sid, {})
        for q in [q for q in gaps if q < s.rcv_next]:
            del gaps[q]
        if seg.seq > s.rcv_next:
            above = set(s.rcv_above)
            # gaps are tracked within ``span`` of rcv_next: a crafted seq far ahead
            # must not make every replica walk billions of numbers (no poison datagram)
            for q in range(s.rcv_next, min(seg.seq, s.rcv_next + span)):
                if q not in above:
                    gaps.setdefault(q, ctx.now)
        if gaps and sid not in self.timers:
            self.timers[sid] = ctx.raise_later(delay, "ctp.nak_check", sid)

    def check(
        self,
        ctx: Context,
        sid: str,
        *,
        delay: float = 0.01,
        again: float = 0.2,
        limit: int = 32,
    ) -> None:
        self.timers.pop(sid, None)
        s = _session(ctx, sid)
        gaps = self.gaps.get(sid)
        if s is None or not gaps:
            return
        above = set(s.rcv_above)
        reported = self.reported.setdefault(sid, {})
        for q in [q for q in gaps if q < s.rcv_next or q in above]:
            del gaps[q]
        for q in [q for q in reported if q < s.rcv_next or q in above]:
            del reported[q]
        missing = [
            q
            for q, first in sorted(gaps.items())
            if ctx.now - first >= delay and ctx.now - reported.get(q, -again) >= again
        ][:limit]
        for q in missing:
            reported[q] = ctx.now
        if missing:
            self.naks_sent += 1
            ctx.raise_event(t.SEGMENT_TO_NET, sid, Segment(t.NAK, ack=s.rcv_next, sack=missing))
        if gaps:
            self.timers[sid] = ctx.raise_later(delay, "ctp.nak_check", sid)

    def resend(self, ctx: Context, sid: str, seg: Segment) -> None:
        s = _session(ctx, sid)
        par = ctx.component(Par)
        unacked = par.unacked.get(sid)
        if s is None or not unacked:
            return
        fresh = max(s.srtt, 0.001)
        any_resent = False
        for q in seg.sack:
            held = unacked.get(q)
            if held is not None and ctx.now - held.last_tx >= fresh:
                par.resend(ctx, sid, held)
                self.resent += 1
                any_resent = True
        if any_resent:
            ctx.raise_event(t.LOSS, sid, "nak")

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.gaps.pop(sid, None)
        self.reported.pop(sid, None)
        timer = self.timers.pop(sid, None)
        if timer is not None:
            ctx.cancel(timer)


@register("resequence")
class Resequencer(MicroProtocol):
    """Ordered delivery: holds segments that arrive early, delivers in seq order."""

    expected: dict[str, int]
    held: dict[str, dict[int, Segment]]

    binds = (
        (t.OPENED, "opened", 30),
        (t.DATAGRAM_FROM_NET, "order", 30),
        (t.CLOSED, "forget", 40),
    )

    def __init__(self) -> None:
        self.expected: dict[str, int] = {}
        self.held: dict[str, dict[int, Segment]] = {}

    def opened(self, ctx: Context, sid: str) -> None:
        s = _session(ctx, sid)
        self.expected[sid] = s.rcv_next if s is not None else 0

    def order(self, ctx: Context, sid: str, seg: Segment) -> None:
        if seg.kind != t.DATA:
            return
        ctx.halt()  # the resequencer delivers, in order, from here on
        expected = self.expected.get(sid, 0)
        if seg.seq < expected:
            return
        if seg.seq > expected:
            self.held.setdefault(sid, {})[seg.seq] = seg
            return
        ctx.raise_event(t.DELIVER_TO_APP, sid, seg)
        expected += 1
        held = self.held.get(sid)
        while held and expected in held:
            ctx.raise_event(t.DELIVER_TO_APP, sid, held.pop(expected))
            expected += 1
        if held is not None and not held:
            del self.held[sid]
        if sid in ctx.component(Transport).sessions:
            self.expected[sid] = expected

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.expected.pop(sid, None)
        self.held.pop(sid, None)


@register("window")
class Window(MicroProtocol):
    """Windowed flow control: at most ``size`` segments in flight, and never more
    than the receiver advertises (``wnd`` in its acknowledgements: its room for
    segments that arrived out of order)."""

    binds = (
        (t.OPENED, "opened", 20),
        (t.ACK_RECEIVED, "advertised", 5),
        (t.SEGMENT_TO_NET, "advertise", 50),
    )

    def opened(self, ctx: Context, sid: str, *, size: int = 32) -> None:
        s = _session(ctx, sid)
        if s is not None:
            s.rwnd = size

    def advertised(self, ctx: Context, sid: str, seg: Segment, *, size: int = 32) -> None:
        s = _session(ctx, sid)
        if s is not None:
            s.rwnd = max(1, min(size, seg.wnd))

    def advertise(self, ctx: Context, sid: str, seg: Segment, *, size: int = 32) -> None:
        if seg.kind == t.ACK:
            s = _session(ctx, sid)
            held = len(s.rcv_above) if s is not None else 0
            seg.wnd = max(1, size - held)


@register("rtt")
class Rtt(MicroProtocol):
    """The round-trip estimate (RFC 6298): SRTT, RTTVAR and the RTO par waits, from
    par's samples (Karn: never a retransmitted segment's).  A driver that agreed a
    fixed timeout with the peer (TFTP's ``timeout`` option) pins the RTO."""

    binds = ((t.RTT_SAMPLE, "estimate", 10),)
    requires = ("par",)

    def estimate(
        self, ctx: Context, sid: str, rtt: float, *, min_rto: float = 0.05, max_rto: float = 8.0
    ) -> None:
        s = _session(ctx, sid)
        if s is None:
            return
        if s.srtt == 0.0:
            s.srtt, s.rttvar = rtt, rtt / 2
        else:
            s.rttvar = 0.75 * s.rttvar + 0.25 * abs(s.srtt - rtt)
            s.srtt = 0.875 * s.srtt + 0.125 * rtt
        if not s.rto_pinned:
            s.rto = s.rto_base = min(max(min_rto, s.srtt + 4 * s.rttvar), max_rto)


@register("aimd")
class Aimd(MicroProtocol):
    """AIMD congestion control: slow start to ``ssthresh``, then one segment per
    round trip; a timeout halves the threshold and restarts from ``initial``; a
    NAK halves the window once per round trip.  Its RTT estimate is ``rtt``'s."""

    ssthresh: dict[str, float]
    recover: dict[str, int]

    binds = (
        (t.OPENED, "opened", 21),
        (t.ACK_RECEIVED, "grow", 20),
        (t.LOSS, "shrink", 10),
        (t.CLOSED, "forget", 50),
    )
    requires = ("rtt",)

    def __init__(self) -> None:
        self.ssthresh: dict[str, float] = {}
        #: sid -> the seq that ends the current recovery (NAK halving once per round)
        self.recover: dict[str, int] = {}

    def opened(self, ctx: Context, sid: str, *, initial: int = 4) -> None:
        s = _session(ctx, sid)
        if s is not None:
            s.cwnd = float(initial)
            self.ssthresh[sid] = float(t.UNLIMITED)

    def grow(self, ctx: Context, sid: str, seg: Segment, *, max_cwnd: int = 512) -> None:
        s = _session(ctx, sid)
        if s is None:
            return
        thresh = self.ssthresh.get(sid, float(t.UNLIMITED))
        for _ in range(s.newly_acked):
            s.cwnd += 1.0 if s.cwnd < thresh else 1.0 / s.cwnd
        s.cwnd = min(s.cwnd, float(max_cwnd))

    def shrink(self, ctx: Context, sid: str, why: str, *, initial: int = 4) -> None:
        s = _session(ctx, sid)
        if s is None:
            return
        if why == "timeout":
            self.ssthresh[sid] = max(s.cwnd / 2, 2.0)
            s.cwnd = float(initial)
            self.recover[sid] = s.snd_next
        elif s.snd_next > self.recover.get(sid, -1):
            half = max(s.cwnd / 2, 2.0)
            self.ssthresh[sid] = half
            s.cwnd = half
            self.recover[sid] = s.snd_next

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.ssthresh.pop(sid, None)
        self.recover.pop(sid, None)


@register("rate")
class Rate(MicroProtocol):
    """Pacing: at most ``burst`` new segments per tick of ``burst / pps`` seconds,
    each tick a replicated timer.  For profiles with nothing else to slow the
    sender (no acknowledgements: ``unreliable-fec``), so a burst does not
    overflow the receiver's socket."""

    binds = (
        (t.OPENED, "opened", 25),
        (t.PUMP, "paced", 95),
        ("ctp.tick", "tick", 0),
        (t.CLOSED, "forget", 55),
    )

    def __init__(self) -> None:
        self.timers: dict[str, int] = {}

    def opened(self, ctx: Context, sid: str, *, burst: int = 32) -> None:
        s = _session(ctx, sid)
        if s is not None:
            s.budget = burst

    def paced(self, ctx: Context, sid: str, *, burst: int = 32, pps: float = 5000.0) -> None:
        s = _session(ctx, sid)
        if s is None or s.budget > 0 or sid in self.timers:
            return
        if ctx.raise_event("ctp.backlog", sid):
            self.timers[sid] = ctx.raise_later(burst / pps, "ctp.tick", sid)

    def tick(self, ctx: Context, sid: str, *, burst: int = 32) -> None:
        self.timers.pop(sid, None)
        s = _session(ctx, sid)
        if s is not None:
            s.budget = burst
            ctx.raise_event(t.PUMP, sid)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        timer = self.timers.pop(sid, None)
        if timer is not None:
            ctx.cancel(timer)


class OpenGroup(msgspec.Struct):
    """A FEC group being filled on the sending side."""

    gid: int
    first: int
    members: list[Segment]


#: each FEC block: the data segment's msg, off, total and payload length, then the payload
BLOCK: Final = struct.Struct("!IIII")


@register("fec")
class Fec(MicroProtocol):
    """Forward error correction, Reed-Solomon by ``zfec``: after every ``k`` data
    segments (or the last of a message) the owner sends ``m`` parity segments; a
    receiver that has any ``k`` of a group's blocks rebuilds its missing data
    segments.  Each block carries its segment's header, so a rebuilt segment is
    whole.  The parity of segments read from a file at send time is computed by
    the owner from the file, like their payloads."""

    building: dict[str, OpenGroup]
    next_group: dict[str, int]
    groups: dict[str, dict[int, dict[str, Any]]]

    binds = (
        (t.SEGMENT_OUT, "stamp", 15),
        (t.SEGMENT_OUT, "parity", 95),
        (t.DATAGRAM_FROM_NET, "collect", 5),
        (t.CLOSED, "forget", 60),
    )

    def __init__(self) -> None:
        #: sid -> the group being filled
        self.building: dict[str, list[Any]] = {}
        self.next_group: dict[str, int] = {}
        #: sid -> group -> {"k", "seq", "blocks": {index: block}, "done"}
        self.groups: dict[str, dict[int, dict[str, Any]]] = {}
        self.recovered = 0
        #: rebuilt data segments that arrived after all (the parity overtook them)
        self.late = 0
        self.parity_sent = 0
        self.parity_received = 0

    @staticmethod
    def _block(seg: Segment) -> bytes:
        return BLOCK.pack(seg.msg, seg.off, seg.total, len(seg.payload)) + seg.payload

    def stamp(self, ctx: Context, sid: str, seg: Segment, *, k: int = 8) -> None:
        if seg.kind != t.DATA:
            return
        group = self.building.get(sid)
        if group is None:
            gid = self.next_group.get(sid, 0)
            self.next_group[sid] = gid + 1
            group = self.building[sid] = OpenGroup(gid, seg.seq, [])
        seg.group, seg.index, seg.k = group.gid, len(group.members), k
        group.members.append(seg)

    def parity(self, ctx: Context, sid: str, seg: Segment, *, k: int = 8, m: int = 2) -> None:
        group = self.building.get(sid)
        if seg.kind != t.DATA or group is None:
            return
        end_of_message = seg.off + seg.size() >= seg.total
        if len(group.members) < k and not end_of_message:
            return
        del self.building[sid]
        gid, first, members = group.gid, group.first, group.members
        kk = len(members)
        self.parity_sent += m
        transport = ctx.component(Transport)
        s = transport.sessions.get(sid)
        if s is None or not ctx.is_owner:
            return
        channel = s.channel

        def encoded() -> list[bytes]:
            blocks = [
                BLOCK.pack(m.msg, m.off, m.total, m.size()) + transport.payload(sid, m)
                for m in members
            ]
            width = max(len(b) for b in blocks)
            padded = tuple(b.ljust(width, b"\0") for b in blocks)
            return list(zfec.Encoder(kk, kk + m).encode(padded, tuple(range(kk, kk + m))))

        from ._transport import encode as wire

        def send_all() -> None:
            if transport.output is None:
                return
            for i, block in enumerate(encoded()):
                p = Segment(t.PARITY, seq=first, group=gid, index=kk + i, k=kk)
                transport.output(wire(p, channel, block), (s.host, s.port))

        ctx.effect(send_all)

    def collect(self, ctx: Context, sid: str, seg: Segment, *, keep: int = 64, m: int = 2) -> None:
        if seg.recovered or seg.group < 0:
            return
        groups = self.groups.setdefault(sid, {})
        g = groups.get(seg.group)
        if g is None:
            g = groups[seg.group] = {"k": 0, "seq": -1, "blocks": {}, "done": False, "rebuilt": []}
            for old in [x for x in groups if x <= seg.group - keep]:
                del groups[old]
        if seg.kind == t.PARITY:
            self.parity_received += 1
            g["k"], g["seq"] = seg.k, seg.seq
            g["blocks"][seg.index] = seg.payload
            ctx.halt()  # parity is for this micro-protocol only
        elif seg.kind == t.DATA:
            if seg.index in g["rebuilt"]:
                g["rebuilt"].remove(seg.index)
                self.late += 1
            g["blocks"][seg.index] = self._block(seg)
            if g["seq"] < 0:
                g["seq"] = seg.seq - seg.index
        self._rebuild(ctx, sid, g, m)

    def _rebuild(self, ctx: Context, sid: str, g: dict[str, Any], m: int) -> None:
        kk = g["k"]
        # the shares a decoder of (k, k + m) takes (both ends compose the same m)
        blocks = {i: b for i, b in g["blocks"].items() if i < kk + m}
        if g["done"] or not kk or len(blocks) < kk:
            return
        missing = [i for i in range(kk) if i not in blocks]
        g["done"] = True
        if not missing:
            return
        width = max(len(b) for b in blocks.values())
        nums = sorted(blocks)[:kk]
        # fresh buffers: the decoder is handed copies, never the replicated blocks
        shares = [bytearray(blocks[i].ljust(width, b"\0")) for i in nums]
        data = zfec.Decoder(kk, kk + m).decode(shares, nums)
        for i in missing:
            block = bytes(data[i])
            msg, off, total, n = BLOCK.unpack_from(block)
            payload = block[BLOCK.size : BLOCK.size + n]
            rebuilt = Segment(
                t.DATA,
                seq=g["seq"] + i,
                payload=payload,
                msg=msg,
                off=off,
                total=total,
                recovered=True,
            )
            self.recovered += 1
            g["rebuilt"].append(i)
            ctx.raise_event(t.DATAGRAM_FROM_NET, sid, rebuilt)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.building.pop(sid, None)
        self.groups.pop(sid, None)
        self.next_group.pop(sid, None)


@register("reassemble")
class Reassembly(MicroProtocol):
    """Rebuilds messages up to ``max_message`` bytes from their segments, in any
    order, and raises ``ctp.message`` once per whole message.  Longer messages
    stay a stream of ``deliver_to_app`` segments (an application writes them out
    as they come: a file)."""

    binds = (
        (t.DELIVER_TO_APP, "collect", 10),
        (t.CLOSED, "forget", 70),
    )

    def __init__(self) -> None:
        #: sid -> msg -> [bytes so far, {off: payload}]
        self.parts: dict[str, dict[int, list[Any]]] = {}

    def collect(self, ctx: Context, sid: str, seg: Segment, *, max_message: int = 1 << 20) -> None:
        if seg.total > max_message:
            return
        if seg.total == 0:
            ctx.raise_event(t.MESSAGE, sid, seg.msg, b"")
            return
        msgs = self.parts.setdefault(sid, {})
        entry = msgs.setdefault(seg.msg, [0, {}])
        if seg.off in entry[1]:
            return
        entry[1][seg.off] = seg.payload
        entry[0] += len(seg.payload)
        if entry[0] >= seg.total:
            del msgs[seg.msg]
            data = b"".join(p for _, p in sorted(entry[1].items()))
            ctx.raise_event(t.MESSAGE, sid, seg.msg, data)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        self.parts.pop(sid, None)
