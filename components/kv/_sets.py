"""Sets: SADD, SREM, SMEMBERS, SISMEMBER, SMISMEMBER, SCARD, SINTER, SUNION, SDIFF (and their
STORE forms), SINTERCARD, SMOVE, SPOP, SRANDMEMBER, SSCAN."""

from __future__ import annotations

import heapq
import re
import zlib
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from dominoes import Component, Context

from ._chance import READS
from ._errors import LONG_MAX, KvError, parse_count, syntax_error, wrong_type
from ._glob import scan_options
from ._keyspace import Keyspace, now_ms
from ._table import command

__all__ = (
    "MAX_PICKS",
    "Sets",
    "random_picks",
    "scan_cursor",
    "scan_page",
)


#: A collection this small is scanned in one call (cursor 0 back), as Redis does
#: with its compact encodings; a larger one in windows of a 32-bit hash.
SCAN_WHOLE: Final = 128
#: One call returns at least 1/SCAN_PAGES of a large collection (or COUNT items).
SCAN_PAGES: Final = 64
_HASH_MASK: Final = 0xFFFFFFFF
#: strtoul's syntax as Redis's ``parseScanCursorOrReply`` takes it (no leading space).
_CURSOR: Final = re.compile(rb"(?:[+-]?[0-9]+)?")


def scan_cursor(raw: bytes) -> int:
    """A SCAN-family cursor (``ERR invalid cursor`` if it is not one)."""
    if _CURSOR.fullmatch(raw) is None:
        raise KvError("ERR invalid cursor")
    n = int(raw) if raw else 0
    if n > 2**64 - 1 or n < -(2**64 - 1):
        raise KvError("ERR invalid cursor")
    return n % 2**64


def _hash32(item: bytes) -> int:
    return zlib.crc32(item) & _HASH_MASK


def scan_page(
    items: Iterable[bytes], count_of: int, cursor: int, args: list[bytes]
) -> tuple[int, list[bytes]]:
    """One page of an HSCAN or SSCAN: the next cursor and the items it returns.

    ``args[3:]`` are the options (MATCH, COUNT).  The cursor is a position in
    a 32-bit CRC of the item, the same on every replica and after restarts:
    items present for the whole iteration are returned exactly once.
    """
    match, count = scan_options(args)
    if count_of <= SCAN_WHOLE:
        page = list(items)
        following = 0
    elif cursor > _HASH_MASK:
        page = []
        following = 0
    else:
        slots = [(h, k) for k in items if (h := _hash32(k)) >= cursor]
        want = max(count, count_of // SCAN_PAGES)
        if len(slots) <= want:
            page = [k for _, k in sorted(slots)]
            following = 0
        else:
            boundary = heapq.nsmallest(want + 1, slots)[want][0]
            if boundary == cursor:  # more than `want` items share one hash: take them all
                page = [k for h, k in slots if h == boundary]
                following = boundary + 1 if boundary < _HASH_MASK else 0
            else:
                page = [k for h, k in sorted(slots) if h < boundary]
                following = boundary
    if match is not None:
        page = [k for k in page if match(k)]
    return following, page


#: Most picks SRANDMEMBER and HRANDFIELD make with a negative count (repeats
#: allowed): the reply is built whole before it is sent, so a count of a few
#: billions, which Redis would stream, would exhaust the replica's memory.
MAX_PICKS: Final = 2**24


def random_picks(items: list[Any], count: int, *, unique: bool) -> list[Any]:
    """SRANDMEMBER's and HRANDFIELD's choice (a read: any randomness will do)."""
    if unique:
        return READS.sample(items, min(count, len(items)))
    if count > MAX_PICKS:
        raise KvError(f"ERR value is out of range, at most {MAX_PICKS} picks with repetitions")
    return READS.choices(items, k=count)


class Sets(Component):
    """Set values (``set[bytes]``) in the keyspace."""

    name = "sets"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _set(self, key: bytes, now: int) -> set[bytes] | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not set:
            raise wrong_type()
        return value

    def _sets(self, keys: list[bytes], now: int) -> list[set[bytes] | None]:
        """Every key's set (None: missing), WRONGTYPE if any holds something else."""
        return [self._set(key, now) for key in keys]

    def _store(self, key: bytes, members: set[bytes]) -> int:
        """Replace ``key`` (whatever it held, and its time to live) by ``members``."""
        ks = self.keyspace
        ks.remove(key)
        if members:
            ks.put(key, members)
        return len(members)

    # --- reads -----------------------------------------------------------------------------

    @command("SMEMBERS", 2, keys=(1, 1, 1))
    def smembers(self, now: int, args: list[bytes]) -> set[bytes]:
        return set(self._set(args[1], now) or ())

    @command("SISMEMBER", 3, keys=(1, 1, 1), flags=("fast",))
    def sismember(self, now: int, args: list[bytes]) -> int:
        return int(args[2] in (self._set(args[1], now) or ()))

    @command("SMISMEMBER", -3, keys=(1, 1, 1), flags=("fast",))
    def smismember(self, now: int, args: list[bytes]) -> list[int]:
        members = self._set(args[1], now) or set()
        return [int(m in members) for m in args[2:]]

    @command("SCARD", 2, keys=(1, 1, 1), flags=("fast",))
    def scard(self, now: int, args: list[bytes]) -> int:
        return len(self._set(args[1], now) or ())

    @command("SINTER", -2, keys=(1, -1, 1))
    def sinter(self, now: int, args: list[bytes]) -> set[bytes]:
        return _inter(self._sets(args[1:], now))

    @command("SUNION", -2, keys=(1, -1, 1))
    def sunion(self, now: int, args: list[bytes]) -> set[bytes]:
        return _union(self._sets(args[1:], now))

    @command("SDIFF", -2, keys=(1, -1, 1))
    def sdiff(self, now: int, args: list[bytes]) -> set[bytes]:
        return _diff(self._sets(args[1:], now))

    # keys=(2, -1, 1) also names LIMIT and its value: harmless for a read (and the
    # expiry micro-protocol only ever deletes a key already past its deadline).
    @command("SINTERCARD", -3, keys=(2, -1, 1))
    def sintercard(self, now: int, args: list[bytes]) -> int:
        """SINTERCARD numkeys key [key ...] [LIMIT limit]: the intersection's size."""
        numkeys = parse_count(args[1], 1, LONG_MAX, "numkeys should be greater than 0")
        if numkeys > len(args) - 2:
            raise KvError("ERR Number of keys can't be greater than number of args")
        limit = 0
        i = 2 + numkeys
        while i < len(args):
            if args[i].upper() == b"LIMIT" and i + 1 < len(args):
                limit = parse_count(args[i + 1], 0, LONG_MAX, "LIMIT can't be negative")
                i += 2
            else:
                raise syntax_error()
        size = len(_inter(self._sets(args[2 : 2 + numkeys], now)))
        return min(size, limit) if limit else size

    @command("SRANDMEMBER", -2, keys=(1, 1, 1))
    def srandmember(self, now: int, args: list[bytes]) -> Any:
        """A random member, or ``count`` distinct ones (negative: may repeat)."""
        if len(args) > 3:
            raise syntax_error()
        if len(args) == 2:
            members = self._set(args[1], now)
            return None if members is None else random_picks(list(members), 1, unique=True)[0]
        count = parse_count(args[2], -LONG_MAX, LONG_MAX)
        members = self._set(args[1], now)
        if members is None or count == 0:
            return []
        return random_picks(list(members), abs(count), unique=count > 0)

    @command("SSCAN", -3, keys=(1, 1, 1))
    def sscan(self, now: int, args: list[bytes]) -> list[Any]:
        cursor = scan_cursor(args[2])
        members = self._set(args[1], now)
        if members is None:
            return [b"0", []]
        following, page = scan_page(members, len(members), cursor, args)
        return [b"%d" % following, page]

    # --- writes ----------------------------------------------------------------------------

    @command("SADD", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def sadd(self, ctx: Context, args: list[bytes]) -> int:
        key = args[1]
        members = self._set(key, now_ms(ctx))
        if members is None:
            members = set()
            self.keyspace.put(key, members)
        before = len(members)
        members.update(args[2:])
        added = len(members) - before
        if added:
            self.keyspace.bump(key)
        return added

    @command("SREM", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def srem(self, ctx: Context, args: list[bytes]) -> int:
        key = args[1]
        members = self._set(key, now_ms(ctx))
        if members is None:
            return 0
        before = len(members)
        members.difference_update(args[2:])
        removed = before - len(members)
        if not members:
            self.keyspace.remove(key)
        elif removed:
            self.keyspace.bump(key)
        return removed

    @command("SINTERSTORE", -3, write=True, keys=(1, -1, 1))
    def sinterstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._store(args[1], _inter(self._sets(args[2:], now_ms(ctx))))

    @command("SUNIONSTORE", -3, write=True, keys=(1, -1, 1))
    def sunionstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._store(args[1], _union(self._sets(args[2:], now_ms(ctx))))

    @command("SDIFFSTORE", -3, write=True, keys=(1, -1, 1))
    def sdiffstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._store(args[1], _diff(self._sets(args[2:], now_ms(ctx))))

    @command("SMOVE", 4, write=True, keys=(1, 2, 1), flags=("fast",))
    def smove(self, ctx: Context, args: list[bytes]) -> int:
        now = now_ms(ctx)
        src, dst, member = args[1], args[2], args[3]
        ks = self.keyspace
        source = ks.get(src, now)
        if source is None:
            return 0
        target = ks.get(dst, now)
        if type(source) is not set or (target is not None and type(target) is not set):
            raise wrong_type()
        if src == dst:
            return int(member in source)
        if member not in source:
            return 0
        source.discard(member)
        if source:
            ks.bump(src)
        else:
            ks.remove(src)
        if target is None:
            ks.put(dst, {member})
        elif member not in target:
            target.add(member)
            ks.bump(dst)
        return 1

    @command("SPOP", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def spop(self, ctx: Context, args: list[bytes]) -> Any:
        """Remove and return random members, the same ones on every replica.

        The members are sorted before ``ctx.random`` chooses among them: a
        set's iteration order may differ between replicas (after a restore).
        """
        if len(args) > 3:
            raise syntax_error()
        count = None
        if len(args) == 3:
            count = parse_count(args[2], 0, LONG_MAX, "value is out of range, must be positive")
        key = args[1]
        members = self._set(key, now_ms(ctx))
        if members is None:
            return None if count is None else set()
        if count == 0:
            return set()
        want = 1 if count is None else count
        if want >= len(members):
            popped = sorted(members)
        else:
            popped = ctx.random.sample(sorted(members), want)
        members.difference_update(popped)
        if members:
            self.keyspace.bump(key)
        else:
            self.keyspace.remove(key)
        return popped[0] if count is None else set(popped)


def _inter(sets: list[set[bytes] | None]) -> set[bytes]:
    if any(s is None for s in sets):
        return set()
    ordered = sorted((s for s in sets if s is not None), key=len)
    return ordered[0].intersection(*ordered[1:])


def _union(sets: list[set[bytes] | None]) -> set[bytes]:
    return set().union(*(s for s in sets if s is not None))


def _diff(sets: list[set[bytes] | None]) -> set[bytes]:
    first = sets[0]
    if first is None:
        return set()
    return first.difference(*(s for s in sets[1:] if s is not None))
