"""An HTTP/1.1 responder on the replicated netstack, with h11 for HTTP's state machine.

Run it inside a network namespace that has a multi-queue TUN device (the
kernel's side at 192.0.2.1/24)::

    dominoes run examples.http_h11:service --replicas 2 --tun dn0 --addr 192.0.2.2/24 --port 80

Every replica serves the connections homed on it with an asyncio task over the
netstack's streams interface (``Netstack.listen``, ``accept``, ``read``,
``write``, ``drain``, ``close``):

* ``GET /`` answers a short page naming the replica that served it;
* ``GET /bytes/N`` answers N bytes (a bulk transfer from the stack);
* ``POST`` of any body answers the body's SHA-256 (a bulk transfer to the stack);
* ``GET /fetch/HOST:PORT/PATH`` opens a connection from the stack to
  ``HOST:PORT`` (an active open), fetches ``/PATH`` with HTTP/1.1 and answers
  its body: the stack as a client of the kernel's own servers.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import h11
from dominoes.components.netstack import Connection, Listener, Netstack, Tcp, start

from dominoes import Option, Replica, Service

#: Tasks of this process (kept referenced until they end).
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _send(conn: Connection, h: h11.Connection, *events: Any) -> None:
    for event in events:
        data = h.send(event)
        if data:
            conn.write(data)
    await conn.drain()


async def _next_event(conn: Connection, h: h11.Connection) -> Any:
    while True:
        event = h.next_event()
        if event is not h11.NEED_DATA:
            return event
        h.receive_data(await conn.read(65536))


async def fetch(net: Netstack, host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from ``host:port`` through the stack: (status, body)."""
    conn = await net.connect(host, port)
    h = h11.Connection(h11.CLIENT)
    try:
        headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
        await _send(conn, h, h11.Request(method="GET", target=path, headers=headers))
        await _send(conn, h, h11.EndOfMessage())
        response = await _next_event(conn, h)
        if not isinstance(response, h11.Response):
            raise ConnectionError(f"no response from {host}:{port}: {response!r}")
        body = bytearray()
        while True:
            event = await _next_event(conn, h)
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return response.status_code, bytes(body)
    finally:
        conn.close()


async def _answer(net: Netstack, replica: Replica, target: str) -> tuple[int, bytes]:
    if target == "/":
        return 200, f"hello from replica {replica.index} of the netstack\n".encode()
    if target.startswith("/bytes/"):
        try:
            n = int(target.removeprefix("/bytes/"))
        except ValueError:
            return 400, b"bad size\n"
        pattern = bytes(range(256))
        return 200, (pattern * (n // 256 + 1))[:n]
    if target.startswith("/fetch/"):
        where, _, path = target.removeprefix("/fetch/").partition("/")
        host, _, port = where.partition(":")
        try:
            status, body = await fetch(net, host, int(port or 80), "/" + path)
        except (OSError, ValueError, h11.ProtocolError) as exc:
            return 502, f"fetch failed: {exc}\n".encode()
        return (200 if status == 200 else 502), body
    return 404, b"not found\n"


async def serve(net: Netstack, replica: Replica, conn: Connection) -> None:
    """One connection: requests until the client closes (or asks to)."""
    h = h11.Connection(h11.SERVER)
    try:
        while True:
            event = await _next_event(conn, h)
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                break
            if not isinstance(event, h11.Request):
                continue
            digest = hashlib.sha256()
            while not isinstance(part := await _next_event(conn, h), h11.EndOfMessage):
                if isinstance(part, h11.Data):
                    digest.update(part.data)
            if event.method == b"POST":  # an upload: answer its SHA-256
                status, body = 200, digest.hexdigest().encode() + b"\n"
            else:
                status, body = await _answer(net, replica, event.target.decode())
            headers = [("Content-Length", str(len(body))), ("Content-Type", "text/plain")]
            await _send(
                conn,
                h,
                h11.Response(status_code=status, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
            if h.our_state is h11.MUST_CLOSE:
                break
            h.start_next_cycle()
    except (h11.ProtocolError, ConnectionError):
        pass
    finally:
        conn.close()


async def accept_loop(net: Netstack, replica: Replica, listener: Listener) -> None:
    while True:
        conn = await listener.accept()
        _spawn(serve(net, replica, conn))


async def on_start(replica: Replica) -> None:
    await start(replica)
    net = Netstack(replica)
    # listening before on_start returns: the replica serves once every replica does
    listener = await net.listen(replica.port)
    _spawn(accept_loop(net, replica, listener))


service = Service(
    "http_h11",
    [Tcp()],
    on_start=on_start,
    serves=lambda options, host, port: (
        f"http://{options['addr'].split('/')[0]}:{port}/ (TUN {options['tun']})"
    ),
    options=[
        Option("tun", help="the TUN device (multi-queue) to open a queue of", required=True),
        Option(
            "addr", help="the stack's IPv4 address and prefix, e.g. 192.0.2.2/24", required=True
        ),
    ],
)
