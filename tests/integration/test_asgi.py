"""A web app on every replica, as its users see it: real ``dominoes run`` of a
Starlette app, driven with httpx, the websockets client and raw sockets.

What the embedded server must do (uvicorn's protocols inside each replica):
writes through one replica are read on the other; ``ctx.publish`` reaches
WebSocket and server-sent-event subscribers on every replica, each event
once; the lifespan runs on each replica; SIGTERM lets requests in flight
finish while new connections are refused; bad input (a malformed request,
huge headers or body, headers that never finish) gets a 4xx or a close,
and the replica keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .harness import ROOT, Service, free_port, running, wait_until

APP = "tests.integration.webapps:service"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Service]:
    with running(APP, tmp_path / "run") as svc:
        yield svc


def clients_on_each_replica(port: int, replicas: int = 2) -> dict[int, httpx.Client]:
    """One keep-alive httpx client per replica (new connections until each replica took one)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(400):
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=30,
        )
        replica = client.get("/counters/probe").json()["replica"]
        if replica in found:
            client.close()
        else:
            found[replica] = client
            if len(found) == replicas:
                return found
    for client in found.values():
        client.close()
    raise AssertionError(f"connections reached only replicas {sorted(found)}")


def websockets_on_each_replica(
    port: int, stack: contextlib.ExitStack, replicas: int = 2
) -> dict[int, ClientConnection]:
    """WebSocket feeds until each replica holds one (closed when ``stack`` exits)."""
    found: dict[int, ClientConnection] = {}
    for _ in range(400):
        ws = stack.enter_context(ws_connect(f"ws://127.0.0.1:{port}/feed", open_timeout=30))
        hello = json.loads(ws.recv(timeout=30))
        if hello["hello"] in found:
            ws.close()
        else:
            found[hello["hello"]] = ws
            if len(found) == replicas:
                return found
    raise AssertionError(f"WebSockets reached only replicas {sorted(found)}")


def test_a_write_on_one_replica_is_read_on_the_other(web: Service) -> None:
    on = clients_on_each_replica(web.port)
    try:
        for i in range(1, 301):
            writer, reader = (on[0], on[1]) if i % 2 else (on[1], on[0])
            assert writer.post("/counters/k").json()["value"] == i
            got = reader.get("/counters/k").json()
            assert got["value"] == i, f"read {got} after write {i}"
    finally:
        for client in on.values():
            client.close()


@pytest.mark.one_loop
async def test_async_clients_see_one_state(web: Service) -> None:
    base = f"http://127.0.0.1:{web.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        replies = [await client.post("/counters/a") for _ in range(50)]
        assert sorted(r.json()["value"] for r in replies) == list(range(1, 51))
    # fresh connections, spread over both replicas, all read the last write
    seen = set()
    for _ in range(40):
        async with httpx.AsyncClient(base_url=base, timeout=30) as fresh:
            got = (await fresh.get("/counters/a")).json()
            assert got["value"] == 50
            seen.add(got["replica"])
    assert seen == {0, 1}


def test_every_subscriber_on_every_replica_gets_each_event_once(web: Service) -> None:
    """ctx.publish: WebSocket and SSE subscribers on both replicas, 40 writes through both."""
    stack = contextlib.ExitStack()
    sockets = websockets_on_each_replica(web.port, stack)
    on = clients_on_each_replica(web.port)
    writes = 40
    streams: dict[int, list[str]] = {}
    ready = threading.Barrier(3, timeout=60)

    def sse_reader(client: httpx.Client) -> None:
        with client.stream("GET", "/events") as response:
            lines = response.iter_lines()
            assert next(lines) == "event: hello"
            replica = int(next(lines)[6:])
            ready.wait()
            streams[replica] = sse_data(lines, writes)

    sse_clients = clients_on_each_replica(web.port)
    threads = [threading.Thread(target=sse_reader, args=(c,)) for c in sse_clients.values()]
    try:
        for t in threads:
            t.start()
        ready.wait()  # both streams subscribed (the hello follows the subscription)
        expected = []
        for i in range(writes):
            reply = on[i % 2].post("/counters/feed").json()
            expected.append(reply["value"])
        got: dict[int, list[dict[str, Any]]] = {}
        for replica, ws in sockets.items():
            got[replica] = [json.loads(ws.recv(timeout=30)) for _ in range(writes)]
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        for replica, messages in got.items():
            assert [m["value"] for m in messages] == expected, f"WebSocket on {replica}"
        # both replicas delivered the same events in the same (log) order
        assert [m["seq"] for m in got[0]] == [m["seq"] for m in got[1]]
        assert len({m["seq"] for m in got[0]}) == writes
        assert set(streams) == {0, 1}
        for replica, data in streams.items():
            assert [int(d.split("=")[1].split("@")[0]) for d in data] == expected, replica
        # nothing more arrives: each event came once
        for ws in sockets.values():
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.2)
    finally:
        stack.close()
        for client in (*on.values(), *sse_clients.values()):
            client.close()


def sse_data(lines: Iterator[str], count: int) -> list[str]:
    """The next ``count`` data lines of a server-sent-event stream."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data: "):
            data.append(line[6:])
            if len(data) == count:
                break
    return data


def test_publish_without_a_state_change_reaches_both_replicas(web: Service) -> None:
    with contextlib.ExitStack() as stack:
        sockets = websockets_on_each_replica(web.port, stack)
        with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=30) as client:
            for i in range(5):
                assert client.post(f"/announce/m{i}").json() == {"ok": True}
        for ws in sockets.values():
            texts = [json.loads(ws.recv(timeout=30))["text"] for _ in range(5)]
            assert texts == [f"m{i}" for i in range(5)]


def test_the_lifespan_runs_on_every_replica(web: Service) -> None:
    on = clients_on_each_replica(web.port)
    try:
        for replica, client in on.items():
            assert client.get("/lifespan").json() == {
                "started": f"replica {replica}",
                "replica": replica,
            }
    finally:
        for client in on.values():
            client.close()


def test_a_failing_lifespan_stops_the_service_with_its_reason(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "dominoes", "run", "tests.integration.webapps:broken",
        "--replicas", "1", "--port", str(free_port()), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "lifespan startup failed" in done.stderr, done.stderr
    assert "the database is not there" in done.stderr, done.stderr


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    svc = Service(APP, tmp_path / "run", replicas=2, args=("--graceful-timeout", "120"))
    release = tmp_path / "release"
    results: list[str] = []

    def hold() -> None:
        with httpx.Client(timeout=120) as client:
            r = client.get(f"http://127.0.0.1:{svc.port}/held", params={"release": str(release)})
            results.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=hold) for _ in range(6)]
    try:
        svc.wait_ready()
        for t in threads:
            t.start()

        def all_entered() -> bool:
            with httpx.Client(timeout=30) as c:
                entered: int = c.get(f"http://127.0.0.1:{svc.port}/gate").json()["entered"]
                return entered == 6

        wait_until(all_entered, timeout=60)
        svc.proc.send_signal(15)
        # the listening sockets close at once; the six requests are still held
        wait_until(lambda: refused(svc.port), timeout=60)
        assert results == []
        release.touch()
        for t in threads:
            t.join(120)
        assert len(results) == 6
        assert all(r.startswith("200 done on ") for r in results), results
        assert {r[-1] for r in results} <= {"0", "1"}
        assert svc.proc.wait(120) == 0
    finally:
        release.touch()
        if svc.proc.poll() is None:
            svc.kill()
        else:
            svc._finish()


# --- bad input ----------------------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data``, then read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(data)
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Service]:
    limits = ("--max-body", "64K", "--max-header-bytes", "8K", "--header-timeout", "1")
    with running(APP, tmp_path / "run", args=limits) as svc:
        yield svc


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def test_bad_requests_get_4xx_or_a_close_and_everyone_else_is_served(strict: Service) -> None:
    port = strict.port
    on = clients_on_each_replica(port)
    try:
        # malformed request lines and headers
        for garbage in (
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /counters/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
        ):
            reply = exchange(port, garbage)
            assert reply == b"" or 400 <= status(reply) < 500, (garbage, reply[:200])
        # headers over --max-header-bytes: 431, in one piece or trickled in
        big = b"GET /counters/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert status(exchange(port, big)) == 431
        url = b"GET /counters/" + b"u" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert status(exchange(port, url)) == 431
        # a declared body over --max-body: 413 before the app reads it
        declared = b"POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
        assert status(exchange(port, declared + b"x" * 1000)) == 413
        # a chunked body that grows past it: 413 too
        chunk = b"8000\r\n" + b"c" * 0x8000 + b"\r\n"
        chunked = b"POST /size HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert status(exchange(port, chunked + chunk * 4 + b"0\r\n\r\n")) == 413
        # under the limit, the app gets the whole body
        small = chunked + chunk + b"0\r\n\r\n"
        reply = exchange(port, small.replace(b"Host: x", b"Host: x\r\nConnection: close"))
        assert status(reply) == 200
        assert b'{"size":32768}' in reply
        # the good clients were served throughout, on both replicas
        for i, client in enumerate(on.values()):
            assert client.post("/counters/good").json()["value"] == i + 1
    finally:
        for client in on.values():
            client.close()


def test_headers_that_never_finish_are_closed_and_others_are_served(strict: Service) -> None:
    """Slowloris: connections that trickle headers and never finish them are closed
    after --header-timeout, while the replicas keep answering other clients."""
    port = strict.port
    trickling = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /counters/x HTTP/1.1\r\nHost: x\r\n")
        trickling.append(s)
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing at all
    on = clients_on_each_replica(port)
    try:
        for client in on.values():
            assert client.post("/counters/alive").status_code == 200
        # keep trickling: each byte arrives, but the headers never end
        for s in trickling:
            with contextlib.suppress(OSError):
                s.sendall(b"X-a: b\r\n")
        for s in [*trickling, silent]:
            assert s.recv(65536) == b""  # closed by the server (the socket timeout is 30 s)
        assert {c.get("/counters/alive").json()["value"] for c in on.values()} == {2}
        reports = strict.control({"op": "stats"})["replicas"]
        assert sum(r["report"]["web"]["header_timeouts"] for r in reports) == 17
    finally:
        for s in [*trickling, silent]:
            s.close()
        for client in on.values():
            client.close()


def test_the_service_keeps_serving_after_many_bad_clients(strict: Service) -> None:
    """Dozens of broken connections at once (closed mid-request, mid-body, mid-WebSocket)."""
    port = strict.port
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
    on = clients_on_each_replica(port)
    try:
        values = [client.post("/counters/after").json()["value"] for client in on.values()]
        assert sorted(values) == [1, 2]
    finally:
        for client in on.values():
            client.close()
    assert strict.proc.poll() is None


def test_stats_show_each_replicas_connections_requests_and_subscribers(web: Service) -> None:
    with contextlib.ExitStack() as stack:
        websockets_on_each_replica(web.port, stack)
        on = clients_on_each_replica(web.port)
        try:
            for client in on.values():
                client.post("/counters/s")
            stats = web.control({"op": "stats"})  # what dominoes stats --json shows
            reports = {r["report"]["replica"]["index"]: r["report"] for r in stats["replicas"]}
            assert set(reports) == {0, 1}
            for report in reports.values():
                webstats = report["web"]
                assert webstats["connections"] >= 1  # its httpx client at least
                assert webstats["requests"] >= 2
                assert webstats["subscriptions"] >= 1
                assert webstats["topics"] == 2  # counts and news
                assert webstats["delivered"] >= 2
                assert webstats["dropped"] == 0
        finally:
            for client in on.values():
                client.close()
