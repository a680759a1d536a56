"""``dominoes.testing.LoopCluster``: a service's ASGI app, per replica, in the test's loop.

The app tests a FastAPI user would write: no sockets, no processes, two
replicas over the in-memory log, driven with ``httpx.ASGITransport``.
"""

from __future__ import annotations

import pytest

from dominoes.testing import LoopCluster
from examples.stock import Stock, service

from .webapps import Counters
from .webapps import service as web_service

pytestmark = pytest.mark.integration


async def test_a_take_on_one_replica_is_seen_on_the_other() -> None:
    async with LoopCluster(service, replicas=2) as cluster:
        async with cluster.client(0) as a, cluster.client(1) as b:
            await a.post("/stock/pen/restock/3")
            await b.post("/stock/pen/take")
            assert (await a.get("/stock/pen")).json()["units"] == 2
        assert cluster.state(1).query(Stock.units_of, "pen") == 2


async def test_a_write_through_one_replica_is_read_on_the_other() -> None:
    async with LoopCluster(service, replicas=2) as cluster:
        async with cluster.client(0) as a, cluster.client(1) as b:
            assert (await a.post("/stock/pen/restock/3")).json() == {"units": 3}
            assert (await b.post("/stock/pen/take")).json() == {"ok": True}
            assert (await a.get("/stock/pen")).json() == {"units": 2, "replica": 0}
            assert (await b.get("/stock/pen")).json() == {"units": 2, "replica": 1}
            for _ in range(2):
                await a.post("/stock/pen/take")
            refused = await b.post("/stock/pen/take")
            assert refused.status_code == 409
        assert cluster.state(1).query(Stock.units_of, "pen") == 0


async def test_each_replica_runs_the_lifespan_and_serves_its_subscribers() -> None:
    async with LoopCluster(web_service, replicas=2) as cluster:
        async with cluster.client(0) as a, cluster.client(1) as b:
            assert (await a.get("/lifespan")).json() == {"started": "replica 0", "replica": 0}
            assert (await b.get("/lifespan")).json() == {"started": "replica 1", "replica": 1}
            zero, one = cluster.state(0), cluster.state(1)
            with zero.subscribe("counts") as on_zero, one.subscribe("counts") as on_one:
                await a.post("/counters/x", content=b"5")
                await b.post("/counters/x", content=b"2")
                assert [(await anext(on_zero))["value"] for _ in range(2)] == [5, 7]
                assert [(await anext(on_one))["value"] for _ in range(2)] == [5, 7]
        assert cluster.state(0).query(Counters.get, "x") == 7
