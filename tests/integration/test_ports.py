"""A port another socket holds is refused at start (SO_REUSEPORT is for a service's own replicas).

The first tests drive :mod:`dominoes._runtime._ports` with plain sockets; the
rest run real ``dominoes run`` processes on one port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dominoes._runtime import _ports
from dominoes._runtime._ports import PortInUseError, claim_ports

from .harness import ROOT, LineClient, Service, alive, free_port, running, wait_until
from .kv_helpers import KV, wait_for

pytestmark = pytest.mark.integration

H = "127.0.0.1"
COUNTER = "examples.counter:service"
SOL, ADDR, PORT = socket.SOL_SOCKET, socket.SO_REUSEADDR, socket.SO_REUSEPORT


def tcp(*options: int) -> socket.socket:
    sock = socket.socket()
    for option in options:
        sock.setsockopt(SOL, option, 1)
    return sock


def udp(*options: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in options:
        sock.setsockopt(SOL, option, 1)
    return sock


def bind_fails(sock: socket.socket, port: int) -> bool:
    with sock:
        try:
            sock.bind((H, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


@contextlib.contextmanager
def holder(kind: str, port: int) -> Iterator[socket.socket]:
    """A foreign socket on ``port``: ``tcp`` listens, ``udp`` is bound; ``+reuseport`` sets it."""
    proto, _, extra = kind.partition("+")
    options = (PORT,) if extra == "reuseport" else ()
    sock = tcp(ADDR, *options) if proto == "tcp" else udp(*options)
    with sock:
        sock.bind((H, port))
        if proto == "tcp":
            sock.listen()
        yield sock


def leave_time_wait(port: int, *, reuseport: bool) -> None:
    """A server on ``port`` closes a connection first and stops: its end stays in TIME_WAIT."""
    with tcp(ADDR, *((PORT,) if reuseport else ())) as listener:
        listener.bind((H, port))
        listener.listen()
        with socket.create_connection((H, port), timeout=10) as client:
            server, _ = listener.accept()
            server.close()
            assert client.recv(1) == b""  # the server's FIN arrived; closing answers it
    assert bind_fails(socket.socket(), port)  # the connection still holds the port


# --- the claim, with plain sockets ---------------------------------------------------------


@pytest.mark.parametrize(("tcp_on", "udp_on"), [(True, False), (False, True), (True, True)])
def test_a_claim_refuses_the_next_until_closed(tcp_on: bool, udp_on: bool) -> None:
    port = free_port()
    with claim_ports(H, port, tcp=tcp_on, udp=udp_on):
        with pytest.raises(PortInUseError) as info:
            claim_ports(H, port, tcp=tcp_on, udp=udp_on)
        assert str(info.value).startswith(f"port {port} on {H} is in use")
        if tcp_on:
            assert bind_fails(tcp(ADDR), port)
        if udp_on:
            assert bind_fails(udp(), port)
    claim_ports(H, port, tcp=tcp_on, udp=udp_on).close()


def test_replicas_bind_next_to_the_guard_and_it_takes_no_traffic() -> None:
    port = free_port()
    with claim_ports(H, port, tcp=True, udp=True) as claim, contextlib.ExitStack() as stack:
        # As asyncio in each replica: SO_REUSEADDR + SO_REUSEPORT for TCP, SO_REUSEPORT for UDP.
        listener = stack.enter_context(tcp(ADDR, PORT))
        listener.bind((H, port))
        listener.listen()
        replicas = [stack.enter_context(udp(PORT)) for _ in range(2)]
        for r in replicas:
            r.bind((H, port))
        assert bind_fails(tcp(ADDR), port)
        assert bind_fails(udp(), port)

        listener.settimeout(10)
        for _ in range(20):  # every connection reaches the listener, none the guard
            with socket.create_connection((H, port), timeout=10):
                listener.accept()[0].close()

        sent = 100
        for _ in range(sent):  # each from its own source port: the hash spreads them
            with udp() as client:
                client.sendto(b"x", (H, port))
        received = 0
        deadline = time.monotonic() + 10
        while received < sent and time.monotonic() < deadline:
            ready, _, _ = select.select(replicas, [], [], deadline - time.monotonic())
            for r in ready:
                r.recv(16)
                received += 1
        assert received == sent
        guard = claim.sockets[-1]
        assert guard.type == socket.SOCK_DGRAM
        guard.setblocking(False)
        with pytest.raises(BlockingIOError):
            guard.recv(16)


@pytest.mark.parametrize("kind", ["tcp", "tcp+reuseport", "udp", "udp+reuseport"])
def test_a_foreign_socket_is_refused(kind: str) -> None:
    port = free_port()
    with holder(kind, port), pytest.raises(PortInUseError) as info:
        claim_ports(H, port, tcp=True, udp=True)
    assert info.value.proto == kind.partition("+")[0]


def test_a_bound_socket_that_does_not_listen_is_refused() -> None:
    port = free_port()
    with socket.socket() as other:
        other.bind((H, port))
        with pytest.raises(PortInUseError):
            claim_ports(H, port, tcp=True, udp=False)


@pytest.mark.parametrize("reuseport", [True, False], ids=["reuseport-server", "plain-server"])
def test_time_wait_is_not_in_use(reuseport: bool) -> None:
    port = free_port()
    leave_time_wait(port, reuseport=reuseport)
    if not reuseport:  # the guard's fallback is needed: an SO_REUSEPORT-only bind fails
        assert bind_fails(tcp(PORT), port)
    with claim_ports(H, port, tcp=True, udp=False):
        with tcp(ADDR, PORT) as replica:
            replica.bind((H, port))
            replica.listen()
        with pytest.raises(PortInUseError):
            claim_ports(H, port, tcp=True, udp=False)


def test_what_is_not_claimed() -> None:
    port = free_port()
    for claim in (
        claim_ports(H, 0, tcp=True, udp=True),  # each replica gets its own port
        claim_ports(H, port, tcp=False, udp=False),  # nothing listens
    ):
        assert claim.sockets == []
    with pytest.raises(ValueError, match="0-65535"):
        claim_ports(H, 65536, tcp=True, udp=False)


def test_claims_of_one_port_take_turns() -> None:
    port = free_port()
    with _ports._claim_lock(port, 1.0), pytest.raises(RuntimeError, match="lock"):
        claim_ports(H, port, tcp=True, udp=False, lock_timeout=0.05)
    claim_ports(H, port, tcp=True, udp=False).close()


# --- real services ---------------------------------------------------------------------------


@contextlib.contextmanager
def serving(target: str, run_dir: Path, port: int | None = None) -> Iterator[Service]:
    """``dominoes run TARGET`` (on ``port`` if given), ready; stopped afterwards."""
    args = ("--port", str(port)) if port is not None else ()  # the last --port wins
    with running(target, run_dir, args=args) as svc:
        if port is not None:
            svc.port = port
        if target == KV:
            wait_for(lambda: pings(svc.port), timeout=20)
        yield svc


def pings(port: int) -> bool:
    try:
        with redis.Redis(host=H, port=port, socket_timeout=5) as r:
            return bool(r.ping())
    except redis.ConnectionError:
        return False


def refused(target: str, run_dir: Path, port: int) -> str:
    """Run ``dominoes run TARGET --port PORT``: it must exit 1 with one line, starting nothing.

    The supervisor refuses the port before any replica starts an event loop:
    the replicas get the default one, uvloop.
    """
    cmd = [
        sys.executable, "-m", "dominoes", "run", target, "--replicas", "2",
        "--port", str(port), "--run-dir", str(run_dir), "--loop", "uvloop",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"dominoes: port {port} on {H} is in use"), done.stderr
    assert not (run_dir / "control.sock").exists()
    return lines[0]


def answers(target: str, port: int, key: str | None = None) -> None:
    """Fresh connections (spread by SO_REUSEPORT) all reach the service itself."""
    for _ in range(20):
        if target == KV:
            with redis.Redis(host=H, port=port, socket_timeout=10) as r:
                assert r.ping() is True
                if key is not None:
                    assert r.get(key) == b"kept"
        else:
            with LineClient(port) as c:
                assert c.ask("INFO").startswith("replica ")


@pytest.mark.parametrize(("first", "second"), [(KV, COUNTER), (COUNTER, KV)], ids=["kv", "counter"])
def test_two_services_on_one_port(first: str, second: str, tmp_path: Path) -> None:
    with serving(first, tmp_path / "first") as svc:
        refused(second, tmp_path / "second", svc.port)
        answers(first, svc.port)


def test_one_service_twice_with_another_run_dir(tmp_path: Path) -> None:
    with serving(KV, tmp_path / "a") as svc:
        with redis.Redis(host=H, port=svc.port, socket_timeout=10) as r:
            r.set("ports:key", "kept")
        refused(KV, tmp_path / "b", svc.port)
        answers(KV, svc.port, key="ports:key")


@pytest.mark.parametrize("kind", ["tcp", "tcp+reuseport", "udp", "udp+reuseport"])
def test_a_foreign_socket_refuses_the_service(kind: str, tmp_path: Path) -> None:
    port = free_port()
    with holder(kind, port):
        line = refused(COUNTER, tmp_path / "run", port)
    assert f"({kind.partition('+')[0]})" in line


def test_a_udp_socket_does_not_refuse_a_tcp_only_service(tmp_path: Path) -> None:
    port = free_port()
    with holder("udp", port), serving(KV, tmp_path / "run", port) as svc:
        answers(KV, svc.port)


def test_a_stopped_replica_of_a_killed_supervisor_frees_the_port(tmp_path: Path) -> None:
    """An orphan cannot hold the port: a replica dies with its supervisor
    (PR_SET_PDEATHSIG), even while stopped, so the next service starts."""
    with serving(COUNTER, tmp_path / "first") as svc:
        pids = svc.replica_pids()
        port = svc.port
        try:
            os.kill(pids[1], signal.SIGSTOP)  # frozen: it cannot notice its supervisor is gone
            svc.proc.kill()
            svc.proc.wait(10)
            wait_until(lambda: not any(alive(pid) for pid in pids), timeout=20)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    with serving(COUNTER, tmp_path / "second", port) as again:
        answers(COUNTER, again.port)


def test_the_port_is_free_again_after_a_clean_stop(tmp_path: Path) -> None:
    with serving(KV, tmp_path / "first") as svc:
        port = svc.port
        # A connection open at the stop: the server closes it first and keeps a
        # TIME_WAIT on the port, which must not count as in use.
        client = redis.Redis(host=H, port=port, socket_timeout=10, single_connection_client=True)
        assert client.ping() is True
        assert svc.stop() == 0
        client.close()
    with serving(KV, tmp_path / "second", port) as again:
        answers(KV, again.port)
