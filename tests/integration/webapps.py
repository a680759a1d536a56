"""ASGI apps the web tests run with ``dominoes run tests.integration.webapps:NAME``.

A plain Starlette app (the example shop is FastAPI): counters, a gate that
holds requests in flight until the test releases them, a server-sent-event
stream and a WebSocket feed, and a lifespan that records it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import dominoes
from dominoes import Component, Context, Service, query, update


class Counters(Component):
    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        #: requests that entered the gate (held until released)
        self.entered = 0

    @update
    def add(self, ctx: Context, key: str, n: int) -> int:
        self.values[key] = value = self.values.get(key, 0) + n
        ctx.publish("counts", {"key": key, "value": value, "seq": ctx.seq})
        return value

    @update
    def enter(self, ctx: Context) -> int:
        self.entered += 1
        return self.entered

    @query
    def get(self, key: str) -> int:
        return self.values.get(key, 0)

    @query
    def gate(self) -> int:
        return self.entered


def _state() -> dominoes.State:
    return dominoes.current()


async def get_counter(request: Request) -> JSONResponse:
    state = _state()
    value = state.query(Counters.get, request.path_params["key"])
    return JSONResponse({"value": value, "replica": state.index, "pid": os.getpid()})


async def add_counter(request: Request) -> JSONResponse:
    state = _state()
    body = await request.body()
    n = int(body) if body else 1
    value = await state.call(Counters.add, request.path_params["key"], n)
    return JSONResponse({"value": value, "replica": state.index})


async def echo_size(request: Request) -> JSONResponse:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"size": size})


async def held(request: Request) -> PlainTextResponse:
    """Enter the gate, then wait until the file ``release`` names exists (the test's word)."""
    state = _state()
    await state.call(Counters.enter)
    release = Path(request.query_params["release"])
    # The word comes from outside the service on purpose: the test holds these
    # requests across the replica's own shutdown, which ends subscriptions.
    while not release.exists():  # noqa: ASYNC110, ASYNC240 - a tiny stat, 50 times a second
        await asyncio.sleep(0.02)
    return PlainTextResponse(f"done on {state.index}")


async def gate(request: Request) -> JSONResponse:
    return JSONResponse({"entered": _state().query(Counters.gate)})


async def announce(request: Request) -> JSONResponse:
    state = _state()
    await state.publish("news", {"text": request.path_params["text"], "from": state.index})
    return JSONResponse({"ok": True})


async def events(request: Request) -> StreamingResponse:
    """Server-sent events: a hello naming the replica, then every counter change."""
    state = _state()
    sub = state.subscribe("counts")

    async def stream() -> AsyncIterator[str]:
        with sub:
            yield f"event: hello\ndata: {state.index}\n\n"
            async for message in sub:
                yield f"data: {message['key']}={message['value']}@{message['seq']}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def feed(ws: WebSocket) -> None:
    await ws.accept()
    state = _state()
    with state.subscribe("counts", "news") as sub:
        await ws.send_json({"hello": state.index})
        async for message in sub:
            await ws.send_json(message)
    with contextlib.suppress(Exception):
        await ws.close(1001)


async def lifespan_info(request: Request) -> JSONResponse:
    return JSONResponse({"started": request.state.started, "replica": _state().index})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    # dominoes.current() works in the lifespan too: this replica's state
    yield {"started": f"replica {dominoes.current().index}"}


routes = [
    Route("/counters/{key}", get_counter),
    Route("/counters/{key}", add_counter, methods=["POST"]),
    Route("/size", echo_size, methods=["POST"]),
    Route("/held", held),
    Route("/gate", gate),
    Route("/announce/{text}", announce, methods=["POST"]),
    Route("/events", events),
    Route("/lifespan", lifespan_info),
    WebSocketRoute("/feed", feed),
]

app = Starlette(routes=routes, lifespan=lifespan)
service = Service("webapp", [Counters()], asgi=app)


@contextlib.asynccontextmanager
async def failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    await asyncio.sleep(0)
    raise RuntimeError("the database is not there")
    yield  # type: ignore[unreachable]  # an async generator


broken_app = Starlette(routes=routes, lifespan=failing_lifespan)
broken = Service("webbroken", [Counters()], asgi=broken_app)
