"""Redis's glob patterns for KEYS, SCAN MATCH and PSUBSCRIBE, matched in linear-bounded time.

The semantics are exactly those of Redis 7's ``stringmatchlen()`` (``src/util.c``,
``nocase=0``), quirks included, and were checked against ``redis-server`` 7.0:

* ``*`` matches any run of bytes (consecutive stars are one star), ``?`` any
  one byte, ``\\x`` the byte ``x`` (a trailing ``\\`` is a literal backslash);
* ``[...]`` matches one byte from a set: ``^`` first negates it, ``a-z`` is a
  range (``z-a`` is the same range), ``\\x`` inside is the byte ``x`` and can
  never start a range;
* ranges compare bytes as C's signed ``char`` (x86-64), so ``[a-\\xff]`` is
  ``-1..97``: it holds ``\\xff`` and ``\\x00``-``a`` but not ``b`` or ``\\x80``;
* an unclosed ``[`` is a set made of the rest of the pattern: ``a[bc`` matches
  ``ab`` and ``ac``, ``[`` alone matches nothing and ``[^`` any one byte;
* ``[]`` matches nothing and ``[^]`` any byte; ``[a-]`` is the range ``]-a``;
* a non-empty pattern never matches the empty string (``stringmatchlen("**",
  "")`` is 0); only ``KEYS *`` and ``SCAN MATCH *`` special-case the lone
  ``*``, which is why :func:`glob_matcher` does too but :func:`stringmatch`
  (what ``PSUBSCRIBE`` and ``PUBSUB CHANNELS`` use in Redis) does not;
* Redis gives up (no match) beyond 1000 nested stars: a pattern with more
  than 1000 runs of stars followed by something else matches nothing.

Why not a regex: translating ``*`` to ``.*`` gives a backtracking regex that
takes exponential time on patterns like ``a*a*a*...a*b`` against ``aaaa...``,
and a KEYS, SCAN or PUBLISH runs inside a replica's loop, so one request
would wedge the replica at 100% CPU.  A request must never hang the replica.
Here the pattern is compiled once into star-free *segments* whose tokens
each match exactly one byte, so the classic greedy algorithm is exact: the
first segment must match at the start, the last at the end, and each middle
segment is searched for leftmost after the previous one (a later occurrence
could never help the segments after it).  That is O(len(pattern) *
len(string)) in the worst case, whatever the pattern.  The searches run in C:
``bytes.find`` for literal segments, and for segments with ``?`` or ``[...]``
a regex made only of single-byte atoms (no quantifiers, no alternation,
hence nothing to backtrack into).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from ._errors import parse_int, syntax_error

__all__ = ("glob_matcher", "stringmatch")

#: ``stringmatchlen_impl`` returns "no match" when called at a nesting above this.
_NESTING_LIMIT = 1000

_ALL = (1 << 256) - 1  # the mask of ``?``: every byte
_STAR, _QUESTION, _OPEN, _CLOSE, _CARET, _DASH, _BACKSLASH = b"*?[]^-\\"

Matcher = Callable[[bytes], bool]


@lru_cache(maxsize=256)
def glob_matcher(pattern: bytes) -> Matcher:
    """A predicate telling whether a key matches ``pattern``, as KEYS and SCAN MATCH do.

    That is :func:`stringmatch`, except that the lone ``*`` matches every key,
    the empty key included, because Redis's KEYS and SCAN skip matching then.
    """
    if pattern == b"*":
        return _always
    return _compile(pattern)


def stringmatch(pattern: bytes, string: bytes) -> bool:
    """Exactly Redis's ``stringmatchlen(pattern, string, nocase=0)``.

    Unlike :func:`glob_matcher`, ``*`` does not match the empty string: Redis
    does not deliver ``PUBLISH "" msg`` to a ``PSUBSCRIBE *``.
    """
    if pattern == b"*":
        return string != b""
    return glob_matcher(pattern)(string)


def _always(_: bytes) -> bool:
    return True


def _never(_: bytes) -> bool:
    return False


def _is_empty(s: bytes) -> bool:
    return s == b""


# --- compiling ---------------------------------------------------------------------------

#: A token: ``None`` is a run of stars, ``bytes`` a run of literal bytes, and an
#: ``int`` a 256-bit mask of the bytes one ``?`` or ``[...]`` accepts.
Token = bytes | int | None

_SPECIAL = re.compile(rb"[*?\[\\]")


def _compile(pattern: bytes) -> Matcher:
    tokens = _tokenize(pattern)
    if not tokens:
        return _is_empty
    if 0 in tokens:  # an empty set ("[]"): that token can never consume its byte
        return _never
    stars = tokens.count(None)
    if stars - (tokens[-1] is None) > _NESTING_LIMIT:
        return _never
    segments: list[list[bytes | int]] = [[]]
    for token in tokens:
        if token is None:
            segments.append([])
        else:
            segments[-1].append(token)
    if stars == 0:
        return _Segment(segments[0]).fullmatch
    head, *middle, tail = (_Segment(s) for s in segments)
    if head.literal and not middle and not tail.size:  # the common b"prefix:*"
        prefix = head.literal
        return lambda s: s.startswith(prefix)
    return _stars(head, middle, tail)


def _tokenize(p: bytes) -> list[Token]:
    """``p`` as a list of tokens (see :data:`Token`), consecutive literals merged.

    This walks the pattern exactly as ``stringmatchlen`` does.  How Redis
    advances in the pattern never depends on the string, so the tokens can be
    computed once.  Where C reads ``pattern[patternLen]`` it reads the NUL
    terminator, which is never one of the special characters, hence the
    ``i < n`` / ``n - i`` tests below.
    """
    tokens: list[bytearray | int | None] = []

    def literal(run: bytes) -> None:
        last = tokens[-1] if tokens else None
        if isinstance(last, bytearray):
            last += run
        else:
            tokens.append(bytearray(run))

    n = len(p)
    i = 0
    while i < n:
        c = p[i]
        if c == _STAR:
            while i + 1 < n and p[i + 1] == _STAR:
                i += 1
            tokens.append(None)
        elif c == _QUESTION:
            tokens.append(_ALL)
        elif c == _OPEN:
            i += 1
            negate = i < n and p[i] == _CARET
            if negate:
                i += 1
            mask = 0
            while True:
                if n - i >= 2 and p[i] == _BACKSLASH:
                    i += 1
                    mask |= 1 << p[i]
                elif i == n:  # unclosed: step back so the i += 1 below ends the pattern
                    i -= 1
                    break
                elif p[i] == _CLOSE:
                    break
                elif n - i >= 3 and p[i + 1] == _DASH:
                    mask |= _range(p[i], p[i + 2])
                    i += 2
                else:
                    mask |= 1 << p[i]
                i += 1
            if negate:
                mask ^= _ALL
            if mask and mask & (mask - 1) == 0:  # a set of one byte, e.g. "[a]"
                literal(bytes((mask.bit_length() - 1,)))
            else:
                tokens.append(mask)
        elif c == _BACKSLASH:
            if i + 1 < n:
                i += 1
            literal(p[i : i + 1])
        else:  # a run of ordinary bytes, up to the next special one
            found = _SPECIAL.search(p, i)
            end = n if found is None else found.start()
            literal(p[i:end])
            i = end - 1
        i += 1
    return [bytes(t) if isinstance(t, bytearray) else t for t in tokens]


def _range(a: int, b: int) -> int:
    """The mask of ``[a-b]``: C compares signed chars, and swaps a reversed range."""
    lo, hi = sorted((a - 256 if a >= 128 else a, b - 256 if b >= 128 else b))
    if lo >= 0 or hi < 0:
        return _span(lo & 0xFF, hi & 0xFF)
    return _span(0, hi) | _span(lo & 0xFF, 0xFF)  # e.g. -1..97 is 0x00..0x61 and 0xff


def _span(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


@lru_cache(maxsize=1024)
def _atom(mask: int) -> bytes:
    """A regex ``[...]`` matching exactly one byte of ``mask`` (which has two or more)."""
    parts: list[bytes] = []
    while mask:  # one step per run of consecutive bytes
        lo = (mask & -mask).bit_length() - 1
        t = mask >> lo
        run = (t ^ (t + 1)).bit_length() - 1
        hi = lo + run - 1
        parts.append(b"\\x%02x" % lo if lo == hi else b"\\x%02x-\\x%02x" % (lo, hi))
        mask &= ~(((1 << run) - 1) << lo)
    return b"[" + b"".join(parts) + b"]"


class _Segment:
    """A star-free run of tokens: it always matches exactly ``size`` bytes.

    A literal segment is searched with ``bytes.find``; any other with a regex
    of single-byte atoms, compiled on first use only: ``re.compile`` costs
    microseconds per atom, and a long pattern usually meets only shorter keys,
    which the length checks reject first.
    """

    __slots__ = ("_regex", "items", "literal", "size")

    def __init__(self, items: list[bytes | int]) -> None:
        self.items = items
        self.size = sum(len(t) if isinstance(t, bytes) else 1 for t in items)
        self.literal: bytes | None = None
        if all(isinstance(t, bytes) for t in items):
            self.literal = b"".join(t for t in items if isinstance(t, bytes))
        self._regex: re.Pattern[bytes] | None = None

    @property
    def regex(self) -> re.Pattern[bytes]:
        if self._regex is None:
            parts = (re.escape(t) if isinstance(t, bytes) else _atom(t) for t in self.items)
            self._regex = re.compile(b"".join(parts))
        return self._regex

    def fullmatch(self, s: bytes) -> bool:
        if self.literal is not None:
            return s == self.literal
        return len(s) == self.size and self.regex.fullmatch(s) is not None

    def at(self, s: bytes, pos: int) -> bool:
        """Whether it matches ``s[pos : pos + size]`` (the caller made sure that fits)."""
        if self.literal is not None:
            return s.startswith(self.literal, pos)
        return self.regex.match(s, pos) is not None

    def find(self, s: bytes, start: int, end: int) -> int:
        """The leftmost ``k`` where it matches ``s[k : k + size]`` within ``s[start:end]``."""
        if self.literal is not None:
            return s.find(self.literal, start, end)
        found = self.regex.search(s, start, end)
        return -1 if found is None else found.start()


def _stars(head: _Segment, middle: list[_Segment], tail: _Segment) -> Matcher:
    """``head*middle[0]*...*middle[-1]*tail``, for non-empty strings only (like Redis)."""
    shortest = max(1, head.size + tail.size + sum(m.size for m in middle))

    def match(s: bytes) -> bool:
        n = len(s)
        if n < shortest:
            return False
        if head.size and not head.at(s, 0):
            return False
        end = n - tail.size
        if tail.size and not tail.at(s, end):
            return False
        pos = head.size
        for segment in middle:  # leftmost is always best: each search is linear
            found = segment.find(s, pos, end)
            if found < 0:
                return False
            pos = found + segment.size
        return True

    return match


def scan_options(args: list[bytes]) -> tuple[Callable[[bytes], bool] | None, int]:
    """A *SCAN's ``MATCH`` matcher (None: every item) and ``COUNT``, from ``args[3:]``."""
    match: Callable[[bytes], bool] | None = None
    count = 10
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"COUNT" and i + 1 < len(args):
            count = parse_int(args[i + 1])
            if count < 1:
                raise syntax_error()
        elif opt == b"MATCH" and i + 1 < len(args):
            match = None if args[i + 1] == b"*" else glob_matcher(args[i + 1])
        else:
            raise syntax_error()
        i += 2
    return match, count
