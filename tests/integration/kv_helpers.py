"""Helpers for the KV service's integration tests: a running service, clients pinned to replicas."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .harness import Service, free_port, running

KV = "dominoes.components.kv:service"

T = TypeVar("T")


@contextlib.contextmanager
def kv_service(
    run_dir: Path,
    replicas: int = 2,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """``dominoes run dominoes.components.kv:service --replicas N [ARGS]`` on a free port
    (``env``: added to its environment), once it answers PING."""
    with running(KV, run_dir, replicas=replicas, args=args, env=env) as svc:
        wait_for(lambda: _pings(svc.port), timeout=20)
        yield svc


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=2) as r:
            return bool(r.ping())
    except redis.ConnectionError:
        return False


def client(port: int, **kwargs: Any) -> redis.Redis:
    """A redis-py client with exactly one connection (so it stays on one replica)."""
    options: dict[str, Any] = {"socket_timeout": 10, "single_connection_client": True}
    options.update(kwargs)
    return redis.Redis(host="127.0.0.1", port=port, **options)


def replica_of(r: redis.Redis) -> int:
    return int(r.info("dominoes")["replica_index"])


def clients_on_every_replica(
    port: int, replicas: int = 2, tries: int = 200, **kwargs: Any
) -> dict[int, redis.Redis]:
    """Open connections until INFO shows one on each replica (SO_REUSEPORT spreads them)."""
    found: dict[int, redis.Redis] = {}
    for _ in range(tries):
        r = client(port, **kwargs)
        index = replica_of(r)
        if index in found:
            r.close()
        else:
            found[index] = r
        if len(found) == replicas:
            return found
    for r in found.values():
        r.close()
    raise AssertionError(f"connections reached only replicas {sorted(found)}")


async def async_clients_on_every_replica(
    port: int, replicas: int = 2, tries: int = 200, **kwargs: Any
) -> dict[int, aioredis.Redis]:
    """The asyncio form of :func:`clients_on_every_replica`."""
    found: dict[int, aioredis.Redis] = {}
    options: dict[str, Any] = {"socket_timeout": 10, "single_connection_client": True}
    options.update(kwargs)
    for _ in range(tries):
        r = aioredis.Redis(host="127.0.0.1", port=port, **options)
        index = int((await r.info("dominoes"))["replica_index"])
        if index in found:
            await r.aclose()
        else:
            found[index] = r
        if len(found) == replicas:
            return found
    for r in found.values():
        await r.aclose()
    raise AssertionError(f"connections reached only replicas {sorted(found)}")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Poll until ``predicate()`` is truthy; return it."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met in {timeout}s")
        time.sleep(interval)


def raw_exchange(port: int, data: bytes, timeout: float = 0.3) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh socket; (what came back, whether the server closed it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(timeout)
        with contextlib.suppress(OSError):
            s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except TimeoutError:
            return out, False
        except OSError:
            return out, True


@contextlib.contextmanager
def redis_oracle(run_dir: Path) -> Iterator[redis.Redis]:
    """A real ``redis-server`` on 127.0.0.1 and a free port, for differential
    tests (the oracle of Redis semantics); killed and waited for afterwards."""
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed"
    port = free_port()
    log = run_dir / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(run_dir)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{log.read_text(errors='replace')}")
        try:
            return bool(r.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, timeout=20)
        yield r
    finally:
        r.close()
        proc.kill()
        proc.wait(timeout=10)


def pinned(port: int, wanted: int | Callable[[int], bool], tries: int = 200) -> redis.Redis:
    """A client whose only connection landed on a replica ``wanted`` accepts.

    Its pool holds one connection (``max_connections=1``), so its commands,
    pipelines and transactions all run there; with no retries, a send cut by
    a broken connection raises instead of being sent again elsewhere.
    """
    accept = (lambda i: i == wanted) if isinstance(wanted, int) else wanted
    for _ in range(tries):
        r = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=10,
            max_connections=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if accept(replica_of(r)):
                return r
        except redis.ConnectionError:
            pass
        r.close()
    raise AssertionError(f"no connection reached a wanted replica in {tries} tries")


def progress(acked: list[int], errors: list[BaseException], n: int) -> None:
    """Wait until writers acknowledged ``n`` more in all (or one failed: then fail)."""
    before = sum(acked)
    wait_for(lambda: sum(acked) >= before + n or bool(errors), timeout=30)
    assert errors == []


class Transfers:
    """Writers that move 1 from ``x`` to ``y`` and count ``n`` in one MULTI/EXEC, and
    readers that read ``x`` and ``y`` in one, each on its own thread and connection,
    until the ``with`` block ends.

    A writer's send cut by a broken connection, or answered by ``cut_error``
    (an error after which the transaction may or may not have been applied), is
    counted in ``cut`` and never sent again; the writer then goes on through a
    connection ``reconnect`` accepts.  Readers skip a read ``cut_error``
    accepts.  Any other failure lands in ``errors``.
    """

    def __init__(
        self,
        port: int,
        x: str,
        y: str,
        n: str,
        writers: list[int],
        readers: list[int],
        reconnect: int | Callable[[int], bool],
        cut_error: Callable[[redis.ResponseError], bool] = lambda exc: False,
    ) -> None:
        self.port, self.x, self.y, self.n = port, x, y, n
        self.reconnect, self.cut_error = reconnect, cut_error
        self.acked = [0] * len(writers)
        self.cut = [0] * len(writers)
        self.reads: list[tuple[Any, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(k, replica))
            for k, replica in enumerate(writers)
        ]
        self._threads += [threading.Thread(target=self._read, args=(r,)) for r in readers]

    def __enter__(self) -> Transfers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def progress(self, more: int) -> None:
        """Wait until the writers acknowledged ``more`` more (or one failed: then fail)."""
        progress(self.acked, self.errors, more)

    def _write(self, k: int, replica: int) -> None:
        try:
            r = pinned(self.port, replica)
            while not self._stop.is_set():
                pipe = r.pipeline(transaction=True)
                pipe.decrby(self.x, 1)
                pipe.incrby(self.y, 1)
                pipe.incr(self.n)
                try:
                    a, b, c = pipe.execute()
                except redis.ConnectionError:  # its replica was killed: go on elsewhere
                    self.cut[k] += 1
                    r.close()
                    r = pinned(self.port, self.reconnect)
                    continue
                except redis.ResponseError as exc:
                    if not self.cut_error(exc):
                        raise
                    self.cut[k] += 1
                    continue
                assert a + b == 0
                assert b == c
                self.acked[k] += 1
            r.close()
        except BaseException as exc:  # noqa: BLE001 - reported by progress() and the test
            self.errors.append(exc)

    def _read(self, replica: int) -> None:
        try:
            r = pinned(self.port, replica)
            while not self._stop.is_set():
                pipe = r.pipeline(transaction=True)
                pipe.get(self.x)
                pipe.get(self.y)
                try:
                    got = pipe.execute()
                except redis.ConnectionError:
                    r.close()
                    r = pinned(self.port, self.reconnect)
                    continue
                except redis.ResponseError as exc:
                    if not self.cut_error(exc):
                        raise
                    continue
                self.reads.append((got[0], got[1]))
            r.close()
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
