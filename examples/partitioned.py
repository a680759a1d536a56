"""``examples.counter``'s line protocol over a partitioned counter.

Each key lives on one replica (``copies=1``), so an ``INCR`` is applied only
where its key's partition is held, and a ``GET`` of a key held elsewhere is
forwarded to its holder through the log::

    dominoes run examples.partitioned:service --replicas 2 --port 7000

``INCR <key> [n]``, ``GET <key>`` and ``INFO`` answer as ``examples.counter``
does, from whichever replica the connection landed on.
"""

from __future__ import annotations

from dominoes import Component, Context, Partition, Service, query, update

from .counter import INT64, serve


class Counter(Component, partition=Partition("key", copies=1)):
    """The counter, split by key: each replica holds the keys of its partitions."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        value = self.counts.get(key, 0) + by
        if not INT64[0] <= value <= INT64[1]:
            raise OverflowError("increment would overflow")
        self.counts[key] = value
        return value

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)


service = Service("counter", [Counter()], tcp=serve)
