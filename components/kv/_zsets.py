"""Sorted sets: ZADD, ZRANGE and its kin, ZPOPMIN, ZMPOP, ZUNION/ZINTER/ZDIFF, ZSCAN, ...

A sorted set is a :class:`ZSet`: a dict member -> score and a
``SortedList`` of ``(score, member)``, so adding, removing, ranking and
finding a score range cost O(log n).  Members order by score, then by their
bytes (``memcmp``), as in Redis.  A score is a finite or infinite double,
never NaN.

The semantics, replies and error texts are Redis 7.0's (``t_zset.c``), down
to the order in which arguments are checked (a bad range is reported before
WRONGTYPE, WRONGTYPE before a bad option of ZUNION, ...), and were checked
against ``redis-server`` 7.0:

* scores are parsed like ``getDoubleFromObject`` (``strtod``: ``inf``,
  ``-inf``, ``1e3``, ``.5``, hex floats; no NaN, no leading space, no
  overflow) and score ranges like ``zslParseRange`` (``(`` for an exclusive
  bound; leading spaces, overflow to ``inf`` and the empty string, which is
  0, are accepted, as Redis's ``strtod`` call does);
* lex ranges are ``-``, ``+``, ``[x`` and ``(x``; on members whose scores
  differ, a lex range is walked as Redis walks a small (listpack) sorted set:
  from the head to the first member at or above the minimum, then on while
  members stay at or below the maximum;
* ZRANGE's ``LIMIT`` takes a negative count as "all" and a negative offset as
  "nothing", ZRANDMEMBER with a count at least the size answers the whole set
  from the highest score down, ZINTER/ZUNION take plain sets as members
  scored 1 and sum ``inf + -inf`` as 0, a score of -0 is stored as 0, like
  Redis (with a small sorted set, for the last one).

Scores are ``float`` replies (:func:`_score`): RESP3 doubles, RESP2 bulk
strings, with Redis 7.0's ``%.17g`` text in both (``3``,
``0.10000000000000001``).  WITHSCORES replies are :class:`~._resp.Pairs`
(:func:`_pairs`): flat ``[member, score, ...]`` in RESP2, nested ``[[member,
score], ...]`` in RESP3, as Redis answers.  ZSCAN's scores, bulk strings in
both protocols, are Redis's own text.

Writes (ZADD, ZPOPMIN, ZMPOP, the STORE commands, ...) run in a log entry on
every replica and are deterministic.  ZRANDMEMBER is a read: it draws from a
replica-local generator, which changes no state.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final

from sortedcontainers import SortedList

from dominoes import Component, Context

from ._chance import READS
from ._errors import KvError, mpop_options, not_float, parse_int, syntax_error, wrong_type
from ._glob import scan_options
from ._resp import NULL_ARRAY, Pairs
from ._table import command

if TYPE_CHECKING:
    from ._keyspace import Keyspace

__all__ = ("ZSet", "Zsets")

INF: Final = math.inf

Entry = tuple[float, bytes]


class ZSet:
    """A sorted set: ``scores`` member -> score, ``order`` the (score, member) pairs in order."""

    __slots__ = ("order", "scores")

    def __init__(self, pairs: Iterable[tuple[bytes, float]] = ()) -> None:
        self.scores: dict[bytes, float] = {m: s + 0.0 for m, s in pairs}  # -0 is 0: see set()
        self.order: SortedList[Entry] = SortedList((s, m) for m, s in self.scores.items())

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, member: object) -> bool:
        return member in self.scores

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.order)

    def __repr__(self) -> str:
        return f"ZSet({list(self.order)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZSet) and self.scores == other.scores

    __hash__ = None  # type: ignore[assignment]  # mutable

    def set(self, member: bytes, score: float) -> None:
        """Insert ``member`` or move it to ``score``.

        A score of -0 is stored as 0 (``-0.0 + 0.0``), as a small Redis sorted
        set stores it (a listpack keeps the integer 0): ZSCORE answers ``0``.
        """
        score += 0.0
        old = self.scores.get(member)
        if old is not None:
            if old == score:
                return
            self.order.remove((old, member))
        self.scores[member] = score
        self.order.add((score, member))

    def discard(self, member: bytes) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        self.order.remove((score, member))
        return True

    def rank(self, member: bytes) -> int | None:
        score = self.scores.get(member)
        return None if score is None else self.order.index((score, member))

    def delete_slice(self, start: int, stop: int) -> int:
        """Remove the members of ranks ``start`` to ``stop - 1``; how many."""
        if stop <= start:
            return 0
        for _, member in self.order.islice(start, stop):
            del self.scores[member]
        del self.order[start:stop]
        return stop - start

    def score_index(self, bound: float, *, exclusive: bool, upper: bool) -> int:
        """The first rank past the members below a minimum (``upper`` False) or
        at or below a maximum (``upper`` True)."""
        order = self.order
        if upper:
            if bound == INF and not exclusive:
                return len(order)
            return order.bisect_left((bound if exclusive else math.nextafter(bound, INF), b""))
        if exclusive:
            if bound == INF:
                return len(order)
            return order.bisect_left((math.nextafter(bound, INF), b""))
        return order.bisect_left((bound, b""))

    def plain(self) -> list[list[Any]]:
        """Its snapshot form: [member, score] pairs, in order."""
        return [[m, s] for s, m in self.order]


# --- parsing -------------------------------------------------------------------------------

_STRTOD: Final = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan(?:\([0-9a-z_]*\))?"
    rb"|0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?[0-9]+)?)",
    re.IGNORECASE,
)
_NONZERO_DIGIT: Final = re.compile(rb"[1-9]")
_C_SPACE: Final = b" \t\n\v\f\r"


def _strtod(text: bytes) -> tuple[float, bool] | None:
    """C's ``strtod`` over all of ``text``: (value, out of range), or None if not all of it
    parses."""
    if _STRTOD.fullmatch(text) is None:
        return None
    low = text.lower()
    if b"nan" in low:
        return math.nan, False
    if b"x" in low:
        try:
            value = float.fromhex(low.decode())
        except OverflowError:
            return (-INF if low.startswith(b"-") else INF), True
        mantissa = low.split(b"p")[0].split(b"x")[1]
        underflow = value == 0 and re.search(rb"[1-9a-f]", mantissa) is not None
        return value, underflow
    value = float(low)
    if math.isinf(value):
        return value, b"inf" not in low
    if value == 0 and _NONZERO_DIGIT.search(low.split(b"e")[0]) is not None:
        return value, True
    return value, False


def parse_score(text: bytes, error: str = "") -> float:
    """A score or weight as ``getDoubleFromObject`` reads it (no NaN, no overflow)."""
    parsed = _strtod(text) if text and text[0] not in _C_SPACE else None
    if parsed is None or parsed[1] or math.isnan(parsed[0]):
        raise KvError(error) if error else not_float()
    return parsed[0]


def _range_bound(text: bytes) -> tuple[float, bool]:
    """One end of a score range as ``zslParseRange`` reads it: (value, exclusive)."""
    exclusive = text[:1] == b"("
    if exclusive:
        text = text[1:]
    if not text:  # strtod converted nothing, and stopped at the terminating NUL
        return 0.0, exclusive
    parsed = _strtod(text.lstrip(_C_SPACE)) if text.lstrip(_C_SPACE) else None
    if parsed is None or math.isnan(parsed[0]):
        raise KvError("ERR min or max is not a float")
    return parsed[0], exclusive


ScoreRange = tuple[float, bool, float, bool]


def parse_score_range(lo: bytes, hi: bytes) -> ScoreRange:
    return (*_range_bound(lo), *_range_bound(hi))


#: A lex bound: (0, b"") is "-", (2, b"") is "+", (1, x) the member x.
LexBound = tuple[int, bytes]
LexRange = tuple[LexBound, bool, LexBound, bool]


def _lex_bound(text: bytes) -> tuple[LexBound, bool]:
    first = text[:1]
    if first in (b"+", b"-"):
        if len(text) > 1 and text[1] != 0:
            raise KvError("ERR min or max not valid string range item")
        return ((2 if first == b"+" else 0), b""), True
    if first in (b"(", b"["):
        value = text[1:].split(b"\0", 1)[0]  # Redis copies strlen() bytes
        return (1, value), first == b"("
    raise KvError("ERR min or max not valid string range item")


def parse_lex_range(lo: bytes, hi: bytes) -> LexRange:
    try:
        return (*_lex_bound(lo), *_lex_bound(hi))
    except KvError:
        raise KvError("ERR min or max not valid string range item") from None


def _gte_min(member: bytes, r: LexRange) -> bool:
    key = (1, member)
    return key > r[0] if r[1] else key >= r[0]


def _lte_max(member: bytes, r: LexRange) -> bool:
    key = (1, member)
    return key < r[2] if r[3] else key <= r[2]


def _parse_long(text: bytes) -> int:
    return parse_int(text)


def _count_arg(text: bytes, lo: int, message: str) -> int:
    """``getRangeLongFromObjectOrReply(lo, LONG_MAX, message)``: ``message`` for a number out
    of range and for a word that is no number alike."""
    try:
        n = parse_int(text)
    except KvError:
        n = lo - 1
    if n < lo:
        raise KvError(f"ERR {message}")
    return n


def _positive(text: bytes, message: str = "value is out of range, must be positive") -> int:
    """``getPositiveLongFromObjectOrReply``."""
    return _count_arg(text, 0, message)


# --- replies -------------------------------------------------------------------------------


def _score(x: float) -> float:
    """A score as a reply: a RESP3 double, a RESP2 bulk string; Redis 7.0's ``%.17g``
    text in both (``3``, ``0.10000000000000001``: ``_resp._double``)."""
    return x


def _pairs(entries: Iterable[Entry]) -> Pairs:
    """``member, score, ...``: flat in RESP2, ``[[member, score], ...]`` in RESP3 (WITHSCORES)."""
    out = Pairs()
    for s, m in entries:
        out.append(m)
        out.append(_score(s))
    return out


def _nested(entries: Iterable[Entry]) -> list[Any]:
    """``[[member, score], ...]`` (ZMPOP, in both protocols)."""
    return [[m, _score(s)] for s, m in entries]


def _reply(entries: list[Entry], withscores: bool) -> list[Any]:
    return _pairs(entries) if withscores else [m for _, m in entries]


def _scan_score(x: float) -> bytes:
    """A score as ZSCAN writes it: ``%.17g`` (Redis's ``ld2string``, ``d2string``)."""
    return b"%.17g" % x


# --- ranges ---------------------------------------------------------------------------------

_RANK, _SCORE, _LEX = 0, 1, 2


def lex_span(z: ZSet, r: LexRange, *, reverse: bool = False) -> list[Entry]:
    """The members in lex range ``r``, as Redis walks them (forward, or from the tail)."""
    order = z.order
    n = len(order)
    if not n:
        return []
    lo, lo_ex, hi, hi_ex = r
    if lo > hi or (lo == hi and (lo_ex or hi_ex)):
        return []
    if not _gte_min(order[-1][1], r) or not _lte_max(order[0][1], r):
        return []
    score = order[0][0]
    if order[-1][0] == score:  # one score: lex order is the order, bisect
        if lo[0] == 0:
            start = 0
        elif lo[0] == 2:
            start = n
        else:
            key = (score, lo[1])
            start = order.bisect_right(key) if lo_ex else order.bisect_left(key)
        if hi[0] == 2:
            stop = n
        elif hi[0] == 0:
            stop = 0
        else:
            key = (score, hi[1])
            stop = order.bisect_left(key) if hi_ex else order.bisect_right(key)
        if start >= stop:
            return []
        span = list(order.islice(start, stop))
        return span[::-1] if reverse else span
    out: list[Entry] = []
    if not reverse:
        i = 0
        while i < n and not _gte_min(order[i][1], r):
            i += 1
        while i < n and _lte_max(order[i][1], r):
            out.append(order[i])
            i += 1
    else:
        i = n - 1
        while i >= 0 and not _lte_max(order[i][1], r):
            i -= 1
        while i >= 0 and _gte_min(order[i][1], r):
            out.append(order[i])
            i -= 1
    return out


def score_bounds(z: ZSet, r: ScoreRange) -> tuple[int, int]:
    """The ranks [start, stop) of the members in score range ``r``."""
    lo, lo_ex, hi, hi_ex = r
    if lo > hi or (lo == hi and (lo_ex or hi_ex)):
        return 0, 0
    start = z.score_index(lo, exclusive=lo_ex, upper=False)
    stop = z.score_index(hi, exclusive=hi_ex, upper=True)
    return start, max(start, stop)


def rank_bounds(n: int, start: int, end: int) -> tuple[int, int]:
    """Redis's sanitised rank range as [start, stop) (empty: start == stop)."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if start < 0:
        start = 0
    if start > end or start >= n:
        return 0, 0
    if end >= n:
        end = n - 1
    return start, end + 1


def _limited(entries: list[Entry], offset: int, limit: int) -> list[Entry]:
    if offset < 0:
        return []
    return entries[offset:] if limit < 0 else entries[offset : offset + limit]


class _RangeQuery:
    """ZRANGE's arguments, parsed (``zrangeGenericCommand``)."""

    __slots__ = ("bounds", "key", "limit", "offset", "reverse", "type", "withscores")

    def __init__(self, args: list[bytes], start: int, store: bool, rtype: int, rev: int) -> None:
        self.key = args[start]
        withscores = False
        offset, limit = 0, -1
        j = start + 3
        while j < len(args):
            opt = args[j].upper()
            left = len(args) - j - 1
            if not store and opt == b"WITHSCORES":
                withscores = True
            elif opt == b"LIMIT" and left >= 2:
                offset = _parse_long(args[j + 1])
                limit = _parse_long(args[j + 2])
                j += 2
            elif rev < 0 and opt == b"REV":
                rev = 1
            elif rtype < 0 and opt == b"BYLEX":
                rtype = _LEX
            elif rtype < 0 and opt == b"BYSCORE":
                rtype = _SCORE
            else:
                raise syntax_error()
            j += 1
        reverse = rev == 1
        if rtype < 0:
            rtype = _RANK
        if limit != -1 and rtype == _RANK:
            raise KvError(
                "ERR syntax error, LIMIT is only supported in combination with either "
                "BYSCORE or BYLEX"
            )
        if withscores and rtype == _LEX:
            raise KvError("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
        lo, hi = args[start + 1], args[start + 2]
        if reverse and rtype != _RANK:
            lo, hi = hi, lo
        self.bounds: Any
        if rtype == _RANK:
            self.bounds = (_parse_long(lo), _parse_long(hi))
        elif rtype == _SCORE:
            self.bounds = parse_score_range(lo, hi)
        else:
            self.bounds = parse_lex_range(lo, hi)
        self.type = rtype
        self.reverse = reverse
        self.offset, self.limit = offset, limit
        self.withscores = withscores

    def run(self, z: ZSet) -> list[Entry]:
        order = z.order
        n = len(order)
        if self.type == _RANK:
            start, stop = rank_bounds(n, *self.bounds)
            if self.reverse:
                start, stop = n - stop, n - start
                return list(order.islice(start, stop, reverse=True))
            return list(order.islice(start, stop))
        offset, limit = self.offset, self.limit
        if offset > 0 and offset >= n:
            return []
        if self.type == _SCORE:
            start, stop = score_bounds(z, self.bounds)
            if offset < 0 or limit == 0:
                return []
            if self.reverse:
                stop -= offset
                first = start if limit < 0 else max(start, stop - limit)
                return list(order.islice(first, stop, reverse=True)) if first < stop else []
            start += offset
            last = stop if limit < 0 else min(stop, start + limit)
            return list(order.islice(start, last)) if start < last else []
        return _limited(lex_span(z, self.bounds, reverse=self.reverse), offset, limit)


# --- the component -------------------------------------------------------------------------


#: ZSCAN answers a set of at most this many members, none longer than
#: _SMALL_MEMBER bytes, in one call and in order, as Redis does for a listpack.
_SMALL_ENTRIES: Final = 128
_SMALL_MEMBER: Final = 64
_SCAN_PAGES: Final = 64
_HASH_MASK: Final = 0xFFFFFFFF
_U64: Final = 2**64

_AGGREGATES: Final = {b"SUM": 0, b"MIN": 1, b"MAX": 2}


def _aggregate(target: float, value: float, how: int) -> float:
    """``zunionInterAggregate``."""
    if how == 0:
        target = target + value
        return 0.0 if target != target else target
    if how == 1:
        return value if value < target else target
    return value if value > target else target


#: Most picks ZRANDMEMBER makes with a negative count (as SRANDMEMBER, HRANDFIELD):
#: the reply is built whole, so a count of billions would exhaust the replica's memory.
_MAX_PICKS: Final = 2**24

#: ZRANDMEMBER's choices: replica-local, never the replicated generator (it is a read).


class Zsets(Component):
    """Sorted-set values (:class:`ZSet`) in the keyspace."""

    name = "zsets"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _zset(self, key: bytes, now: int) -> ZSet | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not ZSet:
            raise wrong_type()
        return value

    def _changed(self, key: bytes, z: ZSet) -> None:
        """``z`` (stored at ``key``) changed in place: delete it if empty."""
        if z:
            self.keyspace.bump(key)
        else:
            self.keyspace.remove(key)

    def _store(self, key: bytes, z: ZSet) -> int:
        """Replace ``key`` by ``z`` (its TTL goes), or delete it if ``z`` is empty."""
        self.keyspace.remove(key)
        if z:
            self.keyspace.put(key, z)
        return len(z)

    # --- ZADD, ZINCRBY, ZREM --------------------------------------------------------------

    @command("ZADD", -4, write=True, keys=(1, 1, 1), flags=("fast",))
    def zadd(self, ctx: Context, args: list[bytes]) -> Any:
        return self._zadd(ctx, args, incr=False)

    @command("ZINCRBY", 4, write=True, keys=(1, 1, 1), flags=("fast",))
    def zincrby(self, ctx: Context, args: list[bytes]) -> Any:
        return self._zadd(ctx, args, incr=True)

    def _zadd(self, ctx: Context, args: list[bytes], *, incr: bool) -> Any:
        nx = xx = gt = lt = ch = False
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"NX":
                nx = True
            elif opt == b"XX":
                xx = True
            elif opt == b"CH":
                ch = True
            elif opt == b"INCR":
                incr = True
            elif opt == b"GT":
                gt = True
            elif opt == b"LT":
                lt = True
            else:
                break
            i += 1
        elements = len(args) - i
        if elements % 2 or not elements:
            raise syntax_error()
        if nx and xx:
            raise KvError("ERR XX and NX options at the same time are not compatible")
        if (gt and nx) or (lt and nx) or (gt and lt):
            raise KvError("ERR GT, LT, and/or NX options at the same time are not compatible")
        if incr and elements > 2:
            raise KvError("ERR INCR option supports a single increment-element pair")
        pairs = [(parse_score(args[j]), args[j + 1]) for j in range(i, len(args), 2)]
        key = args[1]
        z = self._zset(key, int(ctx.now * 1000))
        added = updated = processed = 0
        score = 0.0
        if z is None:
            if xx:
                return None if incr else 0
            z = ZSet()
            self.keyspace.put(key, z)
        for score_in, member in pairs:
            score = score_in
            current = z.scores.get(member)
            if current is not None:
                if nx:
                    continue
                if incr:
                    score += current
                    if score != score:
                        raise KvError("ERR resulting score is not a number (NaN)")
                if (lt and score >= current) or (gt and score <= current):
                    continue
                if score != current:
                    z.set(member, score)
                    updated += 1
                processed += 1
            elif not xx:
                z.set(member, score)
                added += 1
                processed += 1
        if added or updated:
            self.keyspace.bump(key)
        if incr:
            return _score(score) if processed else None
        return added + updated if ch else added

    @command("ZREM", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def zrem(self, ctx: Context, args: list[bytes]) -> int:
        key = args[1]
        z = self._zset(key, int(ctx.now * 1000))
        if z is None:
            return 0
        removed = sum(z.discard(m) for m in args[2:])
        if removed:
            self._changed(key, z)
        return removed

    # --- single-key reads -----------------------------------------------------------------

    @command("ZCARD", 2, keys=(1, 1, 1), flags=("fast",))
    def zcard(self, now: int, args: list[bytes]) -> int:
        return len(self._zset(args[1], now) or ())

    @command("ZSCORE", 3, keys=(1, 1, 1), flags=("fast",))
    def zscore(self, now: int, args: list[bytes]) -> float | None:
        z = self._zset(args[1], now)
        score = None if z is None else z.scores.get(args[2])
        return None if score is None else _score(score)

    @command("ZMSCORE", -3, keys=(1, 1, 1), flags=("fast",))
    def zmscore(self, now: int, args: list[bytes]) -> list[float | None]:
        z = self._zset(args[1], now)
        scores = {} if z is None else z.scores
        return [None if (s := scores.get(m)) is None else _score(s) for m in args[2:]]

    @command("ZRANK", 3, keys=(1, 1, 1), flags=("fast",))
    def zrank(self, now: int, args: list[bytes]) -> int | None:
        z = self._zset(args[1], now)
        return None if z is None else z.rank(args[2])

    @command("ZREVRANK", 3, keys=(1, 1, 1), flags=("fast",))
    def zrevrank(self, now: int, args: list[bytes]) -> int | None:
        z = self._zset(args[1], now)
        rank = None if z is None else z.rank(args[2])
        return None if z is None or rank is None else len(z) - 1 - rank

    @command("ZCOUNT", 4, keys=(1, 1, 1), flags=("fast",))
    def zcount(self, now: int, args: list[bytes]) -> int:
        r = parse_score_range(args[2], args[3])
        z = self._zset(args[1], now)
        if z is None:
            return 0
        start, stop = score_bounds(z, r)
        return stop - start

    @command("ZLEXCOUNT", 4, keys=(1, 1, 1), flags=("fast",))
    def zlexcount(self, now: int, args: list[bytes]) -> int:
        r = parse_lex_range(args[2], args[3])
        z = self._zset(args[1], now)
        return 0 if z is None else len(lex_span(z, r))

    # --- ZRANGE and its kin ---------------------------------------------------------------

    def _range(self, now: int, args: list[bytes], rtype: int, rev: int) -> list[Any]:
        q = _RangeQuery(args, 1, False, rtype, rev)
        z = self._zset(q.key, now)
        return [] if z is None else _reply(q.run(z), q.withscores)

    @command("ZRANGE", -4, keys=(1, 1, 1))
    def zrange(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, -1, -1)

    @command("ZREVRANGE", -4, keys=(1, 1, 1))
    def zrevrange(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, _RANK, 1)

    @command("ZRANGEBYSCORE", -4, keys=(1, 1, 1))
    def zrangebyscore(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, _SCORE, 0)

    @command("ZREVRANGEBYSCORE", -4, keys=(1, 1, 1))
    def zrevrangebyscore(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, _SCORE, 1)

    @command("ZRANGEBYLEX", -4, keys=(1, 1, 1))
    def zrangebylex(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, _LEX, 0)

    @command("ZREVRANGEBYLEX", -4, keys=(1, 1, 1))
    def zrevrangebylex(self, now: int, args: list[bytes]) -> list[Any]:
        return self._range(now, args, _LEX, 1)

    @command("ZRANGESTORE", -5, write=True, keys=(1, 2, 1))
    def zrangestore(self, ctx: Context, args: list[bytes]) -> int:
        q = _RangeQuery(args, 2, True, -1, -1)
        z = self._zset(q.key, int(ctx.now * 1000))
        entries = [] if z is None else q.run(z)
        return self._store(args[1], ZSet((m, s) for s, m in entries))

    # --- removing ranges, popping ---------------------------------------------------------

    @command("ZREMRANGEBYRANK", 4, write=True, keys=(1, 1, 1))
    def zremrangebyrank(self, ctx: Context, args: list[bytes]) -> int:
        start, end = _parse_long(args[2]), _parse_long(args[3])
        z = self._zset(args[1], int(ctx.now * 1000))
        if z is None:
            return 0
        removed = z.delete_slice(*rank_bounds(len(z), start, end))
        if removed:
            self._changed(args[1], z)
        return removed

    @command("ZREMRANGEBYSCORE", 4, write=True, keys=(1, 1, 1))
    def zremrangebyscore(self, ctx: Context, args: list[bytes]) -> int:
        r = parse_score_range(args[2], args[3])
        z = self._zset(args[1], int(ctx.now * 1000))
        if z is None:
            return 0
        removed = z.delete_slice(*score_bounds(z, r))
        if removed:
            self._changed(args[1], z)
        return removed

    @command("ZREMRANGEBYLEX", 4, write=True, keys=(1, 1, 1))
    def zremrangebylex(self, ctx: Context, args: list[bytes]) -> int:
        r = parse_lex_range(args[2], args[3])
        z = self._zset(args[1], int(ctx.now * 1000))
        if z is None:
            return 0
        span = lex_span(z, r)
        for _, member in span:
            z.discard(member)
        if span:
            self._changed(args[1], z)
        return len(span)

    def _pop(self, key: bytes, z: ZSet, count: int, highest: bool) -> list[Entry]:
        n = min(count, len(z))
        order = z.order
        if highest:
            taken = list(order.islice(len(order) - n, len(order), reverse=True))
            del order[len(order) - n :]
        else:
            taken = list(order.islice(0, n))
            del order[:n]
        for _, member in taken:
            del z.scores[member]
        self._changed(key, z)
        return taken

    @command("ZPOPMIN", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def zpopmin(self, ctx: Context, args: list[bytes]) -> list[Any]:
        return self._zpop(ctx, args, highest=False)

    @command("ZPOPMAX", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def zpopmax(self, ctx: Context, args: list[bytes]) -> list[Any]:
        return self._zpop(ctx, args, highest=True)

    def _zpop(self, ctx: Context, args: list[bytes], *, highest: bool) -> list[Any]:
        if len(args) > 3:
            raise syntax_error()
        count = _positive(args[2]) if len(args) == 3 else 1
        z = self._zset(args[1], int(ctx.now * 1000))
        if z is None or count == 0:
            return []
        popped = self._pop(args[1], z, count, highest)
        if len(args) == 3:  # with a count, WITHSCORES's shape (RESP3 nests the pairs)
            return _pairs(popped)
        return [x for s, m in popped for x in (m, _score(s))]  # flat in both protocols

    @command("ZMPOP", -4, write=True, keys=(2, -1, 1))
    def zmpop(self, ctx: Context, args: list[bytes]) -> Any:
        keys, side, count = mpop_options(args, 1, (b"MIN", b"MAX"))
        now = int(ctx.now * 1000)
        for key in keys:
            z = self._zset(key, now)
            if z is not None:
                popped = self._pop(key, z, count, side == b"MAX")
                return [key, _nested(popped)]
        return NULL_ARRAY

    # --- ZRANDMEMBER, ZSCAN ---------------------------------------------------------------

    @command("ZRANDMEMBER", -2, keys=(1, 1, 1))
    def zrandmember(self, now: int, args: list[bytes]) -> Any:
        if len(args) == 2:
            z = self._zset(args[1], now)
            return None if z is None else z.order[READS.randrange(len(z))][1]
        count = parse_int(args[2])
        if count == -(2**63):
            raise KvError(
                "ERR value is out of range, value must between -9223372036854775807 and "
                "9223372036854775807"
            )
        withscores = False
        if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHSCORES"):
            raise syntax_error()
        if len(args) == 4:
            withscores = True
            if not -(2**62) <= count <= 2**62 - 1:
                raise KvError("ERR value is out of range")
        z = self._zset(args[1], now)
        if z is None or count == 0:
            return []
        order = z.order
        n = len(order)
        if count < -_MAX_PICKS:
            raise KvError(f"ERR value is out of range, at most {_MAX_PICKS} picks with repetitions")
        if count < 0 or count == 1:
            picked = [order[READS.randrange(n)] for _ in range(abs(count))]
        elif count >= n:  # the whole set, highest first (Redis walks it in reverse)
            picked = list(reversed(order))
        else:
            picked = [order[i] for i in READS.sample(range(n), count)]
        return _reply(picked, withscores)

    @command("ZSCAN", -3, keys=(1, 1, 1))
    def zscan(self, now: int, args: list[bytes]) -> list[Any]:
        cursor = _scan_cursor(args[2])
        z = self._zset(args[1], now)
        if z is None:
            return [b"0", []]
        match, count = scan_options(args)
        following = 0
        if len(z) <= _SMALL_ENTRIES and all(len(m) <= _SMALL_MEMBER for m in z.scores):
            page: Iterable[Entry] = z.order
        else:
            cursor &= _HASH_MASK
            slots = [(h, m) for m in z.scores if (h := hash(m) & _HASH_MASK) >= cursor]
            want = max(count, len(z) // _SCAN_PAGES)
            if len(slots) <= want:
                chosen = [m for _, m in slots]
            else:
                boundary = heapq.nsmallest(want + 1, slots)[want][0]
                if boundary == cursor:
                    chosen = [m for h, m in slots if h == boundary]
                    following = boundary + 1 if boundary < _HASH_MASK else 0
                else:
                    chosen = [m for h, m in slots if h < boundary]
                    following = boundary
            page = [(z.scores[m], m) for m in chosen]
        out: list[bytes] = []
        for score, member in page:
            if match is None or match(member):
                out.append(member)
                out.append(_scan_score(score))
        return [b"%d" % following, out]

    # --- ZUNION, ZINTER, ZDIFF ------------------------------------------------------------

    def _combine(
        self, now: int, args: list[bytes], at: int, op: str, *, store: bool, card: bool = False
    ) -> tuple[ZSet | int, bool]:
        """``zunionInterDiffGenericCommand``: the result (or the cardinality), WITHSCORES."""
        numkeys = parse_int(args[at])
        if numkeys < 1:
            name = args[0].decode("utf-8", "replace").lower()
            raise KvError(f"ERR at least 1 input key is needed for '{name}' command")
        if numkeys > len(args) - at - 1:
            raise syntax_error()
        sources: list[ZSet | set[bytes] | None] = []
        for key in args[at + 1 : at + 1 + numkeys]:
            found = self.keyspace.get(key, now)
            if found is not None and type(found) is not ZSet and type(found) is not set:
                raise wrong_type()
            sources.append(found)
        weights = [1.0] * numkeys
        how = 0
        withscores = False
        limit = 0
        j = at + 1 + numkeys
        while j < len(args):
            left = len(args) - j
            opt = args[j].upper()
            if op != "diff" and not card and left >= numkeys + 1 and opt == b"WEIGHTS":
                for i in range(numkeys):
                    weights[i] = parse_score(args[j + 1 + i], "ERR weight value is not a float")
                j += 1 + numkeys
            elif op != "diff" and not card and left >= 2 and opt == b"AGGREGATE":
                agg = _AGGREGATES.get(args[j + 1].upper())
                if agg is None:
                    raise syntax_error()
                how = agg
                j += 2
            elif not store and not card and opt == b"WITHSCORES":
                withscores = True
                j += 1
            elif card and left >= 2 and opt == b"LIMIT":
                limit = _positive(args[j + 1], "LIMIT can't be negative")
                j += 2
            else:
                raise syntax_error()
        srcs: list[tuple[list[Entry], float, ZSet | set[bytes]]] = [
            (_entries(src), w, src if src is not None else set())
            for src, w in zip(sources, weights, strict=True)
        ]
        if op == "diff":
            others = [s for _, _, s in srcs[1:]]
            out = ZSet((m, sc) for sc, m in srcs[0][0] if not any(m in o for o in others))
            return out, withscores
        srcs.sort(key=lambda s: len(s[2]))  # glibc's qsort is a stable merge sort here
        acc: dict[bytes, float] = {}
        # A stored -0 is 0, as Redis's small sorted sets store it; ZUNION and ZINTER
        # answer from their result as computed, -0 included (x + -0.0 is x)
        zero = 0.0 if store else -0.0
        if op == "inter":
            if len(srcs[0][2]):
                base_entries, base_weight, _ = srcs[0]
                for score, member in base_entries:
                    total = base_weight * score
                    if total != total:
                        total = 0.0
                    for _, weight, src in srcs[1:]:
                        other = _score_of(src, member)
                        if other is None:
                            break
                        total = _aggregate(total, other * weight, how)
                    else:
                        if card:
                            acc[member] = 0.0
                            if limit and len(acc) >= limit:
                                break
                        else:
                            acc[member] = total
            if card:
                return len(acc), False
        else:
            for entries, weight, _ in srcs:
                for score, member in entries:
                    value = weight * score + zero
                    if value != value:
                        value = 0.0
                    old = acc.get(member)
                    acc[member] = value if old is None else _aggregate(old, value, how)
        result = ZSet((m, v + zero) for m, v in acc.items())  # stored: -0 is 0
        if not store:
            for m, v in acc.items():
                if v == 0.0 and math.copysign(1.0, v) < 0:  # the reply keeps a -0
                    result.order.remove((0.0, m))
                    result.order.add((-0.0, m))
                    result.scores[m] = -0.0
        return result, withscores

    def _combine_read(self, now: int, args: list[bytes], op: str) -> list[Any]:
        result, withscores = self._combine(now, args, 1, op, store=False)
        assert isinstance(result, ZSet)
        return _reply(list(result.order), withscores)

    def _combine_store(self, ctx: Context, args: list[bytes], op: str) -> int:
        result, _ = self._combine(int(ctx.now * 1000), args, 2, op, store=True)
        assert isinstance(result, ZSet)
        return self._store(args[1], result)

    @command("ZUNION", -3, keys=(2, -1, 1))
    def zunion(self, now: int, args: list[bytes]) -> list[Any]:
        return self._combine_read(now, args, "union")

    @command("ZINTER", -3, keys=(2, -1, 1))
    def zinter(self, now: int, args: list[bytes]) -> list[Any]:
        return self._combine_read(now, args, "inter")

    @command("ZDIFF", -3, keys=(2, -1, 1))
    def zdiff(self, now: int, args: list[bytes]) -> list[Any]:
        return self._combine_read(now, args, "diff")

    @command("ZUNIONSTORE", -4, write=True, keys=(1, -1, 1))
    def zunionstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._combine_store(ctx, args, "union")

    @command("ZINTERSTORE", -4, write=True, keys=(1, -1, 1))
    def zinterstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._combine_store(ctx, args, "inter")

    @command("ZDIFFSTORE", -4, write=True, keys=(1, -1, 1))
    def zdiffstore(self, ctx: Context, args: list[bytes]) -> int:
        return self._combine_store(ctx, args, "diff")

    @command("ZINTERCARD", -3, keys=(2, -1, 1))
    def zintercard(self, now: int, args: list[bytes]) -> int:
        result, _ = self._combine(now, args, 1, "inter", store=False, card=True)
        assert isinstance(result, int)
        return result


def _entries(value: ZSet | set[bytes] | None) -> list[Entry]:
    if value is None:
        return []
    if isinstance(value, ZSet):
        return list(value.order)
    return [(1.0, m) for m in value]


def _score_of(value: ZSet | set[bytes], member: bytes) -> float | None:
    if type(value) is ZSet:
        return value.scores.get(member)
    return 1.0 if member in value else None


def _scan_cursor(text: bytes) -> int:
    """``parseScanCursorOrReply``: ``strtoul`` over all of it (a sign wraps), no leading space."""
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if text[:1] in (b"+", b"-") and not body:
        raise KvError("ERR invalid cursor")
    if body and not body.isdigit():
        raise KvError("ERR invalid cursor")
    value = int(body) if body else 0
    if value >= _U64:
        raise KvError("ERR invalid cursor")
    return (-value) % _U64 if text[:1] == b"-" else value
