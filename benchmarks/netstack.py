"""Bulk TCP echo through the replicated netstack, a single-process stack, and the kernel.

    python benchmarks/netstack.py [--repeat R] [--quick] [--json] [--json-file F]
                                  [--servers stack_1,stack_2,plain,kernel]
                                  [--mb-1 MB] [--mb-8 MB] [--busy-limit PCT]

Run as root (network namespaces, TUN devices).  Every server is an echo service
at 192.0.2.2 port 7 and the client is the same Python script, run with
``ip netns exec`` in the kernel's namespace: per connection it sends N bytes
from a seeded ``random.Random`` (one writer thread, then ``shutdown(SHUT_WR)``)
while a reader thread reads the echo until EOF; the SHA-256 of what was sent and
of what came back must match, byte counts included, or the run is a failure
(reported, never a number).  Two tests per server start: 1 connection of
``--mb-1`` MB (default 20) and 8 concurrent connections of ``--mb-8`` MB each
(default 4).  MB/s is the bytes *sent* (10**6 bytes to the MB) over the
client's wall time from its first connect to the last EOF.

Servers:

``stack_1`` / ``stack_2``
    ``dominoes run examples.tcp_echo:service --replicas 1|2 --port 7 --tun dn0
    --addr 192.0.2.2/24`` in a namespace with a multi-queue TUN device ``dn0``
    (the kernel's side 192.0.2.1/24).  Segments go through the log; every
    replica runs the TCP engine; the entry's owner transmits.
``plain``
    the same TCP engine (``_tcp.Tcb``) and codecs (``_wire``), replication off:
    one uvloop process (this script, ``--serve-plain``) pinned to the first
    allowed core, as replica 0 is, that reads its queue of the same kind of TUN
    device in batches of 16 packets (the ingress's ``BATCH``), checks and parses
    each packet once, runs the engine on a dict of connections, arms timers with
    ``loop.call_at``, echoes as ``examples/tcp_echo.py`` does (delivered data:
    ``consumed`` then ``send``; the peer's FIN: ``close``), builds the packets
    with ``_wire`` and writes them when the batch is done (the replicated owner
    writes its packets after the entry).  No log, no replicas, no re-parse.
``kernel``
    Linux's own TCP between two namespaces over a veth pair (MTU 1500, the TUN's
    too; veth keeps its GSO/TSO offloads), with a threaded Python echo server
    (``--serve-kernel``: a thread per connection, ``recv(65536)``/``sendall``)
    in the server namespace: the physical reference.

Namespaces are ``dnb-<pid>-<n>``, made per server start and deleted in
``finally`` (after the server's processes are gone: SIGTERM, then SIGKILL to
its process group); SIGTERM and SIGINT unwind through those ``finally``
blocks, and the plain and kernel servers die with this script
(``PR_SET_PDEATHSIG``).  The veth pair is created inside the namespaces, so no
device ever exists in the root namespace.

Repetitions are interleaved: round r starts every server once, in an order
rotated by r, and runs both tests; the table gives medians over ``--repeat``
(default 3) rounds.

Server CPU: utime+stime of every process of the server (the process started
and its descendants: for ``stack_*`` the supervisor *and* the replicas, the
supervisor included; its own share is reported apart as ``supervisor_cpu``),
plus cutime+cstime (children they reaped), from ``/proc/<pid>/stat`` just
before the client's "go" and just after its result, as CPU-seconds per MB
sent.  The client's CPU is not counted (it is reported).  Kernel work done in
softirq context is charged to no process: for ``kernel`` part of both TCP
stacks' work is invisible to this figure, and for the TUN servers the kernel's
receive path for what they write runs inside their ``write()`` and is counted.

Disturbance, as in ``kv.py``: each test also measures the CPU other processes
(and the hypervisor: steal) used meanwhile, ``/proc/stat`` user+nice+system+
steal minus the server, the client and this script; above ``--busy-limit``
(default 10%) the test runs again, up to 2 more times, keeping the least
disturbed attempt.

Progress goes to stderr; ``--json`` prints one JSON object on stdout: a key per
server and test (``"stack_2/8conn": {"mb_s": ..., "cpu_s_per_mb": ...}``),
``"ratios"`` and ``"meta"``.  The ratios are reported, never judged; the exit
status is 1 when a run failed (a checksum mismatch, a timeout, a server that
did not start) or a process was left behind, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the machinery this shares with the KV benchmark: /proc readings, medians, git
from benchmarks.kv import (  # noqa: E402
    _alive,
    _machine_busy,
    _median,
    _proc_table,
    _round,
    git_head,
    log,
)

SERVERS: Final = ("stack_1", "stack_2", "plain", "kernel")
DESCRIPTIONS: Final = {
    "stack_1": "replicated netstack (examples/tcp_echo.py), --replicas 1",
    "stack_2": "replicated netstack (examples/tcp_echo.py), --replicas 2",
    "plain": "same engine and codecs in one uvloop process: no log, no replicas",
    "kernel": "Linux TCP over veth, threaded Python echo server (reference)",
}
#: (name, numerator, denominator) of the MB/s (and CPU-s/MB) medians, per test
RATIOS: Final = (
    ("stack_2/stack_1", "stack_2", "stack_1"),
    ("stack_2/plain", "stack_2", "plain"),
    ("stack_1/plain", "stack_1", "plain"),
    ("plain/kernel", "plain", "kernel"),
)
TESTS: Final = ("1conn", "8conn")
CONNS: Final = {"1conn": 1, "8conn": 8}
KERNEL_ADDR: Final = "192.0.2.1"
STACK_ADDR: Final = "192.0.2.2"
PORT: Final = 7
DEVICE: Final = "dn0"
ECHO: Final = "examples.tcp_echo:service"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
RETRIES: Final = 2
#: The ingress reads this many packets per batch (``_ingress.BATCH``); so does plain.
BATCH: Final = 16
MB: Final = 1_000_000

#: The kernel-side client (see the module doc).  argv: host port bytes conns seed
#: timeout.  It prints "ready" once its data is made, waits for a line on stdin, then
#: prints one JSON line.  /proc/self/net/* is its own namespace's.
CLIENT: Final = textwrap.dedent(
    """
    import hashlib, json, random, resource, socket, sys, threading, time
    host, port, n, conns, seed = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
    timeout = float(sys.argv[6])
    datas = [random.Random(seed + i).randbytes(n) for i in range(conns)]
    sent = [hashlib.sha256(d).hexdigest() for d in datas]

    def snmp():
        lines = open("/proc/net/snmp").read().splitlines()
        got = {}
        for head, values in zip(lines[::2], lines[1::2]):
            if head.startswith("Tcp:"):
                got = dict(zip(head.split()[1:], map(int, values.split()[1:])))
        drops = 0
        for line in open("/proc/net/dev").read().splitlines()[2:]:
            name, rest = line.split(":", 1)
            if name.strip() != "lo":
                drops += int(rest.split()[11])  # transmit drops: a full TUN queue
        lines = open("/proc/net/netstat").read().splitlines()
        ext = {}
        for head, values in zip(lines[::2], lines[1::2]):
            if head.startswith("TcpExt:"):
                ext = dict(zip(head.split()[1:], map(int, values.split()[1:])))
        return (got.get("RetransSegs", 0), got.get("OutSegs", 0), drops,
                ext.get("TCPTimeouts", 0), ext.get("TCPFastRetrans", 0))

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    print("ready", flush=True)
    sys.stdin.readline()
    cpu0, snmp0, t0 = cpu(), snmp(), time.monotonic()
    results = [None] * conns
    errors = []
    socks = [socket.create_connection((host, port), timeout=timeout) for _ in range(conns)]

    def writer(i):
        try:
            socks[i].sendall(datas[i])
            socks[i].shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(f"conn {i} send: {exc!r}")

    def reader(i):
        h, count = hashlib.sha256(), 0
        try:
            while True:
                chunk = socks[i].recv(1 << 16)
                if not chunk:
                    break
                h.update(chunk)
                count += len(chunk)
        except OSError as exc:
            errors.append(f"conn {i} recv after {count} bytes: {exc!r}")
        results[i] = (h.hexdigest(), count)

    threads = [threading.Thread(target=f, args=(i,))
               for i in range(conns) for f in (writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    snmp1 = snmp()
    for s in socks:
        s.close()
    bad = [i for i in range(conns) if results[i] != (sent[i], n)]
    for i in bad:
        errors.append(f"conn {i}: {results[i][1]} of {n} bytes back, sha256 "
                      + ("matches" if results[i][0] == sent[i] else "differs"))
    print(json.dumps({
        "wall": wall, "bytes": n * conns, "cpu": cpu() - cpu0, "errors": errors,
        "retrans": snmp1[0] - snmp0[0], "out_segs": snmp1[1] - snmp0[1],
        "tx_drops": snmp1[2] - snmp0[2], "timeouts": snmp1[3] - snmp0[3],
        "fast_retrans": snmp1[4] - snmp0[4],
    }), flush=True)
    """
)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): a server started by this script dies with it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


# -- the plain stack (replication off) -------------------------------------------------


def serve_plain(tun_name: str, addr: str, port: int) -> None:
    """The single-process stack: the replicated stack's work, minus the replication.

    What differs from ``_ingress`` + ``_stack``: a segment is parsed once (the
    replicated stack checks it at ingress, then every replica re-parses the
    header from the log entry), the state is a plain dict, timers are
    ``loop.call_at``, and there is no log, no entry, no effect.  What is the same:
    the TUN queue and its batches of 16, ``_wire``'s checks and builders, the
    engine with the stack's parameters, the echo's calls, RSTs for strays,
    ICMP echo, writes per packet.
    """
    import hashlib

    import uvloop
    from dominoes.components.netstack import _wire as wire
    from dominoes.components.netstack import conn_key, parse_address
    from dominoes.components.netstack._tcp import Actions, Tcb, TcpError, reset_for
    from dominoes.components.netstack._tun import TunQueue
    from dominoes.components.netstack._types import ACK, FIN, RST, SYN, Segment

    # the replicated stack's own parameters (Tcp()'s defaults)
    mss, wscale, rcv_buffer = 1460, 7, 1 << 20
    local_ip, _ = parse_address(addr)
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})  # as replica 0 pins itself
    tun = TunQueue(tun_name)
    conns: dict[int, Tcb] = {}
    timers: dict[int, dict[str, asyncio.TimerHandle]] = {}
    pending: list[bytes] = []
    ident = 0
    secret = random.getrandbits(64).to_bytes(8, "big")

    def flush() -> None:
        for packet in pending:
            tun.write(packet)
        pending.clear()

    def transmit(remote_ip: int, segments: list[Segment]) -> None:
        nonlocal ident
        for seg in segments:
            ident = (ident + 1) & 0xFFFF
            tcp = wire.build_tcp(local_ip, remote_ip, seg)
            pending.append(wire.build_ipv4(local_ip, remote_ip, wire.PROTO_TCP, tcp, ident=ident))

    def isn(key: int, now: float) -> int:  # RFC 6528, as the stack's
        digest = hashlib.blake2b(
            key.to_bytes(10, "big") + local_ip.to_bytes(4, "big"), key=secret, digest_size=4
        ).digest()
        return (int(now * 250_000) + int.from_bytes(digest, "big")) & 0xFFFFFFFF

    def forget(key: int) -> None:
        conns.pop(key, None)
        for handle in timers.pop(key, {}).values():
            handle.cancel()

    def apply(key: int, actions: Actions) -> None:
        if actions.segments:
            transmit(key >> 32, actions.segments)
        if actions.timers:
            armed = timers.setdefault(key, {})
            for kind, at in actions.timers.items():
                old = armed.pop(kind, None)
                if old is not None:
                    old.cancel()
                if at is not None:
                    armed[kind] = loop.call_at(at, fire, key, kind)
        tcb = conns.get(key)
        events = actions.events
        # the echo (examples/tcp_echo.py), in the order the stack raises its events
        if actions.delivered and tcb is not None:
            apply(key, tcb.consumed(len(actions.delivered), loop.time()))
            with contextlib.suppress(TcpError):
                apply(key, tcb.send(actions.delivered, loop.time()))
        if "remote_fin" in events and key in conns and tcb is not None:
            apply(key, tcb.close(loop.time()))
        if any(e in ("closed", "reset", "refused") for e in events):
            forget(key)

    def fire(key: int, kind: str) -> None:
        armed = timers.get(key)
        if armed is not None:
            armed.pop(kind, None)
        tcb = conns.get(key)
        if tcb is not None:
            apply(key, tcb.on_timer(kind, loop.time()))
            flush()

    def segment(src: int, seg: Segment) -> None:
        key = conn_key(src, seg.src_port, seg.dst_port)
        now = loop.time()
        tcb = conns.get(key)
        if tcb is None:
            if seg.flags & (SYN | ACK | RST | FIN) == SYN and seg.dst_port == port:
                tcb, actions = Tcb.passive(
                    seg.dst_port, seg.src_port, seg, isn(key, now), now,
                    mss=mss, wscale=wscale, rcv_buffer=rcv_buffer,
                )  # fmt: skip
                conns[key] = tcb
                apply(key, actions)
                return
            rst = reset_for(seg)
            if rst is not None:
                transmit(src, [rst])
            return
        apply(key, tcb.on_segment(seg, now))

    def handle(packets: list[bytes]) -> None:
        nonlocal ident
        for packet in packets:
            try:
                ip = wire.parse_ipv4(packet)
            except wire.WireError:
                continue
            if ip.dst != local_ip:
                continue
            if ip.proto == wire.PROTO_TCP:
                try:
                    seg = wire.parse_tcp(ip.src, ip.dst, ip.payload)
                except wire.WireError:
                    continue
                segment(ip.src, seg)
            elif ip.proto == wire.PROTO_ICMP:
                with contextlib.suppress(wire.WireError):
                    reply = wire.echo_reply(ip.payload)
                    if reply is not None:
                        ident = (ident + 1) & 0xFFFF
                        pending.append(
                            wire.build_ipv4(ip.dst, ip.src, wire.PROTO_ICMP, reply, ident=ident)
                        )
        flush()

    def readable() -> None:  # _ingress.Ingress.readable's loop
        while True:
            packets = tun.read_batch(BATCH)
            if not packets:
                return
            handle(packets)
            if len(packets) < BATCH:
                return

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_reader(tun.fd, readable)
        print(f"ready: plain stack on {tun_name} as {addr}, port {port}", flush=True)
        await stop.wait()
        loop.remove_reader(tun.fd)
        tun.close()

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


# -- the kernel's echo server -------------------------------------------------------------


def serve_kernel(port: int) -> None:
    """A thread per connection: recv, sendall, until EOF; then close."""

    def echo(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                conn.sendall(data)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)

    server = socket.create_server(("0.0.0.0", port), backlog=64)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"ready: kernel echo on port {port}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


# -- namespaces ---------------------------------------------------------------------------

_ns_counter = iter(range(1, 1 << 30))


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _new_ns(made: list[str]) -> str:
    name = f"dnb-{os.getpid()}-{next(_ns_counter)}"
    _ip("netns", "add", name)
    made.append(name)
    _ip("-n", name, "link", "set", "lo", "up")
    subprocess.run(
        ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return name


@contextlib.contextmanager
def namespaces(server: str, txqueuelen: int | None = None) -> Iterator[tuple[str, str]]:
    """(client namespace, server namespace), always deleted afterwards.

    For the TUN servers both are one namespace with ``dn0`` (multi-queue) at
    192.0.2.1/24; for ``kernel`` two, joined by a veth pair (192.0.2.1 and .2).
    """
    made: list[str] = []
    try:
        client = _new_ns(made)
        if server == "kernel":
            srv = _new_ns(made)
            _ip("-n", client, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
                "netns", srv)  # fmt: skip
            _ip("-n", client, "addr", "add", f"{KERNEL_ADDR}/24", "dev", "veth0")
            _ip("-n", srv, "addr", "add", f"{STACK_ADDR}/24", "dev", "veth1")
            _ip("-n", client, "link", "set", "veth0", "up")
            _ip("-n", srv, "link", "set", "veth1", "up")
        else:
            srv = client
            _ip("-n", client, "tuntap", "add", "dev", DEVICE, "mode", "tun", "multi_queue")
            _ip("-n", client, "addr", "add", f"{KERNEL_ADDR}/24", "dev", DEVICE)
            if txqueuelen is not None:  # packets the kernel queues per TUN queue
                _ip("-n", client, "link", "set", DEVICE, "txqueuelen", str(txqueuelen))
            _ip("-n", client, "link", "set", DEVICE, "up")
        yield client, srv
    finally:
        for name in reversed(made):
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=30, check=False
            )


def leftover_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    mine = f"dnb-{os.getpid()}-"
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(mine)]


# -- processes ----------------------------------------------------------------------------


def tree_cpu(root: int) -> tuple[float, float, dict[int, int]]:
    """CPU-seconds of ROOT and its descendants, of ROOT alone, and their pid -> start."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pids: set[int] = set()
    todo = [root] if root in table else []
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo.extend(children.get(pid, ()))
    own = table[root][1] / CLK_TCK if root in table else 0.0
    return sum(table[p][1] for p in pids) / CLK_TCK, own, {p: table[p][2] for p in pids}


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Server:
    name: str
    client_ns: str
    server_ns: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: dict[int, int] = field(default_factory=dict)
    logfile: Path | None = None
    _log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        py = sys.executable
        if self.name.startswith("stack_"):
            run_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.workdir))
            return [py, "-m", "dominoes", "run", ECHO, "--replicas", self.name.split("_")[1],
                    "--port", str(PORT), "--run-dir", str(run_dir), "--log-level", "INFO",
                    "--tun", DEVICE, "--addr", f"{STACK_ADDR}/24"]  # fmt: skip
        if self.name == "plain":
            return [py, str(Path(__file__).resolve()), "--serve-plain", "--tun", DEVICE,
                    "--addr", f"{STACK_ADDR}/24", "--port", str(PORT)]  # fmt: skip
        return [py, str(Path(__file__).resolve()), "--serve-kernel", "--port", str(PORT)]

    def start(self, timeout: float = 60.0) -> None:
        self.logfile = self.workdir / f"{self.name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.logfile, "wb")  # noqa: SIM115 -- closed in stop()
        # `ip netns exec` execs the command: the pid is the server's (dominoes' supervisor)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, *self.argv()],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, killed as one
            preexec_fn=None if self.name.startswith("stack_") else _die_with_parent,
        )
        ready = "tcp_echo serving" if self.name.startswith("stack_") else "ready:"
        deadline = time.monotonic() + timeout
        while ready not in self.output():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout:g} s: {self.tail()}")
            time.sleep(0.05)
        if self.name.startswith("stack_"):  # every replica on its queue
            want = int(self.name.split("_")[1])
            while self.output().count(f"netstack on {DEVICE}") < want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: not every replica opened its queue")
                time.sleep(0.05)
        self.cpu()

    def output(self) -> str:
        assert self.logfile is not None
        return self.logfile.read_bytes().decode(errors="replace")

    def tail(self, n: int = 1500) -> str:
        try:
            return self.output()[-n:]
        except OSError:
            return ""

    def cpu(self) -> tuple[float, float]:
        """CPU-seconds of the whole server, and of its first process alone."""
        assert self.proc is not None
        total, own, pids = tree_cpu(self.proc.pid)
        self.pids.update(pids)
        return total, own

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL to its process group; the pids that had to be killed."""
        proc = self.proc
        if proc is None:
            return []
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                self.cpu()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                log(f"  warning: {self.name} ignored SIGTERM for 15 s; killing it")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in self.pids.items()):
            time.sleep(0.05)
        left = sorted(p for p, s in self.pids.items() if _alive(p, s))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its group: pgid == its pid
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if self._log is not None:
            self._log.close()
        self.proc = None
        return left


# -- one test -----------------------------------------------------------------------------


@dataclass
class Sample:
    mb_s: float | None
    cpu_s_per_mb: float | None
    supervisor_cpu_s_per_mb: float | None = None
    client_cpu_s_per_mb: float | None = None
    wall_s: float | None = None
    retrans: int = 0
    out_segs: int = 0
    tx_drops: int = 0
    #: the kernel client's RTO expiries and fast retransmits (TcpExt)
    timeouts: int = 0
    fast_retrans: int = 0
    busy_elsewhere: float = 0.0
    error: str | None = None


def run_client(server: Server, nbytes: int, conns: int, seed: int, timeout: float) -> Sample:
    """One client run (see CLIENT) against SERVER; a failed run has ``error`` and no figures."""
    argv = ["ip", "netns", "exec", server.client_ns, sys.executable, "-c", CLIENT,
            STACK_ADDR, str(PORT), str(nbytes), str(conns), str(seed), str(timeout)]  # fmt: skip
    client = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert client.stdin is not None
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            _, err = client.communicate(timeout=30)
            return Sample(None, None, error=f"client did not start: {err.strip()[-300:]}")
        t0, busy0, own0, (cpu0, sup0) = time.monotonic(), _machine_busy(), _own_cpu(), server.cpu()
        client.stdin.write("go\n")
        client.stdin.flush()
        try:
            out, err = client.communicate(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            return Sample(None, None, error=f"client timed out after {timeout + 60:g} s")
        cpu1, sup1 = server.cpu()
        busy1, own1, window = _machine_busy(), _own_cpu(), time.monotonic() - t0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    lines = out.strip().splitlines()
    if client.returncode != 0 or not lines:
        return Sample(None, None, error=f"client exit {client.returncode}: {err.strip()[-300:]}")
    res = json.loads(lines[-1])
    mb = res["bytes"] / MB
    foreign = (busy1 - busy0) - (own1 - own0) - (cpu1 - cpu0) - res["cpu"]
    # over the whole window the counters cover (the client's start and exit included)
    busy = max(0.0, 100.0 * foreign / (window * (os.cpu_count() or 1)))
    sample = Sample(
        mb / res["wall"],
        (cpu1 - cpu0) / mb,
        (sup1 - sup0) / mb if server.name.startswith("stack_") else None,
        res["cpu"] / mb,
        res["wall"],
        res["retrans"],
        res["out_segs"],
        res["tx_drops"],
        res["timeouts"],
        res["fast_retrans"],
        busy,
    )
    if res["errors"]:  # a mismatch is a failed run, not a number
        return Sample(None, None, error="; ".join(res["errors"])[:400], busy_elsewhere=busy)
    return sample


# -- reporting ----------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def source_stamp() -> set[tuple[str, int, int]]:
    """(path, mtime, size) of what the servers run, to notice edits during a run."""
    paths = [ROOT / "examples" / "tcp_echo.py", Path(__file__).resolve()]
    for top in ("dominoes", "components"):
        paths += sorted((ROOT / top).rglob("*.py"))
    stamp = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamp.add((str(path.relative_to(ROOT)), st.st_mtime_ns, st.st_size))
    return stamp


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no ip (iproute2)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, small sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--json-file", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    parser.add_argument("--mb-1", type=float, default=None, help="MB for 1 conn (20; quick 2)")
    parser.add_argument(
        "--mb-8", type=float, default=None, help="MB per conn for 8 conns (4; quick 0.5)"
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=None,
        help="rerun a test (up to 2 more times) when other processes used more than this "
        "%% of the CPUs meanwhile (default 10; no reruns with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per client socket op")
    parser.add_argument(
        "--txqueuelen",
        type=int,
        default=None,
        help="the TUN device's txqueuelen: packets the kernel queues per TUN queue before "
        "dropping (default: the device's, 500)",
    )
    # the servers this script runs inside a namespace
    parser.add_argument("--serve-plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-kernel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tun", default=DEVICE, help=argparse.SUPPRESS)
    parser.add_argument("--addr", default=f"{STACK_ADDR}/24", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_plain:
        serve_plain(args.tun, args.addr, args.port)
        return 0
    if args.serve_kernel:
        serve_kernel(args.port)
        return 0

    why = why_not()
    if why is not None:
        log(f"cannot run: {why}")
        return 2
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            parser.error(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    repeat = args.repeat or (1 if args.quick else 3)
    busy_limit = args.busy_limit if args.busy_limit is not None else (100.0 if args.quick else 10.0)
    size = {
        "1conn": int((args.mb_1 or (2 if args.quick else 20)) * MB),
        "8conn": int((args.mb_8 or (0.5 if args.quick else 4)) * MB),
    }
    # SIGTERM unwinds like Ctrl-C, through every finally (servers, namespaces).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    head, stamp = git_head(), source_stamp()
    samples: dict[str, list[Sample]] = {f"{s}/{t}": [] for s in servers for t in TESTS}
    failures: list[str] = []
    leftovers: dict[str, list[int]] = {}
    discarded = disturbed_kept = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-netstack-bench-") as tmp:
        for r in range(repeat):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for name in order:
                with namespaces(name, args.txqueuelen) as (client_ns, server_ns):
                    server = Server(name, client_ns, server_ns, Path(tmp))
                    try:
                        server.start()
                        probe = run_client(server, 100_000, 1, 99, 30.0)  # warm-up and check
                        if probe.error is not None:
                            raise RuntimeError(f"probe echo failed: {probe.error}")
                        for test in TESTS:
                            attempts: list[Sample] = []
                            for attempt in range(RETRIES + 1):
                                got = run_client(
                                    server, size[test], CONNS[test], 1000 * r + attempt,
                                    args.timeout,
                                )  # fmt: skip
                                attempts.append(got)
                                last = (
                                    got.busy_elsewhere <= busy_limit
                                    or attempt == RETRIES
                                    or got.error is not None
                                )
                                log(
                                    f"round {r + 1}/{repeat} {name:8s} {test}: "
                                    f"{_fmt(got.mb_s, '7.2f')} MB/s "
                                    f"{_fmt(got.cpu_s_per_mb, '6.3f')} cpu-s/MB  "
                                    f"retrans {got.retrans} (rto {got.timeouts}, fast "
                                    f"{got.fast_retrans}) txdrop {got.tx_drops}  "
                                    f"busy elsewhere {got.busy_elsewhere:4.1f}%"
                                    + (f"  FAILED: {got.error}" if got.error else "")
                                    + ("" if last else "  (disturbed: run again)")
                                )
                                if last:
                                    break
                            sample = min(attempts, key=lambda x: x.busy_elsewhere)
                            if attempts[-1].error is not None:
                                sample = attempts[-1]
                            discarded += len(attempts) - 1
                            disturbed_kept += sample.busy_elsewhere > busy_limit
                            samples[f"{name}/{test}"].append(sample)
                            if sample.error is not None:
                                failures.append(f"round {r + 1} {name} {test}: {sample.error}")
                    except (RuntimeError, OSError) as exc:
                        failures.append(f"round {r + 1} {name}: {exc}")
                        log(f"round {r + 1}/{repeat} {name}: FAILED: {exc}")
                    finally:
                        left = server.stop()
                        if left:
                            leftovers.setdefault(name, []).extend(left)
                            log(f"  warning: {name} left processes behind (killed): {left}")
    wall = time.monotonic() - t0
    ns_left = leftover_namespaces()
    changed = sorted({path for path, *_ in stamp ^ source_stamp()})
    head_after = git_head()
    if changed:
        log(f"warning: sources changed during the run: {', '.join(changed[:10])}")

    results: dict[str, Any] = {}
    for key, ss in samples.items():
        results[key] = {
            "mb_s": _round(_median([s.mb_s for s in ss]), 3),
            "cpu_s_per_mb": _round(_median([s.cpu_s_per_mb for s in ss]), 4),
            "supervisor_cpu_s_per_mb": _round(_median([s.supervisor_cpu_s_per_mb for s in ss]), 4),
            "client_cpu_s_per_mb": _round(_median([s.client_cpu_s_per_mb for s in ss]), 4),
            "mb_s_runs": [_round(s.mb_s, 3) for s in ss],
            "cpu_s_per_mb_runs": [_round(s.cpu_s_per_mb, 4) for s in ss],
            "retrans_runs": [s.retrans for s in ss],
            "kernel_out_segs_runs": [s.out_segs for s in ss],
            "tx_drops_runs": [s.tx_drops for s in ss],
            "kernel_rto_timeouts_runs": [s.timeouts for s in ss],
            "kernel_fast_retrans_runs": [s.fast_retrans for s in ss],
            "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
            "failed_runs": sum(s.error is not None for s in ss),
        }
    ratios: dict[str, float | None] = {}
    for label, num, den in RATIOS:
        for test in TESTS:
            for metric, suffix in (("mb_s", ""), ("cpu_s_per_mb", "/cpu")):
                a = results.get(f"{num}/{test}", {}).get(metric)
                b = results.get(f"{den}/{test}", {}).get(metric)
                ok = a is not None and b  # a server that used no measurable CPU: n/a
                ratios[f"{label}/{test}{suffix}"] = round(a / b, 3) if ok else None
    load_after = os.getloadavg()
    meta = {
        "bytes_per_conn": size,
        "tun_txqueuelen": args.txqueuelen or "device default (500)",
        "conns": CONNS,
        "repeat": repeat,
        "cores": cores,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git_head": head,
        "git_head_after": head_after,
        "sources_changed_during_run": changed,
        "wall_s": round(wall, 1),
        "busy_limit_pct": busy_limit,
        "runs_discarded_as_disturbed": discarded,
        "disturbed_runs_kept": disturbed_kept,
        "busy_elsewhere_pct_median": _round(
            _median([x.busy_elsewhere for ss in samples.values() for x in ss]), 1
        ),
        "cpu_counted": "utime+stime(+cutime+cstime) of the server's process tree; stack_*: "
        "supervisor included (its share: supervisor_cpu_s_per_mb)",
        "failures": failures,
        "leftover_processes": leftovers,
        "leftover_namespaces": ns_left,
    }
    document = json.dumps({**results, "ratios": ratios, "meta": meta})
    if args.json_file is not None:
        args.json_file.write_text(document + "\n")
    status = 1 if failures or leftovers or ns_left else 0
    if args.json:
        print(document)
        return status

    print(
        f"\nbulk echo: 1 conn x {size['1conn'] / MB:g} MB, 8 conns x {size['8conn'] / MB:g} MB; "
        f"median of {repeat} interleaved rounds; {wall:.0f} s; git {head}"
    )
    print(
        f"NOTE: the client (Python, unpinned), the kernel's TCP and the servers share the same "
        f"{len(cores)} cores {cores} (stack_* replicas and plain pin themselves: core i for "
        f"replica i); load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        "after. Compare servers, not capacities."
    )
    print(
        f"Other processes used {meta['busy_elsewhere_pct_median']}% of the CPUs (median); "
        f"{discarded} tests rerun as disturbed (> {busy_limit:g}%), {disturbed_kept} disturbed "
        "ones kept. Trust the figures when that last number is 0.\n"
    )
    if changed or head_after != head:
        print(
            f"WARNING: git HEAD {head} -> {head_after}; sources changed during the run: "
            f"{', '.join(changed[:10]) or 'none'}\n"
        )
    print(f"{'server':10s}{'1 conn':>22s}{'8 conns':>22s}    retrans (1 / 8, median)")
    print(f"{'':10s}" + f"{'MB/s  cpu-s/MB':>22s}" * 2)
    for name in servers:
        cells = []
        for test in TESTS:
            res = results[f"{name}/{test}"]
            cells.append(f"{_fmt(res['mb_s'], '12.2f')} {_fmt(res['cpu_s_per_mb'], '9.3f')}")
        rt = [_median([float(x) for x in results[f"{name}/{t}"]["retrans_runs"]]) for t in TESTS]
        print(f"{name:10s}" + "".join(cells) + f"    {_fmt(rt[0], '.0f')} / {_fmt(rt[1], '.0f')}")
    print()
    for name in servers:
        print(f"  {name:8s} {DESCRIPTIONS[name]}")
    sup = [results.get(f"stack_2/{t}", {}).get("supervisor_cpu_s_per_mb") for t in TESTS]
    if "stack_2" in servers:
        print(
            "  cpu-s/MB of stack_* includes its supervisor (stack_2's supervisor alone: "
            f"{_fmt(sup[0], '.4f')} / {_fmt(sup[1], '.4f')})"
        )
    print("\nratios (MB/s; CPU-s/MB)   1 conn          8 conns")
    for label, num, den in RATIOS:
        if num in servers and den in servers:
            cells = [
                f"{_fmt(ratios[f'{label}/{t}'], '5.2f')}; "
                f"{_fmt(ratios[f'{label}/{t}/cpu'], '5.2f')}"
                for t in TESTS
            ]
            print(f"  {label:22s}" + "".join(f"{c:>16s}" for c in cells))
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {f}")
    if leftovers:
        print(f"\nleftover processes (killed): {leftovers}")
    if ns_left:
        print(f"\nleftover namespaces: {ns_left}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally blocks have stopped the servers, deleted the netns
        log("interrupted; servers stopped, namespaces deleted")
        sys.exit(130)
