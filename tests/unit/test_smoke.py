import asyncio

from dominoes import Component, Context, Service, update
from dominoes.testing import Cluster


class Counter(Component):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]


async def test_submit_runs_on_the_configured_loop() -> None:
    cluster = Cluster(Service("c", [Counter()]), replicas=2)
    assert await cluster.submit(1, Counter.incr, "k", by=3) == 3
    loop = type(asyncio.get_running_loop()).__module__
    assert loop.startswith("uvloop") or loop.startswith("asyncio")
    cluster.assert_converged()
