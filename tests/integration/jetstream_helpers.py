"""Helpers for the ``--log nats://`` tests: "machines" are separate ``dominoes run`` groups.

Each machine has its own run dir, shm rings, port and bridge; they share
nothing but the NATS servers' stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from dominoes._runtime._control import ask

from .durable_helpers import wait_group_gone
from .harness import Service
from .kv_helpers import KV, client, clients_on_every_replica, wait_for

__all__ = ("Machine", "digests", "machine", "snapshot_names", "stream_state", "wait_converged")


class Machine:
    """One "machine": a KV service on the shared stream, with a client per replica."""

    def __init__(self, svc: Service, replicas: int) -> None:
        self.svc = svc
        self.replicas = replicas
        self.on: dict[int, redis.Redis] = clients_on_every_replica(svc.port, replicas)

    @property
    def port(self) -> int:
        return self.svc.port

    def crash(self) -> None:
        """SIGKILL the whole machine at once: supervisor, replicas and bridge."""
        self.close_clients()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.svc.proc.pid, signal.SIGKILL)
        self.svc.proc.wait(30)
        wait_group_gone(self.svc.proc.pid)

    def close_clients(self) -> None:
        for c in self.on.values():
            c.close()
        self.on = {}


@contextlib.contextmanager
def machine(
    run_dir: Path, url: str, *, stream: str = "KV", replicas: int = 2, args: tuple[str, ...] = ()
) -> Iterator[Machine]:
    """``dominoes run ...kv:service --log URL --stream NAME`` as one machine."""
    svc = Service(
        KV,
        run_dir,
        replicas=replicas,
        args=("--log", url, "--stream", stream, *args),
        session=True,  # the machine's processes can be killed as one
    )
    m: Machine | None = None
    try:
        svc.wait_ready()
        wait_for(lambda: _pings(svc.port), timeout=30)
        m = Machine(svc, replicas)
        yield m
    finally:
        if m is not None:
            m.close_clients()
        if svc.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                svc.stop()
        else:
            svc._finish()
        wait_group_gone(svc.proc.pid)
        if os.environ.get("DOMINOES_TEST_SHOW") or svc.proc.returncode not in (0, -9):
            print(f"machine {run_dir.name} exited with {svc.proc.returncode}:\n{svc.output}")


def _pings(port: int) -> bool:
    try:
        with client(port, socket_timeout=5) as r:
            return bool(r.ping())
    except redis.ConnectionError:
        return False


def digests(run_dir: Path, replicas: int) -> list[tuple[int, dict[str, str]]]:
    """``(applied seq, digest)`` of each replica of a machine, through its control socket."""

    async def one(i: int) -> tuple[int, dict[str, str]]:
        got: Any = await ask(run_dir / f"replica-{i}.sock", {"op": "digest"})
        return int(got["seq"]), dict(got["digest"])

    async def every() -> list[tuple[int, dict[str, str]]]:
        return [await one(i) for i in range(replicas)]

    return asyncio.run(every())


def wait_converged(
    machines: list[Machine], timeout: float = 30, *, more: tuple[tuple[Path, int], ...] = ()
) -> tuple[int, dict[str, str]]:
    """Wait until every replica of every machine applied the same seq; assert equal digests.

    ``more``: machines given by (run dir, replicas) instead.
    """
    seen: list[tuple[int, dict[str, str]]] = []
    where = [(m.svc.run_dir, m.replicas) for m in machines] + list(more)

    def same_seq() -> bool:
        seen[:] = [d for run_dir, n in where for d in digests(run_dir, n)]
        return len({seq for seq, _ in seen}) == 1

    wait_for(same_seq, timeout=timeout)
    first = seen[0]
    for other in seen[1:]:
        assert other == first, f"replicas diverged: {seen}"
    return first


def stream_state(url: str, stream: str) -> tuple[int, int, list[str]]:
    """(first message held, last message, snapshot objects) of the stream, via nats-py."""
    import nats
    import nats.js.errors

    async def ask() -> tuple[int, int, list[str]]:
        # generous timeouts: the servers share two busy cores with the machines
        nc = await nats.connect(url.split(","), connect_timeout=10)
        try:
            js = nc.jetstream(timeout=30)
            info = await js.stream_info(stream)
            names: list[str] = []
            try:
                # nats-py's listing of an *empty* bucket waits out the whole
                # JetStream timeout (30 s) before it says so: look at the
                # bucket's stream first, and list only one that holds something
                bucket = await js.stream_info(f"OBJ_{stream}-snapshots")
                if bucket.state.messages:
                    store = await js.object_store(f"{stream}-snapshots")
                    names = sorted(o.name for o in await store.list(ignore_deletes=True))
            except nats.js.errors.NotFoundError:  # no bucket yet, or an empty one
                names = []
            return int(info.state.first_seq), int(info.state.last_seq), names
        finally:
            await nc.close()

    return asyncio.run(ask())


def snapshot_names(url: str, stream: str) -> list[str]:
    """The snapshot objects of the stream, or [] when the servers are slow to say
    (poll it: an Object Store listing times out on busy cores)."""
    import nats.errors

    try:
        return stream_state(url, stream)[2]
    except (TimeoutError, nats.errors.Error):
        return []
