"""The supervisor's side of the bridge (``--log nats://``): start it first, stop it last.

The bridge (``_bridge``) connects this machine's rings to the JetStream
stream.  The supervisor starts it before the replicas and waits until it is
connected and the stream exists, so a wrong URL or an unreachable server
fails the start with the bridge's own message.  If it dies while serving,
the machine stops (exit 1): its ring may hold part of a stream message, and
a restarted machine rebuilds its state from the stream.  On a clean stop it
is stopped after the replicas, so it sends what they left in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._bridge import BridgeConfig, FetchConfig, Fetched
from ._helperproc import HelperProcess, read_ready

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ("BridgeProcess", "fetch_snapshot")

log = logging.getLogger("dominoes.supervisor")

#: Seconds the bridge gets to connect and find (or create) the stream.
BRIDGE_START_TIMEOUT: Final = 30.0
#: Seconds it gets to send what is left and exit on a clean stop.
BRIDGE_STOP_TIMEOUT: Final = 10.0


class BridgeProcess(HelperProcess):
    what = "bridge"
    stop_timeout = BRIDGE_STOP_TIMEOUT

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self._sup = supervisor

    def summary(self) -> dict[str, Any]:
        """The bridge in ``dominoes stats --json``: its pid, and its counters
        (``bridge.json``, which it rewrites every second)."""
        proc = self.proc
        out: dict[str, Any] = {
            "pid": proc.pid if proc is not None and proc.poll() is None else None
        }
        with contextlib.suppress(OSError, msgspec.DecodeError):
            out.update(msgspec.json.decode((self._sup.run_dir / "bridge.json").read_bytes()))
        return out

    async def start(self) -> None:
        sup, cfg = self._sup, self._sup.config
        assert cfg.stream is not None
        ready_r, ready_w = os.pipe()
        ring_fd, outbox_fd = sup.log_fds
        bcfg = BridgeConfig(
            servers=sup.factory.servers,  # type: ignore[attr-defined]
            stream=cfg.stream,
            stream_replicas=cfg.stream_replicas,
            subject=f"dominoes.{cfg.stream}",
            line=sup.n,
            replicas=sup.n,
            ring_fd=ring_fd,
            outbox_fd=outbox_fd,
            wake_fds=sup.wake_fds,
            ready_fd=ready_w,
            supervisor_pid=os.getpid(),
            slot_size=cfg.slot_size,
            log_level=cfg.log_level,
            unreachable_after=cfg.unreachable_after,
            **sup.bridge_start(),
        )
        try:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once, as the writer's
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "dominoes._runtime._bridge",
                    _json(bcfg),
                ],
                pass_fds=[ring_fd, outbox_fd, *sup.wake_fds, ready_w],
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(BRIDGE_START_TIMEOUT):
                data = await loop.run_in_executor(None, read_ready, ready_r)
        except TimeoutError:
            data = b""
        finally:
            os.close(ready_r)
        if data != b"R":
            timed_out = self.proc.poll() is None
            if timed_out:
                self.proc.kill()
            code = self.proc.wait()
            raise RuntimeError(
                f"the bridge could not reach {', '.join(bcfg.servers)} in "
                f"{BRIDGE_START_TIMEOUT:.0f}s"
                if timed_out
                else f"the bridge to {', '.join(bcfg.servers)} (stream {cfg.stream!r}) exited "
                f"with {code} before it was ready; its error is above"
            )
        self.watch()

    def died(self, code: int) -> None:
        assert self.proc is not None
        log.error(
            "the bridge to the stream (pid %d) died with %s; stopping this machine: "
            "start it again and it rebuilds its state from the stream",
            self.proc.pid,
            code,
        )
        self._sup.exit_code = 1
        self._sup.stop()


def fetch_snapshot(sup: Supervisor) -> Fetched:
    """Before the ring exists: the newest snapshot of the stream, in the run dir.

    Run in a process of its own (the supervisor has no NATS client and no
    event loop yet); raises ``RuntimeError`` with its message if it fails.
    """
    cfg = sup.config
    assert cfg.stream is not None
    fcfg = FetchConfig(
        servers=sup.factory.servers,  # type: ignore[attr-defined]
        stream=cfg.stream,
        stream_replicas=cfg.stream_replicas,
        directory=str(sup.run_dir / "snapshots"),
    )
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", "dominoes._runtime._bridge", "fetch", _json(fcfg)],
            capture_output=True,
            timeout=BRIDGE_START_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"could not reach {', '.join(fcfg.servers)} in {BRIDGE_START_TIMEOUT:.0f}s"
        ) from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(err[-1] if err else f"fetching the snapshot failed ({done.returncode})")
    return msgspec.json.decode(done.stdout, type=Fetched)


def _json(cfg: BridgeConfig | FetchConfig) -> str:
    return msgspec.json.encode(cfg).decode()
