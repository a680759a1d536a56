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
        "--loop", default="uvloop", help="event-loop policy: uvloop (default), asyncio, or a plugin"
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from ._core._log import DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE
        from ._runtime._supervisor import SupervisorConfig, run

        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s supervisor %(name)s: %(message)s",
        )
        # Like uvicorn: the current directory is importable, so
        # ``dominoes run examples.counter:service`` works from a checkout.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        config = SupervisorConfig(
            target=args.target,
            replicas=args.replicas,
            loop=args.loop,
            host=args.host,
            port=args.port,
            capacity=args.capacity or DEFAULT_CAPACITY,
            slot_size=args.slot_size or DEFAULT_SLOT_SIZE,
            run_dir=args.run_dir,
            log_level=args.log_level.upper(),
            sys_path=[cwd],
        )
        try:
            return run(config)
        except (ImportError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
            print(f"dominoes: error: {exc}", file=sys.stderr)
            return 2
    return 2
