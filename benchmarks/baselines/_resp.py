"""The front end shared by the baseline RESP servers (no dominoes code).

What both baselines have in common:

* RESP parsing with ``hiredis.Reader`` (the parser the dominoes KV service uses);
* per ``data_received``: parse every complete command, answer them in order and
  write all replies with one ``transport.write``;
* the connection commands redis-benchmark and redis-cli send, answered locally:
  PING, ECHO, SELECT 0, CONFIG GET (``save`` and ``appendonly``, so that
  redis-benchmark's start-up probe succeeds), INFO (minimal), COMMAND (an empty
  array), CLIENT SETNAME/SETINFO (OK), QUIT;
* the process model: the parent binds N listening sockets with
  ``SO_REUSEPORT`` on the same address *before* any worker starts (so a client
  that connects as soon as the port answers is already spread over all N
  accept queues), then serves in-process (N = 1) or starts N worker processes
  that inherit one socket each (N > 1).  Each worker pins itself to one core
  with ``os.sched_setaffinity`` (worker i on the i-th core of the parent's
  affinity mask, like dominoes replicas) and runs one uvloop event loop.

SIGTERM or SIGINT stops the parent, which stops its workers (and whatever
else it started) before it exits, within ``STOP_GRACE`` seconds whatever they
do: a worker still running then is killed.  A worker also dies with its
parent (``PR_SET_PDEATHSIG``), so killing the parent, even with SIGKILL,
leaves nothing listening.  A benchmark that stops one server and starts the
next must not find the last one still holding cores or ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import uvloop

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
PONG = b"+PONG\r\n"
EMPTY_ARRAY = b"*0\r\n"
CONFIG_DEFAULTS = {b"save": b"", b"appendonly": b"no"}
#: Seconds a stopping parent gives its workers before it kills them.
STOP_GRACE: Final = 2.0
_PR_SET_PDEATHSIG: Final = 1


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def error(message: str) -> bytes:
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def encode(value: Any) -> bytes:
    """RESP2 for a value returned by redis-py (or a dict lookup)."""
    if value is None:
        return NIL
    if isinstance(value, bytes):
        return bulk(value)
    if value is True:
        return OK
    if value is False:
        return NIL
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return bulk(value.encode())
    if isinstance(value, float):
        return bulk(repr(value).encode())
    if isinstance(value, BaseException):
        text = str(value)
        return error(text if text[:1].isupper() and " " in text else f"ERR {text}")
    if isinstance(value, list | tuple):
        return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)
    return error(f"ERR cannot encode {type(value).__name__}")


def wrong_arity(name: bytes) -> bytes:
    return error(f"ERR wrong number of arguments for '{name.decode(errors='replace').lower()}'")


def unknown(name: bytes) -> bytes:
    return error(f"ERR unknown command '{name.decode(errors='replace')}'")


def _info(server: str) -> bytes:
    text = (
        "# Server\r\n"
        "redis_version:7.0.0\r\n"
        f"dominoes_baseline:{server}\r\n"
        f"process_id:{os.getpid()}\r\n"
        "# Keyspace\r\n"
    )
    return bulk(text.encode())


def local_reply(name: bytes, cmd: list[bytes], server: str) -> bytes | None:
    """The reply to a connection command, or None when NAME is not one."""
    if name == b"PING":
        if len(cmd) == 1:
            return PONG
        return bulk(cmd[1]) if len(cmd) == 2 else wrong_arity(name)
    if name == b"ECHO":
        return bulk(cmd[1]) if len(cmd) == 2 else wrong_arity(name)
    if name == b"CONFIG":
        if len(cmd) >= 3 and cmd[1].upper() == b"GET":
            pairs = [
                b"".join((bulk(key), bulk(CONFIG_DEFAULTS[key])))
                for key in cmd[2:]
                if key in CONFIG_DEFAULTS
            ]
            return b"*%d\r\n" % (2 * len(pairs)) + b"".join(pairs)
        return error("ERR only CONFIG GET is supported")
    if name == b"INFO":
        return _info(server)
    if name == b"COMMAND":
        return EMPTY_ARRAY
    if name == b"SELECT":
        return OK if cmd[1:] == [b"0"] else error("ERR DB index is out of range")
    if name == b"CLIENT":
        return OK
    if name == b"QUIT":
        return OK
    return None


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port")
    parser.add_argument(
        "--processes", type=int, default=1, help="SO_REUSEPORT worker processes (default 1)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin workers to cores")
    parser.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    return args


def _listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux).

    PARENT is the pid the parent had: if it is already gone (it died before
    this call), exit now.  Also safe as a ``preexec_fn``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _pin(index: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[index % len(cores)]})


Factory = Callable[[], asyncio.Protocol]
Cleanup = Callable[[], Awaitable[None]]
Setup = Callable[[], Awaitable[tuple[Factory, Cleanup]]]


def serve_socket(sock: socket.socket, setup: Setup) -> None:
    """Serve SOCK on one uvloop loop until SIGTERM/SIGINT.

    SETUP (run inside the loop) returns a protocol factory and a cleanup coroutine.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        factory, cleanup = await setup()
        server = await loop.create_server(factory, sock=sock, backlog=1024)
        await stop.wait()
        server.close()
        # Clients still connected are dropped with the loop; the cleanup (closing a
        # redis client) gets a bounded time, so a stop never waits on a peer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cleanup(), STOP_GRACE / 2)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def run(
    args: argparse.Namespace,
    setup: Setup,
    script: str,
    extra_argv: Sequence[str] = (),
) -> int:
    """Entry point: the parent (binds and supervises) or one worker."""
    if args.worker is not None:  # a worker started by the parent below
        die_with_parent(args.parent)
        if not args.no_pin:
            _pin(args.worker)
        serve_socket(socket.socket(fileno=args.fd), setup)
        return 0
    socks = [_listener(args.host, args.port) for _ in range(args.processes)]
    if args.processes == 1:
        if not args.no_pin:
            _pin(0)
        serve_socket(socks[0], setup)
        return 0
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = []
    for i, sock in enumerate(socks):
        argv = [
            sys.executable,
            script,
            "--port",
            str(args.port),
            "--worker",
            str(i),
            "--fd",
            str(sock.fileno()),
            "--parent",
            str(os.getpid()),
            *(["--no-pin"] if args.no_pin else []),
            *extra_argv,
        ]
        children.append(subprocess.Popen(argv, pass_fds=[sock.fileno()]))
    for sock in socks:
        sock.close()
    status = 0
    try:
        while not stopping:
            if any(c.poll() is not None for c in children):
                print(f"{script}: a worker exited; stopping", file=sys.stderr)
                status = 1
                break
            time.sleep(0.1)
    finally:
        stop_children(children)
    return status


def stop_children(children: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGTERM every child, give them STOP_GRACE seconds together, then SIGKILL the rest.

    Each SIGTERM is followed by a SIGCONT: a stopped child acts on it only once continued.
    """
    for c in children:
        if c.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.send_signal(signal.SIGTERM)
                c.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + STOP_GRACE
    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.wait(max(0.0, deadline - time.monotonic()))
        if c.poll() is None:
            c.kill()
            c.wait()
