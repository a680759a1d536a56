"""A short run of ``benchmarks/copies.py``: it completes, the partitions moved each
time, and every write was applied exactly once across the changes of ``copies`` (the
script checks each writer's replies count 1, 2, 3, ...).  Correctness only, never speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .harness import ROOT


def test_the_copies_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    script = str(ROOT / "benchmarks" / "copies.py")
    args = ["--clients", "2", "--keys", "2000", "--changes", "2", "--seconds", "0.5"]
    done = subprocess.run(
        [sys.executable, script, *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert len(result["change_ms"]) == 2
    assert result["keys"] == 2000
    assert result["steady"]["n"] > 0
    assert result["writes"] > 0
    assert set(result["ratios"]) == {"changes_p99/steady_p99", "changes_max/snapshot_of_moved"}
    assert "none lost, none doubled" in done.stdout
