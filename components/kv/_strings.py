"""Strings: SET (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL), GET, GETEX, SETEX, INCR, GETRANGE,
SETRANGE, MSETNX, LCS, ..."""

from __future__ import annotations

from fractions import Fraction
from operator import itemgetter
from typing import Any, ClassVar, Final

from dominoes import Component, Context

from . import _longdouble as longdouble
from ._errors import (
    INT64_MAX,
    INT64_MIN,
    KvError,
    arity_error,
    not_float,
    not_integer,
    overflow,
    parse_int,
    syntax_error,
    wrong_type,
)
from ._keyspace import Keyspace, deadline_ms, now_ms
from ._resp import OK
from ._table import command

__all__ = ("Strings", "add_float")

#: The longest string SETRANGE may make: Redis's default ``proto-max-bulk-len`` (512 MiB).
MAX_STRING: Final = 512 * 1024 * 1024

_KEY: Final = itemgetter(1)
_VALUE: Final = itemgetter(2)


def add_float(current: bytes | None, increment: bytes, *, hash_field: bool = False) -> bytes:
    """INCRBYFLOAT's arithmetic, Redis's to the last digit (see :mod:`._longdouble`): the
    current value (None: 0) is read first, then the increment; the new value's text."""
    base = longdouble.parse(current) if current is not None else Fraction(0)
    if base is None:
        raise KvError(
            "ERR hash value is not a float" if hash_field else "ERR value is not a valid float"
        )
    by = longdouble.parse(increment)
    if by is None:
        raise not_float()
    total = longdouble.add(base, by)
    if isinstance(total, float):
        raise KvError("ERR increment would produce NaN or Infinity")
    return longdouble.format_human(total)


_TIMES: Final = frozenset({b"EX", b"PX", b"EXAT", b"PXAT"})


def _deadline(unit: bytes, raw: bytes, now: int, command: str) -> int:
    """The deadline an EX, PX, EXAT or PXAT option names (SET, SETEX, PSETEX, GETEX).

    Redis's ``getExpireMillisecondsOrReply``: an integer, above zero, that
    stays within 64 bits of milliseconds once converted and added to now.
    """
    return deadline_ms(
        parse_int(raw),
        seconds=unit in (b"EX", b"EXAT"),
        relative=unit in (b"EX", b"PX"),
        now=now,
        command=command,
        positive=True,
    )


class Strings(Component):
    """String values (``bytes``) in the keyspace."""

    name = "strings"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _string(self, key: bytes, now: int) -> bytes | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not bytes:
            raise wrong_type()
        return value

    # --- reads -----------------------------------------------------------------------------

    @command("GET", 2, keys=(1, 1, 1), flags=("fast",))
    def get(self, now: int, args: list[bytes]) -> bytes | None:
        ks = self.keyspace
        key = args[1]
        value = ks.values.get(key)
        if value is None:
            return None
        if ks.deadlines:
            deadline = ks.deadlines.get(key)
            if deadline is not None and deadline <= now:
                return None
        if type(value) is not bytes:
            raise wrong_type()
        return value

    @command("MGET", -2, keys=(1, -1, 1), flags=("fast",))
    def mget(self, now: int, args: list[bytes]) -> list[bytes | None]:
        get = self.keyspace.get
        out: list[bytes | None] = []
        for key in args[1:]:
            value = get(key, now)
            out.append(value if type(value) is bytes else None)
        return out

    @command("STRLEN", 2, keys=(1, 1, 1), flags=("fast",))
    def strlen(self, now: int, args: list[bytes]) -> int:
        value = self._string(args[1], now)
        return 0 if value is None else len(value)

    @command("GETRANGE", 4, keys=(1, 1, 1))
    @command("SUBSTR", 4, keys=(1, 1, 1))
    def getrange(self, now: int, args: list[bytes]) -> bytes:
        """The bytes from ``start`` to ``end`` inclusive; negative counts from the end."""
        start, end = parse_int(args[2]), parse_int(args[3])
        value = self._string(args[1], now)
        if value is None:
            return b""
        n = len(value)
        if start < 0 and end < 0 and start > end:
            return b""
        if start < 0:
            start = max(0, n + start)
        if end < 0:
            end = max(0, n + end)
        end = min(end, n - 1)
        if start > end or n == 0:
            return b""
        return value[start : end + 1]

    @command("LCS", -3, keys=(1, 2, 1))
    def lcs(self, now: int, args: list[bytes]) -> Any:
        """The longest common subsequence of two strings (LEN, IDX, MINMATCHLEN, WITHMATCHLEN).

        Redis's dynamic programme, walked back the same way, so the matches
        (and the subsequence, when there are several) are the ones it gives,
        and its limit: refused when its table would exceed 512 MB.
        """
        ks = self.keyspace
        a = ks.get(args[1], now)
        b = ks.get(args[2], now)
        if (a is not None and type(a) is not bytes) or (b is not None and type(b) is not bytes):
            raise KvError("ERR The specified keys must contain string values")
        a = a or b""
        b = b or b""
        getidx = getlen = withmatchlen = False
        minmatchlen = 0
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if opt == b"IDX":
                getidx = True
            elif opt == b"LEN":
                getlen = True
            elif opt == b"WITHMATCHLEN":
                withmatchlen = True
            elif opt == b"MINMATCHLEN" and i + 1 < len(args):
                minmatchlen = max(0, parse_int(args[i + 1]))
                i += 1
            else:
                raise syntax_error()
            i += 1
        if getidx and getlen:
            raise KvError("ERR If you want both the length and indexes, please just use IDX.")
        alen, blen = len(a), len(b)
        if (alen + 1) * (blen + 1) * 4 > MAX_STRING:  # Redis's table of uint32 would be
            raise KvError(
                "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len"
            )
        table = _LcsTable(a, b)
        total = table(alen, blen)
        if getlen and not getidx:
            return total
        result = bytearray(total)
        idx = total
        matches: list[Any] = []
        arange_start, arange_end, brange_start, brange_end = alen, 0, 0, 0
        i, j = alen, blen
        while i > 0 and j > 0:
            emit = False
            if a[i - 1] == b[j - 1]:
                result[idx - 1] = a[i - 1]
                if arange_start == alen:
                    arange_start = arange_end = i - 1
                    brange_start = brange_end = j - 1
                elif arange_start == i and brange_start == j:
                    arange_start -= 1
                    brange_start -= 1
                else:
                    emit = True
                if arange_start == 0 or brange_start == 0:
                    emit = True
                idx -= 1
                i -= 1
                j -= 1
            else:
                if table(i - 1, j) > table(i, j - 1):
                    i -= 1
                else:
                    j -= 1
                if arange_start != alen:
                    emit = True
            if emit:
                match_len = arange_end - arange_start + 1
                if getidx and (minmatchlen == 0 or match_len >= minmatchlen):
                    match: list[Any] = [[arange_start, arange_end], [brange_start, brange_end]]
                    if withmatchlen:
                        match.append(match_len)
                    matches.append(match)
                arange_start = alen
        if getidx:
            return {b"matches": matches, b"len": total}
        return bytes(result)

    # --- writes ----------------------------------------------------------------------------

    def set_run(self, ctx: Context, run: list[list[bytes]]) -> list[Any]:
        """A run of consecutive SETs (what a pipelining client sends), replies in order.

        Plain ``SET key value`` commands are stored with one ``dict.update``
        over the run; a run holding any option goes command by command.
        """
        if len(run) > 1 and set(map(len, run)) == {3}:
            ks = self.keyspace
            keys = list(map(_KEY, run))
            ks.values.update(zip(keys, map(_VALUE, run), strict=True))
            if ks.deadlines:
                pop = ks.deadlines.pop
                for key in keys:
                    pop(key, None)
            if ks.watched:
                for key in keys:
                    ks.bump(key)
            return [OK] * len(run)
        out: list[Any] = []
        for args in run:
            try:
                out.append(self.set(ctx, args))
            except KvError as exc:
                out.append(exc)
        return out

    @command("SET", -3, write=True, keys=(1, 1, 1), run="set_run")
    def set(self, ctx: Context, args: list[bytes]) -> Any:
        ks = self.keyspace
        key = args[1]
        if len(args) == 3:  # the common case: no options
            ks.values[key] = args[2]
            if ks.deadlines:
                ks.deadlines.pop(key, None)
            if ks.watched:
                ks.bump(key)
            return OK
        nx = xx = get = keepttl = False
        unit = b""
        raw = b""
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if opt == b"NX" and not xx:
                nx = True
            elif opt == b"XX" and not nx:
                xx = True
            elif opt == b"GET":
                get = True
            elif opt == b"KEEPTTL" and not unit:
                keepttl = True
            elif opt in _TIMES and unit in (b"", opt) and not keepttl:  # EX twice: the last
                if i + 1 >= len(args):
                    raise syntax_error()
                unit = opt
                raw = args[i + 1]
                i += 1
            else:
                raise syntax_error()
            i += 1
        now = now_ms(ctx)
        deadline = None
        if unit:  # parsed after the options, so a syntax error wins, as in Redis
            deadline = _deadline(unit, raw, now, "set")
        old = ks.get(key, now)
        if get and old is not None and type(old) is not bytes:
            raise wrong_type()
        if (nx and old is not None) or (xx and old is None):
            return old if get else None
        ks.put(key, args[2])
        if deadline is not None:
            ks.set_deadline(ctx, key, deadline)
        elif not keepttl:
            ks.clear_deadline(key)
        return old if get else OK

    @command("SETEX", 4, write=True, keys=(1, 1, 1))
    @command("PSETEX", 4, write=True, keys=(1, 1, 1))
    def setex(self, ctx: Context, args: list[bytes]) -> Any:
        """SETEX key seconds value, PSETEX key milliseconds value: SET with EX or PX."""
        name = args[0]
        deadline = _deadline(
            b"EX" if name == b"SETEX" else b"PX", args[2], now_ms(ctx), name.decode().lower()
        )
        ks = self.keyspace
        ks.put(args[1], args[3])
        ks.set_deadline(ctx, args[1], deadline)
        return OK

    @command("GETEX", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def getex(self, ctx: Context, args: list[bytes]) -> bytes | None:
        """GET, then set (EX, PX, EXAT, PXAT) or remove (PERSIST) the key's time to live.

        Redis 7.0's order: the options' syntax, then the key (missing: nil,
        whatever the time says; not a string: WRONGTYPE), then the time.  An
        EXAT or PXAT already past deletes the key after returning its value.
        """
        unit = raw = b""
        persist = False
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"PERSIST" and not unit:
                persist = True
            elif opt in _TIMES and unit in (b"", opt) and not persist and i + 1 < len(args):
                unit = opt
                raw = args[i + 1]
                i += 1
            else:
                raise syntax_error()
            i += 1
        now = now_ms(ctx)
        key = args[1]
        value = self._string(key, now)
        if value is None:
            return None
        ks = self.keyspace
        if unit:
            deadline = _deadline(unit, raw, now, "getex")
            if deadline <= now:  # only EXAT and PXAT can be past
                ks.remove(key)
            else:
                ks.set_deadline(ctx, key, deadline)
                ks.bump(key)
        elif persist and ks.clear_deadline(key):
            ks.bump(key)
        return value

    @command("SETNX", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def setnx(self, ctx: Context, args: list[bytes]) -> int:
        ks = self.keyspace
        if ks.get(args[1], now_ms(ctx)) is not None:
            return 0
        ks.put(args[1], args[2])
        return 1

    @command("GETSET", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def getset(self, ctx: Context, args: list[bytes]) -> bytes | None:
        old = self._string(args[1], now_ms(ctx))
        ks = self.keyspace
        ks.put(args[1], args[2])
        ks.clear_deadline(args[1])
        return old

    @command("GETDEL", 2, write=True, keys=(1, 1, 1), flags=("fast",))
    def getdel(self, ctx: Context, args: list[bytes]) -> bytes | None:
        old = self._string(args[1], now_ms(ctx))
        if old is not None:
            self.keyspace.remove(args[1])
        return old

    @command("MSET", -3, write=True, keys=(1, -1, 2))
    def mset(self, ctx: Context, args: list[bytes]) -> Any:
        if len(args) % 2 == 0:
            raise arity_error(b"mset")
        ks = self.keyspace
        for i in range(1, len(args), 2):
            ks.put(args[i], args[i + 1])
            ks.clear_deadline(args[i])
        return OK

    @command("MSETNX", -3, write=True, keys=(1, -1, 2))
    def msetnx(self, ctx: Context, args: list[bytes]) -> int:
        """MSET if none of the keys exists (whatever its type): 1, else 0 and nothing set."""
        if len(args) % 2 == 0:
            raise arity_error(b"msetnx")
        ks = self.keyspace
        now = now_ms(ctx)
        if any(ks.get(args[i], now) is not None for i in range(1, len(args), 2)):
            return 0
        for i in range(1, len(args), 2):
            ks.put(args[i], args[i + 1])
            ks.clear_deadline(args[i])
        return 1

    @command("SETRANGE", 4, write=True, keys=(1, 1, 1))
    def setrange(self, ctx: Context, args: list[bytes]) -> int:
        """Overwrite from ``offset`` (zero-padding a shorter string); the new length."""
        offset = parse_int(args[2])
        if offset < 0:
            raise KvError("ERR offset is out of range")
        key, patch = args[1], args[3]
        old = self._string(key, now_ms(ctx))
        if not patch:
            return 0 if old is None else len(old)
        if offset + len(patch) > MAX_STRING:
            raise KvError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
        old = old or b""
        if len(old) < offset:
            old += bytes(offset - len(old))
        value = old[:offset] + patch + old[offset + len(patch) :]
        self.keyspace.put(key, value)
        return len(value)

    @command("APPEND", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def append(self, ctx: Context, args: list[bytes]) -> int:
        old = self._string(args[1], now_ms(ctx))
        value = args[2] if old is None else old + args[2]
        self.keyspace.put(args[1], value)
        return len(value)

    @command("INCR", 2, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("DECR", 2, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("INCRBY", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("DECRBY", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def incr(self, ctx: Context, args: list[bytes]) -> int:
        name = args[0]
        if name == b"INCR":
            by = 1
        elif name == b"DECR":
            by = -1
        else:
            by = parse_int(args[2])
            if name == b"DECRBY":
                if by == INT64_MIN:
                    raise KvError("ERR decrement would overflow")
                by = -by
        old = self._string(args[1], now_ms(ctx))
        try:
            current = 0 if old is None else parse_int(old)
        except KvError:
            raise not_integer() from None
        value = current + by
        if not INT64_MIN <= value <= INT64_MAX:
            raise overflow()
        self.keyspace.put(args[1], b"%d" % value)
        return value

    @command("INCRBYFLOAT", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def incrbyfloat(self, ctx: Context, args: list[bytes]) -> bytes:
        old = self._string(args[1], now_ms(ctx))
        value = add_float(old, args[2])
        self.keyspace.put(args[1], value)
        return value


class _LcsTable:
    """The LCS lengths of every pair of prefixes of ``a`` and ``b``, a bit-vector a row.

    Hyyro's bit-parallel form of the dynamic programme: row ``i`` is one int
    of ``len(b)`` bits whose zeros below bit ``j`` count the LCS of ``a[:i]``
    and ``b[:j]``.  A row costs a few big-int operations instead of
    ``len(b)`` Python steps, so the largest pair Redis accepts (its table
    within 512 MB: two strings of about 11,500 bytes) takes milliseconds.
    """

    __slots__ = ("rows",)

    def __init__(self, a: bytes, b: bytes) -> None:
        full = (1 << len(b)) - 1
        masks: dict[int, int] = {}
        for j, c in enumerate(b):
            masks[c] = masks.get(c, 0) | (1 << j)
        v = full
        self.rows = [v]
        for c in a:
            u = v & masks.get(c, 0)
            v = ((v + u) | (v - u)) & full
            self.rows.append(v)

    def __call__(self, i: int, j: int) -> int:
        """The length of the LCS of ``a[:i]`` and ``b[:j]``."""
        return j - (self.rows[i] & ((1 << j) - 1)).bit_count()
