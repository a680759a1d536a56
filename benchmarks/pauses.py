"""How long a write waits while a replica snapshots or digests a large state.

    python benchmarks/pauses.py [--keys N] [--json]

Two experiments, each run with ``--snapshots fork`` (the default: a forked
child encodes the state while the replica serves) and ``--snapshots inline``
(the replica stops applying while it encodes), in the same run:

``restart``
    The KV service with 2 replicas is loaded with N keys (default 2,000,000),
    then replica 1 is killed.  The supervisor restarts it; it asks replica 0
    for a snapshot through the log.  Meanwhile a client on replica 0 SETs in
    a loop and records every round trip; the figure is the longest one, from
    the kill until replica 1 is serving again plus 0.5 s.
``digest``
    The same service with ``--digest-every 2000``: the replicas digest their
    whole state every 2,000 log entries.  A client on replica 0 SETs in a
    loop for 5 s (each SET is an entry); the figure is its longest round trip.

``save``
    A durable service (``--durable``, ``--fsync everysec``) loaded with N
    keys.  A client on replica 0 SETs in a loop; after a second, ``BGSAVE``
    on replica 0 makes that replica fork a child that writes a snapshot of
    the whole state (temporary file, fsync, rename).  The figures: the
    longest round trip in the second before (the baseline) and while the
    snapshot is written, the fork itself (the replica's only pause, from
    ``INFO persistence``), and how long the snapshot took.  Compare the
    longest round trip with the stall threshold (``--stall-ms``, 100 ms).

``sigstop``
    Replica 1 of a service with a small log (256 slots, so writes fill it
    within a second) is stopped with SIGSTOP for 10 s while a client on
    replica 0 SETs in a loop.  Run with the default ``--eject-after 1`` and
    with ``--eject-after 0`` (no ejection: the 5 s stuck-replica watchdog is
    what frees the writers, as before ejection existed); the figure is the
    longest round trip.

The ratio inline/fork (and off/on) says how much the mechanism removes.  Round trips include
redis-py's own time, and the machine is shared: compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    def __init__(self, run_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.run_dir = run_dir
        cmd = [sys.executable, "-m", "dominoes", "run", "dominoes.components.kv:service"]
        cmd += ["--replicas", "2", "--port", str(self.port), "--run-dir", str(run_dir), *args]
        quiet = "--log-level" not in args  # a caller asking for logs sees them
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL if quiet else None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as r:
                    if r.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("the service did not start")

    def status(self) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.run_dir / "control.sock"))
            s.sendall(b'{"op": "status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                buf += s.recv(65536)
        result: dict[str, Any] = json.loads(buf)
        return result

    def on_replica(self, index: int) -> redis.Redis:
        for _ in range(200):
            r = redis.Redis(port=self.port, socket_timeout=60, single_connection_client=True)
            if int(r.info("dominoes")["replica_index"]) == index:
                return r
            r.close()
        raise SystemExit(f"no connection reached replica {index}")

    def load(self, keys: int) -> None:
        r = self.on_replica(0)
        batch = 1000
        pipe = r.pipeline(transaction=False)
        for start in range(0, keys, batch):
            pipe.mset(
                {f"key:{i}": f"value-{i:012d}" for i in range(start, min(keys, start + batch))}
            )
            if len(pipe) >= 20:
                pipe.execute()
        pipe.execute()
        r.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def writer(r: redis.Redis, stop: threading.Event, out: list[float]) -> None:
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        r.set("probe", i)
        out.append(time.perf_counter() - t0)
        i += 1


@contextlib.contextmanager
def writing(svc: Service) -> Iterator[list[float]]:
    """A client on replica 0 SETs in a loop (a thread) while the block runs; its round trips."""
    r = svc.on_replica(0)
    stop = threading.Event()
    times: list[float] = []
    t = threading.Thread(target=writer, args=(r, stop, times))
    t.start()
    try:
        yield times
    finally:
        stop.set()
        t.join()
        r.close()


def restart(keys: int, mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dominoes-pauses-") as tmp:
        # --stuck-after 60: an inline snapshot of a large state blocks the
        # loop for seconds, which the heartbeat watchdog would punish.
        svc = Service(Path(tmp) / "run", "--snapshots", mode, "--stuck-after", "60")
        try:
            svc.load(keys)
            victim = svc.status()["replicas"][1]["pid"]
            with writing(svc) as times:
                time.sleep(0.5)
                baseline = len(times)
                subprocess.run(["kill", "-9", str(victim)], check=True)
                began = time.monotonic()
                while True:
                    reps = svc.status()["replicas"]
                    if reps[1]["restarts"] >= 1 and reps[1]["ready"]:
                        break
                    if time.monotonic() - began > 300:
                        raise SystemExit("replica 1 did not come back")
                    time.sleep(0.05)
                took = time.monotonic() - began
                time.sleep(0.5)
            window = times[baseline:]
            return {"longest_write_ms": max(window) * 1000, "rejoin_s": took}
        finally:
            svc.stop()


def digest(keys: int, mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dominoes-pauses-") as tmp:
        svc = Service(
            Path(tmp) / "run", "--snapshots", mode, "--digest-every", "2000", "--stuck-after", "60"
        )
        try:
            svc.load(keys)
            with writing(svc) as times:
                time.sleep(5)
            return {"longest_write_ms": max(times) * 1000, "writes": len(times)}
        finally:
            svc.stop()


def save(keys: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dominoes-pauses-") as tmp:
        data = Path(tmp) / "data"
        svc = Service(Path(tmp) / "run", "--durable", str(data), "--snapshot-every", "0")
        try:
            svc.load(keys)
            r = svc.on_replica(0)
            with writing(svc) as times:
                time.sleep(1.0)
                baseline = len(times)
                began = time.monotonic()
                r.bgsave(schedule=False)
                while int(r.info("persistence")["rdb_bgsave_in_progress"]):
                    if time.monotonic() - began > 600:
                        raise SystemExit("the snapshot did not finish")
                    time.sleep(0.01)
                took = time.monotonic() - began
                during = len(times)
            info = r.info("persistence")
            r.close()
            return {
                "baseline_longest_ms": max(times[:baseline]) * 1000,
                "longest_write_ms": max(times[baseline:during]) * 1000,
                "fork_ms": int(info["dominoes_last_snapshot_pause_usec"]) / 1000,
                "snapshot_s": took,
                "snapshot_mb": sum(p.stat().st_size for p in data.glob("snapshot-*")) / 2**20,
            }
        finally:
            svc.stop()


def sigstop(eject: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dominoes-pauses-") as tmp:
        svc = Service(Path(tmp) / "run", "--capacity", "256", "--eject-after", eject)
        try:
            victim = svc.status()["replicas"][1]["pid"]
            with writing(svc) as times:
                time.sleep(0.5)
                subprocess.run(["kill", "-STOP", str(victim)], check=True)
                time.sleep(10)
                subprocess.run(["kill", "-CONT", str(victim)], check=False, capture_output=True)
                time.sleep(0.5)
            return {"longest_write_ms": max(times) * 1000, "writes": len(times)}
        finally:
            svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only",
        choices=["restart", "digest", "save", "sigstop"],
        default=None,
        help="one experiment",
    )
    args = parser.parse_args()
    out: dict[str, Any] = {"keys": args.keys}
    experiments = tuple(
        (name, run)
        for name, run in (("restart", restart), ("digest", digest))
        if args.keys and args.only in (None, name)
    )
    for name, run in experiments:
        for mode in ("fork", "inline"):
            print(f"{name} with --snapshots {mode} ...", file=sys.stderr, flush=True)
            out[f"{name}/{mode}"] = run(args.keys, mode)
        fork, inline = out[f"{name}/fork"], out[f"{name}/inline"]
        out[f"{name}/ratio_inline_over_fork"] = (
            inline["longest_write_ms"] / fork["longest_write_ms"]
        )
    if args.keys and args.only in (None, "save"):
        print("save (a durable snapshot) ...", file=sys.stderr, flush=True)
        out["save"] = save(args.keys)
    if args.only in (None, "sigstop"):
        print("sigstop ...", file=sys.stderr, flush=True)
        out["sigstop/eject_1s"] = sigstop("1")
        out["sigstop/no_eject"] = sigstop("0")
        out["sigstop/ratio_off_over_on"] = (
            out["sigstop/no_eject"]["longest_write_ms"]
            / out["sigstop/eject_1s"]["longest_write_ms"]
        )
    if args.json:
        print(json.dumps(out))
        return
    print(f"longest SET round trip on replica 0, {args.keys:,} keys")
    for name, _ in experiments:
        fork, inline = out[f"{name}/fork"], out[f"{name}/inline"]
        ratio = out[f"{name}/ratio_inline_over_fork"]
        print(
            f"  {name:<8} fork {fork['longest_write_ms']:8.1f} ms   "
            f"inline {inline['longest_write_ms']:8.1f} ms   inline/fork {ratio:6.1f}x"
        )
    if "save" in out:
        sv = out["save"]
        print(
            f"  save     before {sv['baseline_longest_ms']:7.1f} ms   while saving "
            f"{sv['longest_write_ms']:7.1f} ms   fork {sv['fork_ms']:6.1f} ms   "
            f"snapshot {sv['snapshot_mb']:.0f} MB in {sv['snapshot_s']:.1f} s"
        )
    if "sigstop/eject_1s" not in out:
        return
    on, off = out["sigstop/eject_1s"], out["sigstop/no_eject"]
    print(
        f"  sigstop  eject {on['longest_write_ms']:7.1f} ms   no eject "
        f"{off['longest_write_ms']:7.1f} ms   off/on {out['sigstop/ratio_off_over_on']:6.1f}x"
    )


if __name__ == "__main__":
    main()
