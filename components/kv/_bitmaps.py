"""Bitmaps: SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP, BITFIELD and BITFIELD_RO.

A bitmap is a string value (``bytes``): bit 0 is the most significant bit of
the first byte, as in Redis, so GET shows the same bytes.  Offsets follow
Redis 7.0: a bit offset must be below 2**32 (the string would exceed
``proto-max-bulk-len``, 512 MB), and a write past the end pads with zero
bytes.  Values are immutable ``bytes``: a write that changes a bitmap makes a
new string (a copy of its length), one that changes nothing stores nothing and
touches no WATCH, as Redis leaves such a key unmodified.

The checks come in Redis 7.0's order (arguments, then the key, then the
range), so errors and the nil/zero answers for a missing key are its own:
``BITCOUNT nokey x y`` is 0 and ``BITCOUNT s x y`` an error, as there.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from dominoes import Component, Context

from ._errors import INT64_MAX, KvError, parse_int, syntax_error, wrong_type
from ._keyspace import Keyspace, now_ms
from ._strings import MAX_STRING
from ._table import command

__all__ = ("Bitmaps",)

_OFFSET_ERROR: Final = "ERR bit offset is not an integer or out of range"
_TYPE_ERROR: Final = (
    "ERR Invalid bitfield type. Use something like i16 u8. "
    "Note that u64 is not supported but i64 is."
)
_U64: Final = 1 << 64

_WRAP: Final = 0
_SAT: Final = 1
_FAIL: Final = 2
_OVERFLOWS: Final = {b"wrap": _WRAP, b"sat": _SAT, b"fail": _FAIL}

_GET: Final = 0
_SET: Final = 1
_INCRBY: Final = 2


def _word(arg: bytes) -> bytes:
    """The argument as C's ``strcasecmp`` sees it: lower-case, up to its first NUL."""
    return arg.split(b"\0", 1)[0].lower()


def _wrap64(n: int) -> int:
    """``n`` as a C ``long long`` after a wrapping multiplication."""
    n %= _U64
    return n - _U64 if n > INT64_MAX else n


def _bit_offset(raw: bytes, bits: int = 0) -> int:
    """Redis's ``getBitOffsetFromArgument``: an offset below 2**32, ``#n`` meaning n * bits."""
    hashed = bits > 0 and raw[:1] == b"#"
    try:
        offset = parse_int(raw[1:] if hashed else raw)
    except KvError:
        raise KvError(_OFFSET_ERROR) from None
    if hashed:
        offset = _wrap64(offset * bits)
    if offset < 0 or offset >> 3 >= MAX_STRING:
        raise KvError(_OFFSET_ERROR)
    return offset


def _bitfield_type(raw: bytes) -> tuple[bool, int]:
    """``i<bits>`` (1..64) or ``u<bits>`` (1..63): (signed, bits)."""
    sign = raw[:1]
    if sign not in (b"i", b"u"):
        raise KvError(_TYPE_ERROR)
    try:
        bits = parse_int(raw[1:].split(b"\0", 1)[0])
    except KvError:
        raise KvError(_TYPE_ERROR) from None
    signed = sign == b"i"
    if bits < 1 or bits > (64 if signed else 63):
        raise KvError(_TYPE_ERROR)
    return signed, bits


def _range(length: int, start: int, end: int, isbit: bool) -> tuple[int, int] | None:
    """BITCOUNT's and BITPOS's range, as the bit range ``(first, last)`` it covers, or None
    when it is empty: negative indexes from the end, clamped to the string."""
    total = length * 8 if isbit else length
    if start < 0:
        start += total
    if end < 0:
        end += total
    start = max(start, 0)
    end = min(max(end, 0), total - 1)
    if start > end:
        return None
    if isbit:
        return start, end
    return start * 8, end * 8 + 7


def _window(value: bytes, first: int, last: int) -> tuple[int, int]:
    """The bits ``first..last`` of ``value`` as an int (bit ``first`` the most significant),
    and how many bits that is."""
    width = last - first + 1
    lo = first >> 3
    chunk = int.from_bytes(value[lo : (last >> 3) + 1], "big")
    chunk >>= 7 - (last & 7)
    return chunk & ((1 << width) - 1), width


def _read(value: bytes | bytearray, offset: int, bits: int) -> int:
    """The unsigned ``bits``-bit integer at bit ``offset`` (zeros past the end)."""
    lo = offset >> 3
    nbytes = ((offset + bits - 1) >> 3) - lo + 1
    chunk = bytes(value[lo : lo + nbytes]).ljust(nbytes, b"\0")
    n = int.from_bytes(chunk, "big")
    return (n >> (nbytes * 8 - (offset & 7) - bits)) & ((1 << bits) - 1)


def _write(buf: bytearray, offset: int, bits: int, value: int) -> None:
    """Store the low ``bits`` bits of ``value`` at bit ``offset`` (``buf`` is long enough)."""
    lo = offset >> 3
    nbytes = ((offset + bits - 1) >> 3) - lo + 1
    shift = nbytes * 8 - (offset & 7) - bits
    mask = ((1 << bits) - 1) << shift
    n = int.from_bytes(buf[lo : lo + nbytes], "big")
    n = (n & ~mask) | ((value << shift) & mask)
    buf[lo : lo + nbytes] = n.to_bytes(nbytes, "big")


class _Op:
    __slots__ = ("bits", "offset", "opcode", "overflow", "signed", "value")

    def __init__(
        self, opcode: int, signed: bool, bits: int, offset: int, value: int, overflow: int
    ) -> None:
        self.opcode = opcode
        self.signed = signed
        self.bits = bits
        self.offset = offset
        self.value = value
        self.overflow = overflow


def _parse_bitfield(args: list[bytes]) -> list[_Op]:
    """BITFIELD's subcommands, all parsed (and checked) before anything runs."""
    ops: list[_Op] = []
    overflow = _WRAP
    j = 2
    n = len(args)
    while j < n:
        left = n - j - 1
        sub = _word(args[j])
        if sub == b"get" and left >= 2:
            opcode = _GET
        elif sub == b"set" and left >= 3:
            opcode = _SET
        elif sub == b"incrby" and left >= 3:
            opcode = _INCRBY
        elif sub == b"overflow" and left >= 1:
            kind = _OVERFLOWS.get(_word(args[j + 1]))
            if kind is None:
                raise KvError("ERR Invalid OVERFLOW type specified")
            overflow = kind
            j += 2
            continue
        else:
            raise syntax_error()
        signed, bits = _bitfield_type(args[j + 1])
        offset = _bit_offset(args[j + 2], bits)
        value = 0
        if opcode != _GET:
            value = parse_int(args[j + 3])
        ops.append(_Op(opcode, signed, bits, offset, value, overflow))
        j += 3 if opcode == _GET else 4
    return ops


def _apply(op: _Op, old: int) -> tuple[int | None, int]:
    """A SET or INCRBY on a field holding ``old`` (signed or not, as the type says):
    (the reply, or None if OVERFLOW FAIL refuses it; the field's new value)."""
    bits = op.bits
    if op.signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if op.opcode == _INCRBY:
            value, incr = old, op.value
        else:
            value, incr = op.value, 0
        target = value + incr
        wrapped = ((target - lo) % (1 << bits)) + lo
        direction = _signed_overflow(value, incr, bits, lo, hi)
    else:
        lo, hi = 0, (1 << bits) - 1
        # SET: Redis casts the int64 to uint64 first, so -1 is above any unsigned maximum
        target = old + op.value if op.opcode == _INCRBY else op.value % _U64
        wrapped = target % (1 << bits)
        direction = 1 if target > hi else -1 if target < lo else 0
    new = target
    if direction:
        if op.overflow == _FAIL:
            return None, old
        new = wrapped if op.overflow == _WRAP else (hi if direction > 0 else lo)
    return (new if op.opcode == _INCRBY else old), new


def _signed_overflow(value: int, incr: int, bits: int, lo: int, hi: int) -> int:
    """Redis's ``checkSignedBitfieldOverflow``: 1 above, -1 below, 0 within, computed as its
    C does, in wrapping 64-bit arithmetic: a SET far below the range, such as i8's
    -9223372036854775808, counts as *above* it (OVERFLOW SAT stores the maximum)."""
    maxincr = _wrap64(hi - value)
    minincr = _wrap64(lo - value)
    wide = bits != 64
    if value > hi or (wide and incr > maxincr) or (value >= 0 and incr > 0 and incr > maxincr):
        return 1
    if value < lo or (wide and incr < minincr) or (value < 0 and incr < 0 and incr < minincr):
        return -1
    return 0


class Bitmaps(Component):
    """Bit operations on string values (``bytes``) in the keyspace."""

    name = "bitmaps"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _string(self, key: bytes, now: int) -> bytes | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not bytes:
            raise wrong_type()
        return value

    # --- reads -----------------------------------------------------------------------------

    @command("GETBIT", 3, keys=(1, 1, 1), flags=("fast",))
    def getbit(self, now: int, args: list[bytes]) -> int:
        offset = _bit_offset(args[2])
        value = self._string(args[1], now)
        byte = offset >> 3
        if value is None or byte >= len(value):
            return 0
        return (value[byte] >> (7 - (offset & 7))) & 1

    @command("BITCOUNT", -2, keys=(1, 1, 1))
    def bitcount(self, now: int, args: list[bytes]) -> int:
        """BITCOUNT key [start end [BYTE|BIT]]: the key first (missing: 0), then the range."""
        value = self._string(args[1], now)
        if value is None:
            return 0
        n = len(args)
        if n == 2:
            return int.from_bytes(value, "big").bit_count()
        if n not in (4, 5):
            raise syntax_error()
        start, end = parse_int(args[2]), parse_int(args[3])
        if start < 0 and end < 0 and start > end:  # before the unit's syntax, as Redis 7.0
            return 0
        isbit = False
        if n == 5:
            unit = _word(args[4])
            if unit not in (b"bit", b"byte"):
                raise syntax_error()
            isbit = unit == b"bit"
        bits = _range(len(value), start, end, isbit)
        if bits is None:
            return 0
        window, _ = _window(value, *bits)
        return window.bit_count()

    @command("BITPOS", -3, keys=(1, 1, 1))
    def bitpos(self, now: int, args: list[bytes]) -> int:
        """BITPOS key bit [start [end [BYTE|BIT]]]: the first bit set (1) or clear (0).

        Past the end of the string every bit is clear, so looking for a 0 without an
        end finds the bit after the string; with an end given, the range is all there is.
        """
        bit = parse_int(args[2])
        if bit not in (0, 1):
            raise KvError("ERR The bit argument must be 1 or 0.")
        value = self._string(args[1], now)
        if value is None:
            return -1 if bit else 0
        n = len(args)
        if n > 6:
            raise syntax_error()
        isbit = end_given = False
        start, end = 0, -1
        if n >= 4:
            start = parse_int(args[3])
            if n == 6:
                unit = _word(args[5])
                if unit not in (b"bit", b"byte"):
                    raise syntax_error()
                isbit = unit == b"bit"
            if n >= 5:
                end = parse_int(args[4])
                end_given = True
        bits = _range(len(value), start, end, isbit)
        if bits is None:
            return -1
        first, last = bits
        window, width = _window(value, first, last)
        if bit == 0:
            window ^= (1 << width) - 1
        if window:
            return first + width - window.bit_length()
        if bit == 1 or end_given:
            return -1
        return ((last >> 3) + 1) * 8  # the first bit past the bytes searched

    @command("BITFIELD_RO", -2, keys=(1, 1, 1), flags=("fast",))
    def bitfield_ro(self, now: int, args: list[bytes]) -> list[Any]:
        ops = _parse_bitfield(args)
        if any(op.opcode != _GET for op in ops):
            raise KvError("ERR BITFIELD_RO only supports the GET subcommand")
        return self._gets(self._string(args[1], now), ops)

    @staticmethod
    def _gets(value: bytes | None, ops: list[_Op]) -> list[Any]:
        out: list[Any] = []
        data = value or b""
        for op in ops:
            got = _read(data, op.offset, op.bits)
            if op.signed and got >> (op.bits - 1):
                got -= 1 << op.bits
            out.append(got)
        return out

    # --- writes ----------------------------------------------------------------------------

    @command("SETBIT", 4, write=True, keys=(1, 1, 1))
    def setbit(self, ctx: Context, args: list[bytes]) -> int:
        offset = _bit_offset(args[2])
        try:
            on = parse_int(args[3])
        except KvError:
            on = -1
        if on not in (0, 1):
            raise KvError("ERR bit is not an integer or out of range")
        key = args[1]
        value = self._string(key, now_ms(ctx))
        byte = offset >> 3
        shift = 7 - (offset & 7)
        old = value or b""
        if byte < len(old):
            was = (old[byte] >> shift) & 1
            if value is not None and was == on:
                return was  # nothing changes: no write, no WATCH touched (as Redis)
        else:
            was = 0
        buf = bytearray(old)
        if byte >= len(buf):
            buf.extend(bytes(byte + 1 - len(buf)))
        buf[byte] = (buf[byte] & ~(1 << shift)) | (on << shift)
        self.keyspace.put(key, bytes(buf))
        return was

    @command("BITOP", -4, write=True, keys=(2, -1, 1))
    def bitop(self, ctx: Context, args: list[bytes]) -> int:
        """BITOP AND|OR|XOR|NOT dest key...: the result's length (0 deletes dest)."""
        op = _word(args[1])
        if op not in (b"and", b"or", b"xor", b"not"):
            raise syntax_error()
        if op == b"not" and len(args) != 4:
            raise KvError("ERR BITOP NOT must be called with a single source key.")
        now = now_ms(ctx)
        sources = [self._string(key, now) or b"" for key in args[3:]]
        size = max(map(len, sources))
        ks = self.keyspace
        dest = args[2]
        if not size:
            ks.remove(dest)
            return 0
        ints = [int.from_bytes(s.ljust(size, b"\0"), "big") for s in sources]
        result = ints[0]
        if op == b"and":
            for x in ints[1:]:
                result &= x
        elif op == b"or":
            for x in ints[1:]:
                result |= x
        elif op == b"xor":
            for x in ints[1:]:
                result ^= x
        else:
            result ^= (1 << (size * 8)) - 1
        ks.put(dest, result.to_bytes(size, "big"))
        ks.clear_deadline(dest)
        return size

    @command("BITFIELD", -2, write=True, keys=(1, 1, 1))
    def bitfield(self, ctx: Context, args: list[bytes]) -> list[Any]:
        """BITFIELD key [GET type offset] [SET type offset value] [INCRBY type offset
        increment] [OVERFLOW WRAP|SAT|FAIL] ...: a reply per GET, SET and INCRBY."""
        ops = _parse_bitfield(args)
        key = args[1]
        value = self._string(key, now_ms(ctx))
        writes = [op for op in ops if op.opcode != _GET]
        if not writes:
            return self._gets(value, ops)
        highest = max(op.offset + op.bits - 1 for op in writes)
        size = (highest >> 3) + 1
        buf = bytearray(value or b"")
        grown = value is None or len(buf) < size
        if len(buf) < size:
            buf.extend(bytes(size - len(buf)))
        out: list[Any] = []
        changes = 0
        for op in ops:
            old = _read(buf, op.offset, op.bits)
            if op.signed and old >> (op.bits - 1):
                old -= 1 << op.bits
            if op.opcode == _GET:
                out.append(old)
                continue
            reply, new = _apply(op, old)
            out.append(reply)
            if reply is None:
                continue
            _write(buf, op.offset, op.bits, new)
            if grown or new != old:
                changes += 1
        ks = self.keyspace
        if changes:
            ks.put(key, bytes(buf))
        elif grown:  # created or padded, yet no field written: Redis touches no WATCH
            ks.values[key] = bytes(buf)
        return out
