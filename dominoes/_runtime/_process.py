"""The replica process: ``python -m dominoes._runtime._process CONFIG_JSON``.

The supervisor starts each replica as a fresh interpreter (spawn semantics,
never fork), passing the log's memfd, every replica's eventfd, a pipe whose
EOF means "the supervisor is gone" and a pipe to report readiness, all as
inherited file descriptors.  The replica pins itself to its core from inside
its own process, builds its event loop from the chosen policy, and serves
until SIGTERM (drain, then exit 0) or the supervisor's death (exit at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from .._core._service import Service
from ._control import serve_replica
from ._ingress import start_tcp, start_udp
from ._local import start_local
from ._monitor import MonitorPortError, start_monitor
from ._replica import Replica
from ._shm import SharedLog

log = logging.getLogger("dominoes.replica")

#: Seconds a stopping replica spends applying what is already in the log.
DRAIN_TIMEOUT = 5.0


class ReplicaConfig(msgspec.Struct, kw_only=True):
    """Everything a replica process needs, sent by the supervisor as JSON."""

    target: str
    index: int
    replicas: int
    core: int | None
    loop: str | None
    host: str
    port: int
    run_dir: str
    log_fd: int
    wake_fds: list[int]
    parent_fd: int
    ready_fd: int
    join: bool
    log_level: str = "WARNING"
    sys_path: list[str] = []
    monitor_port: int | None = None
    digest_every: int | None = None
    stall_threshold: float = 0.1
    apply_timeout: float | None = 2.0
    #: "linearizable" or "local" (None: the service's own ``reads``)
    reads: str | None = None
    #: the collector's thresholds once serving (None: leave CPython's)
    gc_threshold: tuple[int, int, int] | None = None


def tune_gc(threshold: tuple[int, int, int] | None) -> None:
    """Once the replica serves: freeze the start-up heap and set the collector's thresholds.

    The hot paths allocate many short-lived lists (parsed commands, decoded
    entries), so CPython's default (a young collection every 700 allocations
    net, and full collections that walk every object imported at start-up)
    costs a replica several percent of its time.  Freezing moves what exists
    now (modules, the service, its initial state) out of the collector's
    reach; a larger first threshold makes young collections rarer (each one
    walks only the young objects still alive).  Reference counting still
    frees everything that is not in a cycle at once.
    """
    if threshold is None:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


def load_service(target: str) -> Service:
    """Import ``module:attribute`` and check it is a :class:`Service`."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Service):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a dominoes Service")
    return obj


async def serve(config: ReplicaConfig, service: Service) -> int:
    loop = asyncio.get_running_loop()
    shared = SharedLog.attach(config.log_fd)
    if config.reads is not None:
        service.reads = config.reads
    replica = Replica(
        service,
        config.index,
        shared,
        config.wake_fds,
        replicas=config.replicas,
        run_dir=Path(config.run_dir),
        cpu=config.core,
        digest_every=config.digest_every,
        stall_threshold=config.stall_threshold,
        apply_timeout=config.apply_timeout,
    )
    stop = asyncio.Event()
    orphaned = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(config.parent_fd, orphaned.set)  # EOF: the supervisor died
    replica.attach(loop, config.loop or "")
    if config.join:
        replica.start_join(os.getpid())
    else:
        replica.start_fresh()
    await replica.joined()
    if service.on_start is not None:
        started = service.on_start(replica)
        if inspect.isawaitable(started):
            await started
    tcp = await start_tcp(replica, config.host, config.port)
    udp = await start_udp(replica, config.host, config.port)
    local = start_local(replica)
    control = await serve_replica(replica)
    monitor = None
    if config.monitor_port is not None:
        try:
            monitor = start_monitor(replica, config.monitor_port)
        except MonitorPortError as exc:
            log.error("%s", exc)
            raise SystemExit(4) from None
    replica.start_sampling()
    tune_gc(config.gc_threshold)
    os.write(config.ready_fd, b"R")
    os.close(config.ready_fd)
    log.info(
        "replica %d serving (pid %d, core %s, loop %s)",
        config.index,
        os.getpid(),
        config.core,
        type(loop).__module__.split(".")[0],
    )
    stopping = asyncio.ensure_future(stop.wait())
    dying = asyncio.ensure_future(orphaned.wait())
    await asyncio.wait([stopping, dying], return_when=asyncio.FIRST_COMPLETED)
    for fut in (stopping, dying):
        fut.cancel()
    if tcp is not None:
        tcp.close()
    if udp is not None:
        udp.close()
    control.close()
    if monitor is not None:
        monitor.close()
    if orphaned.is_set():
        local.close()
        log.warning("replica %d: the supervisor is gone; exiting", config.index)
        replica.close(leave=False)
        shared.close()
        return 1
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await replica.drain()
    except TimeoutError:
        log.warning("replica %d: gave up draining after %.0fs", config.index, DRAIN_TIMEOUT)
    replica.close(leave=True)
    local.close()
    if tcp is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tcp.wait_closed(), 1.0)
    shared.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = msgspec.json.decode(args[0].encode(), type=ReplicaConfig)
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s replica={config.index} %(name)s: %(message)s",
    )
    if config.core is not None:
        os.sched_setaffinity(0, {config.core})
    # After the installed packages (see dominoes run): the service's own
    # modules come from here, dominoes itself never does.
    for path in config.sys_path:
        if path not in sys.path:
            sys.path.append(path)
    service = load_service(config.target)
    # dominoes.loops is a mapped package (loops/ in the source tree); imported
    # by name so type checkers that do not follow the mapping are not misled.
    policy = importlib.import_module("dominoes.loops").get(config.loop)
    try:
        return int(policy.run(serve(config, service)))
    except OSError as exc:
        # Typically the port: say so in one line rather than a traceback.
        log.error(
            "replica %d cannot serve on %s:%d: %s", config.index, config.host, config.port, exc
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
