"""aiomonitor on a live replica, with dominoes commands (opt-in: ``--monitor``).

The monitor's console runs Python inside the replica (its ``console``
command is a REPL), so who may reach it is the whole question.

* ``--monitor`` (the default way): replica ``i`` serves the console on the
  unix socket ``monitor-<i>.sock`` and the web UI on ``monitor-<i>-web.sock``
  in the service's 0700 run directory, and refuses any process of another uid
  (``SO_PEERCRED``); the REPL needs no socket of its own.  See
  ``_monitor_unix``.  ``dominoes monitor NAME --replica i`` is the client
  (:func:`monitor_main`): a small telnet that checks, in turn, that the
  socket is served by its own uid.
* ``--monitor-tcp`` (an explicit opt-in, warned about at start): aiomonitor
  as it comes, the console on ``BASE + 10*i``, the web UI on ``+ 1`` and the
  REPL on ``+ 2``, on 127.0.0.1.  TCP cannot tell who connects: every local
  user gets a Python shell as the service's user.

aiomonitor reports TCP port clashes silently (the web UI binds with
``reuse_port``; the telnet bind fails in a background thread), so every port
is checked before the start and the telnet port probed after it; a clash is a
startup error naming the port.

The commands run in aiomonitor's thread; each reads the replica on its own
event loop (``run_coroutine_threadsafe``), so what it prints is a consistent
view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._peercred import ForeignServerError, connect_checked

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = (
    "MONITOR_UNIX",
    "MonitorPortError",
    "monitor_main",
    "monitor_ports",
    "monitor_socket",
    "monitor_web_socket",
    "start_monitor",
)

log = logging.getLogger("dominoes.monitor")

#: The ``monitor_port`` (of ``SupervisorConfig`` and ``ReplicaConfig``) that
#: means "unix sockets in the run dir" (``--monitor``); a positive one is the
#: TCP base port of ``--monitor-tcp``, and None is no monitor.
MONITOR_UNIX: Final = 0
#: Ports per replica: telnet console, web UI, Python REPL.
PORT_STRIDE: Final = 10
PROBE_TIMEOUT: Final = 3.0


class MonitorPortError(RuntimeError):
    """The monitor cannot serve: a port in use, or a socket that cannot be bound."""


def monitor_ports(base: int, index: int) -> tuple[int, int, int]:
    first = base + PORT_STRIDE * index
    return first, first + 1, first + 2


def monitor_socket(run_dir: Path, index: int) -> Path:
    """Replica ``index``'s console socket (``--monitor``)."""
    return run_dir / f"monitor-{index}.sock"


def monitor_web_socket(run_dir: Path, index: int) -> Path:
    """Replica ``index``'s web UI socket (``--monitor``)."""
    return run_dir / f"monitor-{index}-web.sock"


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
    """Start aiomonitor for ``replica``: on unix sockets if ``base`` is
    :data:`MONITOR_UNIX`, else on TCP ports from ``base``.  Raises
    MonitorPortError if it cannot serve."""
    import aiomonitor  # heavy (0.4 s, 30 MiB): only when asked for

    _register_commands()
    _register_reports(replica)
    locals_ = {
        "replica": replica,
        "service": replica.service,
        "components": replica.core.machine.components,
    }
    loop = asyncio.get_running_loop()
    if base == MONITOR_UNIX:
        from ._monitor_unix import UnixMonitor, register_console

        register_console()
        console = monitor_socket(replica.run_dir, replica.index)
        unix = UnixMonitor(
            loop,
            console_path=console,
            web_path=monitor_web_socket(replica.run_dir, replica.index),
            what=f"the monitor of replica {replica.index} of service {replica.service.name!r}",
            locals=locals_,
        )
        try:
            unix.start()
        except OSError as exc:
            raise MonitorPortError(f"cannot serve the monitor on {console}: {exc}") from None
        log.info("replica %d: monitor on %s (dominoes monitor)", replica.index, console)
        return unix
    termui, webui, repl = monitor_ports(base, replica.index)
    for port in (termui, webui, repl):
        _check_free(host, port)
    monitor = aiomonitor.start_monitor(
        loop, host=host, port=termui, webui_port=webui, console_port=repl, locals=locals_
    )
    _probe(host, termui)
    _probe(host, webui)
    log.warning(
        "replica %d: --monitor-tcp: the monitor listens on %s ports %d (console), %d (web UI) "
        "and %d (Python REPL) without authentication: every local user can reach it and run "
        "Python in this replica as uid %d",
        replica.index,
        host,
        termui,
        webui,
        repl,
        os.geteuid(),
    )
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


def _show(value: Any) -> str:
    """A report as text: a mapping as ``key  value`` rows, a list of mappings as one
    ``k=v ...`` line each, anything else as itself."""
    if isinstance(value, dict) and value:
        return _table([(str(k), _show(v) if isinstance(v, dict) else v) for k, v in value.items()])
    if isinstance(value, list):
        if not value:
            return "(none)"
        return "\n".join(
            " ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else str(item)
            for item in value
        )
    return str(value)


def _report_command(name: str, fn: Callable[[str | None], Any]) -> Any:
    import click
    from aiomonitor.termui.commands import auto_command_done, custom_help_option

    def report(ctx: click.Context, detail: str | None) -> None:
        click.echo(_show(_on_loop(ctx.obj, lambda: fn(detail))))

    report.__doc__ = f"The service's {name} report (DETAIL: a part of it)"
    return click.argument("detail", required=False)(custom_help_option(auto_command_done(report)))


def _register_reports(replica: Replica) -> None:
    """A monitor command ``NAME [DETAIL]`` for each of the service's report sections."""
    from aiomonitor.termui.commands import monitor_cli

    for name, fn in replica.reports.items():
        if name in monitor_cli.commands:
            continue

        monitor_cli.command(name=name)(_report_command(name, fn))


# --- the client: dominoes monitor -------------------------------------------------------------

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
TTYPE, NAWS = 24, 31
TTYPE_IS: Final = 0
CTRL_D: Final = b"\x04"
#: What the monitor prints when a Python REPL session ends (``_monitor_unix``).
REPL_CLOSED: Final = b"console session is closed"


def monitor_main(run_dir: Path, replica: int) -> int:
    """``dominoes monitor``: replica ``replica``'s console on this terminal, like telnet.

    On a terminal, keys go to the console as typed (raw mode; the console
    echoes and edits the line) and Ctrl-D or ``exit`` leaves.  From a pipe,
    each line is a command, and the end of input leaves once the commands
    before it have run.
    """
    path = monitor_socket(run_dir, replica)
    try:
        sock = connect_checked(path, None)
    except (FileNotFoundError, ConnectionRefusedError):
        print(
            f"dominoes: error: no monitor at {path} (is the service running with --monitor, "
            f"with a replica {replica}?)",
            file=sys.stderr,
        )
        return 1
    except ForeignServerError as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dominoes: error: cannot reach {path} ({exc.strerror})", file=sys.stderr)
        return 1
    with sock:
        return _Session(sock, sys.stdin.fileno(), sys.stdout.fileno()).run()


def telnet_split(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Split what a telnet server sent: (text, commands, an incomplete command left over).

    ``IAC IAC`` is a 0xFF byte of text; ``IAC DO x`` and the like are
    commands, and so is a whole ``IAC SB ... IAC SE`` subnegotiation.
    """
    text = bytearray()
    commands: list[bytes] = []
    i, n = 0, len(data)
    while i < n:
        j = data.find(IAC, i)
        if j < 0:
            text += data[i:]
            break
        text += data[i:j]
        if j + 1 >= n:
            return bytes(text), commands, data[j:]
        op = data[j + 1]
        if op == IAC:
            text.append(IAC)
            i = j + 2
        elif op in (WILL, WONT, DO, DONT):
            if j + 2 >= n:
                return bytes(text), commands, data[j:]
            commands.append(data[j : j + 3])
            i = j + 3
        elif op == SB:
            end = data.find(bytes([IAC, SE]), j + 2)
            if end < 0:
                return bytes(text), commands, data[j:]
            commands.append(data[j : end + 2])
            i = end + 2
        else:
            commands.append(data[j : j + 2])
            i = j + 2
    return bytes(text), commands, b""


class _Session:
    """One console session: the socket on one side, this process's stdin and stdout on the other.

    prompt_toolkit's telnet server waits for the client's terminal type and
    window size before it reads any input, so both are sent at once (the
    size again whenever the terminal is resized).
    """

    def __init__(self, sock: socket.socket, stdin: int, stdout: int) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stdout = stdout
        self.tty = os.isatty(stdin)
        self.term = (os.environ.get("TERM") or "xterm") if self.tty else "xterm"
        self.leftover = b""
        self.eof = False  # stdin ended: leaving

    def run(self) -> int:
        import termios
        import tty

        saved = termios.tcgetattr(self.stdin) if self.tty else None
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
        sel = selectors.DefaultSelector()
        try:
            self._send(self._terminal_type() + self._window_size())
            if saved is not None:
                tty.setraw(self.stdin)
            sel.register(self.sock, selectors.EVENT_READ, "sock")
            try:
                sel.register(self.stdin, selectors.EVENT_READ, "stdin")
            except PermissionError:  # a regular file or /dev/null: epoll refuses it
                self._from_file()
            sel.register(wake_r, selectors.EVENT_READ, "signal")
            first = True
            while True:
                for key, _ in sel.select():
                    if key.data == "sock":
                        data = self._recv()
                        if data is None:
                            return 0
                        if first and data.startswith(b"dominoes: PermissionError"):
                            os.write(2, data.strip() + b"\n")
                            return 1
                        first = False
                        self._from_server(data)
                    elif key.data == "stdin":
                        self._from_user(sel)
                    else:
                        with contextlib.suppress(OSError):
                            os.read(wake_r, 512)
                        self._send(self._window_size())
        finally:
            sel.close()
            signal.signal(signal.SIGWINCH, old_winch)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            if saved is not None:
                termios.tcsetattr(self.stdin, termios.TCSADRAIN, saved)

    def _recv(self) -> bytes | None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return None
        return data or None

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server went away: reading says so
            self.sock.sendall(data)

    def _from_server(self, data: bytes) -> None:
        # The server's negotiation (echo, line mode, "send your terminal type")
        # needs no answer: the terminal type and size went unasked.
        text, _, self.leftover = telnet_split(self.leftover + data)
        view = memoryview(text)
        while view:
            view = view[os.write(self.stdout, view) :]
        if self.eof and REPL_CLOSED in text:
            self._send(CTRL_D)  # out of the REPL: now leave the console too

    def _from_file(self) -> None:
        """Input that is always readable (a file, /dev/null): send it all, then leave."""
        while data := os.read(self.stdin, 65536):
            self._forward(data)
        self.eof = True
        self._send(CTRL_D)

    def _from_user(self, sel: selectors.BaseSelector) -> None:
        try:
            data = os.read(self.stdin, 4096)
        except OSError:
            data = b""
        if not data:
            # The end of a pipe (or a hang-up): Ctrl-D leaves the console once the
            # commands sent before it have run; the server then closes.
            sel.unregister(self.stdin)
            self.eof = True
            self._send(CTRL_D)
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        if not self.tty:
            data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")  # Enter is CR
        self._send(data.replace(bytes([IAC]), bytes([IAC, IAC])))

    def _terminal_type(self) -> bytes:
        return (
            bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, TTYPE_IS])
            + self.term.encode("ascii", "replace")
            + bytes([IAC, SE])
        )

    def _window_size(self) -> bytes:
        cols, rows = 200, 50  # a pipe: wide enough for the tables
        for fd in (self.stdout, self.stdin):
            if os.isatty(fd):
                with contextlib.suppress(OSError):
                    cols, rows = os.get_terminal_size(fd)
                    break
        size = struct.pack(">HH", min(cols, 0xFFFF), min(rows, 0xFFFF))
        return (
            bytes([IAC, WILL, NAWS, IAC, SB, NAWS])
            + size.replace(b"\xff", b"\xff\xff")
            + (bytes([IAC, SE]))
        )
