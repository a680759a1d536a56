"""Blocking pops (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP).

The waiter and the pusher are on different replicas: a waiter is replicated
state, served by the push's entry on every replica, and answered by its own
replica.  Each scenario runs against a 2-replica KV and a real redis-server
7.0 (the oracle), with the same connections' roles, and the replies and the
keys' final values must be equal, in RESP2 and RESP3.

"Blocked" is observed, never slept for: the pusher waits until INFO's
``blocked_clients`` counts the waiters (on the KV it is replicated state, so
the pusher's own replica shows the other replica's waiter once it applied it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from .harness import Service
from .kv_helpers import client, clients_on_every_replica, kv_service, redis_oracle, wait_for

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

KEYS = ["q", "q2", "src", "dst", "z", "z2", "s", "st", "st2"]


def _raw(r: redis.Redis) -> redis.Redis:
    r.response_callbacks.clear()  # compare what the server said, not redis-py's reading of it
    return r


class Target:
    """One system under comparison: four connections (waiters, pushers) and an observer."""

    def __init__(self, name: str, conns: list[redis.Redis], observer: redis.Redis) -> None:
        self.name = name
        self.conns = conns
        self.observer = observer

    def blocked(self) -> int:
        return int(self.observer.info("clients")["blocked_clients"])

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in KEYS:
            kind = self.observer.type(key)
            if kind == b"list":
                out[key] = self.observer.lrange(key, 0, -1)
            elif kind == b"zset":
                out[key] = self.observer.zrange(key, 0, -1, withscores=True)
            elif kind == b"stream":
                groups = [
                    (g["name"], g["pending"], g["last-delivered-id"])
                    for g in self.observer.xinfo_groups(key)
                ]
                out[key] = (self.observer.xrange(key), groups)
            elif kind != b"none":
                out[key] = (kind, self.observer.dump(key) if kind != b"string" else
                            self.observer.get(key))  # fmt: skip
        return out


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with kv_service(tmp_path_factory.mktemp("kv-blocking")) as svc:
        yield svc


@pytest.fixture(scope="module")
def oracle_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with redis_oracle(tmp_path_factory.mktemp("blocking-oracle")) as r:
        if not str(r.info("server")["redis_version"]).startswith("7.0"):
            pytest.skip("the oracle is Redis 7.0")
        yield int(r.connection_pool.connection_kwargs["port"])


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def targets(
    request: pytest.FixtureRequest, kv: Service, oracle_port: int
) -> Iterator[list[Target]]:
    protocol = request.param
    opened: list[redis.Redis] = []

    def kv_target() -> Target:
        # connections 0 and 2 on replica 0, 1 and 3 on replica 1
        a = clients_on_every_replica(kv.port, protocol=protocol)
        b = clients_on_every_replica(kv.port, protocol=protocol)
        conns = [_raw(a[0]), _raw(a[1]), _raw(b[0]), _raw(b[1])]
        observer = client(kv.port)
        opened.extend([*conns, observer])
        return Target("kv", conns, observer)

    def oracle_target() -> Target:
        conns = [_raw(client(oracle_port, protocol=protocol)) for _ in range(4)]
        observer = client(oracle_port)
        opened.extend([*conns, observer])
        return Target("redis", conns, observer)

    both = [kv_target(), oracle_target()]
    for t in both:
        t.observer.flushall()
    yield both
    for r in opened:
        r.close()


Step = tuple[int, tuple[Any, ...]]


def scenario(
    t: Target, setup: list[Step], waits: list[Step], pushes: list[Step]
) -> tuple[list[Any], list[Any], list[Any], dict[str, Any]]:
    """Run ``setup``, start each of ``waits`` (blocked, in order), then ``pushes``.

    Returns the setup's replies, the waiters' replies, the pushes', and the final state.
    """
    setup_replies = [_call(t.conns[c], cmd) for c, cmd in setup]
    pool = ThreadPoolExecutor(len(waits) or 1)
    futures: list[Future[Any]] = []
    try:
        for n, (c, cmd) in enumerate(waits, 1):
            futures.append(pool.submit(_call, t.conns[c], cmd))
            wait_for(lambda n=n: t.blocked() >= n, timeout=20)  # type: ignore[misc]
        push_replies = [_call(t.conns[c], cmd) for c, cmd in pushes]
        waiter_replies = [f.result(timeout=20) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    wait_for(lambda: t.blocked() == 0, timeout=20)
    return setup_replies, waiter_replies, push_replies, t.state()


def _call(r: redis.Redis, cmd: tuple[Any, ...]) -> Any:
    try:
        return _plain(r.execute_command(*cmd))
    except redis.ResponseError as exc:
        return ("error", str(exc))


def _plain(value: Any) -> Any:
    """Errors inside a reply (EXEC's) as comparable values."""
    if isinstance(value, redis.ResponseError):
        return ("error", str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def both(targets: list[Target], fn: Callable[[Target], Any]) -> Any:
    kv_result, oracle_result = (fn(t) for t in targets)
    assert kv_result == oracle_result
    return kv_result


# --- served across replicas ------------------------------------------------------------------

SERVED: dict[str, tuple[list[Step], list[Step], list[Step]]] = {
    "blpop": ([], [(0, ("BLPOP", "q2", "q", "0"))], [(3, ("RPUSH", "q", "a", "b"))]),
    "brpop": ([], [(1, ("BRPOP", "q", "0"))], [(0, ("RPUSH", "q", "a", "b"))]),
    "blmove": ([(1, ("RPUSH", "dst", "x"))],
               [(0, ("BLMOVE", "src", "dst", "RIGHT", "LEFT", "0"))],
               [(3, ("RPUSH", "src", "a", "b"))]),
    "brpoplpush": ([], [(1, ("BRPOPLPUSH", "src", "dst", "0"))], [(0, ("LPUSH", "src", "a", "b"))]),
    "blmpop": ([], [(0, ("BLMPOP", "0", "2", "q2", "q", "RIGHT", "COUNT", "2"))],
               [(3, ("RPUSH", "q", "a", "b", "c"))]),
    "bzpopmin": ([], [(0, ("BZPOPMIN", "z", "z2", "0"))],
                 [(3, ("ZADD", "z2", "2.5", "m", "1", "n"))]),
    "bzpopmax": ([], [(1, ("BZPOPMAX", "z", "0"))], [(0, ("ZADD", "z", "2.5", "m", "1", "n"))]),
    "bzmpop": ([], [(0, ("BZMPOP", "0", "1", "z", "MAX", "COUNT", "5"))],
               [(3, ("ZADD", "z", "2.5", "m", "1", "n"))]),
    # FIFO: three waiters, two replicas, one push serves them in the order they blocked
    "fifo": ([], [(0, ("BLPOP", "q", "0")), (1, ("BLPOP", "q", "0")), (2, ("BRPOP", "q", "0"))],
             [(3, ("RPUSH", "q", "a", "b", "c", "d"))]),
    # a served BLMOVE pushes to dst, which serves dst's waiter in the same entry
    "chain": ([], [(0, ("BLMOVE", "src", "dst", "LEFT", "LEFT", "0")), (1, ("BLPOP", "dst", "0"))],
              [(3, ("RPUSH", "src", "a"))]),
    # a transaction serves after EXEC: the push and the pop cancel, nothing to serve;
    # the next push serves
    "multi": ([], [(0, ("BLPOP", "q", "0"))],
              [(3, ("MULTI",)), (3, ("RPUSH", "q", "a")), (3, ("LPOP", "q")), (3, ("EXEC",)),
               (3, ("RPUSH", "q", "b"))]),
    # a key that becomes a sorted set does not serve a list waiter (nor count as served)
    "other type": ([], [(0, ("BLPOP", "q", "0"))],
                   [(3, ("ZADD", "q", "1", "m")), (3, ("DEL", "q")), (3, ("RPUSH", "q", "v"))]),
    # XREAD BLOCK: "$" is the stream's last ID when the waiter registered; an XADD
    # to an existing stream serves it, and so does one that creates a stream
    "xread": ([(1, ("XADD", "st", "1-1", "f", "old"))],
              [(0, ("XREAD", "BLOCK", "0", "STREAMS", "st", "$")),
               (1, ("XREAD", "COUNT", "5", "BLOCK", "0", "STREAMS", "st2", "st", "0", "1-1"))],
              [(3, ("XADD", "st", "2-1", "f", "new")), (3, ("XADD", "st2", "3-1", "g", "h"))]),
    "xreadgroup": ([(1, ("XADD", "st", "1-1", "f", "old")),
                    (1, ("XGROUP", "CREATE", "st", "g", "$"))],
                   [(0, ("XREADGROUP", "GROUP", "g", "c1", "BLOCK", "0", "STREAMS", "st", ">")),
                    (2, ("XREADGROUP", "GROUP", "g", "c2", "BLOCK", "0", "STREAMS", "st", ">"))],
                   [(3, ("XADD", "st", "2-1", "f", "a")), (3, ("XADD", "st", "3-1", "f", "b"))]),
    # BLMOVE to a key of another type: the waiter gets WRONGTYPE, the element stays
    "blmove wrongtype": ([(1, ("SET", "dst", "x"))],
                         [(0, ("BLMOVE", "src", "dst", "LEFT", "LEFT", "0"))],
                         [(3, ("RPUSH", "src", "a"))]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SERVED))
def test_waiters_are_served_as_redis_serves_them(targets: list[Target], name: str) -> None:
    setup, waits, pushes = SERVED[name]
    both(targets, lambda t: scenario(t, setup, waits, pushes))


# --- answered at once: data present, errors, timeouts, transactions ---------------------------

IMMEDIATE = [
    ("RPUSH", "q", "a", "b", "c", "d", "e"),
    ("ZADD", "z", "1", "m", "2", "n", "3", "o"),
    ("SET", "s", "x"),
    ("BLPOP", "q", "0"),
    ("BRPOP", "nothing", "q", "0"),
    ("BLMOVE", "q", "s", "LEFT", "RIGHT", "0"),
    ("BLMOVE", "q", "dst", "LEFT", "RIGHT", "0"),
    ("BLMOVE", "q", "dst", "UP", "RIGHT", "0"),
    ("BRPOPLPUSH", "dst", "q", "0"),
    ("BLMPOP", "0", "2", "nothing", "q", "LEFT", "COUNT", "10"),
    ("RPUSH", "q", "r1", "r2"),
    ("BLMPOP", "0", "0", "q", "LEFT"),
    ("BLMPOP", "0", "1", "q", "MIN"),
    ("BLMPOP", "0", "1", "q", "LEFT", "COUNT", "0"),
    ("BLMPOP", "0", "3", "q", "LEFT"),
    ("BLMPOP", "x", "1", "q", "LEFT"),
    ("BLMPOP", "-1", "1", "q", "UP"),
    ("BZMPOP", "-1", "1", "z", "LEFT"),
    ("BZMPOP", "x", "0", "z", "MIN"),
    ("BZPOPMIN", "z", "0"),
    ("BZPOPMAX", "nothing", "z", "0"),
    ("BZMPOP", "0", "1", "z", "MIN", "COUNT", "2"),
    ("BZMPOP", "0", "1", "z", "LEFT"),
    ("BLPOP", "s", "0"),
    ("BZPOPMIN", "q", "0"),
    ("BZPOPMIN", "s", "0"),
    ("BLPOP", "q", "x"),
    ("BLPOP", "q", "-1"),
    ("BLPOP", "q", "inf"),
    ("BLPOP", "q", "1e30"),
    ("BLPOP", "q", "nan"),
    ("BLPOP", "q", "1e9999999"),
    ("BLPOP", "q", "-1e9999999"),
    ("BLPOP", "q", "1e-9999999"),
    ("BLPOP", "q", "1e4933"),
    ("BLPOP", "q", " 1"),
    ("BLPOP", "q", ""),
    ("BLPOP", "empty", "0.001"),
    ("BLPOP", "empty", "1e-9"),
    ("BLPOP", "empty", "1e-4950"),
    ("BLMOVE", "empty", "dst", "LEFT", "LEFT", "0.001"),
    ("BRPOPLPUSH", "empty", "dst", "0.001"),
    ("BZPOPMIN", "empty", "0.001"),
    ("BLMPOP", "0.001", "1", "empty", "LEFT"),
    ("BZMPOP", "0.001", "1", "empty", "MAX"),
    ("BLPOP", "q"),
    ("BLMOVE", "q", "dst", "LEFT", "RIGHT"),
    ("XADD", "st", "1-1", "f", "v"),
    ("XREAD", "BLOCK", "1", "STREAMS", "st", "$"),
    ("XREAD", "BLOCK", "0", "STREAMS", "st", "0"),
    ("XREAD", "BLOCK", "-1", "STREAMS", "st", "0"),
    ("XREAD", "BLOCK", "x", "STREAMS", "st", "0"),
    ("XREAD", "BLOCK", "0", "STREAMS", "q", "0"),
    ("XREADGROUP", "GROUP", "nog", "c", "BLOCK", "0", "STREAMS", "st", ">"),
    ("XGROUP", "CREATE", "st", "g", "$"),
    ("XREADGROUP", "GROUP", "g", "c", "BLOCK", "1", "STREAMS", "st", ">"),
    ("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "st", "0"),
    ("MULTI",),
    ("BLPOP", "empty", "0"),
    ("BLMOVE", "empty", "dst", "LEFT", "LEFT", "0"),
    ("BZMPOP", "0", "1", "empty", "MIN"),
    ("BLPOP", "s", "0"),
    ("XREAD", "BLOCK", "0", "STREAMS", "st", "$"),
    ("EXEC",),
]


def test_answered_at_once_as_redis_answers(targets: list[Target]) -> None:
    def run(t: Target) -> list[Any]:
        # alternate replicas, except inside a transaction (one connection)
        out = []
        in_multi = False
        for i, cmd in enumerate(IMMEDIATE):
            in_multi = in_multi or cmd[0] == "MULTI"
            out.append(_call(t.conns[0 if in_multi else i % 2], cmd))
            in_multi = in_multi and cmd[0] != "EXEC"
        return [*out, t.state()]

    both(targets, run)


# --- CLIENT UNBLOCK, from another replica --------------------------------------------------


def test_client_unblock_from_another_replica_answers_as_redis(targets: list[Target]) -> None:
    def run(t: Target) -> list[Any]:
        waiter, other = t.conns[0], t.conns[1]
        wid = str(_call(waiter, ("CLIENT", "ID")))
        out = [
            _call(other, ("CLIENT", "UNBLOCK")),
            _call(other, ("CLIENT", "UNBLOCK", "x")),
            _call(other, ("CLIENT", "UNBLOCK", wid, "FOO")),
            _call(other, ("CLIENT", "UNBLOCK", wid, "TIMEOUT", "x")),
            _call(other, ("CLIENT", "UNBLOCK", wid)),  # not blocked: 0
        ]
        for how in ("TIMEOUT", "error"):
            with ThreadPoolExecutor(1) as pool:
                fut = pool.submit(_call, waiter, ("BLPOP", "q", "0"))
                wait_for(lambda: t.blocked() == 1, timeout=20)
                out.append(_call(other, ("CLIENT", "UNBLOCK", wid, how)))
                out.append(fut.result(timeout=20))
            wait_for(lambda: t.blocked() == 0, timeout=20)
        _call(other, ("RPUSH", "q", "kept"))  # nobody waits any more
        return [*out, t.state()]

    both(targets, run)


# --- the client's side: its pipeline waits, it may leave, it may be killed -------------------


def test_commands_pipelined_after_a_blocked_one_wait_for_its_reply(kv: Service) -> None:
    clients = clients_on_every_replica(kv.port)
    try:
        clients[0].delete("q", "after")
        pipe = clients[0].pipeline(transaction=False)
        pipe.blpop(["q"], 0)
        pipe.set("after", "1")
        pipe.get("after")
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(pipe.execute)
            wait_for(lambda: int(clients[1].info("clients")["blocked_clients"]) == 1)
            assert clients[1].get("after") is None  # the SET waits behind the BLPOP
            clients[1].rpush("q", "v")
            assert fut.result(timeout=20) == [(b"q", b"v"), True, b"1"]
    finally:
        for r in clients.values():
            r.close()


def test_a_timeout_answers_nil_and_forgets_the_waiter(kv: Service) -> None:
    clients = clients_on_every_replica(kv.port)
    try:
        clients[0].delete("never")
        assert clients[0].blpop(["never"], 0.05) is None
        assert int(clients[1].info("clients")["blocked_clients"]) == 0
        clients[1].rpush("never", "kept")  # nobody waits any more: it stays
        assert clients[0].lrange("never", 0, -1) == [b"kept"]
    finally:
        for r in clients.values():
            r.close()


def test_a_client_that_closes_while_blocked_leaves_no_waiter(kv: Service) -> None:
    clients = clients_on_every_replica(kv.port)
    try:
        clients[0].delete("q")
        with socket.create_connection(("127.0.0.1", kv.port)) as s:
            s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
            wait_for(lambda: int(clients[1].info("clients")["blocked_clients"]) == 1)
        wait_for(lambda: int(clients[1].info("clients")["blocked_clients"]) == 0)
        clients[1].rpush("q", "kept")
        assert clients[0].lrange("q", 0, -1) == [b"kept"]
    finally:
        for r in clients.values():
            r.close()


def _raw_socket_on(port: int, replica: int) -> socket.socket:
    """A plain socket connected to ``replica`` (a client id's low bits name its replica)."""
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += s.recv(64)
        if int(reply[1:-2]) & 1023 == replica:
            return s
        s.close()
    raise AssertionError(f"no connection reached replica {replica}")


def test_killing_the_waiters_replica_closes_it_and_drops_the_waiter(tmp_path: Path) -> None:
    with kv_service(tmp_path) as svc:
        other = clients_on_every_replica(svc.port)[0]
        # a plain socket: redis-py would reconnect and block again, as it retries
        waiter = _raw_socket_on(svc.port, 1)
        waiter.sendall(b"*3\r\n$5\r\nBLPOP\r\n$4\r\njobs\r\n$1\r\n0\r\n")
        wait_for(lambda: int(other.info("clients")["blocked_clients"]) == 1)
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        with contextlib.suppress(ConnectionResetError):
            assert waiter.recv(64) == b""  # closed, with no reply
        waiter.close()
        svc.wait_restarted(1)
        # the restarted replica dropped its previous incarnation's waiter
        wait_for(lambda: int(other.info("clients")["blocked_clients"]) == 0, timeout=20)
        other.rpush("jobs", "j1")
        assert other.lrange("jobs", 0, -1) == [b"j1"]
        other.close()
