"""The KV service under redis-py (sync): every command group, pipelines, transactions,
WATCH across replicas and expiry, against ``dominoes run ... --replicas 2``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from .harness import Service
from .kv_helpers import client, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh(on: dict[int, redis.Redis]) -> None:
    on[0].flushall()


def seen_by_both(on: dict[int, redis.Redis], key: str, want: object) -> None:
    """Both replicas' GET of ``key`` is ``want`` at once, with no polling: a read on
    any replica sees every write acknowledged before it (invariant 8)."""
    for c in on.values():
        assert c.get(key) == want


def test_strings(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    assert r0.set("s", "v") is True
    seen_by_both(on, "s", b"v")
    assert r1.set("s", "w", nx=True) is None
    assert r1.set("s", "w", xx=True, get=True) == b"v"
    assert r0.set("n", 10, ex=100) is True
    assert r0.incr("n") == 11
    assert r0.incrby("n", 5) == 16
    assert r0.decr("n") == 15
    assert r0.decrby("n", 5) == 10
    assert r0.ttl("n") == 100  # INCR keeps the TTL
    assert r0.set("n", 10, keepttl=True) is True
    assert 99 <= r0.ttl("n") <= 100
    assert r0.incrbyfloat("f", 10.5) == 10.5
    assert r0.incrbyfloat("f", 0.1) == pytest.approx(10.6)
    assert r0.get("f") == b"10.6"
    assert r0.getset("s", "x") == b"w"
    assert r0.getdel("s") == b"x"
    assert r0.get("s") is None
    assert r0.mset({"a": 1, "b": 2}) is True
    assert r0.mget("a", "b", "zz") == [b"1", b"2", None]
    assert r0.setnx("a", 3) is False
    assert r0.append("a", "23") == 3
    assert r0.strlen("a") == 3
    seen_by_both(on, "a", b"123")
    assert r1.mget("a", "b") == [b"123", b"2"]


def test_errors_like_redis(on: dict[int, redis.Redis]) -> None:
    r = on[0]
    r.rpush("l", "x")
    r.set("t", "text")
    r.set("big", 2**63 - 1)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: r.get("l"), "WRONGTYPE Operation against a key holding the wrong kind of value"),
        (lambda: r.incr("t"), "value is not an integer or out of range"),
        (lambda: r.incr("big"), "increment or decrement would overflow"),
        (lambda: r.execute_command("SET", "k", "v", "NX", "XX"), "syntax error"),
        (lambda: r.execute_command("GET"), "wrong number of arguments for 'get' command"),
        (
            lambda: r.execute_command("FOO", "bar"),
            "unknown command 'FOO', with args beginning with: 'bar' ",
        ),
        (lambda: r.execute_command("SELECT", "1"), "DB index is out of range"),
    ]
    for call, message in cases:
        with pytest.raises(redis.ResponseError) as info:
            call()
        assert str(info.value) == message
    assert r.ping() is True  # the connection survives every error


def test_keys_and_scan(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    r0.mset({f"user:{i}": i for i in range(50)})
    r0.hset("h", "f", "v")
    assert r0.delete("user:0", "nope") == 1
    assert r0.unlink("user:1") == 1
    assert r0.exists("user:2", "user:2", "nope") == 2
    assert r0.type("h") == b"hash"
    assert r0.type("nope") == b"none"
    assert r1.dbsize() == 49
    assert sorted(r1.keys("user:1*")) == sorted(b"user:1%d" % i for i in range(10))
    assert sorted(r1.scan_iter(match="user:*", count=5)) == sorted(
        b"user:%d" % i for i in range(2, 50)
    )
    cursor, page = r1.scan(0, count=1000)
    assert cursor == 0
    assert len(page) == 49
    assert r0.rename("h", "h2") is True
    with pytest.raises(redis.ResponseError, match="no such key"):
        r0.rename("h", "h3")
    assert r0.flushdb() is True
    assert r1.dbsize() == 0


def test_hashes_lists_sets(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    assert r0.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r0.hget("h", "a") == b"1"
    assert r0.hincrby("h", "a", 5) == 6
    assert r0.hmget("h", "a", "b", "c") == [b"6", b"2", None]
    assert r0.hdel("h", "b", "c") == 1
    assert r1.hgetall("h") == {b"a": b"6"}
    assert r1.hlen("h") == 1
    assert r1.hexists("h", "a") is True
    assert r1.hkeys("h") == [b"a"]
    assert r1.hvals("h") == [b"6"]

    assert r0.rpush("l", "a", "b", "c") == 3
    assert r0.lpush("l", "z") == 4
    assert r1.lrange("l", 0, -1) == [b"z", b"a", b"b", b"c"]
    assert r1.llen("l") == 4
    assert r1.lindex("l", -1) == b"c"
    assert r0.lpop("l") == b"z"
    assert r0.rpop("l", 2) == [b"c", b"b"]
    assert r0.lpop("l", 5) == [b"a"]
    assert r0.lpop("l", 5) is None

    assert r0.sadd("s", "a", "b", "a") == 2
    assert r0.srem("s", "b", "x") == 1
    assert r1.smembers("s") == {b"a"}
    assert r1.sismember("s", "a") == 1
    assert r1.scard("s") == 1


def test_pipeline_without_transaction_keeps_order_and_reads_its_writes(
    on: dict[int, redis.Redis],
) -> None:
    r = on[1]
    pipe = r.pipeline(transaction=False)
    pipe.get("p")
    for i in range(100):
        pipe.set("p", i)
        pipe.get("p")
        pipe.incr("p")
    pipe.lpush("p", "x")  # an error in the middle does not stop the rest
    pipe.get("p")
    out = pipe.execute(raise_on_error=False)
    assert out[0] is None
    for i in range(100):
        assert out[1 + 3 * i : 4 + 3 * i] == [True, str(i).encode(), i + 1]
    assert isinstance(out[-2], redis.ResponseError)
    assert out[-1] == b"100"


def test_multi_exec_pipeline(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    pipe = r0.pipeline(transaction=True)
    # redis-py types a pipeline's commands as the client's: they return the pipeline
    pipe.set("t", 1).incr("t").get("t").rpush("tl", "a").lrange("tl", 0, -1)  # type: ignore[union-attr]
    assert pipe.execute() == [True, 2, b"2", 1, [b"a"]]
    seen_by_both(on, "t", b"2")
    pipe = r1.pipeline(transaction=True)
    pipe.set("t", "text").incr("t").get("t")  # type: ignore[union-attr]
    out = pipe.execute(raise_on_error=False)
    assert out[0] is True
    assert isinstance(out[1], redis.ResponseError)
    assert out[2] == b"text"


def test_watch_conflict_between_replicas(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    r0.set("balance", 100)
    seen_by_both(on, "balance", b"100")
    with r0.pipeline() as pipe:
        pipe.watch("balance")
        # watching, a pipeline runs a command at once and returns its reply
        current = int(pipe.get("balance"))  # type: ignore[arg-type]
        r1.set("balance", 50)  # another client, on the other replica
        assert r0.get("balance") == b"50"
        pipe.multi()
        pipe.set("balance", current + 1)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r0.get("balance") == b"50"

    def credit(pipe: redis.client.Pipeline) -> None:
        value = int(pipe.get("balance"))  # type: ignore[arg-type]
        pipe.multi()
        pipe.set("balance", value + 10)

    r1.transaction(credit, "balance")
    seen_by_both(on, "balance", b"60")


def test_concurrent_watch_retries_lose_no_update(svc: Service) -> None:
    clients = [client(svc.port) for _ in range(6)]

    def credit(pipe: redis.client.Pipeline) -> None:
        value = int(pipe.get("counter") or 0)
        pipe.multi()
        pipe.set("counter", value + 1)

    import threading

    def work(r: redis.Redis) -> None:
        for _ in range(20):
            r.transaction(credit, "counter")

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert clients[0].get("counter") == b"120"
    for c in clients:
        c.close()


def test_expiry_is_observed_on_both_replicas(on: dict[int, redis.Redis]) -> None:
    r0, r1 = on[0], on[1]
    r0.set("kept", "v", ex=100)
    r0.set("later", "v")
    # "gone" lasts 300 ms of wall clock: it is SET last and read at once (a
    # read on any replica sees an acknowledged write: no polling), so only
    # two round trips, not five and a poll loop, must fit in its 300 ms.
    r0.set("gone", "v", px=300)
    assert r1.get("gone") == b"v"
    assert 0 < r1.pttl("gone") <= 300
    assert r0.pexpire("later", 400) is True
    wait_for(lambda: r0.get("gone") is None and r1.get("gone") is None, timeout=5)
    wait_for(lambda: r0.get("later") is None and r1.get("later") is None, timeout=5)
    assert r1.get("kept") == b"v"
    assert r1.ttl("gone") == -2
    assert r0.persist("kept") is True
    assert r1.ttl("kept") == -1
    # the active expiry (a replicated timer) deleted them from both replicas' state
    wait_for(lambda: all(int(c.info("stats")["expired_keys"]) >= 2 for c in on.values()))
    wait_for(lambda: all(c.dbsize() == 1 for c in on.values()))


def test_resp3_client(svc: Service) -> None:
    r = client(svc.port, protocol=3)
    r.hset("h3", mapping={"f": "v"})
    r.sadd("s3", "m")
    assert r.hgetall("h3") == {b"f": b"v"}
    assert r.smembers("s3") == {b"m"}
    assert r.get("none") is None
    assert "replica_index" in r.info("dominoes")
    r.close()


def test_client_commands(on: dict[int, redis.Redis]) -> None:
    r = on[0]
    assert r.client_setname("worker") is True
    assert r.client_getname() == "worker"
    assert isinstance(r.client_id(), int)
    assert r.echo("hi") == b"hi"
    assert r.ping() is True
    assert r.command_count() > 50
    assert r.command()["get"]["arity"] == 2
    info = r.info()
    assert info["redis_version"]
    dom = r.info("dominoes")
    assert {"replica_index", "replica_core", "applied_seq", "lag"} <= set(dom)
