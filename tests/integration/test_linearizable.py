"""Histories recorded against a real 2-replica KV service, checked for linearizability.

Eight ``redis.asyncio`` clients, each on its own connection, four on each
replica (``INFO dominoes`` names a connection's replica), run SET, GET and
INCR on three keys; every operation is recorded with ``time.monotonic_ns()``
at invocation and response, and tests/lincheck.py checks the history.  The
clients share one event loop, so a response is stamped as soon as its
coroutine resumes: intervals can only come out wider than the real ones,
which may hide a violation but never invents one.

* Test A: default settings (linearizable reads) -> the history is linearizable.
* Test B: ``--reads local`` (a replica answers reads from its state as it
  is) -> stale reads; the workload makes them likely (a write acknowledged by
  one replica, then at once a read of the key on the other) and runs rounds
  until the checker finds one, for up to ``STALE_BUDGET_S``.

``DOMINOES_LINCHECK_SECONDS`` sets test A's duration (default 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.lincheck import CheckResult, Op, check

from .harness import Service
from .kv_helpers import kv_service

pytestmark = pytest.mark.integration

#: How long test A's clients run.
DURATION_S = float(os.environ.get("DOMINOES_LINCHECK_SECONDS", "10"))
#: Test B's rounds stop once a violation is found, or after this long.
STALE_BUDGET_S = 20.0
#: One round of test B (a short history: quick to check, and to explain).
ROUND_S = 1.0
#: Connections per replica (two replicas).
PER_REPLICA = 4
#: Keys per workload.
KEYS = 3
#: A reply slower than this counts as lost (the history records it as pending).
OP_TIMEOUT_S = 10.0
#: Connections to open while looking for PER_REPLICA on each replica.
MAX_CONNECT_TRIES = 200

_LOST = (redis.ConnectionError, redis.TimeoutError, asyncio.TimeoutError, OSError)


class ClientLostError(Exception):
    """A client's operation got no response: the client stops."""


class Recorder:
    """The history of every client's operations."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.lost = 0

    async def call(
        self, client: int, conn: aioredis.Redis, op: str, key: str, arg: str | None = None
    ) -> Any:
        invoke = time.monotonic_ns()
        try:
            if op == "SET":
                assert arg is not None, "SET needs a value"
                result: Any = await conn.set(key, arg)
            elif op == "GET":
                result = await conn.get(key)
            else:
                result = await conn.incr(key)
        except redis.ResponseError as exc:
            if op != "INCR":
                raise
            result = exc  # INCR on a value that is not an integer (never written here)
        except _LOST as exc:
            # It may or may not have taken effect: pending for the checker.
            self.ops.append(Op(client, op, key, arg, None, invoke, math.inf))
            self.lost += 1
            raise ClientLostError(f"client {client}: {op} {key}: {exc!r}") from exc
        self.ops.append(Op(client, op, key, arg, result, invoke, time.monotonic_ns()))
        return result


@contextlib.contextmanager
def kv(tmp_path: Path, *args: str) -> Iterator[Service]:
    with kv_service(tmp_path / "run", replicas=2, args=args) as svc:
        yield svc


@contextlib.asynccontextmanager
async def spread_clients(port: int) -> AsyncIterator[dict[int, list[aioredis.Redis]]]:
    """PER_REPLICA connections on each replica (SO_REUSEPORT spreads them; extras closed)."""
    found: dict[int, list[aioredis.Redis]] = {0: [], 1: []}
    try:
        for _ in range(MAX_CONNECT_TRIES):
            conn = aioredis.Redis(
                host="127.0.0.1",
                port=port,
                socket_timeout=OP_TIMEOUT_S,
                socket_connect_timeout=OP_TIMEOUT_S,
                single_connection_client=True,
            )
            replica = int((await conn.info("dominoes"))["replica_index"])
            if len(found[replica]) < PER_REPLICA:
                found[replica].append(conn)
            else:
                await conn.aclose()
            if all(len(c) == PER_REPLICA for c in found.values()):
                break
        counts = {r: len(c) for r, c in found.items()}
        assert all(n == PER_REPLICA for n in counts.values()), (
            f"after {MAX_CONNECT_TRIES} connections, per replica: {counts}"
        )
        yield found
    finally:
        for conns in found.values():
            for conn in conns:
                await conn.aclose()


def fresh_keys(n: int) -> list[str]:
    """Keys no earlier operation touched (the checker assumes they start missing)."""
    tag = uuid.uuid4().hex[:8]
    return [f"lin:{tag}:{i}" for i in range(n)]


def failure(result: CheckResult, recorder: Recorder) -> str:
    return (
        f"{result.status}: {result.ops} ops checked, {recorder.lost} lost, "
        f"{result.nodes} search nodes\n{result}"
    )


# --- test A: random operations, default settings ----------------------------------------


async def random_client(
    recorder: Recorder, client: int, conn: aioredis.Redis, keys: list[str], deadline: float
) -> None:
    rnd = random.Random(client)
    n = 0
    while time.monotonic() < deadline:
        key = rnd.choice(keys)
        roll = rnd.random()
        if roll < 0.3:
            n += 1
            # Distinct values (INCRs on them stay distinct too): a read names its write.
            await recorder.call(client, conn, "SET", key, str((client + 1) * 10**9 + n * 10**4))
        elif roll < 0.7:
            await recorder.call(client, conn, "GET", key)
        else:
            await recorder.call(client, conn, "INCR", key)


async def record_random(port: int, seconds: float) -> Recorder:
    recorder = Recorder()
    keys = fresh_keys(KEYS)
    async with spread_clients(port) as on:
        conns = on[0] + on[1]
        deadline = time.monotonic() + seconds
        results = await asyncio.gather(
            *(random_client(recorder, i, c, keys, deadline) for i, c in enumerate(conns)),
            return_exceptions=True,
        )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ClientLostError):
            raise r
    return recorder


@pytest.mark.one_loop
async def test_default_reads_are_linearizable(tmp_path: Path) -> None:
    with kv(tmp_path) as svc:
        started = time.monotonic()
        recorder = await record_random(svc.port, DURATION_S)
        recorded = time.monotonic()
        result = check(recorder.ops)
        checked = time.monotonic()
    print(
        f"{len(recorder.ops)} ops in {recorded - started:.1f}s, "
        f"checked in {checked - recorded:.1f}s ({result.nodes} nodes)"
    )
    assert result.ok, failure(result, recorder)
    assert recorder.lost == 0, f"{recorder.lost} operations got no response"
    # Every client (four on each replica) ran, and the run meant something.
    assert len({op.client for op in recorder.ops}) == 2 * PER_REPLICA
    assert len(recorder.ops) >= 200, f"only {len(recorder.ops)} operations in {DURATION_S}s"


# --- test B: --reads local, reads on one replica right after writes on the other --------


async def write_then_read(
    recorder: Recorder,
    pair: int,
    writer: aioredis.Redis,
    reader: aioredis.Redis,
    key: str,
    deadline: float,
) -> None:
    """SET on one replica; once it is acknowledged, GET the key on the other."""
    n = 0
    while time.monotonic() < deadline:
        n += 1
        await recorder.call(2 * pair, writer, "SET", key, str(n))
        await recorder.call(2 * pair + 1, reader, "GET", key)


async def record_cross_reads(on: dict[int, list[aioredis.Redis]], seconds: float) -> Recorder:
    """Four writer/reader pairs, two writing on each replica, one key each."""
    recorder = Recorder()
    keys = fresh_keys(PER_REPLICA)
    deadline = time.monotonic() + seconds
    pairs = [(on[p % 2][p // 2], on[1 - p % 2][p // 2 + 2]) for p in range(PER_REPLICA)]
    results = await asyncio.gather(
        *(write_then_read(recorder, p, w, r, keys[p], deadline) for p, (w, r) in enumerate(pairs)),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ClientLostError):
            raise r
    return recorder


@pytest.mark.one_loop
async def test_local_reads_are_caught_stale(tmp_path: Path) -> None:
    with kv(tmp_path, "--reads", "local") as svc:
        async with spread_clients(svc.port) as on:
            end = time.monotonic() + STALE_BUDGET_S
            rounds = ops = 0
            while time.monotonic() < end:
                rounds += 1
                recorder = await record_cross_reads(on, ROUND_S)
                ops += len(recorder.ops)
                result = check(recorder.ops)
                if result.status == "violation":
                    break
                assert result.ok, failure(result, recorder)
    print(f"round {rounds} ({ops} ops in all):\n{result}")
    assert result.status == "violation", (
        f"no stale read found in {rounds} rounds ({ops} ops, {STALE_BUDGET_S}s) with --reads local"
    )
