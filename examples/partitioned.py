"""``examples.counter``'s line protocol over a partitioned counter.

Each key lives on one replica (``copies=1``), so an ``INCR`` is applied only
where its key's partition is held, and a ``GET`` of a key held elsewhere is
forwarded to its holder through the log::

    dominoes run examples.partitioned:service --replicas 2 --port 7000

``INCR <key> [n]``, ``GET <key>`` and ``INFO`` answer as ``examples.counter``
does, from whichever replica the connection landed on.  While a key's only
holder is down, its ``INCR`` and ``GET`` answer ``ERR partition ... has no live
holder``; ``copies2`` keeps each partition on 2 replicas, so that a crash
loses nothing::

    dominoes run examples.partitioned:copies2 --replicas 3 --port 7000
"""

from __future__ import annotations

from dominoes import Component, Partition, Service, query, update

from . import counter
from .counter import serve


class Counter(Component, partition=Partition("key", copies=1)):
    """The counter, split by key: each replica holds the keys of its partitions.

    Its handlers are ``examples.counter``'s, unchanged: a partitioned
    component is written as if it held every key.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    incr = update(counter.Counter.incr.fn)
    get = query(counter.Counter.get.fn)


service = Service("counter", [Counter()], tcp=serve)


class Counter2(Counter, partition=Partition("key", copies=2)):
    """The same, each partition on 2 replicas: run it on 3 or more, and a
    replica's crash loses nothing (its partitions have another live copy)."""

    name = "Counter"


copies2 = Service("counter", [Counter2()], tcp=serve)
