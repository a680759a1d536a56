"""Smoke tests of tests/natsserver.py with nats-py: a JetStream server and a
3-node cluster take writes, de-duplicate them by ``Nats-Msg-Id`` and give them
back in order; the cluster keeps every acknowledged write through the crash
of a stream's leader, and the crashed node rejoins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, Header, PubAck

from tests.natsserver import NatsCluster, NatsServer

pytestmark = pytest.mark.integration

STREAM = "SMOKE"
SUBJECT = "smoke.msgs"
N = 100
T = TypeVar("T")

#: What a publish may raise while a stream has no leader: no answer in time,
#: nobody listening on the subject (nats-py turns NoRespondersError into
#: NoStreamResponseError), a 503 "JetStream system temporarily unavailable",
#: or the client still reconnecting after its server was killed.
RETRYABLE: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def _retryable(e: Exception) -> bool:
    if isinstance(e, RETRYABLE):
        return True
    return isinstance(e, nats.js.errors.APIError) and (
        e.code == 503 or "temporarily unavailable" in (e.description or "")
    )


async def _connect(servers: list[str]) -> Client:
    return await nats.connect(
        servers,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
    )


async def _publish(
    js: JetStreamContext, i: int, deadline: float, errors: list[str] | None = None
) -> PubAck:
    """Publish message ``i`` (``Nats-Msg-Id: m-i``) until it is acknowledged:
    the id makes a retry of a write that was stored but not acknowledged a no-op."""
    while True:
        try:
            return await js.publish(
                SUBJECT, f"{i}".encode(), timeout=1.0, headers={Header.MSG_ID: f"m-{i}"}
            )
        except Exception as e:
            if not _retryable(e) or time.monotonic() >= deadline:
                raise
            if errors is not None:
                errors.append(f"{type(e).__module__}.{type(e).__qualname__}: {e}")
            await asyncio.sleep(0.05)


async def _read_all(js: JetStreamContext, count: int) -> list[tuple[int, int]]:
    """(stream sequence, payload) of the stream's first ``count`` messages,
    read by an ordered consumer from sequence 1."""
    sub = await js.subscribe(
        SUBJECT,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=1),
    )
    try:
        got = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=5.0)
            got.append((msg.metadata.sequence.stream, int(msg.data)))
        return got
    finally:
        await sub.unsubscribe()


async def _fill_and_check(js: JetStreamContext, replicas: int) -> None:
    """Create the stream, publish N messages and a duplicate, read them back."""
    await js.add_stream(name=STREAM, subjects=[SUBJECT], num_replicas=replicas)
    deadline = time.monotonic() + 10
    acks = [await _publish(js, i, deadline) for i in range(N)]
    assert [a.seq for a in acks] == list(range(1, N + 1))
    assert not any(a.duplicate for a in acks)

    again = await js.publish(SUBJECT, b"dup", headers={Header.MSG_ID: "m-7"})
    assert again.duplicate is True
    assert again.seq == 8
    info = await js.stream_info(STREAM)
    assert info.state.messages == N
    assert info.state.last_seq == N

    assert await _read_all(js, N) == [(i + 1, i) for i in range(N)]


@pytest.mark.one_loop
async def test_single_server(nats_server: NatsServer) -> None:
    nc = await _connect([nats_server.url])
    try:
        await _fill_and_check(nc.jetstream(), replicas=1)
    finally:
        await nc.close()


def _stream_state(cluster: NatsCluster, node: str) -> dict[str, object] | None:
    """The stream's state as ``node`` holds it (its /jsz), or None."""
    doc = cluster.node_named(node).jsz("accounts=true&streams=true") or {}
    for acc in doc.get("account_details") or []:
        for s in acc.get("stream_detail") or []:
            if s.get("name") == STREAM:
                state: dict[str, object] = s.get("state") or {}
                return state
    return None


async def _wait_for(what: str, check: Callable[[], T | None], seconds: float) -> T:
    """Poll ``check()`` (run in a thread: it may block) until truthy, for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not in {seconds}s")
        await asyncio.sleep(0.05)


@pytest.mark.one_loop
async def test_cluster_survives_stream_leader_crash(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    nc = await _connect(cluster.url_list)
    try:
        js = nc.jetstream(timeout=2.0)
        await _fill_and_check(js, replicas=3)

        leader = await _wait_for("a stream leader", lambda: cluster.stream_leader(STREAM), 10)
        victim = cluster.index_of(leader)
        cluster.kill(victim)

        # Writes resume once the two survivors elect a new stream leader.
        errors: list[str] = []
        killed_at = time.monotonic()
        first = await _publish(js, N, killed_at + 20, errors)
        took_over = time.monotonic() - killed_at
        acks = [first] + [await _publish(js, i, time.monotonic() + 10) for i in range(N + 1, 2 * N)]
        new_leader = await asyncio.to_thread(cluster.stream_leader, STREAM)
        assert new_leader not in (None, leader), (leader, new_leader)
        print(
            f"stream leader {leader} killed; {new_leader} took writes after {took_over:.2f}s;"
            f" publish errors meanwhile: {sorted(set(errors))}"
        )

        # One sequence per write: a write stored before its ack got lost is
        # retried under its id, and that retry's ack names the same sequence.
        assert [a.seq for a in acks] == list(range(N + 1, 2 * N + 1))

        cluster.restart(victim)
        await asyncio.to_thread(cluster.nodes[victim].wait_ready, 10)
        await asyncio.to_thread(cluster.wait_ready, 20)

        # The restarted node catches up with the writes it missed.
        def caught_up() -> bool | None:
            state = _stream_state(cluster, leader)
            return state is not None and state.get("messages") == 2 * N

        await _wait_for(f"{leader} to catch up", caught_up, 20)

        # No acknowledged write lost, none twice, all in the order acknowledged.
        info = await js.stream_info(STREAM)
        assert info.state.messages == 2 * N
        assert await _read_all(js, 2 * N) == [(i + 1, i) for i in range(2 * N)]
    finally:
        await nc.close()
