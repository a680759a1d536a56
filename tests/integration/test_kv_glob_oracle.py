"""The glob matcher against a real ``redis-server``: ``KEYS pattern`` must agree exactly.

A throwaway ``redis-server`` (no persistence, 127.0.0.1, a free port) is the
oracle.  Hypothesis draws a few keys and a pattern over a small alphabet rich
in the special characters; Redis's KEYS answer is compared with
:func:`glob_matcher` applied to the same keys.  Bounded: 300 examples.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from dominoes.components.kv._glob import glob_matcher, stringmatch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .kv_helpers import redis_oracle, wait_for

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

#: Redis compares range bounds as C ``char``: signed on x86, unsigned on ARM.
SIGNED_CHAR = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    with redis_oracle(tmp_path_factory.mktemp("redis-oracle")) as r:
        yield r


def redis_keys(r: redis.Redis, pattern: bytes, keys: list[bytes] | set[bytes]) -> list[bytes]:
    r.flushall()
    if keys:
        r.mset(dict.fromkeys(keys, b"1"))
    return sorted(cast("list[bytes]", r.keys(pattern)))  # no decode_responses: bytes


def our_keys(pattern: bytes, keys: list[bytes] | set[bytes]) -> list[bytes]:
    match = glob_matcher(pattern)
    return sorted(k for k in keys if match(k))


# --- hand-picked quirks, each checked against the server ---------------------------------

_QUIRKS: list[tuple[bytes, list[bytes]]] = [
    (b"*", [b"", b"a"]),
    (b"**", [b"", b"a"]),
    (b"", [b"", b"a"]),
    (b"?", [b"", b"a"]),
    (b"a[b", [b"a[b", b"ab", b"a", b"a["]),
    (b"[abc", [b"a", b"b", b"c", b"[abc", b"ab"]),
    (b"[", [b"[", b"a", b""]),
    (b"[^", [b"[", b"a", b"^", b"ab"]),
    (b"x[^", [b"xa", b"x", b"x[^"]),
    (b"[]", [b"]", b"a", b"[]"]),
    (b"[^]", [b"]", b"a", b"[^]", b"ab"]),
    (b"[]a]", [b"]", b"a", b"]a]", b"a]"]),
    (b"[a-]", [b"a", b"-", b"]", b"^", b"_", b"`", b"b"]),
    (b"[z-a]", [b"a", b"m", b"z", b"-"]),
    (b"[\\]]", [b"]", b"\\"]),
    (b"[\\", [b"\\", b"[", b"\x00"]),
    (b"a\\", [b"a\\", b"a"]),
    (b"\\*", [b"*", b"a"]),
    (b"[a-\\]]", [b"\\]", b"a]", b"b]", b"]"]),
    (b"[\\a-c]", [b"a", b"b", b"c", b"-"]),
    (b"a*?", [b"a", b"ab"]),
    (b"*ab*ba*", [b"abba", b"xabxbax", b"aba", b"abax", b"baab"]),
    (b"a*" * 20 + b"b", [b"a" * 40, b"a" * 40 + b"b"]),
    (b"*a" * 1000, [b"a" * 999, b"a" * 1000, b"a" * 2000]),
    (b"*a" * 1001, [b"a" * 1001, b"a" * 2000]),
    (b"*a" * 1000 + b"*", [b"a" * 1000, b"a" * 2000]),
    (b"*a" * 1000 + b"\\*", [b"a" * 2000 + b"*"]),
]
_SIGNED_QUIRKS: list[tuple[bytes, list[bytes]]] = [
    (b"[\x7f-\x80]", [b"a", b"\x00", b"\xff", b"\x81"]),
    (b"[a-\xff]", [b"\x00", b"a", b"b", b"\xff", b"\xfe", b"\x80"]),
]


@pytest.mark.parametrize(("pattern", "keys"), _QUIRKS)
def test_quirk(real_redis: redis.Redis, pattern: bytes, keys: list[bytes]) -> None:
    assert our_keys(pattern, keys) == redis_keys(real_redis, pattern, keys)


@pytest.mark.skipif(not SIGNED_CHAR, reason="ranges of bytes >= 0x80 depend on char signedness")
@pytest.mark.parametrize(("pattern", "keys"), _SIGNED_QUIRKS)
def test_signed_char_quirk(real_redis: redis.Redis, pattern: bytes, keys: list[bytes]) -> None:
    assert our_keys(pattern, keys) == redis_keys(real_redis, pattern, keys)


def test_psubscribe_star_does_not_match_the_empty_channel(real_redis: redis.Redis) -> None:
    """Only KEYS and SCAN special-case ``*``; pattern subscriptions use stringmatchlen."""
    subscriber = real_redis.pubsub()
    try:
        subscriber.psubscribe("*")
        wait_for(lambda: real_redis.pubsub_numpat() == 1)
        assert real_redis.publish("", "m") == 0
        assert real_redis.publish("x", "m") == 1
    finally:
        subscriber.close()
    assert not stringmatch(b"*", b"")
    assert stringmatch(b"*", b"x")


# --- the property ------------------------------------------------------------------------

_ALPHABET = b"ab[]^-\\*?c" + (b"\x00\x7f\x80\xff" if SIGNED_CHAR else b"\x00")
_KEYS = st.sets(st.lists(st.sampled_from(list(_ALPHABET)), max_size=6).map(bytes), max_size=8)
_PIECES = [bytes([c]) for c in _ALPHABET] + [b"[a-c]", b"[^b]", b"\\*", b"[\\]]"]
_PATTERNS = st.lists(st.sampled_from(_PIECES), max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=_KEYS, pattern=_PATTERNS)
@example(keys={b"", b"a", b"ab", b"a[b"}, pattern=b"a[b")
@example(keys={b"", b"a"}, pattern=b"**")
def test_keys_agrees_with_redis_server(
    real_redis: redis.Redis, keys: set[bytes], pattern: bytes
) -> None:
    expected = redis_keys(real_redis, pattern, keys)
    assert our_keys(pattern, keys) == expected
    if pattern != b"*":  # KEYS skips matching for the lone star only
        assert sorted(k for k in keys if stringmatch(pattern, k)) == expected
