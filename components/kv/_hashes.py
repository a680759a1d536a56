"""Hashes: HSET, HGET, HDEL, HGETALL, HLEN, HEXISTS, HINCRBY, HKEYS, HVALS, HMGET, HRANDFIELD,
HSCAN, ..."""

from __future__ import annotations

from typing import Any, ClassVar

from dominoes import Component, Context

from . import _longdouble as longdouble
from ._errors import (
    INT64_MAX,
    INT64_MIN,
    LONG_MAX,
    KvError,
    arity_error,
    not_float,
    overflow,
    parse_count,
    parse_int,
    syntax_error,
    wrong_type,
)
from ._keyspace import Keyspace, now_ms
from ._resp import OK, Pairs
from ._sets import random_picks, scan_cursor, scan_page
from ._strings import add_float
from ._table import command

__all__ = ("Hashes",)


class Hashes(Component):
    """Hash values (``dict[bytes, bytes]``) in the keyspace."""

    name = "hashes"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _hash(self, key: bytes, now: int) -> dict[bytes, bytes] | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not dict:
            raise wrong_type()
        return value

    def _for_write(self, ctx: Context, key: bytes) -> dict[bytes, bytes]:
        h = self._hash(key, now_ms(ctx))
        if h is None:
            h = {}
            self.keyspace.put(key, h)
        else:
            self.keyspace.bump(key)
        return h

    # --- reads -----------------------------------------------------------------------------

    @command("HGET", 3, keys=(1, 1, 1), flags=("fast",))
    def hget(self, now: int, args: list[bytes]) -> bytes | None:
        h = self._hash(args[1], now)
        return None if h is None else h.get(args[2])

    @command("HMGET", -3, keys=(1, 1, 1), flags=("fast",))
    def hmget(self, now: int, args: list[bytes]) -> list[bytes | None]:
        h = self._hash(args[1], now) or {}
        return [h.get(f) for f in args[2:]]

    @command("HGETALL", 2, keys=(1, 1, 1))
    def hgetall(self, now: int, args: list[bytes]) -> dict[bytes, bytes]:
        return dict(self._hash(args[1], now) or {})

    @command("HKEYS", 2, keys=(1, 1, 1))
    def hkeys(self, now: int, args: list[bytes]) -> list[bytes]:
        return list(self._hash(args[1], now) or ())

    @command("HVALS", 2, keys=(1, 1, 1))
    def hvals(self, now: int, args: list[bytes]) -> list[bytes]:
        return list((self._hash(args[1], now) or {}).values())

    @command("HLEN", 2, keys=(1, 1, 1), flags=("fast",))
    def hlen(self, now: int, args: list[bytes]) -> int:
        return len(self._hash(args[1], now) or ())

    @command("HEXISTS", 3, keys=(1, 1, 1), flags=("fast",))
    def hexists(self, now: int, args: list[bytes]) -> int:
        return int(args[2] in (self._hash(args[1], now) or ()))

    @command("HSTRLEN", 3, keys=(1, 1, 1), flags=("fast",))
    def hstrlen(self, now: int, args: list[bytes]) -> int:
        return len((self._hash(args[1], now) or {}).get(args[2], b""))

    @command("HRANDFIELD", -2, keys=(1, 1, 1))
    def hrandfield(self, now: int, args: list[bytes]) -> Any:
        """A random field, or ``count`` distinct ones (negative: may repeat), WITHVALUES.

        With values, the reply is :class:`~._resp.Pairs`: flat (field, value,
        field, value, ...) in RESP2, an array of [field, value] pairs in RESP3,
        as Redis 7 answers.
        """
        if len(args) == 2:
            h = self._hash(args[1], now)
            return None if not h else random_picks(list(h), 1, unique=True)[0]
        count = parse_count(args[2], -LONG_MAX, LONG_MAX)
        withvalues = False
        if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHVALUES"):
            raise syntax_error()
        if len(args) == 4:
            withvalues = True
            if not -(LONG_MAX // 2) <= count <= LONG_MAX // 2:
                raise KvError("ERR value is out of range")
        h = self._hash(args[1], now)
        if not h or count == 0:
            return []
        fields = random_picks(list(h), abs(count), unique=count > 0)
        if not withvalues:
            return fields
        out = Pairs()  # flat in RESP2, [field, value] pairs in RESP3, as Redis answers
        for f in fields:
            out += (f, h[f])
        return out

    @command("HSCAN", -3, keys=(1, 1, 1))
    def hscan(self, now: int, args: list[bytes]) -> list[Any]:
        cursor = scan_cursor(args[2])
        h = self._hash(args[1], now)
        if h is None:
            return [b"0", []]
        following, page = scan_page(h, len(h), cursor, args)
        flat: list[bytes] = []
        for f in page:
            flat += (f, h[f])
        return [b"%d" % following, flat]

    # --- writes ----------------------------------------------------------------------------

    @command("HSET", -4, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("HMSET", -4, write=True, keys=(1, 1, 1), flags=("fast",))
    def hset(self, ctx: Context, args: list[bytes]) -> Any:
        if len(args) % 2:
            raise arity_error(args[0])
        h = self._for_write(ctx, args[1])
        before = len(h)
        for i in range(2, len(args), 2):
            h[args[i]] = args[i + 1]
        return OK if args[0] == b"HMSET" else len(h) - before

    @command("HSETNX", 4, write=True, keys=(1, 1, 1), flags=("fast",))
    def hsetnx(self, ctx: Context, args: list[bytes]) -> int:
        h = self._hash(args[1], now_ms(ctx))
        if h is not None and args[2] in h:
            return 0
        self._for_write(ctx, args[1])[args[2]] = args[3]
        return 1

    @command("HDEL", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def hdel(self, ctx: Context, args: list[bytes]) -> int:
        h = self._hash(args[1], now_ms(ctx))
        if h is None:
            return 0
        removed = sum(h.pop(f, None) is not None for f in args[2:])
        if not h:
            self.keyspace.remove(args[1])
        elif removed:
            self.keyspace.bump(args[1])
        return removed

    @command("HINCRBY", 4, write=True, keys=(1, 1, 1), flags=("fast",))
    def hincrby(self, ctx: Context, args: list[bytes]) -> int:
        by = parse_int(args[3])
        h = self._hash(args[1], now_ms(ctx))
        old = None if h is None else h.get(args[2])
        try:
            current = 0 if old is None else parse_int(old)
        except KvError:
            raise KvError("ERR hash value is not an integer") from None
        value = current + by
        if not INT64_MIN <= value <= INT64_MAX:
            raise overflow()
        self._for_write(ctx, args[1])[args[2]] = b"%d" % value
        return value

    @command("HINCRBYFLOAT", 4, write=True, keys=(1, 1, 1), flags=("fast",))
    def hincrbyfloat(self, ctx: Context, args: list[bytes]) -> bytes:
        """Redis's order: the increment (an infinity is refused as such), then the key."""
        by = longdouble.parse(args[3])
        if by is None:
            raise not_float()
        if isinstance(by, float):
            raise KvError("ERR value is NaN or Infinity")
        h = self._hash(args[1], now_ms(ctx))
        value = add_float(None if h is None else h.get(args[2]), args[3], hash_field=True)
        self._for_write(ctx, args[1])[args[2]] = value
        return value
