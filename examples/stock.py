"""A FastAPI app on every core with one replicated stock count (docs/howto/web.md).

From the repository root: ``pip install '.[web]' fastapi``, then
``dominoes run examples.stock:service --replicas 2 --port 7000``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.responses import StreamingResponse

import dominoes
from dominoes import Component, Context, Service, query, update


class Stock(Component):
    def __init__(self) -> None:
        self.units: dict[str, int] = {}

    @update
    def restock(self, ctx: Context, sku: str, units: int) -> int:
        self.units[sku] = self.units.get(sku, 0) + units
        ctx.publish("stock", {"sku": sku, "units": self.units[sku]})
        return self.units[sku]

    @update
    def take(self, ctx: Context, sku: str) -> bool:
        if self.units.get(sku, 0) < 1:
            return False
        self.units[sku] -= 1
        ctx.publish("stock", {"sku": sku, "units": self.units[sku]})
        return True

    @query
    def units_of(self, sku: str) -> int:
        return self.units.get(sku, 0)


app = FastAPI()
StateDep = Annotated[dominoes.State, Depends(dominoes.current)]


@app.get("/stock/{sku}")
async def get_stock(sku: str, state: StateDep) -> dict[str, int]:
    return {"units": state.query(Stock.units_of, sku), "replica": state.index}


@app.post("/stock/{sku}/restock/{units}")
async def restock(sku: str, units: int, state: StateDep) -> dict[str, int]:
    return {"units": await state.call(Stock.restock, sku, units)}


@app.post("/stock/{sku}/take")
async def take(sku: str, state: StateDep) -> dict[str, bool]:
    if not await state.call(Stock.take, sku):
        raise HTTPException(409, "out of stock")
    return {"ok": True}


@app.websocket("/ws/stock")
async def stock_feed(ws: WebSocket) -> None:
    await ws.accept()
    with dominoes.current().subscribe("stock") as events:
        async for event in events:
            await ws.send_json(event)


@app.get("/events")
async def events() -> StreamingResponse:
    sub = dominoes.current().subscribe("stock")

    async def stream() -> AsyncIterator[str]:
        with sub:
            async for event in sub:
                yield f"data: {event['sku']} {event['units']}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


service = Service("stock", [Stock()], asgi=app)
