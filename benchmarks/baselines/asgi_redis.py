"""The ASGI benchmark's app with its state in redis-server, through redis.asyncio.

    ASGI_BENCH_REDIS_URL=redis://127.0.0.1:6379/0 \\
    uvicorn asgi_redis:app --app-dir benchmarks/baselines --workers N
            --http httptools --loop uvloop --no-access-log

"The usual way" to share state between uvicorn workers: the same Starlette
app as ``asgi_dict.py`` (same routes, endpoints and JSON), but the counters
live in one redis-server that every worker talks to:

* ``GET /items/{key}``: ``GET items:{key}`` (one round trip), ``{"key": key,
  "value": n}`` with n = 0 for a missing key;
* ``POST /items/{key}``: ``INCR items:{key}`` (one round trip, atomic in
  redis-server), the same JSON with the new value;
* ``GET /whoami``: ``{"pid": os.getpid()}``.

The redis-server is not started here: ``benchmarks/asgi.py`` starts one
(``--save '' --appendonly no``) and names it in ``ASGI_BENCH_REDIS_URL``.

Client: one ``redis.asyncio.Redis`` per worker process, made in the app's
lifespan (so on the worker's own event loop) and closed at shutdown, with the
settings of ``redis_shared.py`` (fast and free of surprises under redis-py 8's
defaults): RESP2, hiredis's parser (when installed, as here), no socket
timeout, no retries, no health checks, one unbounded connection pool (a
request takes a connection and gives it back; with C concurrent requests a
worker ends up with about C connections, made once and reused).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

URL = os.environ.get("ASGI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
client: aioredis.Redis | None = None


def _client() -> aioredis.Redis:
    assert client is not None, "the app's lifespan did not run"
    return client


async def get_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    raw = await _client().get(f"items:{key}")
    value = int(raw) if raw is not None else 0
    return JSONResponse({"key": key, "value": value})


async def add_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    value = int(await _client().incr(f"items:{key}"))
    return JSONResponse({"key": key, "value": value})


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global client
    client = aioredis.Redis.from_url(
        URL,
        protocol=2,
        socket_timeout=None,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    await client.ping()
    try:
        yield
    finally:
        await client.aclose()
        client = None


app = Starlette(
    routes=[
        Route("/items/{key}", get_item, methods=["GET"]),
        Route("/items/{key}", add_item, methods=["POST"]),
        Route("/whoami", whoami, methods=["GET"]),
    ],
    lifespan=lifespan,
)
