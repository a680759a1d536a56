"""What changing ``copies`` of a live partitioned service costs its clients.

    python benchmarks/copies.py [--clients N] [--keys K] [--changes C] [--seconds S] [--json F]

The service is ``examples.partitioned`` (a counter partitioned by key, 64
partitions, ``copies=1``) on 2 replicas.  First ``--keys`` keys (default
50,000) are written, so that the partitions have state to move.  Then
``--clients`` threads (default 8) each send ``INCR w<i>`` over their own TCP
connection as fast as replies come, recording every reply's latency; every
writer's replies must count 1, 2, 3, ... (a lost or doubled write fails the
run).

Phases, in one run:

``steady``
    ``--seconds`` (default 3) of load, left alone.
``changes``
    ``--changes`` (default 6) reconfigurations through the log, alternating
    ``copies 2`` (each replica gains the 32 partitions it did not hold: half
    the keys move to it) and ``copies 1`` (each drops them).  Each is timed
    from its submission until both replicas report the partitions they
    should hold (``dominoes stats``: the gainers have loaded them): the
    *change time*.  The replies meanwhile are the *latency under change*.

Reported: p50/p99/max reply latency per phase, the change times, and what a
snapshot of the moved state costs here: encoding and decoding, with msgpack,
a dict of half the keys (what the 32 moved partitions hold), the floor of
any transfer of that state.  Ratios: changes p99 / steady p99, and changes
max / that snapshot's time (the issue's bound: a change should pause a client
no longer than a snapshot of the moved partitions takes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from dominoes import connect, reconfiguration

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ask(run_dir: Path, index: int, op: str) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(run_dir / f"replica-{index}.sock"))
        s.sendall(json.dumps({"op": op}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def held(run_dir: Path) -> list[int]:
    return [ask(run_dir, i, "stats")["replica"]["core"]["partitions"]["Counter"] for i in (0, 1)]


class Writer(threading.Thread):
    def __init__(self, port: int, key: str) -> None:
        super().__init__(daemon=True)
        self.port, self.key = port, key
        self.samples: list[tuple[float, float]] = []
        self.replies: list[str] = []
        self.stopping = False

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            reader = sock.makefile("rb")
            while not self.stopping:
                t0 = time.monotonic()
                sock.sendall(f"INCR {self.key}\n".encode())
                line = reader.readline()
                self.samples.append((t0, time.monotonic() - t0))
                self.replies.append(line.decode().strip())

    def check(self) -> None:
        want = [str(i) for i in range(1, len(self.replies) + 1)]
        assert self.replies == want, f"{self.key}: replies are not 1, 2, 3, ..."


def preload(port: int, keys: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")
        batch = 1000
        for start in range(0, keys, batch):
            lines = "".join(f"INCR key{i}\n" for i in range(start, min(keys, start + batch)))
            sock.sendall(lines.encode())
            for _ in range(min(keys, start + batch) - start):
                assert reader.readline().strip() == b"1"


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


def snapshot_time(keys: int) -> float:
    """Encode and decode, with msgpack, what the moved partitions hold: best of 5."""
    state = {"counts": {f"key{i}": 1 for i in range(keys)}}
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        msgspec.msgpack.decode(msgspec.msgpack.encode(state))
        best = min(best, time.perf_counter() - t0)
    return best


async def submit(run_dir: Path, copies: int) -> None:
    client = await connect("counter", run_dir=run_dir)
    try:
        await client.submit(reconfiguration.EVENT, reconfiguration.copies("Counter", copies))
    finally:
        await client.close()


def change(run_dir: Path, copies: int) -> float:
    """Change ``copies``; the time until both replicas hold what they should."""
    want = [64, 64] if copies == 2 else [32, 32]
    t0 = time.monotonic()
    asyncio.run(submit(run_dir, copies))
    while held(run_dir) != want:
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"copies {copies}: the replicas hold {held(run_dir)} after 60 s")
        time.sleep(0.001)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--changes", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dominoes-copies-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "dominoes", "run", "examples.partitioned:service"]
        cmd += ["--replicas", "2", "--port", str(port), "--run-dir", str(run_dir)]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving on" in line:
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()
        writers: list[Writer] = []
        try:
            preload(port, args.keys)
            writers = [Writer(port, f"w{i}") for i in range(args.clients)]
            for w in writers:
                w.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            time.sleep(args.seconds)
            t1 = time.monotonic()
            took = [change(run_dir, 2 if i % 2 == 0 else 1) for i in range(args.changes)]
            t2 = time.monotonic()
        finally:
            for w in writers:
                w.stopping = True
            for w in writers:
                w.join(30)
            proc.terminate()
            proc.wait(60)
    for w in writers:
        w.check()
    steady = percentiles([lat for w in writers for t, lat in w.samples if t0 <= t < t1])
    during = percentiles([lat for w in writers for t, lat in w.samples if t1 <= t < t2])
    snap = snapshot_time(args.keys // 2)
    result = {
        "clients": args.clients,
        "keys": args.keys,
        "steady": steady,
        "changes": during,
        "change_ms": [round(x * 1e3, 1) for x in took],
        "snapshot_of_moved_ms": round(snap * 1e3, 2),
        "ratios": {
            "changes_p99/steady_p99": round(during["p99_ms"] / steady["p99_ms"], 2),
            "changes_max/snapshot_of_moved": round(during["max_ms"] / (snap * 1e3), 2),
        },
        "writes": sum(len(w.replies) for w in writers),
        "cpus": os.cpu_count(),
    }
    print(f"steady:   {steady}")
    print(f"changes:  {during}")
    print(f"change times (ms, copies 2, 1, 2, ...): {result['change_ms']}")
    print(
        f"snapshot of the moved state ({args.keys // 2} keys): {result['snapshot_of_moved_ms']} ms"
    )
    print(f"ratios: {result['ratios']}")
    print(f"{result['writes']} writes, each client's replies 1, 2, 3, ...: none lost, none doubled")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
