"""The replicated netstack with the Linux kernel as its peer, inside a namespace per test.

``dominoes run examples.tcp_echo:service --tun dn0 --addr 192.0.2.2/24`` runs in
a network namespace this module creates (:mod:`.netns`), each replica on its
own queue of the multi-queue TUN device ``dn0``; the kernel's side of ``dn0``
is 192.0.2.1.  The clients are the kernel's own: ``ping`` and Python sockets
run with ``ip netns exec``.  Skipped, with the reason, where namespaces or TUN
devices cannot be made (not root, no /dev/net/tun).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Service, wait_until
from .monitor_helpers import MonitorSession
from .netns import STACK_ADDR, Namespace, namespace, why_not

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(why_not() is not None, reason=str(why_not())),
]

ECHO = "examples.tcp_echo:service"

#: A kernel-side client: connect, send N random bytes (seeded) while reading the echo,
#: print the SHA-256 of what was sent and of what came back.
CLIENT = textwrap.dedent(
    """
    import hashlib, random, socket, sys, threading
    host, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(seed).randbytes(n)
    s = socket.create_connection((host, port), timeout=60)
    got = hashlib.sha256()
    count = 0
    def reader():
        global count
        while count < n:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got.update(chunk)
            count += len(chunk)
    t = threading.Thread(target=reader)
    t.start()
    s.sendall(data)
    t.join(120)
    s.shutdown(socket.SHUT_WR)
    tail = s.recv(1)
    print(hashlib.sha256(data).hexdigest(), got.hexdigest(), count, len(tail))
    """
)


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with namespace() as n:
        yield n


def _echo_service(
    ns: Namespace, run_dir: Path, replicas: int = 2, extra: tuple[str, ...] = ()
) -> Service:
    svc = Service(
        ECHO,
        run_dir,
        replicas=replicas,
        args=("--tun", "dn0", "--addr", f"{STACK_ADDR}/24", *extra),
        wrap=ns.wrap,
    )
    try:
        svc.wait_ready(60)
    except BaseException:
        svc.stop()
        raise
    assert f"serving on {STACK_ADDR}/24 port {svc.port} (TUN dn0) with {replicas} replicas" in (
        svc.output
    )
    return svc


def _client(ns: Namespace, port: int, n: int, seed: int = 1) -> list[str]:
    out = ns.run(
        sys.executable, "-c", CLIENT, STACK_ADDR, str(port), str(n), str(seed), timeout=180
    )
    return out.split()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Namespace, Service]]:
    """One namespace and echo service for the tests that only talk to it."""
    with namespace() as n:
        svc = _echo_service(n, tmp_path_factory.mktemp("echo") / "run")
        try:
            yield n, svc
        finally:
            svc.stop()


def test_ping_gets_echo_replies(echo: tuple[Namespace, Service]) -> None:
    ns, _ = echo
    if shutil.which("ping") is None:
        pytest.skip("no ping (iputils-ping)")
    out = ns.run("ping", "-c", "5", "-i", "0.2", "-W", "5", STACK_ADDR)
    assert " 0% packet loss" in out, out


@pytest.mark.parametrize("size", [0, 1, 1460, 1461, 1 << 20])
def test_echo_over_the_kernel_tcp(echo: tuple[Namespace, Service], size: int) -> None:
    ns, svc = echo
    sent, back, count, tail = _client(ns, svc.port, size)
    assert (sent, int(count)) == (back, size)
    assert tail == "0"  # the echo closed after the client did


def test_nc_echo_of_20_mb(echo: tuple[Namespace, Service], tmp_path: Path) -> None:
    """The kernel's ``nc`` sends 20 MB and reads the echo; the checksums match."""
    if shutil.which("nc") is None:
        pytest.skip("no nc (netcat-openbsd)")
    ns, svc = echo
    data = random.Random(20).randbytes(20_000_000)
    (tmp_path / "in").write_bytes(data)
    ns.run("sh", "-c", f"nc -N {STACK_ADDR} {svc.port} < {tmp_path}/in > {tmp_path}/out")
    back = (tmp_path / "out").read_bytes()
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


#: nftables in the namespace: 5 % of the stack's packets dropped on their way into the
#: kernel (dn0's ingress), and 5 % of the kernel's dropped and 2 % duplicated on their
#: way to the stack (the output hook; a duplicate goes out of dn0 again).
LOSSY = """
table netdev lossy_in {
  chain ig {
    type filter hook ingress device dn0 priority 0;
    numgen random mod 100 < 5 counter drop
  }
}
table ip lossy_out {
  chain out {
    type filter hook output priority 0;
    oifname "dn0" numgen random mod 100 < 5 counter drop
    oifname "dn0" numgen random mod 100 < 2 counter dup to 192.0.2.2 device "dn0"
  }
}
"""


def test_5_mb_each_way_under_loss_and_duplication(ns: Namespace, tmp_path: Path) -> None:
    if shutil.which("nft") is None:
        pytest.skip("no nft (nftables)")
    (tmp_path / "lossy.nft").write_text(LOSSY)
    ns.run("nft", "-f", str(tmp_path / "lossy.nft"))
    svc = _echo_service(ns, tmp_path / "run")
    try:
        sent, back, count, tail = _client(ns, svc.port, 5_000_000, seed=5)
        assert (sent, int(count), tail) == (back, 5_000_000, "0")
        rules = ns.run("nft", "list", "ruleset")
        counts = [int(n) for n in re.findall(r"counter packets (\d+)", rules)]
        assert len(counts) == 3
        assert all(n > 0 for n in counts), rules  # every kind of fault happened
    finally:
        svc.stop()


def test_a_connection_outlives_a_killed_replica(ns: Namespace, tmp_path: Path) -> None:
    svc = _echo_service(ns, tmp_path / "run")
    try:
        size = 8 << 20
        proc = ns.popen(
            sys.executable, "-c", CLIENT, STACK_ADDR, str(svc.port), str(size), "7",
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
        sent, back, count, _tail = out.split()
        assert (sent, int(count)) == (back, size)
        svc.wait_restarted(1)
    finally:
        svc.stop()


#: Holds one connection open until stdin closes, after one echo round trip.
HOLD = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    print(s.getsockname()[1], flush=True)
    sys.stdin.read()
    """
)


def test_stats_and_the_monitor_show_the_connections(ns: Namespace, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    svc = _echo_service(ns, run_dir, extra=("--monitor",))
    holder = ns.popen(
        sys.executable, "-c", HOLD, STACK_ADDR, str(svc.port),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        client_port = int(holder.stdout.readline())
        if shutil.which("ping") is not None:
            ns.run("ping", "-c", "2", "-i", "0.2", STACK_ADDR)

        def stats() -> dict[str, Any]:
            done = subprocess.run(
                [sys.executable, "-m", "dominoes", "stats", "--run-dir", str(run_dir), "--json"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            doc: dict[str, Any] = json.loads(done.stdout)
            return doc

        # each replica reports when it is asked: compare a reading where both had applied
        # the same log (the connection is idle now, so they get there)
        seen: list[dict[str, Any]] = []

        def settled() -> bool:
            seen[:] = [stats()]
            seqs = {r["report"]["replica"]["applied_seq"] for r in seen[0]["replicas"]}
            return len(seqs) == 1

        wait_until(settled, timeout=30)
        reports = [r["report"]["reports"]["netstack"] for r in seen[0]["replicas"]]
        # the replicated counters are the same on both replicas; the ingress ones are each
        # replica's own (what it read from its queue)
        assert reports[0]["tcp"] == reports[1]["tcp"]
        assert reports[0]["tcp"]["TcpPassiveOpens"] >= 1
        assert reports[0]["connections"] == reports[1]["connections"] == 1
        read = sum(r["ingress"].get("tun_read", 0) for r in reports)
        assert read >= reports[0]["tcp"]["TcpInSegs"]
        text = subprocess.run(
            [sys.executable, "-m", "dominoes", "stats", "--run-dir", str(run_dir)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "replica 1 netstack: address 192.0.2.2, connections 1" in text
        console = MonitorSession("--run-dir", str(run_dir), "--replica", "1")
        try:
            out = console.command("netstack connections", expect="state=")
            assert f"peer=192.0.2.1:{client_port}" in out
            assert "state=ESTABLISHED" in out
        finally:
            console.close()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
        svc.stop()


HTTP = "examples.http_h11:service"


def test_curl_gets_pages_from_the_h11_responder_on_both_replicas(
    ns: Namespace, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    svc = Service(
        HTTP, tmp_path / "run", args=("--tun", "dn0", "--addr", f"{STACK_ADDR}/24"), wrap=ns.wrap
    )
    www = tmp_path / "www"
    www.mkdir()
    blob = random.Random(9).randbytes(300_000)
    (www / "blob.bin").write_bytes(blob)
    server = ns.popen(
        sys.executable, "-u", "-m", "http.server", "8000", "--bind", "192.0.2.1",
        "--directory", str(www), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        svc.wait_ready(60)
        base = f"http://{STACK_ADDR}:{svc.port}"
        seen = set()
        for _ in range(40):  # new connections spread over the replicas' queues
            page = ns.run("curl", "-sS", "-m", "20", f"{base}/")
            assert page.startswith("hello from replica ")
            seen.add(page.split()[3])
            if len(seen) == 2:
                break
        assert seen == {"0", "1"}
        out = tmp_path / "bytes"
        ns.run("curl", "-sS", "-m", "60", "-o", str(out), f"{base}/bytes/5000000")
        assert out.read_bytes() == (bytes(range(256)) * 20000)[:5_000_000]
        upload = random.Random(11).randbytes(5_000_000)
        (tmp_path / "upload").write_bytes(upload)
        digest = ns.run("curl", "-sS", "-m", "60", "--data-binary", f"@{tmp_path}/upload", base)
        assert digest.strip() == hashlib.sha256(upload).hexdigest()
        # the stack's active open: it fetches from the kernel's own http.server
        assert server.stdout is not None
        assert b"Serving HTTP on 192.0.2.1 port 8000" in server.stdout.readline()
        fetched = tmp_path / "fetched"
        code = ns.run(
            "curl", "-sS", "-m", "60", "-o", str(fetched), "-w", "%{http_code}",
            f"{base}/fetch/192.0.2.1:8000/blob.bin",
        )  # fmt: skip
        assert code == "200"
        assert fetched.read_bytes() == blob
        code = ns.run(
            "curl", "-sS", "-m", "60", "-o", "/dev/null", "-w", "%{http_code}",
            f"{base}/fetch/192.0.2.1:8001/closed",
        )  # fmt: skip
        assert code == "502"  # refused: the kernel answered the SYN with a RST
    finally:
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
        svc.stop()
