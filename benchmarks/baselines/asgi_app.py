"""The ASGI benchmark's app on dominoes: the counters are a replicated component.

    dominoes run benchmarks.baselines.asgi_app:service --replicas 2 --port P

(from the repository root, so that ``benchmarks.baselines`` imports.)  The
same Starlette app as ``asgi_dict.py`` (same routes, endpoints and JSON):

* ``GET /items/{key}``: ``state.query(Counters.get, key)``, a local read on
  the replica that got the connection, linearizable (the default: it first
  catches up with what any replica has applied);
* ``POST /items/{key}``: ``await state.call(Counters.add, key, 1)``, an update
  appended to the shared log and applied on every replica; the answer carries
  its result once this replica has applied it;
* ``GET /whoami``: ``{"pid": os.getpid()}``.

Every replica serves the app on its own event loop, pinned to its own core,
over its own ``SO_REUSEPORT`` socket (dominoes embeds uvicorn's httptools
protocol); no access log (``dominoes run``'s default).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import dominoes
from dominoes import Component, Context, Service, query, update


class Counters(Component):
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    @update
    def add(self, ctx: Context, key: str, n: int) -> int:
        self.values[key] = value = self.values.get(key, 0) + n
        return value

    @query
    def get(self, key: str) -> int:
        return self.values.get(key, 0)


async def get_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    value = dominoes.current().query(Counters.get, key)
    return JSONResponse({"key": key, "value": value})


async def add_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    value = await dominoes.current().call(Counters.add, key, 1)
    return JSONResponse({"key": key, "value": value})


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = Starlette(
    routes=[
        Route("/items/{key}", get_item, methods=["GET"]),
        Route("/items/{key}", add_item, methods=["POST"]),
        Route("/whoami", whoami, methods=["GET"]),
    ]
)
service = Service("asgibench", [Counters()], asgi=app)
