"""One state, seen from anywhere: a write acknowledged on one replica is seen by
the next read on any replica (invariant 8, docs/design/invariants.md), as a user would check it.

The loop: ``SET k i`` on a connection that landed on replica 0, wait for its
reply, then ``GET k`` on a connection that landed on replica 1 (and the other
way round).  Before linearizable reads, hundreds of 5,000 such GETs returned
an older value.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dominoes.components.kv import Commands

import dominoes

from .harness import Service
from .kv_helpers import client, clients_on_every_replica

ROUNDS = 10_000
#: Under four background writers each round is slower; 3,000 still cross the
#: other replica's apply of the noise thousands of times.
BUSY_ROUNDS = 3_000


def stale_reads(
    on: dict[int, redis.Redis], rounds: int, key: str
) -> list[tuple[int, bytes | str | None]]:
    """Write on one replica, read on the other, alternating; the reads that missed."""
    stale = []
    for i in range(rounds):
        writer, reader = (on[0], on[1]) if i % 2 == 0 else (on[1], on[0])
        assert writer.set(key, i)
        got = reader.get(key)
        if got != b"%d" % i:
            stale.append((i, got))
    return stale


def test_every_read_sees_the_write_acknowledged_on_the_other_replica(
    on: dict[int, redis.Redis],
) -> None:
    stale = stale_reads(on, ROUNDS, "ab:idle")
    assert stale == [], f"{len(stale)} of {ROUNDS} reads were stale, first {stale[:5]}"


@pytest.fixture
def background_writers(svc: Service) -> Iterator[None]:
    """Four clients pipelining writes on other keys until the test ends (both replicas)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with client(svc.port) as r:
                i = 0
                while not stop.is_set():
                    pipe = r.pipeline(transaction=False)
                    for _ in range(16):
                        pipe.set(f"ab:noise:{n}", i)
                        pipe.incr(f"ab:count:{n}")
                        i += 1
                    pipe.execute()
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors


@pytest.mark.usefixtures("background_writers")
def test_every_read_sees_the_acknowledged_write_under_background_writes(
    on: dict[int, redis.Redis],
) -> None:
    stale = stale_reads(on, BUSY_ROUNDS, "ab:busy")
    assert stale == [], f"{len(stale)} of {BUSY_ROUNDS} reads were stale, first {stale[:5]}"


def test_every_read_sees_a_write_a_local_client_had_acknowledged(
    svc: Service, on: dict[int, redis.Redis]
) -> None:
    """The write goes through ``dominoes.connect`` (a ``race`` entry: whichever
    replica claims it applies it first and replies); the read through either
    replica's RESP connection."""

    async def main() -> list[tuple[int, int, bytes | str | None]]:
        stale = []
        async with await dominoes.connect("kv", run_dir=svc.run_dir) as c:
            for i in range(ROUNDS):
                (value,) = await c.submit(Commands.run, [[b"INCR", b"ab:local"]])
                got = on[i % 2].get("ab:local")
                if got != b"%d" % value:
                    stale.append((value, i % 2, got))
        return stale

    stale = asyncio.run(main())
    assert stale == [], f"{len(stale)} of {ROUNDS} reads were stale, first {stale[:5]}"


def test_local_reads_are_an_explicit_opt_in_that_can_be_stale(tmp_path: Path) -> None:
    """The same loop against ``--reads local``: the stale reads this file guards
    against show up (so the tests above can fail)."""
    from .kv_helpers import kv_service

    with kv_service(tmp_path / "run", args=("--reads", "local")) as local:
        on = clients_on_every_replica(local.port)
        try:
            assert on[0].info("dominoes")["reads"] == "local"
            found = 0
            for attempt in range(20):  # bounded: each round is 2,000 writes
                found = len(stale_reads(on, 2000, f"ab:local:{attempt}"))
                if found:
                    break
            assert found > 0
        finally:
            for r in on.values():
                r.close()
