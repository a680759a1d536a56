"""A short run of ``benchmarks/reconfigure.py``: it completes, and every write was
applied exactly once across live reconfigurations and a restart (the script checks
each writer's replies count 1, 2, 3, ...).  Correctness only, never speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .harness import ROOT


def test_the_reconfiguration_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    script = str(ROOT / "benchmarks" / "reconfigure.py")
    args = ["--clients", "2", "--changes", "4", "--seconds", "0.5", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["changes"] == 4
    assert result["writes"] > 0
    assert result["steady"]["n"] > 0
    assert result["live"]["n"] > 0
    assert result["restart_outage_ms"] > 0
    assert set(result["ratios"]) == {"live_p99/steady_p99", "live_max/restart_outage"}
    assert "none lost, none doubled" in done.stdout
