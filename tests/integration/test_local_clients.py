"""Local clients (``dominoes.connect``) against a real ``dominoes run``.

One counter service serves the whole module.  Clients run both inside the
test process (on the suite's loop) and as separate processes (``python -c``
on the stdlib loop), because attaching and dying are per process.  Every
wait is bounded: asyncio timeouts here, ``subprocess`` timeouts for child
processes, and a SIGKILL of the service if it does not stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import dominoes
from dominoes._core._machine import Applied
from dominoes._runtime._local import encode_reply, reply_address
from examples.counter import Counter

from .harness import ROOT, Service, wait_until

pytestmark = pytest.mark.integration

NAME = "counter"
#: Hard limits (seconds).
START_TIMEOUT = 30.0
CHILD_TIMEOUT = 120.0
STEP_TIMEOUT = 30.0
#: What pytest-of-<user> directories allow: the other-uid test needs a run
#: directory whose parents it can traverse, so the module makes its own.
NOBODY = 65534

_runs = itertools.count(1)


def fresh(key: str) -> str:
    """A counter key no earlier test touched: the module's one service outlives each test
    (and every async test runs once per event loop)."""
    return f"{key}-{next(_runs)}"


class Running(Service):
    """The module's counter service (see ``harness.Service``), with TCP helpers."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__("examples.counter:service", run_dir, replicas=2)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        try:
            super().wait_ready(timeout)
        except AssertionError:
            self.kill()
            raise

    def tcp(self, line: str) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode().strip()

    def get(self, key: str) -> int:
        return int(self.tcp(f"GET {key}"))


@pytest.fixture(scope="module")
def service() -> Iterator[Running]:
    base = Path(tempfile.mkdtemp(prefix="dominoes-local-clients-"))
    svc = Running(base / "run")
    try:
        svc.wait_ready()
        pids = [r["pid"] for r in svc.control({"op": "status"})["replicas"]]
        yield svc
        # A client still attached while the service stops is told (EOF), and
        # does not hold the stop up.
        with attached_raw(svc) as held:
            code = svc.stop()
            held.settimeout(5)
            assert held.recv(1) == b""
        assert code == 0, svc.output
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"replica pid {pid} outlived the service"
        assert not (svc.run_dir / "control.sock").exists()
        assert not [e for e in os.listdir("/dev/shm") if "dominoes" in e]
        assert "Traceback" not in svc.output, svc.output
    finally:
        if svc.proc.poll() is None:
            svc.kill()
        for path in sorted(base.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        with contextlib.suppress(OSError):
            base.rmdir()


@contextlib.contextmanager
def attached_raw(svc: Running) -> Iterator[socket.socket]:
    """A control connection that did the connect op (what dominoes.connect does first)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(svc.run_dir / "control.sock"))
        s.sendall(b'{"op": "connect"}\n')
        data, fds, _, _ = socket.recv_fds(s, 65536, 16)
        for fd in fds:
            os.close(fd)
        assert json.loads(data)["replicas"] == len(fds) - 1 == 2
        yield s


@pytest.fixture
async def client(service: Running) -> AsyncIterator[dominoes.Client]:
    async with asyncio.timeout(STEP_TIMEOUT):
        c = await dominoes.connect(NAME, run_dir=service.run_dir)
    try:
        yield c
    finally:
        await c.close()


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a client script in a fresh interpreter (bounded), from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )


async def until(predicate: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- 1. retries are applied once -----------------------------------------------------------

RETRY_SCRIPT = """
    import asyncio, json, sys
    from pathlib import Path
    import dominoes

    async def main() -> None:
        async with await dominoes.connect("counter", run_dir=Path(sys.argv[1])) as client:
            values = []
            for i in range(1000):
                first = await client.submit("Counter.incr", "retried", _request_id=f"r{i}")
                again = await client.submit("Counter.incr", "retried", _request_id=f"r{i}")
                values.append([first, again])
            print(json.dumps({"values": values, "line": client.line}))

    asyncio.run(asyncio.wait_for(main(), 100))
"""


def test_every_request_sent_twice_is_applied_once(service: Running) -> None:
    done = run_child(RETRY_SCRIPT, str(service.run_dir))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    values = out["values"]
    assert len(values) == 1000
    assert [first for first, _ in values] == list(range(1, 1001))
    assert all(first == again for first, again in values)
    assert service.get("retried") == 1000
    # The client's line was freed when it exited.
    wait_until(lambda: out["line"] not in service.control({"op": "status"})["clients"])


async def test_concurrent_duplicates_are_applied_once(
    service: Running, client: dominoes.Client
) -> None:
    # Many requests in flight at once (more than a unix datagram queue holds),
    # each submitted twice concurrently under one id.
    key = fresh("burst")
    async with asyncio.timeout(STEP_TIMEOUT):
        results = await asyncio.gather(
            *(client.submit(Counter.incr, key, _request_id=f"b{i % 300}") for i in range(600))
        )
    assert sorted(set(results)) == list(range(1, 301))
    assert [results[i] == results[i + 300] for i in range(300)] == [True] * 300
    assert service.get(key) == 300
    assert client.statistics().pending == 0


# --- 2-4. errors reach the client that caused them, and only it -----------------------------------


async def test_too_large_request_is_refused_locally(
    service: Running, client: dominoes.Client
) -> None:
    tail = service.control({"op": "status"})["log"]["tail"]
    limit = client.max_entry_bytes
    with pytest.raises(dominoes.EntryTooLargeError, match="larger than the log's limit"):
        await client.submit(Counter.incr, "x" * (limit + 1))
    assert service.control({"op": "status"})["log"]["tail"] == tail  # nothing appended
    key = fresh("after-large")
    async with asyncio.timeout(STEP_TIMEOUT):
        assert await client.submit(Counter.incr, key) == 1
    assert service.get(key) == 1
    assert service.tcp(f"INCR {key}") == "2"


async def test_unknown_event_is_refused_locally(service: Running, client: dominoes.Client) -> None:
    tail = service.control({"op": "status"})["log"]["tail"]
    with pytest.raises(dominoes.UnknownEventError, match=r"Counter\.nope"):
        await client.submit("Counter.nope", "k")
    with pytest.raises(dominoes.UnknownEventError):
        await client.submit(Counter.get, "k")  # type: ignore[arg-type] # a query is no event
    with pytest.raises(TypeError, match="cannot be encoded"):
        await client.submit(Counter.incr, object())
    assert service.control({"op": "status"})["log"]["tail"] == tail
    async with asyncio.timeout(STEP_TIMEOUT):
        assert await client.submit(Counter.incr, fresh("after-unknown")) == 1


async def test_handler_exception_comes_back_as_remote_error(
    service: Running, client: dominoes.Client
) -> None:
    big = 2**63 - 1
    key = fresh("overflow")
    async with asyncio.timeout(STEP_TIMEOUT):
        assert await client.submit(Counter.incr, key, by=big) == big
        with pytest.raises(dominoes.RemoteError, match="OverflowError: increment would overflow"):
            await client.submit(Counter.incr, key, by=big, _request_id="o1")
        # The retry gets the recorded error, and the state did not change.
        with pytest.raises(dominoes.RemoteError, match="OverflowError"):
            await client.submit(Counter.incr, key, by=big, _request_id="o1")
        assert await client.submit(Counter.incr, key, by=-1) == big - 1
    assert service.get(key) == big - 1


# --- 5. a client dying with a reservation stalls nothing ------------------------------------------

DIE_SCRIPT = """
    import asyncio, os, signal, sys
    from pathlib import Path
    import dominoes

    async def main() -> None:
        client = await dominoes.connect("counter", run_dir=Path(sys.argv[1]))
        assert await client.submit("Counter.incr", "before-death") >= 1
        seq = client._log.try_reserve(client.line, 1)  # reserved, never published
        print(seq, client.line, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
"""


async def test_client_killed_holding_a_reservation_stalls_nothing(
    service: Running, client: dominoes.Client
) -> None:
    start = len(service.lines)
    done = await asyncio.to_thread(run_child, DIE_SCRIPT, str(service.run_dir))
    assert done.returncode == -signal.SIGKILL, done.stderr
    seq, line = map(int, done.stdout.split())
    assert seq > 0
    key = fresh("after-death")
    async with asyncio.timeout(STEP_TIMEOUT):
        for _ in range(50):
            await client.submit(Counter.incr, key)
    assert service.get(key) == 50
    # Every replica gets past the filled slot; one that owned none of the 50
    # requests may still be applying them, so wait for it rather than assume.
    await until(lambda: min(r["cursor"] for r in service.status()["replicas"]) > seq)
    assert line not in service.status()["clients"]
    assert any(
        f"client line {line}: filled 1 abandoned slot" in x for x in service.lines[start:]
    ), service.output


async def test_lines_are_reused_after_clients_leave(service: Running) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        lines = set()
        for _ in range(3):
            async with await dominoes.connect(NAME, run_dir=service.run_dir) as c:
                lines.add(c.line)
                assert await c.submit(Counter.incr, "reuse") >= 1
            await until(lambda: not service.control({"op": "status"})["clients"])
    assert len(lines) == 1


# --- attach rules -------------------------------------------------------------------------------

OTHER_UID_SCRIPT = """
    import json, os, socket, sys
    path = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    os.setgid(65534)
    os.setuid(65534)
    s.connect(path)
    s.sendall(b'{"op": "connect"}\\n')
    data = s.recv(65536)
    print(json.loads(data)["error"])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_another_uid_is_refused_by_peer_credentials(service: Running) -> None:
    # Open the file-permission layer (0700 dir, 0600 socket) for this test only,
    # so that the supervisor's SO_PEERCRED check is what refuses.
    sock = service.run_dir / "control.sock"
    dirs = [service.run_dir, service.run_dir.parent]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [*dirs, sock]}
    try:
        for d in dirs:
            d.chmod(0o711)
        sock.chmod(0o666)
        done = run_child(OTHER_UID_SCRIPT, str(sock))
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert done.returncode == 0, done.stderr
    assert "PermissionError" in done.stdout
    assert f"uid {NOBODY} may not attach" in done.stdout
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.run_dir.stat().st_mode) == 0o700


FORGE_SCRIPT = """
    import os, socket, sys
    import msgspec
    address = bytes.fromhex(sys.argv[1])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if sys.argv[2] == "other":
        os.setgid(65534)
        os.setuid(65534)
    s.sendto(msgspec.msgpack.encode([sys.argv[3], True, 666]), address)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
async def test_replies_from_another_uid_are_refused(
    service: Running, client: dominoes.Client
) -> None:
    # Abstract socket names are visible to every user (/proc/net/unix), so the
    # client checks the kernel-supplied sender credentials of each reply.
    address = reply_address(NAME, client.line, client._nonce).hex()
    rid = client._prefix + "forged"
    for who in ("other", "same"):
        done = await asyncio.to_thread(run_child, FORGE_SCRIPT, address, who, rid)
        assert done.returncode == 0, done.stderr
    await until(lambda: client.statistics().stale_replies == 1)
    assert client.statistics().refused_replies == 1
    async with asyncio.timeout(STEP_TIMEOUT):
        assert await client.submit(Counter.incr, fresh("after-forgery")) == 1


def test_results_that_cannot_be_encoded_become_error_text() -> None:
    applied = Applied(7, None, True)
    applied.result = object()
    rid, ok, text = msgspec.msgpack.decode(encode_reply("c2.x.1", applied))
    assert (rid, ok) == ("c2.x.1", False)
    assert text.startswith("TypeError: the result of request 'c2.x.1' cannot be sent")
    expected = ["r", False, "OverflowError: too big"]
    applied = Applied(8, None, True)
    applied.error = OverflowError("too big")
    assert msgspec.msgpack.decode(encode_reply("r", applied)) == expected
    applied.duplicate = True  # a retry: the recorded text comes back as it was
    applied.error = dominoes.RemoteError("OverflowError: too big")
    assert msgspec.msgpack.decode(encode_reply("r", applied)) == expected


async def test_connect_to_a_service_that_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="is not running"):
        await dominoes.connect("nothing-here", run_dir=tmp_path)


async def test_closed_client_refuses_submits(service: Running) -> None:
    c = await dominoes.connect(NAME, run_dir=service.run_dir)
    await c.close()
    with pytest.raises(ConnectionError, match="closed"):
        await c.submit(Counter.incr, "closed")


# --- last: a replica dies while a client submits ----------------------------------------------


async def test_requests_survive_a_replica_killed_mid_stream(
    service: Running, client: dominoes.Client
) -> None:
    """An owner that dies before replying costs a retry; the retry is applied once."""
    victim = service.control({"op": "status"})["replicas"][1]["pid"]
    values: list[int] = []
    key = fresh("survivor")

    async def worker(n: int) -> None:
        for _ in range(n):
            values.append(await client.submit(Counter.incr, key, _timeout=0.3))

    async with asyncio.timeout(STEP_TIMEOUT * 2):
        workers = [asyncio.create_task(worker(100)) for _ in range(20)]
        await until(lambda: len(values) >= 500)
        os.kill(victim, signal.SIGKILL)
        await asyncio.gather(*workers)
        await until(
            lambda: all(r["ready"] for r in service.control({"op": "status"})["replicas"]), 20
        )
        await worker(100)
    assert sorted(values) == list(range(1, 2101))
    assert service.get(key) == 2100
