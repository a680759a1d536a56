"""The ``dominoes`` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dominoes",
        description="Run replicated multi-core asyncio services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a service as one pinned replica per core",
        description="Run SERVICE (module:attribute naming a dominoes.Service) as N "
        "replica processes sharing one log. Options it does not know are the service's "
        "own (Service(options=...)): --NAME VALUE, --NAME=VALUE, or --NAME for a flag.",
        allow_abbrev=False,
    )
    run.add_argument(
        "target", metavar="SERVICE", help="module:attribute, e.g. examples.counter:service"
    )
    run.add_argument(
        "--replicas",
        type=_positive_int,
        default=None,
        help="replicas (default: one per core in the affinity mask)",
    )
    run.add_argument(
        "--loop",
        default=None,
        help="event-loop policy: uvloop (the default when installed), asyncio, or a plugin",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=7000, help="TCP, UDP and HTTP port (default 7000)")
    web = run.add_argument_group(
        "web apps", "for a service that carries an ASGI app (Service(..., asgi=app))"
    )
    web.add_argument(
        "--access-log", action="store_true", help="log every HTTP request (off by default)"
    )
    web.add_argument(
        "--max-body",
        type=_size,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body; a larger one gets 413 without reaching the app "
        "(0: no limit; default 16M; K, M, G suffixes)",
    )
    web.add_argument(
        "--max-header-bytes",
        type=_size,
        default=64 * 1024,
        metavar="BYTES",
        help="largest request line plus headers; larger gets 431 (default 64K)",
    )
    web.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="a request's headers must arrive within this; else the connection closes "
        "(slowloris; default 10)",
    )
    web.add_argument(
        "--keep-alive",
        type=_positive_int,
        default=5,
        metavar="SECONDS",
        help="close an idle keep-alive HTTP connection after this long (default 5)",
    )
    web.add_argument(
        "--graceful-timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, requests in flight get this long to finish (default 5)",
    )
    run.add_argument(
        "--log",
        default="shm",
        metavar="NAME",
        help="log backend, by its name in the dominoes.logs entry points (default shm, shared "
        "memory; memory keeps the log in one process, which dominoes run cannot use), or "
        "nats://HOST:PORT[,HOST:PORT...]: share the log with other machines through a NATS "
        "JetStream stream (with --stream)",
    )
    run.add_argument(
        "--stream",
        default=None,
        metavar="NAME",
        help="with --log nats://...: the JetStream stream that is the log (created if missing); "
        "every machine of the service names the same one",
    )
    run.add_argument(
        "--unreachable-after",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="with --log nats://...: once every request to the stream has failed this long, "
        "updates and linearizable reads are refused (the KV answers TRYAGAIN) until it is "
        "back; longer than a leader election, so a dead NATS node is a pause (default 15)",
    )
    run.add_argument(
        "--stream-replicas",
        type=_positive_int,
        default=1,
        metavar="R",
        help="with --log nats://...: copies of the stream the NATS servers keep when this "
        "machine creates it (3 on a 3-node cluster; default 1)",
    )
    run.add_argument(
        "--durable",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the log in segment files and snapshots in DIR, and restart from them: "
        "the service's state survives a stop, a crash or a reboot",
    )
    run.add_argument(
        "--fsync",
        choices=["always", "everysec", "no"],
        default="everysec",
        help="with --durable: always (a reply waits for the fsync that covers its write), "
        "everysec (fsync every second; a crash of the processes loses nothing acknowledged, "
        "a power failure at most ~1 s), no (the OS flushes) (default everysec)",
    )
    run.add_argument(
        "--snapshot-every",
        type=_snapshot_every,
        default="1000000,600s",
        metavar="N[,Ts]",
        help="with --durable or --log nats://: write a snapshot after N entries or T seconds, "
        "whichever comes first (e.g. 100000,60s; 0 for never; default 1000000,600s); segments "
        "(durable) or stream messages (nats) the kept snapshots cover are deleted",
    )
    run.add_argument(
        "--segment-mb",
        type=_positive_int,
        default=64,
        metavar="MB",
        help="with --durable: begin a new segment file past this size (default 64)",
    )
    run.add_argument(
        "--capacity", type=int, default=None, help="log slots, a power of two (default 16384)"
    )
    run.add_argument("--slot-size", type=int, default=None, help="bytes per log slot (default 256)")
    run.add_argument("--run-dir", type=Path, default=None, help="directory for the control socket")
    run.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    run.add_argument(
        "--monitor",
        action="store_true",
        help="start aiomonitor on every replica, on unix sockets in the run dir that only this "
        "user can use ('dominoes monitor NAME'); it offers a Python REPL",
    )
    run.add_argument(
        "--monitor-tcp",
        action="store_true",
        help="serve the monitor on TCP ports of 127.0.0.1 instead (implies --monitor): EVERY "
        "local user can then reach it and run Python as this service's user",
    )
    run.add_argument(
        "--monitor-port",
        type=int,
        default=20100,
        metavar="BASE",
        help="with --monitor-tcp: replica i serves the monitor on BASE+10*i (web UI +1, REPL "
        "+2); default 20100",
    )
    run.add_argument(
        "--digest-every",
        type=int,
        default=None,
        metavar="K",
        help="compare state digests across replicas every K log positions "
        "(default: the service's setting, off unless it sets one)",
    )
    run.add_argument(
        "--stall-ms",
        type=_positive_float,
        default=100.0,
        help="log an apply or effect slower than this many milliseconds (default 100)",
    )

    run.add_argument(
        "--gc-threshold",
        type=_gc_threshold,
        default=None,
        metavar="G0,G1,G2",
        help="once a replica serves, freeze its start-up heap and set gc.set_threshold(G0, G1, "
        "G2) (default 20000,20,20; 'python' keeps CPython's 700,10,10 and freezes nothing)",
    )
    run.add_argument(
        "--stuck-after",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="restart a replica that has not applied its next entry for this long "
        "(default 5; 0 disables)",
    )
    run.add_argument(
        "--apply-timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="interrupt an apply that runs this long and roll the replica back to before its "
        "entry; an entry every replica gives up on fails as a poison entry (default 2; 0 "
        "disables)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=65536,
        metavar="ENTRIES",
        help="renew each replica's recovery point (a snapshot written by a forked child) every "
        "ENTRIES log entries or 64 MiB of them; a rollback replays at most that much "
        "(default 65536)",
    )
    run.add_argument(
        "--eject-after",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="kill and restart a replica that has applied nothing for this long while the log "
        "is full and another replica is ahead of it: it bounds how long every writer waits on "
        "one frozen replica (default 1; 0 disables)",
    )
    run.add_argument(
        "--snapshots",
        choices=["fork", "inline"],
        default="fork",
        help="how a replica writes snapshots (for joiners and recovery points) and state "
        "digests: 'fork' (a forked child does it while the replica serves; the default) or "
        "'inline' (the replica stops applying while it does it)",
    )
    run.add_argument(
        "--reads",
        choices=["linearizable", "local"],
        default=None,
        help="how reads see writes: 'linearizable' (the default: a read reflects every write "
        "acknowledged before it, on any replica) or 'local' (the replica's state as it is, "
        "possibly stale; skips one catch-up check per batch of reads)",
    )

    for name, helptext in (
        ("stats", "print every replica's statistics"),
        ("top", "a live view of every replica, refreshed every --interval seconds"),
    ):
        cmd = sub.add_parser(name, help=helptext, description=helptext)
        _service_args(cmd)
        if name == "stats":
            cmd.add_argument("--json", action="store_true", help="one JSON document")
        else:
            cmd.add_argument("--once", action="store_true", help="print one frame and exit")
            cmd.add_argument("--interval", type=float, default=1.0, help="seconds per refresh")
    monitor = sub.add_parser(
        "monitor",
        help="attach this terminal to a replica's monitor console (a service run with --monitor)",
        description="Attach this terminal to the aiomonitor console of one replica of a service "
        "run with --monitor, through its unix socket (like telnet: Ctrl-D or 'exit' leaves).",
    )
    _service_args(monitor)
    monitor.add_argument(
        "--replica", type=int, default=0, metavar="I", help="the replica's index (default 0)"
    )
    _replay_parser(sub)
    snapshot = sub.add_parser(
        "snapshot",
        help="have a running durable or nats service write a snapshot now",
        description="Have the lowest-numbered live replica of a running durable service "
        "(dominoes run --durable), or of one machine of a service sharing a NATS stream "
        "(--log nats://), write a snapshot of its state now, and print where (with nats, "
        "the bridge then uploads it to the stream's Object Store).",
    )
    _reconfigure_parser(sub)
    _service_args(snapshot)
    snapshot.add_argument(
        "--timeout",
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="give up waiting for the snapshot after this long (default 3600)",
    )
    return parser


def _reconfigure_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconf = sub.add_parser(
        "reconfigure",
        help="change a running service's components or bindings, through its log",
        description="Add or remove a component, or bind or unbind a handler, on every replica "
        "of a running service at one log position (an update of the built-in event "
        "dominoes.reconfigure), change how many replicas hold each partition of a "
        "partitioned component, or set an event's ownership mode. The module named must be "
        "importable where the service runs. Prints the result: the component's name, the "
        "binding's id, the number of partition copies the replicas gained, or the mode.",
    )
    reconf.add_argument("name", help="the service's name (finds its run dir)")
    reconf.add_argument("--run-dir", type=Path, default=None, help="the service's run dir")
    what = reconf.add_subparsers(dest="what", required=True, metavar="CHANGE")
    add = what.add_parser("add", help="add a component: module:Class [--kwargs JSON]")
    add.add_argument("component", metavar="module:Class")
    add.add_argument("--kwargs", type=_json_object, default={}, help="constructor arguments")
    remove = what.add_parser("remove", help="remove a component, its handlers and its state")
    remove.add_argument("component", metavar="NAME", help="the component's name")
    bind = what.add_parser("bind", help="bind module:function to EVENT")
    bind.add_argument("event", metavar="EVENT")
    bind.add_argument("handler", metavar="module:function")
    bind.add_argument("--order", type=float, default=0.0, help="its order (default 0)")
    bind.add_argument("--static", type=_json_object, default={}, help="static arguments")
    unbind = what.add_parser("unbind", help="remove a binding by the id bind printed")
    unbind.add_argument("binding", type=int, metavar="ID")
    copies = what.add_parser(
        "copies", help="keep each partition of a partitioned component on K replicas"
    )
    copies.add_argument("component", metavar="NAME", help="the partitioned component's name")
    copies.add_argument("copies", type=_positive_int, metavar="K")
    mode = what.add_parser(
        "mode", help="set the ownership mode of an event's calls (or 'caller': theirs again)"
    )
    mode.add_argument("event", metavar="EVENT")
    mode.add_argument("mode", choices=("race", "affinity", "every", "caller"), metavar="MODE")


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"limit\": 10}'")
    return value


def _replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="apply a durable service's recorded log again, in this process",
        description="Apply the log a durable service (dominoes run --durable DIR) recorded "
        "in DIR again, in one process, from a snapshot or from seq 1: step through it, "
        "compare state digests with those the live replicas recorded, save the state at a "
        "seq. DIR is only read (a torn last record is left as it is).",
    )
    replay.add_argument("data_dir", metavar="DIR", type=Path, help="the service's --durable DIR")
    replay.add_argument(
        "--service",
        required=True,
        metavar="SERVICE",
        help="module:attribute naming the dominoes.Service that recorded the log",
    )
    replay.add_argument(
        "--until",
        type=_positive_int,
        default=None,
        metavar="SEQ",
        help="stop before SEQ: the state is then the state a snapshot at SEQ holds "
        "(default: the end of the log)",
    )
    replay.add_argument(
        "--from-snapshot",
        choices=["oldest", "newest", "none"],  # _replay.FROM_SNAPSHOT
        default=None,
        help="start from the oldest or the newest usable snapshot, or from none (seq 1) "
        "(default: seq 1 if the log starts there, else the oldest usable snapshot)",
    )
    replay.add_argument(
        "--step",
        action="store_true",
        help="print each entry, decoded, and its outcome; with a terminal on stdin, wait for "
        "Enter after each (c: go on without waiting, q: stop)",
    )
    replay.add_argument(
        "--digest",
        action="store_true",
        help="print the state digests at each digest point, and compare them with those the "
        "live replicas recorded in the log (exit 3 if one differs)",
    )
    replay.add_argument(
        "--digest-every",
        type=_positive_int,
        default=None,
        metavar="K",
        help="with --digest: a digest point every K log positions (default: the service's "
        "digest_every)",
    )
    replay.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the final state to FILE as a snapshot file (the service's format)",
    )
    replay.add_argument(
        "--json", action="store_true", help="print JSON objects, one a line, the summary last"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _size(text: str) -> int:
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    raw = text.strip().upper().removesuffix("B")
    scale = units.get(raw[-1:], 1)
    if scale != 1:
        raw = raw[:-1]
    try:
        value = int(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None


def _positive_float(text: str) -> float:
    """A number above zero (``--stall-ms``: 0 or less would report every apply as a stall)."""
    value = _float(text, "a number")
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _seconds(text: str) -> float:
    """A duration in seconds, 0 or more (0 disables what the option bounds)."""
    value = _float(text, "a number of seconds")
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _gc_threshold(text: str) -> tuple[int, int, int] | str:
    """``--gc-threshold``: ``G0,G1,G2`` (non-negative integers) or ``python``."""
    if text == "python":
        return text
    try:
        g0, g1, g2 = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected G0,G1,G2 (three integers) or 'python', not {text!r}"
        ) from None
    if min(g0, g1, g2) < 0:
        raise argparse.ArgumentTypeError(f"thresholds must not be negative: {text!r}")
    return (g0, g1, g2)


def _monitor_setting(args: argparse.Namespace) -> int | None:
    """``monitor_port`` for the supervisor: a TCP base port (``--monitor-tcp``),
    MONITOR_UNIX (``--monitor``: unix sockets in the run dir) or None."""
    from ._runtime._monitor import MONITOR_UNIX

    if args.monitor_tcp:
        if not 0 < args.monitor_port < 65536:
            print(
                f"dominoes: error: --monitor-port {args.monitor_port} is not a port",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return int(args.monitor_port)
    return MONITOR_UNIX if args.monitor else None


def _gc_setting(
    given: tuple[int, int, int] | str | None, default: tuple[int, int, int]
) -> tuple[int, int, int] | None:
    """What ``--gc-threshold`` asks of the replicas (None: CPython's own collector)."""
    if given is None:
        return default
    if isinstance(given, str):  # "python"
        return None
    return given


def _check_loop(name: str | None) -> str | None:
    """Why ``--loop name`` cannot run here (None: it can), asked before any replica starts.

    Each replica builds its loop from the policy; an unknown or unavailable
    one would otherwise end every replica in a traceback.
    """
    # dominoes.loops is a mapped package (loops/ in the source tree); imported
    # by name so type checkers that do not follow the mapping are not misled.
    loops = importlib.import_module("dominoes.loops")
    try:
        loops.get(name)
    except (LookupError, RuntimeError) as exc:
        return f"--loop {name}: {exc}"
    return None


def _check_log(name: str, stream: str | None = None) -> str | None:
    """Why ``--log name`` cannot run here (None: it can), asked before anything starts."""
    from ._runtime._logs import for_processes

    try:
        for_processes(name)
    except (LookupError, RuntimeError, ValueError) as exc:
        return f"--log {name}: {exc}"
    if name.startswith("nats://"):
        if not stream:
            return f"--log {name} needs --stream NAME: the JetStream stream that is the log"
        try:
            import nats  # noqa: F401
        except ImportError:
            return f"--log {name} needs the NATS client: pip install 'dominoes[nats]'"
    elif stream is not None:
        return "--stream goes with --log nats://HOST:PORT"
    return None


def _service_args(cmd: argparse.ArgumentParser) -> None:
    """How a command that talks to a running service finds it: its name or its run dir."""
    cmd.add_argument("name", nargs="?", default=None, help="the service's name (finds its run dir)")
    cmd.add_argument("--run-dir", type=Path, default=None, help="the service's run dir")


def _snapshot_every(text: str) -> tuple[int, float]:
    """``N``, ``Ts``, ``N,Ts`` (entries, seconds; ``m`` for minutes) -> (entries, seconds)."""
    entries, seconds = 0, 0.0
    for part in text.split(","):
        part = part.strip().lower()
        try:
            if part.endswith("s"):
                seconds = float(part[:-1])
            elif part.endswith("m"):
                seconds = float(part[:-1]) * 60
            else:
                entries = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected N entries, Ts seconds or both (N,Ts), not {text!r}"
            ) from None
        if entries < 0 or seconds < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return entries, seconds


def _replicas_warning(replicas: int | None, cpus: set[int]) -> str | None:
    """Why ``--replicas`` is a bad idea on these CPUs (None: it is not).

    Every replica applies every write, so a write costs each replica one
    apply: replicas that share a core add that core's work without adding a
    core, and take turns on it (context switches, cold caches, wake-ups that
    wait for a time slice).  Measured on 2 cores (``redis-benchmark -P 16 -t
    set`` against the KV): 8 replicas did 146k SETs/s, 2 replicas 396k.
    """
    if replicas is None or replicas <= len(cpus):
        return None
    cores = len(cpus)
    return (
        f"{replicas} replicas on {cores} core{'s' if cores != 1 else ''} (the CPUs this process "
        f"may run on): replicas will share cores, and since every replica applies every write, "
        f"writes get slower, not faster; use --replicas {cores} or fewer"
    )


def _find_run_dir(name: str | None, run_dir: Path | None) -> Path:
    from ._runtime._rundir import default_run_dir

    if run_dir is not None:
        return run_dir
    if name is not None:
        return default_run_dir(name)
    from ._runtime._top import control_state

    parent = default_run_dir("x").parent
    found = sorted(p.parent for p in parent.glob("*/control.sock")) if parent.exists() else []
    # A supervisor killed with SIGKILL leaves its control.sock: not a service.
    running = [d for d in found if control_state(d / "control.sock") == "running"]
    if len(running) == 1:
        return running[0]
    if not running and len(found) == 1:
        return found[0]  # stats/top then say it is not running (stale socket)
    names = ", ".join(p.name for p in running) or "none found"
    raise SystemExit(f"dominoes: error: name the service (running: {names}) or pass --run-dir")


def _service_options(extra: list[str]) -> dict[str, str | None]:
    """``--name value``, ``--name=value`` and ``--flag`` words after ``dominoes run``'s own
    options: the service's options, checked against its declaration by the supervisor."""
    given: dict[str, str | None] = {}
    i = 0
    while i < len(extra):
        word = extra[i]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"unexpected argument {word!r}")
        name, eq, value = word[2:].partition("=")
        if name in given:
            raise ValueError(f"--{name} is given twice")
        if eq:
            given[name] = value
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            i += 1
            given[name] = extra[i]
        else:
            given[name] = None
        i += 1
    return given


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        try:
            service_options = _service_options(extra)
        except ValueError as exc:
            print(f"dominoes: error: {exc}", file=sys.stderr)
            return 2
        from ._core._log import DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE
        from ._runtime._asgi import HttpOptions
        from ._runtime._durable import DurableLogError
        from ._runtime._ports import PortInUseError
        from ._runtime._process import ServiceLoadError
        from ._runtime._supervisor import DEFAULT_GC_THRESHOLD, SupervisorConfig, run

        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s supervisor %(name)s: %(message)s",
        )
        # Like uvicorn: the current directory is importable, so
        # ``dominoes run examples.counter:service`` works from a checkout.
        cwd = os.getcwd()
        # Appended, not prepended: run from a dominoes checkout, the checkout's
        # dominoes/ (no compiled extension, no mapped subpackages) must not
        # shadow the installed package.
        if cwd not in sys.path:
            sys.path.append(cwd)
        problem = _check_loop(args.loop) or _check_log(args.log, args.stream)
        if problem is not None:
            print(f"dominoes: error: {problem}", file=sys.stderr)
            return 2
        warning = _replicas_warning(args.replicas, os.sched_getaffinity(0))
        if warning is not None:
            print(f"dominoes: warning: {warning}", file=sys.stderr, flush=True)
        config = SupervisorConfig(
            target=args.target,
            replicas=args.replicas,
            loop=args.loop,
            host=args.host,
            port=args.port,
            capacity=DEFAULT_CAPACITY if args.capacity is None else args.capacity,
            slot_size=DEFAULT_SLOT_SIZE if args.slot_size is None else args.slot_size,
            run_dir=args.run_dir,
            log_level=args.log_level.upper(),
            service_options=service_options,
            sys_path=[cwd],
            monitor_port=_monitor_setting(args),
            digest_every=args.digest_every,
            stall_threshold=args.stall_ms / 1000,
            stuck_after=args.stuck_after or None,
            apply_timeout=args.apply_timeout or None,
            checkpoint_every=args.checkpoint_every,
            fork_snapshots=args.snapshots == "fork",
            eject_after=args.eject_after or None,
            reads=args.reads,
            gc_threshold=_gc_setting(args.gc_threshold, DEFAULT_GC_THRESHOLD),
            log=args.log,
            durable=args.durable.absolute() if args.durable is not None else None,
            fsync=args.fsync,
            snapshot_entries=args.snapshot_every[0],
            snapshot_seconds=args.snapshot_every[1],
            segment_bytes=args.segment_mb * 1024 * 1024,
            fsync_trace=os.environ.get("DOMINOES_FSYNC_TRACE", ""),
            stream=args.stream,
            stream_replicas=args.stream_replicas,
            unreachable_after=args.unreachable_after,
            http=HttpOptions(
                access_log=args.access_log,
                max_body=args.max_body,
                max_header_bytes=max(1024, args.max_header_bytes),
                header_timeout=args.header_timeout,
                graceful_timeout=args.graceful_timeout,
                keep_alive=args.keep_alive,
            ),
        )
        if args.monitor_tcp:
            print(
                f"dominoes: warning: --monitor-tcp: replica i's monitor listens on 127.0.0.1 "
                f"ports {args.monitor_port}+10*i (console), +1 (web UI) and +2 (Python REPL) "
                f"without authentication: every local user can reach it and run Python as uid "
                f"{os.geteuid()}; --monitor alone serves it to this user only",
                file=sys.stderr,
                flush=True,
            )
        try:
            return run(config)
        except PortInUseError as exc:  # one line, exit 1: nothing was started
            print(f"dominoes: {exc}", file=sys.stderr)
            return 1
        except DurableLogError as exc:  # a corrupt or busy data directory: say where
            print(f"dominoes: error: {exc}", file=sys.stderr)
            return 1
        except (
            ServiceLoadError,
            ImportError,
            AttributeError,
            TypeError,
            ValueError,
            RuntimeError,
        ) as exc:
            print(f"dominoes: error: {exc}", file=sys.stderr)
            return 2
    if args.command in ("stats", "top"):
        from ._runtime._top import stats_main, top_main

        run_dir = _find_run_dir(args.name, args.run_dir)
        if args.command == "stats":
            return stats_main(run_dir, args.json)
        return top_main(run_dir, args.once, args.interval)
    if args.command == "monitor":
        from ._runtime._monitor import monitor_main

        return monitor_main(_find_run_dir(args.name, args.run_dir), args.replica)
    if args.command == "replay":
        return _replay(args)
    if args.command == "snapshot":
        return _snapshot(args)
    if args.command == "reconfigure":
        return _reconfigure(args)
    return 2


def _reconfigure(args: argparse.Namespace) -> int:
    from . import reconfiguration
    from ._core._errors import DominoesError
    from ._runtime._client import connect

    if args.what == "add":
        spec = reconfiguration.add(args.component, **args.kwargs)
    elif args.what == "remove":
        spec = reconfiguration.remove(args.component)
    elif args.what == "bind":
        spec = reconfiguration.bind(args.event, args.handler, args.order, **args.static)
    elif args.what == "copies":
        spec = reconfiguration.copies(args.component, args.copies)
    elif args.what == "mode":
        spec = reconfiguration.mode(args.event, None if args.mode == "caller" else args.mode)
    else:
        spec = reconfiguration.unbind(args.binding)

    async def submit() -> object:
        client = await connect(args.name, run_dir=args.run_dir)
        try:
            return await client.submit(reconfiguration.EVENT, spec)
        finally:
            await client.close()

    try:
        result = asyncio.run(submit())
    except (ConnectionError, PermissionError, TimeoutError) as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
        return 1
    except DominoesError as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
        return 1
    print(result)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from ._runtime._replay import ReplayOptions, replay_main

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    # The current directory is importable, as for ``dominoes run`` (appended:
    # a checkout's dominoes/ must not shadow the installed package).
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    options = ReplayOptions(
        data_dir=args.data_dir,
        until=args.until,
        from_snapshot=args.from_snapshot,
        step=args.step,
        interactive=sys.stdin.isatty() and not args.json,
        digest=args.digest,
        digest_every=args.digest_every,
        save=args.save,
        as_json=args.json,
    )
    return replay_main(args.service, options)


def _snapshot(args: argparse.Namespace) -> int:
    from ._runtime._control import SnapshotRequestError, request_snapshot

    run_dir = _find_run_dir(args.name, args.run_dir)
    try:
        reply = request_snapshot(run_dir, args.timeout)
    except SnapshotRequestError as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
        return 1
    for one in reply.get("each", [reply]):  # partitioned: each replica's own
        pause_ms = float(one["pause"]) * 1e3
        print(f"snapshot at seq {one['seq']}: {one['path']} (fork took {pause_ms:.1f} ms)")
    return 0
