"""The supervisor: creates the log, starts one pinned replica per core, keeps them alive.

Lifecycle
---------
1. Create the run directory (0700), the log (a sealed 0600 memfd) and one
   eventfd per replica.  Mark replicas ``0..n-1`` live at seq 1 *before* any
   starts, so no entry can be appended before a replica holds the log.
2. Start every replica as a fresh interpreter (spawn semantics) with the same
   ``PYTHONHASHSEED``, passing the fds.  Each pins itself to its core.
3. Watch each process through a pidfd.  When one dies unexpectedly: mark it
   dead in the log (it stops holding the log back), fill the slots it
   reserved but never published with no-ops, wake the others, and start it
   again as a *joining* replica, which loads a snapshot taken through the
   log and catches up.
4. On SIGTERM or SIGINT: ask every replica to drain and exit, wait, kill
   stragglers, and release everything.  The log is a memfd, so nothing of the
   service remains in ``/dev/shm`` however the supervisor stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from .._core._log import DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE, ReplicaState
from ._control import ask, replica_socket
from ._peercred import peer_refusal
from ._ports import claim_ports
from ._process import ReplicaConfig, load_service
from ._rundir import default_run_dir, make_run_dir
from ._shm import SharedLog

__all__ = ("Supervisor", "SupervisorConfig", "default_run_dir")

log = logging.getLogger("dominoes.supervisor")

#: How long replicas get to drain and exit on a clean stop before SIGKILL.
STOP_TIMEOUT: Final = 10.0
#: Pause before restarting a replica that died; doubles per quick death, capped.
RESTART_DELAY: Final = 0.2
RESTART_DELAY_MAX: Final = 5.0
#: A live replica that has not applied its next, published entry for this
#: long is stuck (a handler blocked, a frozen process): the supervisor kills
#: it, so it stops holding the log back, and restarts it from a snapshot.
#: Slow replicas that make progress are never killed; they cause backpressure.
STUCK_AFTER: Final = 5.0
WATCHDOG_EVERY: Final = 0.25
#: Deaths in a row before readiness after which the supervisor gives up.
MAX_START_FAILURES: Final = 5
#: Seconds between looks at a departed client's reservation while a live
#: producer announces the same seq (it clears within microseconds).
CLIENT_FILL_INTERVAL: Final = 0.005
#: Looks after which a still-ambiguous departed client is logged, and the
#: interval grows tenfold (the line stays out of use until it is resolved).
CLIENT_FILL_PATIENCE: Final = 200
#: A seed shared by every replica, so set and dict-of-str iteration orders match.
DEFAULT_HASH_SEED: Final = "20260429"
#: The collector's thresholds in a serving replica (see ``_process.tune_gc``):
#: a young collection every 20,000 net allocations instead of 700.
DEFAULT_GC_THRESHOLD: Final = (20_000, 20, 20)


#: Files of an earlier run in the run dir (snapshots, recovery points, their
#: temporaries, replica sockets a killed supervisor's replicas left behind).
_LEFTOVERS: Final = (
    "snapshot-*",
    "recovery-*",
    ".snapshot-*",
    ".recovery-*",
    "replica-*.sock",
    "blob-*",
)


@dataclass
class SupervisorConfig:
    target: str
    replicas: int | None = None
    #: loop policy name; None picks the default (uvloop if installed)
    loop: str | None = None
    host: str = "127.0.0.1"
    port: int = 7000
    capacity: int = DEFAULT_CAPACITY
    slot_size: int = DEFAULT_SLOT_SIZE
    run_dir: Path | None = None
    log_level: str = "WARNING"
    hash_seed: str = DEFAULT_HASH_SEED
    sys_path: list[str] = field(default_factory=list)
    #: aiomonitor base port (replica i on BASE + 10*i), or None for no monitor
    monitor_port: int | None = None
    #: digest comparison period in log positions (None: the service's own)
    digest_every: int | None = None
    #: seconds an apply or effect may take before it is logged as a stall
    stall_threshold: float = 0.1
    #: seconds a live replica may sit on a published entry before it is killed
    #: and restarted from a snapshot (None: never)
    stuck_after: float | None = STUCK_AFTER
    #: seconds an apply may run before the replica gives up on it (None: never)
    apply_timeout: float | None = 2.0
    #: seconds a replica may hold a full log without applying anything while
    #: another is ahead, before it is ejected (None: never)
    eject_after: float | None = 1.0
    #: entries between a replica's recovery points
    checkpoint_every: int = 65536
    #: snapshots and digests written by a forked child (False: inline)
    fork_snapshots: bool = True
    #: "linearizable" or "local" reads (None: the service's own setting)
    reads: str | None = None
    #: the collector's thresholds in every replica once it serves, after freezing
    #: its start-up heap (None: CPython's defaults, nothing frozen)
    gc_threshold: tuple[int, int, int] | None = DEFAULT_GC_THRESHOLD


@dataclass
class _Child:
    index: int
    core: int | None
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    ready_r: int = -1
    ready: bool = False
    restarts: int = 0
    started_at: float = 0.0
    delay: float = RESTART_DELAY
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: consecutive deaths before becoming ready
    failures: int = 0
    #: the watchdog's last view: cursor, and since when it has not moved
    seen_cursor: int = 0
    stuck_since: float | None = None
    #: its heartbeat, and since when it has not moved
    seen_beat: int = -1
    beat_since: float = 0.0
    #: since when its cursor has held a full log while another replica was ahead
    holding_since: float | None = None


class Supervisor:
    """Runs a service as N replica processes until told to stop."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.service = load_service(config.target)  # fail fast, before any process starts
        cores = sorted(os.sched_getaffinity(0))
        n = len(cores) if config.replicas is None else config.replicas
        if n < 1:
            raise ValueError("--replicas must be >= 1")
        self.n = n
        self.children = [_Child(i, cores[i % len(cores)]) for i in range(n)]
        self.run_dir = config.run_dir or default_run_dir(self.service.name)
        self.shared: SharedLog | None = None
        self.wake_fds: list[int] = []
        self._parent_r = self._parent_w = -1
        self._stopping = False
        self._stopped = asyncio.Event()
        self._control: asyncio.Server | None = None
        self._all_ready = asyncio.Event()
        self.deaths = 0
        self.poisoned = 0
        self._last_watch = time.monotonic()
        # (glob of a dead replica's blob files, the tail at its death)
        self._dead_blobs: list[tuple[str, int]] = []
        self.exit_code = 0
        # the watchdog's view of the first unpublished seq every reader waits at
        self._held_head: int | None = None
        self._held_since = 0.0
        # Local clients (dominoes.connect): client line -> its control connection,
        # and the lines of departed clients whose reservation is being recovered.
        self._clients: dict[int, asyncio.StreamWriter] = {}
        self._departing: set[int] = set()
        # Open control connections (clients hold theirs for their lifetime).
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    # --- start ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        # mkdir without following symlinks, then refuse a directory that is not
        # this uid's alone (another user's /tmp/dominoes-UID): see _rundir.
        make_run_dir(self.config.run_dir, self.service.name)
        sock = self.run_dir / "control.sock"
        if sock.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(sock))
            except OSError:
                sock.unlink()  # stale, from a supervisor that was killed
            else:
                raise RuntimeError(f"service {self.service.name!r} is already running ({sock})")
            finally:
                probe.close()
        # Refuse a port any other socket holds, and hold it while the service runs:
        # SO_REUSEPORT alone would let another service share it (see _ports).
        self._ports = claim_ports(
            self.config.host,
            self.config.port,
            tcp=self.service.tcp is not None,
            udp=self.service.udp is not None,
        )
        for pattern in _LEFTOVERS:
            for stale in self.run_dir.glob(pattern):
                stale.unlink(missing_ok=True)
        self.shared = SharedLog.create(
            self.service.name,
            capacity=self.config.capacity,
            slot_size=self.config.slot_size,
        )
        log_handle = self.shared.log()
        if self.n > log_handle.max_replicas:
            raise ValueError(f"at most {log_handle.max_replicas} replicas")
        for i in range(self.n):
            log_handle.join(i, cursor=1)
            log_handle.set_live(i)
        self._log = log_handle
        self.wake_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.n)]
        self._parent_r, self._parent_w = os.pipe()

    def _spawn(self, child: _Child, *, join: bool) -> None:
        assert self.shared is not None
        ready_r, ready_w = os.pipe()
        cfg = ReplicaConfig(
            target=self.config.target,
            index=child.index,
            replicas=self.n,
            core=child.core,
            loop=self.config.loop,
            host=self.config.host,
            port=self.config.port,
            run_dir=str(self.run_dir),
            log_fd=self.shared.fd,
            wake_fds=self.wake_fds,
            parent_fd=self._parent_r,
            ready_fd=ready_w,
            join=join,
            log_level=self.config.log_level,
            sys_path=self.config.sys_path,
            monitor_port=self.config.monitor_port,
            digest_every=self.config.digest_every,
            stall_threshold=self.config.stall_threshold,
            apply_timeout=self.config.apply_timeout,
            checkpoint_every=self.config.checkpoint_every,
            fork_snapshots=self.config.fork_snapshots,
            supervisor_pid=os.getpid(),
            reads=self.config.reads,
            gc_threshold=self.config.gc_threshold,
        )
        env = dict(os.environ, PYTHONHASHSEED=self.config.hash_seed)
        fds = [self.shared.fd, *self.wake_fds, self._parent_r, ready_w]
        proc = subprocess.Popen(
            # -P: no current directory at the front of sys.path (it would
            # shadow the installed dominoes with a checkout's sources).
            [
                sys.executable,
                "-P",
                "-m",
                "dominoes._runtime._process",
                msgspec.json.encode(cfg).decode(),
            ],
            pass_fds=fds,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(ready_w)
        child.proc = proc
        child.exited = asyncio.Event()
        child.ready = False
        child.ready_r = ready_r
        child.started_at = time.monotonic()
        child.pidfd = os.pidfd_open(proc.pid)
        loop = asyncio.get_running_loop()
        loop.add_reader(child.pidfd, self._on_exit, child)
        loop.add_reader(ready_r, self._on_ready, child)
        log.info(  # routine: the "serving on" line says when all are up
            "replica %d %s: pid %d on core %s",
            child.index,
            "joining" if join else "started",
            proc.pid,
            child.core,
        )

    def _on_ready(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.ready_r)
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(child.ready_r, 1)
        os.close(child.ready_r)
        child.ready_r = -1
        if data == b"R":
            child.ready = True
            child.failures = 0
            if all(c.ready for c in self.children) and not self._all_ready.is_set():
                self._all_ready.set()
                name, n, run_dir = self.service.name, self.n, self.run_dir
                if self.service.tcp is None and self.service.udp is None:
                    line = (
                        f"dominoes: {name} serving no network ingress with {n} replicas "
                        f"(no tcp handler or udp event: dominoes.connect reaches it; "
                        f"run dir {run_dir})"
                    )
                else:
                    where = f"{self.config.host}:{self.config.port}"
                    line = (
                        f"dominoes: {name} serving on {where} with {n} replicas (run dir {run_dir})"
                    )
                print(line, file=sys.stderr, flush=True)

    # --- deaths and restarts ---------------------------------------------------------------

    def _on_exit(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.pidfd)
        os.close(child.pidfd)
        child.pidfd = -1
        if child.ready_r >= 0:
            loop.remove_reader(child.ready_r)
            os.close(child.ready_r)
            child.ready_r = -1
        assert child.proc is not None
        code = child.proc.wait()
        was_ready = child.ready
        child.ready = False
        child.exited.set()
        if self._stopping:
            return
        if not was_ready:
            child.failures += 1
            if child.restarts == 0 or child.failures >= MAX_START_FAILURES:
                # It never served: a bad service, a port in use, an import error.
                # Restarting would only repeat the failure.
                log.error(
                    "replica %d exited with %s before it was ready; stopping (see its output)",
                    child.index,
                    code,
                )
                self.exit_code = 1
                self._log.mark_dead(child.index)
                self.stop()
                return
        self.deaths += 1
        log.warning("replica %d (pid %d) died with %s", child.index, child.proc.pid, code)
        # Its blobs (entries too large for the ring) go once every replica is past them.
        self._dead_blobs.append((f"blob-{child.index}-{child.proc.pid}-*", self._log.tail))
        self._log.mark_dead(child.index)
        self._fill(child.index, tries=20)
        if time.monotonic() - child.started_at > 10:
            child.delay = RESTART_DELAY
        else:
            child.delay = min(child.delay * 2, RESTART_DELAY_MAX)
        child.restarts += 1
        loop.call_later(child.delay, self._restart, child)

    def _fill(self, index: int, tries: int) -> None:
        """Fill the dead line's abandoned reservation, asking again while undecided."""
        filled = self._log.fill_abandoned(index)
        if filled:
            log.warning("line %d: filled %d abandoned slot(s) with no-ops", index, filled)
        self._wake_all()
        if self._log.recovery_pending(index):
            if tries > 0:
                asyncio.get_running_loop().call_later(0.005, self._fill, index, tries - 1)
            else:
                log.error("line %d: its reservation stays undecided", index)

    def _wake_all(self) -> None:
        for fd in self.wake_fds:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def _restart(self, child: _Child) -> None:
        if self._stopping:
            return
        live = self._log.replicas_in(frozenset({ReplicaState.LIVE}))
        if not any(i < self.n for i in live):
            # Every replica is gone: no state is left to restore from.  Say so
            # and exit non-zero, so that a service manager restarts (or
            # alerts); exiting 0 would read as a clean stop.
            cursor = self._log.cursor(child.index)
            line = (
                f"dominoes: every replica of {self.service.name!r} died; the last one at seq "
                f"{cursor}; no live state is left to restart from, stopping with status 1"
            )
            log.error("%s", line)
            print(line, file=sys.stderr, flush=True)
            self.exit_code = 1
            self.stop()
            return
        if self._log.recovery_pending(child.index):
            self._fill(child.index, tries=20)
            asyncio.get_running_loop().call_later(0.1, self._restart, child)
            return
        self._spawn(child, join=True)

    # --- control socket ----------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_line: int | None = None  # set by a "connect": the connection is a local client
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            refusal = self._peer_refusal(writer)
            if refusal is not None:
                # Read the request first, so the peer's write cannot fail with
                # EPIPE before it has read why it is refused.
                await reader.readline()
                writer.write(json.dumps({"error": refusal}).encode() + b"\n")
                await writer.drain()
                return
            while line := await reader.readline():
                fds: list[int] = []
                try:
                    request = json.loads(line)
                    if isinstance(request, dict) and request.get("op") == "connect":
                        if client_line is not None:
                            raise ValueError("this connection is already a local client")
                        client_line = self._new_client(writer)
                        reply, fds = self._client_welcome(client_line)
                    elif isinstance(request, dict) and request.get("op") == "stats":
                        reply = await self.stats()
                    else:
                        reply = self.handle_control(request)
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                data = json.dumps(reply).encode() + b"\n"
                if fds:
                    await _send_with_fds(writer, data, fds)
                else:
                    writer.write(data)
                    await writer.drain()
        except OSError as exc:  # the peer went away mid-reply
            log.info("control connection lost: %s", exc)
        finally:
            writer.close()
            if task is not None:
                self._connections.pop(task, None)
            if client_line is not None:
                self._client_gone(client_line)

    # --- local clients ------------------------------------------------------------------------

    def _peer_refusal(self, writer: asyncio.StreamWriter) -> str | None:
        """Why the peer of a control connection is refused (another uid), or None."""
        return peer_refusal(
            writer.get_extra_info("socket"), f"service {self.service.name!r}", "control"
        )

    def _new_client(self, writer: asyncio.StreamWriter) -> int:
        """Give a connecting local client a free client line (above the replicas)."""
        if self._stopping or self.shared is None:
            raise RuntimeError(f"service {self.service.name!r} is stopping")
        top = self._log.max_replicas
        for line in range(self.n, top):
            if line not in self._clients and line not in self._departing:
                self._clients[line] = writer
                log.info("local client connected on line %d", line)
                return line
        raise RuntimeError(
            f"service {self.service.name!r} has no free client line "
            f"(at most {top - self.n} local clients at once)"
        )

    def _client_welcome(self, line: int) -> tuple[dict[str, Any], list[int]]:
        """The reply to a connect, and the fds sent with it (the log, every eventfd)."""
        assert self.shared is not None
        reply = {
            "line": line,
            "replicas": self.n,
            "service": self.service.name,
            "events": sorted(self.service.events()),
            "max_entry_bytes": self._log.max_entry_bytes,
        }
        return reply, [self.shared.fd, *self.wake_fds]

    def _client_gone(self, line: int) -> None:
        """A client's control connection closed: it exited or died.  Recover its line.

        The process is gone (its last fd closed), so it can no longer touch the
        log.  The line is marked dead while it is recovered, so that its
        intent no longer counts as a live producer's in other recoveries, and
        becomes absent (free) once nothing is left to decide.
        """
        self._clients.pop(line, None)
        if self.shared is None:
            return  # the service is gone: the log with it
        self._departing.add(line)
        self._log.mark_dead(line)
        self._recover_client(line, 0)

    def _recover_client(self, line: int, attempt: int) -> None:
        if self.shared is None:
            self._departing.discard(line)
            return
        filled = self._log.fill_abandoned(line)
        if filled:
            log.warning("client line %d: filled %d abandoned slot(s) with no-ops", line, filled)
            self._wake_all()
        if not self._log.recovery_pending(line):
            self._log.leave(line)
            self._departing.discard(line)
            log.info("local client on line %d left", line)
            return
        if attempt == CLIENT_FILL_PATIENCE:
            log.warning(
                "client line %d: a live producer still announces its reserved seq; waiting", line
            )
        delay = CLIENT_FILL_INTERVAL * (10 if attempt >= CLIENT_FILL_PATIENCE else 1)
        asyncio.get_running_loop().call_later(delay, self._recover_client, line, attempt + 1)

    def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        raise ValueError(f"unknown op {op!r}")

    def _summary(self, child: _Child) -> dict[str, Any]:
        """What the supervisor itself knows of one replica."""
        return {
            "index": child.index,
            "pid": child.proc.pid if child.proc else None,
            "core": child.core,
            "ready": child.ready,
            "restarts": child.restarts,
            "state": ReplicaState.NAMES[self._log.state(child.index)],
        }

    async def stats(self) -> dict[str, Any]:
        """Every replica's statistics (asked over its control socket) and the log's."""

        async def one(child: _Child) -> dict[str, Any]:
            entry = self._summary(child)
            if child.ready:
                try:
                    entry["report"] = await ask(
                        replica_socket(self.run_dir, child.index), {"op": "stats"}
                    )
                except (OSError, TimeoutError) as exc:
                    entry["error"] = f"no answer: {exc or type(exc).__name__}"
            return entry

        replicas = await asyncio.gather(*(one(c) for c in self.children))
        return {
            "service": self.service.name,
            "supervisor": {"pid": os.getpid(), "replicas": self.n, "run_dir": str(self.run_dir)},
            "deaths": self.deaths,
            "poisoned": self.poisoned,
            "replicas": replicas,
            "log": msgspec.to_builtins(self._log.statistics()),
        }

    def status(self) -> dict[str, Any]:
        stats = self._log.statistics()
        return {
            "service": self.service.name,
            "replicas": [
                self._summary(c) | {"cursor": self._log.cursor(c.index)} for c in self.children
            ],
            "log": msgspec.to_builtins(stats),
            "clients": sorted(self._clients),
        }

    # --- run / stop ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Outside the try: a failed _prepare (the service is already running,
        # a bad run dir, a port in use) must not clean up another run's files.
        self._prepare()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            sock = self.run_dir / "control.sock"
            self._control = await asyncio.start_unix_server(self._on_control, str(sock))
            os.chmod(sock, 0o600)
            for child in self.children:
                self._spawn(child, join=False)
            loop.call_later(WATCHDOG_EVERY, self._watchdog)
            await self._stopped.wait()
            await self._shutdown()
        finally:
            self._release()
            self._ports.close()
        return self.exit_code

    def _watchdog(self) -> None:
        """Kill live replicas that sit on a published entry for ``stuck_after`` seconds.

        A replica that does not apply holds the log back; once the log is full,
        every writer waits on it.  Waiting on a slow replica is backpressure;
        waiting forever on a stuck one would stall the service (invariant 7,
        docs/design/invariants.md), so a stuck one is treated as dead.
        """
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        loop.call_later(WATCHDOG_EVERY, self._watchdog)
        waiting = self._judge_poison()
        if self._dead_blobs:
            low = self._log.slowest_cursor()
            for pattern, tail in [d for d in self._dead_blobs if d[1] <= low]:
                self._dead_blobs.remove((pattern, tail))
                for path in self.run_dir.glob(pattern):
                    path.unlink(missing_ok=True)
        limit = self.config.stuck_after
        if limit is None:
            return
        now = time.monotonic()
        if now - self._last_watch > 4 * WATCHDOG_EVERY:
            # The supervisor itself did not run for a while (a paused VM, an
            # overloaded host): what it measured since is unreliable, so
            # every clock restarts rather than blame a replica for the gap.
            for c in self.children:
                c.stuck_since = c.holding_since = None
                c.beat_since = now
        self._last_watch = now
        self._watch_unpublished(now, limit)
        self._watch_liveness(now, limit)
        for c in self.children:
            if not c.ready or c.proc is None or self._log.state(c.index) != ReplicaState.LIVE:
                c.stuck_since = None
                continue
            cursor = self._log.cursor(c.index)
            if cursor != c.seen_cursor or not self._log.published(cursor) or c.index in waiting:
                c.seen_cursor, c.stuck_since = cursor, None
                continue
            if c.stuck_since is None:
                c.stuck_since = now
            elif now - c.stuck_since >= limit:
                log.error(
                    "replica %d stuck seq=%d for %.1fs with lag %d; killing it so the others "
                    "go on (it restarts from a snapshot)",
                    c.index,
                    cursor,
                    now - c.stuck_since,
                    self._log.tail - cursor,
                )
                c.stuck_since = None
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()

    def _watch_liveness(self, now: float, limit: float) -> None:
        """Kill a replica that stopped serving, or that alone holds a full log.

        * **No heartbeat.**  A replica's event loop bumps its heartbeat word
          every few milliseconds.  One that has not moved for ``stuck_after``
          seconds means a loop that no longer runs (SIGSTOP, a blocked
          handler, a frozen process): its clients and its accept queue wait
          in vain, even when no write exposes it.
        * **Holding a full log.**  A replica whose cursor has not moved for
          ``eject_after`` seconds while the log is (nearly) full and another
          live replica is ahead of it stalls every writer of the service.
          It is ejected and restarts from a snapshot, so no write waits on it
          for longer than that bound.  A slow replica that makes progress is
          never ejected; it causes backpressure.

        Either way only while another live replica is serving (fresh
        heartbeat): killing the last one would lose the state.
        """
        log_ = self._log
        live = [
            c
            for c in self.children
            if c.ready and c.proc is not None and log_.state(c.index) == ReplicaState.LIVE
        ]
        for c in live:
            beat = log_.heartbeat(c.index)
            if beat != c.seen_beat:
                c.seen_beat, c.beat_since = beat, now
        fresh = {c.index for c in live if now - c.beat_since < limit}
        stats = log_.statistics()
        nearly_full = stats.free_slots < max(1, stats.capacity // 16)
        cursors = {c.index: log_.cursor(c.index) for c in live}
        eject = self.config.eject_after
        for c in live:
            others_fresh = bool(fresh - {c.index})
            if c.index not in fresh and others_fresh:
                self._kill(c, f"stopped serving: no heartbeat for {now - c.beat_since:.1f}s")
                continue
            ahead = any(cursors[o] > cursors[c.index] for o in cursors if o != c.index)
            holding = nearly_full and ahead and stats.slowest_replica == c.index
            if not holding or cursors[c.index] != c.seen_cursor:
                c.holding_since = None if not holding else now
                continue
            if c.holding_since is None:
                c.holding_since = now
            elif eject is not None and now - c.holding_since >= eject and others_fresh:
                self._kill(
                    c,
                    f"held the full log for {now - c.holding_since:.1f}s at seq "
                    f"{cursors[c.index]} while others were ahead (ejected; "
                    "--eject-after bounds how long writers wait on one replica)",
                )

    def _kill(self, child: _Child, why: str) -> None:
        log.error("replica %d %s; killing it (it restarts from a snapshot)", child.index, why)
        child.holding_since = child.stuck_since = None
        child.beat_since = time.monotonic()
        if child.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()

    def _judge_poison(self) -> set[int]:
        """Declare a poison entry when every live replica gave up on the same seq.

        A replica that gave up on an apply (it ran past ``--apply-timeout``)
        rolled back to just before the entry and announces the seq in its log
        line.  If another replica applied the entry, it is not poison: the one
        that gave up applies it again by itself.  If every live replica gave
        up on it, nobody can apply it: the supervisor declares it poison, and
        each replica applies it as an error (invariant 9,
        docs/design/invariants.md).  Returns the
        replicas legitimately waiting for this verdict (the stuck-replica
        watchdog spares them).
        """
        log_ = self._log
        live = [
            c.index for c in self.children if c.ready and log_.state(c.index) == ReplicaState.LIVE
        ]
        if not live:
            return set()
        cursors = {i: log_.cursor(i) for i in live}
        stuck = {i: log_.stuck(i) for i in live}
        waiting = {i for i in live if stuck[i] and stuck[i] == cursors[i]}
        if not waiting:
            return waiting
        seqs = {stuck[i] for i in waiting}
        if any(cursors[i] > min(seqs) for i in live):
            return {i for i in waiting if not any(cursors[j] > stuck[i] for j in live)}
        if len(waiting) == len(live) and len(seqs) == 1:
            seq = seqs.pop()
            if log_.poisoned != seq:
                log_.declare_poisoned(seq)
                self.poisoned += 1
                what = self._describe(seq)
                # The record first: whoever reads the log line finds it written.
                with contextlib.suppress(OSError), open(self.run_dir / "poisoned.log", "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} seq={seq} {what}\n")
                log.error(
                    "POISON seq=%d (%s): every live replica (%s) gave up applying it; "
                    "each applies it as an error and goes on from the state before it",
                    seq,
                    what,
                    ",".join(map(str, sorted(live))),
                )
                self._wake_all()
        return waiting

    def _describe(self, seq: int) -> str:
        """The events of the entry at ``seq``, for the poison record."""
        from .._core._codec import decode

        got = self._log.read(seq)
        if got is None:
            return "unreadable"
        try:
            entry = decode(got[2], seq)
        except Exception as exc:  # noqa: BLE001 - a record, not a decision
            return f"undecodable: {exc}"
        calls = getattr(entry, "calls", None) or [entry]
        names = sorted({getattr(c, "event", type(c).__name__) for c in calls})
        return f"{type(entry).__name__} of {', '.join(names)}"

    def _watch_unpublished(self, now: float, limit: float) -> None:
        """Kill a replica that holds a reservation unpublished for ``limit`` seconds.

        Every reader waits at the first unpublished seq.  Its producer never
        waits between reserve and publish, so a head unpublished this long
        means the producer is frozen or wedged: a replica is killed (SIGKILL:
        it can never write that slot late), and its death fills the slot.  A
        local client cannot be killed safely from here; it is reported.
        """
        stats = self._log.statistics()
        head = stats.slowest_cursor
        if head >= stats.tail or self._log.published(head):
            self._held_head = None
            return
        if self._held_head != head:
            self._held_head, self._held_since = head, now
            return
        if now - self._held_since < limit:
            return
        self._held_since = now  # act (or report) once per period
        line = self._log.announcer(head)
        child = self.children[line] if line is not None and line < self.n else None
        if child is not None and child.proc is not None:
            log.error(
                "replica %d reserved seq=%d and has not published it for %.1fs; killing it so "
                "the others go on",
                line,
                head,
                limit,
            )
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        else:
            log.error(
                "seq=%d has been reserved and unpublished for %.1fs (line %s): every replica "
                "waits on it",
                head,
                limit,
                line,
            )

    def stop(self) -> None:
        """Begin a clean stop (idempotent)."""
        if not self._stopping:
            self._stopping = True
            log.info("stopping: draining %d replicas", self.n)
            self._stopped.set()

    async def _shutdown(self) -> None:
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        waits = [c.exited.wait() for c in self.children if c.proc is not None and c.pidfd >= 0]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.gather(*waits)
        for c in self.children:
            if c.proc is None:
                continue
            if c.proc.poll() is None:
                log.error("replica %d did not stop in %.0fs; killing it", c.index, STOP_TIMEOUT)
                c.proc.kill()
                c.proc.wait()
        if self._control is not None:
            self._control.close()
        # Close every control connection and let its handler finish, rather
        # than leave asyncio.run to cancel it (3.11's stream callback then logs
        # a CancelledError traceback); local clients learn the service stopped.
        for writer in list(self._connections.values()):
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)

    def _release(self) -> None:
        loop = asyncio.get_running_loop()
        for c in self.children:
            for fd in (c.pidfd, c.ready_r):
                if fd >= 0:
                    loop.remove_reader(fd)
                    os.close(fd)
            c.pidfd = c.ready_r = -1
        for fd in (*self.wake_fds, self._parent_r, self._parent_w):
            if fd >= 0:
                os.close(fd)
        self.wake_fds = []
        self._parent_r = self._parent_w = -1
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "control.sock").unlink()
        for pattern in _LEFTOVERS:
            for stale in self.run_dir.glob(pattern):
                stale.unlink(missing_ok=True)


async def _send_with_fds(writer: asyncio.StreamWriter, data: bytes, fds: list[int]) -> None:
    """Write ``data`` with ``fds`` attached (SCM_RIGHTS) on a stream's socket.

    asyncio transports cannot pass fds, so this goes through a dup of the
    transport's socket, once the transport has flushed what it buffered (the
    bytes stay in order).
    """
    transport = writer.transport
    for _ in range(1000):
        if not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.001)
    else:
        raise TimeoutError("the control connection does not drain")
    sock: socket.socket = writer.get_extra_info("socket").dup()
    try:
        for _ in range(1000):
            try:
                sent = socket.send_fds(sock, [data], fds)
                break
            except (BlockingIOError, InterruptedError):
                await asyncio.sleep(0.001)
        else:
            raise TimeoutError("the control connection does not take the reply")
    finally:
        sock.close()
    if sent < len(data):
        writer.write(data[sent:])
        await writer.drain()


def run(config: SupervisorConfig) -> int:
    """Run the supervisor on a stdlib asyncio loop until it stops."""
    return asyncio.run(Supervisor(config).run())
