"""aiomonitor on unix sockets: only the service's own uid reaches a replica's monitor.

Why
---
aiomonitor 0.7 serves its console (telnet), its web UI and, while someone is
in its ``console`` command, a Python REPL, all on TCP ports without any
authentication.  On 127.0.0.1 that is every local user, and the REPL runs
Python as the service's user: a root-run service gave uid 65534 a root shell.
TCP cannot tell who connects; a unix socket can.  So by default the same
monitor is served on unix sockets in the service's 0700 run directory:

* the console on ``monitor-<i>.sock`` (0600), through prompt_toolkit's
  telnet server, accepting only a process of the service's uid
  (``SO_PEERCRED``, see ``_peercred``); ``dominoes monitor NAME --replica i``
  is its client;
* the web UI on ``monitor-<i>-web.sock`` (0600), every request checked the
  same way (``curl --unix-socket PATH http://monitor/``, or ``ssh -L
  8080:PATH host`` for a browser);
* the Python REPL of the ``console`` command over a socketpair inside the
  process: there is no socket anyone else could connect to.

TCP stays available as an explicit opt-in (``--monitor-tcp``, see
``_monitor``).

The UI thread is aiomonitor's (``Monitor._ui_main_async``, reproduced here
with the listeners swapped), so this module follows aiomonitor 0.7's
internals; the integration tests drive every part of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, cast

import aioconsole  # type: ignore[import-untyped]
import click
import janus
from aiohttp import web
from aiomonitor import Monitor
from aiomonitor.console import ConsoleProxy
from aiomonitor.termui.commands import (
    auto_async_command_done,
    interact,
    monitor_cli,
    print_ok,
)
from aiomonitor.webui.app import init_webui
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.contrib.telnet.server import TelnetConnection, TelnetServer

from ._peercred import peer_refusal

__all__ = ("UnixMonitor",)

log = logging.getLogger("dominoes.monitor")

#: How long closing a console session waits for its REPL to finish.
REPL_CLOSE_TIMEOUT: Final = 5.0


class UnixMonitor(Monitor):  # type: ignore[misc]  # aiomonitor is untyped
    """An aiomonitor ``Monitor`` served on unix sockets, to this uid only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        console_path: Path,
        web_path: Path,
        what: str,
        locals: dict[str, Any],
    ) -> None:
        with _quiet("aiomonitor.monitor"):  # it would announce TCP ports it never opens
            super().__init__(
                loop, host="unix", termui_port=0, webui_port=0, console_port=0, locals=locals
            )
        self.console_path = console_path
        self.web_path = web_path
        #: who the sockets belong to, in refusals: "replica 0 of service 'kv'"
        self.what = what
        self._startup_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<UnixMonitor: {self.console_path}>"

    def start(self) -> None:
        """Start the UI thread; once this returns, both sockets accept connections.

        Raises ``OSError`` if a socket cannot be served (aiomonitor's own
        start would wait forever for a thread that died).
        """
        super().start()
        if self._startup_error is not None:
            self._ui_thread.join()
            self._closed = True  # nothing left to close
            raise self._startup_error

    async def _ui_main_async(self) -> None:
        loop = asyncio.get_running_loop()
        self._termination_info_queue: janus.Queue[Any] = janus.Queue()
        self._cancellation_chain_queue: janus.Queue[Any] = janus.Queue()
        self._ui_loop = loop
        self._ui_forever_future = loop.create_future()
        self._ui_termination_handler_task = loop.create_task(self._ui_handle_termination_updates())
        self._ui_cancellation_handler_task = loop.create_task(
            self._ui_handle_cancellation_updates()
        )
        listener: socket.socket | None = None
        telnet_server: _UnixTelnetServer | None = None
        webui_runner: web.AppRunner | None = None
        try:
            try:
                listener = _listen(self.console_path)
                telnet_server = _UnixTelnetServer(
                    listener, self.what, functools.partial(interact, self)
                )
                webui_app = await init_webui(self)
                webui_app.middlewares.append(_only_this_uid(self.what))
                webui_runner = web.AppRunner(webui_app)
                await webui_runner.setup()
                with contextlib.suppress(FileNotFoundError):
                    self.web_path.unlink()  # a previous incarnation's
                await web.UnixSite(webui_runner, str(self.web_path)).start()
                os.chmod(self.web_path, 0o600)
                telnet_server.start()
                await asyncio.sleep(0)  # the server's task takes the listener
            except Exception as exc:  # noqa: BLE001 - raised by start(), in the replica's thread
                self._startup_error = exc
                return
            finally:
                self._ui_started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ui_forever_future
        finally:
            termui_tasks = {*self._termui_tasks}
            for termui_task in termui_tasks:
                termui_task.cancel()
            await asyncio.gather(*termui_tasks, return_exceptions=True)
            for task in (self._ui_termination_handler_task, self._ui_cancellation_handler_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if telnet_server is not None:
                await telnet_server.stop()
            if listener is not None:
                listener.close()  # the server closes it, if it ever ran
            if webui_runner is not None:
                await webui_runner.cleanup()
            for path in (self.console_path, self.web_path):
                with contextlib.suppress(OSError):
                    path.unlink()


# --- the console: prompt_toolkit's telnet server on a unix socket ------------------------------


def _listen(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` (0600), replacing a stale one."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a previous incarnation's
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


class _Accepted:
    """Stands in for the listener in ``TelnetServer._accept``: a connection already checked."""

    def __init__(self, conn: socket.socket, addr: tuple[str, str]) -> None:
        self._pair = conn, addr

    def accept(self) -> tuple[socket.socket, tuple[str, str]]:
        return self._pair


class _UnixTelnetServer(TelnetServer):
    """prompt_toolkit's telnet server on a listening unix socket, to this uid only."""

    def __init__(
        self,
        listener: socket.socket,
        what: str,
        interact: Callable[[TelnetConnection], Coroutine[Any, Any, None]],
    ) -> None:
        super().__init__(host=str(listener.getsockname()), port=0, interact=interact)
        self._listener = listener
        self._what = what

    def _create_socket(self, host: str, port: int) -> socket.socket:  # type: ignore[override]
        # Bound and listening already: when the monitor reports it started, it serves.
        return self._listener

    def _accept(self, listen_socket: socket.socket) -> None:
        try:
            conn, _ = listen_socket.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        refusal = peer_refusal(conn, self._what, "monitor")
        if refusal is not None:
            with contextlib.suppress(OSError):
                conn.settimeout(1.0)
                conn.sendall(f"dominoes: {refusal}\r\n".encode())
            conn.close()
            return
        super()._accept(cast(socket.socket, _Accepted(conn, (self.host, "unix"))))


# --- the web UI: every request from this uid only --------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _only_this_uid(what: str) -> Any:
    @web.middleware
    async def only_this_uid(request: web.Request, handler: _Handler) -> web.StreamResponse:
        transport = request.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        refusal = peer_refusal(sock, what, "monitor web UI")
        if refusal is not None:
            raise web.HTTPForbidden(text=refusal + "\n")
        return await handler(request)

    return only_this_uid


# --- the console command: the Python REPL over a socketpair ------------------------------------

_console_registered = False


def register_console() -> None:
    """Make aiomonitor's ``console`` command reach the REPL through a socketpair.

    aiomonitor's own starts an aioconsole server on a TCP port for the
    session; any local user could connect to it while it is open.
    """
    global _console_registered
    if _console_registered:
        return
    _console_registered = True

    # No --help option: aiomonitor's (custom_help_option) marks the command
    # done as soon as it is parsed, and the console prompt would then read
    # input alongside the REPL's, taking keystrokes meant for it.
    @monitor_cli.command(name="console")  # type: ignore[untyped-decorator]
    def do_console(ctx: click.Context) -> None:
        """Switch to async Python REPL"""
        self: Monitor = ctx.obj

        @auto_async_command_done  # type: ignore[untyped-decorator]
        async def _console(ctx: click.Context) -> None:
            app_session = get_app_session()
            ours, theirs = socket.socketpair()
            repl = asyncio.run_coroutine_threadsafe(
                _repl(theirs, self.console_locals, self._monitored_loop), self._monitored_loop
            )
            try:
                async with _PairProxy(app_session.input, app_session.output, ours) as proxy:
                    await proxy.interact()
            finally:
                # The proxy closed its end: the REPL reads EOF and ends.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(repl), REPL_CLOSE_TIMEOUT)
                print_ok("The console session is closed.")

        task = self._ui_loop.create_task(_console(ctx))
        self._termui_tasks.add(task)


async def _repl(
    sock: socket.socket, locals_: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    """aioconsole's REPL on one end of a socketpair; runs on the monitored loop."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        console = aioconsole.AsynchronousConsole(
            streams=(reader, writer), locals=locals_, loop=loop
        )
        await console.interact(banner=None, stop=False, handle_sigint=False)
    finally:
        writer.close()


class _PairProxy(ConsoleProxy):  # type: ignore[misc]  # aiomonitor is untyped
    """aiomonitor's REPL proxy over a socketpair instead of a TCP connection."""

    def __init__(self, stdin: Any, stdout: Any, sock: socket.socket) -> None:
        super().__init__(stdin, stdout, "", 0)
        self._sock = sock

    async def __aenter__(self) -> _PairProxy:
        self._stdout.write_raw("\r\n")
        try:
            self._conn_reader, self._conn_writer = await asyncio.open_unix_connection(
                sock=self._sock
            )
        except BaseException:
            self._sock.close()
            raise
        self._closed = asyncio.Event()
        self._recv_task = asyncio.create_task(self._handle_received())
        self._input_task = asyncio.create_task(self._handle_user_input())
        return self


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
