"""Operating a live service: aiomonitor, ``dominoes stats``/``top``, divergence, stalls.

The monitor's security (another uid reaches none of it) is tested in test_security.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import ROOT, LineClient, Telnet, clients_on_every_replica, running, wait_until
from .monitor_helpers import MonitorSession, plain

pytestmark = pytest.mark.integration

COUNTER = "examples.counter:service"


def free_base(span: int = 13) -> int:
    """A port BASE with BASE..BASE+span free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + span > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + span):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
        return base
    raise RuntimeError("no free port range")


def field(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}\s+(.*)$", text, re.M)
    assert m, f"no {name!r} in {text!r}"
    return m.group(1).strip()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dominoes", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_monitor_shows_live_figures_on_every_replica(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running(COUNTER, run_dir, args=("--monitor",)) as svc:
        for i in range(2):
            assert (run_dir / f"monitor-{i}.sock").exists()
            assert (run_dir / f"monitor-{i}-web.sock").exists()
        consoles = {
            i: MonitorSession("--run-dir", str(run_dir), "--replica", str(i)) for i in range(2)
        }
        try:
            before = {}
            for i, t in consoles.items():
                text = t.command("replica", expect="append refusals")
                assert field(text, "index") == str(i)
                assert field(text, "loop") in ("uvloop", "asyncio")
                before[i] = int(field(text, "applied seq"))
            with LineClient(svc.port) as c:
                for _ in range(25):
                    c.ask("INCR m")
            for i, t in consoles.items():
                wait_until(
                    lambda t=t, i=i: (
                        int(field(t.command("replica", expect="append refusals"), "applied seq"))
                        >= before[i] + 25
                    )
                )
                log = t.command("log", expect="dead")
                assert int(field(log, "tail")) >= 26
                assert field(log, "live") == "0, 1"
                assert field(log, "dead") == "-"
                comps = t.command("components", expect="(registry)")
                assert "counts=1" in comps
            digests = {i: t.command("digest", expect="Counter") for i, t in consoles.items()}
            assert field(digests[0], "Counter") == field(digests[1], "Counter")
        finally:
            codes = [t.exit() for t in consoles.values()]
        assert codes == [0, 0]
        # From a pipe: one command per line, and the end of the input leaves.
        piped = subprocess.run(
            [sys.executable, "-m", "dominoes", "monitor", "--run-dir", str(run_dir)],
            input="replica\n", cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert piped.returncode == 0, piped.stderr
        assert "append refusals" in plain(piped.stdout.encode())
        assert svc.stop() == 0
    # The monitor's sockets go with the service.
    assert not list(run_dir.glob("monitor-*"))
    gone = cli("monitor", "--run-dir", str(run_dir))
    assert gone.returncode == 1
    assert "no monitor at" in gone.stderr


def test_the_tcp_monitor_is_an_opt_in_with_a_warning(tmp_path: Path) -> None:
    base = free_base()
    args = ("--monitor-tcp", "--monitor-port", str(base))
    with running(COUNTER, tmp_path / "run", replicas=1, args=args) as svc:
        warning = svc.wait_for_line("dominoes: warning: --monitor-tcp")
        assert f"ports {base}+10*i" in warning
        assert "every local user can reach it and run Python as uid" in warning
        console = Telnet(base)
        try:
            assert field(console.command("replica", expect="append refusals"), "index") == "0"
        finally:
            console.close()
        assert not list((tmp_path / "run").glob("monitor-*"))
        assert svc.stop() == 0


def test_a_monitor_port_clash_is_a_clear_startup_error(tmp_path: Path) -> None:
    base = free_base()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 10))  # replica 1's console port
        squatter.listen()
        done = subprocess.run(
            [sys.executable, "-m", "dominoes", "run", COUNTER, "--replicas", "2",
             "--port", str(free_base(1)), "--run-dir", str(tmp_path / "run"),
             "--monitor-tcp", "--monitor-port", str(base)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"monitor port {base + 10} on 127.0.0.1 is in use" in done.stderr


def test_stats_json_and_top_once_show_every_replica(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running(COUNTER, run_dir) as svc:
        with LineClient(svc.port) as c:
            for _ in range(10):
                c.ask("INCR s")
            c.ask("GET s")
        stats = cli("stats", "--run-dir", str(run_dir), "--json")
        assert stats.returncode == 0, stats.stderr
        doc = json.loads(stats.stdout)
        assert doc["service"] == "counter"
        assert [r["index"] for r in doc["replicas"]] == [0, 1]
        reports = [r["report"]["replica"] for r in doc["replicas"]]
        assert {r["index"] for r in reports} == {0, 1}
        assert all(r["applied_seq"] >= 10 for r in reports)
        assert sum(r["queries"] for r in reports) == 1
        assert doc["log"]["tail"] >= 11
        top = cli("top", "--once", "--run-dir", str(run_dir))
        assert top.returncode == 0, top.stderr
        rows = [line for line in top.stdout.splitlines() if re.match(r"^│\s+\d\s+│", line)]
        assert len(rows) == 2, top.stdout
        assert "log: tail" in top.stdout
        assert svc.stop() == 0
    gone = cli("stats", "--run-dir", str(run_dir))
    assert gone.returncode == 1
    assert "no service is running" in gone.stderr


def _divergence_lines(svc_output: str) -> list[str]:
    return [line for line in svc_output.splitlines() if "DIVERGENCE" in line]


def test_a_non_deterministic_component_is_caught_within_one_digest_period(
    tmp_path: Path,
) -> None:
    target = "tests.integration.services:clocky"
    with running(target, tmp_path / "run", args=("--digest-every", "10")) as svc:
        every = clients_on_every_replica(svc.port, 2)
        for k in range(12):
            assert every[k % 2].ask("CALL Clocky.tick") == str(k + 1)
        line = svc.wait_for_line("DIVERGENCE", timeout=10)
        assert "seq=10 " in line
        assert "component=Clocky" in line
        assert "replicas=" in line
        # counted in statistics, and the service keeps running
        doc = json.loads(cli("stats", "--run-dir", str(tmp_path / "run"), "--json").stdout)
        assert sum(r["report"]["replica"]["core"]["divergences"] for r in doc["replicas"]) >= 1
        assert every[0].ask("CALL Clocky.tick") == "13"
        for c in every.values():
            c.close()
        assert svc.stop() == 0


def test_a_deterministic_component_raises_no_false_alarm(tmp_path: Path) -> None:
    target = "tests.integration.services:steady"
    with running(target, tmp_path / "run", args=("--digest-every", "10")) as svc:
        every = clients_on_every_replica(svc.port, 2)
        for k in range(200):
            assert every[k % 2].ask("CALL Steady.tick") == str(k + 1)

        def settled() -> bool:
            seqs = {int(c.ask("INFO").split()[-1]) for c in every.values()}
            return len(seqs) == 1 and seqs.pop() > 200  # ticks plus digest reports

        wait_until(settled, timeout=10)
        doc = json.loads(cli("stats", "--run-dir", str(tmp_path / "run"), "--json").stdout)
        assert all(r["report"]["replica"]["core"]["divergences"] == 0 for r in doc["replicas"])
        for c in every.values():
            c.close()
        assert svc.stop() == 0
    assert _divergence_lines(svc.output) == []


def test_a_slow_handler_is_logged_as_a_stall_with_its_event_and_seq(tmp_path: Path) -> None:
    target = "tests.integration.services:sleepy"
    with running(target, tmp_path / "run") as svc:
        with LineClient(svc.port) as c:
            assert c.ask("CALL Sleepy.nap 0.01") == "1"
            assert c.ask("CALL Sleepy.nap 0.25") == "2"
        line = svc.wait_for_line("stall kind=apply")
        assert "seq=2 " in line
        assert "event=Sleepy.nap component=Sleepy" in line
        assert "seq=1 " not in " ".join(x for x in svc.output.splitlines() if "stall" in x), (
            "a 10 ms handler is not a stall"
        )
        doc = json.loads(cli("stats", "--run-dir", str(tmp_path / "run"), "--json").stdout)
        stalls = [r["report"]["replica"]["core"]["stalls"] for r in doc["replicas"]]
        assert stalls == [1, 1]  # every replica applied it, every one stalled
        assert svc.stop() == 0


def _gc_of(run_dir: Path) -> list[tuple[list[int], int]]:
    doc = json.loads(cli("stats", "--run-dir", str(run_dir), "--json").stdout)
    reports = [r["report"]["replica"] for r in doc["replicas"]]
    return [(r["gc_threshold"], r["gc_frozen"]) for r in reports]


def test_serving_replicas_freeze_their_start_up_heap_and_raise_the_gc_threshold(
    tmp_path: Path,
) -> None:
    with running(COUNTER, tmp_path / "a", replicas=1):
        [(threshold, frozen)] = _gc_of(tmp_path / "a")
        assert threshold == [20000, 20, 20]
        assert frozen > 1000  # the modules and the service, at least
    with running(COUNTER, tmp_path / "b", replicas=1, args=("--gc-threshold", "python")):
        assert _gc_of(tmp_path / "b") == [([700, 10, 10], 0)]
    bad = cli("run", COUNTER, "--gc-threshold", "1,2")
    assert bad.returncode == 2
    assert "expected G0,G1,G2 (three integers) or 'python', not '1,2'" in bad.stderr
