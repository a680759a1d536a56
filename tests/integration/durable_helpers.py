"""Run a durable KV service in a process group of its own, crash it, start it again."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .harness import Service

KV = "dominoes.components.kv:service"


class DurableKV(Service):
    """``dominoes run KV --durable DIR`` as the leader of its own process group.

    ``crash()`` is ``kill -9`` of the whole group: the supervisor, the replicas
    and the log writer die at once, as in a power cut of the processes (not
    of the machine: the page cache survives).
    """

    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        *,
        fsync: str,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        durable = ("--durable", str(data_dir), "--fsync", fsync, *args)
        super().__init__(KV, run_dir, args=durable, session=True, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.crash()
                raise AssertionError(f"service did not start:\n{self.output}")

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=30, **kwargs)  # type: ignore[arg-type]

    def crash(self) -> None:
        """SIGKILL every process of the service's group at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._finish()
        # the group's other members (replicas, the writer) are gone too
        wait_group_gone(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        code = super().stop(timeout)
        wait_group_gone(self.proc.pid)
        return code


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not group_members(pgid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f"process group {pgid} outlived its supervisor")


@contextlib.contextmanager
def durable_kv(data_dir: Path, run_dir: Path, **kwargs: object) -> Iterator[DurableKV]:
    svc = DurableKV(data_dir, run_dir, **kwargs)  # type: ignore[arg-type]
    try:
        svc.wait_ready()
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.crash()


class Writers:
    """Threads that SET distinct keys as fast as they can, recording each acknowledgment.

    ``acked`` maps every key whose SET returned OK to its value; a write that
    got no reply (the service died under it) is not in it.
    """

    def __init__(self, port: int, threads: int = 4, prefix: str = "") -> None:
        self.acked: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(port, f"{prefix}t{i}"), daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def _run(self, port: int, name: str) -> None:
        # No retries: a write the service died under must fail, not be sent again.
        r = redis.Redis(port=port, socket_timeout=30, retry=Retry(NoBackoff(), 0))
        i = 0
        try:
            while not self._stop.is_set():
                key, value = f"{name}:{i}".encode(), f"v{i}".encode()
                if r.set(key, value) is not True:
                    raise AssertionError(f"SET {key!r} did not answer OK")
                with self._lock:
                    self.acked[key] = value
                i += 1
        except (redis.ConnectionError, redis.TimeoutError):
            return  # the service died under this write: not acknowledged
        finally:
            r.close()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > end:
                raise AssertionError(f"only {self.count()} writes acknowledged in {timeout}s")
            time.sleep(0.005)

    def join(self) -> dict[bytes, bytes]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return dict(self.acked)


def missing(r: redis.Redis, acked: dict[bytes, bytes]) -> list[bytes]:
    """Keys of ``acked`` whose value is not what was acknowledged."""
    keys = list(acked)
    out: list[bytes] = []
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        for key, got in zip(chunk, r.mget(chunk), strict=True):
            if got != acked[key]:
                out.append(key)
    return out
