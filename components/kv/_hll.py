"""HyperLogLog: PFADD, PFCOUNT, PFMERGE, with Redis's own algorithm.

An HLL is a string value in Redis's *dense* format: the 16-byte header
(``HYLL``, the encoding byte 0, three unused bytes, a cached cardinality) and
16384 registers of 6 bits (12,288 bytes), 12,304 bytes in all.  Elements are
hashed with MurmurHash64A (seed ``0xadc83b19``): the low 14 bits pick the
register, the run of zeros above them (plus one) is its candidate value; the
estimate is Redis 7's (Otmar Ertl's improved estimator over the registers'
histogram), so PFCOUNT answers exactly what redis-server answers for the same
elements.

Differences from Redis (the bytes a GET shows, and what PFCOUNT touches):

* Redis starts an HLL *sparse* (a run-length encoding, a few hundred bytes)
  and converts it to dense past 3000 bytes; here it is dense from the start.
  A sparse HLL written by Redis (SET with its bytes, RESTORE) is read, and
  turned dense by the first PFADD or PFMERGE that writes it.
* Redis's PFCOUNT writes the cardinality it computes into the header (a
  cache, which makes it a write: it touches WATCH and the AOF).  Here PFCOUNT
  is a read and caches nothing: it runs on the replica that receives it.  A
  valid cached value in a value written by Redis is honoured, as Redis does.

Corrupt sparse values answer ``INVALIDOBJ Corrupted HLL object detected``, a
string that is not an HLL ``WRONGTYPE Key is not a valid HyperLogLog string
value.``, as in Redis; but a PFADD decodes a sparse value whole before writing,
where Redis's may update a register that lies before the corruption and answer 1.
PFDEBUG and PFSELFTEST (Redis's debugging commands) are not provided.
"""

from __future__ import annotations

import math
import struct
from typing import ClassVar, Final

from dominoes import Component, Context

from ._errors import INT64_MIN, KvError, wrong_type
from ._keyspace import Keyspace, now_ms
from ._resp import OK, Status
from ._table import command

__all__ = ("HyperLogLogs", "cardinality", "murmurhash64a")

P: Final = 14
Q: Final = 64 - P
REGISTERS: Final = 1 << P
_P_MASK: Final = REGISTERS - 1
HEADER: Final = 16
DENSE_SIZE: Final = HEADER + REGISTERS * 6 // 8
_DENSE: Final = 0
_SPARSE: Final = 1
#: Redis's ``HLL_ALPHA_INF``: 0.5 / ln(2).
_ALPHA_INF: Final = 0.721347520444481703680

_M64: Final = 0xFFFFFFFFFFFFFFFF
_MURMUR_M: Final = 0xC6A4A7935BD1E995
_SEED: Final = 0xADC83B19

_NOT_HLL: Final = "WRONGTYPE Key is not a valid HyperLogLog string value."
_CORRUPT: Final = "INVALIDOBJ Corrupted HLL object detected"

#: A new HLL's header: the magic, dense, and the cached cardinality marked stale.
_NEW_HEADER: Final = b"HYLL" + bytes(11) + b"\x80"


def murmurhash64a(data: bytes, seed: int = _SEED) -> int:
    """Redis's MurmurHash64A (little-endian blocks on every machine, as Redis reads them)."""
    n = len(data)
    m = _MURMUR_M
    h = (seed ^ (n * m)) & _M64
    blocks = n >> 3
    if blocks:
        for k in struct.unpack_from(f"<{blocks}Q", data):
            k = (k * m) & _M64
            k ^= k >> 47
            h ^= (k * m) & _M64
            h = (h * m) & _M64
    if n & 7:
        h ^= int.from_bytes(data[blocks << 3 :], "little")
        h = (h * m) & _M64
    h ^= h >> 47
    h = (h * m) & _M64
    return h ^ (h >> 47)


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y = 1.0
    z = 1 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= math.pow(1 - x, 2) * y
        if previous == z:
            return z / 3


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if previous == z:
            return z


def cardinality(registers: bytes) -> int:
    """Redis 7's ``hllCount`` over 16384 raw register values (one byte each)."""
    histogram = [0] * (Q + 2)
    left = len(registers)
    for v in range(Q + 2):  # low values hold nearly every register: stop once all are seen
        if not left:
            break
        histogram[v] = n = registers.count(v)
        left -= n
    m = float(REGISTERS)
    z = m * _tau((m - histogram[Q + 1]) / m)
    for j in range(Q, 0, -1):
        z += histogram[j]
        z *= 0.5
    z += m * _sigma(histogram[0] / m)
    estimate = _ALPHA_INF * m * m / z if z else math.inf
    if not math.isfinite(estimate):
        return INT64_MIN  # what llroundl makes of it on x86-64, as Redis replies
    whole = math.floor(estimate)
    return int(whole) + (1 if estimate - whole >= 0.5 else 0)  # llroundl: half away from 0


# --- the dense encoding: 4 registers in 3 bytes, from the least significant bit -------------


def _table(f: object) -> bytes:
    assert callable(f)
    return bytes(f(b) & 0xFF for b in range(256))


_LOW6: Final = _table(lambda b: b & 63)
_SHR6: Final = _table(lambda b: b >> 6)
_SHR4: Final = _table(lambda b: b >> 4)
_SHR2: Final = _table(lambda b: b >> 2)
_LOW4_SHL2: Final = _table(lambda b: (b & 15) << 2)
_LOW2_SHL4: Final = _table(lambda b: (b & 3) << 4)
_LOW2_SHL6: Final = _table(lambda b: (b & 3) << 6)
_SHR2_LOW4: Final = _table(lambda b: (b >> 2) & 15)
_LOW4_SHL4: Final = _table(lambda b: (b & 15) << 4)
_SHR4_LOW2: Final = _table(lambda b: (b >> 4) & 3)
_SHL2: Final = _table(lambda b: b << 2)


def _or(a: bytes, b: bytes) -> bytes:
    """Bytewise OR of two equal-length strings."""
    n = len(a)
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(n, "little")


def _unpack(dense: bytes) -> bytes:
    """The 16384 registers of a dense HLL, a byte each."""
    body = dense[HEADER:DENSE_SIZE]
    b0, b1, b2 = body[0::3], body[1::3], body[2::3]
    out = bytearray(REGISTERS)
    out[0::4] = b0.translate(_LOW6)
    out[1::4] = _or(b0.translate(_SHR6), b1.translate(_LOW4_SHL2))
    out[2::4] = _or(b1.translate(_SHR4), b2.translate(_LOW2_SHL4))
    out[3::4] = b2.translate(_SHR2)
    return bytes(out)


def _pack(registers: bytes) -> bytes:
    """The dense body (12288 bytes) holding 16384 register values (each below 64)."""
    r0, r1, r2, r3 = registers[0::4], registers[1::4], registers[2::4], registers[3::4]
    out = bytearray(REGISTERS * 6 // 8)
    out[0::3] = _or(r0, r1.translate(_LOW2_SHL6))
    out[1::3] = _or(r1.translate(_SHR2_LOW4), r2.translate(_LOW4_SHL4))
    out[2::3] = _or(r2.translate(_SHR4_LOW2), r3.translate(_SHL2))
    return bytes(out)


def _sparse_registers(value: bytes) -> bytes:
    """The registers of a sparse HLL (Redis's ZERO, XZERO and VAL opcodes)."""
    out = bytearray(REGISTERS)
    idx = 0
    p = HEADER
    end = len(value)
    while p < end:
        op = value[p]
        kind = op & 0xC0
        if kind == 0:  # ZERO: 00xxxxxx
            idx += (op & 63) + 1
            p += 1
        elif kind == 0x40:  # XZERO: 01xxxxxx yyyyyyyy (C reads the NUL past the end)
            low = value[p + 1] if p + 1 < end else 0
            idx += (((op & 63) << 8) | low) + 1
            p += 2
        else:  # VAL: 1vvvvvxx
            run = (op & 3) + 1
            if idx + run <= REGISTERS:
                out[idx : idx + run] = bytes([((op >> 2) & 31) + 1]) * run
            idx += run
            p += 1
        if idx > REGISTERS:
            raise KvError(_CORRUPT)
    if idx != REGISTERS:
        raise KvError(_CORRUPT)
    return bytes(out)


def registers_of(value: bytes) -> bytes:
    """The 16384 registers of a valid HLL value, dense or sparse."""
    if value[4] == _DENSE:
        return _unpack(value)
    return _sparse_registers(value)


def is_hll(value: bytes) -> bool:
    """Redis's ``isHLLObjectOrReply`` on a string: the magic, a known encoding, the size."""
    if len(value) < HEADER or value[:4] != b"HYLL" or value[4] > _SPARSE:
        return False
    return value[4] != _DENSE or len(value) == DENSE_SIZE


_LANE_HIGH: Final = int.from_bytes(b"\x80" * REGISTERS, "little")
_LANES: Final = int.from_bytes(b"\xff" * REGISTERS, "little")


def _merge(a: int, b: int) -> int:
    """The lane-wise maximum of two register arrays (as ints, a byte a lane, values < 128)."""
    ge = (((a | _LANE_HIGH) - b) & _LANE_HIGH) >> 7  # 1 in each lane where a >= b
    mask = ge * 0xFF
    return (a & mask) | (b & (_LANES ^ mask))


#: The last cardinalities computed, by HLL value: PFCOUNT is a read and caches nothing in
#: the value (Redis's cache is a write), so a repeated PFCOUNT of an unchanged HLL is
#: answered from here instead of its 16384 registers (about a millisecond).  A function of
#: the value alone, so every replica answers the same.
_COUNTS: Final[dict[bytes, int]] = {}
_COUNTS_KEPT: Final = 64


class HyperLogLogs(Component):
    """PFADD, PFCOUNT, PFMERGE over string values in Redis's dense HLL format."""

    name = "hyperloglogs"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _hll(self, key: bytes, now: int) -> bytes | None:
        value = self.keyspace.get(key, now)
        if value is None:
            return None
        if type(value) is not bytes:
            raise wrong_type()
        if not is_hll(value):
            raise KvError(_NOT_HLL)
        return value

    def _merged(self, keys: list[bytes], now: int) -> tuple[bytes, bool]:
        """The lane-wise maximum of the HLLs at ``keys`` (missing ones are empty), and
        whether any was found; checked and decoded key by key, in Redis's order."""
        total = 0
        found = False
        for key in keys:
            value = self._hll(key, now)
            if value is None:
                continue
            regs = int.from_bytes(registers_of(value), "little")
            total = _merge(total, regs) if found else regs
            found = True
        return total.to_bytes(REGISTERS, "little"), found

    @command("PFCOUNT", -2, keys=(1, -1, 1))
    def pfcount(self, now: int, args: list[bytes]) -> int:
        """The estimated number of distinct elements (of the union, for several keys)."""
        if len(args) > 2:
            return cardinality(self._merged(args[1:], now)[0])
        value = self._hll(args[1], now)
        if value is None:
            return 0
        if not value[15] & 0x80:  # a valid cached cardinality (written by Redis)
            return int.from_bytes(value[8:16], "little")
        count = _COUNTS.get(value)
        if count is None:
            count = cardinality(registers_of(value))
            if len(_COUNTS) >= _COUNTS_KEPT:
                del _COUNTS[next(iter(_COUNTS))]
            _COUNTS[value] = count
        return count

    @command("PFADD", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def pfadd(self, ctx: Context, args: list[bytes]) -> int:
        """Add the elements; 1 if a register changed (or the key was created), else 0."""
        key = args[1]
        value = self._hll(key, now_ms(ctx))
        created = value is None
        if value is None:
            buf = bytearray(_NEW_HEADER)
            buf.extend(bytes(DENSE_SIZE - HEADER))
        elif len(args) == 2:
            return 0
        elif value[4] == _DENSE:
            buf = bytearray(value)
        else:  # Redis's sparse encoding: made dense, its header kept
            buf = bytearray(value[:HEADER])
            buf[4] = _DENSE
            buf.extend(_pack(_sparse_registers(value)))
        buf.append(0)  # the NUL the last register's two-byte window reads, as in C
        changed = False
        for element in args[2:]:
            h = murmurhash64a(element)
            index = h & _P_MASK
            h = (h >> P) | (1 << Q)
            count = (h & -h).bit_length()
            bit = index * 6
            pos = HEADER + (bit >> 3)
            shift = bit & 7
            window = buf[pos] | (buf[pos + 1] << 8)
            if count > (window >> shift) & 63:
                window = (window & ~(63 << shift)) | (count << shift)
                buf[pos] = window & 0xFF
                buf[pos + 1] = window >> 8
                changed = True
        if not (changed or created):
            return 0
        del buf[-1]
        buf[15] |= 0x80  # the cached cardinality is stale
        self.keyspace.put(key, bytes(buf))
        return 1

    @command("PFMERGE", -2, write=True, keys=(1, -1, 1))
    def pfmerge(self, ctx: Context, args: list[bytes]) -> Status:
        """Store the union of the source HLLs (and the destination's own) at the destination."""
        now = now_ms(ctx)
        registers, _ = self._merged(args[1:], now)
        dest = args[1]
        old = self._hll(dest, now)
        header = bytearray(_NEW_HEADER if old is None else old[:HEADER])
        header[4] = _DENSE
        header[15] |= 0x80
        self.keyspace.put(dest, bytes(header) + _pack(registers))
        return OK
