"""A replica that stops serving is found and replaced, and never stalls writers for long.

Item by item: a SIGSTOPped replica with only read traffic is restarted (its
heartbeat stopped); with writes, a replica that holds a full log without
applying is ejected after ``--eject-after``, so writers go on; and a stopped
replica does not outlive a SIGKILLed supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .harness import (
    ROOT,
    LineClient,
    alive,
    clients_on_every_replica,
    free_port,
    running,
    wait_until,
)

COUNTER = "examples.counter:service"


def restarted(svc: object, replica: int) -> bool:
    replicas = svc.status()["replicas"]  # type: ignore[attr-defined]
    return bool(replicas[replica]["restarts"] >= 1 and all(r["ready"] for r in replicas))


def test_a_frozen_replica_with_only_reads_is_replaced(tmp_path: Path) -> None:
    args = ("--stuck-after", "1")
    with running(COUNTER, tmp_path / "run", args=args) as svc:
        every = clients_on_every_replica(svc.port, 2)
        try:
            assert every[0].ask("INCR seen 1") == "1"
            victim = svc.status()["replicas"][1]["pid"]
            os.kill(victim, signal.SIGSTOP)
            assert every[0].ask("GET seen") == "1"  # reads only: nothing waits on it
            wait_until(lambda: restarted(svc, 1), timeout=30)
            assert "stopped serving: no heartbeat" in svc.wait_for_line("no heartbeat")
            for _ in range(10):  # fresh connections all get answers again
                with LineClient(svc.port) as c:
                    assert c.ask("GET seen") == "1"
        finally:
            for c in every.values():
                c.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


def test_a_frozen_replica_holding_a_full_log_is_ejected(tmp_path: Path) -> None:
    # A small log fills at once; the heartbeat watchdog is far off, so the
    # ejection is what frees the writers.
    args = ("--capacity", "64", "--eject-after", "0.5", "--stuck-after", "60")
    with running(COUNTER, tmp_path / "run", args=args) as svc:
        every = clients_on_every_replica(svc.port, 2)
        try:
            victim = svc.status()["replicas"][1]["pid"]
            os.kill(victim, signal.SIGSTOP)
            for i in range(1, 301):  # 300 entries through a 64-slot log
                assert every[0].ask("INCR w 1") == str(i)
            assert "held the full log" in svc.wait_for_line("held the full log")
            wait_until(lambda: restarted(svc, 1), timeout=30)
            again = clients_on_every_replica(svc.port, 2)
            try:
                assert again[1].ask("GET w") == "300"
            finally:
                for c in again.values():
                    c.close()
        finally:
            for c in every.values():
                c.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


def test_a_stopped_replica_does_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "dominoes", "run", COUNTER, "--replicas", "2",
        "--port", str(port), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving on" in line:
                break
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(tmp_path / "run" / "control.sock"))
            s.sendall(b'{"op": "status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                buf += s.recv(65536)
        pids = [r["pid"] for r in json.loads(buf)["replicas"]]
        os.kill(pids[1], signal.SIGSTOP)  # cannot notice anything by itself
        proc.kill()
        proc.wait(10)

        def gone() -> bool:
            return all(not alive(pid) for pid in pids)

        wait_until(gone, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_restart_under_writes_catches_up_through_its_backlog(tmp_path: Path) -> None:
    """A replica restarted while writes go on copies them while its snapshot is
    written and restored, applies them, and ends with exactly the same data."""
    import threading

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .kv_helpers import clients_on_every_replica as kv_clients
    from .kv_helpers import kv_service

    with kv_service(tmp_path / "run") as svc:
        on = kv_clients(svc.port)
        try:
            pipe = on[0].pipeline(transaction=False)
            for start in range(0, 100_000, 1000):
                pipe.mset({f"k:{i}": i for i in range(start, start + 1000)})
            pipe.execute()
            stop = threading.Event()
            written: list[int] = []

            # The writer stays on replica 0 (the one not killed) and never
            # retries: a resent INCR whose first reply was lost would count twice.
            pinned = kv_clients(svc.port, retry=Retry(NoBackoff(), 0))
            pinned[1].close()
            w = pinned[0]

            def write() -> None:
                with w as r:
                    i = 0
                    while not stop.is_set():
                        r.incr("counter")
                        r.set(f"w:{i}", i)
                        written.append(i)
                        i += 1

            writer = threading.Thread(target=write)
            writer.start()
            try:
                victim = svc.status()["replicas"][1]["pid"]
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda: restarted(svc, 1), timeout=60)
            finally:
                stop.set()
                writer.join(30)
            again = kv_clients(svc.port)
            try:
                n = len(written)
                assert n > 0
                assert again[1].get("counter") == str(n).encode()
                assert again[1].get(f"w:{n - 1}") == str(n - 1).encode()
                assert again[1].dbsize() == again[0].dbsize() == 100_000 + 1 + n
                assert again[1].get("k:99999") == b"99999"
            finally:
                for r in again.values():
                    r.close()
        finally:
            for r in on.values():
                r.close()
