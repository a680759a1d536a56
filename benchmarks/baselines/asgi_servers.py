"""Which HTTP server to embed in a replica: one pinned process, a trivial ASGI app, wrk.

    python benchmarks/baselines/asgi_servers.py [--repeat R] [--seconds S] [--quick]
                                                [--json] [--servers a,b,...]
    python benchmarks/baselines/asgi_servers.py --serve KIND --port P [--core I]
                                                [--app MODULE:ATTR] [--processes N]

A dominoes replica is one process, pinned to one core, running one event loop
(uvloop) that it owns; an HTTP front end has to live inside that loop and
listen on the replica's ``SO_REUSEPORT`` socket.  This script measures the
candidates in that shape: a single process pinned to the last allowed core
(``--core``, default -1), its own uvloop loop, serving a trivial ASGI app
(no framework: it answers every request with ``200``, ``content-type:
application/json`` and ``{"server": KIND, "pid": PID}``, and handles the
lifespan protocol; ``/whoami`` answers where the app runs instead: pid, the
running loop's class, whether on the main thread), on a listening socket
bound with ``SO_REUSEPORT``:

``raw``
    not an ASGI server: an ``asyncio.Protocol`` that answers every complete
    request head (``\\r\\n\\r\\n``) with the same fixed response bytes, no
    parser, no ASGI.  The ceiling of the load generator and of the loop.
``httptools``
    ``uvicorn.Server(Config(app, http="httptools", loop="none"))`` awaited
    inside our loop, on our socket (``serve(sockets=[sock])``).
``h11``
    the same with ``http="h11"`` (uvicorn's pure-Python protocol).
``zttp``
    the same with ``http="zttp"``: uvicorn 0.55's third HTTP/1.1 protocol,
    built on the ``zttp`` package (a sans-IO HTTP/1.1, HTTP/2 and HTTP/3
    parser with a Zig core; not installed with uvicorn: ``pip install
    zttp``; skipped when missing).
``granian``
    ``granian.server.embed.Server(app, interface=ASGI, http=HTTP1)`` awaited
    inside our loop.  Its public API takes an address and port, not a
    socket: it binds its own listener (with ``SO_REUSEADDR`` and
    ``SO_REUSEPORT``); its Rust runtime reads and writes the sockets in
    threads of its own, and runs the app on our loop.

Load: ``wrk -t 1 -c 32 -d S --latency --timeout 5s http://127.0.0.1:P/``
(keep-alive, ``--seconds``, default 3), wrk pinned to the *first* allowed
core, the server to the last, so each has a core (on 2 cores).  Per start:
a 1 s warm-up, then one measured run.  Repetition r runs every server once,
in an order rotated by r; the table gives medians over ``--repeat`` (3)
runs.  Per run: requests/s, p50 and p99 (wrk's), the server's CPU per
100,000 requests and in % of one core (all its threads: they share its one
core), wrk's CPU in % of one core, and the server process's threads
(``/proc/PID/task``) after the load.  Runs disturbed by other processes
(> ``--busy-limit``, 10%) are rerun, as in ``benchmarks/asgi.py``.  The
default run takes about a minute.

Embedding checks (``"embedding"`` in the JSON), once per run:

* ``reuseport_granian_raw``: ``--serve granian`` and ``--serve raw`` on the
  same port at once; fresh connections reach both (granian's listener and
  ours are in one ``SO_REUSEPORT`` group), and granian's ``/whoami`` says
  the app ran on our uvloop loop, on the main thread;
* ``reuseport_granian_fd_raw``: the same with ``--serve granian_fd``: granian
  serving a socket *we* bound, handed over through its private
  ``granian._granian.SocketHolder(fd, uds, backlog)`` (it takes ownership of
  the fd and closes it when it stops, so we hand it a ``dup``);
* the threads each server adds (the table's column; 1 is the loop's own).

``--serve`` runs one server until SIGTERM or SIGINT, for this script and for
``benchmarks/asgi.py``: ``--app MODULE:ATTR`` serves that app instead of the
trivial one (imported with this directory on ``sys.path``, e.g.
``asgi_dict:app``), and ``--processes N`` starts N such processes, process i
pinned to core i, each with its own ``SO_REUSEPORT`` socket and loop (they
die with this parent, and it stops them on SIGTERM).

Progress goes to stderr; ``--json`` prints exactly one JSON object on stdout.
Run it from anywhere; it needs wrk, uvicorn with httptools, uvloop and
granian (``pip install 'uvicorn[standard]' granian``), and zttp for that row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final, cast

import uvloop

KINDS: Final = ("raw", "httptools", "h11", "zttp", "granian")
SERVE_KINDS: Final = (*KINDS, "granian_fd")
DESCRIPTIONS: Final = {
    "raw": "fixed response bytes per request head, no parser, no ASGI (the ceiling)",
    "httptools": "uvicorn.Server, http='httptools', in our uvloop loop, on our socket",
    "h11": "uvicorn.Server, http='h11', in our uvloop loop, on our socket",
    "zttp": "uvicorn.Server, http='zttp' (zttp package, Zig core), in our loop",
    "granian": "granian.server.embed.Server, ASGI, HTTP/1, in our loop, its own socket",
}
REQUIRES: Final = {
    "raw": (),
    "httptools": ("uvicorn", "httptools"),
    "h11": ("uvicorn", "h11"),
    "zttp": ("uvicorn", "zttp"),
    "granian": ("granian",),
}
BACKLOG: Final = 1024
_PR_SET_PDEATHSIG: Final = 1

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# -- serving (one process) ------------------------------------------------------


def make_app(body: bytes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The trivial ASGI app: BODY as JSON for every request, and lifespan handled.

    ``/whoami`` answers instead where the app runs: the pid, the running loop's
    class and whether it is the process's main thread.
    """
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    response = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/whoami":
                loop = asyncio.get_running_loop()
                where = {
                    "pid": os.getpid(),
                    "loop": f"{type(loop).__module__}.{type(loop).__name__}",
                    "main_thread": threading.current_thread() is threading.main_thread(),
                }
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": json.dumps(where).encode()})
                return
            await send(start)
            await send(response)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return app


class RawHTTP(asyncio.Protocol):
    """Answers every complete request head with RESPONSE; bodies are not expected."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        n = buffer.count(b"\r\n\r\n")
        if n and self._transport is not None:
            self._buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4 :]
            self._transport.write(self._response * n)
        else:
            self._buffer = buffer


def listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def load_app(target: str) -> Any:
    """MODULE:ATTR, imported with this script's directory (the baselines) on sys.path."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or "app")


async def serve(kind: str, port: int, target: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    body = json.dumps({"server": kind, "pid": os.getpid()}, separators=(",", ":")).encode()
    app = make_app(body) if target is None else load_app(target)
    stop = asyncio.Event()
    if kind == "raw":
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        response = head % len(body) + body
        server = await loop.create_server(lambda: RawHTTP(response), sock=listener(port))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
    elif kind in ("httptools", "h11", "zttp"):
        import uvicorn

        config = uvicorn.Config(
            app,
            http=kind,
            loop="none",
            ws="none",
            lifespan="on",
            access_log=False,
            log_level="warning",
            backlog=BACKLOG,
        )
        # uvicorn's own SIGTERM/SIGINT handling ends serve().
        await uvicorn.Server(config).serve(sockets=[listener(port)])
    elif kind in ("granian", "granian_fd"):
        # Imported by name: granian is optional (not in the project's extras),
        # so nothing here may need it to type-check.
        embed = importlib.import_module("granian.server.embed")
        server_class: Any = embed.Server if kind == "granian" else _fd_server_class(port)
        granian = server_class(app, address="127.0.0.1", port=port, **_granian_options())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, granian.stop)
        await granian.serve()
    else:
        raise ValueError(kind)


def _granian_options() -> dict[str, Any]:
    constants = importlib.import_module("granian.constants")
    return {
        "interface": constants.Interfaces.ASGI,
        "http": constants.HTTPModes.http1,
        "websockets": False,
        "backlog": BACKLOG,
        "log_enabled": False,
        "log_access": False,
    }


def _fd_server_class(port: int) -> Any:
    """granian's embedded server on a socket we bound (private API: SocketHolder)."""
    embed = importlib.import_module("granian.server.embed")
    holder_class = importlib.import_module("granian._granian").SocketHolder
    sock = listener(port)

    def _init_shared_socket(self: Any) -> None:
        # granian closes the fd it is given when it stops: give it its own.
        holder = holder_class(os.dup(sock.fileno()), False, BACKLOG)
        self._ssp = None
        self._shd = holder
        self._sfd = holder.get_fd()

    return type("FdServer", (embed.Server,), {"_init_shared_socket": _init_shared_socket})


def serve_main(kind: str, port: int, core: int, target: str | None, processes: int) -> int:
    if processes > 1:
        return serve_processes(kind, port, target, processes)
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core % len(cores)]})  # before any thread starts
    uvloop.run(serve(kind, port, target))
    return 0


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def serve_processes(kind: str, port: int, target: str | None, processes: int) -> int:
    """PROCESSES children, child i pinned to core i with its own SO_REUSEPORT socket,
    until SIGTERM or SIGINT (then the children are stopped: SIGTERM, SIGKILL after 5 s)."""
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    if target is not None:
        argv += ["--app", target]
    children = [
        subprocess.Popen(
            [*argv, "--core", str(i)],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # this process has no other threads
        )
        for i in range(processes)
    ]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.1)
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + 5
    for c in children:
        try:
            c.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return 0 if stopping else 1


# -- measuring ------------------------------------------------------------------


def missing(kind: str) -> str | None:
    for mod in REQUIRES[kind]:
        if importlib.util.find_spec(mod) is None:
            return f"Python package {mod!r} missing (pip install {mod})"
    return None


def threads(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("uvicorn", "httptools", "h11", "zttp", "granian", "uvloop"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def measure_main(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import asgi as bench
    from benchmarks import kv

    log = kv.log
    repeat = args.repeat or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    busy_limit = args.busy_limit if args.busy_limit is not None else (100.0 if args.quick else 10.0)
    chosen = [k.strip() for k in args.servers.split(",") if k.strip()]
    for k in chosen:
        if k not in KINDS:
            sys.exit(f"unknown server {k!r}; choose from {', '.join(KINDS)}")
    skipped = {k: why for k in chosen if (why := missing(k))}
    for k, why in skipped.items():
        log(f"SKIPPING {k}: {why}")
    active = [k for k in chosen if k not in skipped]
    cores = sorted(os.sched_getaffinity(0))

    def pin_wrk() -> None:
        os.sched_setaffinity(0, {cores[0]})

    def start(kind: str, port: int, workdir: Path) -> Any:
        argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--core", "-1"]
        setup = bench.Setup(kind, argv, 1, workdir, port)
        setup.start(timeout=30.0)
        return setup

    def reuseport(first: str, workdir: Path) -> dict[str, Any]:
        """FIRST and raw on one port: which servers do fresh connections reach?"""
        port = kv.free_port()
        seen: dict[str, set[int]] = {}
        where: dict[str, Any] = {}
        a = b = None
        try:
            a = start(first, port, workdir)
            b = start("raw", port, workdir)
            deadline = time.monotonic() + 10
            n = 0
            while (len(seen) < 2 or n < 64) and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    got = bench.http_get(port, "/")
                    seen.setdefault(got["server"], set()).add(got["pid"])
                    n += 1
            # where the app runs, in the first server (raw has no app)
            for _ in range(64):
                with contextlib.suppress(OSError, KeyError):
                    got = bench.http_get(port, "/whoami")
                    if got["pid"] in seen.get(first, ()):
                        where = {"loop": got["loop"], "main_thread": got["main_thread"]}
                        break
        except (RuntimeError, OSError) as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            for s in (b, a):
                if s is not None:
                    s.stop()
        return {"ok": len(seen) == 2, "answered_by": sorted(seen), f"{first}_app_runs_on": where}

    rows: dict[str, list[Any]] = {k: [] for k in active}
    thread_counts: dict[str, list[int | None]] = {k: [] for k in active}
    failures: list[str] = []
    embedding: dict[str, Any] = {}
    reruns = disturbed_kept = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-asgi-servers-") as tmp:
        workdir = Path(tmp)
        if "granian" in active:
            embedding["reuseport_granian_raw"] = reuseport("granian", workdir)
            embedding["reuseport_granian_fd_raw"] = reuseport("granian_fd", workdir)
            log(f"embedding: {json.dumps(embedding)}")
        for r in range(repeat):
            order = active[r % len(active) :] + active[: r % len(active)] if active else []
            for kind in order:
                port = kv.free_port()
                try:
                    setup = start(kind, port, workdir)
                except (RuntimeError, OSError) as exc:
                    failures.append(f"run {r + 1} {kind}: {exc}")
                    log(f"run {r + 1}/{repeat} {kind}: failed to start: {exc}")
                    continue
                try:
                    bench.run_wrk(f"http://127.0.0.1:{port}/", min(1.0, seconds), 32, None)
                    attempts = []
                    for attempt in range(3):
                        s = bench.measure(
                            setup, None, seconds, args.connections, path="/", preexec_fn=pin_wrk
                        )
                        attempts.append(s)
                        last = s.busy_elsewhere <= busy_limit or attempt == 2 or s.error
                        log(
                            f"run {r + 1}/{repeat} {kind:10s} {bench._fmt_rps(s.rps):>8s} rps  "
                            f"p50 {bench._fmt(s.p50_ms, '.2f')} p99 {bench._fmt(s.p99_ms, '.2f')}"
                            f" ms  server {s.busiest_pct[0] if s.busiest_pct else 0:.0f}%  wrk "
                            f"{s.wrk_cpu_pct:.0f}%  busy elsewhere {s.busy_elsewhere:4.1f}%"
                            + ("" if last else "  (disturbed: run again)")
                        )
                        if last:
                            break
                        reruns += 1
                    kept = min(attempts, key=lambda x: x.busy_elsewhere)
                    disturbed_kept += kept.busy_elsewhere > busy_limit
                    rows[kind].append(kept)
                    thread_counts[kind].append(threads(setup.procs[0].pid))
                    if kept.error:
                        failures.append(f"run {r + 1} {kind}: {kept.error}")
                finally:
                    if left := setup.stop():
                        failures.append(f"run {r + 1} {kind}: left processes behind: {left}")

    def med(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return round(statistics.median(got), 3) if got else None

    results: dict[str, Any] = {}
    for kind, ss in rows.items():
        results[kind] = {
            "rps": med([s.rps for s in ss]),
            "p50_ms": med([s.p50_ms for s in ss]),
            "p99_ms": med([s.p99_ms for s in ss]),
            "cpu_s_per_100k": med([s.cpu_s_per_100k for s in ss]),
            "server_cpu_pct": med([s.busiest_pct[0] if s.busiest_pct else None for s in ss]),
            "wrk_cpu_pct": med([s.wrk_cpu_pct for s in ss]),
            "threads": thread_counts[kind][-1] if thread_counts[kind] else None,
            "rps_runs": [s.rps for s in ss],
            "p99_ms_runs": [s.p99_ms for s in ss],
            "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
        }
    ref = results.get("httptools", {}).get("rps")
    ratios = {
        f"{k}/httptools": round(v["rps"] / ref, 3) if ref and v["rps"] else None
        for k, v in results.items()
        if k != "httptools"
    }
    meta = {
        "seconds": seconds,
        "connections": args.connections,
        "repeat": repeat,
        "cores": cores,
        "server_core": cores[-1],
        "wrk_core": cores[0],
        "load_generator": bench.wrk_version(),
        "versions": versions(),
        "wall_s": round(time.monotonic() - t0, 1),
        "busy_limit_pct": busy_limit,
        "runs_discarded_as_disturbed": reruns,
        "disturbed_runs_kept": disturbed_kept,
        "skipped": skipped,
        "failures": failures,
    }
    if args.json:
        print(json.dumps({**results, "ratios": ratios, "embedding": embedding, "meta": meta}))
        return 1 if failures else 0
    print(
        f"\none process pinned to core {cores[-1]}, wrk -t 1 -c {args.connections} -d "
        f"{seconds:g}s pinned to core {cores[0]}; median of {repeat} interleaved runs; "
        f"{meta['wall_s']:.0f} s; {reruns} runs rerun as disturbed, {disturbed_kept} kept"
    )
    print(f"{json.dumps(meta['versions'])}\n")
    print(
        f"{'server':10s} {'rps':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu/100k':>8s} "
        f"{'server%':>7s} {'wrk%':>5s} {'threads':>7s} {'x httptools':>11s}"
    )
    for kind in chosen:
        if kind in skipped:
            print(f"{kind:10s} skipped: {skipped[kind]}")
            continue
        res = results[kind]
        ratio = 1.0 if kind == "httptools" else ratios.get(f"{kind}/httptools")
        print(
            f"{kind:10s} {bench._fmt_rps(res['rps']):>8s} {bench._fmt(res['p50_ms'], '.2f'):>7s} "
            f"{bench._fmt(res['p99_ms'], '.2f'):>7s} "
            f"{bench._fmt(res['cpu_s_per_100k'], '.2f'):>8s} "
            f"{bench._fmt(res['server_cpu_pct'], '.0f'):>7s} "
            f"{bench._fmt(res['wrk_cpu_pct'], '.0f'):>5s} {res['threads'] or '-'!s:>7s} "
            f"{bench._fmt(ratio, '.2f'):>11s}"
        )
    print()
    for kind in chosen:
        print(f"  {kind:10s} {DESCRIPTIONS[kind]}")
    for name, got in embedding.items():
        print(f"\n{name}: {json.dumps(got)}")
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {f}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=SERVE_KINDS, help="serve one KIND (no measuring)")
    parser.add_argument("--port", type=int, default=8000, help="with --serve (default 8000)")
    parser.add_argument("--core", type=int, default=-1, help="with --serve: core index to pin")
    parser.add_argument(
        "--app", default=None, help="with --serve: MODULE:ATTR instead of the trivial app"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="with --serve: N processes, process i pinned to core i, each its own socket",
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per server (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="wrk -d (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--servers", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--quick", action="store_true", help="1 run of 1 s per server")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--busy-limit", type=float, default=None, help="rerun above this %%")
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main(args.serve, args.port, args.core, args.app, args.processes)
    return measure_main(args)


if __name__ == "__main__":
    sys.exit(main())
