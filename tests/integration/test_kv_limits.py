"""Output limits of the KV service, end to end: clients that pipeline large GETs.

A raw socket pipelines GETs of a 100 KB value and never reads.  Before the
output limits and the flow control, one such client made a replica hold
hundreds of megabytes (every command of a read answered at once, whatever
the client took).  Now the replica runs a pipeline only about a watermark of
output ahead of the client, and ``client-output-buffer-limit`` (set small here
with CONFIG SET, so each test takes seconds) disconnects the stuck client.
Memory is read from ``/proc/<pid>/status`` of the replica serving the socket
(``INFO server`` gives its ``process_id``); ``VmHWM`` is its peak.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hiredis
import pytest
import redis

from .harness import Service
from .kv_helpers import clients_on_every_replica, wait_for

pytestmark = pytest.mark.integration

VALUE = b"v" * 100_000
GET = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
#: How much more than its starting peak a replica may reach while a client is
#: stuck: the watermark, the transport's buffer, a read's parsed commands and
#: the allocator's slack; without flow control one read alone made ~1 GB.
MEMORY_BOUND = 64 * 1024 * 1024
DEFAULTS = "normal 256mb 64mb 60 pubsub 32mb 0 0"


@pytest.fixture(scope="module")
def on(svc: Service) -> Iterator[dict[int, redis.Redis]]:
    clients = clients_on_every_replica(svc.port)
    clients[0].set("big", VALUE)
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture
def limits(on: dict[int, redis.Redis]) -> Iterator[redis.Redis]:
    """CONFIG SET through any replica reaches both; the defaults come back after the test."""
    admin = on[0]
    yield admin
    admin.execute_command("CONFIG", "SET", "client-output-buffer-limit", DEFAULTS)


class Raw:
    """A client on a raw socket: it writes a pipeline and reads only when told to."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = hiredis.Reader()
        self.sock.sendall(
            b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n*2\r\n$4\r\nINFO\r\n$8\r\ndominoes\r\n"
        )
        server, dominoes = self._replies(2)
        self.pid = _field(server, "process_id")
        self.replica = _field(dominoes, "replica_index")

    def _replies(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < n:
            reply = self.reader.gets()
            if reply is False:
                self.reader.feed(self.sock.recv(65536))
            else:
                out.append(reply)
        return out

    def pipeline_without_reading(self, n: int, seconds: float) -> int:
        """Send up to ``n`` GETs, as fast as the server takes them, for at most ``seconds``."""
        self.sock.setblocking(False)
        data = memoryview(GET * n)
        sent = 0
        end = time.monotonic() + seconds
        while sent < len(data) and time.monotonic() < end:
            try:
                sent += self.sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)  # pacing, not synchronisation: the server reads on its own
            except OSError:  # cut off already
                break
        self.sock.setblocking(True)
        return sent // len(GET)

    def read_until_closed(self, timeout: float = 30.0) -> int:
        """Read what the server sent before it closed; the bytes read (EOF or reset)."""
        self.sock.settimeout(timeout)
        total = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := self.sock.recv(1 << 20):
                total += len(chunk)
        return total

    def close(self) -> None:
        self.sock.close()


def _field(info: bytes, name: str) -> int:
    for line in info.decode().splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in INFO")


def status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def disconnections(r: redis.Redis) -> int:
    return int(r.info("stats")["client_output_buffer_limit_disconnections"])


def served(r: redis.Redis, key: str) -> bool:
    """Another client of the same replica gets its answers."""
    r.set(key, "x")
    return r.get(key) == b"x" and r.get("big") == VALUE


def test_a_client_that_never_reads_is_disconnected_and_memory_stays_bounded(
    svc: Service, on: dict[int, redis.Redis], limits: redis.Redis
) -> None:
    """The issue's client, with the soft limit at 512 KB for 1 s (the defaults: 64 MB, 60 s)."""
    assert limits.execute_command("CONFIG", "SET", "client-output-buffer-limit", "normal 0 512kb 1")
    raw = Raw(svc.port)
    try:
        other = on[raw.replica]
        before = disconnections(other)
        peak = status(raw.pid, "VmHWM")
        log_start = len(svc.lines)
        # 40,000 GETs: 4 GB of replies if the server answered them all at once.
        raw.pipeline_without_reading(40_000, seconds=10)
        assert served(other, "during")
        wait_for(lambda: disconnections(other) > before, timeout=30)
        raw.read_until_closed()  # EOF or reset: the server hung up
        grown = status(raw.pid, "VmHWM") - peak
        assert grown < MEMORY_BOUND, f"the replica's peak grew by {grown} bytes"
        line = svc.wait_for_line("closed for its output buffer", start=log_start)
        assert "WARNING" in line
        assert "over the soft limit of 524288 bytes for 1 s" in line
        assert "addr=127.0.0.1:" in line
        assert served(other, "after")
        assert disconnections(other) == before + 1
    finally:
        raw.close()


def test_a_reply_over_the_hard_limit_disconnects_at_once(
    svc: Service, on: dict[int, redis.Redis], limits: redis.Redis
) -> None:
    assert limits.execute_command("CONFIG", "SET", "client-output-buffer-limit", "normal 512kb 0 0")
    raw = Raw(svc.port)
    try:
        other = on[raw.replica]
        before = disconnections(other)
        log_start = len(svc.lines)
        keys = [b"big"] * 8  # an 800 KB reply
        raw.sock.sendall(b"*9\r\n$4\r\nMGET\r\n" + b"".join(b"$3\r\n%s\r\n" % k for k in keys))
        assert raw.read_until_closed() < 512 * 1024  # none of it, or what went before the cut
        line = svc.wait_for_line("closed for its output buffer", start=log_start)
        assert "over the hard limit of 524288 bytes" in line
        assert disconnections(other) == before + 1
        assert served(other, "after-hard")
    finally:
        raw.close()


def test_a_client_that_reads_its_pipeline_is_served_a_watermark_at_a_time(
    svc: Service, on: dict[int, redis.Redis]
) -> None:
    """With the default limits, a deep pipeline of large replies that the client does read."""
    raw = Raw(svc.port)
    try:
        peak = status(raw.pid, "VmHWM")
        n = 3000  # 300 MB of replies to 66 KB of requests: one read, before
        sender = threading.Thread(target=raw.sock.sendall, args=(GET * n,), daemon=True)
        sender.start()
        got = 0
        raw.sock.settimeout(30)
        while got < n:
            reply = raw.reader.gets()
            if reply is False:
                chunk = raw.sock.recv(1 << 20)
                assert chunk, "the server closed the connection"
                raw.reader.feed(chunk)
            else:
                assert reply == VALUE
                got += 1
        sender.join(timeout=10)
        grown = status(raw.pid, "VmHWM") - peak
        assert grown < MEMORY_BOUND, f"the replica's peak grew by {grown} bytes"
    finally:
        raw.close()


def test_config_get_and_set_reach_every_replica(
    on: dict[int, redis.Redis], limits: redis.Redis
) -> None:
    assert on[1].config_set("client-output-buffer-limit", "normal 10mb 5mb 30")
    for r in on.values():
        assert r.config_get("client-output-buffer-limit") == {
            "client-output-buffer-limit": "normal 10485760 5242880 30 pubsub 33554432 0 0"
        }
    with pytest.raises(redis.ResponseError, match="Invalid client class"):
        on[0].config_set("client-output-buffer-limit", "master 1 2 3")
