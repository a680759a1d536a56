"""The ASGI benchmark's app with its state in a plain dict (no dominoes code).

    uvicorn asgi_dict:app --app-dir benchmarks/baselines [--workers N]
            --http httptools --loop uvloop --no-access-log

The Starlette app that ``benchmarks/asgi.py`` runs in every setup, here over a
module-level ``dict`` of the worker process:

* ``GET /items/{key}``: ``{"key": key, "value": n}``, n the key's counter (0
  when it was never incremented);
* ``POST /items/{key}``: increments the key's counter by 1 and answers the same
  JSON with the new value (the request body, if any, is not read);
* ``GET /whoami``: ``{"pid": os.getpid()}``, which worker process answered.

One worker: correct, but one core.  ``--workers N``: N processes, **each with
its own dict**, so a client sees the counter of whichever worker its
connection landed on.  Fast but wrong: the upper bound for N cores.

``asgi_redis.py`` (state in redis-server) and ``asgi_app.py`` (state in a
dominoes component) have the same routes, endpoints and responses; only the
two lines that read and write the counter differ.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

values: dict[str, int] = {}


async def get_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    value = values.get(key, 0)
    return JSONResponse({"key": key, "value": value})


async def add_item(request: Request) -> JSONResponse:
    key: str = request.path_params["key"]
    values[key] = value = values.get(key, 0) + 1
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
