"""An HTTP/JSON service on dominoes against the usual uvicorn setups, driven by wrk.

    python benchmarks/asgi.py [--repeat R] [--seconds S] [--quick] [--json]
                              [--json-file F] [--setups a,b,...]
                              [--connections C] [--keys K] [--busy-limit PCT]

The same Starlette app in every setup (``baselines/asgi_dict.py`` has the
reference code): ``GET /items/{key}`` answers ``{"key": key, "value": n}``
(read state), ``POST /items/{key}`` increments the key's counter and answers
the same JSON with the new value (update state), ``GET /whoami`` answers the
worker's pid.  Only the two lines that read and write the counter differ
between setups.  Setups (``--setups``, default all six), each started on
127.0.0.1 on a free port, waited for, measured, stopped, then the next:

``dominoes_2``
    (1) ``dominoes run benchmarks.baselines.asgi_app:service --replicas 2``:
    the counters are a dominoes component replicated on both replicas; a GET
    is ``state.query(Counters.get, key)`` (a local linearizable read), a POST
    ``await state.call(Counters.add, key, 1)`` (a write through the shared
    log).  Each replica pins itself to one core and listens on the port with
    ``SO_REUSEPORT``.
``uvicorn_redis_2``
    (2) ``uvicorn asgi_redis:app --workers 2``: the counters are in one
    redis-server (``GET`` / ``INCR`` through ``redis.asyncio``), the usual way
    to share state between workers.  The redis-server is started by this
    script and counted as part of the setup (its CPU too).
``uvicorn_dict_1``
    (3) ``uvicorn asgi_dict:app``, one worker, counters in a dict: correct,
    but one core.
``uvicorn_dict_2``
    (4) ``uvicorn asgi_dict:app --workers 2``: each worker has its own dict,
    so a client sees the counters of whichever worker its connection landed
    on.  Fast but wrong: the upper bound for 2 cores.
``pinned_dict_2``
    (4') not in the issue: dominoes' shape without its state.
    ``baselines/asgi_servers.py --serve httptools --app asgi_dict:app
    --processes 2``: 2 processes, process i pinned to core i, each with its
    own ``SO_REUSEPORT`` socket and its own uvloop loop, each running
    ``uvicorn.Server`` (httptools) embedded in that loop, like a dominoes
    replica, over ``asgi_dict.py`` (a dict each: wrong).  Against it,
    ``dominoes_2`` shows the price of the replicated state and of dominoes'
    shell; against ``uvicorn_dict_2``, it shows what pinning and one socket
    per process change.
``raw_1``
    not a setup but a check of the load generator: ``baselines/asgi_servers.py
    --serve raw``, one uvloop process pinned to the last core that answers
    every request with a fixed JSON response, no HTTP parser, no ASGI.  Its
    requests/s is the most that wrk (with the same scripts) gets out of this
    machine; the setups should stay well below it.

Every uvicorn runs with ``--http httptools --loop uvloop --no-access-log
--log-level warning``.  ``uvicorn --workers 2`` does **not** pin its workers
(the scheduler places them) and they share one listening socket that the
parent bound: whichever worker wakes first accepts what is queued, so a burst
of new connections (wrk's 32 at its start) can land unevenly, all on one
worker at worst (``busiest %`` shows it).  dominoes pins each replica to its
own core and gives each its own ``SO_REUSEPORT`` socket (the kernel spreads
new connections by a hash of their addresses).  Nothing logs per request in any setup.

Load: ``wrk -t 1 -c 32 -d S --latency --timeout 5s -s SCRIPT`` (keep-alive
connections, wrk's default; ``--connections``, ``--seconds``, default 3).
The Lua script (written to a temporary file) builds the 1,000 requests of
the keyspace once (``/items/k1`` .. ``/items/k1000``, ``--keys``; a POST
carries ``Content-Length: 0``) and picks one per request with LuaJIT's
``math.random`` (uniform, the same sequence every run).  Per start: a 1 s
warm-up of POSTs (not measured: it makes redis.asyncio's connections and
fills the keyspace), then GET for S seconds, then POST for S seconds.
requests/s, p50 and p99 are wrk's (``--latency``: its HdrHistogram of every
request's round trip); a run with a non-2xx answer or a socket error counts
as a failure.

Before the load, every start is checked: ``GET /whoami`` is answered (and,
for the 2-process setups, over fresh connections until both worker pids have
answered, so that new connections can land on either), then 16 fresh
connections each ``POST /items/probeR`` once: a setup whose workers share
state answers 1, 2, ..., 16 (``shared_state`` in the output; expected false
for ``uvicorn_dict_2`` only when its connections landed on both workers).

The runs are interleaved: repetition r runs every setup once, in an order
rotated by r; the table gives medians over ``--repeat`` (default 3) runs.
The default run takes 2.5 to 3 minutes on 2 cores.

CPU, from ``/proc/<pid>/stat`` just before and after each wrk run:
``cpu/100k`` is the CPU (user+sys, and that of reaped children) of every
process of the setup (supervisor, workers or replicas, redis-server) per
100,000 requests; ``busiest %`` is the CPU of its two busiest processes in %
of one core, not counting redis-server, whose CPU is reported apart (a
saturated, balanced 2-process setup would show ~100+100, less what wrk
takes); ``wrk%`` is wrk's own CPU (``getrusage`` of the reaped child) in % of
one core: near 100 means wrk, not the server, set the pace.  wrk is not
pinned and shares the 2 cores with the setups: compare setups with each
other, do not read the figures as capacity.

Disturbance (as in ``kv.py``): each run measures the CPU that other processes
and the hypervisor (steal) used meanwhile (``/proc/stat`` minus the setup's
tree, wrk and this script).  Above ``--busy-limit`` (10%) the run is done
again, up to 2 more times (and 8 times in all), and the least disturbed
attempt is kept; the output counts reruns and disturbed runs kept.

Ratios of requests/s (medians), each against the issue's target on this box
(reported, not judged: the exit status says only whether the run worked, 1
when a setup failed to start or answer, a wrk run failed, or a process was
left behind):

* ``dominoes_2/uvicorn_dict_2/get``  >= 0.8 (reads near the upper bound);
* ``dominoes_2/uvicorn_redis_2/post`` >= 3 (writes against Redis);
* ``dominoes_2/uvicorn_dict_1/get`` and ``/post`` >= 1.3 (two cores pay).

and, with no target, the other pairs (``dominoes_2/pinned_dict_2/...``: what
the replicated state and dominoes' shell cost over the same front end).

Progress goes to stderr; ``--json`` prints exactly one JSON object on stdout:
a key per setup and test (``"dominoes_2/get": {"rps": ..., "p50_ms": ...,
"p99_ms": ..., "cpu_s_per_100k": ..., "wrk_cpu_pct": ..., ...}`` with the
per-run values), ``"ratios"``, ``"targets"`` and ``"meta"``.

Requires ``wrk`` (``apt-get install -y wrk``), ``redis-server``
(``apt-get install -y redis-server``) and ``pip install 'uvicorn[standard]'
starlette redis hiredis``.  A setup whose requirements are missing (for
example ``dominoes_2`` while ``dominoes.current`` or the service module does
not import) is skipped with the reason, and its ratios are null.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kv  # noqa: E402

BASELINES: Final = ROOT / "benchmarks" / "baselines"
DOMINOES_SERVICE: Final = "benchmarks.baselines.asgi_app:service"
SETUPS: Final = (
    "dominoes_2",
    "uvicorn_redis_2",
    "uvicorn_dict_1",
    "uvicorn_dict_2",
    "pinned_dict_2",
    "raw_1",
)
DESCRIPTIONS: Final = {
    "dominoes_2": "(1) dominoes, 2 replicas (pinned, SO_REUSEPORT), state replicated",
    "uvicorn_redis_2": "(2) uvicorn --workers 2, state in redis-server (redis.asyncio)",
    "uvicorn_dict_1": "(3) uvicorn, 1 worker, state in a dict: correct, one core",
    "uvicorn_dict_2": "(4) uvicorn --workers 2, a dict per worker: wrong, the upper bound",
    "pinned_dict_2": "(4') 2 pinned SO_REUSEPORT processes, uvicorn embedded, a dict each",
    "raw_1": "(check) uvloop fixed-response HTTP responder, 1 pinned process: wrk's ceiling",
}
WORKERS: Final = {
    "dominoes_2": 2,
    "uvicorn_redis_2": 2,
    "uvicorn_dict_1": 1,
    "uvicorn_dict_2": 2,
    "pinned_dict_2": 2,
    "raw_1": 1,
}
TESTS: Final = ("get", "post")
#: (numerator, denominator, test, target or None): ratios of requests/s medians
RATIOS: Final = (
    ("dominoes_2", "uvicorn_dict_2", "get", 0.8),
    ("dominoes_2", "uvicorn_redis_2", "post", 3.0),
    ("dominoes_2", "uvicorn_dict_1", "get", 1.3),
    ("dominoes_2", "uvicorn_dict_1", "post", 1.3),
    ("dominoes_2", "uvicorn_dict_2", "post", None),
    ("dominoes_2", "uvicorn_redis_2", "get", None),
    ("dominoes_2", "pinned_dict_2", "get", None),
    ("dominoes_2", "pinned_dict_2", "post", None),
    ("uvicorn_redis_2", "uvicorn_dict_1", "get", None),
    ("uvicorn_redis_2", "uvicorn_dict_1", "post", None),
    ("uvicorn_dict_2", "uvicorn_dict_1", "get", None),
    ("uvicorn_dict_2", "uvicorn_dict_1", "post", None),
    ("pinned_dict_2", "uvicorn_dict_2", "get", None),
    ("pinned_dict_2", "uvicorn_dict_2", "post", None),
)
#: extra attempts of a run that other processes disturbed, per run and in all
RETRIES: Final = 2
MAX_RERUNS: Final = 8
PROBES: Final = 16
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG: Final = 1
log = kv.log


# -- wrk ----------------------------------------------------------------------


def lua_script(method: str, keys: int) -> str:
    """A wrk script: KEYS prebuilt requests, one picked at random per request."""
    body = ', nil, ""' if method == "POST" else ""
    return (
        "local reqs = {}\n"
        "init = function(args)\n"
        f"  for i = 1, {keys} do\n"
        f'    reqs[i] = wrk.format("{method}", "/items/k" .. i{body})\n'
        "  end\n"
        "end\n"
        f"request = function() return reqs[math.random({keys})] end\n"
    )


@dataclass
class WrkResult:
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    #: wrk's own CPU-seconds (user+sys) and wall-clock seconds
    wrk_cpu_s: float
    wall_s: float
    error: str | None = None


_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> dict[str, Any]:
    """requests/s, latency percentiles (ms), requests and errors from wrk's output."""
    out: dict[str, Any] = {"percentiles": {}, "non2xx": 0, "socket_errors": 0}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m)\s*$", line)
        if m:
            out["percentiles"][float(m[1])] = float(m[2]) * _UNITS[m[3]]
        elif m := re.match(r"\s*Requests/sec:\s+(\d+(?:\.\d+)?)", line):
            out["rps"] = float(m[1])
        elif m := re.match(r"\s*(\d+) requests in", line):
            out["requests"] = int(m[1])
        elif m := re.match(r"\s*Non-2xx or 3xx responses:\s+(\d+)", line):
            out["non2xx"] = int(m[1])
        elif m := re.match(r"\s*Socket errors:(.*)", line):
            out["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", m[1]))
    return out


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    script: Path | None,
    *,
    preexec_fn: Callable[[], None] | None = None,
) -> WrkResult:
    """One wrk run against URL; its figures, its CPU, and what went wrong."""
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s"]
    argv += ["--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
            preexec_fn=preexec_fn,  # this script has no other threads
        )
    except subprocess.TimeoutExpired:
        return WrkResult(None, None, None, 0, 0.0, time.monotonic() - t0, "wrk timed out")
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    got = parse_wrk(done.stdout)
    pct = got["percentiles"]
    error = None
    if done.returncode != 0 or "rps" not in got:
        error = f"wrk exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    elif got["non2xx"] or got["socket_errors"]:
        error = f"{got['non2xx']} non-2xx answers, {got['socket_errors']} socket errors"
    return WrkResult(
        got.get("rps"), pct.get(50.0), pct.get(99.0), got.get("requests", 0), cpu, wall, error
    )


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or ["wrk ?"])[0].split(" Copyright")[0].strip()


# -- processes ----------------------------------------------------------------


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def http_get(port: int, path: str, method: str = "GET", timeout: float = 2.0) -> Any:
    """One request on a fresh connection; the decoded JSON answer (or an OSError)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"{method} {path}: HTTP {resp.status} {body[:200]!r}")
        return json.loads(body)
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"{method} {path}: {exc!r}") from exc
    finally:
        conn.close()


def process_cpu(roots: list[int]) -> dict[int, float]:
    """CPU-seconds (with reaped children) of every live process under ROOTS, by pid."""
    table = kv._proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, float] = {}
    stack = [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid not in out:
            out[pid] = table[pid][1] / CLK_TCK
            stack.extend(children.get(pid, ()))
    return out


def _zombie(pid: int) -> bool:
    """Is PID a zombie (or gone)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] == b"Z"


def start_times(pids: list[int]) -> dict[int, int]:
    table = kv._proc_table()
    return {p: table[p][2] for p in pids if p in table}


@dataclass
class Setup:
    """One setup's processes: started, checked, measured, stopped."""

    name: str
    argv: list[str]
    workers: int
    workdir: Path
    port: int
    redis: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: dict[int, int] = field(default_factory=dict)  # every pid seen -> its start time
    worker_pids: set[int] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        logf = self.workdir / f"{self.name}.log"
        with open(logf, "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, for the leftover check
                    preexec_fn=die_with_parent,  # this script has no other threads
                )
            )

    def _exited(self) -> str | None:
        for p in self.procs:
            if p.poll() is not None:
                return f"{self.name}: {p.args!r} exited with {p.returncode}: {self.tail()}"
        return None

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(BASELINES)]))
        if self.redis:
            rport = kv.free_port()
            rdir = tempfile.mkdtemp(prefix="redis-", dir=self.workdir)
            exe = shutil.which("redis-server") or "redis-server"
            redis_argv = [exe, "--bind", "127.0.0.1", "--port", str(rport), "--save", ""]
            redis_argv += ["--appendonly", "no", "--daemonize", "no", "--dir", rdir]
            self._spawn(redis_argv)
            while True:
                with contextlib.suppress(OSError):
                    if kv._request(rport, kv._cmd(b"PING"), timeout=1.0)[0].startswith(b"+PONG"):
                        break
                if why := self._exited():
                    raise RuntimeError(why)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: redis-server did not answer PING")
                time.sleep(0.02)
            env["ASGI_BENCH_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        self._spawn(self.argv, env)
        # Up?  Then every worker: fresh connections until each pid has answered.
        while len(self.worker_pids) < self.workers:
            try:
                self.worker_pids.add(int(http_get(self.port, "/whoami", timeout=1.0)["pid"]))
            except (OSError, KeyError, TypeError, ValueError):
                if why := self._exited():
                    raise RuntimeError(why) from None
                time.sleep(0.02)
            if time.monotonic() > deadline:
                if not self.worker_pids:
                    raise RuntimeError(f"{self.name} did not answer GET /whoami in {timeout:g} s")
                self.warnings.append(
                    f"only {len(self.worker_pids)} of {self.workers} workers answered /whoami"
                )
                log(f"  warning: {self.name}: {self.warnings[-1]}")
                break
        self.pids.update(start_times(list(process_cpu(self.roots()))))

    def probe(self, key: str) -> dict[str, Any]:
        """PROBES fresh connections each POST /items/KEY once: shared state answers 1..N."""
        values = []
        for _ in range(PROBES):
            got = http_get(self.port, f"/items/{key}", method="POST")
            if got.get("key") != key or not isinstance(got.get("value"), int):
                raise RuntimeError(f"{self.name}: POST /items/{key} answered {got!r}")
            values.append(got["value"])
        read = http_get(self.port, f"/items/{key}")
        if read.get("key") != key or not isinstance(read.get("value"), int):
            raise RuntimeError(f"{self.name}: GET /items/{key} answered {read!r}")
        return {"shared_state": values == list(range(1, PROBES + 1)), "values": values}

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> dict[int, float]:
        got = process_cpu(self.roots())
        for pid, start in start_times(list(got)).items():
            self.pids.setdefault(pid, start)
        return got

    def tail(self, n: int = 1500) -> str:
        try:
            return (self.workdir / f"{self.name}.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> list[int]:
        """Stop every process of the setup; return the pids that had to be killed."""
        with contextlib.suppress(Exception):
            self.cpu()
        # The server first, then its redis-server.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    log(f"  warning: {self.name} ignored SIGTERM for 15 s; killing it")
                    proc.kill()
                    proc.wait()
        # Children get a moment to follow their parent out.  Zombies do not count:
        # an orphan (uvicorn's multiprocessing resource tracker) waits for init.
        deadline = time.monotonic() + 5
        while True:
            leftovers = {p for p, start in self.pids.items() if kv._alive(p, start)}
            for proc in self.procs:
                group = subprocess.run(
                    ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True, check=False
                ).stdout.split()
                leftovers |= {int(p) for p in group if not _zombie(int(p))}
            if not leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs = []
        return sorted(leftovers)


def make_setup(name: str, workdir: Path) -> Setup:
    port = kv.free_port()
    py = sys.executable
    if name == "dominoes_2":
        argv = [py, "-m", "dominoes", "run", DOMINOES_SERVICE, "--replicas", "2"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    elif name.startswith("uvicorn_"):
        module = "asgi_redis" if "redis" in name else "asgi_dict"
        argv = [py, "-m", "uvicorn", f"{module}:app", "--app-dir", str(BASELINES)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--http", "httptools"]
        argv += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
        if WORKERS[name] > 1:
            argv += ["--workers", str(WORKERS[name])]
    elif name == "pinned_dict_2":
        argv = [py, str(BASELINES / "asgi_servers.py"), "--serve", "httptools"]
        argv += ["--app", "asgi_dict:app", "--processes", "2", "--port", str(port)]
    elif name == "raw_1":
        argv = [py, str(BASELINES / "asgi_servers.py"), "--serve", "raw", "--port", str(port)]
    else:
        raise ValueError(name)
    return Setup(name, argv, WORKERS[name], workdir, port, redis=name == "uvicorn_redis_2")


def missing_requirements(name: str) -> str | None:
    """Why setup NAME cannot run here, or None."""
    if name == "dominoes_2":
        # In a subprocess, from the repository root, as `dominoes run` imports it.
        probe = (
            "import dominoes; dominoes.current; from benchmarks.baselines.asgi_app import service"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "the dominoes ASGI service is not available (its import hung)"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return f"the dominoes ASGI service is not available: {last}"
        return None
    mods = ["uvloop"]
    if name.startswith("uvicorn_") or name == "pinned_dict_2":
        mods += ["uvicorn", "httptools", "starlette"]
    if name == "uvicorn_redis_2":
        mods += ["redis"]
        if shutil.which("redis-server") is None:
            return "redis-server not found: apt-get update && apt-get install -y redis-server"
    for mod in mods:
        if importlib.util.find_spec(mod) is None:
            return f"Python package {mod!r} missing: pip install uvicorn[standard] starlette redis"
    return None


# -- one measurement ----------------------------------------------------------


@dataclass
class Sample:
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_s_per_100k: float | None
    #: CPU of the setup's two busiest processes and of wrk, in % of one core
    busiest_pct: list[float]
    wrk_cpu_pct: float
    error: str | None = None
    #: CPU used meanwhile by other processes (and steal), in % of all cores
    busy_elsewhere: float = 0.0
    #: CPU of the setup's redis-server (not among busiest_pct), in % of one core
    redis_pct: float | None = None


def measure(
    setup: Setup,
    script: Path | None,
    seconds: float,
    connections: int,
    *,
    path: str = "",
    preexec_fn: Callable[[], None] | None = None,
) -> Sample:
    """One wrk run against SETUP, with the CPU of the setup, of wrk and of the others."""
    busy0, own0, cpu0 = kv._machine_busy(), kv._own_cpu(), setup.cpu()
    url = f"http://127.0.0.1:{setup.port}{path}"
    got = run_wrk(url, seconds, connections, script, preexec_fn=preexec_fn)
    cpu1 = setup.cpu()
    server_cpu = sum(cpu1.values()) - sum(v for p, v in cpu0.items() if p in cpu1)
    foreign = (kv._machine_busy() - busy0) - (kv._own_cpu() - own0) - server_cpu
    ncpu = os.cpu_count() or 1
    busy = max(0.0, 100.0 * foreign / (got.wall_s * ncpu)) if got.wall_s else 0.0
    pct = {p: 100.0 * (v - cpu0.get(p, 0.0)) / max(got.wall_s, 1e-9) for p, v in cpu1.items()}
    redis_pid = setup.procs[0].pid if setup.redis and setup.procs else None
    redis_pct = pct.pop(redis_pid) if redis_pid in pct else None
    per_proc = sorted(pct.values(), reverse=True)
    cpu_100k = server_cpu / got.requests * 100_000 if got.requests else None
    return Sample(
        got.rps,
        got.p50_ms,
        got.p99_ms,
        cpu_100k,
        [round(x, 1) for x in per_proc[:2]],
        round(100.0 * got.wrk_cpu_s / max(got.wall_s, 1e-9), 1),
        got.error,
        busy,
        None if redis_pct is None else round(redis_pct, 1),
    )


# -- reporting ----------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e3:,.1f}k"


def ratio_key(num: str, den: str, test: str) -> str:
    return f"{num}/{den}/{test}"


def select_setups(spec: str) -> list[str]:
    chosen: list[str] = []
    for word in (w.strip() for w in spec.split(",")):
        for name in SETUPS if word in ("all", "default") else (word,) if word else ():
            if name not in chosen:
                chosen.append(name)
    return chosen


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("uvicorn", "starlette", "httptools", "uvloop", "redis", "hiredis"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per setup (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="wrk -d per run (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--keys", type=int, default=1000, help="keyspace (default 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 1 s each")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--json-file", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--setups",
        default="all",
        help=f"comma-separated setups (default all): {', '.join(SETUPS)}",
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=None,
        help="rerun a run (up to 2 more times) when other processes or steal used more than "
        "this %% of the CPUs meanwhile (default 10; no reruns with --quick)",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    warmup = min(1.0, seconds)
    if args.busy_limit is None:
        args.busy_limit = 100.0 if args.quick else 10.0
    setups = select_setups(args.setups)
    for s in setups:
        if s not in SETUPS:
            parser.error(f"unknown setup {s!r}; choose from {', '.join(SETUPS)}")
    if shutil.which("wrk") is None:
        log("wrk not found: apt-get update && apt-get install -y wrk")
        return 2
    skipped: dict[str, str] = {}
    for s in setups:
        if why := missing_requirements(s):
            skipped[s] = why
            log(f"SKIPPING {s}: {why}")
    active = [s for s in setups if s not in skipped]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    stamp_before, head_before = kv.source_stamp(), kv.git_head()
    samples: dict[str, list[Sample]] = {f"{s}/{t}": [] for s in active for t in TESTS}
    probes: dict[str, list[bool]] = {s: [] for s in active if s != "raw_1"}
    leftovers_seen: dict[str, list[int]] = {}
    warnings: list[str] = []
    failures: list[str] = []
    reruns = disturbed_kept = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-asgi-bench-") as tmp:
        workdir = Path(tmp)
        scripts = {}
        for test in TESTS:
            scripts[test] = workdir / f"{test}.lua"
            scripts[test].write_text(lua_script(test.upper(), args.keys))
        for r in range(repeat):
            order = active[r % len(active) :] + active[: r % len(active)] if active else []
            for name in order:
                setup = make_setup(name, workdir)
                try:
                    setup.start()
                    if name != "raw_1":  # it has no state
                        got = setup.probe(f"probe{r}")
                        probes[name].append(got["shared_state"])
                        log(
                            f"run {r + 1}/{repeat} {name}: {len(setup.worker_pids)} worker(s) "
                            f"answered; {PROBES} POSTs on fresh connections: {got['values']}"
                        )
                    warm = run_wrk(
                        f"http://127.0.0.1:{setup.port}", warmup, args.connections, scripts["post"]
                    )
                    if warm.error:
                        raise RuntimeError(f"warm-up: {warm.error}")
                except (RuntimeError, OSError) as exc:
                    failures.append(f"run {r + 1} {name}: {exc}")
                    log(f"run {r + 1}/{repeat} {name}: failed: {exc}")
                    left = setup.stop()
                    if left:
                        leftovers_seen.setdefault(name, []).extend(left)
                    continue
                try:
                    for test in TESTS:
                        attempts: list[Sample] = []
                        for attempt in range(RETRIES + 1):
                            sample = measure(setup, scripts[test], seconds, args.connections)
                            attempts.append(sample)
                            last = (
                                sample.busy_elsewhere <= args.busy_limit
                                or attempt == RETRIES
                                or reruns >= MAX_RERUNS
                                or sample.error is not None
                            )
                            redis = (
                                ""
                                if sample.redis_pct is None
                                else f"redis-server {sample.redis_pct:.0f}%  "
                            )
                            log(
                                f"run {r + 1}/{repeat} {name:16s} {test:4s} "
                                f"{_fmt_rps(sample.rps):>8s} rps  p50 {_fmt(sample.p50_ms, '.2f')} "
                                f"p99 {_fmt(sample.p99_ms, '.2f')} ms  busiest "
                                f"{'+'.join(f'{x:.0f}' for x in sample.busiest_pct)}%  {redis}"
                                f"wrk {sample.wrk_cpu_pct:.0f}%  busy elsewhere "
                                f"{sample.busy_elsewhere:4.1f}%"
                                + ("" if last else "  (disturbed: run again)")
                            )
                            if last:
                                break
                            reruns += 1
                        kept = min(attempts, key=lambda x: x.busy_elsewhere)
                        if kept.error is None and attempts[-1].error is not None:
                            kept = attempts[-1]
                        disturbed_kept += kept.busy_elsewhere > args.busy_limit
                        samples[f"{name}/{test}"].append(kept)
                        if kept.error:
                            failures.append(f"run {r + 1} {name} {test}: {kept.error}")
                            log(f"  {name} {test}: {kept.error}")
                finally:
                    left = setup.stop()
                    warnings += [f"run {r + 1} {name}: {w}" for w in setup.warnings]
                    if left:
                        leftovers_seen.setdefault(name, []).extend(left)
                        log(f"  warning: {name} left processes behind (killed): {left}")
    wall = time.monotonic() - t0
    changed = sorted({p for p, *_ in set(stamp_before) ^ set(kv.source_stamp())})
    if changed:
        log(f"warning: sources changed during the run: {', '.join(changed[:10])}")

    results: dict[str, Any] = {}
    for key, ss in samples.items():
        results[key] = {
            "rps": _round(_median([s.rps for s in ss]), 1),
            "p50_ms": _round(_median([s.p50_ms for s in ss]), 3),
            "p99_ms": _round(_median([s.p99_ms for s in ss]), 3),
            "cpu_s_per_100k": _round(_median([s.cpu_s_per_100k for s in ss]), 3),
            "wrk_cpu_pct": _round(_median([s.wrk_cpu_pct for s in ss]), 1),
            "rps_runs": [s.rps for s in ss],
            "p50_ms_runs": [s.p50_ms for s in ss],
            "p99_ms_runs": [s.p99_ms for s in ss],
            "busiest_pct_runs": [s.busiest_pct for s in ss],
            "redis_server_cpu_pct": _round(_median([s.redis_pct for s in ss]), 1),
            "wrk_cpu_pct_runs": [s.wrk_cpu_pct for s in ss],
            "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
        }
    ratios: dict[str, float | None] = {}
    targets: dict[str, dict[str, Any]] = {}
    for num, den, test, target in RATIOS:
        a = results.get(f"{num}/{test}", {}).get("rps")
        b = results.get(f"{den}/{test}", {}).get("rps")
        value = round(a / b, 3) if a and b else None
        ratios[ratio_key(num, den, test)] = value
        if target is not None:
            met = None if value is None else value >= target
            targets[ratio_key(num, den, test)] = {"target": target, "ratio": value, "met": met}
    best = [
        results[f"{s}/{t}"]["rps"]
        for s in active
        for t in TESTS
        if s != "raw_1" and results[f"{s}/{t}"]["rps"]
    ]
    raw = [results[f"raw_1/{t}"]["rps"] for t in TESTS if "raw_1" in active]
    headroom = round(min(r for r in raw if r) / max(best), 2) if best and raw and all(raw) else None
    meta = {
        "seconds": seconds,
        "warmup_seconds": warmup,
        "connections": args.connections,
        "wrk_threads": 1,
        "keys": args.keys,
        "repeat": repeat,
        "cores": cores,
        "load_generator": f"{wrk_version()}, unpinned, sharing the setups' cores",
        "wrk_headroom": headroom,
        "shared_state": probes,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_head": head_before,
        "sources_changed_during_run": changed,
        "wall_s": round(wall, 1),
        "busy_limit_pct": args.busy_limit,
        "runs_discarded_as_disturbed": reruns,
        "disturbed_runs_kept": disturbed_kept,
        "busy_elsewhere_pct_median": _round(
            _median([x.busy_elsewhere for ss in samples.values() for x in ss]), 1
        ),
        "skipped": skipped,
        "warnings": warnings,
        "failures": failures,
        "leftover_processes": leftovers_seen,
    }
    document = json.dumps({**results, "ratios": ratios, "targets": targets, "meta": meta})
    if args.json_file is not None:
        args.json_file.write_text(document + "\n")
    status = 1 if failures or leftovers_seen else 0
    if args.json:
        print(document)
        return status

    print(
        f"\nwrk -t 1 -c {args.connections} -d {seconds:g}s, {args.keys} keys; median of "
        f"{repeat} interleaved runs; {wall:.0f} s"
    )
    print(
        f"NOTE: wrk (unpinned) and the setups share the same {len(cores)} cores {cores}; load "
        f"average {load_before[0]:.2f} before, {meta['loadavg_after'][0]:.2f} after. Compare "
        "setups, not capacities."
    )
    print(
        f"Other processes used {meta['busy_elsewhere_pct_median']}% of the CPUs (median); "
        f"{reruns} runs rerun as disturbed (> {args.busy_limit:g}%), {disturbed_kept} disturbed "
        "ones kept. Trust the figures when that last number is 0."
    )
    print(f"Python {meta['python']}, {meta['load_generator']}, git {head_before}\n")
    if changed:
        print(f"WARNING: sources changed during the run: {', '.join(changed[:10])}\n")
    cols = f"{'rps':>8s} {'p50':>6s} {'p99':>6s} {'cpu/100k':>8s} {'busiest %':>9s} {'wrk%':>4s}"
    print(f"{'':16s}" + "".join(f"  {t.upper():<{len(cols)}s}" for t in TESTS))
    print(f"{'setup':16s}" + f"  {cols}" * len(TESTS))
    for name in setups:
        if name in skipped:
            print(f"{name:16s}  skipped: {skipped[name]}")
            continue
        cells = []
        for t in TESTS:
            res = results[f"{name}/{t}"]
            runs = [s.busiest_pct for s in samples[f"{name}/{t}"]]
            busiest = (
                "+".join(f"{statistics.median(x[i] for x in runs):.0f}" for i in range(2))
                if runs and all(len(x) >= 2 for x in runs)
                else (f"{statistics.median(x[0] for x in runs):.0f}" if runs else "-")
            )
            cells.append(
                f"  {_fmt_rps(res['rps']):>8s} {_fmt(res['p50_ms'], '.2f'):>6s} "
                f"{_fmt(res['p99_ms'], '.2f'):>6s} {_fmt(res['cpu_s_per_100k'], '.2f'):>8s} "
                f"{busiest:>9s} {_fmt(res['wrk_cpu_pct'], '.0f'):>4s}"
            )
        print(f"{name:16s}" + "".join(cells))
    print("\n  (rps: requests/s; p50, p99: ms; cpu/100k: CPU-s of the setup per 100,000")
    print("   requests; busiest %: its two busiest processes, wrk%: wrk, in % of one core)")
    for name in setups:
        shared = probes.get(name)
        note = "" if not shared else f"  [shared state: {'/'.join(map(str, shared))}]"
        rcpu = [results.get(f"{name}/{t}", {}).get("redis_server_cpu_pct") for t in TESTS]
        if any(x is not None for x in rcpu):
            note += "  [redis-server %: " + "/".join(_fmt(x, ".0f") for x in rcpu) + "]"
        print(f"  {name:16s} {DESCRIPTIONS[name]}{note}")
    print("\nratios of requests/s (target on this box, from the issue; reported, not judged):")
    for num, den, test, target in RATIOS:
        if num not in setups or den not in setups:
            continue
        value = ratios[ratio_key(num, den, test)]
        shown = "n/a" if value is None else f"{value:.2f}"
        goal = "" if target is None else f"  target >= {target:g}"
        if target is not None and value is not None:
            goal += "  met" if value >= target else "  NOT met"
        print(f"  {ratio_key(num, den, test):36s} {shown:>6s}{goal}")
    if headroom is not None:
        print(
            f"\nwrk's ceiling (raw_1, its slower test) is {headroom:.1f}x the fastest setup's "
            "requests/s"
        )
    if warnings:
        print("\nwarnings:")
        for w in warnings:
            print(f"  {w}")
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {f}")
    if leftovers_seen:
        print(f"\nleftover processes (killed): {leftovers_seen}")
    return status


if __name__ == "__main__":
    sys.exit(main())
