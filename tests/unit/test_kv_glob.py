"""The KV service's glob matcher: Redis's ``stringmatchlen`` semantics, in linear-bounded time.

The hand-written cases were checked against ``redis-server`` 7.0 (the
integration module ``test_kv_glob_oracle`` re-checks them, and random
patterns, against a real server).  The property test compares the matcher
with ``_reference``, a line-by-line Python transliteration of Redis's C.
"""

from __future__ import annotations

from functools import cache

import pytest
from dominoes.components.kv._glob import glob_matcher, stringmatch
from hypothesis import example, given
from hypothesis import strategies as st


def _matches(pattern: bytes, strings: list[bytes]) -> list[bytes]:
    match = glob_matcher(pattern)
    return [s for s in strings if match(s)]


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        # stars, question marks, literals
        (b"h?llo", [b"hello", b"hallo"], [b"hllo", b"heello", b""]),
        (b"h*llo", [b"hllo", b"heeeello"], [b"hell", b"hllox"]),
        (b"h**llo", [b"hllo", b"heeeello"], [b"hell"]),
        (b"*a", [b"a", b"ba", b"aaa"], [b"ab", b""]),
        (b"a*", [b"a", b"ab"], [b"ba", b""]),
        (b"a*?", [b"ab", b"abc"], [b"a"]),
        (b"*?*", [b"a", b"abc"], [b""]),
        (b"a*b*c", [b"abc", b"axxbyyc", b"abcbc"], [b"acb", b"abcx"]),
        (b"*ab*ba*", [b"abba", b"xabxbax"], [b"aba", b"abax", b"baab"]),  # no overlapping
        (b"*aba*aba", [b"abaaba", b"abababa"], [b"ababa", b"abaab"]),
        (b"a.b", [b"a.b"], [b"axb"]),
        (b"user:[0-9]*", [b"user:1", b"user:42x"], [b"user:x", b"user:"]),
        (b"\x00*\xff", [b"\x00\xff", b"\x00x\xff"], [b"\xff\x00"]),
        # escapes
        (b"a\\*b", [b"a*b"], [b"axb", b"ab"]),
        (b"\\?", [b"?"], [b"a"]),
        (b"\\a", [b"a"], [b"\\a"]),
        (b"a\\", [b"a\\"], [b"a", b"a\\\\"]),  # a trailing backslash is a literal one
        (b"\\\\*", [b"\\", b"\\x"], [b"x"]),
        # sets
        (b"h[ae]llo", [b"hello", b"hallo"], [b"hillo", b"hllo"]),
        (b"h[^e]llo", [b"hallo", b"h^llo"], [b"hello", b"hllo"]),
        (b"h[a-b]llo", [b"hallo", b"hbllo"], [b"hcllo", b"h-llo"]),
        (b"[z-a]", [b"a", b"m", b"z"], [b"-", b"A"]),  # a reversed range is swapped
        (b"[-a]", [b"-", b"a"], [b"b"]),
        (b"[a-b-d]", [b"a", b"b", b"-", b"d"], [b"c"]),
        (b"[a-]", [b"]", b"^", b"_", b"`", b"a"], [b"-", b"b"]),  # the range ']'..'a'
        (b"[\\]]", [b"]"], [b"\\", b"\\]"]),
        (b"[\\a-c]", [b"a", b"-", b"c"], [b"b"]),  # an escaped byte never starts a range
        (b"[a-\\]]", [b"\\]", b"a]"], [b"b]", b"]"]),  # the range '\\'..'a', then ']'
        (b"[*?]", [b"*", b"?"], [b"a", b""]),
        (b"[^]", [b"]", b"a"], [b"", b"ab"]),
        (b"[]", [], [b"]", b"a", b"[]", b""]),
        (b"[]a]", [], [b"]", b"a", b"]a]", b"a]"]),  # "[]" never matches, so nothing does
        # unclosed sets take the rest of the pattern
        (b"a[b", [b"ab"], [b"a[b", b"a", b"a["]),
        (b"[abc", [b"a", b"b", b"c"], [b"[abc", b"ab", b"["]),
        (b"[a-c", [b"a", b"b", b"c"], [b"-", b"d"]),
        (b"[", [], [b"[", b"a", b""]),
        (b"[^", [b"[", b"^", b"a"], [b"ab", b""]),
        (b"x[^", [b"xa"], [b"x", b"x[^"]),
        (b"[\\", [b"\\"], [b"[", b"\x00"]),
        (b"[a*", [b"a", b"*"], [b"ab"]),
        # ranges compare signed chars: [\x7f-\x80] is -128..127, every byte
        (b"[\x7f-\x80]", [b"\x00", b"a", b"\x81", b"\xff"], []),
        (b"[a-\xff]", [b"\x00", b"a", b"\xff"], [b"b", b"\xfe", b"\x80"]),
        (b"[\x80-\xff]", [b"\x80", b"\xc0", b"\xff"], [b"\x7f", b"\x00"]),
        # the empty pattern matches the empty string, and only it
        (b"", [b""], [b"a"]),
        # KEYS * and SCAN MATCH * skip matching; any other pattern never matches b""
        (b"*", [b"", b"anything"], []),
        (b"**", [b"x"], [b""]),
        (b"?", [b"a"], [b""]),
    ],
)
def test_glob(pattern: bytes, yes: list[bytes], no: list[bytes]) -> None:
    assert _matches(pattern, yes) == yes
    assert _matches(pattern, no) == []
    for s in yes + no:  # the same, but for the lone star and b""
        assert stringmatch(pattern, s) == (s in yes and (s != b"" or pattern != b"*")), s


def test_only_glob_matcher_lets_the_lone_star_match_the_empty_string() -> None:
    assert glob_matcher(b"*")(b"")  # KEYS *, SCAN MATCH *
    assert not stringmatch(b"*", b"")  # PSUBSCRIBE *, PUBSUB CHANNELS *
    assert stringmatch(b"*", b"x")


def test_glob_matcher_is_cached() -> None:
    assert glob_matcher(b"user:[0-9]*") is glob_matcher(b"user:[0-9]*")


@pytest.mark.parametrize(
    ("pattern", "string", "expected"),
    [
        (b"a*" * 20 + b"b", b"a" * 40, False),
        (b"a*" * 200 + b"b", b"a" * 10_000, False),
        (b"a*" * 200 + b"a", b"a" * 10_000, True),
        (b"*a" * 200 + b"*b", b"a" * 10_000, False),
        (b"[a]*" * 200 + b"[b]", b"a" * 10_000, False),
        (b"?*" * 200 + b"b", b"a" * 10_000, False),
        (b"*?a?" * 200 + b"b", b"a" * 10_000, False),
        (b"*[^b]" * 200 + b"*b", b"a" * 10_000, False),
        (b"*[^b]" * 200 + b"*b", b"a" * 10_000 + b"b", True),
        (b"*" + b"a" * 1000 + b"b", b"a" * 10_000, False),
        (b"*" + b"?" * 1000 + b"b", b"a" * 10_000, False),
    ],
)
def test_pathological_patterns_are_answered(pattern: bytes, string: bytes, expected: bool) -> None:
    """Exponential with a backtracking regex; here it returns (correctness only: no timing)."""
    assert glob_matcher(pattern)(string) is expected


@pytest.mark.parametrize(
    ("pattern", "string", "matches"),
    [
        (b"*a" * 1000, b"a" * 2000, True),  # 1000 nested stars are fine...
        (b"*a" * 1001, b"a" * 2000, False),  # ...1001 are "abusive": no match, ever
        (b"*a" * 1000 + b"*", b"a" * 2000, True),  # a trailing star does not nest
        (b"**a" * 1000, b"a" * 2000, True),  # consecutive stars are one
        (b"*a" * 1000 + b"\\*", b"a" * 2000 + b"*", True),  # an escaped star is a byte
        (b"*[a*]" * 1001, b"a" * 2000, False),
    ],
)
def test_redis_nesting_limit(pattern: bytes, string: bytes, matches: bool) -> None:
    assert glob_matcher(pattern)(string) is matches


# --- the property: agree with a transliteration of Redis's C -----------------------------


def _signed(c: int) -> int:
    return c - 256 if c >= 128 else c


def _reference(p: bytes, s: bytes) -> bool:
    """``stringmatchlen_impl`` (Redis 7, ``src/util.c``, ``nocase=0``), statement by statement.

    Slow but obviously right: pointers become indices, ``at`` reads the NUL
    terminator at the end as C does, and the recursion is memoized.  Redis's
    ``skipLongerMatches`` is left out: it only prunes the search (the oracle
    test checks the real thing).
    """
    plen, slen = len(p), len(s)

    def at(i: int) -> int:
        assert i <= plen
        return p[i] if i < plen else 0

    @cache
    def impl(pi: int, si: int, nesting: int) -> bool:
        if nesting > 1000:
            return False
        while pi < plen and si < slen:
            c = p[pi]
            if c == ord("*"):
                while pi < plen and at(pi + 1) == ord("*"):
                    pi += 1
                if plen - pi == 1:
                    return True
                while si < slen:
                    if impl(pi + 1, si, nesting + 1):
                        return True
                    si += 1
                return False
            elif c == ord("?"):
                si += 1
            elif c == ord("["):
                pi += 1
                negate = at(pi) == ord("^")
                if negate:
                    pi += 1
                match = False
                while True:
                    if at(pi) == ord("\\") and plen - pi >= 2:
                        pi += 1
                        if p[pi] == s[si]:
                            match = True
                    elif at(pi) == ord("]"):
                        break
                    elif plen - pi == 0:
                        pi -= 1
                        break
                    elif plen - pi >= 3 and at(pi + 1) == ord("-"):
                        start, end, ch = _signed(p[pi]), _signed(p[pi + 2]), _signed(s[si])
                        if start > end:
                            start, end = end, start
                        pi += 2
                        if start <= ch <= end:
                            match = True
                    elif p[pi] == s[si]:
                        match = True
                    pi += 1
                if negate:
                    match = not match
                if not match:
                    return False
                si += 1
            else:
                if c == ord("\\") and plen - pi >= 2:
                    pi += 1
                if p[pi] != s[si]:
                    return False
                si += 1
            pi += 1
            if si == slen:
                while at(pi) == ord("*"):
                    pi += 1
                break
        return pi == plen and si == slen

    return impl(0, 0, 0)


_BYTES = b"ab-]^\\*?[\x00\x7f\x80\xff"
_PIECES = [bytes([c]) for c in _BYTES] + [b"[a-c]", b"[^b]", b"[z-a]", b"\\*", b"[\\]]", b"[]"]
_STRINGS = st.lists(st.sampled_from(list(_BYTES)), max_size=10).map(bytes)
_PATTERNS = st.lists(st.sampled_from(_PIECES), max_size=10).map(b"".join)


@given(pattern=_PATTERNS, strings=st.lists(_STRINGS, max_size=8))
@example(pattern=b"a[b", strings=[b"ab", b"a[b"])
@example(pattern=b"[a-\\]]", strings=[b"\\]", b"a]", b"b]"])
@example(pattern=b"[\x7f-\x80]", strings=[b"\x00", b"\xff"])
def test_agrees_with_redis_c_code(pattern: bytes, strings: list[bytes]) -> None:
    for s in strings:
        assert stringmatch(pattern, s) == _reference(pattern, s), s
        assert glob_matcher(pattern)(s) == (_reference(pattern, s) or pattern == b"*"), s


@given(pattern=st.binary(max_size=12), string=st.binary(max_size=12))
def test_agrees_with_redis_c_code_on_any_bytes(pattern: bytes, string: bytes) -> None:
    assert stringmatch(pattern, string) == _reference(pattern, string)


@given(
    pattern=st.lists(st.sampled_from([b"a", b"*", b"?", b"[ab]", b"b"]), max_size=40).map(b"".join),
    string=st.lists(st.sampled_from(b"ab"), max_size=60).map(bytes),
)
def test_agrees_with_redis_c_code_on_many_stars(pattern: bytes, string: bytes) -> None:
    assert stringmatch(pattern, string) == _reference(pattern, string)


@given(
    pattern=st.lists(st.sampled_from([b"a", b"b", b"*", b"?"]), max_size=8).map(b"".join),
    string=st.lists(st.sampled_from(b"ab"), max_size=8).map(bytes),
)
def test_agrees_with_redis_c_code_on_short_patterns(pattern: bytes, string: bytes) -> None:
    assert stringmatch(pattern, string) == _reference(pattern, string)
