"""The netstack's wire codecs (IPv4, ICMP echo, TCP, the Internet checksum), sans-IO,
against scapy as the independent oracle: scapy builds, we parse; we build, scapy
parses and recomputes the checksums."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from dominoes.components.netstack._types import ACK, FIN, PSH, SYN, Segment
from dominoes.components.netstack._wire import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_TCP,
    IcmpMessage,
    WireError,
    build_icmp,
    build_icmp_echo_reply,
    build_ipv4,
    build_tcp,
    checksum,
    echo_reply,
    ip_aton,
    ip_ntoa,
    parse_icmp,
    parse_ipv4,
    parse_tcp,
)
from hypothesis import given, settings
from hypothesis import strategies as st

scapy = pytest.importorskip("scapy.all")

T = TypeVar("T")

SRC = ip_aton("192.0.2.1")
DST = ip_aton("192.0.2.2")

addrs = st.integers(0, 2**32 - 1)
payloads = st.binary(max_size=1460)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
# every TCP option scapy can write that we decode or skip; the test draws a subset in
# a random order (a repeated kind would make "the last one wins" the thing tested)
tcp_options = st.lists(
    st.one_of(
        st.tuples(st.just("MSS"), u16),
        st.tuples(st.just("WScale"), st.integers(0, 14)),
        st.tuples(st.just("SAckOK"), st.just(b"")),
        st.tuples(st.just("Timestamp"), st.tuples(u32, u32)),
        st.tuples(st.just("NOP"), st.none()),
        st.tuples(st.just(99), st.binary(max_size=6)),  # unknown: skipped by its length
    ),
    max_size=5,
    unique_by=lambda option: option[0],
)


def reference_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 as written: a loop over 16-bit words with end-around carries."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def attempt(parse: Callable[[], T]) -> T | WireError:
    """What ``parse()`` returns, or the WireError it raises."""
    try:
        return parse()
    except WireError as error:
        return error


def dropped(counter: str, parse: Any, *args: Any, **kwargs: Any) -> WireError:
    with pytest.raises(WireError) as info:
        parse(*args, **kwargs)
    assert info.value.counter == counter, info.value
    return info.value


def fix_ip_checksum(packet: bytes) -> bytes:
    """``packet`` with its IPv4 header checksum recomputed (after editing the header)."""
    hlen = (packet[0] & 0x0F) * 4
    if not 20 <= hlen <= len(packet):
        return packet
    header = bytearray(packet[:hlen])
    header[10:12] = b"\0\0"
    header[10:12] = checksum(header).to_bytes(2, "big")
    return bytes(header) + packet[hlen:]


def tcp_bytes(header: bytes, payload: bytes = b"", src: int = SRC, dst: int = DST) -> bytes:
    """A TCP segment from a raw header (checksum field zero) with a correct checksum."""
    data = bytearray(header + payload)
    pseudo = struct.pack("!IIBBH", src, dst, 0, PROTO_TCP, len(data))
    data[16:18] = reference_checksum(pseudo + bytes(data)).to_bytes(2, "big")
    return bytes(data)


def raw_tcp_header(doff: int = 5, options: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 1234, 80, 1, 2, doff << 4, ACK, 1000, 0, 0) + options


# --- checksum ------------------------------------------------------------------------------


@given(st.binary(max_size=3000), st.integers(0, 2**40))
@settings(deadline=None)
def test_checksum_matches_the_reference(data: bytes, initial: int) -> None:
    assert checksum(data) == reference_checksum(data)
    assert checksum(data, initial) == reference_checksum(data, initial)
    assert checksum(memoryview(data)) == reference_checksum(data)


@given(st.binary(max_size=3000).filter(any))
@settings(deadline=None)
def test_data_with_its_checksum_appended_sums_to_zero(data: bytes) -> None:
    if len(data) % 2:
        data += b"\0"
    assert checksum(data + checksum(data).to_bytes(2, "big")) == 0


def test_checksum_zero_and_all_ones_cases() -> None:
    # ones' complement has two zeros: all-zero data sums to 0 (checksum 0xFFFF), a
    # non-zero sum that is a multiple of 0xFFFF sums to 0xFFFF (checksum 0)
    assert checksum(b"") == checksum(b"\0") == checksum(b"\0" * 64) == 0xFFFF
    assert checksum(b"\xff\xff") == checksum(b"\xff\xff" * 9) == 0
    assert checksum(b"\x80\x00\x7f\xff") == 0
    assert checksum(b"", 0xFFFF) == checksum(b"\0\0", 0x1FFFE) == 0
    assert checksum(b"\x01") == 0xFEFF  # an odd byte is the high half of a word
    # RFC 1071's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


# --- addresses -----------------------------------------------------------------------------


def test_addresses_are_ints_in_network_order() -> None:
    assert ip_aton("192.0.2.2") == 0xC0000202
    assert ip_ntoa(0xC0000202) == "192.0.2.2"
    assert ip_aton("255.255.255.255") == 2**32 - 1
    assert ip_ntoa(0) == "0.0.0.0"
    for bad in ("127.1", "256.0.0.1", "1.2.3", "::1", "a.b.c.d", ""):
        with pytest.raises(ValueError, match=r"."):
            ip_aton(bad)
    for out_of_range in (-1, 2**32):
        with pytest.raises(ValueError, match=r"."):
            ip_ntoa(out_of_range)


@given(addrs)
def test_address_round_trip(addr: int) -> None:
    assert ip_aton(ip_ntoa(addr)) == addr
    assert ip_ntoa(addr) == scapy.inet_ntoa(addr.to_bytes(4, "big"))


# --- scapy builds, we parse ----------------------------------------------------------------


@given(
    src=addrs,
    dst=addrs,
    sport=u16,
    dport=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=u16,
    options=tcp_options,
    payload=payloads,
    ident=u16,
    ttl=st.integers(0, 255),
    df=st.booleans(),
    ip_nops=st.integers(0, 8),
    padding=st.binary(max_size=3),
)
@settings(deadline=None)
def test_parse_what_scapy_builds(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: list[tuple[Any, Any]],
    payload: bytes,
    ident: int,
    ttl: int,
    df: bool,
    ip_nops: int,
    padding: bytes,
) -> None:
    packet = scapy.IP(
        src=ip_ntoa(src),
        dst=ip_ntoa(dst),
        id=ident,
        ttl=ttl,
        flags="DF" if df else 0,
        options=[scapy.IPOption_NOP()] * ip_nops,
    ) / scapy.TCP(
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        options=options,
    )
    if payload:
        packet /= scapy.Raw(payload)
    wire = bytes(packet)
    ip = parse_ipv4(wire + padding)  # bytes past the total length are link-layer padding
    shown = scapy.IP(wire)
    assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.ident) == (src, dst, PROTO_TCP, ttl, ident)
    assert ip.header_len == shown.ihl * 4 == 20 + 4 * -(-ip_nops // 4)
    assert ip.payload == bytes(shown[scapy.TCP])
    decoded = dict(options)
    for verify in (True, False):
        seg = parse_tcp(ip.src, ip.dst, ip.payload, verify=verify)
        assert seg == Segment(
            src_port=sport,
            dst_port=dport,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            payload=payload,
            mss=decoded.get("MSS"),
            wscale=decoded.get("WScale"),
            sack_ok="SAckOK" in decoded,
        )
    # the same bytes through a memoryview
    assert parse_ipv4(memoryview(wire)) == ip
    assert parse_tcp(src, dst, memoryview(ip.payload)) == seg


@given(src=addrs, dst=addrs, ident=u16, seq=u16, data=payloads, code=st.integers(0, 3))
@settings(deadline=None)
def test_parse_a_scapy_echo_request_and_answer_it(
    src: int, dst: int, ident: int, seq: int, data: bytes, code: int
) -> None:
    request = scapy.IP(src=ip_ntoa(src), dst=ip_ntoa(dst)) / scapy.ICMP(
        type=8, code=code, id=ident, seq=seq
    )
    if data:
        request /= scapy.Raw(data)
    ip = parse_ipv4(bytes(request))
    assert ip.proto == PROTO_ICMP
    message = parse_icmp(ip.payload)
    assert message == IcmpMessage(ICMP_ECHO_REQUEST, code, ident, seq, data)
    assert message.is_echo_request

    reply = build_ipv4(dst, src, PROTO_ICMP, build_icmp_echo_reply(message), ident=7)
    shown = scapy.IP(reply)
    icmp = shown[scapy.ICMP]
    assert (shown.src, shown.dst, shown.proto) == (ip_ntoa(dst), ip_ntoa(src), PROTO_ICMP)
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (ICMP_ECHO_REPLY, code, ident, seq)
    assert bytes(icmp.payload) == data
    assert_scapy_checksums_agree(reply)
    assert parse_icmp(parse_ipv4(reply).payload) == IcmpMessage(
        ICMP_ECHO_REPLY, code, ident, seq, data
    )


@given(type_=st.sampled_from([0, 3, 4, 5, 11, 12, 13, 17, 18]), rest=u32, data=payloads)
@settings(deadline=None)
def test_other_icmp_types_are_returned_for_the_caller_to_count(
    type_: int, rest: int, data: bytes
) -> None:
    # by hand, with scapy's checksum: scapy's ICMP layer shapes the last 4 header bytes
    # by type (unused, next-hop MTU, gateway, ...)
    wire = bytearray(struct.pack("!BBHI", type_, 1, 0, rest) + data)
    wire[2:4] = scapy.checksum(bytes(wire)).to_bytes(2, "big")
    message = parse_icmp(bytes(wire))
    assert message.data == data
    assert (message.type, message.code) == (type_, 1)
    assert (message.ident, message.seq) == (rest >> 16, rest & 0xFFFF)
    assert not message.is_echo_request


# --- we build, scapy parses ----------------------------------------------------------------


def assert_scapy_checksums_agree(packet: bytes) -> None:
    """scapy, told to recompute every checksum of ``packet``, finds the ones we wrote."""
    shown = scapy.IP(packet)
    fresh = shown.copy()
    del fresh.chksum
    for layer in (scapy.TCP, scapy.ICMP):
        if layer in fresh:
            del fresh[layer].chksum
    recomputed = scapy.IP(bytes(fresh))
    assert shown.chksum == recomputed.chksum
    for layer in (scapy.TCP, scapy.ICMP):
        if layer in shown:
            assert shown[layer].chksum == recomputed[layer].chksum
    if scapy.TCP in shown:
        segment = bytearray(packet[shown.ihl * 4 :])
        segment[16:18] = b"\0\0"
        assert shown[scapy.TCP].chksum == scapy.in4_chksum(PROTO_TCP, shown, bytes(segment))


@given(
    src=addrs,
    dst=addrs,
    sport=u16,
    dport=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=u16,
    payload=payloads,
    mss=st.none() | u16,
    wscale=st.none() | st.integers(0, 14),
    ident=u16,
    ttl=st.integers(0, 255),
    df=st.booleans(),
)
@settings(deadline=None)
def test_scapy_parses_what_we_build(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    mss: int | None,
    wscale: int | None,
    ident: int,
    ttl: int,
    df: bool,
) -> None:
    seg = Segment(sport, dport, seq, ack, flags, window, payload, mss, wscale)
    tcp = build_tcp(src, dst, seg)
    assert len(tcp) % 2 == len(payload) % 2  # the header is a multiple of 4
    packet = build_ipv4(src, dst, PROTO_TCP, tcp, ident=ident, ttl=ttl, df=df)
    shown = scapy.IP(packet)
    assert (shown.version, shown.ihl, shown.len) == (4, 5, len(packet))
    assert (shown.src, shown.dst) == (ip_ntoa(src), ip_ntoa(dst))
    assert (shown.id, shown.ttl, shown.proto, shown.frag) == (ident, ttl, PROTO_TCP, 0)
    assert int(shown.flags) == (2 if df else 0)  # DF; never MF
    got = shown[scapy.TCP]
    assert (got.sport, got.dport, got.seq, got.ack) == (sport, dport, seq, ack)
    assert (int(got.flags), got.window, got.urgptr, got.reserved) == (flags, window, 0, 0)
    assert got.dataofs * 4 == 20 + (4 if mss is not None else 0) + (4 if wscale is not None else 0)
    assert packet[20 + got.dataofs * 4 :] == payload
    options = dict(got.options)
    assert options.get("MSS") == mss
    assert options.get("WScale") == wscale
    assert set(options) <= {"MSS", "WScale", "NOP"}
    assert_scapy_checksums_agree(packet)
    # and back
    assert parse_tcp(src, dst, parse_ipv4(packet).payload) == seg


def test_sack_permitted_is_decoded_but_never_sent() -> None:
    offered = Segment(1, 2, 3, 0, SYN, 100, mss=1460, wscale=7, sack_ok=True)
    wire = build_tcp(SRC, DST, offered)
    assert parse_tcp(SRC, DST, wire) == Segment(1, 2, 3, 0, SYN, 100, mss=1460, wscale=7)
    assert wire[20:28] == b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # as Linux lays them out


def test_build_ipv4_refuses_what_it_cannot_send() -> None:
    with pytest.raises(struct.error):
        build_ipv4(2**32, DST, PROTO_TCP, b"", ident=1)
    with pytest.raises(ValueError, match="at most 65515"):
        build_ipv4(SRC, DST, PROTO_TCP, bytes(65516), ident=1)
    assert len(build_ipv4(SRC, DST, PROTO_TCP, bytes(65515), ident=1)) == 0xFFFF


def test_echo_reply_answers_echo_requests_only() -> None:
    request = bytes(scapy.ICMP(type=8, id=5, seq=6) / scapy.Raw(b"abc"))
    reply = echo_reply(request)
    assert reply is not None
    shown = scapy.ICMP(reply)
    assert (shown.type, shown.code, shown.id, shown.seq, shown.load) == (0, 0, 5, 6, b"abc")
    assert echo_reply(bytes(scapy.ICMP(type=0, id=5, seq=6))) is None
    assert echo_reply(bytes(scapy.ICMP(type=3, code=3))) is None
    dropped("IcmpInCsumErrors", echo_reply, request[:-1])
    dropped("IcmpInErrors", echo_reply, build_icmp(30, 0, 0, 0))


def test_build_icmp_of_zeros_checksums_to_all_ones() -> None:
    wire = build_icmp(0, 0, 0, 0)
    assert wire == b"\0\0\xff\xff\0\0\0\0"
    assert parse_icmp(wire) == IcmpMessage(0, 0, 0, 0, b"")


# --- what is dropped, and its counter ------------------------------------------------------


def good_packet(payload: bytes = b"x" * 21) -> bytes:
    return build_ipv4(SRC, DST, PROTO_TCP, payload, ident=1)


def test_ipv4_drops_and_their_counters() -> None:
    packet = good_packet()
    assert parse_ipv4(packet).payload == b"x" * 21
    for size in (0, 1, 19):
        dropped("IpInHdrErrors", parse_ipv4, packet[:size])
    dropped("IpInHdrErrors", parse_ipv4, b"\x65" + packet[1:])  # version 6
    dropped("IpInHdrErrors", parse_ipv4, b"\x44" + packet[1:])  # IHL 4
    dropped("IpInHdrErrors", parse_ipv4, fix_ip_checksum(b"\x40" + packet[1:]))  # IHL 0
    dropped("IpInHdrErrors", parse_ipv4, b"\x4f" + packet[1:])  # IHL 15: 60 bytes, 41 here
    error = dropped("IpInHdrErrors", parse_ipv4, packet[:10] + b"\0\0" + packet[12:])
    assert error.counters == ("IpInHdrErrors", "IpInCsumErrors")
    assert error.also == ("IpInCsumErrors",)
    # total length
    too_long = fix_ip_checksum(packet[:2] + (len(packet) + 1).to_bytes(2, "big") + packet[4:])
    dropped("IpInTruncatedPkts", parse_ipv4, too_long)
    dropped("IpInTruncatedPkts", parse_ipv4, packet[:-1])  # a byte short: truncated
    too_short = fix_ip_checksum(packet[:2] + (19).to_bytes(2, "big") + packet[4:])
    dropped("IpInHdrErrors", parse_ipv4, too_short)
    empty = fix_ip_checksum(packet[:2] + (20).to_bytes(2, "big") + packet[4:])
    assert parse_ipv4(empty).payload == b""
    # fragments: MF, an offset, both; DF and the reserved bit are not fragments
    for frag in (0x2000, 0x0001, 0x1FFF, 0x2010, 0x6000):
        fragment = fix_ip_checksum(packet[:6] + frag.to_bytes(2, "big") + packet[8:])
        dropped("IpReasmReqds", parse_ipv4, fragment)
    for frag in (0x4000, 0x8000, 0x0000):
        whole = fix_ip_checksum(packet[:6] + frag.to_bytes(2, "big") + packet[8:])
        assert parse_ipv4(whole).payload == b"x" * 21


def test_ipv4_checks_in_the_kernels_order() -> None:
    packet = good_packet()
    # a bad checksum is found before a total length past the end
    dropped("IpInHdrErrors", parse_ipv4, packet[:2] + b"\xff\xff" + packet[4:])
    # and a truncated packet before a fragment
    fragment = packet[:6] + b"\x20\x00" + packet[8:]
    dropped("IpInTruncatedPkts", parse_ipv4, fix_ip_checksum(fragment)[:-1])


def test_ipv4_options_are_skipped() -> None:
    packet = good_packet()
    options = b"\x07\x07\x04\x00\x00\x00\x00\x00"  # record route, then EOL padding
    header = bytearray(b"\x47" + packet[1:20] + options)
    header[2:4] = (len(packet) + len(options)).to_bytes(2, "big")
    ip = parse_ipv4(fix_ip_checksum(bytes(header) + packet[20:]))
    assert (ip.header_len, ip.payload, ip.src, ip.dst) == (28, b"x" * 21, SRC, DST)


def test_icmp_drops_and_their_counters() -> None:
    request = build_icmp(ICMP_ECHO_REQUEST, 0, 1, 2, b"ping")
    assert parse_icmp(request).is_echo_request
    bad = request[:2] + (int.from_bytes(request[2:4], "big") ^ 1).to_bytes(2, "big") + request[4:]
    error = dropped("IcmpInCsumErrors", parse_icmp, bad)
    assert error.counters == ("IcmpInCsumErrors", "IcmpInErrors")
    dropped("IcmpInCsumErrors", parse_icmp, b"")  # sums to 0: fails as in Linux
    dropped("IcmpInCsumErrors", parse_icmp, bytes(8))  # likewise
    # shorter than the 8-byte header but with a valid checksum
    short = b"\x08\x00" + checksum(b"\x08\x00\x00\x00").to_bytes(2, "big")
    assert checksum(short) == 0
    assert dropped("IcmpInErrors", parse_icmp, short).counters == ("IcmpInErrors",)
    dropped("IcmpInErrors", parse_icmp, build_icmp(19, 0, 0, 0))
    dropped("IcmpInErrors", parse_icmp, build_icmp(255, 0, 0, 0, b"x"))
    assert parse_icmp(build_icmp(18, 0, 0, 0)).type == 18


def test_tcp_drops_and_their_counters() -> None:
    good = tcp_bytes(raw_tcp_header(), b"data")
    assert parse_tcp(SRC, DST, good).payload == b"data"
    bad = good[:16] + bytes([good[16] ^ 0x80]) + good[17:]
    error = dropped("TcpInCsumErrors", parse_tcp, SRC, DST, bad)
    assert error.counters == ("TcpInCsumErrors", "TcpInErrs")
    # the pseudo-header counts: another address, another length (swapped addresses
    # sum the same: the checksum cannot see that)
    dropped("TcpInCsumErrors", parse_tcp, SRC, DST + 1, good)
    dropped("TcpInCsumErrors", parse_tcp, SRC ^ 0x80000000, DST, good)
    assert parse_tcp(DST, SRC, good).payload == b"data"
    dropped("TcpInCsumErrors", parse_tcp, SRC, DST, good + b"\0\0")
    # verify=False: a replica re-parsing what ingress verified
    assert parse_tcp(SRC, DST, bad, verify=False).payload == b"data"
    for size in (0, 1, 19):
        dropped("TcpInErrs", parse_tcp, SRC, DST, good[:size], verify=False)
    for doff in (0, 1, 4):
        dropped("TcpInErrs", parse_tcp, SRC, DST, tcp_bytes(raw_tcp_header(doff)))
    # a data offset past the end: 6 words, 20 bytes; 15 words, 24 bytes
    dropped("TcpInErrs", parse_tcp, SRC, DST, tcp_bytes(raw_tcp_header(6)))
    dropped("TcpInErrs", parse_tcp, SRC, DST, tcp_bytes(raw_tcp_header(15), b"\x01" * 4))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(b"\x02\x00\x01\x01", id="length 0"),
        pytest.param(b"\x08\x01\x01\x01", id="length 1"),
        pytest.param(b"\x01\x01\x01\x02", id="no length byte"),
        pytest.param(b"\x02\x04\x05\xb4\x08\x0a\x00\x00", id="past the header"),
        pytest.param(b"\x01\x01\x63\x05", id="unknown kind past the header"),
        pytest.param(b"\x01\x01\x63\x03", id="one byte past the header"),
        pytest.param(b"\x01\x02\x04\x05", id="MSS one byte past the header"),
    ],
)
def test_malformed_tcp_options_are_dropped(options: bytes) -> None:
    segment = tcp_bytes(raw_tcp_header(5 + len(options) // 4, options))
    error = dropped("TcpInErrs", parse_tcp, SRC, DST, segment)
    assert error.counters == ("TcpInErrs",)


@pytest.mark.parametrize(
    ("options", "mss", "wscale", "sack_ok"),
    [
        (b"\x01\x01\x08\x0a" + bytes(8), None, None, False),  # NOP NOP TS: the fast path
        # 12 bytes starting NOP NOP but not TS: off the fast path
        (b"\x01\x01\x02\x04\x05\xb4\x01\x01\x04\x02\x00\x00", 1460, None, True),
        (b"\x01\x01\x08\x09" + bytes(8), None, None, False),  # TS of length 9: skipped
        (b"\x02\x04\x05\xb4\x00\x03\x03\x07", 1460, None, False),  # after EOL: padding
        (b"\x02\x03\x05\x01", None, None, False),  # MSS of the wrong length: skipped
        (b"\x03\x04\x07\x00", None, None, False),  # window scale likewise
        (b"\x04\x03\x00\x01", None, None, False),  # SACK-permitted likewise
        (b"\x02\x04\x00\x01\x02\x04\x05\xb4", 1460, None, False),  # the last MSS wins
        (b"\x03\x03\x0e\x04\x02\x01\x01\x01", None, 14, True),
        (b"\x03\x03\xff\x00", None, 255, False),  # raw shift count: the engine clamps
        (b"\xfe\x06abcd\x04\x02", None, None, True),  # an unknown kind, by its length
    ],
)
def test_tcp_options(options: bytes, mss: int | None, wscale: int | None, sack_ok: bool) -> None:
    seg = parse_tcp(SRC, DST, tcp_bytes(raw_tcp_header(5 + len(options) // 4, options), b"p"))
    assert (seg.mss, seg.wscale, seg.sack_ok, seg.payload) == (mss, wscale, sack_ok, b"p")


def test_a_round_trip_through_the_engines_types() -> None:
    seg = Segment(40000, 80, 2**32 - 1, 12345, ACK | PSH | FIN, 65535, b"odd")
    packet = build_ipv4(SRC, DST, PROTO_TCP, build_tcp(SRC, DST, seg), ident=9)
    ip = parse_ipv4(packet)
    assert (ip.src, ip.dst, ip.proto, ip.ident, ip.ttl) == (SRC, DST, PROTO_TCP, 9, 64)
    assert parse_tcp(ip.src, ip.dst, ip.payload) == seg


# --- garbage -------------------------------------------------------------------------------


@given(st.binary(max_size=200), addrs, addrs)
@settings(deadline=None)
def test_garbage_raises_only_wire_errors(data: bytes, src: int, dst: int) -> None:
    for parse in (
        lambda: parse_ipv4(data),
        lambda: parse_icmp(data),
        lambda: parse_tcp(src, dst, data),
        lambda: parse_tcp(src, dst, data, verify=False),
    ):
        attempt(parse)  # anything but a WireError fails the test


@given(st.binary(max_size=40), st.binary(max_size=40), st.integers(0, 15))
@settings(deadline=None)
def test_garbage_options_raise_only_wire_errors(options: bytes, payload: bytes, doff: int) -> None:
    # a valid header and checksum, so that the option parser sees the garbage
    segment = tcp_bytes(raw_tcp_header(doff, options), payload)
    seg = attempt(lambda: parse_tcp(SRC, DST, segment))
    if isinstance(seg, WireError):
        assert seg.counter == "TcpInErrs"
    else:
        assert seg.payload == segment[doff * 4 :]


@given(st.binary(min_size=20, max_size=80), st.binary(max_size=60))
@settings(deadline=None)
def test_garbage_headers_with_valid_checksums_raise_only_wire_errors(
    header: bytes, payload: bytes
) -> None:
    packet = fix_ip_checksum(bytes([0x40 | (header[0] & 0x0F)]) + header[1:] + payload)
    ip = attempt(lambda: parse_ipv4(packet))
    if isinstance(ip, WireError):
        assert ip.counter in ("IpInHdrErrors", "IpInTruncatedPkts", "IpReasmReqds")
    else:
        assert 20 <= ip.header_len <= len(packet)
        assert len(ip.payload) == int.from_bytes(packet[2:4], "big") - ip.header_len


def test_syn_flag_is_counted_in_seg_len() -> None:
    seg = parse_tcp(SRC, DST, build_tcp(SRC, DST, Segment(1, 2, 3, 0, SYN, 5, mss=536)))
    assert (seg.seg_len, seg.mss) == (1, 536)
