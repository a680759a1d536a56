"""COPY, MOVE, SWAPDB, RANDOMKEY, TOUCH, OBJECT, DUMP, RESTORE, SORT, SORT_RO against Redis 7.0.

The subject is a 2-replica KV service, the oracle a throwaway ``redis-server``
(the harness of ``test_kv_zsets``: every command goes to one replica or the
other, a write on one and the read that follows on the other, in RESP2 and
RESP3, replies compared exactly as redis-py reads them without callbacks).

What Redis leaves unspecified or answers differently on purpose (the module
doc of ``dominoes.components.kv._keys``) is checked on its own:

* databases other than 0 (the KV answers as a Redis with ``databases 1``);
* DUMP's payload (the KV's own format): DUMP on one replica, RESTORE on the
  other, and both replicas dump a value to the same bytes; payloads of one
  are refused by the other, as corrupt ones are;
* OBJECT IDLETIME (from the last write, not the last read).

Redis 7.0's numeric SORT reads a stale ``errno``: after a float that
overflowed (in SORT itself, or ZADD, INCRBYFLOAT, ...) it refuses every
element that is not an integer until a later float parse clears ``errno``.
The KV does not, so each case here starts by clearing the oracle's.
"""

from __future__ import annotations

import shlex
import shutil
from typing import Any

import pytest
import redis
from dominoes.components.kv._service import TABLE

from .test_kv_zsets import Both, _call, _raw, oracle, ours  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


def _settable() -> set[bytes]:
    try:
        from dominoes.components.kv._conncommands import SETTABLE
    except ImportError:
        return set()
    return set(SETTABLE)


class Pair(Both):
    """:class:`Both`, with the oracle's stale ``errno`` cleared first (see the module doc)."""

    def flush(self) -> None:
        self.theirs.execute_command("ZADD", "{errno}", "1", "x")  # strtod with errno = 0
        super().flush()


def _lines(*groups: str) -> list[str]:
    return [line for group in groups for line in group.split("\n") if line.strip()]


HASH_513 = " ".join(f"f{i} v" for i in range(513))
HASH_512 = " ".join(f"f{i} v" for i in range(512))
INTS_512 = " ".join(str(i) for i in range(512))
ZSET_129 = " ".join(f"{i} m{i}" for i in range(129))
LONG_64, LONG_65 = "x" * 64, "x" * 65

CASES: dict[str, list[str]] = {
    "copy": _lines(
        "SET a 1", "EXPIRE a 100", "COPY a b", "TTL b", "GET b", "COPY a b", "COPY a b REPLACE",
        "COPY a b DB 0", "COPY a b db 0 replace", "COPY a b REPLACE REPLACE", "COPY a b DB x",
        "COPY a b DB", "COPY a b FOO", "COPY a a", "COPY a a REPLACE", "COPY nokey b",
        "COPY nokey nokey", "COPY a b DB 16", "COPY a b DB -1", "COPY a b DB 2147483648",
        "COPY a b DB 1.5 REPLACE", "PERSIST a", "COPY a b REPLACE", "TTL b", "SET b x",
        "EXPIRE b 50", "COPY a b REPLACE", "TTL b",
        "RPUSH l 1 2 3", "COPY l l2", "RPUSH l2 4", "LRANGE l 0 -1", "LRANGE l2 0 -1",
        "HSET h f v g w", "COPY h h2", "HSET h2 f changed", "HGET h f", "HGET h2 f",
        "SADD s a b c", "COPY s s2", "SREM s2 a", "SCARD s", "SCARD s2", "SORT s2 ALPHA",
        "ZADD z 1 a 2 b", "COPY z z2", "ZINCRBY z2 5 a", "ZRANGE z 0 -1 WITHSCORES",
        "ZRANGE z2 0 -1 WITHSCORES", "COPY z s", "TYPE s", "COPY z s REPLACE", "TYPE s",
        "COPY", "COPY a",
    ),
    "one database": _lines(
        "SET k v", "MOVE k 0", "MOVE nokey 0", "MOVE k 16", "MOVE k -1", "MOVE k x",
        "MOVE k 2147483648", "MOVE k", "MOVE k 0 0", "SWAPDB 0 0", "SWAPDB 0 16",
        "SWAPDB 16 0", "SWAPDB x 0", "SWAPDB 0 x", "SWAPDB -1 x", "SWAPDB 0 2147483648",
        "SWAPDB 0", "SELECT 0", "SELECT 16", "SELECT -1", "SELECT x", "GET k",
    ),
    "object encoding": _lines(
        "SET i 12345", "SET neg -1", "SET big 9223372036854775807",
        "SET over 9223372036854775808", "SET zero 0", "SET minus0 -0", "SET lead 01",
        "SET plus +1", "SET space ' 1'", "SET float 1.5", "SET s44 " + "y" * 44,
        "SET s45 " + "y" * 45, "SET empty ''",
        "RPUSH l a", "HSET h f v", "HSET hbig " + HASH_513, "HSET h512 " + HASH_512,
        "HSET hlongf " + LONG_65 + " v", "HSET hlongv f " + LONG_65, "HSET h64 " + LONG_64 + " "
        + LONG_64, "SADD si 1 2 -3 9223372036854775807", "SADD ss 1 a", "SADD si512 " + INTS_512,
        "SADD si513 " + INTS_512 + " 512", "SADD s0 -0", "ZADD z 1 a", "ZADD zbig " + ZSET_129,
        "ZADD zlong 1 " + LONG_65, "ZADD z64 1 " + LONG_64,
        *(f"OBJECT ENCODING {k}" for k in (
            "i", "neg", "big", "over", "zero", "minus0", "lead", "plus", "space", "float", "s44",
            "s45", "empty", "l", "h", "hbig", "h512", "hlongf", "hlongv", "h64", "si", "ss",
            "si512", "si513", "s0", "z", "zbig", "zlong", "z64", "nokey")),
        *(f"OBJECT REFCOUNT {k}" for k in (
            "i", "neg", "zero", "big", "over", "float", "l", "h", "si", "z", "nokey")),
        "SET shared 9999", "OBJECT REFCOUNT shared", "SET shared 10000", "OBJECT REFCOUNT shared",
        "OBJECT FREQ i", "OBJECT FREQ nokey", "OBJECT IDLETIME nokey", "OBJECT HELP",
        "OBJECT help", "OBJECT Encoding i", "OBJECT FOO", "OBJECT FOO i j", "OBJECT",
        "OBJECT ENCODING", "OBJECT ENCODING i j", "OBJECT HELP x", "OBJECT REFCOUNT",
        "OBJECT FREQ", "OBJECT IDLETIME", "OBJECT IDLETIME i j",
    ),
    "touch, randomkey, expiretime": _lines(
        "RANDOMKEY", "TOUCH a", "SET a 1", "RANDOMKEY", "TOUCH a b a", "RPUSH b x", "TOUCH a b",
        "TOUCH", "RANDOMKEY x", "EXPIRETIME a", "PEXPIRETIME a", "EXPIRETIME nokey",
        "PEXPIRETIME nokey", "EXPIREAT a 4102444800", "EXPIRETIME a", "PEXPIRETIME a",
        "PEXPIREAT b 4102444800123", "EXPIRETIME b", "PEXPIRETIME b", "EXPIRETIME",
        "PEXPIRETIME a b", "EXPIREAT a 1", "RANDOMKEY", "TOUCH a",
    ),
    "restore errors": _lines(
        "SET a 1", "RESTORE a 0 garbage", "RESTORE a x garbage", "RESTORE a 0 garbage FOO",
        "RESTORE n 0 garbage", "RESTORE n -1 garbage", "RESTORE n x garbage",
        "RESTORE n 9223372036854775808 garbage", "RESTORE n 0 ''", "RESTORE a 0 garbage REPLACE",
        "RESTORE a 0 garbage REPLACE ABSTTL", "RESTORE n 0 garbage IDLETIME",
        "RESTORE n 0 garbage IDLETIME -1", "RESTORE n 0 garbage IDLETIME x",
        "RESTORE n 0 garbage IDLETIME 5", "RESTORE n 0 garbage FREQ 256",
        "RESTORE n 0 garbage FREQ -1", "RESTORE n 0 garbage FREQ 255",
        "RESTORE n 0 garbage FREQ 1 IDLETIME 1", "RESTORE n 0 garbage IDLETIME 1 FREQ 1",
        "RESTORE n 0 garbage FREQ", "RESTORE a -1 garbage", "RESTORE a -1 garbage REPLACE",
        "RESTORE n", "RESTORE n 0", "DUMP nokey", "DUMP", "DUMP a b", "EXISTS n", "GET a",
    ),
    "sort numbers": _lines(
        "RPUSH l 3 1 2 10 -5 1.5 inf -inf 1e3 0x10 ' 4' '' 2.0", "SORT l", "SORT l DESC",
        "SORT l ASC", "SORT l LIMIT 0 3", "SORT l LIMIT 2 4", "SORT l DESC LIMIT 1 2",
        "SORT l LIMIT -5 2", "SORT l LIMIT 0 -1", "SORT l LIMIT 100 2", "SORT l LIMIT 0 0",
        "SORT l LIMIT 2 9223372036854775807", "SORT l LIMIT x 1", "SORT l LIMIT 1",
        "SORT l LIMIT 1 x", "SORT l DESC ASC", "SORT l FOO", "SORT_RO l", "SORT_RO l DESC",
        "SORT l STORE", "SORT_RO l STORE d", "SORT l STORE d", "LRANGE d 0 -1", "TYPE d",
        "SORT l DESC LIMIT 0 5 STORE d", "LRANGE d 0 -1",
        "RPUSH bad 1 x 2", "SORT bad", "SORT bad LIMIT 0 1", "SET d keep", "SORT bad STORE d",
        "GET d", "SORT bad ALPHA", "SORT bad BY nosort",
        "SADD s 5 -3 12 0", "SORT s", "SORT s DESC", "ZADD z 3 a 1 b 2 c", "SORT z ALPHA",
        "SORT z", "SADD words b a 10", "SORT words", "SORT_RO words ALPHA DESC",
        "RPUSH over 1e400", "SORT over", "RPUSH under 1e-400", "SORT under", "RPUSH nan nan",
        "SORT nan",
    ),
    "sort alpha and nosort": _lines(
        "RPUSH l b a c B 10 9 a", "SORT l ALPHA", "SORT l ALPHA DESC", "SORT l ALPHA LIMIT 1 3",
        "SORT l BY nosort", "SORT l BY nosort DESC", "SORT l BY nosort LIMIT 2 3",
        "SORT l BY nosort DESC LIMIT 1 2", "SORT l BY nosort LIMIT 2 9223372036854775807",
        "SORT l BY nosort LIMIT 100 1", "SORT l BY nosort ALPHA", "SORT l BY nosort STORE d",
        "LRANGE d 0 -1", "SORT l BY nosort BY w_*", "SORT l BY w_* BY nosort",
        "ZADD z 3 a 1 b 2 c 2 d", "SORT z BY nosort", "SORT z BY nosort DESC",
        "SORT z BY nosort DESC LIMIT 1 2", "SORT z BY nosort LIMIT 1 1 GET #",
        "SADD si 5 3 9 1", "SORT si BY nosort", "SORT si BY nosort DESC",
        "SADD s x a m", "SORT s BY nosort STORE d", "LRANGE d 0 -1",
        "SORT s BY nosort DESC STORE d", "LRANGE d 0 -1", "SORT s BY nosort LIMIT 1 1 STORE d",
        "LRANGE d 0 -1", "SORT s ALPHA", "SORT nokey", "SORT nokey ALPHA DESC LIMIT 0 1",
        "SORT nokey STORE d", "EXISTS d", "SET str x", "SORT str", "SORT str LIMIT x y",
        "SORT str STORE d", "HSET h f v", "SORT h", "SORT_RO h",
    ),
    "sort by and get": _lines(
        "RPUSH l 3 1 2 4", "MSET w_1 9 w_2 -1 w_3 x w_4 2.5", "HSET h_1 f 5 g a",
        "HSET h_2 f 3", "HSET h_4 f 3 g b", "SORT l BY w_*", "SORT l BY w_* ALPHA",
        "SORT l BY w_* ALPHA DESC", "SORT l BY h_*->f", "SORT l BY h_*->f DESC",
        "SORT l BY h_*->g ALPHA", "SORT l BY h_*->nope", "SORT l BY missing_*",
        "SORT l BY missing_* DESC", "SORT l GET #", "SORT l GET # GET w_* GET h_*->f",
        "SORT l BY h_*->f GET # GET h_*->g", "SORT l GET w_*->f", "SORT l GET h_*",
        "SORT l GET h_*->", "SORT l GET nostar", "SORT l GET '#x'", "SORT l GET", "SORT l BY",
        "SORT l BY h_*->f LIMIT 1 2 GET #", "SORT l BY w_* GET # GET w_* STORE d",
        "LRANGE d 0 -1", "SORT l BY h_*->f GET h_*->g STORE d", "LRANGE d 0 -1",
        "SORT l GET # GET # LIMIT 0 2", "SORT l BY *", "SORT l GET *", "SET 3 three",
        "SORT l GET *", "SORT l BY w_*-> ALPHA", "SORT_RO l BY w_* GET #",
        "SORT_RO l BY h_*->f GET h_*->g",
    ),
}  # fmt: skip
if b"XADD" in TABLE:  # streams: COPY, OBJECT and SORT take every type the keyspace knows
    CASES["streams"] = _lines(
        "XADD s 1-1 f v", "XADD s 2-1 g w", "XGROUP CREATE s grp 0", "COPY s s2",
        "XADD s2 3-1 h x", "XLEN s", "XLEN s2", "XRANGE s2 - +", "XRANGE s - +",
        "OBJECT ENCODING s", "OBJECT REFCOUNT s", "SORT s", "SORT_RO s ALPHA", "TOUCH s s2",
        "COPY s s2", "COPY s s2 REPLACE", "XLEN s2", "TYPE s2",
    )  # fmt: skip


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_replies_as_redis(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
    case: str,
    protocol: int,
) -> None:
    both = Pair(oracle, ours, protocol)
    for line in CASES[case]:
        both.same(line)


def test_arity_errors(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    both = Pair(oracle, ours, 2)
    for line in ["COPY a", "MOVE a", "MOVE a 0 1", "SWAPDB 0", "SWAPDB 0 0 0", "RANDOMKEY a",
                 "TOUCH", "OBJECT", "DUMP", "DUMP a b", "RESTORE a 0", "SORT", "SORT_RO",
                 "EXPIRETIME", "PEXPIRETIME a b"]:  # fmt: skip
        both.same(line)


def test_nul_bytes_in_sort_patterns_and_values(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    """C strings: a NUL ends a pattern for finding ``*`` and ``->`` and a number for strtod,
    and ends what ALPHA compares when answering (strcoll), not when storing (memcmp)."""
    for protocol in (2, 3):
        both = Pair(oracle, ours, protocol)
        for args in [
            ("RPUSH", "l", b"2\x00x", b"1", b"", b"\x00\xff", b"\x00", b"a\x00b", b"a"),
            ("SORT", "l"), ("SORT", "l", "DESC"), ("SORT", "l", "ALPHA"),
            ("SORT", "l", "ALPHA", "DESC"), ("SORT", "l", "ALPHA", "STORE", "d"),
            ("LRANGE", "d", "0", "-1"), ("SORT", "l", "ALPHA", "DESC", "STORE", "d"),
            ("LRANGE", "d", "0", "-1"), ("SET", b"w_1", b"5"), ("SET", b"w_2\x00x", b"1"),
            ("HSET", b"h_1", b"f\x00g", b"7", b"f", b"3"), ("SORT", "l", "BY", b"w_*"),
            ("SORT", "l", "BY", b"w_\x00*"), ("SORT", "l", "GET", b"#\x00x"),
            ("SORT", "l", "GET", b"h_*->f\x00g"), ("SORT", "l", "GET", b"h_*->\x00g"),
            ("SORT", "l", "GET", b"w_*\x00x"), ("SORT", "l", "BY", b"h_*->f\x00g", "ALPHA"),
        ]:  # fmt: skip
            theirs, mine = both.run(*args)
            assert mine == theirs, args


# --- one database --------------------------------------------------------------------------


def test_other_databases_are_out_of_range(
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    """As a Redis with ``databases 1`` (documented): 1-15 exist in a default Redis."""
    r = ours[2][0]
    r.execute_command("SET", "k", "v")
    for line in ["SELECT 1", "SELECT 15", "COPY k k2 DB 1", "COPY k k DB 1", "MOVE k 1",
                 "MOVE nokey 15", "SWAPDB 0 1", "SWAPDB 1 0", "SWAPDB 1 1"]:  # fmt: skip
        assert _call(r, tuple(shlex.split(line))) == (
            "error",
            "ResponseError",
            "DB index is out of range",
        ), line
    assert r.execute_command("EXISTS", "k", "k2") == 1


# --- DUMP and RESTORE ------------------------------------------------------------------------

VALUES: list[tuple[str, ...]] = [
    ("SET", "{k}", "hello"),
    ("SET", "{k}", "12345"),
    ("SET", "{k}", "x" * 5000),
    ("RPUSH", "{k}", "a", "b", "", "a", "\x00\xff"),
    ("HSET", "{k}", "f", "v", "", "empty", "n", "1"),
    ("SADD", "{k}", "a", "b", "c", "", "1"),
    ("SADD", "{k}", *(str(i) for i in range(600))),
    ("ZADD", "{k}", "1", "a", "-inf", "lo", "inf", "hi", "0.1", "b", "2", "c"),
    ("ZADD", "{k}", *(x for i in range(300) for x in (str(i % 7), f"m{i}"))),
    ("HSET", "{k}", *(f"field{i}" for i in range(400))),
    *([("XADD", "{k}", "1-1", "f", "v", "g", "w")] if b"XADD" in TABLE else []),
]

READBACK = {
    b"string": ("GET",),
    b"list": ("LRANGE", "0", "-1"),
    b"hash": ("HGETALL",),
    b"set": ("SORT", "ALPHA"),
    b"zset": ("ZRANGE", "0", "-1", "WITHSCORES"),
    b"stream": ("XRANGE", "-", "+"),
}


def _value(r: redis.Redis, key: str) -> Any:
    kind = r.execute_command("TYPE", key)
    command, *rest = READBACK[kind]
    reply = r.execute_command(command, key, *rest)
    if command == "HGETALL":
        reply = sorted(zip(reply[::2], reply[1::2], strict=True))
    return kind, reply


def test_dump_on_one_replica_restore_on_the_other(
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    one, other = ours[2][0], ours[2][1]
    for words in VALUES:
        one.execute_command("FLUSHALL")
        one.execute_command(*words)
        one.execute_command("COPY", "{k}", "{original}")
        payload = one.execute_command("DUMP", "{k}")
        assert isinstance(payload, bytes)
        other.execute_command("DEL", "{barrier}")
        assert other.execute_command("DUMP", "{k}") == payload  # the same bytes on every replica
        assert other.execute_command("RESTORE", "{copy}", "0", payload) == b"OK"
        assert _value(one, "{copy}") == _value(other, "{original}"), words
        assert _value(other, "{copy}") == _value(one, "{original}"), words
        assert one.execute_command("DUMP", "{copy}") == payload
        assert other.execute_command("OBJECT", "ENCODING", "{copy}") == one.execute_command(
            "OBJECT", "ENCODING", "{k}"
        )
        assert other.execute_command("PTTL", "{copy}") == -1


def test_restore_options(ours: dict[int, dict[int, redis.Redis]]) -> None:  # noqa: F811
    one, other = ours[2][0], ours[2][1]
    one.execute_command("FLUSHALL")
    one.execute_command("SET", "src", "v")
    payload = one.execute_command("DUMP", "src")
    assert other.execute_command("RESTORE", "t", "100000", payload) == b"OK"
    assert 90_000 < one.execute_command("PTTL", "t") <= 100_000
    busy = _call(other, ("RESTORE", "t", "0", payload))
    assert busy[0] == "error"
    assert "Target key name already exists." in busy[2], busy
    assert one.execute_command("RESTORE", "t", "0", payload, "REPLACE") == b"OK"
    assert other.execute_command("PTTL", "t") == -1
    assert one.execute_command("RESTORE", "a", "4102444800000", payload, "ABSTTL") == b"OK"
    assert other.execute_command("PEXPIRETIME", "a") == 4102444800000
    # already expired: OK, and nothing is created (REPLACE still deletes the old key)
    assert one.execute_command("RESTORE", "gone", "1", payload, "ABSTTL") == b"OK"
    assert one.execute_command("RESTORE", "t", "1", payload, "ABSTTL", "REPLACE") == b"OK"
    assert one.execute_command("RESTORE", "wrap", "9223372036854775000", payload) == b"OK"
    assert other.execute_command("EXISTS", "gone", "t", "wrap") == 0
    assert other.execute_command("RESTORE", "f", "0", payload, "FREQ", "5") == b"OK"
    assert one.execute_command("GET", "f") == b"v"


def test_foreign_and_corrupt_payloads_are_refused(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    mine, theirs = ours[2][0], oracle[2]
    for r in (mine, theirs):
        r.execute_command("FLUSHALL")
        r.execute_command("SET", "src", "value")
    our_payload = mine.execute_command("DUMP", "src")
    their_payload = theirs.execute_command("DUMP", "src")
    flipped = bytearray(our_payload)
    flipped[len(flipped) // 2] ^= 1
    bad = "error", "ResponseError", "DUMP payload version or checksum are wrong"
    for payload in (their_payload, bytes(flipped), our_payload[:-1], b"\x01" * 9, b"\x02" * 30):
        assert _call(mine, ("RESTORE", "k", "0", payload)) == bad, payload
    assert _call(theirs, ("RESTORE", "k", "0", our_payload)) == bad
    assert mine.execute_command("EXISTS", "k") == 0


# --- OBJECT IDLETIME: from the last write --------------------------------------------------


def test_idletime_counts_from_the_last_write(
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    one, other = ours[2][0], ours[2][1]
    one.execute_command("FLUSHALL")
    one.execute_command("SET", "src", "v")
    payload = one.execute_command("DUMP", "src")
    one.execute_command("RESTORE", "k", "0", payload, "IDLETIME", "1000")
    other.execute_command("DEL", "{barrier}")
    for r in (one, other):
        assert 1000 <= r.execute_command("OBJECT", "IDLETIME", "k") < 1100
        assert r.execute_command("GET", "k") == b"v"  # a read does not reset it
        assert 1000 <= r.execute_command("OBJECT", "IDLETIME", "k") < 1100
    other.execute_command("TOUCH", "k")
    assert one.execute_command("OBJECT", "IDLETIME", "k") < 100
    one.execute_command("RESTORE", "k", "0", payload, "IDLETIME", "500", "REPLACE")
    assert 500 <= other.execute_command("OBJECT", "IDLETIME", "k") < 600
    one.execute_command("RESTORE", "k", "0", payload, "IDLETIME", "9223372036854775807", "REPLACE")
    assert 16777214 <= other.execute_command("OBJECT", "IDLETIME", "k") < 16777314
    other.execute_command("APPEND", "k", "w")
    assert one.execute_command("OBJECT", "IDLETIME", "k") < 100
    one.execute_command("RESTORE", "k2", "0", payload, "IDLETIME", "500")
    one.execute_command("RENAME", "k2", "k3")  # a write naming it
    assert other.execute_command("OBJECT", "IDLETIME", "k3") < 100


# --- WATCH: which of these writes touch a watched key, as in Redis ------------------------

WATCHED = [
    ("k", "COPY k new"), ("new", "COPY k new"), ("k", "COPY nosuch k"), ("k", "COPY k other"),
    ("other", "COPY k other REPLACE"), ("k", "TOUCH k"), ("k", "MOVE k 0"), ("k", "SWAPDB 0 0"),
    ("k", "SORT k"), ("d", "SORT k STORE d"), ("d", "SORT nosuch STORE d"),
    ("other", "SORT nosuch STORE other"), ("k", "OBJECT ENCODING k"),
    ("r", "RESTORE r 0 garbage"), ("k", "RESTORE k 0 garbage REPLACE"),
]  # fmt: skip


def _exec_after(watcher: redis.Redis, writer: redis.Redis, key: str, line: str) -> Any:
    watcher.execute_command("FLUSHALL")
    watcher.execute_command("RPUSH", "k", "2", "1")
    watcher.execute_command("SET", "other", "x")
    watcher.execute_command("WATCH", key)
    _call(writer, tuple(shlex.split(line)))
    watcher.execute_command("MULTI")
    watcher.execute_command("PING")
    return watcher.execute_command("EXEC")


def test_writes_touch_watched_keys_as_redis_does(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
) -> None:
    port = oracle[2].connection_pool.connection_kwargs["port"]
    theirs_writer = _raw(redis.Redis(port=port, protocol=2, single_connection_client=True))
    aborted = []
    try:
        for key, line in WATCHED:
            theirs = _exec_after(oracle[2], theirs_writer, key, line)
            mine = _exec_after(ours[2][0], ours[2][1], key, line)
            assert (mine is None) == (theirs is None), (key, line, theirs, mine)
            aborted.append(theirs is None)
        assert 3 < sum(aborted) < len(aborted) - 3
    finally:
        theirs_writer.close()
    # a RESTORE that works touches its key too (its payload is the KV's own)
    one, other = ours[2][0], ours[2][1]
    one.execute_command("FLUSHALL")
    one.execute_command("SET", "src", "v")
    payload = one.execute_command("DUMP", "src")
    one.execute_command("WATCH", "r")
    other.execute_command("RESTORE", "r", "0", payload)
    one.execute_command("MULTI")
    one.execute_command("PING")
    assert one.execute_command("EXEC") is None


# --- the payload format and the component's state, without a service --------------------------


def test_payloads_are_canonical_and_checked() -> None:
    from collections import deque

    import msgspec
    from dominoes.components.kv._keys import (
        _CHECKSUM,
        _digest,
        copy_value,
        dump_payload,
        load_payload,
    )
    from dominoes.components.kv._zsets import ZSet

    a = {b"x", b"y", b"z", b"1"}
    b = set(sorted(a, reverse=True))
    assert dump_payload(a) == dump_payload(b)
    assert dump_payload({b"f": b"1", b"g": b"2"}) == dump_payload({b"g": b"2", b"f": b"1"})
    for value in (b"v", deque([b"a", b"a"]), {b"f": b"v"}, a, ZSet([(b"m", 1.5), (b"n", -0.0)])):
        payload = dump_payload(value)
        assert load_payload(payload) == value
        copied = copy_value(value)
        assert copied == value
        assert type(copied) is type(value)
        if not isinstance(value, bytes):  # a new object, sharing nothing mutable
            assert copied is not value
            if isinstance(value, ZSet):
                assert isinstance(copied, ZSet)
                assert copied.order is not value.order
                assert copied.scores is not value.scores

    def sealed(body: object) -> bytes:
        raw = b"\x01" + msgspec.msgpack.encode(body)
        return raw + _digest(raw)

    assert len(_digest(b"")) == _CHECKSUM
    for body in (["l", []], ["h", {}], ["?", b"x"], ["h", {b"f": 1.5}], "x", ["Z", [[b"m", None]]],
                 ["Z", [[b"m", float("nan")]]], ["s", [b"x"]]):  # fmt: skip
        with pytest.raises(Exception, match="Bad data format"):
            load_payload(sealed(body))
    with pytest.raises(Exception, match="checksum are wrong"):
        load_payload(b"\x02" + sealed(["s", b"x"])[1:])


def test_last_write_times_survive_a_snapshot() -> None:
    import msgspec
    from dominoes.components.kv._keys import Keys
    from dominoes.components.kv._keyspace import Keyspace
    from dominoes.components.kv._service import TABLE

    keys = Keys(Keyspace(), TABLE)
    keys.written = {b"a": 1, b"\x00\xff": 2}
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(keys.snapshot()))
    again = Keys(Keyspace(), TABLE)
    again.restore(state)
    assert again.written == keys.written


@pytest.mark.skipif(
    b"CONFIG" not in TABLE or b"maxmemory-policy" not in _settable(), reason="no CONFIG SET"
)
@pytest.mark.parametrize("protocol", [2, 3])
def test_object_freq_and_idletime_follow_the_maxmemory_policy(
    oracle: dict[int, redis.Redis],  # noqa: F811
    ours: dict[int, dict[int, redis.Redis]],  # noqa: F811
    protocol: int,
) -> None:
    """Under an LFU policy Redis counts frequencies (a new key starts at 5) and refuses
    IDLETIME; the KV's counter does not see reads (documented), so none are made here."""
    both = Pair(oracle, ours, protocol)
    try:
        for line in [
            "CONFIG SET maxmemory-policy allkeys-lfu",
            "SET fresh v",
            "OBJECT FREQ fresh",
            "OBJECT IDLETIME fresh",
            "OBJECT FREQ nokey",
            "OBJECT IDLETIME nokey",
            "CONFIG SET maxmemory-policy volatile-lfu",
            "OBJECT IDLETIME fresh",
            "CONFIG SET maxmemory-policy allkeys-lru",
            "OBJECT FREQ fresh",
        ]:  # not IDLETIME after it: Redis reads the LFU counter as a time
            both.same(line)
    finally:
        both.run("CONFIG", "SET", "maxmemory-policy", "noeviction")
