"""What a live reconfiguration costs the clients of a running service, against a restart.

    python benchmarks/reconfigure.py [--clients N] [--changes K] [--seconds S] [--json F]

The service is ``examples.counter`` on 2 replicas, with ``--durable`` so that
a restart keeps its state (the fair way to change a service's code without
reconfiguration).  ``--clients`` threads (default 8) each send ``INCR
w<i>`` over their own TCP connection as fast as replies come, and record
every reply's latency.  Every writer's replies must count 1, 2, 3, ... with no
gap and no repeat (a lost or doubled write fails the run).

Phases, in one run:

``steady``
    ``--seconds`` (default 3) of load: the reply latencies of a service that
    is left alone.
``live``
    ``--changes`` (default 20) reconfigurations through the log, one every
    0.2 s, cycling through add ``examples.limits:Audit``, bind
    ``examples.limits:cap`` (order -1, a limit no client reaches), unbind it,
    remove the audit.  Each is submitted from a local client
    (``dominoes.connect``) and timed until its result came back: the
    *reconfiguration latency*.  The clients' replies during this phase are
    the *latency under reconfiguration*.
``restart``
    what changing the service without reconfiguration costs: stop it
    (SIGTERM) and start it again from its durable log (a new version of the
    code would start the same way), and time the *outage*: from the stop
    until every client has a reply again (they reconnect in a loop).

Reported: p50/p99/max reply latency per phase, the reconfiguration latency
(p50, max), the restart outage, and the ratios: live p99 / steady p99, live
max / restart outage.  Absolute figures drift with the machine; the ratios
are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dominoes import connect, reconfiguration

ROOT = Path(__file__).resolve().parents[1]
SPECS = (
    reconfiguration.add("examples.limits:Audit"),
    reconfiguration.bind("Counter.incr", "examples.limits:cap", -1, limit=10**9),
    None,  # unbind the cap (its id is known only once bound)
    reconfiguration.remove("audit"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    def __init__(self, port: int, run_dir: Path, data: Path) -> None:
        cmd = [sys.executable, "-m", "dominoes", "run", "examples.counter:service"]
        cmd += ["--replicas", "2", "--port", str(port), "--run-dir", str(run_dir)]
        cmd += ["--durable", str(data)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "serving on" in line:
                break
        else:
            raise RuntimeError("the counter service did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


class Writer(threading.Thread):
    """INCR its own key in a loop; reconnects when the service goes away."""

    def __init__(self, port: int, key: str) -> None:
        super().__init__(daemon=True)
        self.port, self.key = port, key
        self.replies: list[int] = []
        self.samples: list[tuple[float, float]] = []  # (time sent, latency)
        self.stopping = False
        self.errors: list[str] = []

    def run(self) -> None:
        sock: socket.socket | None = None
        reader: Any = None
        while not self.stopping:
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    reader = sock.makefile("rb")
                except OSError:
                    time.sleep(0.005)
                    continue
            t0 = time.monotonic()
            try:
                sock.sendall(f"INCR {self.key}\n".encode())
                line = reader.readline()
            except OSError:
                line = b""
            if not line:  # the service stopped: the write may or may not be applied
                sock.close()
                sock = None
                continue
            self.samples.append((t0, time.monotonic() - t0))
            text = line.decode().strip()
            try:
                self.replies.append(int(text))
            except ValueError:
                self.errors.append(text)
        if sock is not None:
            sock.close()

    def check(self) -> None:
        """Exactly once: 1, 2, 3, ... (a write cut by the restart may be applied
        without its reply: the next reply then skips one, which is allowed once
        per restart, and only there)."""
        assert not self.errors, self.errors[:3]
        expected = 1
        skips = 0
        for got in self.replies:
            if got == expected + 1:
                skips += 1
                expected = got
            assert got == expected, f"{self.key}: {got} after {expected - 1}"
            expected += 1
        assert skips <= 1, f"{self.key}: {skips} skips"


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


def in_window(writers: list[Writer], start: float, end: float) -> list[float]:
    return [lat for w in writers for t, lat in w.samples if start <= t < end]


async def reconfigure_live(run_dir: Path, changes: int) -> list[float]:
    took: list[float] = []
    client = await connect("counter", run_dir=run_dir)
    try:
        binding = 0
        for i in range(changes):
            spec = SPECS[i % len(SPECS)] or reconfiguration.unbind(binding)
            t0 = time.monotonic()
            result = await client.submit(reconfiguration.EVENT, spec)
            took.append(time.monotonic() - t0)
            if spec["do"] == "bind":
                binding = int(result)
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dominoes-reconf-") as tmp:
        run_dir, data = Path(tmp) / "run", Path(tmp) / "data"
        svc = Service(port, run_dir, data)
        writers = [Writer(port, f"w{i}") for i in range(args.clients)]
        for w in writers:
            w.start()
        try:
            time.sleep(0.5)  # connections up
            t0 = time.monotonic()
            time.sleep(args.seconds)
            t1 = time.monotonic()
            took = asyncio.run(reconfigure_live(run_dir, args.changes))
            t2 = time.monotonic()
            # the same change by restarting: stop, start again (from the durable log)
            replies_before = [len(w.replies) for w in writers]
            t3 = time.monotonic()
            svc.stop()
            svc = Service(port, run_dir, data)

            def all_back() -> bool:
                return all(len(w.replies) > n for w, n in zip(writers, replies_before, strict=True))

            while not all_back():
                time.sleep(0.001)
            t4 = time.monotonic()
            time.sleep(0.5)
        finally:
            for w in writers:
                w.stopping = True
            for w in writers:
                w.join(30)
            svc.stop()
    for w in writers:
        w.check()
    steady = percentiles(in_window(writers, t0, t1))
    live = percentiles(in_window(writers, t1, t2))
    outage = t4 - t3
    result = {
        "clients": args.clients,
        "changes": len(took),
        "steady": steady,
        "live": live,
        "reconfigure_ms": {
            "p50": round(statistics.median(took) * 1e3, 3),
            "max": round(max(took) * 1e3, 3),
        },
        "restart_outage_ms": round(outage * 1e3, 1),
        "ratios": {
            "live_p99/steady_p99": round(live["p99_ms"] / steady["p99_ms"], 2),
            "live_max/restart_outage": round(live["max_ms"] / (outage * 1e3), 4),
        },
        "writes": sum(len(w.replies) for w in writers),
        "cpus": os.cpu_count(),
    }
    print(f"steady:  {steady}")
    print(f"live:    {live}  ({len(took)} reconfigurations)")
    took_ms = result["reconfigure_ms"]
    print(f"reconfigure latency: p50 {took_ms['p50']} ms, max {took_ms['max']} ms")
    print(f"restart outage: {result['restart_outage_ms']} ms")
    print(f"ratios: {result['ratios']}")
    print(f"{result['writes']} writes, each client's replies 1, 2, 3, ...: none lost, none doubled")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
