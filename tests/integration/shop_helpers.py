"""Helpers for the shop example's tests: the running app, HTTP clients pinned to replicas.

Each replica answers on its own connections (``SO_REUSEPORT``), and every
response of the shop says which replica answered (``"replica"``).  A client
here has exactly one connection, so it stays on one replica; the helpers open
fresh ones until each replica has one.  The server closes a keep-alive
connection idle for 5 s, and httpx then silently opens a new one, which may
land on the other replica: so the tests never assume where a request went,
they read the ``"replica"`` of its answer, and ``read`` sends a read again on
a fresh connection until the wanted replica answers it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .harness import Service

SHOP = "examples.shop.app:service"
REPLICAS = 2
TIMEOUT = httpx.Timeout(30.0)
#: connections opened, at most, to find one on a given replica
TRIES = 200


@contextlib.contextmanager
def shop_service(run_dir: Path, *, hold: float | None = None) -> Iterator[Service]:
    """``dominoes run examples.shop.app:service --replicas 2`` on a free port.

    ``hold``: the reservations' hold in seconds (``SHOP_HOLD_SECONDS``).
    """
    env = {} if hold is None else {"SHOP_HOLD_SECONDS": str(hold)}
    svc = Service(SHOP, run_dir, replicas=REPLICAS, env=env)
    try:
        svc.wait_ready()
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        else:
            svc._finish()


def base_url(svc: Service) -> str:
    return f"http://127.0.0.1:{svc.port}"


def ws_url(svc: Service, path: str = "/ws/stock") -> str:
    return f"ws://127.0.0.1:{svc.port}{path}"


def _one_connection() -> httpx.Limits:
    return httpx.Limits(max_connections=1, max_keepalive_connections=1)


def answered_by(response: httpx.Response) -> int:
    replica: int = response.json()["replica"]
    return replica


# --- sync ----------------------------------------------------------------------------


def new_client(base: str) -> tuple[httpx.Client, int]:
    """A client with one connection, and the replica that connection reached."""
    client = httpx.Client(base_url=base, limits=_one_connection(), timeout=TIMEOUT)
    try:
        response = client.get("/healthz")
        response.raise_for_status()
    except BaseException:
        client.close()
        raise
    return client, answered_by(response)


class SyncReplicas:
    """One ``httpx.Client`` per replica: ``on[r]`` is (almost always) answered by replica r."""

    def __init__(self, base: str, replicas: int = REPLICAS) -> None:
        self.base = base
        self.on: dict[int, httpx.Client] = {}
        for _ in range(TRIES):
            client, replica = new_client(base)
            if replica in self.on:
                client.close()
            else:
                self.on[replica] = client
            if len(self.on) == replicas:
                return
        self.close()
        raise AssertionError(f"connections reached only replicas {sorted(self.on)}")

    def repin(self, replica: int) -> None:
        """Replace ``on[replica]`` by a fresh connection that reached ``replica``."""
        self.on[replica].close()
        for _ in range(TRIES):
            client, reached = new_client(self.base)
            if reached == replica:
                self.on[replica] = client
                return
            client.close()
        raise AssertionError(f"no connection reached replica {replica} in {TRIES} tries")

    def read(self, replica: int, path: str) -> httpx.Response:
        """``GET path`` answered by ``replica`` (sent again on a fresh connection if not)."""
        for _ in range(TRIES):
            response = self.on[replica].get(path)
            if answered_by(response) == replica:
                return response
            self.repin(replica)
        raise AssertionError(f"replica {replica} never answered GET {path}")

    def close(self) -> None:
        for client in self.on.values():
            client.close()

    def __enter__(self) -> SyncReplicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- async ---------------------------------------------------------------------------


async def new_async_client(base: str) -> tuple[httpx.AsyncClient, int]:
    """An async client with one connection, and the replica that connection reached."""
    client = httpx.AsyncClient(base_url=base, limits=_one_connection(), timeout=TIMEOUT)
    try:
        response = await client.get("/healthz")
        response.raise_for_status()
    except BaseException:
        await client.aclose()
        raise
    return client, answered_by(response)


async def async_clients(
    base: str, per_replica: int, replicas: int = REPLICAS
) -> list[tuple[httpx.AsyncClient, int]]:
    """``per_replica`` one-connection clients on each replica, as (client, replica)."""
    found: dict[int, list[httpx.AsyncClient]] = {r: [] for r in range(replicas)}
    for _ in range(TRIES * per_replica):
        client, replica = await new_async_client(base)
        if len(found[replica]) < per_replica:
            found[replica].append(client)
        else:
            await client.aclose()
        if all(len(clients) == per_replica for clients in found.values()):
            return [(c, r) for r, clients in found.items() for c in clients]
    for clients in found.values():
        for c in clients:
            await c.aclose()
    raise AssertionError(f"could not get {per_replica} connections on each replica")


class AsyncReplicas:
    """:class:`SyncReplicas` with ``httpx.AsyncClient``.

    ``async with await AsyncReplicas.open(base) as replicas: ...``
    """

    def __init__(self, base: str, on: dict[int, httpx.AsyncClient]) -> None:
        self.base = base
        self.on = on

    @classmethod
    async def open(cls, base: str) -> AsyncReplicas:
        pairs = await async_clients(base, per_replica=1)
        return cls(base, {replica: client for client, replica in pairs})

    async def repin(self, replica: int) -> None:
        await self.on[replica].aclose()
        for _ in range(TRIES):
            client, reached = await new_async_client(self.base)
            if reached == replica:
                self.on[replica] = client
                return
            await client.aclose()
        raise AssertionError(f"no connection reached replica {replica} in {TRIES} tries")

    async def read(self, replica: int, path: str) -> httpx.Response:
        for _ in range(TRIES):
            response = await self.on[replica].get(path)
            if answered_by(response) == replica:
                return response
            await self.repin(replica)
        raise AssertionError(f"replica {replica} never answered GET {path}")

    async def aclose(self) -> None:
        for client in self.on.values():
            await client.aclose()

    async def __aenter__(self) -> AsyncReplicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met in {timeout}s")
        time.sleep(interval)
