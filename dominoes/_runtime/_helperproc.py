"""A helper process of the supervisor's: the log writer (``--durable``) or the bridge
(``--log nats://``).

Both are started before the replicas and stopped after them, signal that
they are ready through a pipe, and are watched through a pidfd.  What
happens when one dies is theirs (:meth:`HelperProcess.died`): the writer is
started again, the bridge stops the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess

__all__ = ("HelperProcess", "read_ready")

log = logging.getLogger("dominoes.supervisor")


class HelperProcess:
    """The supervisor's handle on one helper process (see the module doc)."""

    #: what log lines call it
    what = "helper"
    #: seconds it gets to finish and exit on a clean stop
    stop_timeout = 10.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._stopping = False
        self._exited = asyncio.Event()

    def watch(self) -> None:
        """Once it is ready: call :meth:`died` when it exits."""
        assert self.proc is not None
        self._exited = asyncio.Event()
        self._pidfd = os.pidfd_open(self.proc.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _unwatch(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _on_exit(self) -> None:
        self._unwatch()
        assert self.proc is not None
        code = self.proc.wait()
        self._exited.set()
        if not self._stopping:
            self.died(code)

    def died(self, code: int) -> None:
        """It exited without being asked to."""
        raise NotImplementedError

    async def stop(self) -> None:
        """SIGTERM, then wait (it finishes its work first); SIGKILL after ``stop_timeout``."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stop_timeout):
                await self._exited.wait()
        if proc.poll() is None:
            log.error("the %s did not stop in %.0fs; killing it", self.what, self.stop_timeout)
            proc.kill()
            proc.wait()
        self._unwatch()


def read_ready(fd: int) -> bytes:
    """The readiness byte a helper writes (b"": it exited first); blocking, for an executor."""
    try:
        return os.read(fd, 1)
    except OSError:
        return b""
