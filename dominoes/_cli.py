"""The ``dominoes`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dominoes",
        description="Run replicated multi-core asyncio services.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a service as one pinned replica per core",
        description="Run SERVICE (module:attribute naming a dominoes.Service) as N "
        "replica processes sharing one log.",
    )
    run.add_argument(
        "target", metavar="SERVICE", help="module:attribute, e.g. examples.counter:service"
    )
    run.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="replicas (default: one per core in the affinity mask)",
    )
    run.add_argument(
        "--loop",
        default=None,
        help="event-loop policy: uvloop (the default when installed), asyncio, or a plugin",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=7000, help="TCP and UDP port (default 7000)")
    run.add_argument("--log", default="shm", choices=["shm"], help="log backend (default shm)")
    run.add_argument(
        "--capacity", type=int, default=None, help="log slots, a power of two (default 16384)"
    )
    run.add_argument("--slot-size", type=int, default=None, help="bytes per log slot (default 256)")
    run.add_argument("--run-dir", type=Path, default=None, help="directory for the control socket")
    run.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    run.add_argument(
        "--monitor",
        action="store_true",
        help="start aiomonitor on every replica (127.0.0.1 only; it offers a Python REPL)",
    )
    run.add_argument(
        "--monitor-port",
        type=int,
        default=20100,
        metavar="BASE",
        help="replica i serves the monitor on BASE+10*i (web UI +1, REPL +2); default 20100",
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
        type=float,
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
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="restart a replica that has not applied its next entry for this long "
        "(default 5; 0 disables)",
    )
    run.add_argument(
        "--apply-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="interrupt an apply that runs this long and roll the replica back to before its "
        "entry; an entry every replica gives up on fails as a poison entry (default 2; 0 "
        "disables)",
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
        cmd.add_argument(
            "name", nargs="?", default=None, help="the service's name (finds its run dir)"
        )
        cmd.add_argument("--run-dir", type=Path, default=None, help="the service's run dir")
        if name == "stats":
            cmd.add_argument("--json", action="store_true", help="one JSON document")
        else:
            cmd.add_argument("--once", action="store_true", help="print one frame and exit")
            cmd.add_argument("--interval", type=float, default=1.0, help="seconds per refresh")
    return parser


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


def _gc_setting(
    given: tuple[int, int, int] | str | None, default: tuple[int, int, int]
) -> tuple[int, int, int] | None:
    """What ``--gc-threshold`` asks of the replicas (None: CPython's own collector)."""
    if given is None:
        return default
    if isinstance(given, str):  # "python"
        return None
    return given


def _find_run_dir(name: str | None, run_dir: Path | None) -> Path:
    from ._runtime._supervisor import default_run_dir

    if run_dir is not None:
        return run_dir
    if name is not None:
        return default_run_dir(name)
    parent = default_run_dir("x").parent
    running = sorted(p.parent for p in parent.glob("*/control.sock")) if parent.exists() else []
    if len(running) == 1:
        return running[0]
    names = ", ".join(p.name for p in running) or "none found"
    raise SystemExit(f"dominoes: error: name the service (running: {names}) or pass --run-dir")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from ._core._log import DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE
        from ._runtime._ports import PortInUseError
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
            sys_path=[cwd],
            monitor_port=args.monitor_port if args.monitor else None,
            digest_every=args.digest_every,
            stall_threshold=args.stall_ms / 1000,
            stuck_after=args.stuck_after or None,
            apply_timeout=args.apply_timeout or None,
            reads=args.reads,
            gc_threshold=_gc_setting(args.gc_threshold, DEFAULT_GC_THRESHOLD),
        )
        try:
            return run(config)
        except PortInUseError as exc:  # one line, exit 1: nothing was started
            print(f"dominoes: {exc}", file=sys.stderr)
            return 1
        except (ImportError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
            print(f"dominoes: error: {exc}", file=sys.stderr)
            return 2
    if args.command in ("stats", "top"):
        from ._runtime._top import stats_main, top_main

        run_dir = _find_run_dir(args.name, args.run_dir)
        if args.command == "stats":
            return stats_main(run_dir, args.json)
        return top_main(run_dir, args.once, args.interval)
    return 2
