"""N SO_REUSEPORT processes sharing their state through a real redis-server.

    python benchmarks/baselines/redis_shared.py --port P [--processes N]
                                                [--redis-url redis://127.0.0.1:6379/0]

"The way people usually share state between workers": the same front end as
``plain_resp.py`` (uvloop, ``hiredis.Reader``, N pinned ``SO_REUSEPORT``
processes), but every SET/GET/DEL/EXISTS/INCR goes to one redis-server through
``redis.asyncio`` (redis-py, hiredis-backed parser).  Without ``--redis-url``
the parent starts its own redis-server (``--save '' --appendonly no``, on a
free 127.0.0.1 port, not pinned) and stops it on exit (the kernel kills it if
this process dies first), so the server's whole process tree includes it.

Client settings, chosen to be fast and free of surprises under redis-py 8.x's
defaults: ``protocol=2`` (RESP2), ``socket_timeout=None`` (8.x defaults to
5 s), no retries (``Retry(NoBackoff(), 0)``; 8.1 retries 10 times by
default), no health checks, one unbounded connection pool per process
(connections are made once and reused).  RESP2 and RESP3 measured the same
here; hiredis parses either way.

Pipelining (fair but realistic): each client connection has one task that
forwards its commands to redis.  Commands parsed from ``data_received`` are
queued; the task takes **everything queued so far** as one batch and sends it
as one redis-py pipeline (``transaction=False``, one round trip; a batch of
one command is a plain ``await client.get(...)``/``set(...)`` call), then
writes all the batch's replies with one ``transport.write``.  Commands that
arrive while a batch is in flight join the next batch, so a batch is at least
what one ``data_received`` delivered and may be more.  Connection commands
(PING, CONFIG GET, INFO, ...) are answered locally, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _resp
from _resp import OK, encode, error, local_reply, unknown, wrong_arity

SERVER = "redis_shared"
# command -> (minimum arity including the name, maximum or None)
REMOTE = {
    b"GET": (2, 2),
    b"SET": (3, 3),
    b"DEL": (2, None),
    b"EXISTS": (2, None),
    b"INCR": (2, 2),
    b"DBSIZE": (1, 1),
}
PAUSE_AT = 4096  # queued commands per connection before reading pauses


class SharedProtocol(asyncio.Protocol):
    __slots__ = ("_busy", "_client", "_close", "_paused", "_pending", "_reader", "_transport")

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._pending: list[list[bytes]] = []
        self._busy = False
        self._close = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._close:
            return
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            while (cmd := reader.gets()) is not False:
                if type(cmd) is not list or not cmd:
                    raise hiredis.ProtocolError("expected a command array")
                pending.append(cmd)
                if cmd[0].upper() == b"QUIT":
                    self._close = True
                    break
        except hiredis.ProtocolError as exc:
            pending.append([b"\x00protocol-error", str(exc).encode()])
            self._close = True
        if not self._busy and pending:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        if len(pending) >= PAUSE_AT and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _live_transport(self) -> asyncio.Transport | None:
        return self._transport

    async def _drain(self) -> None:
        try:
            while self._pending and self._transport is not None:
                batch, self._pending = self._pending, []
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                replies = await self._execute(batch)
                transport = self._live_transport()  # the client may have gone meanwhile
                if transport is None:
                    return
                transport.write(b"".join(replies))
            if self._close and self._transport is not None:
                self._transport.close()
        finally:
            self._busy = False

    async def _execute(self, batch: list[list[bytes]]) -> list[bytes]:
        replies: list[bytes] = [b""] * len(batch)
        remote: list[tuple[int, list[bytes]]] = []
        for i, cmd in enumerate(batch):
            name = cmd[0].upper()
            arity = REMOTE.get(name)
            if arity is not None:
                lo, hi = arity
                if len(cmd) < lo or (hi is not None and len(cmd) > hi):
                    replies[i] = wrong_arity(name)
                else:
                    cmd[0] = name
                    remote.append((i, cmd))
            elif name == b"\x00PROTOCOL-ERROR":
                replies[i] = error(f"ERR Protocol error: {cmd[1].decode(errors='replace')}")
            elif name == b"QUIT":
                replies[i] = OK
            else:
                reply = local_reply(name, cmd, SERVER)
                replies[i] = unknown(name) if reply is None else reply
        if not remote:
            return replies
        client = self._client
        results: list[Any]
        if len(remote) == 1:
            cmd = remote[0][1]
            try:
                results = [await _call(client, cmd)]
            except Exception as exc:  # noqa: BLE001 -- becomes the client's error reply
                results = [exc]
        else:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for _, cmd in remote:
                        _call(pipe, cmd)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 -- connection trouble: every command fails
                results = [exc] * len(remote)
        for (i, cmd), result in zip(remote, results, strict=True):
            if cmd[0] == b"SET" and result is True:
                replies[i] = OK
            else:
                replies[i] = encode(result)
        return replies


def _call(target: Any, cmd: list[bytes]) -> Any:
    """``client.get(key)`` / ``pipe.set(key, value)`` ...: how applications call redis-py."""
    name = cmd[0]
    if name == b"GET":
        return target.get(cmd[1])
    if name == b"SET":
        return target.set(cmd[1], cmd[2])
    if name == b"DEL":
        return target.delete(*cmd[1:])
    if name == b"EXISTS":
        return target.exists(*cmd[1:])
    if name == b"INCR":
        return target.incr(cmd[1])
    return target.dbsize()


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        socket_timeout=None,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def _make_setup(
    url: str,
) -> Callable[[], Awaitable[tuple[Callable[[], asyncio.Protocol], Callable[[], Awaitable[None]]]]]:
    async def setup() -> tuple[Callable[[], asyncio.Protocol], Callable[[], Awaitable[None]]]:
        client = _client(url)
        await client.ping()

        async def cleanup() -> None:
            await client.aclose()

        return (lambda: SharedProtocol(client)), cleanup

    return setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _redis_server() -> Any:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server not found: apt-get install -y redis-server")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="dominoes-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [
                *(exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly"),
                *("no", "--daemonize", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "log")),
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=_resp.die_with_parent,  # gone with us, even after a SIGKILL
        )
        try:
            deadline = time.monotonic() + 10
            while not _ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"redis-server did not start on port {port}")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    args = _resp.parse_args(__doc__.split("\n\n")[0])
    if args.worker is not None:
        return _resp.run(args, _make_setup(args.redis_url), __file__)
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(_redis_server())
        return _resp.run(args, _make_setup(url), __file__, ["--redis-url", url])


if __name__ == "__main__":
    sys.exit(main())
