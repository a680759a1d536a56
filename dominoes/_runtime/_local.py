"""Local clients, the replica side: reply to entries appended by ``dominoes.connect``.

A local client (``dominoes._runtime._client``) appends ``race`` entries straight into
the shared log from its own *client line* (a header line above the replicas,
``n .. max_replicas - 1``, that never holds the log back), so the replica
that claims such an entry first owns it.  The owner learns where to reply
from the entry's request id: ``c<line>.<nonce>.<key>``, where ``<nonce>`` is
the 16 hex digits of the client incarnation's random nonce.  The client
listens on the abstract unix datagram address :func:`reply_address` built from
the service name, its line and that nonce.

The owner hook sends one datagram per owned client entry, a msgpack array
``[request_id, ok, result_or_error_text]``, with a non-blocking ``sendto``;
the replica never waits for a client.  A client that is gone
(``ECONNREFUSED``) loses the reply, counted and dropped.

A client whose receive queue is full (``EAGAIN``: a unix datagram queue
holds only ``net.unix.max_dgram_qlen`` datagrams, 10 by default, however
small) gets a *backlog*: the replies for it queue, up to ``BACKLOG_MAX``,
behind a datagram socket connected to it, which the event loop reports
writable as soon as the client has read (the kernel's ``peer_wait``).
Replies beyond the bound are dropped and counted.  A dropped reply costs the
client one ``_timeout``: it retries with the same request id, and the retry,
de-duplicated by the state machine, is answered with the recorded result.
Retries (``Applied.duplicate``) are answered like first applications.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import re
import socket
from typing import TYPE_CHECKING, Final

import msgspec

from .._core._codec import Call, Mode
from .._core._machine import Applied

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("MAX_REPLY", "LocalReplies", "client_request_prefix", "reply_address", "start_local")

log = logging.getLogger("dominoes.local")

#: Hex digits of a client incarnation's nonce (8 random bytes).
NONCE_HEX: Final = 16
#: The largest reply datagram sent (and the client's receive buffer).
MAX_REPLY: Final = 1 << 18
#: Replies queued per client whose receive queue is full; beyond, dropped.
BACKLOG_MAX: Final = 4096

_REQUEST_ID: Final = re.compile(rf"c(\d{{1,6}})\.([0-9a-f]{{{NONCE_HEX}}})\.")
_encoder: Final = msgspec.msgpack.Encoder()
#: errnos meaning "the client is gone": the reply is dropped and counted.
_GONE: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOBUFS, errno.ENOTCONN})


def reply_address(service: str, line: int, nonce: str) -> bytes:
    """The abstract-namespace address a client on ``line`` receives replies on."""
    return f"\0dominoes-{service}-{line}-{nonce}".encode()


def client_request_prefix(line: int, nonce: str) -> str:
    """Every request id of one client incarnation starts with this."""
    return f"c{line}.{nonce}."


def encode_reply(request_id: str, applied: Applied) -> bytes:
    """The reply datagram for an applied client entry."""
    error = applied.error
    if error is None:
        try:
            return _encoder.encode([request_id, True, applied.result])
        except (TypeError, ValueError, OverflowError) as exc:
            text = f"TypeError: the result of request {request_id!r} cannot be sent: {exc}"
            return _encoder.encode([request_id, False, text])
    # A retry's error is already the recorded "Type: message" text.
    text = str(error) if applied.duplicate else f"{type(error).__name__}: {error}"
    return _encoder.encode([request_id, False, text])


class _Backlog:
    """Replies waiting for one client to read, behind a socket connected to it."""

    __slots__ = ("queue", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: collections.deque[bytes] = collections.deque()


def _dgram_socket() -> socket.socket:
    return socket.socket(
        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )


class LocalReplies:
    """The owner hook that answers local clients, with its counters."""

    def __init__(self, replica: Replica, loop: asyncio.AbstractEventLoop) -> None:
        self.service = replica.service.name
        #: client lines start above the replicas
        self.first_client_line = replica.replicas
        self.loop = loop
        self.sock = _dgram_socket()
        #: the largest datagram the kernel takes from our sockets (sndbuf - 32)
        sndbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.max_datagram = min(sndbuf - 32, MAX_REPLY)
        self._backlogs: dict[bytes, _Backlog] = {}
        self.sent = 0
        #: replies lost: the client was gone, or its backlog was full
        self.dropped = 0
        #: replies that waited in a backlog because the client's queue was full
        self.deferred = 0
        #: results too large for a datagram (answered with an error text)
        self.too_large = 0

    def reply(self, applied: Applied) -> None:
        entry = applied.entry
        if type(entry) is not Call or entry.mode != Mode.RACE:
            return
        if entry.origin < self.first_client_line:
            return
        rid = entry.request_id
        match = _REQUEST_ID.match(rid)
        if match is None or int(match[1]) != entry.origin:
            return
        address = reply_address(self.service, entry.origin, match[2])
        data = encode_reply(rid, applied)
        if len(data) > self.max_datagram:
            self.too_large += 1
            text = (
                f"ValueError: the reply to request {rid!r} is {len(data)} bytes, more than "
                f"a local datagram holds ({self.max_datagram})"
            )
            data = _encoder.encode([rid, False, text])
        self._send(data, address)

    def _send(self, data: bytes, address: bytes) -> None:
        backlog = self._backlogs.get(address)
        if backlog is not None:
            self._enqueue(backlog, data)
            return
        try:
            self.sock.sendto(data, address)
        except BlockingIOError:
            self._start_backlog(address, data)
        except OSError as exc:
            if exc.errno not in _GONE and exc.errno != errno.EMSGSIZE:
                raise
            self.dropped += 1
        else:
            self.sent += 1

    def _enqueue(self, backlog: _Backlog, data: bytes) -> None:
        if len(backlog.queue) >= BACKLOG_MAX:
            self.dropped += 1
        else:
            backlog.queue.append(data)
            self.deferred += 1

    def _start_backlog(self, address: bytes, data: bytes) -> None:
        sock = _dgram_socket()
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            self.dropped += 1
            return
        backlog = self._backlogs[address] = _Backlog(sock)
        self._enqueue(backlog, data)
        self.loop.add_writer(sock.fileno(), self._flush, address)

    def _flush(self, address: bytes) -> None:
        """The client read something: send what waits for it, in order."""
        backlog = self._backlogs[address]
        queue = backlog.queue
        while queue:
            try:
                backlog.sock.send(queue[0])
            except (BlockingIOError, InterruptedError):
                return  # still full: the loop calls again once it has read
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # cannot happen below max_datagram
                    queue.popleft()
                    self.dropped += 1
                    continue
                self.dropped += len(queue)  # gone
                queue.clear()
                break
            queue.popleft()
            self.sent += 1
        self._end_backlog(address)

    def _end_backlog(self, address: bytes) -> None:
        backlog = self._backlogs.pop(address)
        if not self.loop.is_closed():
            self.loop.remove_writer(backlog.sock.fileno())
        backlog.sock.close()

    @property
    def backlogged(self) -> int:
        """Replies waiting in backlogs now."""
        return sum(len(b.queue) for b in self._backlogs.values())

    def close(self) -> None:
        for address in list(self._backlogs):
            self.dropped += len(self._backlogs[address].queue)
            self._end_backlog(address)
        self.sock.close()


def start_local(replica: Replica) -> LocalReplies:
    """Answer local clients' entries this replica owns (an owner hook)."""
    replies = LocalReplies(replica, asyncio.get_running_loop())
    replica.owner_hooks.append(replies.reply)
    return replies
