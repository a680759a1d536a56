"""The durable log's file formats (dominoes._core._segment): records, scans, snapshots."""

from __future__ import annotations

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dominoes._core._layout import KIND_ENTRY, KIND_NOOP
from dominoes._core._segment import (
    RECORD,
    SEGMENT_HEADER,
    decode_snapshot,
    encode_record,
    encode_snapshot,
    scan,
    segment_header,
)


def segment(first: int, entries: list[tuple[int, bytes]]) -> bytes:
    """A segment of entries ``(nslots, payload)`` from seq ``first`` (empty payload: a no-op)."""
    out, seq = [segment_header(first)], first
    for nslots, payload in entries:
        out.append(encode_record(seq, nslots, KIND_ENTRY if payload else KIND_NOOP, payload))
        seq += nslots
    return b"".join(out)


def test_the_checksum_is_crc32c_over_length_seq_nslots_kind_and_payload() -> None:
    rec = encode_record(7, 1, KIND_ENTRY, b"hello")
    n, crc, seq, nslots, kind = RECORD.unpack_from(rec)
    assert (n, seq, nslots, kind) == (5, 7, 1, KIND_ENTRY)
    covered = rec[:4] + rec[8:]  # everything but the checksum itself
    assert crc == crc32c.crc32c(covered)


@given(
    first=st.integers(1, 2**40),
    entries=st.lists(st.tuples(st.integers(1, 5), st.binary(max_size=300)), max_size=30),
)
def test_a_clean_segment_scans_back_to_its_records(
    first: int, entries: list[tuple[int, bytes]]
) -> None:
    data = segment(first, entries)
    got = scan(data, first=first)
    assert got.problem is None
    assert got.end == len(data)
    assert [(r.nslots, r.payload) for r in got.records] == entries
    assert got.next_seq == first + sum(n for n, _ in entries)


@given(
    entries=st.lists(st.tuples(st.just(1), st.binary(min_size=1, max_size=50)), min_size=1),
    data=st.data(),
)
def test_a_record_cut_anywhere_is_a_torn_tail_cut_at_the_last_whole_record(
    entries: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    whole = segment(1, entries)
    last_start = len(segment(1, entries[:-1]))
    cut = data.draw(st.integers(last_start + 1, len(whole) - 1))
    got = scan(whole[:cut], first=1)
    assert got.problem is not None
    assert got.problem.kind == "torn"
    assert got.end == last_start
    assert len(got.records) == len(entries) - 1


def test_a_flipped_bit_in_the_last_record_is_torn() -> None:
    data = bytearray(segment(1, [(1, b"a" * 20), (1, b"b" * 20)]))
    data[-3] ^= 0x10
    got = scan(bytes(data), first=1)
    assert got.problem is not None
    assert got.problem.kind == "torn"
    assert [r.payload for r in got.records] == [b"a" * 20]


@pytest.mark.parametrize("where", ["payload", "seq", "length"])
def test_a_flipped_bit_mid_segment_is_corrupt_and_says_where(where: str) -> None:
    entries = [(1, b"x" * 30), (1, b"y" * 30), (1, b"z" * 30)]
    data = bytearray(segment(5, entries))
    second = SEGMENT_HEADER.size + RECORD.size + 30
    offset = {"payload": second + RECORD.size + 4, "seq": second + 8, "length": second}[where]
    data[offset] ^= 0x01
    got = scan(bytes(data), first=5)
    assert got.problem is not None
    if where == "length":
        # A bad length hides where the next record starts: it cannot be told
        # from a torn tail by what follows, unless the flip lands on a record.
        assert got.problem.offset == second
    else:
        assert got.problem.kind == "corrupt"
        assert got.problem.offset == second
    assert [r.payload for r in got.records] == [b"x" * 30]


def test_a_sequence_gap_is_corrupt() -> None:
    data = (
        segment_header(1)
        + encode_record(1, 1, KIND_ENTRY, b"a")
        + encode_record(3, 1, KIND_ENTRY, b"b")
        + encode_record(4, 1, KIND_ENTRY, b"c")
    )
    got = scan(data, first=1)
    assert got.problem is not None
    assert got.problem.kind == "corrupt"


def test_a_header_for_another_seq_or_no_header_is_refused() -> None:
    assert scan(segment(3, []), first=4).problem.kind == "corrupt"  # type: ignore[union-attr]
    assert scan(b"NOTASEGMENT12345", first=1).problem.kind == "corrupt"  # type: ignore[union-attr]
    assert scan(b"DOMSEG", first=1).problem.kind == "torn"  # type: ignore[union-attr]


def test_snapshots_round_trip_and_refuse_damage() -> None:
    blob = encode_snapshot(42, b"state bytes")
    assert decode_snapshot(blob) == (42, b"state bytes")
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        decode_snapshot(bytes(damaged))
    with pytest.raises(ValueError, match="bytes of state"):
        decode_snapshot(blob[:-1])
    with pytest.raises(ValueError, match="not a dominoes snapshot"):
        decode_snapshot(b"X" * 40)
