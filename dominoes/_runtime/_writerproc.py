"""The supervisor's side of the log writer: start it, restart it, stop it last.

The writer (``_writer``) is a process of its own, so that writing and
fsyncing never run on a replica's loop.  It holds the log from its own line
(the one after the replicas).  If it dies, its line keeps holding the log:
no slot it has not written can be reused, producers feel backpressure, and
replies wait.  The supervisor starts it again at once; it picks up the newest
segment at its last whole record and goes on from there.  Reads go on
meanwhile.  On a clean stop it is stopped after the replicas: it writes what
they left and fsyncs, whatever the policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._helperproc import HelperProcess, read_ready
from ._writer import WriterConfig

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ("WriterProcess",)

log = logging.getLogger("dominoes.supervisor")

#: Seconds the writer gets to write, fsync and exit on a clean stop.
WRITER_STOP_TIMEOUT: Final = 30.0
#: Seconds before restarting a writer that died.
WRITER_RESTART_DELAY: Final = 0.2
#: Deaths before it was ready, in a row, after which the service stops.
WRITER_MAX_FAILURES: Final = 3


class WriterProcess(HelperProcess):
    what = "log writer"
    stop_timeout = WRITER_STOP_TIMEOUT

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self._sup = supervisor
        self.restarts = 0
        self._failures = 0

    def _config(self, ready_w: int) -> WriterConfig:
        sup, cfg = self._sup, self._sup.config
        assert cfg.durable is not None
        return WriterConfig(
            data_dir=str(cfg.durable),
            run_dir=str(sup.run_dir),
            policy=cfg.fsync,
            line=sup.n,
            replicas=sup.n,
            log_fd=sup._log_fd,
            wake_fds=sup.wake_fds,
            ready_fd=ready_w,
            supervisor_pid=os.getpid(),
            segment_bytes=cfg.segment_bytes,
            log_level=cfg.log_level,
            fsync_trace=cfg.fsync_trace,
        )

    def summary(self) -> dict[str, Any]:
        """The log writer in ``dominoes stats --json``: its pid and how often it was restarted."""
        proc = self.proc
        alive = proc is not None and proc.poll() is None
        return {"pid": proc.pid if alive and proc else None, "restarts": self.restarts}

    def _spawn(self) -> int:
        """Start the writer process; the read end of its readiness pipe."""
        sup = self._sup
        ready_r, ready_w = os.pipe()
        cfg = self._config(ready_w)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "dominoes._runtime._writer", msgspec.json.encode(cfg)],
            pass_fds=[sup._log_fd, *sup.wake_fds, ready_w],
            stdin=subprocess.DEVNULL,
        )
        os.close(ready_w)
        return ready_r

    async def start(self) -> None:
        """Start the writer and wait until it has opened the log file."""
        ready_r = self._spawn()
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, read_ready, ready_r)
        finally:
            os.close(ready_r)
        if data != b"R":
            code = self.proc.wait()
            raise RuntimeError(f"the log writer exited with {code} before it was ready")
        self._failures = 0
        self.watch()

    def died(self, code: int) -> None:
        assert self.proc is not None
        log.error(
            "the log writer (pid %d) died with %s; updates wait until it is back",
            self.proc.pid,
            code,
        )
        self.restarts += 1
        asyncio.get_running_loop().call_later(WRITER_RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        if self._stopping:
            return
        task = asyncio.ensure_future(self.start())

        def started(t: asyncio.Task[None]) -> None:
            exc = t.exception()
            if exc is None:
                log.warning("the log writer is back (restart %d)", self.restarts)
                self._sup._wake_all()
                return
            self._failures += 1
            log.error("the log writer could not start again: %s", exc)
            if self._failures >= WRITER_MAX_FAILURES:
                self._sup.exit_code = 1
                self._sup.stop()
            else:
                asyncio.get_running_loop().call_later(WRITER_RESTART_DELAY, self._restart)

        task.add_done_callback(started)
