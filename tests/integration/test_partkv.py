"""``examples.partkv``: a Redis-protocol store partitioned across 2 replicas, through redis-py.

Its replies are compared with a real redis-server's (the oracle) for random
command sequences sent through connections on either replica, and a write
acknowledged on one replica is read on the other, whichever holds the key.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.partkv import SPEC

from .harness import Service, running, wait_until
from .kv_helpers import _pings, clients_on_every_replica, pinned, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server (the oracle) is not installed"
)


@pytest.fixture(scope="module")
def partkv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    run_dir = tmp_path_factory.mktemp("partkv") / "run"
    with running("examples.partkv:service", run_dir) as svc:
        wait_for(lambda: _pings(svc.port), timeout=20)
        yield svc


@pytest.fixture(scope="module")
def on(partkv: Service) -> Iterator[dict[int, redis.Redis]]:
    clients = clients_on_every_replica(partkv.port)
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def oracle(oracle_port: int) -> Iterator[redis.Redis]:
    r = redis.Redis(port=oracle_port, single_connection_client=True, socket_timeout=10)
    yield r
    r.close()


KEYS = [b"a", b"b", b"c", b"n", b"{t}x", b"{t}y", b"{t}z"]
key = st.sampled_from(KEYS)
tagged = st.lists(st.sampled_from(KEYS[4:]), min_size=1, max_size=3)
value = st.sampled_from([b"1", b"-7", b"x", b"9223372036854775807", b""])
command = st.one_of(
    st.tuples(st.just("SET"), key, value),
    st.tuples(st.just("GET"), key),
    st.tuples(st.just("INCR"), key),
    st.tuples(st.just("INCRBY"), key, st.sampled_from([b"3", b"-100", b"z"])),
    st.tuples(st.just("DEL"), key).map(list),
    st.tuples(st.just("DEL"), tagged).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.just("EXISTS"), tagged).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.just("MGET"), tagged).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.just("MSET"), tagged, value).map(
        lambda t: [t[0], *(w for k in t[1] for w in (k, t[2]))]
    ),
)


transaction = st.lists(command, min_size=1, max_size=4).map(lambda cs: ["TX", cs])


def reply(r: redis.Redis, args: Any) -> Any:
    if args[0] == "TX":  # MULTI, the commands (each QUEUED), EXEC: the array of replies
        out = [reply(r, ["MULTI"])]
        out += [reply(r, cmd) for cmd in args[1]]
        got = reply(r, ["EXEC"])
        if got[0] == "ok":
            got = ("ok", [g if not isinstance(g, redis.ResponseError) else "error" for g in got[1]])
        return [*out, got]
    try:
        return ("ok", r.execute_command(*args))
    except redis.ResponseError as exc:
        return ("error", str(exc).split(" ", 1)[0])  # the error code: ERR, WRONGTYPE


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    script=st.lists(
        st.tuples(st.integers(0, 1), st.one_of(command, transaction)), min_size=1, max_size=25
    )
)
def test_replies_match_redis_server_from_either_replica(
    on: dict[int, redis.Redis], oracle: redis.Redis, script: list[tuple[int, Any]]
) -> None:
    on[0].flushall()
    oracle.flushall()
    for replica, cmd in script:
        assert reply(on[replica], cmd) == reply(oracle, cmd), cmd
    for k in KEYS:
        assert on[0].get(k) == on[1].get(k) == oracle.get(k)
    assert on[0].dbsize() == on[1].dbsize() == oracle.dbsize()


def test_a_write_on_one_replica_is_read_on_the_other(on: dict[int, redis.Redis]) -> None:
    keys = [f"key:{i}" for i in range(40)]
    assert {SPEC.holders(SPEC.of(k), 2)[0] for k in keys} == {0, 1}
    for i in range(2000):
        k = keys[i % len(keys)]
        writer, reader = (on[0], on[1]) if i % 2 else (on[1], on[0])
        assert writer.set(k, i)
        assert reader.get(k) == b"%d" % i


def test_keys_of_different_partitions_in_one_command_are_refused(
    on: dict[int, redis.Redis],
) -> None:
    a, b = next((f"a{i}", f"b{i}") for i in range(100) if SPEC.of(f"a{i}") != SPEC.of(f"b{i}"))
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        on[0].mset({a: 1, b: 2})
    assert on[1].get(a) is None  # nothing of it was applied
    assert on[0].mset({"{u}a": 1, "{u}b": 2})
    assert on[1].mget("{u}a", "{u}b") == [b"1", b"2"]


def test_a_pipeline_answers_in_order_across_partitions(on: dict[int, redis.Redis]) -> None:
    pipe = on[0].pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"p{i}", i)
        pipe.incr(f"p{i}")
        pipe.get(f"p{i}")
    got = pipe.execute()
    assert got == [x for i in range(200) for x in (True, i + 1, b"%d" % (i + 1))]


def test_a_transaction_across_partitions_is_atomic_under_kill_9(tmp_path: Path) -> None:
    """Each partition on 2 of 3 replicas; x and y in different partitions.  Writers
    increment both in one MULTI/EXEC, readers read both in one, and one replica is
    killed with SIGKILL meanwhile: no reader ever sees them differ, and at the end
    they are equal and count every acknowledged transaction."""
    x, y = next((f"x{i}", f"y{i}") for i in range(100) if SPEC.of(f"x{i}") != SPEC.of(f"y{i}"))
    with running("examples.partkv:copies2", tmp_path / "run", replicas=3) as svc:
        wait_for(lambda: _pings(svc.port), timeout=20)
        on = clients_on_every_replica(svc.port, 3)
        stop = threading.Event()
        acked = [0] * 3
        seen: list[tuple[bytes, bytes]] = []
        errors: list[BaseException] = []

        def connection(wanted: Callable[[int], bool]) -> redis.Redis:
            """A client whose one connection landed on a replica ``wanted`` accepts.

            Its pool holds one connection, so its pipelines run there too (a
            ``single_connection_client``'s pipelines take a connection from the
            pool, which may land on any replica, the killed one included).
            redis-py retries a command whose connection broke, on a new
            connection: a transaction the killed replica had appended would be
            applied twice, once per send.  No retries here, so each send is one
            transaction.
            """
            return pinned(svc.port, wanted)

        # sends cut by a broken connection: each may or may not have been applied
        cut = [0] * 3

        def write(index: int) -> None:
            try:
                r = connection(lambda i: i == index)
                while not stop.is_set():
                    pipe = r.pipeline(transaction=True)
                    pipe.incr(x)
                    pipe.incr(y)
                    try:
                        a, b = pipe.execute()
                    except redis.ConnectionError:  # the killed replica's: go on elsewhere
                        cut[index] += 1
                        r.close()
                        r = connection(lambda i: i != 1)
                        continue
                    assert a == b
                    acked[index] += 1
                r.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def read() -> None:
            try:
                r = connection(lambda i: i != 1)
                while not stop.is_set():
                    pipe = r.pipeline(transaction=True)
                    pipe.get(x)
                    pipe.get(y)
                    try:
                        seen.append(tuple(pipe.execute()))
                    except redis.ConnectionError:
                        r.close()
                        r = connection(lambda i: i != 1)
                r.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(acked) > 300, timeout=30)
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        done = sum(acked)
        wait_until(lambda: sum(acked) > done + 300, timeout=30)
        svc.wait_restarted(1)
        done = sum(acked)
        wait_until(lambda: sum(acked) > done + 100, timeout=30)
        stop.set()
        for t in threads:
            t.join()
        for r in on.values():
            r.close()
        assert errors == []
        assert seen
        assert all(a == b for a, b in seen)
        back = clients_on_every_replica(svc.port, 3)
        finals = {(r.get(x), r.get(y)) for r in back.values()}
        for r in back.values():
            r.close()
        assert len(finals) == 1
        ((a, b),) = finals
        assert a == b
        assert isinstance(a, bytes)
        # every acknowledged one counted, each once; a send cut by a broken
        # connection may be too (the killed replica's last, at least)
        assert sum(acked) <= int(a) <= sum(acked) + sum(cut)
