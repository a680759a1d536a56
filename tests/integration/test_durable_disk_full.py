"""A full disk under a durable KV: writes fail clearly, reads go on, nothing acknowledged is lost.

The data directory is on a small tmpfs the test mounts (root only), filled
up with a file while the service runs, then freed.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .durable_helpers import durable_kv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def write_until_it_fails(fd: int, chunk: bytes) -> int | None:
    """Write ``chunk`` to ``fd`` until a write fails; that failure's errno."""
    while True:
        try:
            os.write(fd, chunk)
        except OSError as exc:
            return exc.errno


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert write_until_it_fails(fd, bytes(65536)) == errno.ENOSPC
        assert write_until_it_fails(fd, b"\0") == errno.ENOSPC  # the last partial block
    finally:
        os.close(fd)


def write_status(r: redis.Redis) -> str:
    return str(r.info("persistence")["aof_last_write_status"])


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    data, run = small_disk / "data", tmp_path / "run"
    args = ("--snapshot-every", "0")
    with durable_kv(data, run, fsync="always", args=args) as svc:
        r = svc.client()
        for i in range(100):
            assert r.set(f"k{i}", f"v{i}") is True
        filler = small_disk / "filler"
        fill(filler)
        # A write whose record the writer cannot store (larger than the room
        # left in the segment's last page): it is not refused (the writer has
        # not failed yet when it arrives), and its reply waits.
        got: list[object] = []
        big = b"x" * 65536
        waiting = threading.Thread(target=lambda: got.append(svc.client().set("during", big)))
        waiting.start()
        wait_for(lambda: write_status(r) == "err")
        with pytest.raises(redis.ResponseError, match=r"MISCONF .*No space left on device"):
            r.set("refused", "1")
        assert r.get("k0") == b"v0"  # reads go on
        assert r.mget("k1", "k99") == [b"v1", b"v99"]
        assert got == []  # not acknowledged while the disk is full
        filler.unlink()  # space returns: the writer tries again on its own
        waiting.join(30)
        assert got == [True]
        wait_for(lambda: write_status(r) == "ok")
        assert r.set("after", "1") is True
        assert svc.stop() == 0
    with durable_kv(data, run, fsync="always", args=args) as svc:
        r = svc.client()
        assert r.mget([f"k{i}" for i in range(100)]) == [f"v{i}".encode() for i in range(100)]
        assert r.get("during") == big
        assert r.get("after") == b"1"
        assert r.get("refused") is None
        assert svc.stop() == 0
