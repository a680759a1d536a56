"""ASGI ingress: every replica serves the service's web app (Starlette, FastAPI, ...).

Each replica runs uvicorn's HTTP/1.1 protocol (httptools) and its WebSocket
protocol (websockets) on its own event loop, pinned to its core, over its own
``SO_REUSEPORT`` socket: the kernel spreads connections over the replicas.
dominoes does not parse HTTP.  It embeds uvicorn's ``Server`` below its
``serve()`` (which would install its own signal handlers and own the loop)
and drives ``startup``, the date-header ticker and ``shutdown`` itself,
because the replica process already owns the loop and the signals.  Why
uvicorn rather than granian's embedded server: see docs/howto/web.md.

What the shell adds to uvicorn:

* ``dominoes.current()`` is set for every request (a context variable), so a
  handler reaches its replica's :class:`~dominoes.State`;
* **limits** (``HttpOptions``): request headers larger than
  ``max_header_bytes`` get ``431``, headers not complete within
  ``header_timeout`` seconds (slowloris) close the connection, a body over
  ``max_body`` gets ``413`` without reaching the app;
* **graceful stop** on SIGTERM (:meth:`AsgiServer.stop_accepting`, then
  :meth:`AsgiServer.shutdown`): the listening socket closes first (new
  connections go to replicas still listening, or are refused once none is),
  subscriptions end, requests in flight finish within ``graceful_timeout``
  while the replica keeps applying the log, then the app's lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._state import State, bind_process, current_var

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("AsgiServer", "AsgiStartupError", "HttpOptions", "start_asgi")

log = logging.getLogger("dominoes.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: uvicorn's listening backlog, per replica
BACKLOG: Final = 2048


class HttpOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How replicas serve an ASGI app (``dominoes run`` options)."""

    #: log every request (uvicorn's access log); off by default
    access_log: bool = False
    #: bytes of request line plus headers before ``431``
    max_header_bytes: int = 64 * 1024
    #: seconds for a request's headers to arrive before the connection closes
    header_timeout: float = 10.0
    #: bytes of request body before ``413`` (0: no limit)
    max_body: int = 16 * 1024 * 1024
    #: seconds requests in flight get to finish on SIGTERM
    graceful_timeout: float = 5.0
    #: seconds an idle keep-alive connection stays open
    keep_alive: int = 5
    #: largest WebSocket message, in bytes
    ws_max_size: int = 16 * 1024 * 1024


class AsgiStartupError(Exception):
    """The app's lifespan startup failed, or uvicorn is not installed."""


class _HeadersTooLargeError(Exception):
    pass


def _protocol_class(options: HttpOptions) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header size limit and a header deadline."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    limit = options.max_header_bytes
    too_large = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
        b"charset=utf-8\r\nconnection: close\r\ncontent-length: 32\r\n\r\n"
        b"Request header fields too large\n"
    )

    class Protocol(HttpToolsProtocol):
        # The header deadline is checked by one sweep per replica (``sweep_headers``),
        # not a timer per request: arming and cancelling a TimerHandle for every
        # request cost about 3% of a replica's CPU under load.
        _header_bytes = 0
        _too_large = False
        _in_headers = False
        _headers_since = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._in_headers = True
            self._headers_since = self.loop.time()

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > limit:
                self._too_large = True
                raise _HeadersTooLargeError

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            self._headers_since = self.loop.time()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                super().send_400_response(msg)
                return
            if not self.transport.is_closing():
                self.transport.write(too_large)
                self.transport.close()

    return Protocol


def sweep_headers(connections: Iterable[Any], now: float, deadline: float) -> int:
    """Close the connections whose request headers began more than ``deadline`` ago."""
    closed = 0
    for conn in list(connections):
        if (
            getattr(conn, "_in_headers", False)
            and now - conn._headers_since > deadline
            and not conn.transport.is_closing()
        ):
            conn.transport.close()
            closed += 1
    if closed:
        log.info("closed %d connections whose request headers took over %gs", closed, deadline)
    return closed


def _wrap(app: App, state: State, max_body: int) -> App:
    """The app, with ``dominoes.current()`` set and the body limit enforced."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        current_var.set(state)  # each request runs in a task of its own
        if max_body and scope["type"] == "http":
            chunked = False
            for name, value in scope["headers"]:
                if name == b"content-length":
                    # the parser never delivers more than the declared length
                    try:
                        declared = int(value)
                    except ValueError:
                        declared = 0
                    if declared > max_body:
                        await _refuse_body(send)
                        return
                elif name == b"transfer-encoding":
                    chunked = True
            if chunked:  # no declared length: count what arrives
                limited = _Limited(receive, send, max_body)
                await app(scope, limited.receive, limited.send)
                return
        await app(scope, receive, send)

    return wrapped


async def _refuse_body(send: Send) -> None:
    body = b"Request body too large\n"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Limited:
    """``receive`` counting body bytes: past the limit, the app sees a disconnect.

    A chunked body has no declared length; once it passes ``max_body`` the
    client gets ``413`` (unless the app began its response) and the
    connection closes; what the app sends afterwards is dropped.
    """

    __slots__ = ("_limit", "_receive", "_received", "_refused", "_send", "_started")

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        self._started = False
        self._refused = False

    async def receive(self) -> Message:
        if self._refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self._refused = True
                if not self._started:
                    await _refuse_body(self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self._refused:
            return
        self._started = True
        await self._send(message)


class AsgiServer:
    """uvicorn's server on one replica's loop and ``SO_REUSEPORT`` socket."""

    def __init__(self, server: Any, sock: socket.socket, header_timeout: float) -> None:
        self._server = server
        self._sock = sock
        self._ticker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._header_timeout = header_timeout
        self._accepting = True
        #: connections closed because their headers did not arrive in time
        self.header_timeouts = 0

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._server.server_state.connections)

    @property
    def requests(self) -> int:
        return int(self._server.server_state.total_requests)

    async def start(self) -> None:
        server = self._server
        try:
            await server.startup(sockets=[self._sock])
        except SystemExit:  # uvicorn's way to say the lifespan startup failed
            self._sock.close()
            raise AsgiStartupError("the ASGI app's lifespan startup failed") from None
        self._ticker = asyncio.ensure_future(server.main_loop())
        self._sweep()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.header_timeouts += sweep_headers(
            self._server.server_state.connections, loop.time(), self._header_timeout
        )
        # a connection is closed within a quarter of the deadline after it passed
        self._sweeper = loop.call_later(min(1.0, self._header_timeout / 4), self._sweep)

    def stop_accepting(self) -> None:
        """Close the listening socket: new connections go to other replicas (or are refused)."""
        if self._accepting:
            self._accepting = False
            for srv in getattr(self._server, "servers", ()):
                srv.close()

    async def shutdown(self) -> None:
        """Finish the requests in flight (up to ``graceful_timeout``), then the lifespan."""
        server = self._server
        self.stop_accepting()
        server.should_exit = True  # the sweeper goes on: a slow client must not hold the stop
        if self._ticker is not None:
            try:
                await self._ticker
            except Exception:
                log.exception("uvicorn's main loop failed")
        if getattr(server, "started", False):
            await server.shutdown(sockets=[self._sock])
        if self._sweeper is not None:
            self._sweeper.cancel()

    def abort(self) -> None:
        """Stop at once (the replica is failing): close the socket and every connection."""
        self.stop_accepting()
        for conn in list(self._server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.close()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sock.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_asgi(
    replica: Replica, host: str, port: int, options: HttpOptions | None = None
) -> AsgiServer | None:
    """Serve the service's ASGI app on ``host:port``, if it has one."""
    app = replica.service.asgi
    if app is None:
        return None
    options = options or HttpOptions()
    try:
        import uvicorn
    except ImportError as exc:
        raise AsgiStartupError(
            "serving an ASGI app needs uvicorn: pip install 'dominoes[web]'"
        ) from exc
    state = State(replica)
    bind_process(state)
    config = uvicorn.Config(
        _wrap(app, state, options.max_body),
        host=host,
        port=port,
        loop="none",
        http=_protocol_class(options),
        ws="auto",
        lifespan="auto",
        log_config=None,
        access_log=options.access_log,
        proxy_headers=False,
        timeout_keep_alive=options.keep_alive,
        timeout_graceful_shutdown=max(1, round(options.graceful_timeout)),
        ws_max_size=options.ws_max_size,
        backlog=BACKLOG,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    current_var.set(state)  # the lifespan task is created here: it inherits it
    sock = _listen(host, port)
    asgi = AsgiServer(server, sock, options.header_timeout)
    await asgi.start()
    replica.web = asgi
    return asgi
