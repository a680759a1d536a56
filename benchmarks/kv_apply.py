"""Where a replicated SET's time goes: the apply path, one process, no sockets.

    python benchmarks/kv_apply.py [--commands N] [--keyspace K] [--json]

Every replica applies every SET: it decodes the log entry and stores the key
in its own dict.  This measures, per command, on the same N ``SET key value``
commands (keys drawn from K, like ``redis-benchmark -r K``), in one process:

* ``dict_store``: ``d[key] = value`` with keys as a parser hands them over
  (fresh ``bytes`` objects, so each store hashes the key and compares it with
  the stored one: cache misses in a dict of K keys).  The plain baseline
  server pays this once per SET; a replicated service pays it on every replica.
* ``decode_store``: msgspec-decode the entries, then the same stores: the floor
  of what a replica that does not own the entry must do.
* ``kv_apply``: the KV service's real apply path on a replica that does not
  own the entries (``testing.Cluster``: read the log, decode, dispatch
  ``Commands.run``, lazy expiry, ``Strings.set``), in entries of 256 commands.

It prints ns per command (median of 5 runs) and the ratios to ``dict_store``.
Not a test; the figures are what the closing notes' cost model uses.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from typing import Any

import msgspec
from dominoes.components.kv import Commands, make_service

from dominoes.testing import Cluster

REPEAT = 5
PER_ENTRY = 256


def _commands(n: int, keyspace: int, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    return [[b"SET", b"key:%012d" % rng.randrange(keyspace), b"xxx"] for _ in range(n)]


def _entries(commands: list[list[bytes]]) -> list[bytes]:
    return [
        msgspec.msgpack.encode(commands[i : i + PER_ENTRY])
        for i in range(0, len(commands), PER_ENTRY)
    ]


def _full_dict(keyspace: int, seed: int) -> dict[bytes, bytes]:
    """A dict holding every key of the keyspace, as under load."""
    return {args[1]: args[2] for args in _commands(keyspace, keyspace, seed + 1)}


def dict_store(n: int, keyspace: int, seed: int) -> float:
    d = _full_dict(keyspace, seed)
    decoded = [msgspec.msgpack.decode(e) for e in _entries(_commands(n, keyspace, seed))]
    t0 = time.perf_counter()
    for entry in decoded:
        for args in entry:
            d[args[1]] = args[2]
    return (time.perf_counter() - t0) / n * 1e9


def decode_store(n: int, keyspace: int, seed: int) -> float:
    d = _full_dict(keyspace, seed)
    entries = _entries(_commands(n, keyspace, seed))
    decode = msgspec.msgpack.Decoder(list[list[bytes]]).decode
    t0 = time.perf_counter()
    for raw in entries:
        for args in decode(raw):
            d[args[1]] = args[2]
    return (time.perf_counter() - t0) / n * 1e9


def kv_apply(n: int, keyspace: int, seed: int) -> float:
    slots = ((n + keyspace) // PER_ENTRY + 8) * 64  # an entry of 256 SETs spans ~32 slots
    cluster = Cluster(make_service(), replicas=2, capacity=1 << slots.bit_length())
    commands = _commands(keyspace, keyspace, seed + 1) + _commands(n, keyspace, seed)
    warm = keyspace // PER_ENTRY * PER_ENTRY
    for i in range(0, warm, PER_ENTRY):
        cluster.submit_nowait(0, Commands.run, commands[i : i + PER_ENTRY])
    while cluster.step(1):
        pass
    for i in range(warm, len(commands), PER_ENTRY):
        cluster.submit_nowait(0, Commands.run, commands[i : i + PER_ENTRY])
    timed = len(commands) - warm
    del commands  # no live lists for the collector to walk (a replica has none either)
    gc.collect()
    t0 = time.perf_counter()
    while cluster.step(1):  # replica 1 owns none of them
        pass
    return (time.perf_counter() - t0) / timed * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--keyspace", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"dict_store": [], "decode_store": [], "kv_apply": []}
    for r in range(REPEAT):  # interleaved
        for name, fn in (
            ("dict_store", dict_store),
            ("decode_store", decode_store),
            ("kv_apply", kv_apply),
        ):
            results[name].append(fn(args.commands, args.keyspace, seed=r))
            print(
                f"run {r + 1}/{REPEAT} {name:13s} {results[name][-1]:7.0f} ns/command",
                file=sys.stderr,
            )
    medians = {k: round(statistics.median(v), 1) for k, v in results.items()}
    out: dict[str, Any] = {
        "ns_per_command": medians,
        "runs": results,
        "ratios_to_dict_store": {
            k: round(v / medians["dict_store"], 2) for k, v in medians.items()
        },
        "meta": {
            "commands": args.commands,
            "keyspace": args.keyspace,
            "per_entry": PER_ENTRY,
            "python": platform.python_version(),
        },
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"SET key value, {args.commands:,} commands over {args.keyspace:,} keys "
        f"(median of {REPEAT}; ns per command)"
    )
    for name, ns in medians.items():
        print(f"  {name:13s} {ns:7.0f}   {out['ratios_to_dict_store'][name]:5.2f}x dict_store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
