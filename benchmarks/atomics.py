"""Cost of one word operation: AtomicWords vs PlainWords vs raw ``struct``.

    python benchmarks/atomics.py [--number N] [--json]

Each figure is the median of 5 runs of N back-to-back calls on one process and
one uncontended word of a ``bytearray``, in ns per call including the Python
call itself and the ``timeit`` loop (whose cost is printed separately).
Contended words cost more: a cache line moving between cores takes ~100 ns.
``struct`` has no atomic operations; its ``fetch_add`` row is the racy
read-modify-write that PlainWords does, shown for scale.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import struct
import sys
import timeit
from typing import Any

from dominoes.lowlevel import AtomicWords, PlainWords

REPEAT = 5
OFF = 64

# operation -> statement, with the operation bound to ``f`` (offset OFF)
CALLS = {
    "load_acquire": f"f({OFF})",
    "store_release": f"f({OFF}, 1)",
    "store_seqcst": f"f({OFF}, 1)",
    "cas": f"f({OFF}, 1, 1)",  # succeeds (expected matches) and writes
    "fetch_add": f"f({OFF}, 1)",
    "fence": "f()",
}


def _ns(stmt: str, env: dict[str, Any], number: int) -> float:
    runs = timeit.Timer(stmt, globals=env).repeat(repeat=REPEAT, number=number)
    return round(statistics.median(runs) / number * 1e9, 1)


def measure(number: int) -> tuple[dict[str, dict[str, float | None]], float]:
    """ns/op per implementation and operation (None: not offered), and the loop cost."""
    results: dict[str, dict[str, float | None]] = {}
    buf = bytearray(4096)
    struct.pack_into("=Q", buf, OFF, 1)  # so that cas(OFF, 1, 1) succeeds

    with AtomicWords(buf) as atomic:
        results["AtomicWords"] = {
            op: _ns(stmt, {"f": getattr(atomic, op)}, number) for op, stmt in CALLS.items()
        }

    plain = PlainWords(buf)
    results["PlainWords"] = {
        op: _ns(stmt, {"f": getattr(plain, op)}, number) for op, stmt in CALLS.items()
    }
    plain._buf.release()  # PlainWords keeps a memoryview of buf

    with memoryview(buf) as mv:
        u64 = struct.Struct("<Q")
        env = {"mv": mv, "u": u64.unpack_from, "p": u64.pack_into}
        results["struct"] = {
            "load_acquire": _ns(f"u(mv, {OFF})[0]", env, number),
            "store_release": _ns(f"p(mv, {OFF}, 1)", env, number),
            "store_seqcst": None,
            "cas": None,
            "fetch_add": _ns(f"p(mv, {OFF}, u(mv, {OFF})[0] + 1)", env, number),
            "fence": None,
        }

    return results, _ns("pass", {}, number)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=1_000_000, help="calls per run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    results, loop = measure(args.number)
    if args.json:
        doc = {
            "benchmark": "atomics",
            "unit": "ns/op",
            "statistic": f"median of {REPEAT} runs",
            "number": args.number,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "loop_overhead": loop,
            "results": results,
        }
        print(json.dumps(doc, indent=2))
        return

    impls = list(results)
    print(
        f"ns/op, median of {REPEAT} runs x {args.number:,} calls (Python {sys.version.split()[0]})"
    )
    print(f"{'operation':<15}" + "".join(f"{name:>13}" for name in impls))
    for op in CALLS:
        cells = (results[name][op] for name in impls)
        print(f"{op:<15}" + "".join(f"{'-' if v is None else f'{v:.1f}':>13}" for v in cells))
    print(f"(the bare timeit loop costs {loop:.1f} ns/iteration and is included above)")


if __name__ == "__main__":
    main()
