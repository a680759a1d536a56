"""The dominoes KV service against its peers, driven by redis-benchmark.

    python benchmarks/kv.py [--repeat R] [--quick] [--json] [--json-file F]
                            [--servers a,b,...|default|durability|partition|all]
                            [--requests-p1 N] [--requests-p16 N] [--clients C]
                            [--keyspace K] [--busy-limit PCT]

Load generator: ``redis-benchmark`` (Debian's redis-tools) for every server,
``-c 50 -r 100000 --csv``, one invocation per test: SET then GET at ``-P 1``,
then SET then GET at ``-P 16``, against a freshly started server (GETs find
the keys the SETs wrote).  ``-n`` is bounded (``--requests-p1``, default
100,000, and ``--requests-p16``, default 500,000; ``redis_shared_2`` runs a
fifth of that because it is ~10x slower, which keeps the whole default run at
a few minutes on 2 cores).  requests/s is redis-benchmark's own figure.

Servers (``--servers``: names, or the groups ``default``, the first eight
below and what a bare run measures; ``durability``, ``dominoes_2`` and the
durable servers against ``redis_server`` and the AOF ones; ``all``), each
started on 127.0.0.1 on a free port, waited for (PING, then INFO over fresh
connections until every worker process has answered one), loaded, stopped
(with all its children; leftovers are checked by process group and pid), then
the next:

``dominoes_1`` / ``dominoes_2``
    ``dominoes run dominoes.components.kv:service --replicas 1|2``
    (linearizable reads, the default).
``dominoes_2_digest``
    the same with ``--digest-every 10000``: replicas digest their whole
    state every 10,000 log positions (in a forked child) and compare.
``dominoes_2_local``
    the same with ``--reads local``: reads skip the catch-up to the log's
    completed tail (possibly stale).  ``dominoes_2/dominoes_2_local`` on GET
    is the price of linearizable reads.
``plain_1``
    ``baselines/plain_resp.py``: one uvloop process, ``hiredis.Reader``, a dict.
``plain_2``
    the same as 2 pinned ``SO_REUSEPORT`` processes, each with its own dict:
    fast but wrong, the upper bound.
``redis_shared_2``
    ``baselines/redis_shared.py``: the same front end as 2 pinned processes
    whose state is in one redis-server, through ``redis.asyncio`` (the usual
    way to share state between workers).  Its redis-server counts as part of
    the server.
``redis_server``
    a real ``redis-server --save '' --appendonly no``, for reference.
``dominoes_2_always`` / ``dominoes_2_everysec`` / ``dominoes_2_no``
    ``dominoes_2`` with ``--durable DIR --fsync always|everysec|no``: a writer
    process appends every log entry to segment files in DIR; under ``always``
    a write's reply waits for the fsync that covers it (group commit), under
    ``everysec`` and ``no`` for the write() to the file (``everysec`` fsyncs
    once a second in a background thread).  The writer is part of the
    server's tree, so its CPU is counted.
``redis_aof_always`` / ``redis_aof_everysec`` / ``redis_aof_no``
    ``redis-server --save '' --appendonly yes --appendfsync always|everysec|no``:
    Redis's own durability, the same three policies (Redis 7 keeps the AOF in
    ``appendonlydir/`` inside ``--dir``; its automatic AOF rewrite is left on,
    as dominoes' snapshots are).
Not in the default group, which keeps a bare run at a few minutes;
``--servers durability`` runs them (about 2 minutes at ``--repeat 3`` on 2
quiet cores).
``partkv_2`` / ``partkv_2_copies2`` / ``partkv_2_all``
    ``dominoes run examples.partkv:service|copies2|replicated --replicas 2``:
    a small Redis-protocol store (SET, GET, INCR, ...) whose keys are
    partitioned across the 2 replicas, each key on 1 replica or on both, and
    the same store replicated on every replica.  ``--servers partition``
    runs them with ``dominoes_2``, ``plain_2`` and ``redis_server``.
    ``partkv_2/partkv_2_all`` is what partitioning buys the same code.
``dominoes_2_p1`` / ``dominoes_2_p2``
    ``dominoes_2`` with ``--partition copies=1|2``: the KV itself, its keys
    partitioned across the 2 replicas (each key on one, or on both).  In
    ``--servers partition``; ``dominoes_2_p1/dominoes_2`` is what partitioning
    buys the KV.
DIR (and
redis-server's ``--dir``, for every redis-server above) is a fresh directory
per start under the benchmark's temporary workdir (under ``$TMPDIR``, so on
the same filesystem for dominoes and redis-server), removed when the server
stops; the bytes and files left in it are reported (``meta.data_dir``), as a
check that the server wrote what it was asked to.

The runs are interleaved: repetition r runs every server once, in an order
rotated by r; the table gives medians over ``--repeat`` (default 3) runs.

Server CPU: utime+stime of every process in the server's tree (the process
started and all its descendants: supervisor and replicas, the log writer,
workers, the redis-server of ``redis_shared_2``), plus cutime+cstime, the CPU
of the children they have reaped (so a forked child that ends during an
invocation, like redis-server's AOF rewrite or a dominoes snapshot or digest,
is counted, not taken for another process's), read from ``/proc/<pid>/stat``
just before and just after each redis-benchmark invocation, reported as
CPU-seconds per 100,000 requests.  redis-benchmark's own CPU is not counted.

redis-benchmark and the servers share the machine's cores (2 here); nothing is
pinned for redis-benchmark, and the servers' workers pin themselves.  So the
load generator competes with the servers for CPU: compare servers with each
other, do not read the figures as capacity.  At ``-P 1`` on 2 cores a
2-process server is often *slower* than a 1-process one: redis-benchmark needs
a core of its own, and a second pinned worker takes it.

Disturbance (as in ``channel.py``): each invocation also measures the CPU that
other processes and the hypervisor (steal) used meanwhile, from ``/proc/stat``
(user+nice+system+steal) minus the server's tree, redis-benchmark and this
script.  Above ``--busy-limit`` (10%) it runs again, up to 2 more times, and
keeps the least disturbed attempt; the output counts reruns and disturbed
runs kept.  The git HEAD and any source file under ``dominoes/``,
``components/`` or ``loops/`` that changed during the run are reported too.

Progress goes to stderr; ``--json`` prints exactly one JSON object on stdout
with a key per server and test (``"dominoes_2/set/P16": {"rps": ...,
"cpu_s_per_100k": ...}``), ``"ratios"`` (``"dominoes_2/plain_2/set/P16": 0.7``)
and ``"meta"``.  The durability ratios are in ``"ratios"`` too, for every
policy P, test and pipeline: ``dominoes_2_P/redis_aof_P`` (against Redis with
the same policy), ``dominoes_2_P/dominoes_2`` (the cost of durability) and
``redis_aof_P/redis_server`` (Redis's own cost of it); the table prints them
as a matrix, the rows whose two servers were asked for.

The ratios are reported, not judged: the script has no targets, and its exit
status says only whether the run itself worked (1 when a server failed to
start or to answer, or left a process behind; 0 otherwise).

Requires ``apt-get install -y redis-tools redis-server`` and
``pip install -e '.[bench]'`` (redis, hiredis).  A server whose requirements
are missing (for example the dominoes KV service, while it does not exist) is
skipped with a message, and ratios that need it are reported as null.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
BASELINES: Final = HERE / "baselines"
SERVERS: Final = (
    "dominoes_1",
    "dominoes_2",
    "dominoes_2_local",
    "dominoes_2_digest",
    "plain_1",
    "plain_2",
    "redis_shared_2",
    "redis_server",
    "dominoes_2_always",
    "dominoes_2_everysec",
    "dominoes_2_no",
    "redis_aof_always",
    "redis_aof_everysec",
    "redis_aof_no",
    "partkv_2",
    "partkv_2_copies2",
    "partkv_2_all",
    "dominoes_2_p1",
    "dominoes_2_p2",
)
#: ``examples.partkv``'s services: a small store partitioned by key (copies=1 and 2 of
#: 2 replicas) and its all-replicated twin (the same code, every key everywhere)
PARTKV: Final = {
    "partkv_2": "examples.partkv:service",
    "partkv_2_copies2": "examples.partkv:copies2",
    "partkv_2_all": "examples.partkv:replicated",
}
#: fsync policies, as ``dominoes run --fsync`` and ``redis-server --appendfsync`` name them
POLICIES: Final = ("always", "everysec", "no")
GROUPS: Final = {
    "default": SERVERS[:8],
    "durability": (
        "dominoes_2",
        *(f"dominoes_2_{p}" for p in POLICIES),
        *(f"redis_aof_{p}" for p in POLICIES),
        "redis_server",
    ),
    "partition": (
        "dominoes_2_p1",
        "dominoes_2_p2",
        *PARTKV,
        "dominoes_2",
        "plain_2",
        "redis_server",
    ),
    "all": SERVERS,
}
DESCRIPTIONS: Final = {
    "dominoes_1": "(1) dominoes KV, 1 replica",
    "dominoes_2": "(2) dominoes KV, 2 replicas",
    "dominoes_2_local": "(2') dominoes KV, 2 replicas, --reads local",
    "dominoes_2_digest": "(2'') dominoes KV, 2 replicas, --digest-every 10000",
    "plain_1": "(3) plain uvloop+hiredis+dict, 1 process",
    "plain_2": "(4) plain, 2 SO_REUSEPORT processes, no shared state (upper bound)",
    "redis_shared_2": "(5) 2 processes sharing state via redis-server (redis.asyncio)",
    "redis_server": "(6) redis-server",
    **{f"dominoes_2_{p}": f"(2d) dominoes KV, 2 replicas, --durable --fsync {p}" for p in POLICIES},
    **{f"redis_aof_{p}": f"(6d) redis-server --appendonly yes --appendfsync {p}" for p in POLICIES},
    "partkv_2": "(7) examples.partkv, 2 replicas, each key on 1 (copies=1)",
    "partkv_2_copies2": "(7') examples.partkv, 2 replicas, copies=2 (every key on both)",
    "partkv_2_all": "(7'') examples.partkv's store replicated, 2 replicas (the twin)",
    "dominoes_2_p1": "(8) dominoes KV, 2 replicas, --partition copies=1",
    "dominoes_2_p2": "(8') dominoes KV, 2 replicas, --partition copies=2",
}
WORKERS: Final = {
    "dominoes_1": 1,
    "dominoes_2": 2,
    "dominoes_2_local": 2,
    "dominoes_2_digest": 2,
    "plain_1": 1,
    "plain_2": 2,
    "redis_shared_2": 2,
    "redis_server": 1,
    **{f"dominoes_2_{p}": 2 for p in POLICIES},
    **{f"redis_aof_{p}": 1 for p in POLICIES},
    **dict.fromkeys(PARTKV, 2),
    "dominoes_2_p1": 2,
    "dominoes_2_p2": 2,
}
SCALE: Final = {"redis_shared_2": 0.2}  # fraction of -n for servers that are much slower
TESTS: Final = (("set", 1), ("get", 1), ("set", 16), ("get", 16))
#: redis-benchmark's own tests ``--tests`` may name (its ``-t`` names)
KNOWN_TESTS: Final = ("set", "get", "incr", "lpush", "rpush", "lpop", "rpop", "sadd", "hset",
                      "spop", "zadd", "zpopmin", "mset", "zrange", "eval")  # fmt: skip
#: tests redis-benchmark has no -t name for: the command it sends (its __rand_int__
#: placeholder included).  ``zrange`` reads the sorted set the ``zadd`` test fills
#: (run zadd first); ``eval`` is a script that reads and writes one random key.
CUSTOM: Final = {
    "zrange": ["ZRANGE", "myzset", "0", "9", "WITHSCORES"],
    "eval": ["EVAL", "return redis.call('INCRBY', KEYS[1], ARGV[1])", "1",
             "counter:__rand_int__", "2"],
}  # fmt: skip
#: what the baselines' own front ends understand; every other server takes every test
SUPPORTED: Final = {
    "plain_1": frozenset({"set", "get", "incr"}),
    "plain_2": frozenset({"set", "get", "incr"}),
    "redis_shared_2": frozenset({"set", "get", "incr"}),
    **dict.fromkeys(PARTKV, frozenset({"set", "get", "incr"})),
}


def select_tests(spec: str) -> tuple[tuple[str, int], ...]:
    """(test, pipeline) pairs for ``--tests a,b``: every test at -P 1, then at -P 16."""
    names = list(dict.fromkeys(w.strip().lower() for w in spec.split(",") if w.strip()))
    unknown = [n for n in names if n not in KNOWN_TESTS]
    if unknown or not names:
        raise ValueError(
            f"unknown test(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(KNOWN_TESTS)}"
        )
    return tuple((name, pipeline) for pipeline in (1, 16) for name in names)


def supports(server: str, test: str) -> bool:
    return test in SUPPORTED.get(server, frozenset(KNOWN_TESTS))


#: extra attempts of an invocation that other processes disturbed (see --busy-limit)
RETRIES: Final = 2
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
# (name, numerator, denominator, test, pipeline): value = num/den of the requests/s
# medians.  Reported, never judged: what each tells, and one run's values, are in
# benchmarks/README.md; a benchmark that passed or failed on them would only say how
# busy the machine was.
RATIOS: Final = (
    ("dominoes_2/plain_2", "dominoes_2", "plain_2", "set", 16),
    ("dominoes_2/plain_2", "dominoes_2", "plain_2", "get", 16),
    ("dominoes_2/redis_shared_2", "dominoes_2", "redis_shared_2", "set", 16),
    ("dominoes_2/redis_shared_2", "dominoes_2", "redis_shared_2", "get", 16),
    ("dominoes_2/redis_shared_2", "dominoes_2", "redis_shared_2", "set", 1),
    ("dominoes_2/redis_shared_2", "dominoes_2", "redis_shared_2", "get", 1),
    ("dominoes_1/plain_1", "dominoes_1", "plain_1", "set", 1),
    ("dominoes_1/plain_1", "dominoes_1", "plain_1", "get", 1),
    ("dominoes_1/plain_1", "dominoes_1", "plain_1", "set", 16),
    ("dominoes_1/plain_1", "dominoes_1", "plain_1", "get", 16),
    ("dominoes_2/dominoes_2_local", "dominoes_2", "dominoes_2_local", "get", 1),
    ("dominoes_2/dominoes_2_local", "dominoes_2", "dominoes_2_local", "get", 16),
    ("dominoes_2_digest/dominoes_2", "dominoes_2_digest", "dominoes_2", "set", 16),
    ("dominoes_2_digest/dominoes_2", "dominoes_2_digest", "dominoes_2", "set", 1),
    ("dominoes_2/redis_server", "dominoes_2", "redis_server", "set", 16),
    # partitioning (``--servers partition``): against the share-nothing bound, Redis,
    # and the same store replicated on every replica
    ("partkv_2/plain_2", "partkv_2", "plain_2", "set", 16),
    ("partkv_2/plain_2", "partkv_2", "plain_2", "get", 16),
    ("partkv_2/redis_server", "partkv_2", "redis_server", "set", 16),
    ("partkv_2/partkv_2_all", "partkv_2", "partkv_2_all", "set", 16),
    ("partkv_2/partkv_2_all", "partkv_2", "partkv_2_all", "get", 16),
    ("partkv_2/partkv_2_all", "partkv_2", "partkv_2_all", "set", 1),
    ("partkv_2/partkv_2_all", "partkv_2", "partkv_2_all", "get", 1),
    ("partkv_2_copies2/partkv_2_all", "partkv_2_copies2", "partkv_2_all", "set", 16),
    ("partkv_2_all/plain_2", "partkv_2_all", "plain_2", "set", 16),
    # the KV itself partitioned: against the bound, Redis, and the replicated KV
    ("dominoes_2_p1/plain_2", "dominoes_2_p1", "plain_2", "set", 16),
    ("dominoes_2_p1/plain_2", "dominoes_2_p1", "plain_2", "get", 16),
    ("dominoes_2_p1/redis_server", "dominoes_2_p1", "redis_server", "set", 16),
    ("dominoes_2_p1/dominoes_2", "dominoes_2_p1", "dominoes_2", "set", 16),
    ("dominoes_2_p1/dominoes_2", "dominoes_2_p1", "dominoes_2", "get", 16),
    ("dominoes_2_p1/dominoes_2", "dominoes_2_p1", "dominoes_2", "set", 1),
    ("dominoes_2_p1/dominoes_2", "dominoes_2_p1", "dominoes_2", "get", 1),
    ("dominoes_2_p2/dominoes_2", "dominoes_2_p2", "dominoes_2", "set", 16),
    ("dominoes_2_p2/dominoes_2", "dominoes_2_p2", "dominoes_2", "get", 16),
)


# The durability ratios, for every test: against redis-server with the same fsync
# policy, against no durability (the cost of it), and Redis's own cost of it.
def durability_ratios(
    tests: tuple[tuple[str, int], ...],
) -> tuple[tuple[str, str, str, str, int], ...]:
    return tuple(
        (f"{num}/{den}", num, den, test, pipeline)
        for pairs in (
            [(f"dominoes_2_{p}", f"redis_aof_{p}") for p in POLICIES],
            [(f"dominoes_2_{p}", "dominoes_2") for p in POLICIES],
            [(f"redis_aof_{p}", "redis_server") for p in POLICIES],
        )
        for num, den in pairs
        for test, pipeline in tests
    )


DURABILITY_RATIOS: Final = durability_ratios(TESTS)


def extra_ratios(tests: tuple[tuple[str, int], ...]) -> tuple[tuple[str, str, str, str, int], ...]:
    """For the tests beyond SET and GET: dominoes against redis-server, 1 and 2 replicas."""
    return tuple(
        (f"{num}/redis_server", num, "redis_server", test, pipeline)
        for test, pipeline in tests
        if test not in ("set", "get")
        for num in ("dominoes_2", "dominoes_1")
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_stamp() -> list[tuple[str, int, int]]:
    """(path, mtime, size) of the dominoes and KV sources, to notice edits during a run."""
    stamp = []
    for top in ("dominoes", "components", "loops"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in (".py", ".c", ".so") and path.is_file():
                st = path.stat()
                stamp.append((str(path.relative_to(ROOT)), st.st_mtime_ns, st.st_size))
    return stamp


def git_head() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


# -- requirements -------------------------------------------------------------


def missing_requirements(server: str) -> str | None:
    """Why SERVER cannot run here, or None."""
    if server.startswith("dominoes"):
        # In a subprocess: an empty components/kv/ imports fine as a namespace
        # package, so ask for the service object itself.
        probe = "from dominoes.components.kv import service"
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
            return f"the dominoes KV service is not available (`{probe}` hung)"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return f"the dominoes KV service is not available (`{probe}`: {last})"
        return None
    if server in PARTKV:
        spec = importlib.util.find_spec("hiredis")
        return None if spec is not None else "Python package 'hiredis' missing"
    uses_redis = server in ("redis_shared_2", "redis_server") or server.startswith("redis_aof")
    if uses_redis and shutil.which("redis-server") is None:
        return "redis-server not found: apt-get update && apt-get install -y redis-server"
    mods: tuple[str, ...] = ()
    if server in ("plain_1", "plain_2"):
        mods = ("uvloop", "hiredis")
    elif server == "redis_shared_2":
        mods = ("uvloop", "hiredis", "redis")
    for mod in mods:
        if importlib.util.find_spec(mod) is None:
            return f"Python package {mod!r} missing: pip install -e '.[bench]'"
    return None


# -- processes ----------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, CPU ticks, start time) for every live process.

    The ticks are utime+stime+cutime+cstime: the process's own CPU and that of
    the children it has reaped, which a child's CPU joins when it ends.
    """
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15,
        # cutime 16, cstime 17, starttime 22
        if fields[0] == b"Z":
            continue
        ticks = sum(int(x) for x in fields[11:15])
        table[int(entry)] = (int(fields[1]), ticks, int(fields[19]))
    return table


def tree_cpu(root: int) -> tuple[float, dict[int, int]]:
    """CPU seconds of ROOT and its live descendants (and of the children they
    reaped), and their pid -> start time."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pids: set[int] = set()
    stack = [root] if root in table else []
    while stack:
        pid = stack.pop()
        pids.add(pid)
        stack.extend(children.get(pid, ()))
    return sum(table[p][1] for p in pids) / CLK_TCK, {p: table[p][2] for p in pids}


def _alive(pid: int, start: int) -> bool:
    """Is PID still the process that started at START (not a reused pid) and not a zombie?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0] != b"Z" and int(fields[19]) == start


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (dominoes binds both)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def _read_reply(sock: socket.socket) -> bytes:
    """Read one RESP reply (simple, error, integer or bulk string) from SOCK."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        if data[:1] in (b"+", b"-", b":") and data.endswith(b"\r\n"):
            return data
        if data[:1] == b"$" and b"\r\n" in data:
            n = int(data[1 : data.index(b"\r\n")])
            if n < 0 or len(data) >= data.index(b"\r\n") + 2 + n + 2:
                return data


def _request(port: int, *payloads: bytes, timeout: float = 2.0) -> list[bytes]:
    """Send each payload in turn on one new connection; the reply to each."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        replies = []
        for payload in payloads:
            s.sendall(payload)
            replies.append(_read_reply(s))
        return replies


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _worker_identity(info: bytes) -> str | None:
    """Which worker answered an INFO: a dominoes replica index, else the process id."""
    fields = {}
    for line in info.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    for key in ("replica_index", "replica", "dominoes_replica", "process_id"):
        if key in fields:
            return f"{key}={fields[key]}"
    return None


@dataclass
class Server:
    name: str
    argv: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    pids: dict[int, int] = field(default_factory=dict)  # every pid seen -> its start time
    #: a fresh directory for the server's files (--durable, redis-server's --dir),
    #: removed by stop()
    datadir: Path | None = None
    #: what stop() found in datadir before removing it: (bytes, files)
    data_found: tuple[int, int] | None = None

    def start(self, timeout: float = 30.0) -> None:
        logf = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 -- closed in stop()
        self._logf = logf
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the leftover check
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if _request(self.port, _cmd(b"PING"), timeout=1.0)[0].startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer PING in {timeout:g} s")
            time.sleep(0.02)
        # Every worker listening?  SO_REUSEPORT spreads new connections by hash,
        # so a few dozen fresh connections reach each of N workers.
        want = WORKERS[self.name]
        seen: set[str] = set()
        while want > 1 and len(seen) < want and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                ident = _worker_identity(_request(self.port, _cmd(b"INFO"), timeout=1.0)[0])
                if ident is None:
                    log(f"  {self.name}: INFO names no worker; waiting 1 s instead")
                    time.sleep(1.0)
                    break
                seen.add(ident)
            if len(seen) < want:
                time.sleep(0.01)
        if want > 1 and 0 < len(seen) < want:
            log(f"  warning: {self.name}: only {len(seen)} of {want} workers answered INFO")
        # A SET and a GET on one connection (plain_2's processes do not share keys), so
        # a broken server fails loudly here, not as a fast loop of error replies.
        set_reply, get_reply = _request(
            self.port, _cmd(b"SET", b"kv-bench-probe", b"ok"), _cmd(b"GET", b"kv-bench-probe")
        )
        if not set_reply.startswith(b"+OK") or get_reply != b"$2\r\nok\r\n":
            raise RuntimeError(f"{self.name}: SET/GET probe answered {set_reply!r}, {get_reply!r}")
        self.pids.update(tree_cpu(self.proc.pid)[1])

    def cpu(self) -> float:
        assert self.proc is not None
        seconds, pids = tree_cpu(self.proc.pid)
        self.pids.update(pids)
        return seconds

    def tail(self, n: int = 1500) -> str:
        try:
            return (self.workdir / f"{self.name}.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> list[int]:
        """Stop the server and its children; return the pids that had to be killed."""
        proc = self.proc
        if proc is None:
            return []
        if proc.poll() is None:
            self.pids.update(tree_cpu(proc.pid)[1])
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                log(f"  warning: {self.name} ignored SIGTERM for 15 s; killing it")
                proc.kill()
                proc.wait()
        # Children get a moment to follow their parent out.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(*kv) for kv in self.pids.items()):
            time.sleep(0.05)
        leftovers = sorted(p for p, start in self.pids.items() if _alive(p, start))
        group = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        leftovers = sorted(set(leftovers) | {int(p) for p in group})
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._logf.close()
        self.proc = None
        self.remove_datadir()
        return leftovers

    def remove_datadir(self) -> None:
        """Note what the server left in its data directory, then remove it."""
        if self.datadir is None or not self.datadir.exists():
            return
        files = [p for p in self.datadir.rglob("*") if p.is_file()]
        self.data_found = (sum(p.stat().st_size for p in files), len(files))
        shutil.rmtree(self.datadir, ignore_errors=True)


def make_server(name: str, workdir: Path) -> Server:
    port = free_port()
    py = sys.executable
    datadir = None
    policy = name.rsplit("_", 1)[1]
    if name.startswith("dominoes_"):
        replicas = name.split("_")[1]
        argv = [py, "-m", "dominoes", "run", "dominoes.components.kv:service"]
        argv += ["--replicas", replicas, "--port", str(port)]
        if name.endswith("_local"):
            argv += ["--reads", "local"]
        if name.endswith("_digest"):  # the price of leaving divergence detection on
            argv += ["--digest-every", "10000"]
        if name.endswith(("_p1", "_p2")):  # the keys partitioned, 1 or 2 copies of each
            argv += ["--partition", f"copies={name[-1]}"]
        if policy in POLICIES:
            datadir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
            argv += ["--durable", str(datadir), "--fsync", policy]
    elif name in PARTKV:
        argv = [py, "-m", "dominoes", "run", PARTKV[name], "--replicas", "2"]
        argv += ["--port", str(port)]
    elif name.startswith("plain_"):
        argv = [py, str(BASELINES / "plain_resp.py"), "--port", str(port)]
        argv += ["--processes", name.split("_")[1]]
    elif name == "redis_shared_2":
        argv = [py, str(BASELINES / "redis_shared.py"), "--port", str(port), "--processes", "2"]
    elif name == "redis_server" or name.startswith("redis_aof_"):
        exe = shutil.which("redis-server") or "redis-server"
        datadir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        argv = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        argv += ["--daemonize", "no", "--dir", str(datadir)]
        if name == "redis_server":
            argv += ["--appendonly", "no"]
        else:
            argv += ["--appendonly", "yes", "--appendfsync", policy]
    else:
        raise ValueError(name)
    return Server(name, argv, workdir, port=port, datadir=datadir)


# -- load ---------------------------------------------------------------------


@dataclass
class Sample:
    rps: float | None
    cpu_s_per_100k: float | None
    error: str | None = None
    #: CPU used meanwhile by processes other than the server, redis-benchmark and
    #: this script, in % of all cores
    busy_elsewhere: float = 0.0


def _machine_busy() -> float:
    """CPU-seconds the machine has been busy in processes, or stolen by the hypervisor.

    ``/proc/stat``'s user, nice, system and steal.  Interrupt and softirq time
    is left out: here it is mostly the loopback traffic of the benchmark itself,
    often handled while no process of ours is current, so it would be counted
    as foreign.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system = fields[0:3]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + steal) / CLK_TCK


def _own_cpu() -> float:
    """CPU-seconds of this script and its reaped children (each redis-benchmark)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def run_load(
    server: Server, test: str, pipeline: int, requests: int, clients: int, keyspace: int
) -> Sample:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port)]
    argv += ["-c", str(clients), "-n", str(requests), "-P", str(pipeline)]
    argv += ["-r", str(keyspace), "--csv"]
    custom = CUSTOM.get(test)
    argv += custom if custom is not None else ["-t", test]
    timeout = 60 + requests / 2_000
    t0 = time.monotonic()
    busy0, own0, cpu0 = _machine_busy(), _own_cpu(), server.cpu()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Sample(None, None, f"redis-benchmark timed out after {timeout:g} s")
    cpu1 = server.cpu()
    foreign = (_machine_busy() - busy0) - (_own_cpu() - own0) - (cpu1 - cpu0)
    wall = time.monotonic() - t0
    busy = max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))
    rps = None
    for row in csv.reader(io.StringIO(done.stdout)):
        if not row or row[0] == "test":
            continue
        # a custom command's row is named by the command line itself
        if row[0].upper() == test.upper() or (custom is not None and rps is None):
            rps = float(row[1])
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "Could not fetch server CONFIG" not in line
    ]
    error = None
    if done.returncode != 0 or rps is None or errors:
        error = f"exit {done.returncode}: {' | '.join(errors[:3])[:300]}"
    return Sample(rps, (cpu1 - cpu0) / requests * 100_000, error, busy)


# -- reporting ----------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _key(server: str, test: str, pipeline: int) -> str:
    return f"{server}/{test}/P{pipeline}"


def _fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e3:,.1f}k"


def _fmt_cpu(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} B"


def select_servers(spec: str) -> list[str]:
    """The servers SPEC names (names and groups, comma-separated), in order, once each."""
    chosen: list[str] = []
    for word in (w.strip() for w in spec.split(",")):
        for name in GROUPS.get(word, (word,) if word else ()):
            if name not in chosen:
                chosen.append(name)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per server (default 3)")
    parser.add_argument("--requests-p1", type=int, default=None, help="-n at -P 1 (100000)")
    parser.add_argument("--requests-p16", type=int, default=None, help="-n at -P 16 (500000)")
    parser.add_argument("--clients", type=int, default=50, help="-c (default 50)")
    parser.add_argument("--keyspace", type=int, default=100_000, help="-r (default 100000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, small -n")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--json-file", type=Path, default=None, help="also write the JSON object to this file"
    )
    parser.add_argument(
        "--servers",
        default="default",
        help="comma-separated server names and groups: default (the first eight servers), "
        "durability (dominoes_2, its --durable variants, the redis AOF ones, redis_server), "
        "all",
    )
    parser.add_argument(
        "--tests",
        default="set,get",
        help="redis-benchmark tests (its -t names), each at -P 1 then -P 16 (default set,get; "
        f"known: {','.join(KNOWN_TESTS)}); a baseline that lacks a command reports n/a",
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=None,
        help="rerun an invocation (up to 2 more times) when other processes (or the "
        "hypervisor: steal time) used more than this %% of the CPUs meanwhile "
        "(default 10; no reruns with --quick)",
    )
    args = parser.parse_args(argv)
    try:
        tests = select_tests(args.tests)
    except ValueError as exc:
        parser.error(str(exc))
    ratio_rows = RATIOS + extra_ratios(tests)
    durability_rows = durability_ratios(tests)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.busy_limit is None:
        args.busy_limit = 100.0 if args.quick else 10.0
    n_p1 = args.requests_p1 or (10_000 if args.quick else 100_000)
    n_p16 = args.requests_p16 or (50_000 if args.quick else 500_000)
    servers = select_servers(args.servers)
    for s in servers:
        if s not in SERVERS:
            parser.error(
                f"unknown server {s!r}; choose from {', '.join(SERVERS)} "
                f"or the groups {', '.join(GROUPS)}"
            )
    if shutil.which("redis-benchmark") is None:
        log(
            "redis-benchmark not found. Install Debian's redis-tools (and redis-server):\n"
            "    apt-get update && apt-get install -y redis-tools redis-server"
        )
        return 2
    skipped: dict[str, str] = {}
    for s in servers:
        why = missing_requirements(s)
        if why:
            skipped[s] = why
            log(f"SKIPPING {s}: {why}")
    active = [s for s in servers if s not in skipped]
    # SIGTERM unwinds like Ctrl-C, so the running server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    stamp_before, head_before = source_stamp(), git_head()
    bench_version = subprocess.run(
        ["redis-benchmark", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    samples: dict[str, list[Sample]] = {_key(s, t, p): [] for s in active for t, p in tests}
    leftovers_seen: dict[str, list[int]] = {}
    data_dir: dict[str, list[dict[str, int]]] = {}
    discarded = disturbed_kept = 0
    failures: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dominoes-kv-bench-") as tmp:
        workdir = Path(tmp)
        for r in range(repeat):
            order = active[r % len(active) :] + active[: r % len(active)] if active else []
            for name in order:
                server = make_server(name, workdir)
                try:
                    server.start()
                except (RuntimeError, OSError) as exc:
                    failures.append(f"run {r + 1} {name}: {exc}")
                    log(f"run {r + 1}/{repeat} {name}: failed to start: {exc}")
                    server.stop()
                    continue
                try:
                    for test, pipeline in tests:
                        if not supports(name, test):
                            continue  # its front end has no such command: n/a
                        n = n_p1 if pipeline == 1 else n_p16
                        n = max(1_000, int(n * SCALE.get(name, 1.0)))
                        attempts: list[Sample] = []
                        for attempt in range(RETRIES + 1):
                            got = run_load(server, test, pipeline, n, args.clients, args.keyspace)
                            attempts.append(got)
                            last = (
                                got.busy_elsewhere <= args.busy_limit
                                or attempt == RETRIES
                                or got.error is not None
                            )
                            log(
                                f"run {r + 1}/{repeat} {name:19s} {test} P{pipeline:<2d} "
                                f"{_fmt_rps(got.rps):>8s} rps "
                                f"{_fmt_cpu(got.cpu_s_per_100k):>6s} cpu-s/100k  "
                                f"busy elsewhere {got.busy_elsewhere:4.1f}%"
                                + ("" if last else "  (disturbed: run again)")
                            )
                            if last:
                                break
                        # the least disturbed attempt is kept
                        sample = min(attempts, key=lambda x: x.busy_elsewhere)
                        if sample.error is None and attempts[-1].error is not None:
                            sample = attempts[-1]
                        discarded += len(attempts) - 1
                        disturbed = sample.busy_elsewhere > args.busy_limit
                        disturbed_kept += disturbed
                        samples[_key(name, test, pipeline)].append(sample)
                        if sample.error:
                            failures.append(
                                f"run {r + 1} {name} {test} P{pipeline}: {sample.error}"
                            )
                            log(f"  {name} {test} P{pipeline}: {sample.error}")
                finally:
                    left = server.stop()
                    if left:
                        leftovers_seen.setdefault(name, []).extend(left)
                        log(f"  warning: {name} left processes behind (killed): {left}")
                    if server.data_found is not None:
                        size, files = server.data_found
                        data_dir.setdefault(name, []).append({"bytes": size, "files": files})
                        log(f"  {name} left {_fmt_bytes(size)} in {files} file(s) in its data dir")
    wall = time.monotonic() - t0
    stamp_after = source_stamp()
    # files added, removed or modified while the servers were being measured
    changed = sorted({path for path, *_ in set(stamp_before) ^ set(stamp_after)})
    if changed:
        log(f"warning: sources changed during the run: {', '.join(changed[:10])}")

    results: dict[str, Any] = {}
    for key, ss in samples.items():
        results[key] = {
            "rps": _round(_median([s.rps for s in ss]), 1),
            "cpu_s_per_100k": _round(_median([s.cpu_s_per_100k for s in ss]), 4),
            "rps_runs": [s.rps for s in ss],
            "cpu_s_per_100k_runs": [_round(s.cpu_s_per_100k, 4) for s in ss],
            "busy_elsewhere_pct_runs": [round(s.busy_elsewhere, 1) for s in ss],
        }
    ratios: dict[str, float | None] = {}
    for label, num, den, test, pipeline in ratio_rows + durability_rows:
        a = results.get(_key(num, test, pipeline), {}).get("rps")
        b = results.get(_key(den, test, pipeline), {}).get("rps")
        ratios[f"{label}/{test}/P{pipeline}"] = round(a / b, 3) if a and b else None
    meta = {
        "requests_p1": n_p1,
        "requests_p16": n_p16,
        "tests": [f"{t}/P{p}" for t, p in tests],
        "scale": dict(SCALE),
        "clients": args.clients,
        "keyspace": args.keyspace,
        "repeat": repeat,
        "cores": cores,
        "load_generator": f"{bench_version}, unpinned, sharing the servers' cores",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "git_head": head_before,
        "sources_changed_during_run": changed,
        "wall_s": round(wall, 1),
        "busy_limit_pct": args.busy_limit,
        "runs_discarded_as_disturbed": discarded,
        "disturbed_runs_kept": disturbed_kept,
        "busy_elsewhere_pct_median": _round(
            _median([x.busy_elsewhere for ss in samples.values() for x in ss]), 1
        ),
        "skipped": skipped,
        "failures": failures,
        "leftover_processes": leftovers_seen,
        "data_dir": data_dir,
    }
    document = json.dumps({**results, "ratios": ratios, "meta": meta})
    if args.json_file is not None:
        args.json_file.write_text(document + "\n")
    if args.json:
        print(document)
        return 1 if failures or leftovers_seen else 0

    print(
        f"\nredis-benchmark -c {args.clients} -r {args.keyspace}: -n {n_p1:,} at -P 1, "
        f"{n_p16:,} at -P 16 (redis_shared_2: x{SCALE['redis_shared_2']}); "
        f"median of {repeat} interleaved runs; {wall:.0f} s"
    )
    print(
        f"NOTE: the load generator (redis-benchmark, unpinned) and the servers share the same "
        f"{len(cores)} cores {cores}; load average {load_before[0]:.2f} before, "
        f"{meta['loadavg_after'][0]:.2f} after. Compare servers, not capacities."
    )
    print(
        f"Other processes used {meta['busy_elsewhere_pct_median']}% of the CPUs (median over "
        f"kept invocations); {discarded} invocations rerun as disturbed (> {args.busy_limit:g}%), "
        f"{disturbed_kept} disturbed ones kept. Trust the figures when that last number is 0."
    )
    print(f"Python {meta['python']}, {bench_version}, git {head_before}\n")
    if changed:
        print(f"WARNING: sources changed during the run: {', '.join(changed[:10])}\n")
    head = f"{'server':20s}" + "".join(f"{f'{t.upper()} P{p}':>22s}" for t, p in tests)
    print(head)
    print(f"{'':20s}" + f"{'rps  cpu-s/100k':>22s}" * len(tests))
    for name in servers:
        if name in skipped:
            print(f"{name:20s}  skipped: {skipped[name]}")
            continue
        cells = []
        for t, p in tests:
            res = results[_key(name, t, p)]
            cells.append(f"{_fmt_rps(res['rps']):>12s} {_fmt_cpu(res['cpu_s_per_100k']):>9s}")
        print(f"{name:20s}" + "".join(cells))
    print()
    for name in servers:
        print(f"  {name:20s} {DESCRIPTIONS[name]}")
    # Only the ratios between servers that were asked for (the JSON has them all).
    shown_ratios = [
        r for r in ratio_rows if r[1] in servers and r[2] in servers and (r[3], r[4]) in tests
    ]
    if shown_ratios:
        print("\nratios of requests/s (what each tells: benchmarks/README.md):")
    for label, _, _, test, pipeline in shown_ratios:
        value = ratios[f"{label}/{test}/P{pipeline}"]
        shown = "n/a (a server was skipped or failed)" if value is None else f"{value:.2f}"
        print(f"  {f'{label}/{test}/P{pipeline}':40s} {shown:>7s}")
    rows = dict.fromkeys(
        label for label, num, den, *_ in durability_rows if num in servers and den in servers
    )
    if rows:
        print("\ndurability: ratios of requests/s (n/a: a server was skipped or failed)")
        print(f"  {'':38s}" + "".join(f"{f'{t.upper()} P{p}':>9s}" for t, p in tests))
        for label in rows:
            values = [ratios[f"{label}/{t}/P{p}"] for t, p in tests]
            print(
                f"  {label:38s}"
                + "".join(f"{'n/a' if v is None else f'{v:.2f}':>9s}" for v in values)
            )
    if data_dir and any(s in servers for s in SERVERS[8:]):
        print("\ndata dir at stop (median bytes, files):")
        for name, found in data_dir.items():
            size = int(statistics.median(f["bytes"] for f in found))
            files = int(statistics.median(f["files"] for f in found))
            print(f"  {name:20s} {_fmt_bytes(size):>10s} {files:4d} file(s)")
    if failures:
        print("\nfailures:")
        for f in failures:
            print(f"  {f}")
    if leftovers_seen:
        print(f"\nleftover processes (killed): {leftovers_seen}")
    return 1 if failures or leftovers_seen else 0


if __name__ == "__main__":
    sys.exit(main())
