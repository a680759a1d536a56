"""A shopping cart with stock reservations: a FastAPI app served by every core.

Run it from the repository root (``examples/`` is not installed)::

    dominoes run examples.shop.app:service --replicas 2 --port 8000

Every replica process serves this app on port 8000 (the kernel spreads the
connections over them) and holds the whole shop: the stock and the carts are
two components, replicated through one log.  A request on any core:

* **writes** with ``await state.call(Carts.reserve, ...)``: the update runs on
  every replica, in log order, so two cores can never both sell the last unit;
* **reads** with ``state.query(Stock.item, sku)``: a local lookup that still
  sees every write acknowledged on any core before it;
* **holds** stock with a replicated timer: a reservation expires after
  ``SHOP_HOLD_SECONDS`` (60 by default) and its units go back on the shelf,
  exactly once, whichever replica is alive;
* **streams** every stock change to ``GET /ws/stock`` (a WebSocket) on every
  replica, published by the update handlers with ``ctx.publish``.

Every response says which replica answered (``"replica"``), to show that the
state is the same from every core.  See README.md next to this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar

import msgspec
from fastapi import Depends, FastAPI, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketDisconnect

import dominoes
from dominoes import Component, Context, Service, SlowSubscriberError, query, update

log = logging.getLogger("shop")

#: How long a reservation holds its units, in seconds (``SHOP_HOLD_SECONDS``).
#: Read once at import: every replica process sees the same environment, so
#: every replica's copy of ``Carts`` holds for the same time.
HOLD_SECONDS = float(os.environ.get("SHOP_HOLD_SECONDS", "60"))

#: SKUs and user names: short, URL-safe
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


# --- replicated state --------------------------------------------------------------


class ShopError(Exception):
    """A refusal an update handler raises before it changes anything.

    The log entry is applied on every replica, and every replica refuses it
    alike; the replica that took the request turns it into ``status``.
    """

    status: ClassVar[int] = 400


class NotFoundError(ShopError):
    status = 404


class UnknownItemError(NotFoundError):
    pass


class UnknownReservationError(NotFoundError):
    pass


class UnknownOrderError(NotFoundError):
    pass


class OutOfStockError(ShopError):
    status = 409


class EmptyCartError(ShopError):
    status = 409


class Item(msgspec.Struct):
    stock: int  # units on the shelf, free to reserve
    price_cents: int
    reserved: int = 0  # units held by reservations
    sold: int = 0
    version: int = 0  # the shop-wide change number of this item's last change


class Reservation(msgspec.Struct):
    id: str
    user: str
    sku: str
    qty: int
    price_cents: int
    expires_at: float
    timer: int


class OrderLine(msgspec.Struct):
    sku: str
    qty: int
    price_cents: int


class Order(msgspec.Struct):
    id: str
    user: str
    lines: list[OrderLine]
    total_cents: int
    at: float


def _money(cents: int) -> float:
    return cents / 100


def _item_view(sku: str, item: Item) -> dict[str, Any]:
    return {
        "sku": sku,
        "price": _money(item.price_cents),
        "stock": item.stock,
        "reserved": item.reserved,
        "sold": item.sold,
        "version": item.version,
    }


def _reservation_view(r: Reservation) -> dict[str, Any]:
    return {
        "reservation": r.id,
        "user": r.user,
        "sku": r.sku,
        "qty": r.qty,
        "price": _money(r.price_cents),
        "expires_at": r.expires_at,
    }


def _order_view(order: Order) -> dict[str, Any]:
    return {
        "order": order.id,
        "user": order.user,
        "lines": [
            {"sku": line.sku, "qty": line.qty, "price": _money(line.price_cents)}
            for line in order.lines
        ],
        "total": _money(order.total_cents),
        "at": order.at,
    }


def _new_id(ctx: Context, prefix: str) -> str:
    """An id the same on every replica: the entry's position plus its random draw.

    ``ctx.seq`` is the log position; calls grouped into one entry share it and
    differ by ``ctx.sub``.  Never ``uuid4()``: every replica would draw its own.
    """
    return f"{prefix}{ctx.seq}-{ctx.sub + 1}-{ctx.random.getrandbits(24):06x}"


class Stock(Component):
    """The shelf: what each SKU costs and how many units are free, held and sold.

    Every change is published to the topics ``stock`` and ``stock:<sku>``.
    """

    items: dict[str, Item]
    changes: int

    def __init__(self) -> None:
        self.items = {}
        self.changes = 0

    @update
    def restock(self, ctx: Context, sku: str, stock: int, price_cents: int) -> dict[str, Any]:
        """Set ``sku``'s free units and price (creating the item)."""
        item = self.items.get(sku)
        if item is None:
            item = self.items[sku] = Item(stock=stock, price_cents=price_cents)
        else:
            item.stock = stock
            item.price_cents = price_cents
        return self._changed(ctx, sku, item, "restock")

    # Helpers for Carts' handlers: they run inside an update, with its ctx.

    def take(self, ctx: Context, sku: str, qty: int) -> Item:
        item = self.items.get(sku)
        if item is None:
            raise UnknownItemError(f"no item {sku!r}")
        if qty > item.stock:
            raise OutOfStockError(f"{sku!r}: {qty} wanted, {item.stock} in stock")
        item.stock -= qty
        item.reserved += qty
        self._changed(ctx, sku, item, "reserve")
        return item

    def put_back(self, ctx: Context, sku: str, qty: int, why: str) -> None:
        item = self.items[sku]
        item.reserved -= qty
        item.stock += qty
        self._changed(ctx, sku, item, why)

    def sell(self, ctx: Context, sku: str, qty: int) -> None:
        item = self.items[sku]
        item.reserved -= qty
        item.sold += qty
        self._changed(ctx, sku, item, "sell")

    def _changed(self, ctx: Context, sku: str, item: Item, event: str) -> dict[str, Any]:
        self.changes += 1
        item.version = self.changes
        view = _item_view(sku, item)
        message = {"type": "stock", "event": event, "at": ctx.now, **view}
        ctx.publish("stock", message)
        ctx.publish(f"stock:{sku}", message)
        return view

    @query
    def item(self, sku: str) -> dict[str, Any] | None:
        item = self.items.get(sku)
        return None if item is None else _item_view(sku, item)

    @query
    def all(self) -> list[dict[str, Any]]:
        return [_item_view(sku, item) for sku, item in sorted(self.items.items())]


class Carts(Component):
    """Reservations (held for ``hold`` seconds by a replicated timer) and orders."""

    reservations: dict[str, Reservation]
    carts: dict[str, list[str]]  # user -> reservation ids, oldest first
    orders: dict[str, Order]
    hold: float

    def __init__(self, hold: float = HOLD_SECONDS) -> None:
        if not hold > 0:
            raise ValueError(f"the hold must be positive, not {hold}")
        self.reservations = {}
        self.carts = {}
        self.orders = {}
        self.hold = hold

    @update
    def reserve(self, ctx: Context, user: str, sku: str, qty: int) -> dict[str, Any]:
        """Hold ``qty`` units of ``sku`` for ``user``, or raise (changing nothing)."""
        item = ctx.component(Stock).take(ctx, sku, qty)  # raises before any change
        rid = _new_id(ctx, "r")
        timer = ctx.raise_later(self.hold, Carts.expire, rid)
        reservation = Reservation(
            id=rid,
            user=user,
            sku=sku,
            qty=qty,
            price_cents=item.price_cents,
            expires_at=ctx.now + self.hold,
            timer=timer,
        )
        self.reservations[rid] = reservation
        self.carts.setdefault(user, []).append(rid)
        return {**_reservation_view(reservation), "stock": item.stock}

    @update
    def expire(self, ctx: Context, rid: str) -> None:
        """The hold is over (a timer's event): the units go back on the shelf."""
        reservation = self.reservations.get(rid)
        if reservation is not None:  # checked out or released since: nothing to do
            self._drop(ctx, reservation, "expire")

    @update
    def release(self, ctx: Context, user: str, rid: str) -> dict[str, Any]:
        """``user`` gives a reservation up before it expires."""
        reservation = self.reservations.get(rid)
        if reservation is None or reservation.user != user:
            raise UnknownReservationError(f"{user!r} has no reservation {rid!r}")
        ctx.cancel(reservation.timer)
        self._drop(ctx, reservation, "release")
        return _reservation_view(reservation)

    @update
    def checkout(self, ctx: Context, user: str) -> dict[str, Any]:
        """Turn every reservation of ``user`` into one order."""
        rids = self.carts.pop(user, None)
        if not rids:
            raise EmptyCartError(f"{user!r} has nothing reserved")
        stock = ctx.component(Stock)
        lines = []
        for rid in rids:
            reservation = self.reservations.pop(rid)
            ctx.cancel(reservation.timer)
            stock.sell(ctx, reservation.sku, reservation.qty)
            lines.append(OrderLine(reservation.sku, reservation.qty, reservation.price_cents))
        total = sum(line.qty * line.price_cents for line in lines)
        order = Order(_new_id(ctx, "o"), user, lines, total, ctx.now)
        self.orders[order.id] = order
        return _order_view(order)

    def _drop(self, ctx: Context, reservation: Reservation, why: str) -> None:
        del self.reservations[reservation.id]
        rids = self.carts[reservation.user]
        rids.remove(reservation.id)
        if not rids:
            del self.carts[reservation.user]
        ctx.component(Stock).put_back(ctx, reservation.sku, reservation.qty, why)

    @query
    def cart(self, user: str) -> list[dict[str, Any]]:
        return [_reservation_view(self.reservations[rid]) for rid in self.carts.get(user, ())]

    @query
    def order(self, order_id: str) -> dict[str, Any] | None:
        order = self.orders.get(order_id)
        return None if order is None else _order_view(order)


# --- the web app -------------------------------------------------------------------


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stock: int = Field(ge=0, le=1_000_000_000)
    price: float = Field(ge=0, le=1_000_000, allow_inf_nan=False)


class ReserveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(pattern=NAME)
    qty: int = Field(default=1, ge=1, le=1_000_000)


Sku = Annotated[str, Path(pattern=NAME)]
User = Annotated[str, Path(pattern=NAME)]


async def current() -> dominoes.State:
    # An async dependency: FastAPI would run a sync one in a thread pool, and
    # queries belong on the replica's event loop.
    return dominoes.current()


Shop = Annotated[dominoes.State, Depends(current)]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = dominoes.current()  # the lifespan runs on its replica too
    log.info(
        "replica %d of %d up; reservations hold for %gs",
        state.index,
        state.replicas,
        state.component(Carts).hold,
    )
    yield
    log.info("replica %d stopping", state.index)


app = FastAPI(title="dominoes shop", lifespan=lifespan)


@app.exception_handler(ShopError)
async def refused(request: Request, exc: ShopError) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc), "replica": dominoes.current().index}, status_code=exc.status
    )


@app.get("/healthz")
async def healthz(state: Shop) -> dict[str, Any]:
    return {"status": "ok", "replica": state.index, "replicas": state.replicas}


@app.put("/items/{sku}")
async def put_item(sku: Sku, body: ItemIn, state: Shop) -> dict[str, Any]:
    view = await state.call(Stock.restock, sku, body.stock, round(body.price * 100))
    return {**view, "replica": state.index}


@app.get("/items/{sku}")
async def get_item(sku: Sku, state: Shop) -> dict[str, Any]:
    view = state.query(Stock.item, sku)
    if view is None:
        raise UnknownItemError(f"no item {sku!r}")
    return {**view, "replica": state.index}


@app.get("/items")
async def list_items(state: Shop) -> dict[str, Any]:
    return {"items": state.query(Stock.all), "replica": state.index}


@app.post("/carts/{user}/reserve")
async def reserve(user: User, body: ReserveIn, state: Shop) -> dict[str, Any]:
    held = await state.call(Carts.reserve, user, body.sku, body.qty)
    return {**held, "replica": state.index}


@app.get("/carts/{user}")
async def get_cart(user: User, state: Shop) -> dict[str, Any]:
    reservations = state.query(Carts.cart, user)
    total = sum(r["qty"] * r["price"] for r in reservations)
    return {
        "user": user,
        "reservations": reservations,
        "total": round(total, 2),
        "replica": state.index,
    }


@app.delete("/carts/{user}/reservations/{rid}")
async def release(
    user: User, rid: Annotated[str, Path(max_length=64)], state: Shop
) -> dict[str, Any]:
    released = await state.call(Carts.release, user, rid)
    return {"released": released, "replica": state.index}


@app.post("/carts/{user}/checkout")
async def checkout(user: User, state: Shop) -> dict[str, Any]:
    order = await state.call(Carts.checkout, user)
    return {**order, "replica": state.index}


@app.get("/orders/{order_id}")
async def get_order(order_id: Annotated[str, Path(max_length=64)], state: Shop) -> dict[str, Any]:
    order = state.query(Carts.order, order_id)
    if order is None:
        raise UnknownOrderError(f"no order {order_id!r}")
    return {**order, "replica": state.index}


@app.websocket("/ws/stock")
async def stock_feed(ws: WebSocket, sku: Annotated[str | None, Query(pattern=NAME)] = None) -> None:
    """Every stock change (of one ``sku`` if given) as JSON, in log order.

    The first message, ``{"type": "hello", "replica": i}``, is sent once the
    subscription is in place: every change applied after it is delivered.
    """
    state = dominoes.current()
    topic = "stock" if sku is None else f"stock:{sku}"
    await ws.accept()
    with state.subscribe(topic) as sub:
        # A client that leaves closes the subscription, which ends the loop below.
        watcher = asyncio.ensure_future(_until_disconnect(ws))
        watcher.add_done_callback(lambda _: sub.close())
        try:
            await ws.send_json({"type": "hello", "replica": state.index, "topic": topic})
            async for message in sub:
                await ws.send_json(message)
        except SlowSubscriberError:
            await ws.close(code=1013, reason="too slow: fell behind the stock feed")
        except WebSocketDisconnect:
            pass
        else:
            if not watcher.done():  # the replica is stopping
                await ws.close(code=1001, reason="replica stopping")
        finally:
            watcher.cancel()


async def _until_disconnect(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


service = Service("shop", [Stock(), Carts()], asgi=app)
