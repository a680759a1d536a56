"""The shop example (examples/shop/app.py) served by a real ``dominoes run --replicas 2``.

A FastAPI app on every replica, driven with httpx (sync and async) and
WebSocket clients.  Every response names the replica that answered it, so
each test knows which core served each request: a write through one
replica is read on the *other* one; reservations race on both; each feed
subscriber, on either replica, gets every change once, in log order.  Only
correctness is asserted, never timing: conditions are polled with generous
deadlines, never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.asyncio.client as ws_client
import websockets.exceptions
import websockets.sync.client as ws_sync

from .harness import Service
from .shop_helpers import (
    AsyncReplicas,
    SyncReplicas,
    answered_by,
    async_clients,
    base_url,
    shop_service,
    wait_for,
    ws_url,
)

pytestmark = pytest.mark.integration

#: seconds to wait for a message or a condition (a noisy 2-core machine)
PATIENCE = 30.0

_names = itertools.count()


def fresh(prefix: str) -> str:
    """A name no other test (nor the other event loop's run of this one) uses."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The shop on 2 replicas; reservations hold for an hour, so none expires here."""
    with shop_service(tmp_path_factory.mktemp("shop") / "run", hold=3600) as svc:
        yield svc


# --- a write through one replica, read on the other ----------------------------------


def test_sync_writes_through_one_replica_are_read_on_the_other(shop: Service) -> None:
    sku, user = fresh("sync"), fresh("ann")
    with SyncReplicas(base_url(shop)) as replicas:
        for i in range(100):
            put = replicas.on[i % 2].put(f"/items/{sku}", json={"stock": 100 + i, "price": 2.5})
            assert put.status_code == 200, put.text
            other = 1 - answered_by(put)
            item = replicas.read(other, f"/items/{sku}").json()
            assert (item["stock"], item["version"]) == (100 + i, put.json()["version"])

        ids: list[str] = []
        for i in range(20):
            held = replicas.on[i % 2].post(f"/carts/{user}/reserve", json={"sku": sku, "qty": 2})
            assert held.status_code == 200, held.text
            ids.append(held.json()["reservation"])
            other = 1 - answered_by(held)
            cart = replicas.read(other, f"/carts/{user}").json()
            assert [r["reservation"] for r in cart["reservations"]] == ids
            item = replicas.read(other, f"/items/{sku}").json()
            assert (item["stock"], item["reserved"]) == (199 - 2 * len(ids), 2 * len(ids))
        assert len(set(ids)) == len(ids)

        gone = ids.pop(3)
        released = replicas.on[0].delete(f"/carts/{user}/reservations/{gone}")
        assert released.status_code == 200, released.text
        other = 1 - answered_by(released)
        cart = replicas.read(other, f"/carts/{user}").json()
        assert [r["reservation"] for r in cart["reservations"]] == ids
        assert replicas.read(other, f"/items/{sku}").json()["stock"] == 199 - 2 * len(ids)

        order = replicas.on[1].post(f"/carts/{user}/checkout")
        assert order.status_code == 200, order.text
        assert order.json()["total"] == 2.5 * 2 * len(ids)
        other = 1 - answered_by(order)
        seen = replicas.read(other, f"/orders/{order.json()['order']}").json()
        assert seen["lines"] == order.json()["lines"]
        assert replicas.read(other, f"/carts/{user}").json()["reservations"] == []
        item = replicas.read(other, f"/items/{sku}").json()
        assert (item["stock"], item["reserved"], item["sold"]) == (199 - 38, 0, 38)


@pytest.mark.one_loop
async def test_async_writes_through_one_replica_are_read_on_the_other(shop: Service) -> None:
    sku, user = fresh("async"), fresh("bob")
    async with await AsyncReplicas.open(base_url(shop)) as replicas:
        for i in range(100):
            put = await replicas.on[i % 2].put(f"/items/{sku}", json={"stock": 50 + i, "price": 1})
            assert put.status_code == 200, put.text
            item = (await replicas.read(1 - answered_by(put), f"/items/{sku}")).json()
            assert (item["stock"], item["version"]) == (50 + i, put.json()["version"])

        ids: list[str] = []
        for i in range(20):
            held = await replicas.on[i % 2].post(
                f"/carts/{user}/reserve", json={"sku": sku, "qty": 1}
            )
            assert held.status_code == 200, held.text
            ids.append(held.json()["reservation"])
            other = 1 - answered_by(held)
            cart = (await replicas.read(other, f"/carts/{user}")).json()
            assert [r["reservation"] for r in cart["reservations"]] == ids
            items = (await replicas.read(other, "/items")).json()["items"]
            (item,) = (x for x in items if x["sku"] == sku)
            assert (item["stock"], item["reserved"]) == (149 - len(ids), len(ids))

        order = await replicas.on[0].post(f"/carts/{user}/checkout")
        assert order.status_code == 200, order.text
        other = 1 - answered_by(order)
        assert (await replicas.read(other, f"/carts/{user}")).json()["reservations"] == []
        item = (await replicas.read(other, f"/items/{sku}")).json()
        assert (item["stock"], item["reserved"], item["sold"]) == (129, 0, 20)


# --- the WebSocket feed ----------------------------------------------------------------


async def subscribe(url: str) -> tuple[ws_client.ClientConnection, int]:
    """A feed subscriber, once the server said hello (and which replica it is on)."""
    ws = await ws_client.connect(url, open_timeout=PATIENCE)
    hello = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
    assert hello["type"] == "hello", hello
    replica: int = hello["replica"]
    return ws, replica


async def subscribers_on_each_replica(url: str) -> list[tuple[ws_client.ClientConnection, int]]:
    found: dict[int, ws_client.ClientConnection] = {}
    for _ in range(200):
        ws, replica = await subscribe(url)
        if replica in found:
            await ws.close()
        else:
            found[replica] = ws
        if len(found) == 2:
            return [(ws, replica) for replica, ws in sorted(found.items())]
    raise AssertionError(f"feed connections reached only replicas {sorted(found)}")


async def events_until(
    ws: ws_client.ClientConnection, sku: str, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """``sku``'s events, up to the first one that is ``last``."""
    events: list[dict[str, Any]] = []
    while not events or not last(events[-1]):
        message = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
        if message.get("sku") == sku:
            events.append(message)
    return events


# --- concurrent reservations -----------------------------------------------------------

CLIENTS = 8
ATTEMPTS = 500
STOCK = 1000


@pytest.mark.one_loop
async def test_concurrent_reservations_never_oversell(shop: Service) -> None:
    """8 clients (4 connections on each replica) x 500 one-unit reservations of 1,000 units.

    A feed subscriber on each replica sees the 1,000 reservations, in the
    one order the log gave them.
    """
    sku = fresh("hot")
    base = base_url(shop)
    subs = await subscribers_on_each_replica(ws_url(shop, f"/ws/stock?sku={sku}"))
    pairs = await async_clients(base, per_replica=CLIENTS // 2)
    try:
        # Read the feeds while the buyers run: a subscriber that fell 1,024
        # messages behind would be dropped.
        readers = [
            asyncio.ensure_future(events_until(ws, sku, lambda e: e["price"] == 0.01))
            for ws, _ in subs
        ]
        put = await pairs[0][0].put(f"/items/{sku}", json={"stock": STOCK, "price": 9.99})
        assert put.status_code == 200, put.text

        async def buyer(
            client: httpx.AsyncClient, user: str
        ) -> tuple[Counter[int], set[int], list[str]]:
            statuses: Counter[int] = Counter()
            answered: set[int] = set()
            ids: list[str] = []
            for _ in range(ATTEMPTS):
                r = await client.post(f"/carts/{user}/reserve", json={"sku": sku, "qty": 1})
                statuses[r.status_code] += 1
                answered.add(answered_by(r))
                if r.status_code == 200:
                    ids.append(r.json()["reservation"])
            return statuses, answered, ids

        users = [f"{sku}-buyer{n}" for n in range(CLIENTS)]
        results = await asyncio.gather(
            *(buyer(client, user) for (client, _), user in zip(pairs, users, strict=True))
        )
        # The last change (a new price) ends the readers.
        last = await pairs[0][0].put(f"/items/{sku}", json={"stock": 0, "price": 0.01})
        assert last.status_code == 200, last.text

        statuses = sum((s for s, _, _ in results), Counter[int]())
        assert dict(statuses) == {200: STOCK, 409: CLIENTS * ATTEMPTS - STOCK}
        assert set().union(*(a for _, a, _ in results)) == {0, 1}, "one replica took no request"
        ids = [rid for _, _, got in results for rid in got]
        assert len(set(ids)) == STOCK

        async with await AsyncReplicas.open(base) as replicas:
            for replica in range(2):
                item = (await replicas.read(replica, f"/items/{sku}")).json()
                assert (item["stock"], item["reserved"], item["sold"]) == (0, STOCK, 0), item
                for user, (_, _, held) in zip(users, results, strict=True):
                    cart = (await replicas.read(replica, f"/carts/{user}")).json()
                    assert [r["reservation"] for r in cart["reservations"]] == held

        feeds = await asyncio.wait_for(asyncio.gather(*readers), PATIENCE)
        expected = [("restock", STOCK, 0)]
        expected += [("reserve", STOCK - n, n) for n in range(1, STOCK + 1)]
        expected += [("restock", 0, STOCK)]
        for (_, replica), events in zip(subs, feeds, strict=True):
            seen = [(e["event"], e["stock"], e["reserved"]) for e in events]
            assert seen == expected, f"subscriber on replica {replica}"
        assert [e["version"] for e in feeds[0]] == [e["version"] for e in feeds[1]]
    finally:
        for client, _ in pairs:
            await client.aclose()
        for ws, _ in subs:
            await ws.close()


@pytest.mark.one_loop
async def test_feed_subscribers_on_both_replicas_get_each_change_once_in_order(
    shop: Service,
) -> None:
    sku, user = fresh("feed"), fresh("cy")
    subs = [
        *await subscribers_on_each_replica(ws_url(shop)),  # every SKU's changes
        *await subscribers_on_each_replica(ws_url(shop, f"/ws/stock?sku={sku}")),  # one SKU's
    ]
    try:
        async with await AsyncReplicas.open(base_url(shop)) as replicas:
            # The changes, written alternately through each replica, and what
            # each must publish: (event, stock, reserved, sold).
            expected: list[tuple[str, int, int, int]] = []
            put = await replicas.on[0].put(f"/items/{sku}", json={"stock": 10, "price": 3})
            assert put.status_code == 200, put.text
            expected.append(("restock", 10, 0, 0))
            ids = []
            for i in range(6):
                held = await replicas.on[(i + 1) % 2].post(
                    f"/carts/{user}/reserve", json={"sku": sku, "qty": 1}
                )
                assert held.status_code == 200, held.text
                ids.append(held.json()["reservation"])
                expected.append(("reserve", 9 - i, i + 1, 0))
            released = await replicas.on[1].delete(f"/carts/{user}/reservations/{ids[0]}")
            assert released.status_code == 200, released.text
            expected.append(("release", 5, 5, 0))
            order = await replicas.on[0].post(f"/carts/{user}/checkout")
            assert order.status_code == 200, order.text
            expected += [("sell", 5, 5 - n, n) for n in range(1, 6)]  # one per reservation
            last = await replicas.on[1].put(f"/items/{sku}", json={"stock": 0, "price": 3})
            assert last.status_code == 200, last.text
            expected.append(("restock", 0, 0, 5))
            last_version = last.json()["version"]

        assert {replica for _, replica in subs} == {0, 1}
        seen = [
            await events_until(ws, sku, lambda e: e["version"] == last_version) for ws, _ in subs
        ]
        for (_, replica), events in zip(subs, seen, strict=True):
            got = [(e["event"], e["stock"], e["reserved"], e["sold"]) for e in events]
            assert got == expected, f"subscriber on replica {replica}"
        versions = [[e["version"] for e in events] for events in seen]
        assert all(v == versions[0] for v in versions), versions
        assert versions[0] == sorted(set(versions[0]))  # each once, in log order
        assert versions[0][0] == put.json()["version"]
    finally:
        for ws, _ in subs:
            await ws.close()


# --- the replicated timer ----------------------------------------------------------------

HOLD = 2.0


def test_a_reservation_expires_and_its_stock_returns_on_both_replicas(tmp_path: Path) -> None:
    """A hold of 2 s (``SHOP_HOLD_SECONDS``): the units come back once, seen from both
    replicas; a reservation checked out in time stays sold."""
    sku = "kettle"
    with shop_service(tmp_path / "run", hold=HOLD) as svc:
        for replica in range(2):
            svc.wait_for_line(f"replica {replica} of 2 up; reservations hold for {HOLD:g}s")
        with SyncReplicas(base_url(svc)) as replicas, contextlib.ExitStack() as stack:
            feeds: list[tuple[ws_sync.ClientConnection, int]] = []
            for _ in range(200):
                url = ws_url(svc, f"/ws/stock?sku={sku}")
                ws = stack.enter_context(ws_sync.connect(url, open_timeout=PATIENCE))
                replica = json.loads(ws.recv(timeout=PATIENCE))["replica"]
                if replica in {r for _, r in feeds}:
                    ws.close()
                else:
                    feeds.append((ws, replica))
                if len(feeds) == 2:
                    break
            assert len(feeds) == 2, "feed connections reached only one replica"

            assert replicas.on[0].put(f"/items/{sku}", json={"stock": 5, "price": 20}).is_success
            held = replicas.on[1].post("/carts/ann/reserve", json={"sku": sku, "qty": 3})
            assert held.status_code == 200, held.text
            assert held.json()["expires_at"] > 0
            # Bob reserves one and checks out at once.  If the machine stalled
            # for the whole hold in between, his reservation expired first
            # (409, nothing reserved); either way the units balance.
            assert replicas.on[0].post("/carts/bob/reserve", json={"sku": sku, "qty": 1}).is_success
            checkout = replicas.on[1].post("/carts/bob/checkout")
            assert checkout.status_code in (200, 409), checkout.text
            sold = 1 if checkout.status_code == 200 else 0

            final = (5 - sold, 0, sold)
            last: dict[int, Any] = {}

            def returned() -> bool:
                for replica in range(2):
                    item = replicas.read(replica, f"/items/{sku}").json()
                    last[replica] = item
                    if (item["stock"], item["reserved"], item["sold"]) != final:
                        return False
                    if replicas.read(replica, "/carts/ann").json()["reservations"] != []:
                        return False
                return True

            try:
                wait_for(returned, timeout=PATIENCE)
            except AssertionError:
                raise AssertionError(f"stock did not return: {last}") from None

            # Both feeds saw the same changes, Ann's expiry among them, once.
            logs = []
            for ws, replica in feeds:
                events: list[dict[str, Any]] = []
                while [e["event"] for e in events].count("expire") < 2 - sold:
                    events.append(json.loads(ws.recv(timeout=PATIENCE)))
                last_state = (events[-1]["stock"], events[-1]["reserved"], events[-1]["sold"])
                assert last_state == final, (replica, events)
                logs.append([(e["event"], e["stock"], e["reserved"], e["version"]) for e in events])
            assert logs[0] == logs[1]

            # Stopping the service ends each feed with "going away" (1001).
            assert svc.stop() == 0
            for ws, _ in feeds:
                assert close_code(ws) == 1001


def close_code(ws: ws_sync.ClientConnection) -> int | None:
    """Read until the server closes the connection: the close code it sent."""
    try:
        while True:
            ws.recv(timeout=PATIENCE)
    except websockets.exceptions.ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


# --- bad input ---------------------------------------------------------------------------


def test_bad_input_is_refused_and_changes_nothing(shop: Service) -> None:
    sku = fresh("pen")
    with SyncReplicas(base_url(shop)) as replicas:
        c = replicas.on[0]
        put = c.put(f"/items/{sku}", json={"stock": 3, "price": 1.5})
        assert put.status_code == 200
        version = put.json()["version"]

        # 422: not JSON, the wrong shape, out of range, a bad name.
        bad_bodies: list[dict[str, Any]] = [
            {"stock": -1, "price": 1},
            {"stock": "many", "price": 1},
            {"stock": 1},
            {"stock": 1, "price": -0.01},
            {"stock": 1, "price": 1, "colour": "red"},
        ]
        for body in bad_bodies:
            assert c.put(f"/items/{sku}", json=body).status_code == 422, body
        for content in (b"{not json", b"", b"[1, 2]"):
            r = c.put(
                f"/items/{sku}", content=content, headers={"content-type": "application/json"}
            )
            assert r.status_code == 422, content
        assert c.put("/items/no%20spaces", json={"stock": 1, "price": 1}).status_code == 422
        assert c.put("/items/" + "x" * 65, json={"stock": 1, "price": 1}).status_code == 422
        bad_reservations: list[dict[str, Any]] = [
            {"sku": sku, "qty": 0},
            {"sku": sku, "qty": "two"},
            {"sku": sku, "qty": 1.5},
            {"qty": 1},
            {"sku": "", "qty": 1},
        ]
        for body in bad_reservations:
            assert c.post("/carts/dee/reserve", json=body).status_code == 422, body
        r = c.post("/carts/dee/reserve", content=b"sku=x", headers={"content-type": "text/plain"})
        assert r.status_code == 422

        # 404: unknown SKU, reservation, order; on both replicas.
        for replica in range(2):
            assert replicas.read(replica, "/items/no-such-sku").status_code == 404
            assert replicas.read(replica, "/orders/o1-0-000000").status_code == 404
            r = replicas.on[replica].post("/carts/dee/reserve", json={"sku": "no-such-sku"})
            assert r.status_code == 404, r.text
        assert c.delete("/carts/dee/reservations/r1-0-000000").status_code == 404

        # 409: more than in stock; an empty cart's checkout.
        r = replicas.on[1].post("/carts/dee/reserve", json={"sku": sku, "qty": 4})
        assert r.status_code == 409, r.text
        assert "3 in stock" in r.json()["detail"]
        assert replicas.on[0].post("/carts/dee/checkout").status_code == 409

        # Another user cannot release Dee's reservation.
        held = c.post("/carts/dee/reserve", json={"sku": sku, "qty": 3})
        assert held.status_code == 200
        rid = held.json()["reservation"]
        assert c.delete(f"/carts/eve/reservations/{rid}").status_code == 404
        for replica in range(2):
            item = replicas.read(replica, f"/items/{sku}").json()
            # one change since the first PUT: Dee's reservation, nothing refused
            assert (item["stock"], item["reserved"], item["version"]) == (0, 3, version + 1)
            cart = replicas.read(replica, "/carts/dee").json()
            assert [r["reservation"] for r in cart["reservations"]] == [rid]
