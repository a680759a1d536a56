"""The TFTP test tools, proven against reference servers.

``tftp_clients`` (four real clients) downloads from and uploads to tftpy's own
server, and downloads from a minimal server that answers from its listening
port; ``lossy`` (a namespace behind a lossy, duplicating veth pair) carries
1 MB downloads intact while its counters show what it dropped and duplicated.
The lossy tests need root (skipped, with the reason, otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import lossy
from .tftp_clients import CLIENTS, ClientError, available, download, upload

pytestmark = pytest.mark.integration

SIZES = (0, 511, 512, 513, 1 << 20)

# tftpy's server as a child process: argv is root, host, per-packet timeout.
# It binds port 0 and prints the port it got.
_SERVER = """
import sys, threading, time
import tftpy

# tftpy counts every resend as a "dup" and raises past 20 from inside its
# timeout loop, which kills the server: a session a client abandoned (curl
# after refusing an OACK) is resent once per loop, so that comes quickly.
# Without the limit, such a session just ends after its retries.
tftpy.TftpContexts.MAX_DUPS = 1 << 60
root, host, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
server = tftpy.TftpServer(root)
thread = threading.Thread(
    target=server.listen,
    kwargs={"listenip": host, "listenport": 0, "timeout": timeout, "retries": 50},
    daemon=True,
)
thread.start()
if not server.is_running.wait(30):
    sys.exit("tftpy's server did not start")
print(server.listenport, flush=True)
thread.join()
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _need(client: str) -> None:
    reason = available(client)
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def tftpy_server(root: Path, host: str, *, timeout: float = 1.0) -> Iterator[int]:
    """tftpy's server on ``host`` (a free port: the one it yields), serving and
    taking uploads into ``root``; killed afterwards."""
    log = (root.parent / f"tftpy-server-{time.monotonic_ns()}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(root), host, str(timeout)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            proc.kill()
            proc.wait(timeout=30)
            log.flush()
            raise AssertionError(f"tftpy's server did not start: {log.name}")
        yield int(line)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


@contextlib.contextmanager
def same_port_server(files: Path) -> Iterator[int]:
    """A minimal read-only TFTP server on 127.0.0.1 that answers every request
    from its listening port (no new port per transfer), ignores options and
    serves 512-byte blocks; one transfer at a time.  Yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                packet, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            if packet[:2] != b"\x00\x01":
                continue
            name = packet[2:].split(b"\x00", 1)[0].decode()
            data = (files / name).read_bytes()
            block = 1
            while not stop.is_set():
                chunk = data[(block - 1) * 512 : block * 512]
                acked = False
                for _ in range(20):
                    sock.sendto(struct.pack("!HH", 3, block & 0xFFFF) + chunk, peer)
                    try:
                        reply, source = sock.recvfrom(65536)
                    except TimeoutError:
                        continue
                    if source == peer and reply == struct.pack("!HH", 4, block & 0xFFFF):
                        acked = True
                        break
                if not acked or len(chunk) < 512:
                    break
                block += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``size-<n>`` files of random bytes, one per size in SIZES."""
    root = tmp_path_factory.mktemp("tftp") / "files"
    root.mkdir()
    for size in SIZES:
        (root / f"size-{size}").write_bytes(os.urandom(size))
    return root


@pytest.fixture(scope="module")
def server(files: Path) -> Iterator[int]:
    """tftpy's server on 127.0.0.1 serving ``files`` (and taking uploads there)."""
    with tftpy_server(files, "127.0.0.1") as port:
        yield port


@pytest.mark.parametrize("client", CLIENTS)
def test_download(client: str, files: Path, server: int, tmp_path: Path) -> None:
    _need(client)
    for size in SIZES:
        got = tmp_path / f"got-{size}"
        download(client, "127.0.0.1", server, f"size-{size}", got, timeout=60)
        assert got.stat().st_size == size, (client, size)
        assert sha256(got) == sha256(files / f"size-{size}"), (client, size)


@pytest.mark.parametrize("client", CLIENTS)
def test_download_blksize(client: str, files: Path, server: int, tmp_path: Path) -> None:
    """With the RFC 2348 option (tftp-hpa cannot send it: 512-byte blocks)."""
    _need(client)
    for size in (1427, 1428, 1429, 1 << 20):
        if not (files / f"blk-{size}").exists():
            (files / f"blk-{size}").write_bytes(os.urandom(size))
        got = tmp_path / f"got-{size}"
        download(client, "127.0.0.1", server, f"blk-{size}", got, blksize=1428)
        assert sha256(got) == sha256(files / f"blk-{size}"), (client, size)


@pytest.mark.parametrize("client", CLIENTS)
def test_upload(client: str, files: Path, server: int, tmp_path: Path) -> None:
    _need(client)
    for size in SIZES:
        source = tmp_path / f"up-{size}"
        source.write_bytes(os.urandom(size))
        name = f"up-{client}-{size}"
        upload(client, "127.0.0.1", server, source, name, blksize=1024 if size else None)
        # The server may still be closing the file when the client is done.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            landed = files / name
            if landed.exists() and landed.stat().st_size == size:
                break
            time.sleep(0.05)
        assert sha256(files / name) == sha256(source), (client, size)


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_file_raises(client: str, server: int, tmp_path: Path) -> None:
    _need(client)
    with pytest.raises(ClientError) as caught:
        download(client, "127.0.0.1", server, "no-such-file", tmp_path / "x", timeout=30)
    assert caught.value.cmd, caught.value


# The bound and the kill are the wrapper's own, the same for every client: one is enough.
@pytest.mark.parametrize("client", ["tftpy"])
def test_unanswered_times_out(client: str, tmp_path: Path) -> None:
    """Nobody answers: the call ends within its bound, with ClientError."""
    _need(client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with pytest.raises(ClientError):
            download(client, "127.0.0.1", port, "size-0", tmp_path / "x", timeout=2)


@pytest.mark.parametrize("client", CLIENTS)
def test_replies_from_the_listening_port(client: str, files: Path, tmp_path: Path) -> None:
    """Every client accepts a server that answers from its well-known port."""
    _need(client)
    with same_port_server(files) as port:
        for size in (0, 512, 513, 1 << 20):
            got = tmp_path / f"got-{size}"
            download(client, "127.0.0.1", port, f"size-{size}", got, timeout=60)
            assert sha256(got) == sha256(files / f"size-{size}"), (client, size)


# -- over the lossy link (root) --------------------------------------------------


@pytest.fixture(scope="module")
def link() -> Iterator[lossy.LossyLink]:
    # MTU 9000 and 8 KiB blocks: 128 blocks per MB, few enough for the
    # retransmissions to take seconds, many enough that 10 % drops and 5 %
    # duplicates happen each transfer.
    with lossy.lossy_link(loss=0.10, dup=0.05, mtu=9000) as made:
        yield made
    assert lossy.leftovers() == []


@pytest.fixture(scope="module")
def lossy_server(files: Path, link: lossy.LossyLink) -> Iterator[int]:
    with tftpy_server(files, link.server_addr, timeout=0.1) as port:
        yield port


def test_lossy_link_cleans_up() -> None:
    lossy.skip_unless_possible()
    with lossy.lossy_link() as made:
        assert {made.ns, made.root_device} <= set(lossy.leftovers())
        assert made.client_addr in made.run("ip", "-4", "addr")
        assert made.counters()["dropped"] >= 0
    left = set(lossy.leftovers())
    assert made.ns not in left
    assert made.root_device not in left
