"""``dominoes run --log NAME``: the log backend, picked from the ``dominoes.logs`` entry points.

``shm`` (the default) serves a real service end to end; a name nothing
registers, and ``memory`` (a log that lives in one process), are refused in
one line with exit code 2 before anything starts: no run directory, no
replica.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dominoes
from dominoes._runtime import _logs
from examples.counter import Counter

from .harness import ROOT, LineClient, free_port, running, wait_until

pytestmark = pytest.mark.integration

COUNTER = "examples.counter:service"


def refused(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dominoes", "run", COUNTER, "--port", str(free_port()), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def memfds(pid: int) -> list[str]:
    """The memfds process ``pid`` holds open (``/memfd:NAME (deleted)``)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("/memfd:"):
            found.append(target)
    return found


def test_log_shm_serves_replicas_and_local_clients(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running(COUNTER, run_dir, args=("--log", "shm")) as svc:
        with LineClient(svc.port) as tcp:
            assert tcp.ask("INCR via-tcp") == "1"

        async def attach() -> int:
            async with asyncio.timeout(30):
                async with await dominoes.connect("counter", run_dir=run_dir) as client:
                    value: int = await client.submit(Counter.incr, "via-tcp")
                    return value

        assert asyncio.run(attach()) == 2
        with LineClient(svc.port) as tcp:
            assert tcp.ask("GET via-tcp") == "2"
        # Every replica maps the one memfd the shm backend created, named after the service.
        for pid in svc.replica_pids():
            assert any(m.startswith("/memfd:dominoes-counter") for m in memfds(pid)), pid
        wait_until(lambda: not svc.status()["clients"])
        code = svc.stop()
    assert code == 0, svc.output
    assert "Traceback" not in svc.output
    assert sorted(p.name for p in run_dir.glob("*.sock")) == []


def test_an_unknown_log_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = refused("--log", "nope", "--run-dir", str(run_dir))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "dominoes: error: --log nope: no log backend named 'nope'; available: "
        + ", ".join(_logs.names())
    ]
    assert "shm" in _logs.names()
    assert not run_dir.exists()


def test_the_memory_log_is_refused_for_replica_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = refused("--log", "memory", "--replicas", "2", "--run-dir", str(run_dir))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("dominoes: error: --log memory: the memory log works in one process")
    assert "use --log shm" in line
    assert not run_dir.exists()
