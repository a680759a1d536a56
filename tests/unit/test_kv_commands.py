"""The KV components in a ``testing.Cluster``: every command's semantics, expiry, WATCH,
pub/sub bookkeeping, convergence and snapshots.  In process, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from dominoes.components.kv import Commands, Expiry, Keyspace, KvError, PubSub, make_service
from dominoes.components.kv._resp import NULL_ARRAY, OK, Frames, Push
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes.testing import Cluster


def b(x: Any) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode()


def cmd(*args: Any) -> list[bytes]:
    out = [b(a) for a in args]
    out[0] = out[0].upper()
    return out


class KV:
    """A cluster of the KV service and shorthands to talk to it."""

    def __init__(self, replicas: int = 2, **kwargs: Any) -> None:
        self.c = Cluster(make_service(), replicas=replicas, **kwargs)

    def run(self, replica: int, *commands: list[bytes]) -> list[Any]:
        result: list[Any] = self.c.call(replica, Commands.run, list(commands))
        return result

    def __call__(self, *args: Any, replica: int = 0) -> Any:
        """One command through the log; its error is raised."""
        out = self.run(replica, cmd(*args))[0]
        if isinstance(out, KvError):
            raise out
        return out

    def read(self, *args: Any, replica: int = 1) -> Any:
        """One read command against a replica's local state, at the cluster's clock."""
        self.c.run_until_quiet()
        out = self.c.query(replica, Commands.read, cmd(*args), now=int(self.c.clock * 1000))
        if isinstance(out, KvError):
            raise out
        return out

    def keyspace(self, replica: int) -> Keyspace:
        return self.c[replica].component(Keyspace)


@pytest.fixture
def kv() -> KV:
    return KV()


def err(kv: KV, *args: Any) -> str:
    with pytest.raises(KvError) as info:
        kv(*args)
    return str(info.value)


# --- strings -------------------------------------------------------------------------------


def test_set_get_and_read_on_the_other_replica(kv: KV) -> None:
    assert kv("SET", "k", "v") == OK
    assert kv.read("GET", "k") == b"v"
    assert kv.read("GET", "nope") is None
    kv.c.assert_converged()


def test_set_options(kv: KV) -> None:
    assert kv("SET", "k", "1", "NX") == OK
    assert kv("SET", "k", "2", "NX") is None
    assert kv("SET", "k", "3", "XX") == OK
    assert kv("SET", "absent", "3", "XX") is None
    assert kv("SET", "k", "4", "GET") == b"3"
    assert kv("SET", "k", "5", "NX", "GET") == b"4"  # not set, the old value
    assert kv.read("GET", "k") == b"4"
    assert kv("SET", "k", "6", "EX", "10") == OK
    assert kv.read("TTL", "k") == 10
    assert kv("SET", "k", "7", "KEEPTTL") == OK
    assert kv.read("TTL", "k") == 10
    assert kv("SET", "k", "8") == OK
    assert kv.read("TTL", "k") == -1
    assert kv("SET", "k", "9", "PX", "1500") == OK
    assert kv.read("PTTL", "k") == 1500
    at = int(kv.c.clock) + 100
    assert kv("SET", "k", "9", "EXAT", at) == OK
    assert kv.read("EXPIRETIME", "k") == at


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("SET", "k", "v", "NX", "XX"), "ERR syntax error"),
        (("SET", "k", "v", "EX", "1", "PX", "2"), "ERR syntax error"),
        (("SET", "k", "v", "KEEPTTL", "EX", "1"), "ERR syntax error"),
        (("SET", "k", "v", "EX"), "ERR syntax error"),
        (("SET", "k", "v", "FOO"), "ERR syntax error"),
        (("SET", "k", "v", "EX", "abc", "NX", "XX"), "ERR syntax error"),
        (("SET", "k", "v", "EX", "abc"), "ERR value is not an integer or out of range"),
        (("SET", "k", "v", "EX", "0"), "ERR invalid expire time in 'set' command"),
        (("SET", "k", "v", "PX", "-5"), "ERR invalid expire time in 'set' command"),
        (("SET", "k", "v", "EX", "99999999999999999"), "ERR invalid expire time in 'set' command"),
    ],
)
def test_set_errors(kv: KV, args: tuple[str, ...], message: str) -> None:
    assert err(kv, *args) == message


def test_set_takes_the_last_of_a_repeated_time_option(kv: KV) -> None:
    assert kv("SET", "k", "v", "EX", "10", "EX", "20") == OK  # Redis: the last one
    assert kv.read("TTL", "k") == 20
    assert kv("SET", "k", "v", "EX", "abc", "EX", "30") == OK  # only the last is parsed
    assert kv.read("TTL", "k") == 30


# The overflow edges, as Redis 7.0.15 answers them (tests/integration/
# test_kv_expire_oracle.py asks a real redis-server the same).  The cluster's
# clock is 1,800,000,000 s, so now is 1.8e12 ms.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
BAD_TIMES = [
    # EXPIRE: seconds * 1000 must fit (C truncates LLONG_MIN / 1000 toward zero) ...
    ("EXPIRE", "-9223372036854776"),  # the issue: it deleted the key and answered 1
    ("EXPIRE", str(INT64_MIN)),
    ("EXPIRE", "9223372036854776"),
    # ... and so must the sum with now
    ("EXPIRE", "9223372036854775"),
    ("EXPIRE", str(INT64_MAX // 1000 - 1_800_000)),
    ("PEXPIRE", str(INT64_MAX)),
    ("PEXPIRE", str(INT64_MAX - 1_800_000_000_000 + 1)),
    ("EXPIREAT", "9223372036854776"),
    ("EXPIREAT", "-9223372036854776"),
]
GOOD_TIMES = [
    ("EXPIRE", "-9223372036854775", 1),  # the least that fits: in the past, deleted
    ("PEXPIRE", str(INT64_MIN), 1),
    ("PEXPIRE", str(INT64_MAX - 1_800_000_000_000), 1),
    ("EXPIREAT", "9223372036854775", 1),
    ("EXPIREAT", "-9223372036854775", 1),
    ("PEXPIREAT", str(INT64_MAX), 1),
    ("PEXPIREAT", str(INT64_MIN), 1),
]


@pytest.mark.parametrize(("name", "when"), BAD_TIMES)
def test_expire_refuses_a_time_that_overflows(kv: KV, name: str, when: str) -> None:
    kv("SET", "k", "v")
    assert err(kv, name, "k", when) == f"ERR invalid expire time in '{name.lower()}' command"
    assert kv.read("GET", "k") == b"v"  # untouched
    assert kv.read("TTL", "k") == -1
    assert err(kv, name, "missing", when).startswith("ERR invalid expire time")  # before the key


@pytest.mark.parametrize(("name", "when", "reply"), GOOD_TIMES)
def test_expire_takes_every_time_that_fits(kv: KV, name: str, when: str, reply: int) -> None:
    kv("SET", "k", "v")
    assert kv(name, "k", when) == reply
    deleted = int(when) * (1000 if name in ("EXPIRE", "EXPIREAT") else 1) <= 0
    assert kv.read("EXISTS", "k") == (0 if deleted else 1)


def test_expire_checks_its_options_before_its_time(kv: KV) -> None:
    kv("SET", "k", "v")
    assert err(kv, "EXPIRE", "k", "abc", "FOO") == "ERR Unsupported option FOO"
    assert err(kv, "EXPIRE", "k", "9223372036854776", "FOO") == "ERR Unsupported option FOO"
    assert err(kv, "EXPIRE", "k", "abc", "NX", "XX").startswith("ERR NX and XX, GT or LT")
    assert err(kv, "EXPIRE", "k", "abc") == "ERR value is not an integer or out of range"
    assert err(kv, "EXPIRE", "k", "99999999999999999999") == (
        "ERR value is not an integer or out of range"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("SET", "k", "v", "EX", "9223372036854775"), "set"),  # * 1000 + now overflows
        (("SET", "k", "v", "EX", "9223372036854776"), "set"),
        (("SET", "k", "v", "PX", str(INT64_MAX)), "set"),
        (("SET", "k", "v", "EXAT", "9223372036854776"), "set"),
        (("SET", "k", "v", "PXAT", "0"), "set"),
        (("SET", "k", "v", "EXAT", "-1"), "set"),
        (("SETEX", "k", "0", "v"), "setex"),
        (("SETEX", "k", "-5", "v"), "setex"),
        (("SETEX", "k", "9223372036854775", "v"), "setex"),
        (("PSETEX", "k", "0", "v"), "psetex"),
        (("PSETEX", "k", str(INT64_MAX), "v"), "psetex"),
        (("GETEX", "k", "EX", "0"), "getex"),
        (("GETEX", "k", "EX", "9223372036854775"), "getex"),
        (("GETEX", "k", "PX", str(INT64_MAX)), "getex"),
        (("GETEX", "k", "EXAT", "9223372036854776"), "getex"),
        (("GETEX", "k", "EXAT", "-1"), "getex"),
    ],
)
def test_set_setex_getex_refuse_bad_times(kv: KV, args: tuple[str, ...], message: str) -> None:
    kv("SET", "k", "old")
    assert err(kv, *args) == f"ERR invalid expire time in '{message}' command"
    assert kv.read("GET", "k") == b"old"
    assert kv.read("TTL", "k") == -1


def test_set_setex_getex_take_the_largest_times(kv: KV) -> None:
    assert kv("SET", "k", "v", "PXAT", str(INT64_MAX)) == OK
    assert kv.read("PEXPIRETIME", "k") == INT64_MAX
    assert kv("SET", "k", "v", "EXAT", "9223372036854775") == OK
    assert kv.read("EXPIRETIME", "k") == 9223372036854775
    most = INT64_MAX - 1_800_000_000_000
    assert kv("PSETEX", "k", str(most), "v") == OK
    assert kv.read("PEXPIRETIME", "k") == INT64_MAX
    assert kv("GETEX", "k", "PXAT", str(INT64_MAX)) == b"v"
    assert kv.read("PEXPIRETIME", "k") == INT64_MAX


def test_setex_psetex(kv: KV) -> None:
    kv("LPUSH", "k", "x")
    assert kv("SETEX", "k", "100", "v") == OK  # any type is replaced, as by SET
    assert kv.read("GET", "k") == b"v"
    assert kv.read("TTL", "k") == 100
    assert kv("PSETEX", "k", "1500", "w") == OK
    assert kv.read("PTTL", "k") == 1500
    assert err(kv, "SETEX", "k", "abc", "v") == "ERR value is not an integer or out of range"
    kv.c.assert_converged()


def test_getex(kv: KV) -> None:
    assert kv("GETEX", "missing", "EX", "abc") is None  # no key: the time is never read
    assert kv("GETEX", "missing", "EX", "0") is None
    kv("SET", "k", "v")
    assert kv("GETEX", "k") == b"v"
    assert kv("GETEX", "k", "EX", "100") == b"v"
    assert kv.read("TTL", "k") == 100
    assert kv("GETEX", "k", "EX", "10", "EX", "20") == b"v"  # the last one
    assert kv.read("TTL", "k") == 20
    assert kv("GETEX", "k", "PX", "1500") == b"v"
    assert kv.read("PTTL", "k") == 1500
    assert kv("GETEX", "k", "PERSIST", "PERSIST") == b"v"
    assert kv.read("TTL", "k") == -1
    at = int(kv.c.clock) + 50
    assert kv("GETEX", "k", "EXAT", at) == b"v"
    assert kv.read("EXPIRETIME", "k") == at
    assert kv("GETEX", "k", "PXAT", "1") == b"v"  # past: answered, then deleted
    assert kv.read("EXISTS", "k") == 0
    kv("LPUSH", "l", "x")
    wrong = "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert err(kv, "GETEX", "l", "EX", "0") == wrong  # the type before the time
    kv("SET", "k", "v")
    for args in (("EX",), ("EX", "1", "PX", "1"), ("PERSIST", "EX", "1"), ("EX", "1", "PERSIST"),
                 ("FOO",), ("KEEPTTL",), ("NX",)):  # fmt: skip
        assert err(kv, "GETEX", "k", *args) == "ERR syntax error"
    kv.c.assert_converged()


def test_wrongtype(kv: KV) -> None:
    kv("LPUSH", "l", "a")
    wrong = "WRONGTYPE Operation against a key holding the wrong kind of value"
    for args in (
        ("GET", "l"),
        ("APPEND", "l", "x"),
        ("INCR", "l"),
        ("HSET", "l", "f", "v"),
        ("SADD", "l", "m"),
        ("SET", "l", "v", "GET"),
        ("GETSET", "l", "v"),
    ):
        assert err(kv, *args) == wrong, args
    with pytest.raises(KvError, match="WRONGTYPE"):
        kv.read("STRLEN", "l")
    assert kv("SET", "l", "plain") == OK  # SET overwrites any type
    assert kv.read("TYPE", "l") == b"string"


def test_incr_family(kv: KV) -> None:
    assert kv("INCR", "n") == 1
    assert kv("INCRBY", "n", "10") == 11
    assert kv("DECR", "n") == 10
    assert kv("DECRBY", "n", "4") == 6
    kv("SET", "big", str(2**63 - 1))
    assert err(kv, "INCR", "big") == "ERR increment or decrement would overflow"
    kv("SET", "small", str(-(2**63)))
    assert err(kv, "DECR", "small") == "ERR increment or decrement would overflow"
    assert err(kv, "DECRBY", "n", str(-(2**63))) == "ERR decrement would overflow"
    assert err(kv, "INCRBY", "n", str(2**63)) == "ERR value is not an integer or out of range"
    for bad in (" 1", "01", "+1", "-0", "1.0", "x", ""):
        kv("SET", "s", bad)
        assert err(kv, "INCR", "s") == "ERR value is not an integer or out of range", bad
    assert kv.read("GET", "n") == b"6"


def test_incrbyfloat(kv: KV) -> None:
    assert kv("INCRBYFLOAT", "f", "10.5") == b"10.5"
    assert kv("INCRBYFLOAT", "f", "0.1") == b"10.6"
    kv("SET", "g", "0.1")
    assert kv("INCRBYFLOAT", "g", "0.2") == b"0.3"
    kv("SET", "h", "1e3")
    assert kv("INCRBYFLOAT", "h", "1") == b"1001"
    assert kv("INCRBYFLOAT", "i", "5.0e3") == b"5000"
    assert kv("INCRBYFLOAT", "j", "1e20") == b"100000000000000000000"
    assert kv("INCRBYFLOAT", "k", "-1.5") == b"-1.5"
    assert err(kv, "INCRBYFLOAT", "f", "abc") == "ERR value is not a valid float"
    assert err(kv, "INCRBYFLOAT", "f", " 1") == "ERR value is not a valid float"
    assert err(kv, "INCRBYFLOAT", "f", "inf") == "ERR increment would produce NaN or Infinity"
    kv("SET", "t", "text")
    assert err(kv, "INCRBYFLOAT", "t", "1") == "ERR value is not a valid float"


def test_other_string_commands(kv: KV) -> None:
    assert kv("SETNX", "a", "1") == 1
    assert kv("SETNX", "a", "2") == 0
    assert kv("GETSET", "a", "3") == b"1"
    assert kv("APPEND", "a", "45") == 3
    assert kv.read("STRLEN", "a") == 3
    assert kv.read("STRLEN", "none") == 0
    assert kv("MSET", "x", "1", "y", "2") == OK
    kv("HSET", "h", "f", "v")
    assert kv.read("MGET", "x", "y", "h", "none") == [b"1", b"2", None, None]
    assert kv("GETDEL", "x") == b"1"
    assert kv("GETDEL", "x") is None
    assert err(kv, "MSET", "x", "1", "y") == "ERR wrong number of arguments for 'mset' command"


# --- keys ----------------------------------------------------------------------------------


def test_key_commands(kv: KV) -> None:
    kv("MSET", "a", "1", "b", "2", "c", "3")
    kv("HSET", "h", "f", "v")
    assert kv("DEL", "a", "nope", "a") == 1
    assert kv("UNLINK", "b") == 1
    assert kv.read("EXISTS", "c", "c", "a") == 2
    assert kv.read("TYPE", "h") == b"hash"
    assert kv.read("TYPE", "nope") == b"none"
    assert sorted(kv.read("KEYS", "*")) == [b"c", b"h"]
    assert kv.read("KEYS", "[a-c]") == [b"c"]
    assert kv.read("DBSIZE") == 2
    assert kv("RENAME", "c", "d") == OK
    assert kv.read("GET", "d") == b"3"
    assert err(kv, "RENAME", "nope", "x") == "ERR no such key"
    assert kv("RENAME", "d", "d") == OK
    assert kv("RENAMENX", "d", "h") == 0
    assert kv("FLUSHDB") == OK
    assert kv.read("DBSIZE") == 0
    assert err(kv, "FLUSHALL", "x") == "ERR syntax error"
    assert kv("FLUSHALL", "ASYNC") == OK
    kv.c.assert_converged()


def test_rename_keeps_the_ttl(kv: KV) -> None:
    kv("SET", "a", "1", "EX", "100")
    kv("RENAME", "a", "b")
    assert kv.read("TTL", "b") == 100
    assert kv.read("TTL", "a") == -2


def test_scan_visits_every_key_exactly_once(kv: KV) -> None:
    keys = [b"key:%d" % i for i in range(500)]
    kv.run(0, *[cmd("SET", k, "v") for k in keys])
    kv("HSET", "hash", "f", "v")
    for count in ("1", "7", "1000"):
        seen: list[bytes] = []
        cursor = b"0"
        calls = 0
        while True:
            cursor, page = kv.read("SCAN", cursor, "COUNT", count)
            seen += page
            calls += 1
            if cursor == b"0":
                break
        assert sorted(seen) == sorted([*keys, b"hash"])
        assert calls <= 501 // (501 // 64) + 1  # at least 1/64 of the keyspace per call
    cursor, page = kv.read("SCAN", "0", "MATCH", "key:1?", "COUNT", "1000")
    assert sorted(page) == sorted(b"key:1%d" % i for i in range(10))
    assert kv.read("SCAN", "0", "TYPE", "hash", "COUNT", "1000")[1] == [b"hash"]
    with pytest.raises(KvError, match="invalid cursor"):
        kv.read("SCAN", "x")
    with pytest.raises(KvError, match="syntax error"):
        kv.read("SCAN", "0", "COUNT", "0")


# --- hashes, lists, sets -------------------------------------------------------------------


def test_hashes(kv: KV) -> None:
    assert kv("HSET", "h", "a", "1", "b", "2") == 2
    assert kv("HSET", "h", "a", "9", "c", "3") == 1
    assert kv.read("HGET", "h", "a") == b"9"
    assert kv.read("HGET", "h", "zz") is None
    assert kv.read("HGETALL", "h") == {b"a": b"9", b"b": b"2", b"c": b"3"}
    assert kv.read("HLEN", "h") == 3
    assert kv.read("HEXISTS", "h", "b") == 1
    assert kv.read("HKEYS", "h") == [b"a", b"b", b"c"]
    assert kv.read("HVALS", "h") == [b"9", b"2", b"3"]
    assert kv.read("HMGET", "h", "a", "x") == [b"9", None]
    assert kv("HINCRBY", "h", "a", "1") == 10
    assert kv("HINCRBY", "h", "new", "-3") == -3
    assert err(kv, "HINCRBY", "h", "a", "x") == "ERR value is not an integer or out of range"
    kv("HSET", "h", "t", "text")
    assert err(kv, "HINCRBY", "h", "t", "1") == "ERR hash value is not an integer"
    assert kv("HDEL", "h", "a", "b", "zz") == 2
    assert kv("HMSET", "h", "m", "1") == OK
    assert err(kv, "HSET", "h", "f") == "ERR wrong number of arguments for 'hset' command"
    assert kv("HDEL", "h", "c", "new", "t", "m") == 4
    assert kv.read("EXISTS", "h") == 0  # an emptied hash is deleted
    assert kv.read("HGETALL", "h") == {}


def test_lists(kv: KV) -> None:
    assert kv("RPUSH", "l", "a", "b", "c") == 3
    assert kv("LPUSH", "l", "x", "y") == 5
    assert kv.read("LRANGE", "l", "0", "-1") == [b"y", b"x", b"a", b"b", b"c"]
    assert kv.read("LRANGE", "l", "-2", "100") == [b"b", b"c"]
    assert kv.read("LRANGE", "l", "3", "1") == []
    assert kv.read("LRANGE", "l", "-100", "1") == [b"y", b"x"]
    assert kv.read("LINDEX", "l", "-1") == b"c"
    assert kv.read("LINDEX", "l", "9") is None
    assert kv.read("LLEN", "l") == 5
    assert kv("LPOP", "l") == b"y"
    assert kv("RPOP", "l", "2") == [b"c", b"b"]
    assert kv("LPOP", "l", "0") == []
    assert kv("LPOP", "l", "10") == [b"x", b"a"]
    assert kv.read("EXISTS", "l") == 0
    assert kv("LPOP", "l") is None
    assert kv("LPOP", "l", "2") is NULL_ARRAY
    assert err(kv, "LPOP", "l", "-1") == "ERR value is out of range, must be positive"
    assert err(kv, "LPOP", "l", "x") == "ERR value is out of range, must be positive"
    assert kv("LPUSHX", "l", "a") == 0
    assert err(kv, "LPOP", "l", "1", "2") == "ERR wrong number of arguments for 'lpop' command"
    with pytest.raises(KvError, match="not an integer"):
        kv.read("LRANGE", "l", "0", "x")


def test_sets(kv: KV) -> None:
    assert kv("SADD", "s", "a", "b", "a") == 2
    assert kv("SADD", "s", "b", "c") == 1
    assert kv.read("SMEMBERS", "s") == {b"a", b"b", b"c"}
    assert kv.read("SISMEMBER", "s", "a") == 1
    assert kv.read("SMISMEMBER", "s", "a", "z") == [1, 0]
    assert kv.read("SCARD", "s") == 3
    assert kv("SREM", "s", "a", "z") == 1
    assert kv("SREM", "s", "b", "c") == 2
    assert kv.read("EXISTS", "s") == 0


def test_an_error_does_not_stop_the_rest_of_a_batch(kv: KV) -> None:
    out = kv.run(0, cmd("SET", "a", "x"), cmd("INCR", "a"), cmd("SET", "b", "1"), cmd("GET", "b"))
    assert out[0] == OK
    assert isinstance(out[1], KvError)
    assert out[2:] == [OK, b"1"]


def test_reads_in_a_batch_run_only_on_the_owner(kv: KV) -> None:
    pending = kv.c.submit_nowait(0, Commands.run, [cmd("SET", "a", "1"), cmd("GET", "a")])
    kv.c.run_until_quiet()
    assert pending.result() == [OK, b"1"]
    # replica 1 applied the entry too, but skipped the read
    assert kv.c[1].component(Keyspace).values == {b"a": b"1"}


# --- expiry --------------------------------------------------------------------------------


def test_expire_ttl_persist(kv: KV) -> None:
    kv("SET", "k", "v")
    assert kv.read("TTL", "k") == -1
    assert kv.read("TTL", "none") == -2
    assert kv("EXPIRE", "k", "100") == 1
    assert kv.read("TTL", "k") == 100
    assert kv.read("PTTL", "k") == 100_000
    assert kv("PEXPIRE", "k", "1500") == 1
    assert kv.read("TTL", "k") == 2  # 1.5 s rounds to 2, as in Redis
    assert kv("EXPIRE", "k", "1", "GT") == 0
    assert kv("EXPIRE", "k", "50", "LT") == 0
    assert kv("EXPIRE", "k", "1", "LT") == 1
    assert kv("EXPIRE", "k", "10", "NX") == 0
    assert kv("PERSIST", "k") == 1
    assert kv("PERSIST", "k") == 0
    assert kv("EXPIRE", "k", "10", "XX") == 0
    assert kv("EXPIRE", "k", "10", "GT") == 0  # no TTL counts as infinite
    assert kv("EXPIRE", "k", "10", "LT") == 1
    assert kv("EXPIRE", "none", "10") == 0
    assert err(kv, "EXPIRE", "k", "1", "NX", "XX").startswith("ERR NX and XX, GT or LT")
    assert err(kv, "EXPIRE", "k", "1", "GT", "LT").startswith("ERR GT and LT")
    assert err(kv, "EXPIRE", "k", "1", "FOO") == "ERR Unsupported option FOO"
    assert err(kv, "EXPIRE", "k", str(2**63 - 1)).startswith("ERR invalid expire time")
    assert kv("EXPIREAT", "k", "1") == 1  # in the past: deleted at once
    assert kv.read("EXISTS", "k") == 0
    assert kv.c[1].component(Keyspace).values == {}


def test_a_key_expires_by_timer_on_every_replica_at_one_log_position() -> None:
    kv = KV(replicas=3)
    kv("SET", "short", "v", "PX", "100")
    kv("SET", "long", "v", "EX", "100")
    kv.c.advance(0.05)
    assert all(b"short" in kv.keyspace(i).values for i in range(3))
    kv.c.advance(0.2)  # the replicated timer fires: a timer entry in the log
    assert [b"short" in kv.keyspace(i).values for i in range(3)] == [False] * 3
    assert [kv.keyspace(i).values.keys() for i in range(3)] == [{b"long"}] * 3
    assert all(kv.c[i].component(Expiry).expired == 1 for i in range(3))
    kv.c.assert_converged()


def test_a_read_past_the_deadline_sees_nothing_and_deletes_nothing(kv: KV) -> None:
    kv("SET", "k", "v", "PX", "100")
    kv.c.clock += 1  # time passes, but no timer entry has been applied yet
    assert kv.read("GET", "k") is None
    assert kv.read("EXISTS", "k") == 0
    assert kv.read("DBSIZE") == 0
    assert kv.read("KEYS", "*") == []
    assert b"k" in kv.keyspace(1).values  # queries never write


def test_lazy_expiry_runs_ahead_of_the_command(kv: KV) -> None:
    kv("SET", "k", "5", "PX", "100")
    kv.c.clock += 1  # past the deadline; no sweep yet
    assert kv("INCR", "k") == 1  # the old value expired first, at this entry's position
    assert kv.read("TTL", "k") == -1
    kv.c.assert_converged()


def test_many_expiring_keys_are_swept_in_bounded_batches() -> None:
    kv = KV(replicas=2, capacity=4096)
    kv.run(0, *[cmd("SET", f"k{i}", "v", "PX", 10 + i % 7) for i in range(2500)])
    kv.c.advance(1.0)
    assert kv.keyspace(0).values == {}
    assert kv.keyspace(1).values == {}
    assert kv.c[0].component(Expiry).timer == 0
    kv.c.assert_converged()


def test_a_rewritten_deadline_is_not_expired_early(kv: KV) -> None:
    kv("SET", "k", "v", "PX", "100")
    kv("PEXPIRE", "k", "10000")
    kv.c.advance(0.5)
    assert kv.read("GET", "k") == b"v"
    kv("SET", "k", "v2")  # no TTL any more
    kv.c.advance(20)
    assert kv.read("GET", "k") == b"v2"


# --- transactions --------------------------------------------------------------------------


CID = b"%d" % ((1 << 10) | 0)  # a client of replica 0


def exec_(kv: KV, replica: int, commands: list[list[bytes]], client: bytes = CID) -> Any:
    return kv.c.call(replica, Commands.exec, commands, int(client))


def watch(kv: KV, *keys: str, replica: int = 0, client: bytes = CID) -> None:
    assert kv.run(replica, [b"WATCH", client, *[b(k) for k in keys]]) == [OK]


def test_exec_runs_the_queue_atomically(kv: KV) -> None:
    out = exec_(kv, 0, [cmd("SET", "a", "1"), cmd("INCR", "a"), cmd("LPUSH", "a", "x")], b"0")
    assert out[:2] == [OK, 2]
    assert isinstance(out[2], KvError)
    kv.c.assert_converged()


def test_watch_conflict_is_decided_at_apply_time(kv: KV) -> None:
    kv("SET", "k", "1")
    watch(kv, "k")
    kv("SET", "k", "2", replica=1)  # another client changes it
    assert exec_(kv, 0, [cmd("SET", "k", "3")]) is NULL_ARRAY
    assert kv.read("GET", "k", replica=0) == b"2"
    watch(kv, "k")
    assert exec_(kv, 0, [cmd("SET", "k", "3")]) == [OK]
    assert kv.keyspace(0).watched == {}  # EXEC unregistered the keys
    kv.c.assert_converged()


def test_only_watched_keys_carry_versions(kv: KV) -> None:
    kv.run(0, *[cmd("SET", f"k{i}", "v") for i in range(10)])
    assert kv.keyspace(0).versions == {}
    watch(kv, "k1")
    kv("SET", "k1", "w")
    kv("SET", "k2", "w")
    assert kv.keyspace(1).versions.keys() == {b"k1"}


def test_own_write_after_watch_in_the_same_batch_conflicts(kv: KV) -> None:
    kv.run(0, [b"WATCH", CID, b"k"], cmd("SET", "k", "mine"))
    assert exec_(kv, 0, [cmd("GET", "k")]) is NULL_ARRAY


def test_watch_sees_deletion_creation_expiry_and_flush(kv: KV) -> None:
    kv("SET", "gone", "1")
    watch(kv, "gone")
    kv("DEL", "gone")
    assert exec_(kv, 0, []) is NULL_ARRAY

    watch(kv, "new")
    assert exec_(kv, 0, []) == []
    watch(kv, "new")
    kv("SET", "new", "x")
    assert exec_(kv, 0, []) is NULL_ARRAY

    kv("SET", "expiring", "1", "PX", "100")
    watch(kv, "expiring")
    kv.c.clock += 1
    assert exec_(kv, 0, []) is NULL_ARRAY  # expired after the WATCH: a change

    kv("SET", "dead", "1", "PX", "100")
    kv.c.clock += 1
    watch(kv, "dead")  # already expired when watched: not a change later
    assert exec_(kv, 0, []) == []

    kv("SET", "flushed", "1")
    watch(kv, "flushed", "never-existed")
    kv("FLUSHALL")
    assert exec_(kv, 0, []) is NULL_ARRAY
    watch(kv, "never-existed")
    kv("FLUSHALL")
    assert exec_(kv, 0, []) == []  # as Redis: only keys that existed are touched


def test_unwatch_and_discard_forget(kv: KV) -> None:
    watch(kv, "k")
    assert kv.run(0, [b"UNWATCH", CID]) == [OK]
    kv("SET", "k", "x", replica=1)
    assert exec_(kv, 0, []) == []
    assert kv.keyspace(0).watched == {}


# --- pub/sub bookkeeping -------------------------------------------------------------------


def test_subscriptions_are_replicated_and_publish_counts_them(kv: KV) -> None:
    a, b_ = b"%d" % ((1 << 10) | 0), b"%d" % ((1 << 10) | 1)
    out = kv.run(0, [b"SUBSCRIBE", a, b"news", b"sport"])[0]
    assert out == Frames([Push([b"subscribe", b"news", 1]), Push([b"subscribe", b"sport", 2])])
    kv.run(1, [b"PSUBSCRIBE", b_, b"n*"])
    assert kv("PUBLISH", "news", "hi") == 2
    assert kv("PUBLISH", "nothing", "hi") == 1
    assert kv("PUBLISH", "other", "hi") == 0
    out = kv.run(0, [b"UNSUBSCRIBE", a])[0]
    assert [p[1] for p in out] == [b"news", b"sport"]
    assert kv("PUBLISH", "news", "hi") == 1
    kv.c.call(1, PubSub.disconnect, int(b_))
    assert kv("PUBLISH", "news", "hi") == 0
    kv.c.assert_converged()


def test_clients_gone_drops_a_dead_replicas_subscribers_and_watches(kv: KV) -> None:
    kv.run(1, [b"SUBSCRIBE", b"%d" % ((7 << 10) | 1), b"ch"])
    kv.run(0, [b"SUBSCRIBE", b"%d" % ((7 << 10) | 0), b"ch"])
    kv.run(1, [b"WATCH", b"%d" % ((9 << 10) | 1), b"k"])
    assert kv("PUBLISH", "ch", "x") == 2
    commands = kv.c[1].component(Commands)
    assert commands.first_counter(1) == 10
    assert commands.first_counter(2) == 1
    # a client of the new incarnation, appended before clients_gone, is kept
    kv.run(1, [b"SUBSCRIBE", b"%d" % ((10 << 10) | 1), b"ch"])
    kv.c.call(0, Commands.clients_gone, 1, 10)
    assert kv("PUBLISH", "ch", "x") == 2
    assert kv.keyspace(0).watched == {}
    kv.c.assert_converged()


# --- convergence and snapshots -------------------------------------------------------------


def test_a_restarted_replica_restores_every_type_from_a_snapshot() -> None:
    kv = KV(replicas=3)
    kv.run(
        0,
        cmd("SET", "s", "v", "EX", "100"),
        cmd("HSET", "h", "f", "v"),
        cmd("RPUSH", "l", "a", "b"),
        cmd("SADD", "z", "m", "n"),
        [b"SUBSCRIBE", b"1025", b"ch"],
        [b"PSUBSCRIBE", b"1025", b"c*"],
        [b"WATCH", b"1025", b"s"],
        cmd("DEL", "gone"),
    )
    kv.c.kill(2)
    kv("LPUSH", "l", "c")
    kv.c.restart(2)
    kv.c.run_until_quiet()
    kv.c.assert_converged()
    ks = kv.keyspace(2)
    assert ks.values[b"l"] == kv.keyspace(0).values[b"l"]
    assert type(ks.values[b"z"]) is set
    assert kv.read("LRANGE", "l", "0", "-1", replica=2) == [b"c", b"a", b"b"]
    assert kv.read("TTL", "s", replica=2) == 100
    assert kv("PUBLISH", "ch", "x", replica=2) == 2
    kv.c.advance(200)  # the restored replica's expiry index is rebuilt
    assert kv.read("EXISTS", "s", replica=2) == 0
    kv.c.assert_converged()


_KEYS = st.sampled_from([b"a", b"b", b"c"])
_VALS = st.sampled_from([b"1", b"2", b"x", b"-5"])
_COMMANDS = st.one_of(
    st.tuples(st.just(b"SET"), _KEYS, _VALS),
    st.tuples(st.just(b"SET"), _KEYS, _VALS, st.just(b"PX"), st.sampled_from([b"5", b"50"])),
    st.tuples(st.just(b"INCR"), _KEYS),
    st.tuples(st.just(b"APPEND"), _KEYS, _VALS),
    st.tuples(st.just(b"DEL"), _KEYS),
    st.tuples(st.just(b"RPUSH"), _KEYS, _VALS),
    st.tuples(st.just(b"LPOP"), _KEYS),
    st.tuples(st.just(b"HSET"), _KEYS, _VALS, _VALS),
    st.tuples(st.just(b"HDEL"), _KEYS, _VALS),
    st.tuples(st.just(b"SADD"), _KEYS, _VALS),
    st.tuples(st.just(b"SREM"), _KEYS, _VALS),
    st.tuples(st.just(b"PEXPIRE"), _KEYS, st.sampled_from([b"1", b"30"])),
    st.tuples(st.just(b"RENAME"), _KEYS, _KEYS),
    st.tuples(st.just(b"GET"), _KEYS),
    st.tuples(st.just(b"WATCH"), st.sampled_from([b"1024", b"1025"]), _KEYS),
    st.tuples(st.just(b"UNWATCH"), st.sampled_from([b"1024", b"1025"])),
    st.tuples(st.just(b"FLUSHALL")),
)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.lists(_COMMANDS, min_size=1, max_size=4),
            st.integers(0, 3),
            st.sampled_from([0.0, 0.003, 0.02]),
            st.sampled_from([None, None, 1024, 1025]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_random_batches_from_random_replicas_converge(steps: list[Any]) -> None:
    kv = KV(replicas=3)
    pendings = []
    for origin, commands, step_on, dt, exec_as in steps:
        queued = [list(c) for c in commands]
        if exec_as is None:
            pendings.append(kv.c.submit_nowait(origin, Commands.run, queued))
        else:  # as a transaction of client `exec_as`
            pendings.append(kv.c.submit_nowait(origin, Commands.exec, queued, exec_as))
        kv.c.step(step_on if step_on < 3 else None)
        kv.c.clock += dt
        kv.c.fire_due()
    kv.c.advance(1.0)
    kv.c.assert_converged()
    assert all(p.done for p in pendings)


_SETS = st.one_of(
    st.tuples(st.just("SET"), st.sampled_from("abc"), st.sampled_from(["1", "2", "x"])),
    st.tuples(
        st.just("SET"),
        st.sampled_from("abc"),
        st.just("v"),
        st.sampled_from(["NX", "XX", "GET", "KEEPTTL", "EX", "PX 5", "EX 0", "BOGUS"]),
    ).map(lambda t: (*t[:3], *t[3].split())),
    st.tuples(st.just("EXPIRE"), st.sampled_from("abc"), st.sampled_from(["1", "100"])),
    st.tuples(st.just("WATCH"), st.just("7"), st.sampled_from("abc")),
    st.tuples(st.just("HSET"), st.sampled_from("abc"), st.just("f"), st.just("v")),
)


@settings(max_examples=80)
@given(st.lists(_SETS, min_size=1, max_size=12), st.booleans())
def test_a_run_of_sets_in_one_batch_equals_one_command_per_entry(
    commands: list[tuple[str, ...]], expire_first: bool
) -> None:
    """Differential: ``Strings.set_run`` (one batch) against ``Strings.set`` (one per entry)."""
    batched, single = KV(replicas=1), KV(replicas=1)
    if expire_first:  # a deadline elsewhere in the keyspace: the run must still clear its keys'
        for kv in (batched, single):
            kv.run(0, cmd("SET", "z", "1"), cmd("EXPIRE", "z", "1000"))
    replies = batched.run(0, *(cmd(*c) for c in commands))
    one_by_one = [single.run(0, cmd(*c))[0] for c in commands]
    assert [repr(r) for r in replies] == [repr(r) for r in one_by_one]
    a, b_ = batched.keyspace(0), single.keyspace(0)
    assert (a.values, a.deadlines, a.watched, a.versions) == (
        b_.values,
        b_.deadlines,
        b_.watched,
        b_.versions,
    )
