"""IPv4, ICMP echo and TCP on the wire, sans-IO: bytes in, values out, and back.

No sockets, no asyncio, no clocks: every function is a pure function of its
arguments, so a replica that re-parses a packet from the log gets exactly what
the replica that received it got.

Addresses
---------
An IPv4 address is an ``int``, its 32 bits read in network order
(``0xC0000202`` for 192.0.2.2; ``int(ipaddress.IPv4Address(...))``), everywhere:
the stack keys connections on ints (:func:`._stack.conn_key` packs the remote
address and both ports into one), an int is the most compact thing a log entry
can carry and the cheapest to compare, and it enters the TCP pseudo-header's sum
as is (see below).  Reading or writing it is part of the header's one
``struct`` call.  :func:`ip_aton` and :func:`ip_ntoa` convert from and to dotted
quads (strictly: ``"127.1"`` is refused), for configuration and logs.

Byte order
----------
Every multi-byte header field is big-endian (network order) on the wire and a
plain non-negative ``int`` in Python (ports, sequence numbers, windows, MSS,
ident, checksums).  Payloads are ``bytes`` that the returned values own (a
slice of the input; a ``memoryview`` input is copied out once).

Checksums, and why there is no loop per word
--------------------------------------------
:func:`checksum` is RFC 1071's Internet checksum, on the hot path of every
packet (the IPv4 header, then the TCP segment or ICMP message).  It never
iterates over 16-bit words in Python: the data is read as one big-endian
integer (``int.from_bytes``, C) and reduced modulo ``0xFFFF`` (C): since
``2**16 == 1 (mod 0xFFFF)``, a number is congruent to the sum of its 16-bit
digits, which is what the ones' complement sum computes with its end-around
carries.  An odd length is padded with a zero byte on the right (a shift by
8 bits), as RFC 1071 says.  The one subtlety is that ones' complement has two
zeros: the modulo cannot tell a sum of ``0xFFFF`` from a sum of ``0``.  The
ones' complement sum of non-negative words is ``0`` only when they are all
zero, so: a zero residue means a sum of ``0xFFFF`` (checksum ``0x0000``), unless
the data and the initial sum are all zero (sum ``0``, checksum ``0xFFFF``).
That is exactly what Linux's ``csum_fold`` gives, so an all-zero ICMP message
fails verification here as it does in the kernel.

Verifying is summing the received bytes, checksum field included: the result is
0 for an intact packet.  The TCP pseudo-header (source, destination, zero,
protocol, TCP length) enters as the ``initial`` sum: each 32-bit address plus
the protocol plus the length is congruent to its words' sum, so it costs three
integer additions and no bytes.

Option lists are walked with a Python loop per *option* (not per byte), and
only when there are options: an established Linux connection sends either no
options or the timestamp option alone (``NOP NOP TS``), which is recognized by
one comparison and skipped.

What is validated, and what each drop counts
--------------------------------------------
A parse function raises :class:`WireError` for a packet it drops; its
``counter`` is the ``nstat`` counter Linux bumps for that drop (``also``: the
other ones it bumps for the same drop).  The caller owns the counters and bumps
the ones that are not drops: ``IpInReceives`` for every packet handed to
:func:`parse_ipv4`, ``IpInDelivers`` for those it delivers, ``IpInUnknownProtos``
for a protocol other than ICMP and TCP, ``IcmpInMsgs`` for every message handed
to :func:`parse_icmp` or :func:`echo_reply`, ``IcmpMsgInType<N>`` for each one
parsed (``IcmpInEchos`` for an echo request), ``IcmpOutMsgs``, ``IcmpMsgOutType0``
and ``IcmpOutEchoReps`` for each echo reply sent, ``TcpInSegs`` for every segment
handed to :func:`parse_tcp`, ``TcpOutSegs`` for every segment sent.

==============================================  ======================  ===================
drop                                            counter                 also
==============================================  ======================  ===================
IPv4: fewer than 20 bytes, version not 4,       ``IpInHdrErrors``
IHL < 5, fewer bytes than the IHL says,
total length < the header length
IPv4: bad header checksum                       ``IpInHdrErrors``       ``IpInCsumErrors``
IPv4: total length > the bytes received         ``IpInTruncatedPkts``
IPv4: a fragment (MF set or offset > 0)         ``IpReasmReqds``
ICMP: bad checksum (an empty message too)       ``IcmpInCsumErrors``    ``IcmpInErrors``
ICMP: fewer than 8 bytes, type > 18             ``IcmpInErrors``
TCP: bad checksum                               ``TcpInCsumErrors``     ``TcpInErrs``
TCP: fewer than 20 bytes, data offset < 5 or    ``TcpInErrs``
past the end, a malformed option list
==============================================  ======================  ===================

Where this differs from Linux, on purpose:

* **Fragments are not reassembled.**  Linux counts ``IpReasmReqds`` for each
  fragment it queues, then ``IpReasmOKs`` or ``IpReasmFails``.  A replicated
  reassembly queue would need timers and memory limits for a case that does not
  occur here (the kernel peer does path MTU discovery and sets DF; our MTU is the
  TUN's), so a fragment is dropped, counted as ``IpReasmReqds``, and never
  becomes ``IpReasmOKs``.
* **TCP segments too short for their header** (under 20 bytes, or a data offset
  past the end): Linux discards them counting only ``TcpInSegs``; here they
  count ``TcpInErrs`` too, so that every drop has a counter.
* **A malformed option list** (an option of length 0 or 1, or one running past
  the header) drops the segment with ``TcpInErrs``; Linux stops parsing options
  there and keeps the segment.  Linux never sends one.  A *well-formed* option
  with an unexpected length (an MSS option of 3 bytes) is skipped, as in Linux.

Not validated here (the caller's business): whether the destination is ours,
martian sources, TTL (a host delivering locally ignores it), the IPv4 options'
contents (allowed and skipped), the reserved flag bit, the TOS byte.

TCP flags
---------
:attr:`.Segment.flags` is the header's whole flags byte: FIN..URG as in
:mod:`._types`, plus ECE (``0x40``) and CWR (``0x80``) if the peer set them; the
engine masks what it does not handle.  The urgent pointer is not decoded (the
engine does not do urgent data) and is sent as 0.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import msgspec

from ._types import Segment

__all__ = (
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_IN_CSUM_ERRORS",
    "ICMP_IN_ERRORS",
    "IP_IN_CSUM_ERRORS",
    "IP_IN_HDR_ERRORS",
    "IP_IN_TRUNCATED_PKTS",
    "IP_REASM_REQDS",
    "PROTO_ICMP",
    "PROTO_TCP",
    "TCP_IN_CSUM_ERRORS",
    "TCP_IN_ERRS",
    "IcmpMessage",
    "Ipv4Packet",
    "WireError",
    "build_icmp",
    "build_icmp_echo_reply",
    "build_ipv4",
    "build_tcp",
    "checksum",
    "echo_reply",
    "ip_aton",
    "ip_ntoa",
    "parse_icmp",
    "parse_ipv4",
    "parse_tcp",
)

Buffer = bytes | bytearray | memoryview

#: IPv4 protocol numbers.
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
#: ICMP types answered and sent.
ICMP_ECHO_REPLY: Final = 0
ICMP_ECHO_REQUEST: Final = 8
#: Linux's ``NR_ICMP_TYPES``: a higher type is an error (``IcmpInErrors``).
_MAX_ICMP_TYPE: Final = 18

#: nstat counter names, as ``nstat -a`` prints them.
IP_IN_HDR_ERRORS: Final = "IpInHdrErrors"
IP_IN_CSUM_ERRORS: Final = "IpInCsumErrors"
IP_IN_TRUNCATED_PKTS: Final = "IpInTruncatedPkts"
IP_REASM_REQDS: Final = "IpReasmReqds"
ICMP_IN_CSUM_ERRORS: Final = "IcmpInCsumErrors"
ICMP_IN_ERRORS: Final = "IcmpInErrors"
TCP_IN_CSUM_ERRORS: Final = "TcpInCsumErrors"
TCP_IN_ERRS: Final = "TcpInErrs"

_IPV4_HEADER: Final = struct.Struct("!BBHHHBBHII")
_IPV4_MIN: Final = 20
_IPV4_MAX_PAYLOAD: Final = 0xFFFF - _IPV4_MIN
_DF: Final = 0x4000
_MF_OR_OFFSET: Final = 0x3FFF
_TCP_HEADER: Final = struct.Struct("!HHIIBBHHH")
_TCP_MIN: Final = 20
_ICMP_HEADER: Final = struct.Struct("!BBHHH")
_ICMP_MIN: Final = 8
#: ``NOP NOP TS(10)``: the options of every segment of a Linux connection that
#: negotiated timestamps, the common case, skipped by one comparison.
_NOP_NOP_TS: Final = b"\x01\x01\x08\x0a"

_OPT_EOL: Final = 0
_OPT_NOP: Final = 1
_OPT_MSS: Final = 2
_OPT_WSCALE: Final = 3
_OPT_SACK_OK: Final = 4


class WireError(Exception):
    """A packet dropped by a parser: ``counter`` is the nstat counter to bump.

    ``also`` holds the other counters Linux bumps for the same drop (a bad TCP
    checksum counts ``TcpInCsumErrors`` and ``TcpInErrs``); :attr:`counters` is
    them all.  ``reason`` is for logs and tests only.
    """

    def __init__(self, counter: str, reason: str, *, also: tuple[str, ...] = ()) -> None:
        super().__init__(counter, reason)
        self.counter: Final = counter
        self.reason: Final = reason
        self.also: Final = also

    @property
    def counters(self) -> tuple[str, ...]:
        """Every counter the drop bumps: :attr:`counter` first, then :attr:`also`."""
        return (self.counter, *self.also)

    def __str__(self) -> str:
        return f"{self.counter}: {self.reason}"


# --- checksum ------------------------------------------------------------------------------


def checksum(data: Buffer, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the ones' complement of the ones'
    complement sum of its big-endian 16-bit words, after ``initial``.

    An odd length is padded with one zero byte.  ``initial`` is the sum of what
    comes before (the pseudo-header): any non-negative int congruent to it modulo
    ``0xFFFF`` will do, unfolded sums included.  The result is the value to put in
    a checksum field that was zero while summing; over data that includes an
    intact checksum it is 0.  See the module docstring for how it avoids a loop
    and for the ``0``/``0xFFFF`` rule (``checksum(b"\\0\\0") == 0xFFFF``).
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    total = n + initial
    if total == 0:
        return 0xFFFF
    # a non-zero sum of non-negative words folds to 1..0xFFFF, never to 0
    return 0xFFFF - ((total % 0xFFFF) or 0xFFFF)


# --- addresses -----------------------------------------------------------------------------


def ip_aton(text: str) -> int:
    """``"192.0.2.2"`` -> ``0xC0000202``; ValueError unless a strict dotted quad."""
    return int(ipaddress.IPv4Address(text))


def ip_ntoa(addr: int) -> str:
    """``0xC0000202`` -> ``"192.0.2.2"``; ValueError unless in ``0 .. 2**32 - 1``."""
    return str(ipaddress.IPv4Address(addr))


# --- IPv4 ----------------------------------------------------------------------------------


class Ipv4Packet(msgspec.Struct, frozen=True, array_like=True):
    """An IPv4 packet that passed :func:`parse_ipv4`'s checks."""

    #: source and destination addresses (32-bit ints, network order)
    src: int
    dst: int
    #: protocol number (:data:`PROTO_TCP`, :data:`PROTO_ICMP`, ...)
    proto: int
    ttl: int
    #: identification field
    ident: int
    #: header length in bytes (20 plus any options, skipped)
    header_len: int
    #: the payload: the bytes after the header, up to the total length (any
    #: bytes past the total length, link-layer padding, are dropped)
    payload: bytes


def parse_ipv4(packet: Buffer) -> Ipv4Packet:
    """Parse and validate one IPv4 packet as Linux's ``ip_rcv`` does, in its order.

    Raises :class:`WireError` (``IpInHdrErrors``, ``IpInTruncatedPkts``, or
    ``IpReasmReqds`` for a fragment: see the module docstring).  Options in the
    header are allowed and skipped.
    """
    size = len(packet)
    if size < _IPV4_MIN:
        raise WireError(IP_IN_HDR_ERRORS, f"{size} bytes, shorter than an IPv4 header")
    vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4_HEADER.unpack_from(packet)
    if vihl >> 4 != 4:
        raise WireError(IP_IN_HDR_ERRORS, f"version {vihl >> 4}")
    hlen = (vihl & 0x0F) * 4
    if hlen < _IPV4_MIN:
        raise WireError(IP_IN_HDR_ERRORS, f"IHL {hlen // 4} < 5")
    if size < hlen:
        raise WireError(IP_IN_HDR_ERRORS, f"IHL {hlen // 4}, but {size} bytes")
    if checksum(packet[:hlen]) != 0:
        raise WireError(IP_IN_HDR_ERRORS, "bad header checksum", also=(IP_IN_CSUM_ERRORS,))
    if total > size:
        raise WireError(IP_IN_TRUNCATED_PKTS, f"total length {total}, but {size} bytes")
    if total < hlen:
        raise WireError(IP_IN_HDR_ERRORS, f"total length {total} < header length {hlen}")
    if frag & _MF_OR_OFFSET:
        raise WireError(IP_REASM_REQDS, "a fragment (not reassembled)")
    return Ipv4Packet(src, dst, proto, ttl, ident, hlen, bytes(packet[hlen:total]))


def build_ipv4(
    src: int,
    dst: int,
    proto: int,
    payload: Buffer,
    *,
    ident: int,
    ttl: int = 64,
    df: bool = True,
) -> bytes:
    """An IPv4 packet: a 20-byte header (no options, TOS 0, DF unless ``df=False``,
    never fragmented) with its checksum, then ``payload``.

    Raises ValueError for a payload over 65,515 bytes, ``struct.error`` for a field
    (an address, ``ident``, ``ttl``, ``proto``) out of range.
    """
    if len(payload) > _IPV4_MAX_PAYLOAD:
        raise ValueError(f"an IPv4 payload is at most {_IPV4_MAX_PAYLOAD} bytes")
    header = bytearray(
        _IPV4_HEADER.pack(
            0x45, 0, _IPV4_MIN + len(payload), ident, _DF if df else 0, ttl, proto, 0, src, dst
        )
    )
    header[10:12] = checksum(header).to_bytes(2, "big")
    return b"".join((header, payload))


# --- ICMP ----------------------------------------------------------------------------------


class IcmpMessage(msgspec.Struct, frozen=True, array_like=True):
    """An ICMP message with a valid checksum.

    For an echo request or reply, ``ident`` and ``seq`` are its identifier and
    sequence number and ``data`` its data; for any other type they are the two
    halves of the header's last four bytes and what follows, and the caller
    counts the message (``IcmpMsgInType<N>``) and drops it.
    """

    type: int
    code: int
    ident: int
    seq: int
    data: bytes

    @property
    def is_echo_request(self) -> bool:
        """Whether to answer it with :func:`build_icmp_echo_reply`."""
        return self.type == ICMP_ECHO_REQUEST


def parse_icmp(data: Buffer) -> IcmpMessage:
    """Parse an ICMP message (an IPv4 payload), as Linux's ``icmp_rcv`` does.

    The checksum is verified first, over the whole message (``IcmpInCsumErrors``,
    also ``IcmpInErrors``); then a message under 8 bytes or of a type over 18 is
    ``IcmpInErrors``.  Any other type is returned: only an echo request
    (:attr:`IcmpMessage.is_echo_request`, whatever its code, as in Linux) gets a
    reply.
    """
    if checksum(data) != 0:
        raise WireError(ICMP_IN_CSUM_ERRORS, "bad ICMP checksum", also=(ICMP_IN_ERRORS,))
    if len(data) < _ICMP_MIN:
        raise WireError(ICMP_IN_ERRORS, f"{len(data)} bytes, shorter than an ICMP header")
    type_, code, _csum, ident, seq = _ICMP_HEADER.unpack_from(data)
    if type_ > _MAX_ICMP_TYPE:
        raise WireError(ICMP_IN_ERRORS, f"ICMP type {type_}")
    return IcmpMessage(type_, code, ident, seq, bytes(data[_ICMP_MIN:]))


def build_icmp(type_: int, code: int, ident: int, seq: int, data: Buffer = b"") -> bytes:
    """An ICMP message with its checksum: type, code, ident and seq (the header's last
    four bytes, as in an echo), then ``data``."""
    header = _ICMP_HEADER.pack(type_, code, 0, ident, seq)
    csum = checksum(data, int.from_bytes(header, "big"))
    return b"".join((header[:2], csum.to_bytes(2, "big"), header[4:], data))


def build_icmp_echo_reply(request: IcmpMessage) -> bytes:
    """The echo reply to ``request`` (type 0, same code, ident, seq and data, as Linux's
    ``icmp_echo`` answers), to send back in :func:`build_ipv4` with the addresses
    swapped and protocol :data:`PROTO_ICMP`."""
    return build_icmp(ICMP_ECHO_REPLY, request.code, request.ident, request.seq, request.data)


def echo_reply(data: Buffer) -> bytes | None:
    """:func:`parse_icmp` then :func:`build_icmp_echo_reply`: the reply to an echo request,
    None for any other valid message (to count and drop); WireError as parse_icmp."""
    message = parse_icmp(data)
    return build_icmp_echo_reply(message) if message.type == ICMP_ECHO_REQUEST else None


# --- TCP -----------------------------------------------------------------------------------


def parse_tcp(src: int, dst: int, data: Buffer, *, verify: bool = True) -> Segment:
    """Parse and validate a TCP segment: ``data`` is the IPv4 payload, ``src`` and ``dst``
    the packet's addresses (for the checksum's pseudo-header).

    Raises :class:`WireError`: ``TcpInErrs`` for a segment under 20 bytes, a data
    offset under 5 or past the end, or a malformed option list; ``TcpInCsumErrors``
    (also ``TcpInErrs``) for a bad checksum.  Options decoded: MSS, window scale
    (its raw shift count: clamping to 14 is the engine's), SACK-permitted; the
    others (timestamps, ...) are skipped; the last of a repeated option wins.

    ``verify=False`` skips the checksum (the rest is validated all the same):
    for a replica re-parsing a packet that the replica which received it already
    verified at ingress, so the checksum is paid once per packet, not once per
    replica.
    """
    size = len(data)
    if size < _TCP_MIN:
        raise WireError(TCP_IN_ERRS, f"{size} bytes, shorter than a TCP header")
    sport, dport, seq, ack, off, flags, window, _csum, _urg = _TCP_HEADER.unpack_from(data)
    hlen = (off >> 4) * 4
    if hlen < _TCP_MIN:
        raise WireError(TCP_IN_ERRS, f"data offset {hlen // 4} < 5")
    if hlen > size:
        raise WireError(TCP_IN_ERRS, f"data offset {hlen // 4}, but {size} bytes")
    if verify and checksum(data, src + dst + PROTO_TCP + size) != 0:
        raise WireError(TCP_IN_CSUM_ERRORS, "bad TCP checksum", also=(TCP_IN_ERRS,))
    payload = bytes(data[hlen:])
    if hlen == _TCP_MIN or (hlen == 32 and data[20:24] == _NOP_NOP_TS):
        return Segment(sport, dport, seq, ack, flags, window, payload)
    mss, wscale, sack_ok = _options(bytes(data[_TCP_MIN:hlen]))
    return Segment(sport, dport, seq, ack, flags, window, payload, mss, wscale, sack_ok)


def _options(opts: bytes) -> tuple[int | None, int | None, bool]:
    """Decode an option list: (MSS, window scale, SACK-permitted); WireError if malformed."""
    mss: int | None = None
    wscale: int | None = None
    sack_ok = False
    i = 0
    end = len(opts)
    while i < end:
        kind = opts[i]
        if kind == _OPT_EOL:
            break  # the rest is padding
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise WireError(TCP_IN_ERRS, f"option {kind} has no length byte")
        length = opts[i + 1]
        if length < 2:
            raise WireError(TCP_IN_ERRS, f"option {kind} of length {length}")
        if i + length > end:
            raise WireError(TCP_IN_ERRS, f"option {kind} of length {length} runs past the header")
        if kind == _OPT_MSS and length == 4:
            mss = int.from_bytes(opts[i + 2 : i + 4], "big")
        elif kind == _OPT_WSCALE and length == 3:
            wscale = opts[i + 2]
        elif kind == _OPT_SACK_OK and length == 2:
            sack_ok = True
        i += length
    return mss, wscale, sack_ok


def build_tcp(src: int, dst: int, seg: Segment) -> bytes:
    """A TCP segment with its checksum (over the pseudo-header of ``src`` -> ``dst``, 4-byte
    addresses: ints), to send in :func:`build_ipv4` with protocol :data:`PROTO_TCP`.

    Options, as Linux lays them out: MSS when ``seg.mss`` is set, then ``NOP`` +
    window scale when ``seg.wscale`` is set (so the header stays a multiple of 4
    bytes).  ``seg.sack_ok`` is not sent: the engine does not SACK, so it never
    offers it.  The urgent pointer is 0.  ``struct.error`` for a field out of range.
    """
    opts = b""
    if seg.mss is not None:
        opts = struct.pack("!BBH", _OPT_MSS, 4, seg.mss)
    if seg.wscale is not None:
        opts += struct.pack("!BBBB", _OPT_NOP, _OPT_WSCALE, 3, seg.wscale)
    hlen = _TCP_MIN + len(opts)
    payload = seg.payload
    header = bytearray(
        _TCP_HEADER.pack(
            seg.src_port, seg.dst_port, seg.seq, seg.ack, hlen << 2, seg.flags, seg.window, 0, 0
        )
    )
    header += opts
    # the header's length is even, so the payload's words line up: sum them apart
    initial = src + dst + PROTO_TCP + hlen + len(payload) + int.from_bytes(header, "big")
    header[16:18] = checksum(payload, initial).to_bytes(2, "big")
    return b"".join((header, payload))
