"""What ``dominoes run --durable DIR`` does with the directory it finds, through the real CLI.

A torn last record is cut with a warning saying how many bytes; a flipped
bit mid-segment and a missing segment stop the start with an error naming
the file (and the offset); an empty directory starts an empty service.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dominoes._core._segment import RECORD, SEGMENT_HEADER

from .durable_helpers import KV, durable_kv
from .harness import ROOT, free_port

pytestmark = pytest.mark.integration

ARGS = ("--snapshot-every", "0", "--segment-mb", "1")


def record_some(data: Path, run: Path, keys: int) -> None:
    """A durable KV that wrote ``keys`` keys of ~430 log bytes each, stopped cleanly.

    A segment rolls once it passes 1 MiB (``--segment-mb 1``) at the end of a
    writer round, and a round writes at most 1 MiB: so a segment holds at
    most 2 MiB, and ``keys`` above 2 MiB / 430 B = ~4900 make two segments
    at least, above ~9800 three, however the rounds fall."""
    with durable_kv(data, run, fsync="always", args=ARGS) as svc:
        r = svc.client()
        pipe = r.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"k{i}", f"{i:08d}" * 50)  # 400-byte values: ~1.2 MiB of log
        pipe.execute()
        assert svc.stop() == 0


def start_and_fail(data: Path, run: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "dominoes", "run", KV, "--replicas", "2",
        "--port", str(free_port()), "--run-dir", str(run), "--durable", str(data),
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def segs(data: Path) -> list[Path]:
    return sorted(data.glob("seg-*.log"))


def test_an_empty_directory_starts_an_empty_service(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with durable_kv(data, tmp_path / "run", fsync="everysec", args=ARGS) as svc:
        assert svc.client().dbsize() == 0
        assert "replayed 0 entries from seq 1" in svc.output
        assert svc.stop() == 0


def test_a_torn_last_record_is_cut_with_a_warning_and_the_rest_is_served(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    record_some(data, run, 3000)
    last = segs(data)[-1]
    with open(last, "ab") as f:  # half a record, as a crash mid-write leaves
        f.write(b"\x40\x00\x00\x00" + b"\x11" * 21)
    with durable_kv(data, run, fsync="always", args=ARGS) as svc:
        assert f"torn last record in {last} at offset" in svc.output
        assert "truncating 25 bytes" in svc.output
        r = svc.client()
        assert r.dbsize() == 3000
        assert r.get("k2999") == b"00002999" * 50
        assert svc.stop() == 0


def test_a_flipped_bit_mid_segment_stops_the_start_naming_file_and_offset(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    record_some(data, run, 6000)
    first = segs(data)[0]
    assert len(segs(data)) >= 2, "the log should have rolled to a second segment"
    blob = bytearray(first.read_bytes())
    # flip a bit in the payload of the second record
    n = int.from_bytes(blob[SEGMENT_HEADER.size : SEGMENT_HEADER.size + 4], "little")
    second = SEGMENT_HEADER.size + RECORD.size + n
    blob[second + RECORD.size + 1] ^= 0x20
    first.write_bytes(bytes(blob))
    got = start_and_fail(data, run)
    assert got.returncode == 1, got.stderr
    assert f"corrupt log record in {first} at offset {second}" in got.stderr
    assert "serving on" not in got.stderr
    assert first.stat().st_size == len(blob)  # nothing was cut


def test_a_missing_segment_stops_the_start(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    record_some(data, run, 12000)
    all_segs = segs(data)
    assert len(all_segs) >= 3
    all_segs[1].unlink()
    got = start_and_fail(data, run)
    assert got.returncode == 1, got.stderr
    assert f"segment missing: {all_segs[2].name}" in got.stderr
