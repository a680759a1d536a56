"""benchmarks/vmm.py runs end to end with a short guest and reports its JSON shape.

A smoke test, not a measurement: every configuration runs once, 2,000 exits
per vCPU; the counts must be exact (the guest does nothing but its counter
writes and ``cli; hlt``), the rates merely positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dominoes.components.vmm import available

from .harness import ROOT

pytestmark = pytest.mark.integration

VMM = ROOT / "benchmarks" / "vmm.py"
EXITS = 2000
VCPUS = {"dominoes_1": 1, "dominoes_2": 2, "locked_1": 1, "locked_2": 2, "raw_1": 1}
RATIOS = ("dominoes_2/dominoes_1", "dominoes_2/locked_2", "dominoes_1/locked_1",
          "locked_2/locked_1", "dominoes_1/raw_1")  # fmt: skip


@pytest.mark.skipif(bool(available()), reason=f"KVM is not usable here: {available()}")
def test_every_configuration_counts_every_exit(tmp_path: Path) -> None:
    out = tmp_path / "vmm.json"
    done = subprocess.run(
        [sys.executable, str(VMM), "--repeat", "1", "--exits", str(EXITS), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    if "skipped" in done.stdout and not out.exists():
        pytest.skip(done.stdout.strip())  # as or ld missing
    result = json.loads(out.read_text())
    assert set(result) == {"configs", "ratios", "meta"}
    assert set(result["configs"]) == set(VCPUS)
    for name, row in result["configs"].items():
        assert row["failed_runs"] == 0, (name, row["errors"])
        assert row["vcpus"] == VCPUS[name]
        # N per vCPU, exactly: the guest's counter writes are the only exits
        assert row["exits"] == row["expected_exits"] == EXITS * VCPUS[name], name
        assert isinstance(row["exits_s"], float), name
        assert row["exits_s"] > 0, name
        assert row["exits_s_per_vcpu"] > 0, name
        assert len(row["exits_s_runs"]) == 1, name
        if name == "raw_1":  # no device work, no round trip to time
            assert row["p50_us"] is None
            continue
        assert len(row["latency_runs"][0]) == VCPUS[name], name
        for latency in row["latency_runs"][0]:  # one exit in 16 is timed
            assert latency["sampled"] == EXITS // 16, (name, latency)
        assert 0 < row["p50_us"] <= row["p99_us"], name
    for ratio in RATIOS:
        assert isinstance(result["ratios"][ratio], float), ratio
    meta = result["meta"]
    assert meta["exits_per_vcpu"] == EXITS
    assert meta["failures"] == 0
    assert meta["machine"]["nproc"] >= 1
    # the table
    assert "| dominoes_2 |" in done.stdout
    assert "dominoes_2/locked_2" in done.stdout
