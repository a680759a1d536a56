"""The KV partitioned (``dominoes run dominoes.components.kv:service --partition copies=K``),
through redis-py against a real ``dominoes run``.

Keys are hashed into 64 partitions (CRC-32 of the key's hash tag); partition
``p`` of ``N`` replicas is held by replicas ``p % N``, ``(p + 1) % N``, ...
(``copies`` of them).  The tests show, from clients: a write acknowledged
through one replica is read through the other whichever holds the key;
CROSSSLOT for commands spanning partitions; keyless commands see every
partition; transactions across partitions are atomic; WATCH keeps one
partition; pub/sub stays replicated; expiry sweeps every partition; blocking
commands are refused; what a SIGKILL does with 1 and 2 copies; and a change
of ``copies`` under writers loses and doubles nothing.

Connections are pinned with :func:`pinned`: a client whose pool holds one
connection, so its pipelines and transactions run on the replica its INFO
showed (a ``single_connection_client``'s pipelines take another connection
from its pool, which may land on either replica).  No client retries: a send
cut by a broken connection is counted, never re-sent.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dominoes.components.kv._shard import PARTITIONS, partition_of
from redis.exceptions import ClusterCrossSlotError, WatchError

from .harness import Service, ask, reconfigured, settled
from .kv_helpers import Transfers, kv_service, pinned, progress, replica_of, wait_for

CROSSSLOT = "don't hash to the same slot"
BLOCKING = "blocking commands are not available on a partitioned KV"


# --- helpers -----------------------------------------------------------------------------


def holders(key: str, replicas: int = 2, copies: int = 1) -> list[int]:
    """The replicas holding ``key``'s partition, its primary first."""
    p = partition_of(key.encode())
    return [(p + i) % replicas for i in range(copies)]


def keys_where(prefix: str, count: int, wanted: Callable[[int], bool], start: int = 0) -> list[str]:
    """``count`` keys ``prefix<i>`` whose partition ``wanted`` accepts."""
    out: list[str] = []
    i = start
    while len(out) < count:
        key = f"{prefix}{i}"
        if wanted(partition_of(key.encode())):
            out.append(key)
        i += 1
    return out


def held_by(replica: int, prefix: str, count: int, replicas: int = 2) -> list[str]:
    """``count`` keys whose partition's primary is ``replica``."""
    return keys_where(prefix, count, lambda p: p % replicas == replica)


def tag_held_by(replica: int, replicas: int = 2) -> str:
    """A hash tag ``{t<i>}`` whose partition's primary is ``replica``."""
    return "{{{}}}".format(held_by(replica, "t", 1, replicas)[0])


def pinned_pair(port: int, replicas: int = 2) -> dict[int, redis.Redis]:
    return {i: pinned(port, i) for i in range(replicas)}


def subscriber_on(pool: redis.ConnectionPool, replica: int, tries: int = 200) -> Any:
    """A PubSub whose connection is on ``replica`` (asked with INFO before subscribing).

    Built on ``pool``, which the caller keeps and closes: a ``Redis`` client's
    pool is closed, its connections with it, when the client is collected.
    """
    for _ in range(tries):
        ps = redis.client.PubSub(pool)
        ps.execute_command("INFO", "dominoes")
        info = ps.parse_response(block=True, timeout=5)
        if f"replica_index:{replica}\r\n".encode() in info:
            return ps
        ps.close()
    raise AssertionError(f"no pub/sub connection reached replica {replica}")


def held_partitions(svc: Service, replicas: int = 2) -> list[int]:
    """How many partitions of ``shard`` each replica holds (ready ones, from its stats)."""
    return [
        ask(svc.run_dir, i, "stats")["replica"]["core"]["partitions"]["shard"]
        for i in range(replicas)
    ]


def shard_parts(digest: dict[str, str]) -> list[int]:
    """The partitions a replica's digest names (``shard#<p>``)."""
    return sorted(
        int(name.split("#")[1])
        for name in digest
        if name.startswith("shard#") and name.split("#")[1].isdigit()
    )


def partitioned(run_dir: Path, replicas: int, copies: int) -> Any:
    return kv_service(run_dir, replicas=replicas, args=("--partition", f"copies={copies}"))


# --- one shared service: 2 replicas, copies=1 -------------------------------------------


@pytest.fixture(scope="module")
def kvp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with partitioned(tmp_path_factory.mktemp("kv_partitioned") / "run", 2, 1) as svc:
        yield svc


@pytest.fixture(scope="module")
def on(kvp: Service) -> Iterator[dict[int, redis.Redis]]:
    """``on[i]``: a connection pinned to replica ``i``."""
    clients = pinned_pair(kvp.port)
    yield clients
    for c in clients.values():
        c.close()


def test_a_write_through_one_replica_is_read_through_the_other(
    kvp: Service, on: dict[int, redis.Redis]
) -> None:
    keys = [f"rw:{i}" for i in range(100)]
    primaries = [holders(k)[0] for k in keys]
    assert set(primaries) == {0, 1}
    counts = dict.fromkeys(keys, 0)
    # (writer, holder) combinations covered: all 4 of 2 replicas
    covered: set[tuple[int, int]] = set()
    for i in range(1000):
        k = keys[i % len(keys)]
        w = (i + i // len(keys)) % 2  # each key, round after round, from both sides
        counts[k] += 1
        assert on[w].incr(k) == counts[k]
        assert on[1 - w].get(k) == b"%d" % counts[k]
        covered.add((w, primaries[i % len(keys)]))
    assert covered == {(0, 0), (0, 1), (1, 0), (1, 1)}

    hashes: dict[str, dict[bytes, bytes]] = {}
    lists: dict[str, list[bytes]] = {}
    sets: dict[str, set[bytes]] = {}
    for round_ in range(2):
        for j, k in enumerate(keys):
            w = (j + round_) % 2
            writer, reader = on[w], on[1 - w]
            field, value = f"f{round_}".encode(), f"v{j}.{round_}".encode()
            hashes.setdefault(k, {})[field] = value
            assert writer.hset(f"h:{k}", field, value) == 1
            assert reader.hgetall(f"h:{k}") == hashes[k]
            lists.setdefault(k, []).insert(0, value)
            assert writer.lpush(f"l:{k}", value) == len(lists[k])
            assert reader.lrange(f"l:{k}", 0, -1) == lists[k]
            sets.setdefault(k, set()).add(value)
            assert writer.sadd(f"s:{k}", value, b"common") == (2 if round_ == 0 else 1)
            assert reader.smembers(f"s:{k}") == sets[k] | {b"common"}
    # and the keys are really split: replica r holds (digests) the partitions p % 2 == r only
    for index, digest in enumerate(settled(kvp.run_dir)):
        assert shard_parts(digest) == [p for p in range(PARTITIONS) if p % 2 == index]


def test_commands_across_partitions_are_refused_and_a_hash_tag_joins_them(
    on: dict[int, redis.Redis],
) -> None:
    (a,) = held_by(0, "cs:a", 1)
    (b,) = held_by(1, "cs:b", 1)
    (sa,) = held_by(0, "cs:sa", 1)
    (sb,) = held_by(1, "cs:sb", 1)
    for r in on.values():
        with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
            r.mset({a: 1, b: 2})
    assert on[0].get(a) is None
    assert on[1].get(b) is None
    assert on[0].set(a, "A")
    assert on[1].set(b, "B")
    refused: list[Callable[[redis.Redis], Any]] = [
        lambda r: r.delete(a, b),
        lambda r: r.rename(a, b),
        lambda r: r.sunion([sa, sb]),
        lambda r: r.sunionstore(sa, [sa, sb]),
        lambda r: r.smove(sa, sb, "x"),
    ]
    assert on[0].sadd(sa, "x") == 1
    assert on[1].sadd(sb, "y") == 1
    for call in refused:
        for r in on.values():
            with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
                call(r)
    # nothing moved, nothing deleted
    for r in on.values():
        assert r.mget(a) == [b"A"]
        assert r.mget(b) == [b"B"]
        assert r.smembers(sa) == {b"x"}
        assert r.smembers(sb) == {b"y"}

    # one tag, one partition: the same commands work, from either replica,
    # whichever replica holds the tag
    for owner in (0, 1):
        t = tag_held_by(owner)
        for w in (0, 1):
            writer, reader = on[w], on[1 - w]
            x, y = f"{t}x{w}", f"{t}y{w}"
            assert writer.mset({x: 1, y: 2})
            assert reader.mget(x, y) == [b"1", b"2"]
            assert writer.sadd(f"{t}s{w}", "p", "q") == 2
            assert writer.sadd(f"{t}u{w}", "q", "r") == 2
            assert reader.sunion([f"{t}s{w}", f"{t}u{w}"]) == {b"p", b"q", b"r"}
            assert writer.rename(x, f"{t}z{w}")
            assert reader.mget(x, f"{t}z{w}") == [None, b"1"]
            assert writer.delete(f"{t}z{w}", y, f"{t}s{w}", f"{t}u{w}") == 4
            assert reader.exists(f"{t}z{w}", y) == 0


def test_a_pipeline_answers_in_order_across_local_and_forwarded_reads(
    on: dict[int, redis.Redis],
) -> None:
    mine = {r: held_by(r, f"pl{r}:", 50) for r in (0, 1)}
    for r in (0, 1):
        for k in mine[r]:
            assert on[r].set(k, f"{k}=0")
    for r in (0, 1):
        local, remote = mine[r], mine[1 - r]
        pipe = on[r].pipeline(transaction=False)
        pipe.execute_command("INFO", "dominoes")  # the pipeline runs on replica r
        want: list[Any] = []
        for i in range(50):
            pipe.get(remote[i])  # forwarded
            pipe.get(local[i])  # local
            pipe.set(remote[i], f"{remote[i]}={r + 1}")
            pipe.get(remote[i])  # forwarded, after the write before it
            pipe.incr(f"{local[i]}:n")
            pipe.get(f"{local[i]}:n")
            want += [
                f"{remote[i]}=0".encode(),
                f"{local[i]}={r}".encode(),  # replica 0's pipeline wrote 1 here
                True,
                f"{remote[i]}={r + 1}".encode(),
                1,
                b"1",
            ]
        info, *got = pipe.execute()
        assert info["replica_index"] == r
        assert got == want


def test_keyless_commands_see_every_partition_and_flushall_clears_them(
    on: dict[int, redis.Redis],
) -> None:
    on[0].flushall()
    keys = {f"all:{i}" for i in range(300)}
    assert len({partition_of(k.encode()) for k in keys}) == PARTITIONS
    for i, k in enumerate(sorted(keys)):
        assert on[i % 2].set(k, i)
    on[1].hset("all:h", "f", "v")
    keys.add("all:h")
    wanted = {k.encode() for k in keys}
    for r in on.values():
        assert r.dbsize() == len(keys)
        assert set(r.keys("*")) == wanted
        assert len(r.keys("*")) == len(keys)
        assert set(r.scan_iter(count=7)) == wanted
        assert set(r.scan_iter(match="all:1*", count=50)) == {
            k for k in wanted if k.startswith(b"all:1")
        }
        assert set(r.scan_iter(_type="hash")) == {b"all:h"}
        assert r.randomkey() in wanted
    # a SCAN cursor from one replica goes on through the other
    cursor, got, turn = 0, [], 0
    while True:
        cursor, batch = on[turn % 2].scan(cursor, count=10)
        got += batch
        turn += 1
        if cursor == 0:
            break
    assert turn > 2
    assert set(got) == wanted
    assert on[1].flushall()
    for r in on.values():
        assert r.dbsize() == 0
        assert r.keys("*") == []
        assert list(r.scan_iter()) == []
        assert r.randomkey() is None
        assert r.get("all:0") is None
        assert r.get("all:1") is None


def test_transactions_across_partitions_are_atomic_under_concurrency(
    kvp: Service, on: dict[int, redis.Redis]
) -> None:
    """Writers move amounts from x to y (DECRBY x, INCRBY y in one MULTI/EXEC), x
    and y held by different replicas; readers read both in one MULTI/EXEC (one
    entry, so atomic; MGET across partitions is CROSSSLOT): the sum never moves."""
    (x,) = held_by(0, "tx:x", 1)
    (y,) = held_by(1, "tx:y", 1)
    total = 1_000_000
    assert on[0].set(x, total)
    assert on[1].set(y, 0)
    with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
        on[0].mget(x, y)
    writers, rounds = 4, 150
    moved = [0] * writers
    reads: list[tuple[Any, Any]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            rng = random.Random(n)
            r = pinned(kvp.port, n % 2)
            for _ in range(rounds):
                amount = rng.randint(1, 9)
                pipe = r.pipeline(transaction=True)
                pipe.decrby(x, amount)
                pipe.incrby(y, amount)
                after_x, after_y = pipe.execute()
                assert after_x + after_y == total
                moved[n] += amount
            r.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read(replica: int) -> None:
        try:
            r = pinned(kvp.port, replica)
            while not done.is_set():
                pipe = r.pipeline(transaction=True)
                pipe.get(x)
                pipe.get(y)
                got = pipe.execute()
                reads.append((got[0], got[1]))
            r.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    wthreads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    rthreads = [threading.Thread(target=read, args=(i,)) for i in (0, 1)]
    for t in [*wthreads, *rthreads]:
        t.start()
    for t in wthreads:
        t.join()
    done.set()
    for t in rthreads:
        t.join()
    assert errors == []
    assert reads
    assert all(int(a) + int(b) == total for a, b in reads)
    for r in on.values():
        assert [r.get(x), r.get(y)] == [b"%d" % (total - sum(moved)), b"%d" % sum(moved)]


def test_watch_in_one_partition_is_an_optimistic_lock(
    kvp: Service, on: dict[int, redis.Redis]
) -> None:
    # a conflicting write through the other replica aborts the transaction,
    # whichever replica holds the watched key
    for owner in (0, 1):
        t = tag_held_by(owner)
        bal, log = f"{t}bal", f"{t}log"
        for w in (0, 1):
            assert on[w].set(bal, 10)
            with on[w].pipeline() as pipe:
                pipe.watch(bal)
                value = int(pipe.get(bal) or 0)
                pipe.multi()
                pipe.set(bal, value - 1)
                pipe.rpush(log, "spent")
                assert on[1 - w].set(bal, 100)  # the conflict
                with pytest.raises(WatchError):
                    pipe.execute()
            assert on[w].get(bal) == b"100"
            assert on[1 - w].exists(log) == 0
            # and with no conflict it commits
            with on[w].pipeline() as pipe:
                pipe.watch(bal)
                value = int(pipe.get(bal) or 0)
                pipe.multi()
                pipe.set(bal, value - 1)
                pipe.rpush(log, "spent")
                assert pipe.execute() == [True, 1]
            assert on[1 - w].get(bal) == b"99"
            assert on[1 - w].lrange(log, 0, -1) == [b"spent"]
            assert on[w].delete(log) == 1

    # concurrent optimistic increments through both replicas: none lost
    counter = f"{tag_held_by(1)}counter"
    on[0].delete(counter)
    rounds = 60
    errors: list[BaseException] = []
    conflicts = [0, 0]

    def increment(replica: int) -> None:
        try:
            r = pinned(kvp.port, replica)
            for _ in range(rounds):
                while True:
                    with r.pipeline() as pipe:
                        try:
                            pipe.watch(counter)
                            value = int(pipe.get(counter) or 0)
                            pipe.multi()
                            pipe.set(counter, value + 1)
                            pipe.execute()
                            break
                        except WatchError:
                            conflicts[replica] += 1
            r.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert on[0].get(counter) == on[1].get(counter) == b"%d" % (2 * rounds)


def test_watch_then_exec_touching_another_partition_is_refused(
    on: dict[int, redis.Redis],
) -> None:
    t0, t1 = tag_held_by(0), tag_held_by(1)
    for w in (0, 1):
        watched, other = f"{t0}watched{w}", f"{t1}other{w}"
        with on[w].pipeline() as pipe:
            pipe.watch(watched)
            pipe.multi()
            pipe.set(other, 1)
            with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
                pipe.execute()
        assert on[1 - w].get(other) is None  # not applied
        # and the same keys with WATCH on the tag's own partition go through
        with on[w].pipeline() as pipe:
            pipe.watch(f"{t1}watched{w}")
            pipe.multi()
            pipe.set(other, 2)
            assert pipe.execute() == [True]
        assert on[1 - w].get(other) == b"2"
        assert on[w].ping()  # the connection is still good


def test_pubsub_stays_replicated_and_publish_in_a_transaction_is_refused(
    kvp: Service, on: dict[int, redis.Redis]
) -> None:
    pool = redis.ConnectionPool(host="127.0.0.1", port=kvp.port, socket_timeout=10)
    sub = subscriber_on(pool, 0)
    try:
        sub.subscribe("news")
        sub.psubscribe("ne*")
        assert [sub.get_message(timeout=5)["type"] for _ in range(2)] == [
            "subscribe",
            "psubscribe",
        ]
        assert on[1].publish("news", "through replica 1") == 2  # channel + pattern
        got = [sub.get_message(ignore_subscribe_messages=True, timeout=5) for _ in range(2)]
        assert sorted((m["type"], m["data"]) for m in got if m) == [
            ("message", b"through replica 1"),
            ("pmessage", b"through replica 1"),
        ]
        # PUBLISH in MULTI: refused when queued, so EXEC discards the transaction
        (k,) = held_by(1, "ps:k", 1)
        pipe = on[1].pipeline(transaction=True)
        pipe.set(k, "queued")
        pipe.publish("news", "inside MULTI")
        with pytest.raises(
            redis.ResponseError, match="PUBLISH cannot be in a transaction on a partitioned KV"
        ):
            pipe.execute()
        assert on[0].get(k) is None  # the transaction did not run
        assert on[1].publish("news", "after") == 2
        # the next message is the one after: the refused one was never published
        nxt = sub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert nxt is not None
        assert nxt["data"] == b"after"
    finally:
        sub.close()
        pool.disconnect()


def test_keys_expire_in_every_partition_without_being_touched(
    on: dict[int, redis.Redis],
) -> None:
    """Keys with a PX of both replicas' partitions, then only DBSIZE (through the
    log, every partition) and INFO (each replica's own partitions) are asked:
    DBSIZE drops to 0, and each holder's active sweep removes its keys (INFO
    stats counts them expired, INFO keyspace shows none left)."""
    on[0].flushall()
    expired = {i: int(r.info("stats")["expired_keys"]) for i, r in on.items()}
    keys = {i: held_by(i, "ex:", 20) for i in (0, 1)}
    for i, k in enumerate([*keys[0], *keys[1]]):
        assert on[i % 2].set(k, "v", px=200)
    wait_for(lambda: on[0].dbsize() == 0, timeout=10, interval=0.05)

    def swept(i: int) -> bool:
        info = on[i].info()
        return "db0" not in info and info["expired_keys"] - expired[i] == len(keys[i])

    for i in (0, 1):
        wait_for(functools.partial(swept, i), timeout=10, interval=0.05)
    for r in on.values():
        assert r.dbsize() == 0
        assert r.keys("*") == []


def test_blocking_commands_are_refused_and_the_connection_goes_on(
    on: dict[int, redis.Redis],
) -> None:
    blocking: list[tuple[Any, ...]] = [
        ("BLPOP", "{bl}list", 0),
        ("BRPOP", "{bl}list", 1),
        ("BRPOPLPUSH", "{bl}list", "{bl}other", 0),
        ("BLMOVE", "{bl}list", "{bl}other", "LEFT", "RIGHT", 0),
        ("BLMPOP", 0, 1, "{bl}list", "LEFT"),
        ("BZPOPMIN", "{bl}zset", 0),
        ("BZPOPMAX", "{bl}zset", 0),
        ("BZMPOP", 0, 1, "{bl}zset", "MIN"),
        ("XREAD", "BLOCK", 0, "STREAMS", "{bl}stream", "$"),
        ("XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "{bl}stream", ">"),
    ]
    on[0].delete("{bl}list", "{bl}other", "{bl}zset", "{bl}stream")
    assert on[0].rpush("{bl}list", "a", "b") == 2
    assert on[0].zadd("{bl}zset", {"m": 1}) == 1
    on[0].xgroup_create("{bl}stream", "g", id="0", mkstream=True)
    for r in on.values():
        for command in blocking:
            with pytest.raises(redis.ResponseError, match=BLOCKING):
                r.execute_command(*command)
        assert r.ping()
        # nothing was popped or moved
        assert r.lrange("{bl}list", 0, -1) == [b"a", b"b"]
        assert r.exists("{bl}other") == 0
        assert r.zcard("{bl}zset") == 1
        # a pipeline with one in the middle: the others answered, in order
        pipe = r.pipeline(transaction=False)
        pipe.lpop("{bl}list")
        pipe.execute_command("BLPOP", "{bl}list", 0)
        pipe.rpush("{bl}list", "a")
        got = pipe.execute(raise_on_error=False)
        assert got[0] == b"a"
        assert got[2] == 2
        assert isinstance(got[1], redis.ResponseError)
        assert BLOCKING in str(got[1])
        # the non-blocking forms work, and so do keys of both replicas
        assert r.lrange("{bl}list", 0, -1) == [b"b", b"a"]
        assert r.xread({"{bl}stream": "0"}) == []
        for owner in (0, 1):
            (k,) = held_by(owner, f"bl{replica_of(r)}:", 1)
            assert r.set(k, "still here")
            assert r.get(k) == b"still here"
        assert r.lmove("{bl}list", "{bl}list", "RIGHT", "LEFT") == b"a"
        assert r.lrange("{bl}list", 0, -1) == [b"a", b"b"]


# --- SIGKILL ---------------------------------------------------------------------------


def test_kill_9_with_one_copy_fails_the_dead_replica_s_keys_then_starts_them_empty(
    tmp_path: Path,
) -> None:
    """2 replicas, copies=1; replica 1 is killed with SIGKILL.

    Replica 0 keeps serving its own partitions throughout.  A call that needs
    one of replica 1's partitions (a read too: it goes through the log to a
    holder) answers at once, no hang, an error naming ``no live holder``
    (PartitionUnavailableError).  Reads while it restarts: the same error,
    until the new replica 1 has joined (it is joining from a position past the
    read, so it will never answer it); from then on they answer, EMPTY: the
    partitions' only copy died with the process (the output says "starts
    EMPTY"), and the old values never come back.  A write sent meanwhile is
    refused the same way, or applied, if the joiner took it in its backlog.
    """
    with partitioned(tmp_path / "run", 2, 1) as svc:
        mine, theirs = held_by(0, "k9:", 20), held_by(1, "k9:", 21)
        probe = theirs.pop()
        on = pinned_pair(svc.port)
        for k in [*mine, *theirs]:
            assert on[1].set(k, f"old {k}")
        assert on[1].hset(f"{{{theirs[0]}}}h", mapping={"a": 1}) == 1
        on[1].close()
        survivor = [on[0]]  # a pinned connection on replica 0: it must never break

        def on0(command: str, *args: Any) -> Any:
            return getattr(survivor[0], command)(*args)

        def outcome(command: str, *args: Any) -> Any:
            try:
                return on0(command, *args)
            except redis.ResponseError as exc:
                return exc

        def unavailable(got: Any) -> bool:
            return isinstance(got, redis.ResponseError) and "no live holder" in str(got)

        pid = svc.replica_pids()[1]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: unavailable(outcome("get", theirs[0])), timeout=20)
        # the dead one's keys: refused (or, once it is back, empty)
        for k in theirs:
            got = outcome("get", k)
            assert unavailable(got) or got is None, (k, got)
        # a write: refused, or applied in the joiner's backlog; never sent again
        try:
            probed: Any = survivor[0].incr(probe)
        except redis.ResponseError as exc:
            probed = exc
        assert unavailable(probed) or probed == 1, probed
        # the survivor's own keys keep working
        for k in mine:
            assert on0("get", k) == f"old {k}".encode()
            assert on0("set", k, f"new {k}")
        # reads while it restarts: the error, then (once it joined) empty
        seen: list[Any] = []

        def back_and_empty() -> bool:
            got = outcome("get", theirs[0])
            seen.append(got)
            status = svc.status()["replicas"][1]
            return got is None and bool(status["ready"]) and status["restarts"] == 1

        wait_for(back_and_empty, timeout=30)
        assert all(unavailable(got) or got is None for got in seen), seen
        assert svc.replica_pids()[1] != pid
        svc.wait_for_line("starts EMPTY")
        # everything works again; the dead one's partitions are empty
        back = pinned_pair(svc.port)
        for r in back.values():
            assert [r.get(k) for k in theirs] == [None] * len(theirs)
            assert r.hgetall(f"{{{theirs[0]}}}h") == {}
            assert [r.get(k) for k in mine] == [f"new {k}".encode() for k in mine]
            got_probe = r.get(probe)
            assert (got_probe == b"1") if probed == 1 else (got_probe in (None, b"1"))
            assert r.dbsize() == len(mine) + (got_probe is not None)
        for i, k in enumerate(theirs):
            assert back[i % 2].incr(k) == 1
            assert back[1 - i % 2].get(k) == b"1"
        for r in [*back.values(), survivor[0]]:
            r.close()
        settled(svc.run_dir)


def test_kill_9_with_two_copies_of_three_loses_no_acknowledged_transaction(
    tmp_path: Path,
) -> None:
    """3 replicas, copies=2: each partition on 2 of them, so killing one loses
    nothing.  Writers (one per replica) move 1 from x to y and count n, in one
    MULTI/EXEC across 3 partitions (held by {0,1}, {1,2}, {2,0}); readers read x
    and y in one.  Replica 1 is killed with SIGKILL meanwhile.  Readers always
    see x + y == 0; at the end every replica has the same x, y, n, and n counts
    every acknowledged transaction once, and at most the sends a broken
    connection cut (each may or may not have been applied)."""
    x = held_by(0, "x", 1, replicas=3)[0]
    y = held_by(1, "y", 1, replicas=3)[0]
    n = held_by(2, "n", 1, replicas=3)[0]
    assert {tuple(sorted(holders(k, 3, 2))) for k in (x, y, n)} == {(0, 1), (1, 2), (0, 2)}
    with partitioned(tmp_path / "run", 3, 2) as svc:
        transfers = Transfers(
            svc.port, x, y, n, writers=[0, 1, 2], readers=[0, 2], reconnect=lambda i: i != 1
        )
        with transfers:
            transfers.progress(200)
            os.kill(svc.replica_pids()[1], signal.SIGKILL)
            transfers.progress(200)
            svc.wait_restarted(1)
            transfers.progress(100)
        acked, cut = transfers.acked, transfers.cut
        assert transfers.errors == []
        assert transfers.reads
        assert all(int(a or 0) + int(b or 0) == 0 for a, b in transfers.reads)
        back = pinned_pair(svc.port, 3)
        finals = {(r.get(x), r.get(y), r.get(n)) for r in back.values()}
        for r in back.values():
            r.close()
        assert len(finals) == 1, finals
        ((fx, fy, fn),) = finals
        assert fx is not None
        assert fy is not None
        assert fn is not None
        assert int(fx) + int(fy) == 0
        assert fy == fn
        assert sum(acked) <= int(fn) <= sum(acked) + sum(cut), (acked, cut, fn)
        settled(svc.run_dir, 3)
        assert "starts EMPTY" not in svc.output


# --- copies changed under writers ------------------------------------------------------


def test_copies_2_to_1_and_back_under_8_writers_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    writers = 8
    counters = held_by(0, "w", writers // 2) + held_by(1, "w", writers // 2)
    data = [f"d:{i}" for i in range(200)]
    with partitioned(tmp_path / "run", 2, 2) as svc:
        assert held_partitions(svc) == [64, 64]
        setup = pinned_pair(svc.port)
        for i, k in enumerate(data):
            assert setup[i % 2].hset(k, mapping={"i": i, "from": i % 2})
        stop = threading.Event()
        acked = [0] * writers
        cut = [0] * writers
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                r = pinned(svc.port, w % 2)
                while not stop.is_set():
                    try:
                        got = r.incr(counters[w])
                    except redis.ConnectionError:
                        cut[w] += 1  # counted, not re-sent
                        r.close()
                        r = pinned(svc.port, w % 2)
                        continue
                    if cut[w] == 0:
                        assert got == acked[w] + 1
                    acked[w] += 1
                r.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        try:
            for copies, held, gained in (("1", [32, 32], "0"), ("2", [64, 64], "64")):
                progress(acked, errors, 200)
                assert reconfigured(svc, "kv", "copies", "shard", copies) == gained

                def moved(held: list[int] = held) -> bool:
                    return held_partitions(svc) == held

                wait_for(moved, timeout=30)
                # the data reads the same through both replicas meanwhile
                for i in range(0, len(data), 10):
                    want = {b"i": b"%d" % i, b"from": b"%d" % (i % 2)}
                    assert setup[0].hgetall(data[i]) == setup[1].hgetall(data[i]) == want
            progress(acked, errors, 200)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        for r in setup.values():
            r.close()
        on = pinned_pair(svc.port)
        finals = {i: [r.get(k) for k in counters] for i, r in on.items()}
        assert finals[0] == finals[1]
        for w, got in enumerate(finals[0]):
            assert got is not None
            assert acked[w] <= int(got) <= acked[w] + cut[w], (w, acked, cut, got)
        for i, k in enumerate(data):
            want = {b"i": b"%d" % i, b"from": b"%d" % (i % 2)}
            assert on[0].hgetall(k) == on[1].hgetall(k) == want
        for r in on.values():
            r.close()
        a, b = settled(svc.run_dir)
        # two copies again: every partition on both replicas, equal
        assert shard_parts(a) == shard_parts(b) == list(range(PARTITIONS))
        assert a == b


def test_partition_with_a_shared_log_or_bad_copies_is_refused_before_any_replica_starts(
    tmp_path: Path,
) -> None:
    """``--partition`` with ``--log nats://`` (or a bad value) fails at once, in one line."""
    base = [sys.executable, "-m", "dominoes", "run", "dominoes.components.kv:service"]
    base += ["--replicas", "2", "--run-dir", str(tmp_path / "run")]
    nats = ["--log", "nats://127.0.0.1:9", "--stream", "KV"]
    cases = [
        (["--partition", "copies=1", *nats], "without --log nats://"),
        (["--partition", "copies=0"], "copies must be at least 1"),
        (["--partition", "two"], "expected copies=K"),
    ]
    for extra, said in cases:
        done = subprocess.run(
            [*base, *extra], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0, extra
        assert said in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr


def test_counted_blocking_pops_in_a_transaction_run_in_their_keys_partition(
    on: dict[int, redis.Redis],
) -> None:
    """BLMPOP and BZMPOP queued in MULTI carry the client's id in the log, and
    their keys are counted after it: they run in their keys' partition, held by
    the other replica here, with or without WATCH (found by the differential
    test: they ran in partition 0, and WATCH refused them with CROSSSLOT)."""
    tag = tag_held_by(1)
    lst, zset = f"{tag}:list", f"{tag}:zset"
    r = on[0]
    assert r.rpush(lst, "a", "b", "c") == 3
    assert r.zadd(zset, {"m": 1, "n": 2}) == 2
    pipe = r.pipeline(transaction=True)
    pipe.blmpop(0.01, 1, lst, direction="LEFT")
    pipe.bzmpop(0.01, 1, [zset], min=True)
    assert pipe.execute() == [[lst.encode(), [b"a"]], [zset.encode(), [[b"m", b"1"]]]]
    with r.pipeline(transaction=True) as watched:
        watched.watch(lst)
        watched.multi()
        watched.blmpop(0.01, 1, lst, direction="RIGHT", count=2)
        assert watched.execute() == [[lst.encode(), [b"c", b"b"]]]
    assert on[1].exists(lst) == 0
    assert on[1].zrange(zset, 0, -1, withscores=True) == [(b"n", 2.0)]
