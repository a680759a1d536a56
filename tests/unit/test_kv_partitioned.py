"""The KV partitioned by key (``make_service(copies=K)``) against the replicated KV, in ``Cluster``.

Hypothesis draws batches and transactions of commands over keys spread across
partitions, sent through any replica, with replica restarts and changes of
``copies`` in between; the partitioned KV's replies must be the replicated
twin's, byte for byte once encoded as RESP3 (sets, KEYS and SCAN compared as
sets: their order across partitions is not the twin's), and at the end every
key's DUMP and TTL must match and every partition's copies must converge.
"""

from __future__ import annotations

from typing import Any

import pytest
from dominoes.components.kv._memory import DENYOOM
from dominoes.components.kv._resp import SetOf, encode, unpack
from dominoes.components.kv._service import make_service
from dominoes.components.kv._shard import _EVERYWHERE, PARTITIONS, partition_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dominoes import reconfiguration
from dominoes.testing import Cluster

EVENT = reconfiguration.EVENT

KEYS = [b"a", b"b", b"c", b"n", b"q", b"{t}x", b"{t}y", b"{u}z"]
key = st.sampled_from(KEYS)
value = st.sampled_from([b"1", b"7", b"-3", b"x", b"", b"12345678901234567890"])
member = st.sampled_from([b"m1", b"m2", b"m3"])

ONE_KEY = st.one_of(
    st.tuples(st.just(b"SET"), key, value),
    st.tuples(st.just(b"GET"), key),
    st.tuples(st.just(b"INCR"), key),
    st.tuples(st.just(b"APPEND"), key, value),
    st.tuples(st.just(b"DEL"), key),
    st.tuples(st.just(b"EXISTS"), key),
    st.tuples(st.just(b"TYPE"), key),
    st.tuples(st.just(b"EXPIRE"), key, st.just(b"100000")),
    st.tuples(st.just(b"PERSIST"), key),
    st.tuples(st.just(b"HSET"), key, member, value),
    st.tuples(st.just(b"HGETALL"), key),
    st.tuples(st.just(b"LPUSH"), key, value),
    st.tuples(st.just(b"LRANGE"), key, st.just(b"0"), st.just(b"-1")),
    st.tuples(st.just(b"SADD"), key, member),
    st.tuples(st.just(b"SMEMBERS"), key),
    st.tuples(st.just(b"ZADD"), key, st.sampled_from([b"1", b"2.5", b"-1"]), member),
    st.tuples(st.just(b"ZRANGE"), key, st.just(b"0"), st.just(b"-1"), st.just(b"WITHSCORES")),
    st.tuples(st.just(b"MSET"), st.just(b"{t}x"), value, st.just(b"{t}y"), value),
    st.tuples(st.just(b"RENAME"), st.just(b"{t}x"), st.just(b"{t}y")),
)
KEYLESS = st.sampled_from([(b"DBSIZE",), (b"KEYS", b"*"), (b"FLUSHALL",), (b"PING",)])
COMMAND = st.one_of(ONE_KEY, ONE_KEY, ONE_KEY, KEYLESS).map(lambda t: list(t))

STEP: st.SearchStrategy[tuple[str, int, list[list[bytes]]]] = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 2), st.lists(COMMAND, min_size=1, max_size=6)),
    st.tuples(st.just("exec"), st.integers(0, 2), st.lists(COMMAND, min_size=1, max_size=5)),
    st.tuples(st.just("restart"), st.integers(0, 2), st.just([])),
    st.tuples(st.just("copies"), st.integers(1, 3), st.just([])),
)


def canonical(value: Any) -> Any:
    """A reply as RESP3 bytes, with the collections whose order is not defined sorted."""
    value = unpack(value)

    def fix(v: Any) -> Any:
        if isinstance(v, set | frozenset | SetOf):
            return sorted(fix(x) for x in v)
        if type(v) is list:
            return [fix(x) for x in v]
        return v

    return encode(fix(value), True)


def run_both(
    part: Cluster, twin: Cluster, replica: int, kind: str, commands: list[list[bytes]]
) -> None:
    if kind == "run":
        ours = part.call(replica, "shard.run", commands)
        theirs = twin.call(replica, "commands.run", commands)
    else:
        ours = part.call(replica, "shard.exec", commands, 0)
        theirs = twin.call(replica, "commands.exec", commands, 0)
    if kind == "run" or isinstance(theirs, list):
        assert isinstance(ours, list)
        assert isinstance(theirs, list)
        for c, o, t in zip(commands, ours, theirs, strict=True):
            if c[0] == b"KEYS":  # the partitions' keys, in partition order
                assert sorted(unpack(o)) == sorted(t), c
            else:
                assert canonical(o) == canonical(t), c
    else:
        assert canonical(ours) == canonical(theirs)


def final_state(c: Cluster, replica: int, event: str) -> list[bytes]:
    reads = [[b"DBSIZE"]] + [[b"DUMP", k] for k in KEYS] + [[b"TTL", k] for k in KEYS]
    return [canonical(r) for r in c.call(replica, event, reads)]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    replicas=st.integers(2, 3),
    copies=st.integers(1, 3),
    steps=st.lists(STEP, min_size=1, max_size=14),
)
def test_partitioned_kv_answers_as_the_replicated_one(
    replicas: int, copies: int, steps: list[tuple[str, int, list[list[bytes]]]]
) -> None:
    part = Cluster(make_service(copies=copies), replicas=replicas)
    twin = Cluster(make_service(), replicas=replicas)
    current = copies
    for kind, n, commands in steps:
        if kind == "restart":
            # A restart with copies=1 loses the dead replica's partitions (its only
            # copies): that is tested elsewhere; here every partition has a survivor.
            if min(current, replicas) < 2:
                continue
            dead = n % replicas
            part.kill(dead)
            part.restart(dead)
            part.run_until_quiet()
            continue
        if kind == "copies":
            part.call(0, EVENT, reconfiguration.copies("shard", n))
            part.run_until_quiet()
            current = n
            continue
        run_both(part, twin, n % replicas, kind, [list(c) for c in commands])
    part.run_until_quiet()
    twin.run_until_quiet()
    for r in range(replicas):
        assert final_state(part, r, "shard.run") == final_state(twin, 0, "commands.run")
    part.assert_converged()


def test_scan_walks_every_partition_once() -> None:
    part = Cluster(make_service(copies=1), replicas=2)
    keys = [b"key:%d" % i for i in range(300)]
    part.call(0, "shard.run", [[b"SET", k, b"v"] for k in keys])
    for replica in (0, 1):
        seen: list[bytes] = []
        cursor = b"0"
        visited: set[int] = set()
        while True:
            reply = unpack(part.call(replica, "shard.run", [[b"SCAN", cursor, b"COUNT", b"7"]])[0])
            cursor, batch = reply
            seen += batch
            visited.add(int(cursor) % PARTITIONS)
            if cursor == b"0":
                break
        assert sorted(seen) == sorted(keys)
        assert len(seen) == len(set(seen))
    assert unpack(part.call(0, "shard.run", [[b"SCAN", b"x"]])[0]).args[0] == "ERR invalid cursor"


def test_watch_aborts_in_its_partition_only() -> None:
    part = Cluster(make_service(copies=1), replicas=2)
    twin = Cluster(make_service(), replicas=2)
    client = 5 << 10  # a client id of replica 0
    for c, event in ((part, "shard"), (twin, "commands")):
        c.call(0, f"{event}.run", [[b"WATCH", b"%d" % client, b"{w}a"]])
        c.call(1, f"{event}.run", [[b"SET", b"{w}a", b"changed"]])
    ours = part.call(0, "shard.exec", [[b"\x00WATCHED", b"{w}a"], [b"SET", b"{w}b", b"1"]], client)
    theirs = twin.call(0, "commands.exec", [[b"SET", b"{w}b", b"1"]], client)
    assert encode(unpack(ours[0]), True) == encode(theirs, True) == b"_\r\n"
    assert part.call(1, "shard.run", [[b"EXISTS", b"{w}b"]]) == [0]


@pytest.mark.parametrize("key", [b"plain", b"{tag}a", b"{}x", b"{tag"])
def test_partition_follows_redis_hash_tags(key: bytes) -> None:
    tagged = key[key.index(b"{") + 1 : key.index(b"}")] if b"{" in key and b"}" in key else b""
    expected = partition_of(tagged if tagged else key)
    assert partition_of(key) == expected
    assert partition_of(b"{tag}a") == partition_of(b"{tag}b")


def test_no_command_sent_to_every_partition_is_rewritten_in_place() -> None:
    """Every part shares such a command's list: memory's OOM rewrite must never touch one."""
    assert not (DENYOOM & _EVERYWHERE)
