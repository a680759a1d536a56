"""The durable log's file formats, as bytes in and bytes out (sans-IO).

A durable service (``dominoes run --durable DIR``) keeps two kinds of file:

*Segments* (``seg-<first seq, 20 digits>.log``) hold every log entry in seq
order.  A segment starts with a 16-byte header, then records back to back::

    header   magic b"DOMSEG\\x00\\x01" (8) | first seq (u64)
    record   length (u32) | crc32c (u32) | seq (u64) | nslots (u16) | kind (u16) | payload

All integers are little-endian.  ``length`` is the payload's; the checksum
(CRC32C, Castagnoli) covers ``length``, ``seq``, ``nslots``, ``kind`` and the
payload, so a flipped bit anywhere in a record, its length included, fails it.
Records are contiguous in seq: the next record's seq is ``seq + nslots`` (an
entry that spans n ring slots keeps its n positions).  A no-op (a position a
dead producer left) is a record of kind ``KIND_NOOP`` with no payload, so that
a replay meets no gap.  A *poison mark* (kind :data:`KIND_POISON`, ``nslots``
0, no payload) holds no position: it says that the entry at its seq was
declared a poison entry (every live replica gave up applying it), so that a
restart or a replay applies that entry as the error the live replicas did,
instead of running its handler again.

*Snapshots* (``snapshot-<cursor, 20 digits>.snap``) hold the state the
replicas' join snapshots hold (``StateMachine.snapshot``), at a log position::

    magic b"DOMSNAP1" (8) | cursor (u64) | length (u64) | crc32c (u32) | 0 (u32) | data

What a scan decides about the first record that does not check out (see
:func:`scan`):

* it runs past the end of the bytes, or its checksum fails and nothing valid
  follows it: a **torn** tail, what a crash mid-write leaves.  Only the last
  segment may have one; the directory code truncates it and says how many
  bytes went.
* its checksum fails (or its seq is not the expected one) and a valid record
  follows: **corrupt**.  A bit flipped in the middle of the log is never
  skipped: it is an error that names the file and the offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

import crc32c

__all__ = (
    "RECORD",
    "SEGMENT_HEADER",
    "SEGMENT_MAGIC",
    "SNAPSHOT_HEADER",
    "SNAPSHOT_MAGIC",
    "KIND_POISON",
    "Problem",
    "Record",
    "Scan",
    "decode_snapshot",
    "encode_record",
    "encode_snapshot",
    "scan",
    "segment_header",
    "segment_name",
    "snapshot_name",
)

SEGMENT_MAGIC: Final = b"DOMSEG\x00\x01"
#: magic, first seq
SEGMENT_HEADER: Final = struct.Struct("<8sQ")
#: length, crc32c, seq, nslots, kind
RECORD: Final = struct.Struct("<IIQHH")
_CRC_FIELDS: Final = struct.Struct("<IQHH")  # what the checksum covers before the payload
#: the largest payload a record may declare (an entry's blob limit is 1 GiB)
MAX_RECORD: Final = 1 << 31

#: A record kind of the file only (the ring's kinds are 1-3): a poison mark.
KIND_POISON: Final = 16

SNAPSHOT_MAGIC: Final = b"DOMSNAP1"
#: magic, cursor, length, crc32c, reserved
SNAPSHOT_HEADER: Final = struct.Struct("<8sQQII")


def segment_name(first: int) -> str:
    return f"seg-{first:020d}.log"


def snapshot_name(cursor: int, replica: int | None = None) -> str:
    """A snapshot's file name; ``replica``: one replica's partitions (a partitioned service)."""
    if replica is None:
        return f"snapshot-{cursor:020d}.snap"
    return f"snapshot-{cursor:020d}.r{replica}.snap"


def segment_header(first: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, first)


def _crc(length: int, seq: int, nslots: int, kind: int, payload: bytes | memoryview) -> int:
    return crc32c.crc32c(payload, crc32c.crc32c(_CRC_FIELDS.pack(length, seq, nslots, kind)))


def encode_record(seq: int, nslots: int, kind: int, payload: bytes) -> bytes:
    """One record: header and payload."""
    n = len(payload)
    return RECORD.pack(n, _crc(n, seq, nslots, kind, payload), seq, nslots, kind) + payload


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    nslots: int
    kind: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """The first record of a segment that does not check out."""

    kind: Literal["torn", "corrupt"]
    #: byte offset of the record in the segment
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class Scan:
    records: list[Record]
    #: the offset just past the last good record (where a torn tail is cut)
    end: int
    #: the seq after the last good record
    next_seq: int
    problem: Problem | None


def _check(buf: memoryview, off: int, expect: int | None) -> tuple[str, int, Record | None]:
    """("ok" | "short" | "bad", the record's end, the record) at ``off``."""
    if off + RECORD.size > len(buf):
        return "short", len(buf), None
    n, crc, seq, nslots, kind = RECORD.unpack_from(buf, off)
    end = off + RECORD.size + n
    if n > MAX_RECORD:
        return "bad", len(buf), None
    if end > len(buf):
        return "short", len(buf), None
    payload = buf[off + RECORD.size : end]
    if _crc(n, seq, nslots, kind, payload) != crc:
        return "bad", end, None
    if kind == KIND_POISON:
        if nslots != 0 or n:
            return "bad", end, None
    elif nslots < 1 or (expect is not None and seq != expect):
        return "bad", end, None
    return "ok", end, Record(seq, nslots, kind, bytes(payload))


def scan(data: bytes | memoryview, *, first: int | None = None, keep: bool = True) -> Scan:
    """Check a whole segment's bytes: its records up to the first bad one, and why it stopped.

    ``first`` is the seq the header must name (None: take the header's).
    ``keep=False`` checks without keeping payloads (the start-up check).
    """
    buf = memoryview(data)
    if len(buf) < SEGMENT_HEADER.size:
        problem = Problem("torn", 0, f"{len(buf)} bytes, shorter than a segment header")
        return Scan([], 0, first or 0, problem)
    magic, head_seq = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC:
        return Scan([], 0, first or 0, Problem("corrupt", 0, "not a dominoes log segment"))
    if first is not None and head_seq != first:
        problem = Problem("corrupt", 0, f"the header names seq {head_seq}, the name {first}")
        return Scan([], 0, first, problem)
    records: list[Record] = []
    off = SEGMENT_HEADER.size
    expect = head_seq
    while off < len(buf):
        status, end, record = _check(buf, off, expect)
        if record is not None:
            if keep:
                records.append(record)
            if record.kind != KIND_POISON:
                expect = record.seq + record.nslots
            off = end
            continue
        if status == "short":
            reason = f"a record cut short ({len(buf) - off} bytes to the end)"
            return Scan(records, off, expect, Problem("torn", off, reason))
        # A bad record: corruption if a good one follows it, else a torn tail.
        follows = end < len(buf) and _check(buf, end, None)[0] == "ok"
        what = "checksum or sequence mismatch"
        if follows:
            return Scan(records, off, expect, Problem("corrupt", off, what))
        return Scan(records, off, expect, Problem("torn", off, f"{what} in the last record"))
    return Scan(records, off, expect, None)


def encode_snapshot(cursor: int, data: bytes) -> bytes:
    return SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, cursor, len(data), crc32c.crc32c(data), 0) + data


def decode_snapshot(blob: bytes) -> tuple[int, bytes]:
    """``(cursor, state)`` of a snapshot file's bytes; ValueError if it does not check out."""
    if len(blob) < SNAPSHOT_HEADER.size:
        raise ValueError("shorter than a snapshot header")
    magic, cursor, n, crc, _ = SNAPSHOT_HEADER.unpack_from(blob, 0)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError("not a dominoes snapshot")
    data = blob[SNAPSHOT_HEADER.size :]
    if len(data) != n:
        raise ValueError(f"{len(data)} bytes of state, the header says {n}")
    if crc32c.crc32c(data) != crc:
        raise ValueError("checksum mismatch")
    return cursor, data
