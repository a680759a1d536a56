"""``python -m dominoes.demo``: three in-process replicas of a counter converge.

A stand-in main job until ``dominoes run`` serves a real service: it runs a
``testing.Cluster``, submits increments from every replica in random order,
fires a replicated timer, kills and restarts a replica, and shows that every
replica ends with identical state.
"""

from __future__ import annotations

import random

from dominoes import Component, Context, Service, query, update
from dominoes.testing import Cluster


class Counter(Component):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.resets = 0

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]

    @update
    def reset_later(self, ctx: Context, key: str, delay: float) -> int:
        return ctx.raise_later(delay, Counter.reset, key)

    @update
    def reset(self, ctx: Context, key: str) -> None:
        self.counts.pop(key, None)
        self.resets += 1

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)


def main() -> None:
    rng = random.Random(7)
    cluster = Cluster(Service("demo", [Counter()]), replicas=3)
    print(f"started {cluster}")
    for _ in range(30):
        replica, key = rng.randrange(3), rng.choice("abc")
        cluster.submit_nowait(replica, Counter.incr, key, by=rng.randint(1, 5))
        cluster.step(rng.randrange(3), limit=rng.randint(1, 3))
    cluster.run_until_quiet()
    print("after 30 increments from random replicas:")
    for r in cluster:
        print(f"  replica {r.index}: {dict(sorted(r.component(Counter).counts.items()))}")

    cluster.call(0, Counter.reset_later, "a", 5.0)
    cluster.kill(0)
    print("armed a 5 s replicated timer on replica 0, then killed replica 0")
    cluster.advance(6.0)
    print(f"6 s later (fake clock), 'a' on replica 1: {cluster.query(1, Counter.get, 'a')}")
    cluster.restart(0)
    cluster.run_until_quiet()
    print(f"restarted replica 0 from a snapshot taken through the log: {cluster[0]}")
    cluster.assert_converged()
    for r in cluster:
        digest = r.machine.digest()["Counter"]
        print(f"  replica {r.index}: cursor {r.cursor}, state digest {digest}")
    print("all replicas converged")


if __name__ == "__main__":
    main()
