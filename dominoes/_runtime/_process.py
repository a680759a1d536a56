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

from .._core._backend import LogHost
from .._core._service import Service, parse_options
from . import _logs as logs
from ._asgi import AsgiServer, AsgiStartupError, HttpOptions, start_asgi
from ._control import replica_socket, serve_replica
from ._ingress import start_tcp, start_udp
from ._local import LocalReplies, start_local
from ._monitor import MonitorPortError, start_monitor
from ._pdeath import die_with_parent
from ._persist import DurableOptions
from ._replica import Replica
from ._state import State, bind_process
from ._wakeups import EventfdWakeups

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
    #: the log backend (``--log``) whose factory attaches ``log_fd``
    log: str = "shm"
    #: every fd the backend's host hands out, when more than ``log_fd``
    #: (``nats://``: the ring's memfd and the outbox's)
    log_fds: list[int] = []
    wake_fds: list[int]
    parent_fd: int
    ready_fd: int
    join: bool
    log_level: str = "WARNING"
    sys_path: list[str] = []
    #: the service's own command-line options, as given (checked by the supervisor)
    service_options: dict[str, str | None] = {}
    monitor_port: int | None = None
    digest_every: int | None = None
    stall_threshold: float = 0.1
    apply_timeout: float | None = 2.0
    checkpoint_every: int = 65536
    fork_snapshots: bool = True
    #: the supervisor's pid: the replica gets SIGKILL when it dies
    supervisor_pid: int = 0
    #: "linearizable" or "local" (None: the service's own ``reads``)
    reads: str | None = None
    #: the collector's thresholds once serving (None: leave CPython's)
    gc_threshold: tuple[int, int, int] | None = None
    #: the durable log's directory (empty: not durable), and its snapshot schedule
    durable_dir: str = ""
    snapshot_entries: int = 0
    snapshot_seconds: float = 0.0
    #: what to restore before serving (a fresh start only): the snapshot ("":
    #: none), the first seq to replay and the seq after the last record
    restore_snapshot: str = ""
    restore_start: int = 1
    restore_next: int = 1
    #: the entries from ``restore_start`` that poison marks name (apply them as errors)
    restore_poisoned: list[int] = []
    #: the log is a JetStream stream: snapshots go to ``durable_dir`` for the
    #: bridge to upload (``DurableOptions.shared``)
    shared_snapshots: bool = False
    #: how to serve the service's ASGI app
    http: HttpOptions = msgspec.field(default_factory=HttpOptions)


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


class ServiceLoadError(Exception):
    """The service's module could not be imported; the message says where (file:line).

    A service is user code: an error in it (a typo, a ``SyntaxError``, an
    exception in a module-level statement) must read as one line naming the
    file and line, not as a traceback through the supervisor's start-up.
    """


def load_service(target: str) -> Service:
    """Import ``module:attribute`` and check it is a :class:`Service`.

    An exception raised while importing the module becomes a
    :class:`ServiceLoadError` whose message gives the file and line.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ServiceLoadError(_import_failure(module_name, exc)) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Service):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a dominoes Service")
    return obj


def _import_failure(module_name: str, exc: Exception) -> str:
    """One line: why importing the service's module failed, and where (file:line)."""
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        # The location is the error's own (the compiler raises from no frame of
        # the module); str() repeats it in parentheses, so use ``msg``.
        what = f"{type(exc).__name__}: {exc.msg}"
        if exc.filename:
            return f"cannot import {module_name}: {_where(exc.filename, exc.lineno)}: {what}"
        return f"cannot import {module_name}: {what}"
    # The last frame of the traceback in the service's module (or a package
    # above it): the line of the service that failed.  If the exception was
    # raised deeper (a module it imports), say that place too.
    ours = deepest = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        filename = frame.f_code.co_filename
        if not filename.startswith("<frozen "):  # importlib's own frames
            deepest = (filename, tb.tb_lineno)
            name = frame.f_globals.get("__name__")
            if isinstance(name, str) and (
                name == module_name or module_name.startswith(name + ".")
            ):
                ours = deepest
        tb = tb.tb_next
    if ours is None:
        return f"cannot import {module_name}: {what}"
    line = f"cannot import {module_name}: {_where(*ours)}: {what}"
    if deepest is not None and deepest != ours:
        line += f" (raised at {_where(*deepest)})"
    return line


def _where(filename: str, lineno: int | None) -> str:
    """``path:line``, the path relative to the current directory when it is below it."""
    path = Path(filename)
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd())
    return f"{path}:{lineno}" if lineno else str(path)


async def serve(config: ReplicaConfig, service: Service, attached: LogHost) -> int:
    """Serve until SIGTERM/SIGINT (drain, exit 0) or the supervisor's death (exit 1).

    Stopping goes in order: ingress first (listening sockets, the control
    socket, the monitor), then the drain of what is already in the log, then
    the replica closes (its callbacks become no-ops).  ``attached`` is released
    by :func:`main` only once the event loop is closed: a connection's late
    data or a scheduled drain must never find the log's memory gone (that
    was ``ValueError: buffer released`` on Ctrl-C under load).  A failure
    while starting (a port that cannot be bound) closes the same way, so the
    process exits with one line and a status, never a core dump.
    """
    loop = asyncio.get_running_loop()
    if config.reads is not None:
        service.reads = config.reads
    durable = None
    if config.durable_dir:
        durable = DurableOptions(
            Path(config.durable_dir),
            snapshot_entries=config.snapshot_entries,
            snapshot_seconds=config.snapshot_seconds,
            shared=config.shared_snapshots,
        )
    replica = Replica(
        service,
        config.index,
        attached.log,
        EventfdWakeups(config.wake_fds),
        replicas=config.replicas,
        run_dir=Path(config.run_dir),
        cpu=config.core,
        digest_every=config.digest_every,
        stall_threshold=config.stall_threshold,
        apply_timeout=config.apply_timeout,
        fork_snapshots=config.fork_snapshots,
        durable=durable,
    )
    replica.core.checkpoint_entries = config.checkpoint_every
    replica.options = parse_options(service.options, config.service_options, service=service.name)
    replica.host, replica.port = config.host, config.port
    bind_process(State(replica))  # dominoes.current() in this process
    stop = asyncio.Event()
    orphaned = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(config.parent_fd, orphaned.set)  # EOF: the supervisor died
    ingress = _Ingress(replica_socket(replica.run_dir, config.index))
    clean = False
    try:
        replica.attach(loop, config.loop or "")
        if config.join:
            replica.start_join(os.getpid())
        else:
            if durable is not None and config.restore_next > 1:
                snapshot = Path(config.restore_snapshot) if config.restore_snapshot else None
                replica.persist.restore(
                    snapshot,
                    config.restore_start,
                    config.restore_next,
                    frozenset(config.restore_poisoned),
                )
            replica.start_fresh()
        await replica.joined()
        if service.on_start is not None:
            started = service.on_start(replica)
            if inspect.isawaitable(started):
                await started
        try:
            ingress.asgi = await start_asgi(replica, config.host, config.port, config.http)
        except AsgiStartupError as exc:
            log.error("replica %d: %s", config.index, exc)
            raise SystemExit(3) from None
        ingress.tcp = await start_tcp(replica, config.host, config.port)
        ingress.udp = await start_udp(replica, config.host, config.port)
        ingress.local = start_local(replica)
        ingress.control = await serve_replica(replica)
        if config.monitor_port is not None:
            try:
                ingress.monitor = start_monitor(replica, config.monitor_port)
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
        ingress.stop()
        if orphaned.is_set():
            log.warning("replica %d: the supervisor is gone; exiting", config.index)
            return 1
        # Subscriptions end (their streams finish), then the web app's requests in
        # flight finish while the replica still applies the log; then the drain.
        replica.feeds.close()
        if ingress.asgi is not None:
            try:
                async with asyncio.timeout(config.http.graceful_timeout + 2):
                    await ingress.asgi.shutdown()
            except TimeoutError:
                log.warning("replica %d: the web app did not shut down in time", config.index)
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await replica.drain()
        except TimeoutError:
            log.warning("replica %d: gave up draining after %.0fs", config.index, DRAIN_TIMEOUT)
        clean = True
        return 0
    finally:
        # Stopping already: further SIGINT/SIGTERM (a group's Ctrl-C, repeated)
        # change nothing.  Ignored from here, so none can reach the loop's
        # wakeup fd while loop.close() tears it down (asyncio closes the
        # self-pipe before it removes its signal handlers: "Exception ignored
        # when trying to write to the signal wakeup fd ... Bad file descriptor").
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        ingress.stop()
        if not clean and ingress.asgi is not None:
            ingress.asgi.abort()
        loop.remove_reader(config.parent_fd)
        replica.close(leave=clean)
        if ingress.local is not None:
            ingress.local.close()
        if clean and ingress.tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ingress.tcp.wait_closed(), 1.0)


class _Ingress:
    """What a replica serves besides the log, stopped first and at most once."""

    def __init__(self, control_path: Path) -> None:
        self.control_path = control_path
        self.tcp: asyncio.Server | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.asgi: AsgiServer | None = None
        self.local: LocalReplies | None = None
        self.control: asyncio.Server | None = None
        self.monitor: Any = None

    def stop(self) -> None:
        """Stop accepting: close the listening sockets, the control socket (its file
        too: asyncio leaves it behind) and the monitor.  Idempotent."""
        if self.tcp is not None:
            self.tcp.close()
        if self.udp is not None:
            self.udp.close()
        if self.asgi is not None:
            self.asgi.stop_accepting()
        if self.control is not None:
            self.control.close()
            self.control = None
            self.control_path.unlink(missing_ok=True)
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            monitor.close()


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C reaches the whole process group; the supervisor stops the
    # replicas in order (SIGTERM).  Until serve() handles SIGINT itself, it
    # must not raise KeyboardInterrupt in the middle of the start-up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    config = msgspec.json.decode(args[0].encode(), type=ReplicaConfig)
    die_with_parent(config.supervisor_pid)  # even stopped (SIGSTOP), never outlive it
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
    try:
        service = load_service(config.target)
        service = service.configured(
            parse_options(service.options, config.service_options, service=service.name)
        )
        # dominoes.loops is a mapped package (loops/ in the source tree); imported
        # by name so type checkers that do not follow the mapping are not misled.
        policy = importlib.import_module("dominoes.loops").get(config.loop)
    except (
        ServiceLoadError,
        ImportError,
        AttributeError,
        LookupError,
        TypeError,
        ValueError,
        RuntimeError,
    ) as exc:
        # The supervisor checked the service and the loop policy before it
        # started any replica; this is what changed since (a file edited
        # meanwhile, a plugin removed), in one line.
        log.error("replica %d: %s", config.index, exc)
        return 2
    attached = logs.get(config.log).attach(config.log_fds or [config.log_fd])
    try:
        return int(policy.run(serve(config, service, attached)))
    except OSError as exc:
        # Typically the address: say so in one line rather than a traceback.
        log.error(
            "replica %d cannot serve on %s:%d: %s", config.index, config.host, config.port, exc
        )
        return 3
    finally:
        # The loop is closed (and gave SIGINT back to Python: a second Ctrl-C
        # must not raise here): nothing can touch the log any more.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        attached.close()


if __name__ == "__main__":
    sys.exit(main())
