"""Times of expiry against a real ``redis-server``: every edge must be answered alike.

A throwaway ``redis-server`` (no persistence, 127.0.0.1, a free port) is the
oracle, the module's KV service the subject.  Each case sets ``k``, runs one
command taking a time (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, SET EX/PX/EXAT/
PXAT, SETEX, PSETEX, GETEX) with an edge value, and compares the reply (or the
error's text) and what became of the key: gone, kept without a TTL, or kept
with one.  The edges are the 64-bit limits, their thousandths as C truncates
them, and the sum with now; values that fall within a day of a now-dependent
edge are avoided, since the two servers' clocks read a few ms apart.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from .harness import Service
from .kv_helpers import client, redis_oracle

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    with redis_oracle(tmp_path_factory.mktemp("redis-oracle")) as r:
        version = r.info("server")["redis_version"]
        if not str(version).startswith("7."):
            pytest.skip(f"the oracle is Redis 7, this is {version}")
        yield r


@pytest.fixture(scope="module")
def ours(svc: Service) -> Iterator[redis.Redis]:
    r = client(svc.port)
    yield r
    r.close()


def _edges() -> list[int]:
    """The 64-bit edges of a time, in ms and in s, and those of its sum with now.

    "Now" is today's midnight (UTC), so that the cases, and their names, are the
    same in every process that collects them (pytest-xdist's workers must agree)
    whenever it collects; the edges of the sum with now are then 1 to 2 days off
    the real ones, on either side: no clock can tip them.
    """
    day_s = 86_400
    now_ms = int(time.time()) // day_s * day_s * 1000
    s_max, s_min = INT64_MAX // 1000, -(-INT64_MIN // 1000)  # C's truncating division
    relative_s = (INT64_MAX - now_ms) // 1000  # the most seconds EX/EXPIRE take today
    relative_ms = INT64_MAX - now_ms
    values = {0, -1, -2, -100, 1_000_000}  # no small positive: ms from now is a race
    for edge in (INT64_MAX, INT64_MIN, s_max, s_min):
        values |= {edge - 1, edge, edge + 1}
    for edge, margin in ((relative_s, 2 * day_s), (relative_ms, 2 * day_s * 1000)):
        values |= {edge - margin, edge + margin}  # 1 to 2 days away from the real edge
    return sorted(values)


#: Not integers, or out of the 64-bit range: parse errors, whatever the command.
NOT_INTEGERS = [str(INT64_MAX + 1), str(INT64_MIN - 1), "99999999999999999999", "abc", "1.5",
                "", " 1", "+1", "-0", "01"]  # fmt: skip

EXPIRES = ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"]


def _cases() -> list[tuple[str, ...]]:
    times = [str(n) for n in _edges()] + NOT_INTEGERS
    cases: list[tuple[str, ...]] = []
    for t in times:
        cases += [(name, "k", t) for name in EXPIRES]
        cases += [("SET", "k", "v", unit, t) for unit in ("EX", "PX", "EXAT", "PXAT")]
        cases += [("SETEX", "k", t, "v"), ("PSETEX", "k", t, "v")]
        cases += [("GETEX", "k", unit, t) for unit in ("EX", "PX", "EXAT", "PXAT")]
        cases += [("EXPIRE", "missing", t), ("GETEX", "missing", "EX", t)]
    # The order of the checks: options before the time, the key before GETEX's time.
    cases += [
        ("EXPIRE", "k", "abc", "FOO"),
        ("EXPIRE", "k", "-9223372036854776", "FOO"),
        ("EXPIRE", "k", "abc", "NX", "XX"),
        ("EXPIRE", "k", "-9223372036854776", "GT", "LT"),
        ("EXPIRE", "k", "-9223372036854776", "NX"),
        ("SET", "k", "v", "EX", "abc", "NX", "XX"),
        ("SET", "k", "v", "EX", "10", "EX", "-9223372036854776"),
        ("SET", "k", "v", "EX", "-9223372036854776", "EX", "10"),
        ("GETEX", "k", "EX", "0", "PERSIST"),
        ("GETEX", "k", "PERSIST", "EX", "0"),
        ("GETEX", "k", "EX", "-9223372036854776", "EX", "10"),
    ]
    return cases


def _outcome(r: redis.Redis, args: tuple[str, ...]) -> tuple[Any, str, str]:
    """The reply (or error text) to ``args`` after ``SET k v``, and the key's fate."""
    r.delete("k", "missing")
    r.set("k", "v")
    try:
        reply: Any = r.execute_command(*args)
    except redis.ResponseError as exc:
        reply = f"error: {exc}"
    ttl = r.pttl("k")
    fate = "gone" if ttl == -2 else "no ttl" if ttl == -1 else "ttl"
    return reply, fate, repr(r.get("k"))


@pytest.mark.parametrize("args", _cases(), ids=" ".join)
def test_same_reply_and_same_fate_as_redis(
    real_redis: redis.Redis, ours: redis.Redis, args: tuple[str, ...]
) -> None:
    assert _outcome(ours, args) == _outcome(real_redis, args)


def test_the_issue(real_redis: redis.Redis, ours: redis.Redis) -> None:
    for r in (real_redis, ours):
        r.set("foo", "bar")
        with pytest.raises(redis.ResponseError, match="invalid expire time in 'expire' command"):
            r.execute_command("EXPIRE", "foo", "-9223372036854776")
        assert r.get("foo") == b"bar"
