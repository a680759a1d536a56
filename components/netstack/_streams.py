"""The streams interface: application tasks that read and write TCP connections, shaped
like asyncio's streams.

::

    net = Netstack(replica)                     # in on_start, after start(replica)
    listener = await net.listen(80)
    conn = await listener.accept()
    data = await conn.read(65536)               # b"" once the peer has closed
    conn.write(b"...")
    await conn.drain()
    conn.close()
    await conn.wait_closed()

    conn = await net.connect("192.0.2.1", 8000)  # an active open

Where a connection lives
------------------------
A connection of this interface has a *home*: the replica that appended its
SYN (the kernel's TUN queue for the flow), or the one whose task asked for the
active open.  The home is replicated state (``Tcp.homes``); its application
task is not.  As every replica applies a segment, only the home hands the
delivered bytes to its local :class:`Connection` (the bytes are in the log,
so nothing else has to move).  What the task does goes through the log as
``affinity`` entries of the home (``Tcp.app_send``, ``app_close``,
``app_consumed``), so the home transmits, and every replica keeps the same
send buffer: a replica that dies with segments unacknowledged leaves their
retransmission to the others' timers.

The application task itself does not survive its replica.  When a replica
restarts it resets the connections that were homed there (``Tcp.orphaned``),
instead of leaving their peers hanging.  Applications that must survive a
replica are components bound to the stack's events (see :mod:`._stack`).

Flow control: a task's reads are reported as consumed every 64 KiB (one entry),
which keeps the advertised window open; :meth:`Connection.drain` waits for the
writes' entries to be applied and for the replicated send buffer to fall under
256 KiB.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Final

from dominoes import Replica

from . import _wire as wire
from ._stack import Tcp, key_parts

__all__ = ("Connection", "Listener", "Netstack")

#: Bytes of a write per log entry.
CHUNK: Final = 32 * 1024
#: Consumed bytes reported per entry (the receive window opens by this much).
CONSUME_STEP: Final = 64 * 1024
#: drain() waits while the replicated send buffer holds more than this.
HIGH_WATER: Final = 256 * 1024


class Connection:
    """One TCP connection of an application task, on its home replica."""

    def __init__(self, streams: Streams, key: int) -> None:
        self._streams = streams
        self.key = key
        remote_ip, remote_port, local_port = key_parts(key)
        #: the peer's ``(address, port)`` and this end's port
        self.peer = (wire.ip_ntoa(remote_ip), remote_port)
        self.local_port = local_port
        self._buf = bytearray()
        self._eof = False
        #: why the connection ended ("closed", "reset", "refused", "timeout"), or None
        self.ended: str | None = None
        self._closing = False
        self._consumed = 0
        self._buffered = 0
        self._writes: list[asyncio.Future[Any]] = []
        self._changed = asyncio.Event()
        self._established: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<Connection {self.peer[0]}:{self.peer[1]} -> :{self.local_port}>"

    # --- from the stack, as entries apply ------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()

    def _feed(self, data: bytes) -> None:
        self._buf += data
        self._wake()

    def _end(self, reason: str) -> None:
        self.ended = reason
        self._eof = True
        if not self._established.done():
            self._established.set_exception(_error(reason, self.peer))
        self._wake()

    # --- reading ------------------------------------------------------------------------

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that are there for -1), waiting for at least one; b"" at
        the end of the stream."""
        while not self._buf and not self._eof:
            await self._wait()
        if not self._buf and self.ended in ("reset", "timeout"):
            raise _error(self.ended, self.peer)
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        data = bytes(self._buf[:take])
        del self._buf[:take]
        self._account(take)
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; IncompleteReadError if the stream ends first."""
        while len(self._buf) < n and not self._eof:
            await self._wait()
        if len(self._buf) < n:
            partial = bytes(self._buf)
            self._buf.clear()
            self._account(len(partial))
            raise asyncio.IncompleteReadError(partial, n)
        return await self.read(n)

    def at_eof(self) -> bool:
        return self._eof and not self._buf

    def _account(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= CONSUME_STEP or (self._consumed and self._eof):
            n, self._consumed = self._consumed, 0
            self._submit(Tcp.app_consumed, n)

    # --- writing ------------------------------------------------------------------------

    def _submit(self, event: Any, *args: Any) -> asyncio.Future[Any]:
        fut = self._streams.replica.submit_soon(event, self.key, *args)
        self._writes.append(fut)
        if len(self._writes) > 64:
            self._writes = [f for f in self._writes if not f.done()]
        return fut

    def write(self, data: bytes) -> None:
        """Queue ``data`` (through the log, a chunk per entry); :meth:`drain` waits."""
        if self._closing or self.ended is not None:
            raise ConnectionResetError(f"{self!r} is closed")
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            self._submit(Tcp.app_send, bytes(view[i : i + CHUNK]))

    async def drain(self) -> None:
        """Until the writes so far are applied and the send buffer is under 256 KiB."""
        writes, self._writes = self._writes, []
        for fut in writes:
            await fut
        while self._buffered > HIGH_WATER and self.ended is None:
            await self._wait()
        if self.ended in ("reset", "timeout"):
            raise _error(self.ended, self.peer)

    def close(self) -> None:
        """Send the FIN after the queued data (``Tcp.app_close``)."""
        if not self._closing and self.ended is None:
            self._closing = True
            self._submit(Tcp.app_close)

    def abort(self) -> None:
        """Reset the connection (a RST)."""
        if self.ended is None:
            self._closing = True
            self._submit(Tcp.app_abort)

    def is_closing(self) -> bool:
        return self._closing or self.ended is not None

    async def wait_closed(self) -> None:
        """Until the connection has ended (both FINs acknowledged, or a reset)."""
        while self.ended is None:
            await self._wait()


class Listener:
    """Connections accepted on a port, on this replica (the ones homed here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._queue: collections.deque[Connection] = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False

    def _put(self, conn: Connection) -> None:
        self._queue.append(conn)
        self._ready.set()

    async def accept(self) -> Connection:
        while not self._queue:
            if self.closed:
                raise ConnectionAbortedError(f"listener on port {self.port} is closed")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class Streams:
    """A replica's connections and listeners; the stack calls it as entries apply."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.conns: dict[int, Connection] = {}
        self.listeners: dict[int, Listener] = {}

    def opened(self, key: int) -> None:
        self.conns[key] = Connection(self, key)

    def established(self, key: int, passive: bool) -> None:
        conn = self.conns.get(key)
        if not passive:
            if conn is not None and not conn._established.done():
                conn._established.set_result(None)
            return
        listener = self.listeners.get(key & 0xFFFF)
        if listener is None or listener.closed:
            # homed here, but no task here takes it: reset it rather than let it hang
            self.replica.submit_soon(Tcp.app_abort, key)
            return
        conn = self.conns[key] = Connection(self, key)
        conn._established.set_result(None)
        listener._put(conn)

    def delivered(self, key: int, data: bytes) -> None:
        conn = self.conns.get(key)
        if conn is not None:
            conn._feed(data)

    def remote_closed(self, key: int) -> None:
        conn = self.conns.get(key)
        if conn is not None:
            conn._eof = True
            conn._wake()

    def progress(self, key: int, buffered: int) -> None:
        conn = self.conns.get(key)
        if conn is not None:
            conn._buffered = buffered
            conn._wake()

    def closed(self, key: int, reason: str) -> None:
        conn = self.conns.pop(key, None)
        if conn is not None:
            conn._end(reason)


class Netstack:
    """The streams interface of one replica (see the module doc)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        stack = replica.component(Tcp)
        if stack.local is None:
            stack.local = Streams(replica)
        self._streams: Streams = stack.local

    async def listen(self, port: int) -> Listener:
        """Accept the connections to ``port`` that are homed on this replica."""
        listener = self._streams.listeners.get(port)
        if listener is None or listener.closed:
            listener = self._streams.listeners[port] = Listener(port)
        await self.replica.submit(Tcp.listen, port)
        return listener

    async def connect(self, host: str, port: int) -> Connection:
        """An active open to ``host:port``, homed on this replica; ConnectionRefusedError
        on a RST, TimeoutError when the SYNs go unanswered."""
        key = await self.replica.submit(Tcp.app_connect, wire.ip_aton(host), port)
        if not key:
            raise OSError("no ephemeral port is free")
        conn = self._streams.conns.get(key)
        if conn is None:  # already gone (refused, within the same batch of entries)
            raise ConnectionRefusedError(f"{host}:{port} refused the connection")
        await conn._established
        return conn


def _error(reason: str, peer: tuple[str, int]) -> OSError:
    where = f"{peer[0]}:{peer[1]}"
    if reason == "refused":
        return ConnectionRefusedError(f"{where} refused the connection")
    if reason == "timeout":
        return TimeoutError(f"{where} did not answer")
    return ConnectionResetError(f"{where} reset the connection")
