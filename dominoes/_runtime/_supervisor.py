"""The supervisor: creates the log, starts one pinned replica per core, keeps them alive.

Lifecycle
---------
1. Create the run directory (0700), the log (through the backend ``--log``
   names, ``shm`` by default: a sealed 0600 memfd) and one eventfd per
   replica.  Mark replicas ``0..n-1`` live at seq 1 *before* any
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

The rest is in parts the supervisor owns: its ``control.sock``
(``_control.ControlServer``), the lines it lends local clients
(``_leases.ClientLeases``) and the watchdog that kills stuck, frozen and
poisoned replicas (``_watchdog.Watchdog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
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

from .._core._backend import LogHost, SupervisedLog
from .._core._log import (
    D_ACKED,
    D_POLICY,
    D_SNAP_SEQ,
    D_SNAP_TIME,
    D_SYNCED,
    D_WRITER,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_SLOT_SIZE,
    FSYNC_POLICIES,
    ReplicaState,
)
from .._core._service import parse_options
from ._asgi import HttpOptions
from ._bridge import Fetched
from ._bridgeproc import BridgeProcess, fetch_snapshot
from ._control import ControlServer
from ._durable import DEFAULT_SEGMENT_BYTES, Layout, Recovery, check_layout, lock, recover
from ._leases import ClientLeases
from ._logs import DEFAULT as DEFAULT_LOG
from ._logs import for_processes
from ._ports import claim_ports
from ._process import ReplicaConfig, load_service
from ._rundir import default_run_dir, make_run_dir
from ._watchdog import STUCK_AFTER, Watchdog
from ._writerproc import WriterProcess

__all__ = ("Child", "Supervisor", "SupervisorConfig", "default_run_dir")

log = logging.getLogger("dominoes.supervisor")

#: How long replicas get to drain and exit on a clean stop before SIGKILL.
STOP_TIMEOUT: Final = 10.0
#: Pause before restarting a replica that died; doubles per quick death, capped.
RESTART_DELAY: Final = 0.2
RESTART_DELAY_MAX: Final = 5.0
#: Deaths in a row before readiness after which the supervisor gives up.
MAX_START_FAILURES: Final = 5
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
    # --log nats://: the bridge's counters, snapshots not uploaded or loaded
    "bridge.json",
    "bridge.tmp",
    "snapshots/snapshot-*",
    "snapshots/.snapshot-*",
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
    #: the service's own options from the command line (name -> text; None: a flag)
    service_options: dict[str, str | None] = field(default_factory=dict)
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
    #: the log backend, by its name in the ``dominoes.logs`` entry-point group
    log: str = DEFAULT_LOG
    #: the durable log's directory (None: state lives in memory only)
    durable: Path | None = None
    #: the fsync policy: always, everysec or no
    fsync: str = "everysec"
    #: a durable snapshot after this many entries or seconds (0: not on that count)
    snapshot_entries: int = 1_000_000
    snapshot_seconds: float = 600.0
    #: a segment file is closed and the next begun past this size
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    #: (tests) a file the writer appends ``path size`` to after every fsync
    fsync_trace: str = ""
    #: the JetStream stream that is the log (``log`` is ``nats://...``)
    stream: str | None = None
    #: copies of the stream the NATS servers keep, when the bridge creates it
    stream_replicas: int = 1
    #: seconds the stream may fail every request before updates and
    #: linearizable reads are refused (``LogUnavailableError``)
    unreachable_after: float = 15.0
    #: how replicas serve the service's ASGI app (limits, access log, grace)
    http: HttpOptions = field(default_factory=HttpOptions)


@dataclass
class Child:
    """One replica process, as the supervisor and its watchdog see it."""

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
    #: since when its cursor has held a full log while another replica was ahead, and at what
    holding_since: float | None = None
    holding_cursor: int = 0


class Supervisor:
    """Runs a service as N replica processes until told to stop."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.service = load_service(config.target)  # fail fast, before any process starts
        # the service's options: refused here, before any replica starts
        self.options = parse_options(
            self.service.options, config.service_options, service=self.service.name
        )
        self.service = self.service.configured(self.options)
        if self.service.asgi is not None and importlib.util.find_spec("uvicorn") is None:
            raise ImportError(
                f"service {self.service.name!r} serves an ASGI app, which needs uvicorn: "
                "pip install 'dominoes[web]'"
            )
        # the log backend, by name: an unknown one, or one a process cannot share, fails here
        self.factory = for_processes(config.log, service=self.service.name)
        #: the log is a JetStream stream this machine shares (``--log nats://``)
        self.bridged = config.log.startswith("nats://")
        if self.bridged and config.stream is None:
            raise ValueError("--log nats://... needs --stream NAME: the stream that is the log")
        if self.bridged and config.durable is not None:
            raise ValueError(
                "--durable and --log nats://... do not go together: the stream keeps the "
                "log on the NATS servers' disks"
            )
        partitioned = [c.name for c in self.service.components if type(c).partition is not None]
        if partitioned and self.bridged:
            raise ValueError(
                f"service {self.service.name!r} has partitioned components "
                f"({', '.join(partitioned)}), which run without --log nats:// for now: a "
                "partition is held by some replicas only, and the machines of a shared log "
                "each restore one machine's snapshot (--durable DIR keeps them on disk)"
            )
        #: the service has partitioned components: each replica snapshots its own
        self.partitioned = bool(partitioned)
        cores = sorted(os.sched_getaffinity(0))
        n = len(cores) if config.replicas is None else config.replicas
        if n < 1:
            raise ValueError("--replicas must be >= 1")
        self.n = n
        self.children = [Child(i, cores[i % len(cores)]) for i in range(n)]
        self.run_dir = config.run_dir or default_run_dir(self.service.name)
        self.host: LogHost | None = None
        self.wake_fds: list[int] = []
        self._parent_r = self._parent_w = -1
        self._stopping = False
        self._stopped = asyncio.Event()
        self._control = ControlServer(self)
        self._all_ready = asyncio.Event()
        self.deaths = 0
        self.exit_code = 0
        #: the durable log's writer (None: not durable)
        self.writer: WriterProcess | None = None
        self.recovery: Recovery | None = None
        #: the bridge to the stream (``--log nats://``; None otherwise)
        self.bridge: BridgeProcess | None = None
        #: header lines that hold the log: the replicas', and the writer's after them
        self.lines = self.n + (config.durable is not None)
        #: eventfds: one per holding line, and the bridge's after the replicas
        self.wake_count = self.lines + self.bridged
        self.log_fds: list[int] = []
        #: where a machine sharing a stream starts (``_recover``)
        self.fetched = Fetched()
        self._recovery_began = 0.0
        self._lock_fd = -1

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
            tcp=self.service.tcp is not None or self.service.asgi is not None,
            udp=self.service.udp is not None,
        )
        self._remove_leftovers()
        first = self._recover()
        handles = self._open_log(first)
        # one eventfd per holding line: each replica's, and the log writer's after them
        self.wake_fds = [
            os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.wake_count)
        ]
        self._parent_r, self._parent_w = os.pipe()
        self.leases = ClientLeases(
            service=self.service,
            replicas=self.n,
            log=self.log,
            fds=[*handles, *self.wake_fds[: self.n]],
            first_line=self.lines,
            refuse=(
                f"service {self.service.name!r} shares its log across machines "
                f"(--log nats://): local clients (dominoes.connect) cannot attach to it yet; "
                f"use its network ingress"
                if self.bridged
                else ""
            ),
            wake=self._wake_all,
            stopping=lambda: self._stopping,
        )
        self.watchdog = Watchdog(
            children=self.children,
            log=self.log,
            run_dir=self.run_dir,
            stuck_after=self.config.stuck_after,
            eject_after=self.config.eject_after,
            wake=self._wake_all,
            stopping=lambda: self._stopping,
        )

    def _remove_leftovers(self) -> None:
        """Remove an earlier run's files from the run dir (``_LEFTOVERS``)."""
        for pattern in _LEFTOVERS:
            for stale in self.run_dir.glob(pattern):
                stale.unlink(missing_ok=True)

    def _recover(self) -> int:
        """With ``--durable``: lock and check the data directory; the seq the log goes on at.

        With ``--log nats://``: the newest snapshot in the stream's Object
        Store, fetched into the run dir; the ring starts at its seq.
        """
        if self.bridged:
            self.fetched = fetch_snapshot(self)
            return self.fetched.seq or 1
        data_dir = self.config.durable
        if data_dir is None:
            return 1
        self._lock_fd = lock(data_dir)
        self._recovery_began = time.monotonic()
        check_layout(data_dir, Layout(self.n if self.partitioned else None))
        self.recovery = recover(data_dir, self.n if self.partitioned else None)
        return self.recovery.next_seq

    def _open_log(self, first: int = 1) -> list[int]:
        """Create the log (``--log``), every replica live at ``first``; the fds replicas inherit."""
        # One header line per participant: the replicas, the log writer, then local clients.
        host = self.factory.create(
            capacity=self.config.capacity,
            slot_size=self.config.slot_size,
            replicas=DEFAULT_MAX_REPLICAS,
            max_entry_slots=None,
            first=first,
        )
        try:
            log_handle, handles = host.log, host.handles()
            if not isinstance(log_handle, SupervisedLog) or len(handles) != 1 + self.bridged:
                # What the watchdog and the recovery of dead lines call, and
                # what _process passes a replica (one inherited fd).
                raise RuntimeError(
                    f"log backend {self.config.log!r} cannot serve replica processes: the "
                    f"supervisor needs a SupervisedLog and the fds to pass (it gives "
                    f"{type(log_handle).__name__} and {len(handles)} fds)"
                )
            if self.n > log_handle.max_replicas:
                raise ValueError(f"at most {log_handle.max_replicas} replicas")
        except BaseException:
            host.close()
            raise
        self.host, self.log, self._log_fd = host, log_handle, handles[0]
        self.log_fds = list(handles)
        for i in range(self.lines):  # the writer holds the log too
            log_handle.join(i, cursor=first)
            log_handle.set_live(i)
        if self.config.durable is not None:
            self._publish_durability(log_handle)
        if self.bridged:
            host.prepare(self.n)  # type: ignore[attr-defined]
            if self.fetched.seq:  # no snapshot until the state moves past this one
                log_handle.set_durability_word(D_SNAP_SEQ, self.fetched.seq)
        return handles

    def bridge_start(self) -> dict[str, Any]:
        """Where the bridge begins to read the stream: after the snapshot the replicas load."""
        fetched = self.fetched
        snapshots = self.run_dir / "snapshots"
        snapshots.mkdir(mode=0o700, exist_ok=True)
        if not fetched.seq:
            return {
                "snapshot_dir": str(snapshots),
                "run_dir": str(self.run_dir),
                "start_seq": max(fetched.first, 1),
            }
        return {
            "snapshot_dir": str(snapshots),
            "run_dir": str(self.run_dir),
            "snapshot_seq": fetched.seq,
            "start_seq": fetched.message,
            "skip": fetched.index + 1,
        }

    def _publish_durability(self, log_handle: SupervisedLog) -> None:
        recovery = self.recovery
        assert recovery is not None
        log_handle.set_durability_word(D_WRITER, self.n + 1)
        log_handle.set_durability_word(D_POLICY, FSYNC_POLICIES[self.config.fsync])
        log_handle.set_durability_word(D_ACKED, recovery.next_seq)
        log_handle.set_durability_word(D_SYNCED, recovery.next_seq)
        found = recovery.own or ((recovery.snapshot, recovery.start),)
        newest = max(((start, snap) for snap, start in found if snap is not None), default=None)
        if newest is not None:
            log_handle.set_durability_word(D_SNAP_SEQ, newest[0])
            log_handle.set_durability_word(D_SNAP_TIME, int(newest[1].stat().st_mtime))

    def _spawn(self, child: Child, *, join: bool) -> None:
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
            log_fd=self._log_fd,
            log=self.config.log,
            log_fds=self.log_fds if self.bridged else [],
            wake_fds=self.wake_fds,
            parent_fd=self._parent_r,
            ready_fd=ready_w,
            join=join,
            log_level=self.config.log_level,
            sys_path=self.config.sys_path,
            service_options=self.config.service_options,
            monitor_port=self.config.monitor_port,
            digest_every=self.config.digest_every,
            stall_threshold=self.config.stall_threshold,
            apply_timeout=self.config.apply_timeout,
            checkpoint_every=self.config.checkpoint_every,
            fork_snapshots=self.config.fork_snapshots,
            supervisor_pid=os.getpid(),
            reads=self.config.reads,
            gc_threshold=self.config.gc_threshold,
            http=self.config.http,
            **self._durable_config(child.index),
        )
        env = dict(os.environ, PYTHONHASHSEED=self.config.hash_seed)
        fds = [*self.log_fds, *self.wake_fds, self._parent_r, ready_w]
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

    def _durable_config(self, index: int) -> dict[str, Any]:
        """What replica ``index`` needs of ``--durable`` (restoring: only at the first start)."""
        cfg, recovery = self.config, self.recovery
        if self.bridged:
            fetched = self.fetched
            return {
                "durable_dir": str(self.run_dir / "snapshots"),
                "snapshot_entries": cfg.snapshot_entries,
                "snapshot_seconds": cfg.snapshot_seconds,
                "shared_snapshots": True,
                "restore_snapshot": fetched.path,
                "restore_start": fetched.seq or 1,
                "restore_next": fetched.seq or 1,
            }
        if cfg.durable is None or recovery is None:
            return {}
        snapshot, start = recovery.of(index)
        return {
            "durable_dir": str(cfg.durable),
            "snapshot_entries": cfg.snapshot_entries,
            "snapshot_seconds": cfg.snapshot_seconds,
            "restore_snapshot": str(snapshot or ""),
            "restore_start": start,
            "restore_next": recovery.next_seq,
            "restore_poisoned": list(recovery.poisoned),
        }

    def _on_ready(self, child: Child) -> None:
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
                if self.service.asgi is not None:
                    where = f"http://{self.config.host}:{self.config.port}"
                    line = (
                        f"dominoes: {name} serving on {where} with {n} replicas "
                        f"(its ASGI app; run dir {run_dir})"
                    )
                elif self.service.serves is not None:
                    serves = self.service.serves
                    if not isinstance(serves, str):
                        serves = serves(self.options, self.config.host, self.config.port)
                    line = (
                        f"dominoes: {name} serving on {serves} with {n} replicas "
                        f"(run dir {run_dir})"
                    )
                elif self.service.tcp is None and self.service.udp is None:
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
                if self.recovery is not None:
                    print(self._restored_line(), file=sys.stderr, flush=True)
                print(line, file=sys.stderr, flush=True)

    def _restored_line(self) -> str:
        r = self.recovery
        assert r is not None
        assert self.config.durable is not None
        took = time.monotonic() - self._recovery_began
        if any(snap is not None for snap, _ in r.own):
            base = (
                "from each replica's own snapshot (seqs "
                + ", ".join(str(start) if snap is not None else "none: 1" for snap, start in r.own)
                + ")"
            )
        else:
            base = f"from the snapshot at seq {r.start}" if r.snapshot is not None else "from seq 1"
        return (
            f"dominoes: {self.service.name}: durable log {self.config.durable} "
            f"(fsync {self.config.fsync}): replayed {r.entries} entries {base} in {took:.2f} s; "
            f"the log goes on at seq {r.next_seq}"
        )

    # --- deaths and restarts ---------------------------------------------------------------

    def _on_exit(self, child: Child) -> None:
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
                self.log.mark_dead(child.index)
                self.stop()
                return
        self.deaths += 1
        log.warning("replica %d (pid %d) died with %s", child.index, child.proc.pid, code)
        # Its blobs (entries too large for the ring) go once every replica is past them.
        self.watchdog.remove_blobs_later(f"blob-{child.index}-{child.proc.pid}-*", self.log.tail)
        self.log.mark_dead(child.index)
        self._fill(child.index, tries=20)
        if time.monotonic() - child.started_at > 10:
            child.delay = RESTART_DELAY
        else:
            child.delay = min(child.delay * 2, RESTART_DELAY_MAX)
        child.restarts += 1
        loop.call_later(child.delay, self._restart, child)

    def _fill(self, index: int, tries: int) -> None:
        """Fill the dead line's abandoned reservation, asking again while undecided."""
        filled = self.log.fill_abandoned(index)
        if filled:
            log.warning("line %d: filled %d abandoned slot(s) with no-ops", index, filled)
        self._wake_all()
        if self.log.recovery_pending(index):
            if tries > 0:
                asyncio.get_running_loop().call_later(0.005, self._fill, index, tries - 1)
            else:
                log.error("line %d: its reservation stays undecided", index)

    def _wake_all(self) -> None:
        for fd in self.wake_fds:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def _restart(self, child: Child) -> None:
        if self._stopping:
            return
        live = self.log.replicas_in(frozenset({ReplicaState.LIVE}))
        if not any(i < self.n for i in live):
            # Every replica is gone: no state is left to restore from.  Say so
            # and exit non-zero, so that a service manager restarts (or
            # alerts); exiting 0 would read as a clean stop.
            cursor = self.log.cursor(child.index)
            line = (
                f"dominoes: every replica of {self.service.name!r} died; the last one at seq "
                f"{cursor}; no live state is left to restart from, stopping with status 1"
            )
            log.error("%s", line)
            print(line, file=sys.stderr, flush=True)
            self.exit_code = 1
            self.stop()
            return
        if self.log.recovery_pending(child.index):
            self._fill(child.index, tries=20)
            asyncio.get_running_loop().call_later(0.1, self._restart, child)
            return
        self._spawn(child, join=True)

    # --- run / stop ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Outside the try: a failed _prepare (the service is already running,
        # a bad run dir, a port in use) must not clean up another run's files.
        self._prepare()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self._control.start(self.run_dir / "control.sock")
            if self.config.durable is not None:
                self.writer = WriterProcess(self)
                await self.writer.start()
            if self.bridged:
                self.bridge = BridgeProcess(self)
                await self.bridge.start()
            for child in self.children:
                self._spawn(child, join=False)
            self.watchdog.start()
            await self._stopped.wait()
            await self._shutdown()
        finally:
            self._release()
            self._ports.close()
        return self.exit_code

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
        # a web app's requests in flight get their grace period before the drain
        limit = STOP_TIMEOUT + (self.config.http.graceful_timeout if self.service.asgi else 0)
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await asyncio.gather(*waits)
        for c in self.children:
            if c.proc is None:
                continue
            if c.proc.poll() is None:
                log.error("replica %d did not stop in %.0fs; killing it", c.index, limit)
                c.proc.kill()
                c.proc.wait()
        if self.writer is not None:  # last: it writes what the replicas left, then fsyncs
            await self.writer.stop()
        if self.bridge is not None:  # last: it sends what the replicas left in the outbox
            await self.bridge.stop()
        await self._control.close()

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
        if self.host is not None:
            self.leases.close()
            self.host.close()
            self.host = None
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "control.sock").unlink()
        self._remove_leftovers()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def run(config: SupervisorConfig) -> int:
    """Run the supervisor on a stdlib asyncio loop until it stops."""
    return asyncio.run(Supervisor(config).run())
