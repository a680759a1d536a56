"""Bulk file transfer over CTP: replicated TFTP, native CTP, tftpy and the kernel's TCP.

    python benchmarks/ctp.py [--repeat R] [--quick] [--json] [--json-file F]
                             [--servers tftp_1,tftp_2,tftp_2/512,tftpy,ctp_1,ctp_2,kernel]
                             [--mb MB] [--lossy-mb MB] [--loss P] [--dup P]
                             [--paths loopback,lossy] [--timeout S]

What is measured: one file of ``--mb`` MB (default 20; 10**6 bytes to the MB)
of random bytes (``os.urandom``), moved once per server, path and round.  Its
SHA-256 is checked after every transfer: a mismatch, a short file, a timeout
or a server that did not start is a failed run, reported, never a number.

Paths:

``loopback``
    everything on 127.0.0.1.
``lossy``
    ``tests/integration/lossy.py``'s ``lossy_link(loss, dup)``: a namespace
    behind a veth pair (MTU 1500) whose nftables rules drop ``--loss``
    (default 0.02) and duplicate ``--dup`` (0.01) of the IPv4 packets in each
    direction.  The server runs in the root namespace on ``link.server_addr``,
    the client (or CTP's sender) inside the namespace on ``link.client_addr``.
    The file is ``--lossy-mb`` MB there (default 2; ``--quick`` 0.2), not
    ``--mb``: lockstep TFTP waits one retransmission timeout (1 s: the
    dominoes TFTP's ``rto``, atftp's ``--tftp-timeout 1``, tftpy's
    ``listen(timeout=1)``) per lost DATA or ACK, about ``2 * loss * blocks``
    seconds: ~560 s per transfer for 20 MB at 1428-byte blocks and 2 % loss
    (~1500 s at 512), hours for a whole run.  ``--lossy-mb 20`` asks for it.
    Needs root (and ``nft``): without it the path is skipped with the reason
    printed.

Servers (a fresh start for every transfer):

``tftp_1`` / ``tftp_2``
    ``dominoes run dominoes.components.ctp:tftp --root DIR --replicas 1|2``:
    TFTP as a CTP profile, replicated.  Client: ``atftp`` (C, through
    ``tests/integration/tftp_clients.py``'s ``download``) with ``--option
    "blksize 1428"``, a download of the file.
``tftp_2/512``
    the same server as ``tftp_2``, atftp without options: 512-byte blocks.
``tftpy``
    tftpy's own server (``tftpy.TftpServer(root).listen(host, port,
    timeout=1)``, this script with ``--serve-tftpy``), the same atftp client
    and block size: the peer.
``ctp_1`` / ``ctp_2``
    native CTP ``reliable-ordered`` (segments of 1400 bytes, window 64: the
    profile's defaults) between two dominoes services of ``--replicas 1|2``
    each: ``dominoes run examples.ctp_files:reliable_ordered --root IN``
    (the receiver, started first) and the same with ``--root OUT --send FILE
    --to HOST:PORT`` (the sender).  The time runs from the sender's ready
    line ("serving on", polled every 5 ms in its output) until ``IN/<name>``
    exists with the full size (the receiver renames its part file when the
    last byte is in).  The sender submits the file in its ``on_start``, which
    runs before its replicas report ready, so the transfer can begin before
    that line: the clock then starts when the receiver's part file appears
    (its first body segment; ``clock_started_by`` in the JSON says which).
    The time from the sender's spawn is in the JSON too
    (``wall_from_spawn_s``: it includes the service's start-up).
``kernel``
    Linux's TCP: this script as a server (``--serve-kernel``: accept, then
    ``socket.sendfile`` of the file, close) and a Python client that reads to
    EOF, timed from its connect to EOF, checksummed after the clock stops.

MB/s: the file's size over the client's wall time.  For TFTP that is the
atftp process, from its start to its exit, as ``download`` runs it (for the
lossy path inside ``ip netns exec``); for ``kernel`` the client's connect to
EOF; for ``ctp_*`` as above.

Server CPU: utime+stime (+cutime+cstime) of every process of the server (the
process started and its descendants: for the dominoes services the supervisor
*and* the replicas) from ``/proc/<pid>/stat`` just before and after the
transfer, in CPU-seconds per MB.  For ``ctp_*`` it is the sum of *both*
services' trees, receiver and sender (there is no separate client), from the
sender's ready line on: the sender's start-up is not counted.  The clients'
CPU (atftp, the kernel client) is not counted; the kernel's softirq work is
charged to no process.

Disturbance: the CPU other processes (and the hypervisor: steal) used during
each transfer, from ``/proc/stat`` minus the servers, this script and its
reaped children (the clients), in % of all cores (``busy_elsewhere_pct``): it
is reported, transfers are not rerun.

Repetitions are interleaved: round r runs the loopback path and then the
lossy one (a fresh link per round), each over every server in an order
rotated by r; the table gives medians over ``--repeat`` (default 3) rounds.
For the dominoes servers the transport's counters (``dominoes stats --json``
-> ``replicas[0].report.reports.ctp``: retransmissions, timeouts, duplicates
dropped) are read after each transfer, and for the lossy path the link's
counters (packets dropped and duplicated).

Progress goes to stderr, a table to stdout; ``--json`` prints one JSON object
instead: ``{"loopback": {server: {...}}, "lossy": {...}, "ratios": {path:
{...}}, "meta": {...}}``.  Ratios (of the MB/s medians, and ``/cpu`` of the
CPU-s/MB medians): tftp_2/tftp_1, tftp_2/tftpy, tftp_1/tftpy, ctp_2/ctp_1,
ctp_2/kernel, tftp_2/kernel; reported, never judged.  Exit status 1 when a
transfer failed or a process or namespace was left behind, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kv import (  # noqa: E402
    Server as _KvServer,
)
from benchmarks.kv import (  # noqa: E402
    _machine_busy,
    _median,
    _own_cpu,
    _round,
    free_port,
    git_head,
    log,
)
from benchmarks.netstack import _die_with_parent  # noqa: E402
from tests.integration import tftp_clients  # noqa: E402

SERVERS: Final = ("tftp_1", "tftp_2", "tftp_2/512", "tftpy", "ctp_1", "ctp_2", "kernel")
DESCRIPTIONS: Final = {
    "tftp_1": "dominoes TFTP (ctp:tftp), 1 replica; atftp, blksize 1428",
    "tftp_2": "dominoes TFTP (ctp:tftp), 2 replicas; atftp, blksize 1428",
    "tftp_2/512": "dominoes TFTP (ctp:tftp), 2 replicas; atftp, no options (512-byte blocks)",
    "tftpy": "tftpy's TftpServer; atftp, blksize 1428 (the peer)",
    "ctp_1": "CTP reliable-ordered, 1 replica per service (examples/ctp_files.py)",
    "ctp_2": "CTP reliable-ordered, 2 replicas per service (examples/ctp_files.py)",
    "kernel": "Linux TCP, Python sendfile server and recv client (reference)",
}
PATHS: Final = ("loopback", "lossy")
RATIOS: Final = (
    ("tftp_2", "tftp_1"),
    ("tftp_2", "tftpy"),
    ("tftp_1", "tftpy"),
    ("ctp_2", "ctp_1"),
    ("ctp_2", "kernel"),
    ("tftp_2", "kernel"),
)
BLKSIZE: Final = 1428
TFTP_SERVICE: Final = "dominoes.components.ctp:tftp"
CTP_SERVICE: Final = "examples.ctp_files:reliable_ordered"
READY: Final = "serving on"
MB: Final = 1_000_000
PAYLOAD: Final = "payload.bin"
PROBE: Final = "probe.bin"

#: The kernel path's client.  argv: host port timeout.  Prints "ready", waits for a
#: line on stdin, reads the server's stream to EOF, then prints one JSON line.
CLIENT: Final = textwrap.dedent(
    """
    import hashlib, json, socket, sys, time
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    chunks = []
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    wall = time.monotonic() - t0
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    print(json.dumps({"wall": wall, "bytes": sum(map(len, chunks)), "sha256": h.hexdigest()}))
    """
)


# -- the servers this script runs itself ----------------------------------------------


def serve_tftpy(root: str, host: str, port: int) -> None:
    import tftpy

    server = tftpy.TftpServer(root)

    def announce() -> None:
        server.is_running.wait()
        print(f"ready: tftpy on {host}:{port}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    server.listen(host, port, timeout=1)


def serve_kernel(path: str, host: str, port: int) -> None:
    """One connection at a time: the whole file with sendfile, then close."""
    server = socket.create_server((host, port), backlog=8)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"ready: kernel TCP on {host}:{port}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn, open(path, "rb") as f, contextlib.suppress(OSError):
            conn.sendfile(f)


# -- processes ------------------------------------------------------------------------


@dataclass
class Proc(_KvServer):
    """A server process: kv's Server (tree CPU, stop and leftover check), started
    until a line of its output says it is ready."""

    ready: str = READY
    preexec: Callable[[], None] | None = None
    logfile: Path | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.logfile = self.workdir / f"{self.name}.log"
        self._logf = open(self.logfile, "ab")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self.preexec,
        )

    def is_ready(self) -> bool:
        assert self.logfile is not None
        try:
            return self.ready in self.logfile.read_text(errors="replace")
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout:g} s: {self.tail()}")
            time.sleep(0.01)
        self.cpu()

    def tail(self, n: int = 1500) -> str:
        if self.logfile is None:
            return ""
        try:
            return self.logfile.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


def dominoes_argv(service: str, replicas: int, host: str, port: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dominoes", "run", service, "--replicas", str(replicas),
            "--host", host, "--port", str(port), "--run-dir", str(run_dir)]  # fmt: skip


def ctp_stats(run_dir: Path) -> dict[str, Any] | None:
    """Replica 0's ``ctp`` report (the transport's counters) of the service in RUN_DIR."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dominoes", "stats", "--run-dir", str(run_dir), "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        replicas = json.loads(done.stdout)["replicas"]
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None
    for rep in replicas:
        got = (rep.get("report") or {}).get("reports", {}).get("ctp")
        if isinstance(got, dict):
            return got
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- one transfer ---------------------------------------------------------------------


@dataclass
class Sample:
    mb_s: float | None = None
    cpu_s_per_mb: float | None = None
    wall_s: float | None = None
    busy_elsewhere: float = 0.0
    error: str | None = None
    #: counters: the services' ctp reports, the link's drops and duplicates, ...
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Route:
    """Where a transfer runs: the server's address, the client's namespace."""

    name: str
    server_addr: str
    client_addr: str
    ns: str | None
    counters: Callable[[], dict[str, int]] | None = None

    def wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] if self.ns else []


@dataclass
class Payload:
    path: Path
    size: int
    sha256: str


class Bench:
    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.seq = 0
        self.leftovers: dict[str, list[int]] = {}

    def _dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))

    def _label(self, name: str) -> str:
        self.seq += 1
        return f"{name.replace('/', '_')}-{self.seq}"

    def _stop(self, name: str, server: Proc) -> None:
        left = server.stop()
        if left:
            self.leftovers.setdefault(name, []).extend(left)
            log(f"  warning: {name} left processes behind (killed): {left}")

    def run(self, name: str, path: Route, payload: Payload) -> Sample:
        counters0 = path.counters() if path.counters else None
        if name.startswith("ctp_"):
            sample = self.ctp(name, path, payload)
        else:
            sample = self.client_server(name, path, payload)
        if counters0 is not None and path.counters is not None:
            counters1 = path.counters()
            sample.extra["link"] = {k: counters1.get(k, 0) - v for k, v in counters0.items()}
        return sample

    def client_server(self, name: str, path: Route, payload: Payload) -> Sample:
        """TFTP (atftp against one of the TFTP servers) or kernel TCP."""
        port, host = free_port(), path.server_addr
        label = self._label(name)
        run_dir = self._dir(f"{label}-run-")
        preexec = None
        if name.startswith("tftp_"):
            replicas = int(name.split("/")[0].split("_")[1])
            argv = dominoes_argv(TFTP_SERVICE, replicas, host, port, run_dir)
            argv += ["--root", str(payload.path.parent)]
            ready = READY
        else:
            mode = "--serve-tftpy" if name == "tftpy" else "--serve-kernel"
            what = payload.path.parent if name == "tftpy" else payload.path
            argv = [sys.executable, str(Path(__file__).resolve()), mode, str(what),
                    "--host", host, "--port", str(port)]  # fmt: skip
            ready, preexec = "ready:", _die_with_parent
        server = Proc(label, argv, self.workdir, ready=ready, preexec=preexec)
        local = self._dir(f"{label}-dl-") / payload.path.name
        try:
            sample = self._transfer(name, server, path, port, payload, local)
            if name.startswith("tftp_"):  # the server's counters, after a failure too
                sample.extra["ctp"] = ctp_stats(run_dir)
            return sample
        finally:
            self._stop(name, server)
            shutil.rmtree(local.parent, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)

    def _transfer(
        self, name: str, server: Proc, path: Route, port: int, payload: Payload, local: Path
    ) -> Sample:
        host = path.server_addr
        try:
            server.start()
            server.wait_ready()
            blksize = None if name.endswith("/512") else BLKSIZE
            if name != "kernel":
                # a small download first: the server answers, and a warm-up
                probe = local.with_name(PROBE)
                tftp_clients.download("atftp", host, port, PROBE, probe, blksize=blksize,
                                      timeout=30, netns=path.ns)  # fmt: skip
                probe.unlink()
            busy0, own0, cpu0 = _machine_busy(), _own_cpu(), server.cpu()
            t0 = time.monotonic()
            if name == "kernel":
                wall, got = self._kernel_client(path, port)
            else:
                tftp_clients.download("atftp", host, port, payload.path.name, local,
                                      blksize=blksize, timeout=self.timeout,
                                      netns=path.ns)  # fmt: skip
                wall = time.monotonic() - t0
                got = sha256_file(local) if local.exists() else "missing"
            window = time.monotonic() - t0
            cpu1, own1, busy1 = server.cpu(), _own_cpu(), _machine_busy()
        except (RuntimeError, OSError, subprocess.SubprocessError, tftp_clients.ClientError) as e:
            return Sample(error=str(e)[:600])
        if got != payload.sha256:  # a failed run, never a number
            return Sample(error=f"sha256 mismatch ({got[:16]}... != {payload.sha256[:16]})")
        return Sample(
            payload.size / MB / wall,
            (cpu1 - cpu0) / (payload.size / MB),
            wall,
            _busy(busy1 - busy0, own1 - own0, cpu1 - cpu0, window),
        )

    def _kernel_client(self, path: Route, port: int) -> tuple[float, str]:
        argv = [*path.wrap(), sys.executable, "-c", CLIENT, path.server_addr, str(port),
                str(self.timeout)]  # fmt: skip
        client = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert client.stdin is not None
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError(f"kernel client did not start: {client.communicate()[1][-300:]}")
            client.stdin.write("go\n")
            client.stdin.flush()
            out, err = client.communicate(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"kernel client timed out after {self.timeout + 30:g} s") from None
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        lines = out.strip().splitlines()
        if client.returncode != 0 or not lines:
            raise RuntimeError(f"kernel client exit {client.returncode}: {err.strip()[-300:]}")
        res = json.loads(lines[-1])
        return float(res["wall"]), str(res["sha256"])

    def ctp(self, name: str, path: Route, payload: Payload) -> Sample:
        """Native CTP between two services: the receiver, then the sender."""
        replicas = int(name.split("_")[1])
        label = self._label(name)
        into, out = self._dir(f"{label}-in-"), self._dir(f"{label}-out-")
        run_in, run_out = self._dir(f"{label}-runin-"), self._dir(f"{label}-runout-")
        rport = sport = free_port()
        while sport == rport:
            sport = free_port()
        argv = dominoes_argv(CTP_SERVICE, replicas, path.server_addr, rport, run_in)
        receiver = Proc(f"{label}-receiver", [*argv, "--root", str(into)], self.workdir)
        argv = dominoes_argv(CTP_SERVICE, replicas, path.client_addr, sport, run_out)
        argv += ["--root", str(out), "--send", str(payload.path)]
        argv += ["--to", f"{path.server_addr}:{rport}"]
        sender = Proc(f"{label}-sender", [*path.wrap(), *argv], self.workdir)
        target = into / payload.path.name
        try:
            receiver.start()
            receiver.wait_ready()
            t_spawn = time.monotonic()
            sender.start()
            # the clock starts at the sender's ready line, or at the receiver's first
            # body segment (its part file appears) when that comes first
            t_ready: float | None = None
            t_start: float | None = None
            started_by = ""
            busy0 = own0 = cpu0 = 0.0
            deadline = t_spawn + self.timeout + 60
            while True:
                if t_ready is None and sender.is_ready():
                    t_ready = time.monotonic()
                if t_start is None and (t_ready is not None or any(into.iterdir())):
                    t_start = time.monotonic()
                    started_by = "ready line" if t_ready is not None else "first segment"
                    busy0, own0 = _machine_busy(), _own_cpu()
                    cpu0 = receiver.cpu() + sender.cpu()
                with contextlib.suppress(OSError):
                    if target.stat().st_size == payload.size:
                        break
                for role, proc in (("sender", sender), ("receiver", receiver)):
                    if proc.proc is not None and proc.proc.poll() is not None:
                        raise RuntimeError(
                            f"the {role} exited {proc.proc.returncode} "
                            f"({'after' if t_ready else 'before'} the sender's ready line): "
                            f"{proc.tail()}"
                        )
                if time.monotonic() > deadline:
                    size = target.stat().st_size if target.exists() else None
                    parts = sorted(p.name for p in into.iterdir())
                    raise RuntimeError(
                        f"no complete {target.name} after {self.timeout + 60:g} s "
                        f"(ready line {'seen' if t_ready else 'not seen'}; {target.name}: "
                        f"{size} bytes; in {into.name}: {parts})"
                    )
                time.sleep(0.005)
            t_done = time.monotonic()
            cpu1 = receiver.cpu() + sender.cpu()
            own1, busy1 = _own_cpu(), _machine_busy()
            if t_start is None:
                raise RuntimeError("the file was complete before the clock started")
            wall = t_done - t_start
            got = sha256_file(target)
            if got != payload.sha256:
                return Sample(error=f"sha256 mismatch ({got[:16]}... != {payload.sha256[:16]})")
            sample = Sample(
                payload.size / MB / wall,
                (cpu1 - cpu0) / (payload.size / MB),
                wall,
                _busy(busy1 - busy0, own1 - own0, cpu1 - cpu0, wall),
            )
            sample.extra["wall_from_spawn_s"] = round(t_done - t_spawn, 3)
            sample.extra["clock_started_by"] = started_by
            if t_ready is not None:
                sample.extra["ready_after_spawn_s"] = round(t_ready - t_spawn, 3)
            sample.extra["ctp_sender"] = ctp_stats(run_out)
            sample.extra["ctp_receiver"] = ctp_stats(run_in)
            return sample
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            return Sample(error=str(exc)[:600])
        finally:
            self._stop(f"{name} sender", sender)
            self._stop(f"{name} receiver", receiver)
            for d in (into, out, run_in, run_out):
                shutil.rmtree(d, ignore_errors=True)


def _busy(machine: float, own: float, servers: float, window: float) -> float:
    """% of all cores other processes used: the machine's busy time minus ours."""
    foreign = machine - own - servers
    return max(0.0, 100.0 * foreign / (max(window, 1e-6) * (os.cpu_count() or 1)))


@contextlib.contextmanager
def make_path(name: str, loss: float, dup: float) -> Iterator[Route]:
    if name == "loopback":
        yield Route("loopback", "127.0.0.1", "127.0.0.1", None)
        return
    from tests.integration.lossy import lossy_link

    with lossy_link(loss, dup) as link:
        yield Route("lossy", link.server_addr, link.client_addr, link.ns, link.counters)


def make_payload(directory: Path, size: int) -> Payload:
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = directory / PAYLOAD
    path.write_bytes(data)
    (directory / PROBE).write_bytes(os.urandom(64 * 1024))
    return Payload(path, size, hashlib.sha256(data).hexdigest())


# -- reporting ------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    """V formatted, or a dash as wide as SPEC asks."""
    if v is not None:
        return format(v, spec)
    width = spec.split(".")[0]
    return f"{'-':>{width}s}" if width.isdigit() else "-"


def _short(error: str, n: int = 400) -> str:
    """An error on one line: its first line, and its last lines up to N characters."""
    lines = [x.strip() for x in error.splitlines() if x.strip()]
    if len(lines) <= 1:
        return error[:n]
    return (lines[0][: n // 2] + " ... " + " | ".join(lines[-4:]))[:n]


def retrans(sample: Sample) -> int | None:
    """Retransmissions by the sending side (the TFTP server; CTP's sender)."""
    rep = sample.extra.get("ctp") or sample.extra.get("ctp_sender")
    if isinstance(rep, dict) and isinstance(rep.get("retransmitted"), int):
        return int(rep["retransmitted"])
    return None


def why_no_lossy() -> str | None:
    from tests.integration.lossy import why_not

    return why_not()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, small files")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--json-file", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    parser.add_argument("--paths", default=",".join(PATHS), help="loopback,lossy")
    parser.add_argument("--mb", type=float, default=None, help="file size in MB (20; quick 1)")
    parser.add_argument(
        "--lossy-mb", type=float, default=None, help="file size on the lossy path (2; quick 0.2)"
    )
    parser.add_argument("--loss", type=float, default=0.02, help="lossy: drop fraction (0.02)")
    parser.add_argument("--dup", type=float, default=0.01, help="lossy: duplicate fraction (0.01)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per transfer, seconds")
    parser.add_argument("--serve-tftpy", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-kernel", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tftpy is not None:
        serve_tftpy(args.serve_tftpy, args.host, args.port)
        return 0
    if args.serve_kernel is not None:
        serve_kernel(args.serve_kernel, args.host, args.port)
        return 0

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            parser.error(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in paths:
        if p not in PATHS:
            parser.error(f"unknown path {p!r}; choose from {', '.join(PATHS)}")
    needs_atftp = any(not s.startswith(("ctp_", "kernel")) for s in servers)
    if needs_atftp and shutil.which("atftp") is None:
        log("cannot run: no atftp (apt-get install atftp)")
        return 2
    skipped: dict[str, str] = {}
    if "lossy" in paths:
        why = why_no_lossy()
        if why is not None:
            log(f"SKIPPING the lossy path: {why}")
            skipped["lossy"] = why
            paths.remove("lossy")
    repeat = args.repeat or (1 if args.quick else 3)
    mb = args.mb or (1.0 if args.quick else 20.0)
    lossy_mb = args.lossy_mb or (0.2 if args.quick else 2.0)
    sizes = {"loopback": int(mb * MB), "lossy": int(lossy_mb * MB)}
    # SIGTERM unwinds like Ctrl-C, through every finally (servers, namespaces).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    head, load_before = git_head(), os.getloadavg()
    samples: dict[str, dict[str, list[Sample]]] = {p: {s: [] for s in servers} for p in paths}
    failures: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-ctp-bench-") as tmp:
        bench = Bench(Path(tmp), args.timeout)
        payloads: dict[str, Payload] = {}
        for p in paths:
            same = [q for q in payloads if sizes[q] == sizes[p]]
            payloads[p] = payloads[same[0]] if same else make_payload(Path(tmp) / p, sizes[p])
        for r in range(repeat):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for p in paths:
                try:
                    with make_path(p, args.loss, args.dup) as where:
                        for name in order:
                            got = bench.run(name, where, payloads[p])
                            samples[p][name].append(got)
                            link = got.extra.get("link") or {}
                            log(
                                f"round {r + 1}/{repeat} {p:8s} {name:10s} "
                                f"{_fmt(got.mb_s, '8.2f')} MB/s "
                                f"{_fmt(got.cpu_s_per_mb, '7.3f')} cpu-s/MB "
                                f"{_fmt(got.wall_s, '7.2f')} s  retrans {retrans(got)}"
                                + (
                                    f"  link dropped {link.get('dropped')} "
                                    f"dup {link.get('duplicated')}"
                                    if link
                                    else ""
                                )
                                + f"  busy elsewhere {got.busy_elsewhere:4.1f}%"
                                + (f"  FAILED: {_short(got.error)}" if got.error else "")
                            )
                            if got.error is not None:
                                failures.append(f"round {r + 1} {p} {name}: {got.error}")
                except (RuntimeError, OSError) as exc:
                    failures.append(f"round {r + 1} {p}: {exc}")
                    log(f"round {r + 1}/{repeat} {p}: FAILED: {exc}")
    wall = time.monotonic() - t0
    ns_left: list[str] = []
    if os.geteuid() == 0 and shutil.which("ip"):
        from tests.integration.lossy import leftovers

        ns_left = leftovers()

    results: dict[str, dict[str, Any]] = {}
    for p, per in samples.items():
        results[p] = {}
        for name, ss in per.items():
            results[p][name] = {
                "mb_s": _round(_median([s.mb_s for s in ss]), 3),
                "cpu_s_per_mb": _round(_median([s.cpu_s_per_mb for s in ss]), 4),
                "wall_s": _round(_median([s.wall_s for s in ss]), 3),
                "mb_s_runs": [_round(s.mb_s, 3) for s in ss],
                "cpu_s_per_mb_runs": [_round(s.cpu_s_per_mb, 4) for s in ss],
                "retransmitted_runs": [retrans(s) for s in ss],
                "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
                "failed_runs": sum(s.error is not None for s in ss),
                "extra_runs": [s.extra for s in ss],
            }
    ratios: dict[str, dict[str, float | None]] = {}
    for p in results:
        ratios[p] = {}
        for num, den in RATIOS:
            for metric, suffix in (("mb_s", ""), ("cpu_s_per_mb", "/cpu")):
                a = results[p].get(num, {}).get(metric)
                b = results[p].get(den, {}).get(metric)
                ok = a is not None and b
                ratios[p][f"{num}/{den}{suffix}"] = round(a / b, 3) if ok else None
    meta = {
        "bytes": {p: sizes[p] for p in paths},
        "blksize": BLKSIZE,
        "loss": args.loss,
        "dup": args.dup,
        "repeat": repeat,
        "cores": sorted(os.sched_getaffinity(0)),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": head,
        "git_head_after": git_head(),
        "wall_s": round(wall, 1),
        "cpu_counted": "utime+stime(+cutime+cstime) of the server's process tree (supervisor "
        "and replicas); ctp_*: the receiver's and the sender's trees together, from the "
        "sender's ready line",
        "skipped": skipped,
        "failures": failures,
        "leftover_processes": bench.leftovers,
        "leftover_namespaces": ns_left,
    }
    document = json.dumps({**results, "ratios": ratios, "meta": meta})
    if args.json_file is not None:
        args.json_file.write_text(document + "\n")
    status = 1 if failures or bench.leftovers or ns_left else 0
    if args.json:
        print(document)
        return status

    print(
        f"\nfile transfer, median of {repeat} interleaved rounds; {wall:.0f} s; git {head}; "
        f"{len(meta['cores'])} cores shared by servers and clients (load average "
        f"{load_before[0]:.2f} before, {meta['loadavg_after'][0]:.2f} after)"
    )
    if meta["git_head_after"] != head:
        print(f"WARNING: git HEAD moved during the run: {head} -> {meta['git_head_after']}")
    for p in paths:
        extra = f", loss {args.loss:g} dup {args.dup:g} each way" if p == "lossy" else ""
        print(f"\n{p}: {sizes[p] / MB:g} MB{extra}")
        print(f"{'server':12s}{'MB/s':>9s}{'cpu-s/MB':>10s}{'wall s':>9s}{'retrans':>9s}"
              f"{'busy%':>7s}  failed")  # fmt: skip
        for name in servers:
            res = results[p][name]
            rt = _median([float(x) for x in res["retransmitted_runs"] if x is not None])
            busy = _median(res["busy_elsewhere_pct_runs"])
            print(
                f"{name:12s}{_fmt(res['mb_s'], '9.2f')}{_fmt(res['cpu_s_per_mb'], '10.3f')}"
                f"{_fmt(res['wall_s'], '9.2f')}{_fmt(rt, '9.0f')}{_fmt(busy, '7.1f')}"
                f"  {res['failed_runs']}/{len(res['mb_s_runs'])}"
            )
        print("ratios (MB/s; CPU-s/MB)")
        for num, den in RATIOS:
            if num in servers and den in servers:
                a, b = ratios[p][f"{num}/{den}"], ratios[p][f"{num}/{den}/cpu"]
                print(f"  {f'{num}/{den}':20s}{_fmt(a, '8.3f')}; {_fmt(b, '.3f')}")
    print()
    for name in servers:
        print(f"  {name:10s} {DESCRIPTIONS[name]}")
    print(
        "  cpu-s/MB: the server's whole process tree (supervisor and replicas); ctp_*: both "
        "services, receiver and sender.  retrans: the sending side's ctp counter (median)."
    )
    for p, why in skipped.items():
        print(f"\n{p} path skipped: {why}")
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {_short(f)}")
    if bench.leftovers:
        print(f"\nleftover processes (killed): {bench.leftovers}")
    if ns_left:
        print(f"\nleftover namespaces: {ns_left}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally blocks have stopped the servers
        log("interrupted; servers stopped, namespaces deleted")
        sys.exit(130)
