"""What a replica saves by passing over entries whose partitions it does not hold.

    python benchmarks/scoped.py [--entries N] [--per-entry P] [--replicas R] [--json]

An entry of a partitioned component carries, in a header, the partitions it
touches (``Scoped``), when at least two replicas hold no copy of a partition
(``replicas - copies >= 2``).  A replica that holds none of them, and is not
the entry's origin, advances its cursor and clock without decoding the call.

This measures, in one process (``testing.Cluster``, no sockets), the KV
partitioned with ``copies=1`` over ``--replicas`` (default 4) replicas.
Replica 0 appends ``--entries`` entries (default 4,000), each a ``shard.run``
of ``--per-entry`` SETs (default 16, a pipeline of 16) whose keys share one
hash tag, so each entry touches one partition, held by replica 1.  Per
entry, the time to apply them on:

* ``holder``: replica 1, which applies every command;
* ``passer_scoped``: replica 2, which holds none of them and passes over
  each entry from its header;
* ``passer_unscoped``: replica 2 again, on the same entries appended without
  the header (the appender's scoping turned off): it decodes each entry and
  routes its commands to find nothing it holds;
* ``replicated``: a replica of the replicated KV (``make_service()``), which
  applies every command, as every replica of it does.

It prints ns per entry (median of 5 interleaved runs) and the ratios to
``holder``.  Not a test; the figures go into the design note's cost model.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from typing import Any

from dominoes.components.kv import Commands, make_service
from dominoes.components.kv._shard import partition_of

from dominoes.testing import Cluster

REPEAT = 5


def _tag_held_by(replica: int, replicas: int) -> bytes:
    """A hash tag whose partition (copies=1) is held by ``replica`` alone."""
    return next(b"t%d" % i for i in range(10_000) if partition_of(b"t%d" % i) % replicas == replica)


def _entries(n: int, per_entry: int, tag: bytes) -> list[list[list[bytes]]]:
    return [
        [[b"SET", b"{%s}:%d:%d" % (tag, e, j), b"xxx"] for j in range(per_entry)] for e in range(n)
    ]


def _measure(n: int, per_entry: int, replicas: int, which: str, *, scoped: bool = True) -> float:
    """ns per entry to apply ``n`` entries on the replica ``which`` names."""
    partitioned = which != "replicated"
    service = make_service(copies=1) if partitioned else make_service()
    cluster = Cluster(service, replicas=replicas, capacity=1 << 22)
    if not scoped:  # the appender's scoping off: plain entries, every replica decodes
        cluster.replicas[0].core.machine.scope = lambda *args, **kwargs: None  # type: ignore[method-assign]
    event = "shard.run" if partitioned else Commands.run.event
    entries = _entries(n, per_entry, _tag_held_by(1, replicas))
    for commands in entries:
        cluster.submit_nowait(0, event, commands)
    target = {"holder": 1, "passer_scoped": 2, "passer_unscoped": 2, "replicated": 1}[which]
    del entries
    gc.collect()
    t0 = time.perf_counter()
    while cluster.step(target):
        pass
    took = time.perf_counter() - t0
    machine = cluster.replicas[target].core.machine
    skipped = machine.skipped_entries
    want = n if which == "passer_scoped" else 0
    if skipped != want:
        raise RuntimeError(f"{which}: {skipped} entries passed over, expected {want}")
    return took / n * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=4_000)
    parser.add_argument("--per-entry", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.replicas < 3:
        parser.error("--replicas must be at least 3 (copies=1 leaves R-1 replicas without a copy)")
    names = ("holder", "passer_scoped", "passer_unscoped", "replicated")
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(REPEAT):  # interleaved
        for name in names:
            ns = _measure(
                args.entries, args.per_entry, args.replicas, name, scoped=name != "passer_unscoped"
            )
            results[name].append(ns)
            print(f"run {r + 1}/{REPEAT} {name:16s} {ns:9.0f} ns/entry", file=sys.stderr)
    medians = {k: round(statistics.median(v), 1) for k, v in results.items()}
    out: dict[str, Any] = {
        "ns_per_entry": medians,
        "runs": results,
        "ratios_to_holder": {k: round(v / medians["holder"], 3) for k, v in medians.items()},
        "meta": {
            "entries": args.entries,
            "per_entry": args.per_entry,
            "replicas": args.replicas,
            "python": platform.python_version(),
        },
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{args.entries:,} entries of {args.per_entry} SETs, one partition each, "
        f"KV --partition copies=1 on {args.replicas} replicas (median of {REPEAT})"
    )
    for name in names:
        print(
            f"  {name:16s} {medians[name]:9.0f} ns/entry  "
            f"{out['ratios_to_holder'][name]:6.3f} x holder"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
