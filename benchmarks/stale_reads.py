"""How often a read misses a write acknowledged on the other replica.

    python benchmarks/stale_reads.py [--rounds N] [--json]

Runs the KV service twice, with ``--reads linearizable`` (the default) and
``--reads local``, each on 2 replicas on a free port.  For each it opens one
redis-py connection per replica (``INFO dominoes`` tells which), then loops:
``SET k i`` on one, wait for ``OK``, ``GET k`` on the other (alternating
directions).  A GET that returns anything but ``i`` is stale.  The loop runs
idle, then with four clients pipelining writes to other keys in the
background.  It prints the stale counts: a correctness figure, not a speed.

Requires redis-py (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(reads: str, run_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "dominoes", "run", "dominoes.components.kv:service"]
    cmd += ["--replicas", "2", "--port", str(port), "--run-dir", str(run_dir), "--reads", reads]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                if r.ping():
                    return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the service with --reads {reads} did not start")


def on_each_replica(port: int) -> dict[int, redis.Redis]:
    found: dict[int, redis.Redis] = {}
    for _ in range(200):
        r = redis.Redis(port=port, socket_timeout=10, single_connection_client=True)
        index = int(r.info("dominoes")["replica_index"])
        if index in found:
            r.close()
        else:
            found[index] = r
        if len(found) == 2:
            return found
    raise SystemExit("connections reached only one replica")


def loop(on: dict[int, redis.Redis], rounds: int, key: str) -> int:
    stale = 0
    for i in range(rounds):
        writer, reader = (on[0], on[1]) if i % 2 == 0 else (on[1], on[0])
        writer.set(key, i)
        if reader.get(key) != b"%d" % i:
            stale += 1
    return stale


def background(port: int, stop: threading.Event) -> list[threading.Thread]:
    def write(n: int) -> None:
        with redis.Redis(port=port, single_connection_client=True) as r:
            i = 0
            while not stop.is_set():
                pipe = r.pipeline(transaction=False)
                for _ in range(16):
                    pipe.set(f"noise:{n}", i)
                    i += 1
                pipe.execute()

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    return threads


def measure(reads: str, rounds: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="dominoes-stale-") as tmp:
        proc, port = start(reads, Path(tmp) / "run")
        try:
            on = on_each_replica(port)
            idle = loop(on, rounds, "ab:idle")
            stop = threading.Event()
            threads = background(port, stop)
            busy = loop(on, rounds, "ab:busy")
            stop.set()
            for t in threads:
                t.join(10)
            for r in on.values():
                r.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return {"idle": idle, "busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {reads: measure(reads, args.rounds) for reads in ("linearizable", "local")}
    if args.json:
        print(json.dumps({"rounds": args.rounds, **out}))
        return
    print(f"stale reads out of {args.rounds} (write on one replica, read on the other)")
    print(f"{'--reads':<14}{'idle':>8}{'busy':>8}")
    for reads, counts in out.items():
        print(f"{reads:<14}{counts['idle']:>8}{counts['busy']:>8}")


if __name__ == "__main__":
    main()
