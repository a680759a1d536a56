"""The KV service under redis.asyncio: concurrent clients on both replicas, pipelines,
transactions, WATCH across replicas, and pub/sub across replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from .harness import Service
from .kv_helpers import async_clients_on_every_replica

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Await ``check()`` until it is true: for what no reply acknowledges (a closed
    subscriber's clean-up).  An acknowledged write needs no polling (invariant 8)."""
    async with asyncio.timeout(10):
        for delay in itertools.repeat(0.01):  # polling: the other replica signals nothing
            if await check():
                return
            await asyncio.sleep(delay)


async def test_concurrent_incrs_from_both_replicas_all_count(svc: Service) -> None:
    on = await async_clients_on_every_replica(svc.port)
    await on[0].delete("hits")
    pool = aioredis.Redis(port=svc.port, max_connections=20)

    async def worker(r: aioredis.Redis, n: int) -> None:
        for _ in range(n):
            await r.incr("hits")

    await asyncio.gather(
        worker(on[0], 200), worker(on[1], 200), *[worker(pool, 30) for _ in range(10)]
    )

    async def both_see_total() -> bool:
        return all([await c.get("hits") == b"700" for c in on.values()])

    assert await both_see_total()  # at once: reads see acknowledged writes (invariant 8)
    await pool.aclose()
    for c in on.values():
        await c.aclose()


async def test_pipelines_and_transactions(svc: Service) -> None:
    on = await async_clients_on_every_replica(svc.port)
    r0, r1 = on[0], on[1]
    await r0.delete("ap", "al", "counter-a")  # the module's service outlives a test
    async with r1.pipeline(transaction=False) as pipe:
        # redis-py types a pipeline's commands as the client's: they return the pipeline
        for i in range(50):
            pipe.set("ap", i).get("ap")  # type: ignore[attr-defined]
        pipe.rpush("al", "a", "b").lrange("al", 0, -1).hset("ap", "f", "v")  # type: ignore[attr-defined]
        out = await pipe.execute(raise_on_error=False)
    assert out[:4] == [True, b"0", True, b"1"]
    assert out[98:100] == [True, b"49"]
    assert out[100:102] == [2, [b"a", b"b"]]
    assert isinstance(out[102], ResponseError)
    async with r0.pipeline(transaction=True) as pipe:
        pipe.incr("counter-a").incr("counter-a").get("counter-a")  # type: ignore[attr-defined]
        assert (await pipe.execute())[2] == b"2"
    for c in on.values():
        await c.aclose()


async def test_watch_conflict_between_replicas(svc: Service) -> None:
    on = await async_clients_on_every_replica(svc.port)
    r0, r1 = on[0], on[1]
    await r0.set("stock", 10)
    assert await _equals(r1, "stock", b"10")
    async with r1.pipeline(transaction=True) as pipe:
        await pipe.watch("stock")
        # watching, a pipeline runs a command at once and returns its reply
        left = int(await pipe.get("stock"))  # type: ignore[arg-type]
        await r0.decr("stock")  # someone else, on replica 0
        assert await _equals(r1, "stock", b"9")
        pipe.multi()
        pipe.set("stock", left - 1)
        with pytest.raises(WatchError):
            await pipe.execute()
    for c in on.values():
        await c.aclose()


async def _equals(r: aioredis.Redis, key: str, want: bytes) -> bool:
    return bool(await r.get(key) == want)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_subscriber_on_one_replica_gets_a_publish_sent_through_the_other(
    svc: Service, protocol: int
) -> None:
    subs = await async_clients_on_every_replica(svc.port, protocol=protocol)
    pubs = await async_clients_on_every_replica(svc.port)
    pubsub = subs[1].pubsub()
    await pubsub.subscribe("news")
    await pubsub.psubscribe("new*")
    confirmations = [await pubsub.get_message(timeout=5) for _ in range(2)]
    assert [m["type"] for m in confirmations if m] == ["subscribe", "psubscribe"]
    # the count covers both replicas: one channel and one pattern subscription
    assert await pubs[0].publish("news", "through replica 0") == 2
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None, "no message arrived"
        got.append(message)
    assert sorted((m["type"], m["data"]) for m in got) == [
        ("message", b"through replica 0"),
        ("pmessage", b"through replica 0"),
    ]
    # a subscriber on replica 0 too: PUBLISH counts receivers on every replica
    other = subs[0].pubsub()
    await other.subscribe("news")
    assert (await other.get_message(timeout=5))["type"] == "subscribe"
    assert await pubs[1].publish("news", "again") == 3
    assert (await other.get_message(ignore_subscribe_messages=True, timeout=5))["data"] == b"again"
    await pubsub.unsubscribe("news")
    await pubsub.punsubscribe("new*")
    await other.aclose()
    await pubsub.aclose()

    async def nobody_left() -> bool:
        return bool(await pubs[0].publish("news", "x") == 0)

    await eventually(nobody_left)
    for c in [*subs.values(), *pubs.values()]:
        await c.aclose()


async def test_concurrent_pipelines_each_get_their_own_replies_in_order(svc: Service) -> None:
    """Many connections' batches share log entries (the server's group); each connection
    must still get exactly its own replies, in its order, transactions included."""
    clients = [aioredis.Redis(port=svc.port) for _ in range(16)]
    # the counters start at 0 (the module's service outlives a test)
    await clients[0].delete(*(f"g:{i}:{c}" for i in range(16) for c in "nt"))

    async def worker(i: int, r: aioredis.Redis) -> None:
        for round_ in range(20):
            key = f"g:{i}:{round_}"
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(key, "a").append(key, str(i)).get(key).incr(f"g:{i}:n")  # type: ignore[attr-defined]
                pipe.get(f"g:{i}:n")
                out = await pipe.execute()
            assert out == [
                True,
                1 + len(str(i)),
                f"a{i}".encode(),
                round_ + 1,
                b"%d" % (round_ + 1),
            ]
            async with r.pipeline(transaction=True) as tx:
                tx.incr(f"g:{i}:t").get(key)  # type: ignore[attr-defined]
                assert await tx.execute() == [round_ + 1, f"a{i}".encode()]

    await asyncio.gather(*(worker(i, r) for i, r in enumerate(clients)))
    on = await async_clients_on_every_replica(svc.port)

    async def both_converged() -> bool:
        values = [await c.mget([f"g:{i}:t" for i in range(16)]) for c in on.values()]
        return all(v == [b"20"] * 16 for v in values)

    assert await both_converged()
    for c in [*clients, *on.values()]:
        await c.aclose()
