"""More string, hash, set and list commands against a real ``redis-server`` 7, side by side.

The KV service (``dominoes run ... --replicas 2``) and a throwaway
``redis-server`` get the same commands; every reply is compared exactly, error
texts included, in RESP2 and in RESP3.  Replies are read off the wire by a
small RESP reader that keeps each reply's type (a null bulk is not a null
array, a RESP3 set is not an array), so a shape that differs is seen.  On the
KV side, commands alternate between the two replicas' connections, so what one
replica writes the other reads.

Only what Redis leaves unspecified is normalised: the order of a set's members
(SMEMBERS, SINTER, ..., SSCAN and HSCAN pages), and the choices of SPOP,
SRANDMEMBER and HRANDFIELD, where sizes, repetitions and membership are
checked instead (and SPOP must leave both replicas with the same set).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import resp_wire
from .harness import Service
from .kv_helpers import client, clients_on_every_replica
from .resp_wire import Wire, plain, wires_on_every_replica

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


# --- comparing with the oracle (the RESP client is resp_wire's) ------------------------------


class Pair(resp_wire.Pair):
    """The same commands to the oracle and to the KV service, in one protocol; replies
    compared as :func:`plain` ones, with what Redis leaves unordered sorted."""

    def normal(self, args: tuple[str | bytes | int, ...], reply: Any) -> Any:
        return canonical(args, plain(reply))


#: Replies that are a set of members (an array in RESP2): compared sorted.
SET_REPLIES = {"SMEMBERS", "SINTER", "SUNION", "SDIFF"}
#: Replies Redis chooses at random: sizes and membership are compared instead.
RANDOM = {"SPOP", "SRANDMEMBER", "HRANDFIELD"}


def canonical(args: tuple[Any, ...], reply: Any) -> Any:
    name = str(args[0]).upper()
    if name in SET_REPLIES and isinstance(reply, list):
        return ("~", sorted(reply, key=repr))
    if name in ("SSCAN", "HSCAN") and isinstance(reply, list) and len(reply) == 2:
        items = reply[1]
        if name == "HSCAN":  # (field, value) pairs, in no particular order
            items = sorted(zip(items[::2], items[1::2], strict=True))
        else:
            items = sorted(items)
        return [reply[0], items]
    if name == "HGETALL":
        if isinstance(reply, list):
            return sorted(zip(reply[::2], reply[1::2], strict=True))
        if isinstance(reply, tuple) and reply[0] == "%":
            return ("%", sorted(reply[1]))
    return reply


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(svc: Service, oracle_port: int) -> Iterator[dict[int, Pair]]:
    out: dict[int, Pair] = {}
    for proto in (2, 3):
        out[proto] = Pair(Wire(oracle_port, proto), wires_on_every_replica(svc.port, proto))
    yield out
    for pair in out.values():
        pair.oracle.close()
        for w in pair.ours.values():
            w.close()


def _fresh(pair: Pair) -> None:
    pair.oracle.call("FLUSHALL")
    pair.ours[0].call("FLUSHALL")


PROTOS = pytest.mark.parametrize("proto", [2, 3])

# --- scripted cases: edges and errors, per data type ---------------------------------------

NOT_INTS = ["abc", "1.5", "", "9223372036854775808", "-9223372036854775809"]
INT_EDGES = ["-9223372036854775808", "9223372036854775807", "-9223372036854775807"]

STRINGS: list[tuple[Any, ...]] = [
    ("SET", "s", "Hello World"),
    *[("GETRANGE", "s", a, b) for a in (0, 3, -3, -1, -100, 100, 5) for b in (0, 4, -1, -5, 100)],
    ("GETRANGE", "s", -1, -5), ("GETRANGE", "s", -5, -1), ("GETRANGE", "nokey", 0, -1),
    ("SUBSTR", "s", 0, 4), ("SUBSTR", "s", -3, -1), ("SUBSTR", "nokey", 0, 1),
    *[("GETRANGE", "s", x, 1) for x in NOT_INTS], ("GETRANGE", "s", 0, "x"),
    *[("GETRANGE", "s", e, e) for e in INT_EDGES],
    ("GETRANGE", "s", 0), ("SUBSTR", "s", 0, 1, 2),
    ("SETRANGE", "s", 6, "Redis"), ("GET", "s"),
    ("SETRANGE", "s", 20, "x"), ("GET", "s"), ("STRLEN", "s"),
    ("SETRANGE", "s", 0, ""), ("SETRANGE", "new", 0, ""), ("EXISTS", "new"),
    ("SETRANGE", "new", 3, "abc"), ("GET", "new"),
    ("SETRANGE", "s", -1, "x"), ("SETRANGE", "s", "x", "x"),
    ("SETRANGE", "s", 536870912, "x"), ("SETRANGE", "s", 536870911, "xy"),
    ("SETRANGE", "s", 9223372036854775807, "x"), ("SETRANGE", "new2", 536870912, "x"),
    ("SETRANGE", "new2", 536870912, ""), ("EXISTS", "new2"),
    ("SETRANGE", "s", 1), ("GET", "s"),
    ("RPUSH", "list", "a"), ("GETRANGE", "list", 0, 1), ("SETRANGE", "list", 0, "x"),
    ("SETRANGE", "list", 0, ""), ("SETRANGE", "list", -1, "x"),
    ("MSETNX", "m1", "1", "m2", "2"), ("MGET", "m1", "m2"),
    ("MSETNX", "m2", "x", "m3", "3"), ("EXISTS", "m3"), ("MSETNX", "list", "x"),
    ("MSETNX", "m4", "a", "m4", "b"), ("GET", "m4"), ("MSETNX", "m5"), ("MSETNX", "m5", "1", "m6"),
    ("SET", "t", "v", "EX", "100"), ("MSETNX", "t", "w"), ("TTL", "t"),
    ("SET", "a", "ohmytext"), ("SET", "b", "mynewtext"),
    ("LCS", "a", "b"), ("LCS", "a", "b", "LEN"), ("LCS", "a", "b", "IDX"),
    ("LCS", "a", "b", "IDX", "MINMATCHLEN", "4"), ("LCS", "a", "b", "IDX", "WITHMATCHLEN"),
    ("LCS", "a", "b", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"),
    ("LCS", "a", "b", "IDX", "MINMATCHLEN", "-4", "WITHMATCHLEN"),
    ("LCS", "a", "b", "LEN", "IDX"), ("LCS", "a", "b", "IDX", "LEN", "MINMATCHLEN", "1"),
    ("LCS", "a", "b", "MINMATCHLEN"), ("LCS", "a", "b", "MINMATCHLEN", "x"),
    ("LCS", "a", "b", "FOO"), ("LCS", "a", "nokey"), ("LCS", "nokey", "nokey2", "IDX"),
    ("LCS", "a", "list"), ("LCS", "list", "nokey"), ("LCS", "a"),
    ("LCS", "a", "a", "IDX", "WITHMATCHLEN"), ("LCS", "b", "a", "IDX", "WITHMATCHLEN"),
    ("SET", "c", "abcabcabcxyzxyz"), ("SET", "d", "xyzabcxyzabc"),
    ("LCS", "c", "d"), ("LCS", "c", "d", "IDX", "WITHMATCHLEN"),
    ("LCS", "d", "c", "IDX", "MINMATCHLEN", "2", "WITHMATCHLEN"),
    ("SETEX", "x", "10", "v"), ("PSETEX", "x", "10000", "v"), ("GETEX", "x", "PERSIST"),
]  # fmt: skip

HASHES: list[tuple[Any, ...]] = [
    ("HSET", "h", "f1", "v1", "f2", "22", "f3", "1.5"),
    ("HSETNX", "h", "f1", "x"), ("HSETNX", "h", "f4", "v4"), ("HSETNX", "nh", "f", "v"),
    ("HGETALL", "h"), ("HSETNX", "h", "f"),
    ("HINCRBYFLOAT", "h", "f3", "0.1"), ("HINCRBYFLOAT", "h", "f2", "-2.5e1"),
    ("HINCRBYFLOAT", "h", "new", "10"), ("HINCRBYFLOAT", "h", "f1", "1"),
    ("HINCRBYFLOAT", "h", "f3", "abc"), ("HINCRBYFLOAT", "h", "f3", "inf"),
    ("HINCRBYFLOAT", "h", "f3", ""), ("HINCRBYFLOAT", "h", "f3", "nan"),
    ("HGET", "h", "f3"), ("HGET", "h", "f2"),
    ("HSTRLEN", "h", "f1"), ("HSTRLEN", "h", "nofield"), ("HSTRLEN", "nokey", "f"),
    ("HRANDFIELD", "nokey"), ("HRANDFIELD", "nokey", "3"),
    ("HRANDFIELD", "nokey", "3", "WITHVALUES"),
    ("HRANDFIELD", "h", "0"), ("HRANDFIELD", "h", "0", "WITHVALUES"),
    ("HRANDFIELD", "h", "x"), ("HRANDFIELD", "h", "1", "FOO"),
    ("HRANDFIELD", "h", "1", "WITHVALUES", "x"),
    ("HRANDFIELD", "h", "-9223372036854775808"),
    ("HRANDFIELD", "h", "9223372036854775807", "WITHVALUES"),
    ("HRANDFIELD", "h", "-4611686018427387904", "WITHVALUES"),
    ("HRANDFIELD", "nokey", "-9223372036854775808"), ("HRANDFIELD", "nokey", "x"),
    ("HSCAN", "h", "0"), ("HSCAN", "h", "0", "MATCH", "f*"), ("HSCAN", "h", "0", "COUNT", "1"),
    ("HSCAN", "h", "0", "COUNT", "0"), ("HSCAN", "h", "0", "COUNT", "x"),
    ("HSCAN", "h", "0", "FOO", "1"),
    ("HSCAN", "h", "0", "MATCH"), ("HSCAN", "h", "x"), ("HSCAN", "h", "-1"), ("HSCAN", "h", ""),
    ("HSCAN", "h", "18446744073709551616"), ("HSCAN", "nokey", "0", "COUNT", "0"),
    ("HSCAN", "h", "0", "TYPE", "string"), ("HSCAN", "h", "0", "MATCH", "*", "COUNT", "100"),
    ("SET", "s", "v"), ("HSETNX", "s", "f", "v"), ("HINCRBYFLOAT", "s", "f", "1"),
    ("HINCRBYFLOAT", "s", "f", "abc"), ("HINCRBYFLOAT", "s", "f", "-inf"),
    ("HSTRLEN", "s", "f"), ("HRANDFIELD", "s"), ("HRANDFIELD", "s", "2"), ("HRANDFIELD", "s", "x"),
    ("HSCAN", "s", "0"), ("HSCAN", "s", "x"), ("HSCAN", "s", "0", "COUNT", "0"),
]  # fmt: skip

SETS: list[tuple[Any, ...]] = [
    ("SADD", "s1", "a", "b", "c", "d"), ("SADD", "s2", "c", "d", "e"),
    ("SADD", "s3", "a", "c", "e"),
    ("SADD", "n", "1", "2", "3"), ("SET", "str", "v"),
    ("SINTER", "s1", "s2"), ("SINTER", "s1", "s2", "s3"), ("SINTER", "s1", "nokey"),
    ("SINTER", "s1"), ("SINTER", "nokey"), ("SINTER", "s1", "str"), ("SINTER", "nokey", "str"),
    ("SUNION", "s1", "s2", "nokey"), ("SUNION", "nokey"), ("SUNION", "s1", "str"),
    ("SDIFF", "s1", "s2", "s3"), ("SDIFF", "nokey", "s1"), ("SDIFF", "s1", "nokey"),
    ("SDIFF", "s1", "str"), ("SDIFF", "s1", "s1"),
    ("SINTERSTORE", "d", "s1", "s2"), ("SMEMBERS", "d"), ("SINTERSTORE", "d", "s1", "nokey"),
    ("EXISTS", "d"), ("SUNIONSTORE", "d", "s1", "n"), ("SCARD", "d"),
    ("SET", "d2", "x", "EX", "100"), ("SDIFFSTORE", "d2", "s1", "s2"), ("TTL", "d2"),
    ("TYPE", "d2"),
    ("SDIFFSTORE", "d2", "s1", "s1"), ("EXISTS", "d2"), ("SINTERSTORE", "d", "str"),
    ("SINTERSTORE", "s1c", "s1"), ("SUNIONSTORE", "s1", "s1", "s2"), ("SMEMBERS", "s1"),
    ("SINTERSTORE", "d"), ("SDIFFSTORE", "str", "s2"), ("TYPE", "str"), ("SET", "str", "v"),
    ("SINTERCARD", "2", "s1", "s2"), ("SINTERCARD", "2", "s1", "s2", "LIMIT", "1"),
    ("SINTERCARD", "2", "s1", "s2", "LIMIT", "0"), ("SINTERCARD", "1", "s1", "LIMIT", "100"),
    ("SINTERCARD", "0", "s1"), ("SINTERCARD", "-1", "s1"), ("SINTERCARD", "x", "s1"),
    ("SINTERCARD", "3", "s1", "s2"), ("SINTERCARD", "2", "s1", "s2", "LIMIT"),
    ("SINTERCARD", "2", "s1", "s2", "LIMIT", "-1"), ("SINTERCARD", "2", "s1", "s2", "LIMIT", "x"),
    ("SINTERCARD", "2", "s1", "s2", "FOO"), ("SINTERCARD", "2", "s1", "str"),
    ("SINTERCARD", "2", "nokey", "str"), ("SINTERCARD", "1"),
    ("SMOVE", "s2", "s4", "e"), ("SMEMBERS", "s4"), ("SMOVE", "s2", "s4", "zz"),
    ("SMOVE", "nokey", "s4", "a"), ("SMOVE", "nokey", "str", "a"), ("SMOVE", "s2", "str", "c"),
    ("SMOVE", "str", "s2", "c"), ("SMOVE", "s2", "s2", "c"), ("SMOVE", "s2", "s2", "zz"),
    ("SMOVE", "s4", "s2", "e"), ("EXISTS", "s4"), ("SMOVE", "s2", "s3", "e"), ("SMEMBERS", "s3"),
    ("SPOP", "nokey"), ("SPOP", "nokey", "2"), ("SPOP", "nokey", "0"), ("SPOP", "s1", "0"),
    ("SPOP", "s1", "-1"), ("SPOP", "s1", "x"), ("SPOP", "s1", "1", "2"), ("SPOP", "str"),
    ("SPOP", "str", "1"), ("SPOP", "str", "-1"),
    ("SRANDMEMBER", "nokey"), ("SRANDMEMBER", "nokey", "5"), ("SRANDMEMBER", "nokey", "-5"),
    ("SRANDMEMBER", "s1", "0"), ("SRANDMEMBER", "s1", "x"), ("SRANDMEMBER", "s1", "1", "2"),
    ("SRANDMEMBER", "s1", "-9223372036854775808"), ("SRANDMEMBER", "str"),
    ("SRANDMEMBER", "str", "2"),
    ("SSCAN", "s1", "0"), ("SSCAN", "n", "0", "MATCH", "[12]"), ("SSCAN", "s1", "0", "COUNT", "0"),
    ("SSCAN", "s1", "x"), ("SSCAN", "nokey", "0"), ("SSCAN", "str", "0"),
    ("SSCAN", "s1", "0", "TYPE", "set"),
]  # fmt: skip

LISTS: list[tuple[Any, ...]] = [
    ("RPUSH", "l", "a", "b", "c", "1", "2", "3", "c", "c"), ("SET", "str", "v"),
    ("LPOS", "l", "c"), ("LPOS", "l", "c", "RANK", "2"), ("LPOS", "l", "c", "RANK", "-1"),
    ("LPOS", "l", "c", "RANK", "-2"), ("LPOS", "l", "c", "RANK", "10"),
    ("LPOS", "l", "c", "COUNT", "0"),
    ("LPOS", "l", "c", "COUNT", "2"), ("LPOS", "l", "c", "COUNT", "2", "RANK", "-1"),
    ("LPOS", "l", "c", "MAXLEN", "3"), ("LPOS", "l", "c", "MAXLEN", "2"),
    ("LPOS", "l", "c", "COUNT", "0", "MAXLEN", "7"),
    ("LPOS", "l", "c", "RANK", "-1", "MAXLEN", "2", "COUNT", "0"),
    ("LPOS", "l", "zz"), ("LPOS", "l", "zz", "COUNT", "0"), ("LPOS", "nokey", "a"),
    ("LPOS", "nokey", "a", "COUNT", "1"), ("LPOS", "l", "c", "RANK", "0"),
    ("LPOS", "l", "c", "RANK", "x"),
    ("LPOS", "l", "c", "RANK", "-9223372036854775808"), ("LPOS", "l", "c", "COUNT", "-1"),
    ("LPOS", "l", "c", "COUNT", "x"), ("LPOS", "l", "c", "MAXLEN", "-1"),
    ("LPOS", "l", "c", "RANK"),
    ("LPOS", "l", "c", "FOO", "1"), ("LPOS", "str", "c"), ("LPOS", "nokey", "c", "RANK", "0"),
    ("LINSERT", "l", "BEFORE", "c", "X"), ("LINSERT", "l", "after", "3", "Y"),
    ("LINSERT", "l", "BEFORE", "zz", "X"), ("LINSERT", "nokey", "BEFORE", "a", "X"),
    ("LINSERT", "l", "MIDDLE", "a", "X"), ("LINSERT", "str", "BEFORE", "a", "X"),
    ("LINSERT", "nokey", "MIDDLE", "a", "X"), ("LRANGE", "l", "0", "-1"),
    ("LREM", "l", "1", "c"), ("LREM", "l", "-1", "c"), ("LRANGE", "l", "0", "-1"),
    ("RPUSH", "l", "c", "a", "c"), ("LREM", "l", "0", "c"), ("LREM", "l", "5", "zz"),
    ("LREM", "l", "x", "c"), ("LREM", "str", "1", "c"), ("LREM", "nokey", "1", "c"),
    ("LREM", "l", "-9223372036854775808", "a"), ("LRANGE", "l", "0", "-1"),
    ("LSET", "l", "0", "first"), ("LSET", "l", "-1", "last"), ("LSET", "l", "100", "x"),
    ("LSET", "nokey", "0", "x"), ("LSET", "str", "0", "x"), ("LSET", "l", "x", "x"),
    ("LRANGE", "l", "0", "-1"),
    ("RPUSH", "t", "1", "2", "3", "4", "5", "6"), ("LTRIM", "t", "1", "-2"),
    ("LRANGE", "t", "0", "-1"),
    ("LTRIM", "t", "-100", "100"), ("LTRIM", "t", "1", "1"), ("LRANGE", "t", "0", "-1"),
    ("LTRIM", "t", "5", "1"), ("EXISTS", "t"), ("LTRIM", "nokey", "0", "1"),
    ("LTRIM", "str", "0", "1"),
    ("LTRIM", "l", "x", "1"), ("LTRIM", "l", "0", "x"),
    ("RPUSH", "t", "1", "2", "3"), ("LTRIM", "t", "-1", "-2"), ("EXISTS", "t"),
    ("RPUSH", "src", "a", "b", "c"), ("LMOVE", "src", "dst", "LEFT", "RIGHT"),
    ("LMOVE", "src", "dst", "right", "left"), ("LRANGE", "dst", "0", "-1"),
    ("LMOVE", "src", "src", "LEFT", "RIGHT"), ("LMOVE", "src", "src", "LEFT", "LEFT"),
    ("LMOVE", "src", "dst", "UP", "LEFT"), ("LMOVE", "src", "dst", "LEFT", "DOWN"),
    ("LMOVE", "nokey", "dst", "LEFT", "LEFT"), ("LMOVE", "nokey", "str", "LEFT", "LEFT"),
    ("LMOVE", "src", "str", "LEFT", "LEFT"), ("LMOVE", "str", "dst", "LEFT", "LEFT"),
    ("LMOVE", "src", "dst", "LEFT", "LEFT"), ("EXISTS", "src"), ("LRANGE", "dst", "0", "-1"),
    ("RPOPLPUSH", "dst", "dst"), ("RPOPLPUSH", "dst", "other"), ("RPOPLPUSH", "nokey", "other"),
    ("RPOPLPUSH", "dst", "str"), ("RPOPLPUSH", "str", "dst"), ("LRANGE", "other", "0", "-1"),
    ("RPUSH", "m1", "a", "b", "c"), ("RPUSH", "m2", "x"),
    ("LMPOP", "2", "nokey", "m1", "LEFT"), ("LMPOP", "2", "nokey", "m1", "RIGHT", "COUNT", "10"),
    ("LMPOP", "2", "m1", "m2", "LEFT", "COUNT", "5"), ("LMPOP", "2", "m1", "m2", "LEFT"),
    ("LMPOP", "1", "nokey", "LEFT"), ("LMPOP", "0", "m1", "LEFT"), ("LMPOP", "-1", "m1", "LEFT"),
    ("LMPOP", "x", "m1", "LEFT"), ("LMPOP", "3", "m1", "LEFT"), ("LMPOP", "1", "m1", "UP"),
    ("LMPOP", "1", "m1", "LEFT", "COUNT"), ("LMPOP", "1", "m1", "LEFT", "COUNT", "0"),
    ("LMPOP", "1", "m1", "LEFT", "COUNT", "x"),
    ("LMPOP", "1", "m1", "LEFT", "COUNT", "1", "COUNT", "1"),
    ("LMPOP", "1", "m1", "LEFT", "FOO"), ("LMPOP", "2", "str", "m1", "LEFT"),
    ("RPUSH", "m1", "z"), ("LMPOP", "2", "m1", "str", "LEFT"),
    ("LMPOP", "2", "nokey", "str", "LEFT"),
    ("LMPOP", "1", "m1"), ("LMPOP", "1"),
    ("LPUSHX", "nokey", "a"), ("RPUSHX", "nokey", "a"), ("EXISTS", "nokey"),
    ("LPUSHX", "other", "a", "b"), ("RPUSHX", "other", "c"), ("LRANGE", "other", "0", "-1"),
    ("LPUSHX", "str", "a"), ("RPUSHX", "str", "a"),
]  # fmt: skip

SCRIPTS = {"strings": STRINGS, "hashes": HASHES, "sets": SETS, "lists": LISTS}


@PROTOS
@pytest.mark.parametrize("group", list(SCRIPTS))
def test_scripted_like_redis(pairs: dict[int, Pair], proto: int, group: str) -> None:
    pair = pairs[proto]
    _fresh(pair)
    for args in SCRIPTS[group]:
        if str(args[0]).upper() in RANDOM:
            _random_like_redis(pair, args)
        else:
            pair.same(*args)


# --- random replies: sizes, repetitions and membership ---------------------------------------


def _random_like_redis(pair: Pair, args: tuple[Any, ...]) -> None:
    """SPOP, SRANDMEMBER or HRANDFIELD: the same errors and shapes as Redis, members
    of the collection, as many as Redis gives; SPOP removes the same members from
    the oracle too and leaves both replicas with the same set."""
    name, key = str(args[0]).upper(), args[1]
    if name == "HRANDFIELD":
        before = dict(_pairs(pair.oracle.call("HGETALL", key)))
    else:
        smembers = pair.oracle.call("SMEMBERS", key)
        before = dict.fromkeys(smembers[1] if isinstance(smembers, tuple) else smembers, b"")
    if name == "SPOP":  # the oracle pops from a copy, so that its set can follow ours
        pair.oracle.call("DEL", "spop:copy")
        pair.oracle.call("COPY", key, "spop:copy")
        expected = pair.oracle.call(name, "spop:copy", *args[2:])
        pair.oracle.call("DEL", "spop:copy")
        got = pair.ours[pair.turn].call(*args)
    else:
        expected, got = pair.both(*args)
    expected, got = plain(expected), plain(got)
    if isinstance(expected, tuple) and expected[0] in ("-", "nil", "nil*", "_"):
        assert got == expected, f"{args}: redis {expected!r}, dominoes {got!r}"
        return
    if isinstance(expected, bytes):
        assert isinstance(got, bytes), f"{args}: {got!r}"
        assert got in before, f"{args}: {got!r} not in {sorted(before)}"
        picked = [got]
    else:
        assert type(got) is type(expected), f"{args}: redis {expected!r}, dominoes {got!r}"
        items = got[1] if isinstance(got, tuple) else got
        want = expected[1] if isinstance(expected, tuple) else expected
        assert len(items) == len(want), f"{args}: redis {expected!r}, dominoes {got!r}"
        withvalues = name == "HRANDFIELD" and len(args) == 4
        if withvalues and items and all(isinstance(p, list) for p in items):
            items = [x for p in items for x in p]  # RESP3: [field, value] pairs, as Redis
        picked = items[::2] if withvalues else list(items)
        if withvalues:
            assert all(before.get(f) == v for f, v in zip(items[::2], items[1::2], strict=True))
        assert all(p in before for p in picked), f"{args}: {got!r} not in {sorted(before)}"
        count = int(args[2])
        if count > 0:
            assert len(set(picked)) == len(picked), f"{args}: repeats in {got!r}"
    if name == "SPOP":
        if picked:
            pair.oracle.call("SREM", key, *picked)
        members = [pair.ours[i].call("SMEMBERS", key) for i in (0, 1)]
        assert members[0] == members[1], f"the replicas disagree after {args}: {members}"
        assert canonical(("SMEMBERS",), members[0]) == canonical(
            ("SMEMBERS",), pair.oracle.call("SMEMBERS", key)
        )


def _pairs(reply: Any) -> list[tuple[bytes, bytes]]:
    if isinstance(reply, tuple):
        return list(reply[1]) if reply[0] == "%" else []
    return list(zip(reply[::2], reply[1::2], strict=True))


def test_spop_and_srandmember_over_a_large_set(pairs: dict[int, Pair]) -> None:
    pair = pairs[3]
    _fresh(pair)
    members = [f"m{i}" for i in range(300)]
    pair.same("SADD", "big", *members)
    for args in [("SPOP", "big", "7"), ("SPOP", "big"), ("SRANDMEMBER", "big", "-500"),
                 ("SRANDMEMBER", "big", "250"), ("SRANDMEMBER", "big", "1000"),
                 ("SPOP", "big", "100"), ("SPOP", "big", "1000"), ("SPOP", "big")]:  # fmt: skip
        _random_like_redis(pair, args)
    pair.same("EXISTS", "big")


def test_scan_pages_cover_a_large_collection_once(pairs: dict[int, Pair]) -> None:
    """SSCAN and HSCAN over more than fits one page: every member once, cursor back to 0."""
    pair = pairs[2]
    _fresh(pair)
    members = [f"m{i}" for i in range(1000)]
    flat = [x for m in members for x in (m, m.upper())]
    for w in (pair.oracle, pair.ours[0]):
        w.call("SADD", "s", *members)
        w.call("HSET", "h", *flat)
    for name, key in (("SSCAN", "s"), ("HSCAN", "h")):
        for w in (pair.oracle, pair.ours[0], pair.ours[1]):
            seen: list[bytes] = []
            cursor = b"0"
            calls = 0
            while True:
                cursor, page = w.call(name, key, cursor, "COUNT", "50")
                seen += page
                calls += 1
                if cursor == b"0":
                    break
            assert calls > 1
            if name == "HSCAN":
                assert sorted(zip(seen[::2], seen[1::2], strict=True)) == sorted(
                    (m.encode(), m.upper().encode()) for m in members
                )
            else:
                assert sorted(seen) == sorted(m.encode() for m in members)


def test_lcs_of_long_strings_and_its_memory_limit(pairs: dict[int, Pair]) -> None:
    """Redis refuses an LCS whose table would pass 512 MB: 11584 bytes each is the most."""
    pair = pairs[3]
    _fresh(pair)
    rng = random.Random(7)
    a = bytes(rng.choice(b"acgt") for _ in range(3000))
    b = bytes(rng.choice(b"acgt") for _ in range(2500))
    pair.same("MSET", "a", a, "b", b)
    for options in ((), ("LEN",), ("IDX", "MINMATCHLEN", "5", "WITHMATCHLEN")):
        pair.same("LCS", "a", "b", *options)
    for n in (11584, 11585):
        pair.same(
            "MSET", "a", b"ab" * (n // 2) + b"a" * (n % 2), "b", b"ba" * (n // 2) + b"b" * (n % 2)
        )
        pair.same("LCS", "a", "b", "LEN")
    pair.same("SET", "b", "x")
    pair.same("LCS", "a", "b", "IDX")


#: Writes, some changing nothing, after which Redis does or does not abort a
#: transaction WATCHing the keys (``signalModifiedKey``): ours must agree.
TOUCHES: list[tuple[Any, ...]] = [
    ("LTRIM", "l", 0, -1), ("LTRIM", "l", 1, 1), ("LTRIM", "nokey", 0, 1),
    ("LREM", "l", 0, "zz"), ("LREM", "l", 1, "a"),
    ("LINSERT", "l", "BEFORE", "zz", "x"), ("LINSERT", "l", "AFTER", "a", "x"),
    ("LSET", "l", 0, "a"), ("LPOS", "l", "a"),
    ("LMOVE", "l", "l", "LEFT", "RIGHT"), ("LMOVE", "nokey", "l", "LEFT", "RIGHT"),
    ("RPOPLPUSH", "l", "l2"), ("LMPOP", 2, "nokey", "l", "LEFT"), ("LMPOP", 1, "nokey", "LEFT"),
    ("LPUSHX", "nokey", "a"), ("RPUSHX", "l", "a"),
    ("SMOVE", "s", "t", "zz"), ("SMOVE", "s", "s", "m"), ("SMOVE", "s", "t", "m"),
    ("SPOP", "s", 0), ("SPOP", "s"), ("SPOP", "nokey"),
    ("SINTERSTORE", "s", "s"), ("SINTERSTORE", "nokey", "nokey2"), ("SINTERSTORE", "s", "nokey"),
    ("SUNIONSTORE", "t", "s"), ("SDIFFSTORE", "s", "s", "s"),
    ("HSETNX", "h", "f", "x"), ("HSETNX", "h", "g", "x"), ("HINCRBYFLOAT", "h", "f", "0"),
    ("SETRANGE", "str", 0, ""), ("SETRANGE", "str", 0, "v"), ("SETRANGE", "nokey", 0, ""),
    ("MSETNX", "str", "x", "new", "y"), ("MSETNX", "new", "y"),
    ("GETRANGE", "str", 0, -1), ("LCS", "str", "str"),
]  # fmt: skip


@pytest.mark.parametrize("command", TOUCHES, ids=lambda c: " ".join(map(str, c)))
def test_a_watched_key_is_touched_as_in_redis(
    svc: Service, oracle_port: int, command: tuple[Any, ...]
) -> None:
    aborted = {}
    for port in (oracle_port, svc.port):
        watcher, other = client(port), client(port)
        try:
            watcher.flushall()
            watcher.rpush("l", "a", "b")
            watcher.sadd("s", "m")
            watcher.hset("h", "f", "1")
            watcher.set("str", "v")
            with watcher.pipeline() as p:
                p.watch("l", "l2", "s", "t", "h", "str", "new", "nokey")
                other.execute_command(*command)
                p.multi()
                p.get("x")
                try:
                    p.execute()
                    aborted[port] = False
                except redis.WatchError:
                    aborted[port] = True
        finally:
            watcher.close()
            other.close()
    assert aborted[svc.port] == aborted[oracle_port], f"redis aborted: {aborted[oracle_port]}"


def test_repeated_picks_are_bounded(pairs: dict[int, Pair]) -> None:
    """SRANDMEMBER and HRANDFIELD build their reply whole: past 2**24 repeated picks
    they refuse (Redis would stream billions of them)."""
    pair = pairs[2]
    _fresh(pair)
    w = pair.ours[0]
    w.call("SADD", "s", "m")
    w.call("HSET", "h", "f", "v")
    for args in (("SRANDMEMBER", "s", "-16777217"), ("HRANDFIELD", "h", "-16777217")):
        reply = w.call(*args)
        assert isinstance(reply, tuple)
        assert reply[0] == "-"
    assert w.call("SRANDMEMBER", "s", "-3") == [b"m"] * 3
    assert w.call("SRANDMEMBER", "s", "100000000") == [b"m"]


def test_redis_py_on_both_replicas(svc: Service) -> None:
    """The commands through redis-py's own API (RESP2 and RESP3): write on one replica,
    read on the other."""
    for proto in (2, 3):
        on = clients_on_every_replica(svc.port, protocol=proto)
        r0, r1 = on[0], on[1]
        try:
            r0.flushall()
            assert r0.msetnx({"a": "ohmytext", "b": "mynewtext"}) is True
            assert r1.lcs("a", "b") == b"mytext"
            assert r1.getrange("a", 2, 3) == b"my"
            assert r0.setrange("a", 0, "OH") == 8
            assert r1.get("a") == b"OHmytext"
            assert r0.hsetnx("h", "f", "1") == 1
            assert r0.hincrbyfloat("h", "f", 0.5) == 1.5
            assert r1.hstrlen("h", "f") == 3
            assert r1.hrandfield("h") == b"f"
            assert r1.hscan("h") == (0, {b"f": b"1.5"})
            r0.sadd("x", "1", "2", "3")
            r0.sadd("y", "2", "3", "4")
            assert sorted(r1.sinter(["x", "y"])) == [b"2", b"3"]
            assert r1.sintercard(2, ["x", "y"]) == 2
            assert r0.sunionstore("u", ["x", "y"]) == 4
            assert r0.smove("u", "v", "4") is True
            assert r1.smembers("v") in ([b"4"], {b"4"})
            popped = r0.spop("u")
            assert popped in (b"1", b"2", b"3")
            assert sorted(r1.smembers("u")) == sorted(r0.smembers("u"))
            assert r1.srandmember("u") in (b"1", b"2", b"3")
            r0.rpush("l", "a", "b", "c", "b")
            assert r1.lpos("l", "b") == 1
            assert r1.lpos("l", "b", count=0) == [1, 3]
            assert r0.linsert("l", "BEFORE", "c", "X") == 5
            assert r0.lrem("l", 0, "b") == 2
            assert r0.ltrim("l", 0, 1) is True
            assert r0.lmove("l", "l2", "LEFT", "RIGHT") == b"a"
            assert r0.rpoplpush("l", "l2") == b"X"
            assert r1.lrange("l2", 0, -1) == [b"X", b"a"]
            assert r0.lmpop(1, "l2", direction="RIGHT", count=5) == [b"l2", [b"a", b"X"]]
            assert r1.exists("l2") == 0
        finally:
            for c in on.values():
                c.close()


# --- properties: random command sequences on a few keys, compared with the oracle ----------

KEYS = st.sampled_from(["a", "b", "c"])
SMALL = st.integers(-6, 6).map(str)
WORDS = st.sampled_from(["", "x", "ab", "abc", "hello", "1", "2.5", "-3", "zzz"])


def _strings_command() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("SET"), KEYS, WORDS),
        st.tuples(st.sampled_from(["GETRANGE", "SUBSTR"]), KEYS, SMALL, SMALL),
        st.tuples(st.just("SETRANGE"), KEYS, st.integers(-1, 12).map(str), WORDS),
        st.tuples(st.just("MSETNX"), KEYS, WORDS, KEYS, WORDS),
        st.tuples(st.just("MSETNX"), KEYS, WORDS),
        st.tuples(st.just("LCS"), KEYS, KEYS).map(lambda t: (*t, "IDX", "WITHMATCHLEN")),
        st.tuples(st.just("LCS"), KEYS, KEYS),
        st.tuples(st.just("LCS"), KEYS, KEYS, st.just("LEN")),
        st.tuples(st.just("LCS"), KEYS, KEYS, st.just("IDX"), st.just("MINMATCHLEN"), SMALL),
        st.tuples(st.just("APPEND"), KEYS, WORDS),
        st.tuples(st.just("GET"), KEYS),
        st.tuples(st.just("RPUSH"), KEYS, WORDS),
        st.tuples(st.just("DEL"), KEYS),
    )


def _hashes_command() -> st.SearchStrategy[tuple[Any, ...]]:
    fields = st.sampled_from(["f", "g", "h"])
    numbers = st.sampled_from(["1", "-2.5", "0.1", "abc", "1e3", "", "inf", "3"])
    return st.one_of(
        st.tuples(st.just("HSET"), KEYS, fields, WORDS),
        st.tuples(st.just("HSETNX"), KEYS, fields, WORDS),
        st.tuples(st.just("HINCRBYFLOAT"), KEYS, fields, numbers),
        st.tuples(st.just("HSTRLEN"), KEYS, fields),
        st.tuples(st.just("HRANDFIELD"), KEYS),
        st.tuples(st.just("HRANDFIELD"), KEYS, SMALL),
        st.tuples(st.just("HRANDFIELD"), KEYS, SMALL, st.just("WITHVALUES")),
        st.tuples(st.just("HSCAN"), KEYS, st.just("0")),
        st.tuples(
            st.just("HSCAN"), KEYS, st.just("0"), st.just("MATCH"), st.sampled_from(["f*", "[gh]"])
        ),
        st.tuples(st.just("HDEL"), KEYS, fields),
        st.tuples(st.just("HGETALL"), KEYS),
        st.tuples(st.just("SET"), KEYS, WORDS),
    )  # fmt: skip


def _sets_command() -> st.SearchStrategy[tuple[Any, ...]]:
    members = st.sampled_from(["1", "2", "x", "y", "z"])
    many = st.lists(KEYS, min_size=1, max_size=3)
    return st.one_of(
        st.tuples(st.just("SADD"), KEYS, members, members),
        st.tuples(st.just("SREM"), KEYS, members),
        st.tuples(st.sampled_from(["SINTER", "SUNION", "SDIFF"]), many).map(
            lambda t: (t[0], *t[1])
        ),
        st.tuples(st.sampled_from(["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"]), KEYS, many).map(
            lambda t: (t[0], t[1], *t[2])
        ),
        st.tuples(many, st.sampled_from([(), ("LIMIT", "1"), ("LIMIT", "0")])).map(
            lambda t: ("SINTERCARD", str(len(t[0])), *t[0], *t[1])
        ),
        st.tuples(st.just("SMOVE"), KEYS, KEYS, members),
        st.tuples(st.just("SPOP"), KEYS),
        st.tuples(st.just("SPOP"), KEYS, st.integers(0, 4).map(str)),
        st.tuples(st.just("SRANDMEMBER"), KEYS),
        st.tuples(st.just("SRANDMEMBER"), KEYS, SMALL),
        st.tuples(st.just("SSCAN"), KEYS, st.just("0")),
        st.tuples(st.just("SMEMBERS"), KEYS),
        st.tuples(st.just("SET"), KEYS, WORDS),
    )


def _lists_command() -> st.SearchStrategy[tuple[Any, ...]]:
    items = st.sampled_from(["a", "b", "c"])
    ends = st.sampled_from(["LEFT", "RIGHT"])
    options = st.lists(
        st.one_of(
            st.tuples(st.just("RANK"), st.sampled_from(["1", "2", "-1", "-2"])),
            st.tuples(st.just("COUNT"), st.sampled_from(["0", "1", "2"])),
            st.tuples(st.just("MAXLEN"), st.sampled_from(["0", "1", "3"])),
        ),
        max_size=2,
    ).map(lambda opts: tuple(x for o in opts for x in o))
    return st.one_of(
        st.tuples(st.sampled_from(["LPUSH", "RPUSH", "LPUSHX", "RPUSHX"]), KEYS, items, items),
        st.tuples(st.just("LPOS"), KEYS, items, options).map(lambda t: (*t[:3], *t[3])),
        st.tuples(st.just("LINSERT"), KEYS, st.sampled_from(["BEFORE", "AFTER"]), items, items),
        st.tuples(st.just("LREM"), KEYS, st.integers(-2, 2).map(str), items),
        st.tuples(st.just("LSET"), KEYS, st.integers(-3, 3).map(str), items),
        st.tuples(st.just("LTRIM"), KEYS, SMALL, SMALL),
        st.tuples(st.just("LMOVE"), KEYS, KEYS, ends, ends),
        st.tuples(st.just("RPOPLPUSH"), KEYS, KEYS),
        st.tuples(
            st.lists(KEYS, min_size=1, max_size=3), ends, st.sampled_from(["1", "2", "5"])
        ).map(lambda t: ("LMPOP", str(len(t[0])), *t[0], t[1], "COUNT", t[2])),
        st.tuples(st.just("LRANGE"), KEYS, st.just("0"), st.just("-1")),
        st.tuples(st.just("SET"), KEYS, WORDS),
    )  # fmt: skip


def _state(w: Wire) -> list[Any]:
    out = []
    for key in ("a", "b", "c"):
        kind = w.call("TYPE", key)
        if kind == ("+", "string"):
            out.append(w.call("GET", key))
        elif kind == ("+", "hash"):
            out.append(sorted(_pairs(w.call("HGETALL", key))))
        elif kind == ("+", "set"):
            out.append(canonical(("SMEMBERS",), w.call("SMEMBERS", key)))
        elif kind == ("+", "list"):
            out.append(w.call("LRANGE", key, "0", "-1"))
        else:
            out.append(kind)
    return out


def _run_sequence(pairs: dict[int, Pair], proto: int, commands: list[tuple[Any, ...]]) -> None:
    pair = pairs[proto]
    _fresh(pair)
    for args in commands:
        if str(args[0]).upper() in RANDOM:
            _random_like_redis(pair, args)
        else:
            pair.same(*args)
    want = _state(pair.oracle)
    assert _state(pair.ours[0]) == want
    assert _state(pair.ours[1]) == want


PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROTO = st.sampled_from([2, 3])


@PROPERTY
@given(proto=PROTO, commands=st.lists(_strings_command(), min_size=1, max_size=15))
def test_strings_sequences_like_redis(
    pairs: dict[int, Pair], proto: int, commands: list[tuple[Any, ...]]
) -> None:
    _run_sequence(pairs, proto, commands)


@PROPERTY
@given(proto=PROTO, commands=st.lists(_hashes_command(), min_size=1, max_size=15))
def test_hashes_sequences_like_redis(
    pairs: dict[int, Pair], proto: int, commands: list[tuple[Any, ...]]
) -> None:
    _run_sequence(pairs, proto, commands)


@PROPERTY
@given(proto=PROTO, commands=st.lists(_sets_command(), min_size=1, max_size=15))
def test_sets_sequences_like_redis(
    pairs: dict[int, Pair], proto: int, commands: list[tuple[Any, ...]]
) -> None:
    _run_sequence(pairs, proto, commands)


@PROPERTY
@given(proto=PROTO, commands=st.lists(_lists_command(), min_size=1, max_size=15))
def test_lists_sequences_like_redis(
    pairs: dict[int, Pair], proto: int, commands: list[tuple[Any, ...]]
) -> None:
    _run_sequence(pairs, proto, commands)


# --- SPOP's choice does not depend on a set's iteration order --------------------------------


class _Ctx:
    """What SPOP reads of a log entry's context: its time and its seeded random."""

    def __init__(self, seed: int) -> None:
        self.now = 1_000.0
        self.random = random.Random(seed)


def test_spop_chooses_the_same_members_whatever_the_sets_iteration_order() -> None:
    """Two replicas' sets may iterate differently (one restored from a snapshot, one
    grown and shrunk): with the same entry's random, SPOP still pops the same members."""
    from typing import cast

    from dominoes.components.kv._keyspace import Keyspace
    from dominoes.components.kv._sets import Sets

    from dominoes import Context

    members = [b"m%d" % i for i in range(200)]
    grown = Sets(Keyspace())
    grown.keyspace.values[b"k"] = {b"x%d" % i for i in range(5000)} | set(members)
    cast(set[bytes], grown.keyspace.values[b"k"]).difference_update(b"x%d" % i for i in range(5000))
    restored = Sets(Keyspace())
    restored.keyspace.values[b"k"] = set(reversed(members))
    assert list(grown.keyspace.values[b"k"]) != list(restored.keyspace.values[b"k"])
    for seed, count in ((1, b"1"), (2, b"7"), (3, b"50")):
        popped = [
            s.spop(cast(Context, _Ctx(seed)), [b"SPOP", b"k", count]) for s in (grown, restored)
        ]
        assert popped[0] == popped[1]
        assert grown.keyspace.values[b"k"] == restored.keyspace.values[b"k"]
