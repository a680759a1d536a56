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
from ._process import ReplicaConfig, load_service
from ._shm import SharedLog

__all__ = ("Supervisor", "SupervisorConfig", "default_run_dir")

log = logging.getLogger("dominoes.supervisor")

#: How long replicas get to drain and exit on a clean stop before SIGKILL.
STOP_TIMEOUT: Final = 10.0
#: Pause before restarting a replica that died; doubles per quick death, capped.
RESTART_DELAY: Final = 0.2
RESTART_DELAY_MAX: Final = 5.0
#: A seed shared by every replica, so set and dict-of-str iteration orders match.
DEFAULT_HASH_SEED: Final = "20260429"


def default_run_dir(name: str) -> Path:
    """``$XDG_RUNTIME_DIR/dominoes/NAME``, else ``/tmp/dominoes-UID/NAME``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "dominoes" if base else Path(f"/tmp/dominoes-{os.getuid()}")
    return root / name


@dataclass
class SupervisorConfig:
    target: str
    replicas: int | None = None
    loop: str = "uvloop"
    host: str = "127.0.0.1"
    port: int = 7000
    capacity: int = DEFAULT_CAPACITY
    slot_size: int = DEFAULT_SLOT_SIZE
    run_dir: Path | None = None
    log_level: str = "WARNING"
    hash_seed: str = DEFAULT_HASH_SEED
    sys_path: list[str] = field(default_factory=list)


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


class Supervisor:
    """Runs a service as N replica processes until told to stop."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.service = load_service(config.target)  # fail fast, before any process starts
        cores = sorted(os.sched_getaffinity(0))
        n = config.replicas or len(cores)
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

    # --- start ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
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
        for stale in self.run_dir.glob("snapshot-*"):
            stale.unlink()
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
        )
        env = dict(os.environ, PYTHONHASHSEED=self.config.hash_seed)
        fds = [self.shared.fd, *self.wake_fds, self._parent_r, ready_w]
        proc = subprocess.Popen(
            [sys.executable, "-m", "dominoes._runtime._process", msgspec.json.encode(cfg).decode()],
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
        log.warning(
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
            if all(c.ready for c in self.children) and not self._all_ready.is_set():
                self._all_ready.set()
                print(
                    f"dominoes: {self.service.name} serving on {self.config.host}:"
                    f"{self.config.port} with {self.n} replicas (run dir {self.run_dir})",
                    file=sys.stderr,
                    flush=True,
                )

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
        child.ready = False
        child.exited.set()
        if self._stopping:
            return
        self.deaths += 1
        log.warning("replica %d (pid %d) died with %s", child.index, child.proc.pid, code)
        self._log.mark_dead(child.index)
        self._fill(child.index, tries=20)
        if time.monotonic() - child.started_at > 10:
            child.delay = RESTART_DELAY
        else:
            child.delay = min(child.delay * 2, RESTART_DELAY_MAX)
        child.restarts += 1
        loop.call_later(child.delay, self._restart, child)

    def _fill(self, index: int, tries: int) -> None:
        """Fill the dead replica's abandoned reservation, re-trying while ambiguous."""
        filled = self._log.fill_abandoned(index)
        if filled:
            log.warning("replica %d: filled %d abandoned slot(s) with no-ops", index, filled)
        self._wake_all()
        if tries > 0 and self._log.abandoned(index) is None and filled == 0:
            # ``None`` may mean "a live producer shares the intent": look again soon.
            asyncio.get_running_loop().call_later(0.005, self._fill, index, tries - 1)

    def _wake_all(self) -> None:
        for fd in self.wake_fds:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def _restart(self, child: _Child) -> None:
        if self._stopping:
            return
        live = self._log.replicas_in(frozenset({ReplicaState.LIVE}))
        if not any(i < self.n for i in live):
            log.error("no live replica left to take a snapshot from; stopping")
            self.stop()
            return
        self._spawn(child, join=True)

    # --- control socket ----------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    reply = self.handle_control(request)
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        raise ValueError(f"unknown op {op!r}")

    def status(self) -> dict[str, Any]:
        stats = self._log.statistics()
        return {
            "service": self.service.name,
            "replicas": [
                {
                    "index": c.index,
                    "pid": c.proc.pid if c.proc else None,
                    "core": c.core,
                    "ready": c.ready,
                    "restarts": c.restarts,
                    "state": ReplicaState.NAMES[self._log.state(c.index)],
                    "cursor": self._log.cursor(c.index),
                }
                for c in self.children
            ],
            "log": msgspec.to_builtins(stats),
        }

    # --- run / stop ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._prepare()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            sock = self.run_dir / "control.sock"
            self._control = await asyncio.start_unix_server(self._on_control, str(sock))
            os.chmod(sock, 0o600)
            for child in self.children:
                self._spawn(child, join=False)
            await self._stopped.wait()
            await self._shutdown()
        finally:
            self._release()
        return 0

    def stop(self) -> None:
        """Begin a clean stop (idempotent)."""
        if not self._stopping:
            self._stopping = True
            log.warning("stopping: draining %d replicas", self.n)
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
        for stale in self.run_dir.glob("snapshot-*"):
            stale.unlink()


def run(config: SupervisorConfig) -> int:
    """Run the supervisor on a stdlib asyncio loop until it stops."""
    return asyncio.run(Supervisor(config).run())
