"""benchmarks/ctp.py runs end to end with tiny files and reports its JSON shape.

A smoke test, not a measurement: every server moves a fraction of a MB over
loopback (checksummed by the benchmark itself), and, as root, native CTP and
the kernel's TCP do it over the lossy link too.  Exit 0 means every transfer
arrived intact and nothing was left behind.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .harness import ROOT
from .lossy import why_not

pytestmark = pytest.mark.integration

CTP = ROOT / "benchmarks" / "ctp.py"
SERVERS = ("tftp_1", "tftp_2", "tftp_2/512", "tftpy", "ctp_1", "ctp_2", "kernel")
RATIOS = ("tftp_2/tftp_1", "tftp_2/tftpy", "tftp_1/tftpy", "ctp_2/ctp_1", "ctp_2/kernel",
          "tftp_2/kernel")  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CTP), "--quick", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def check_row(row: dict[str, Any]) -> None:
    assert row["failed_runs"] == 0, row
    assert isinstance(row["mb_s"], float), row
    assert row["mb_s"] > 0, row
    assert isinstance(row["cpu_s_per_mb"], float), row
    assert len(row["mb_s_runs"]) == 1, row  # --quick: one round


@pytest.mark.skipif(shutil.which("atftp") is None, reason="needs atftp")
@pytest.mark.skipif(importlib.util.find_spec("tftpy") is None, reason="needs tftpy")
def test_every_server_over_loopback(tmp_path: Path) -> None:
    out = tmp_path / "ctp.json"
    done = run("--paths", "loopback", "--mb", "0.3", "--json-file", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"loopback", "ratios", "meta"}
    assert set(result["loopback"]) == set(SERVERS)
    for row in result["loopback"].values():
        check_row(row)
    for name in ("tftp_1", "tftp_2", "ctp_2"):  # the dominoes services report their counters
        assert result["loopback"][name]["retransmitted_runs"][0] is not None, name
    for ratio in RATIOS:
        assert ratio in result["ratios"]["loopback"]
        assert f"{ratio}/cpu" in result["ratios"]["loopback"]
    assert isinstance(result["ratios"]["loopback"]["tftp_2/tftp_1"], float)
    meta = result["meta"]
    assert meta["failures"] == []
    assert meta["leftover_processes"] == {}
    assert meta["leftover_namespaces"] == []
    assert meta["bytes"] == {"loopback": 300_000}
    # the table
    assert "loopback: 0.3 MB" in done.stdout
    assert "tftp_2/tftpy" in done.stdout


@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
def test_ctp_and_kernel_over_the_lossy_link() -> None:
    done = run("--paths", "lossy", "--servers", "ctp_1,kernel", "--lossy-mb", "0.2", "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)  # --json: exactly one object on stdout
    assert set(result["lossy"]) == {"ctp_1", "kernel"}
    for row in result["lossy"].values():
        check_row(row)
        link = row["extra_runs"][0]["link"]
        assert {"dropped", "duplicated"} <= set(link), link
    assert result["ratios"]["lossy"]["ctp_2/kernel"] is None  # ctp_2 not run: null
    assert result["meta"]["bytes"] == {"lossy": 200_000}
    assert result["meta"]["leftover_namespaces"] == []
