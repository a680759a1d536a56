"""aiomonitor on a live replica, with dominoes commands (opt-in: ``--monitor``).

Replica ``i`` serves aiomonitor's telnet console on ``BASE + 10*i``, its web
UI on ``BASE + 10*i + 1`` and its Python REPL on ``BASE + 10*i + 2``, on
127.0.0.1 only: the console is a Python REPL inside the replica.

aiomonitor reports port clashes silently (the web UI binds with
``reuse_port``; the telnet bind fails in a background thread), so every port
is checked before the start and the telnet port probed after it; a clash is a
startup error naming the port.

The commands run in aiomonitor's thread; each reads the replica on its own
event loop (``run_coroutine_threadsafe``), so what it prints is a consistent
view.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("MonitorPortError", "monitor_ports", "start_monitor")

#: Ports per replica: telnet console, web UI, Python REPL.
PORT_STRIDE: Final = 10
PROBE_TIMEOUT: Final = 3.0


class MonitorPortError(RuntimeError):
    """A monitor port is already in use."""


def monitor_ports(base: int, index: int) -> tuple[int, int, int]:
    first = base + PORT_STRIDE * index
    return first, first + 1, first + 2


def _check_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise MonitorPortError(f"monitor port {port} on {host} is in use: {exc}") from None


def _probe(host: str, port: int) -> None:
    """Wait until something listens on ``port``, without connecting to it.

    A test socket with SO_REUSEADDR binds as long as nobody listens there
    (and does not keep aiomonitor from binding); once the monitor's thread
    listens, the bind fails with EADDRINUSE.  Connecting instead would make
    the telnet server log a broken pipe.
    """
    end = time.monotonic() + PROBE_TIMEOUT
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return
        if time.monotonic() > end:
            raise MonitorPortError(
                f"monitor port {port} on {host} did not open (in use by another process?)"
            )
        time.sleep(0.02)


def start_monitor(replica: Replica, base: int, host: str = "127.0.0.1") -> Any:
    """Start aiomonitor for ``replica`` on its ports; raises MonitorPortError on a clash."""
    import aiomonitor  # heavy (0.4 s, 30 MiB): only when asked for

    _register_commands()
    termui, webui, console = monitor_ports(base, replica.index)
    for port in (termui, webui, console):
        _check_free(host, port)
    loop = asyncio.get_running_loop()
    monitor = aiomonitor.start_monitor(
        loop,
        host=host,
        port=termui,
        webui_port=webui,
        console_port=console,
        locals={
            "replica": replica,
            "service": replica.service,
            "components": replica.core.machine.components,
        },
    )
    _probe(host, termui)
    _probe(host, webui)
    return monitor


# --- commands -------------------------------------------------------------------------

_registered = False


def _on_loop(monitor: Any, fn: Callable[[], Any]) -> Any:
    async def call() -> Any:
        return fn()

    loop: asyncio.AbstractEventLoop = monitor._monitored_loop
    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=5)


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    import click
    from aiomonitor.termui.commands import auto_command_done, custom_help_option, monitor_cli

    def replica_of(ctx: click.Context) -> Replica:
        r: Replica = ctx.obj.console_locals["replica"]
        return r

    @monitor_cli.command(name="replica")  # type: ignore[untyped-decorator]
    @custom_help_option  # type: ignore[untyped-decorator]
    @auto_command_done  # type: ignore[untyped-decorator]
    def do_replica(ctx: click.Context) -> None:
        """This replica: cursor, lag, rates, claims, effects, loop lag"""
        s = _on_loop(ctx.obj, replica_of(ctx).statistics)
        c = s.core
        click.echo(
            _table(
                [
                    ("index", s.index),
                    ("core", s.cpu),
                    ("pid", s.pid),
                    ("loop", s.loop),
                    ("state", s.state),
                    ("applied seq", s.applied_seq),
                    ("log tail", s.tail),
                    ("lag", s.lag),
                    ("entries/s", f"{s.entries_per_s:.1f}"),
                    ("claims won", c.claims_won),
                    ("owned entries", c.owned_entries),
                    ("effects run", s.effects_run),
                    ("queries", s.queries),
                    ("queries/s", f"{s.queries_per_s:.1f}"),
                    ("loop lag ms", f"{s.loop_lag_ms:.2f} (max {s.loop_lag_max_ms:.2f})"),
                    ("stalls", f"{c.stalls} applies, {s.effect_stalls} effects"),
                    ("divergences", c.divergences),
                    ("append refusals", c.append_refusals),
                ]
            )
        )

    @monitor_cli.command(name="log")  # type: ignore[untyped-decorator]
    @custom_help_option  # type: ignore[untyped-decorator]
    @auto_command_done  # type: ignore[untyped-decorator]
    def do_log(ctx: click.Context) -> None:
        """The shared log: tail, free slots, slowest and dead replicas"""
        s = _on_loop(ctx.obj, replica_of(ctx).log_statistics)
        click.echo(
            _table(
                [
                    ("tail", s.tail),
                    ("capacity", s.capacity),
                    ("free slots", s.free_slots),
                    ("slowest replica", f"{s.slowest_replica} (cursor {s.slowest_cursor})"),
                    ("live", ", ".join(map(str, s.live)) or "-"),
                    ("joining", ", ".join(map(str, s.joining)) or "-"),
                    ("dead", ", ".join(map(str, s.dead)) or "-"),
                ]
            )
        )

    @monitor_cli.command(name="components")  # type: ignore[untyped-decorator]
    @custom_help_option  # type: ignore[untyped-decorator]
    @auto_command_done  # type: ignore[untyped-decorator]
    def do_components(ctx: click.Context) -> None:
        """Each component and the size of its state"""
        s = _on_loop(ctx.obj, replica_of(ctx).registry_statistics)
        rows = [
            (c.name, ", ".join(f"{k}={v}" for k, v in c.sizes.items()) or "-") for c in s.components
        ]
        rows.append(("(registry)", f"{s.events} events, {s.bindings} bindings"))
        click.echo(_table(rows))

    @monitor_cli.command(name="digest")  # type: ignore[untyped-decorator]
    @custom_help_option  # type: ignore[untyped-decorator]
    @auto_command_done  # type: ignore[untyped-decorator]
    def do_digest(ctx: click.Context) -> None:
        """The state digest at the current seq, per component"""
        seq, digest = _on_loop(ctx.obj, replica_of(ctx).digest)
        click.echo(_table([("seq", seq), *sorted(digest.items())]))
