"""Ingress: turn outside input into entries (updates) or local reads (queries).

TCP: every replica listens on the same port with SO_REUSEPORT, so the kernel
spreads connections over replicas.  The service's handler decides, per
request, whether to ``submit`` (an ``affinity`` entry: the replica holding the
connection owns it and replies) or to ``query`` locally.

UDP: every replica binds the same port with SO_REUSEPORT.  A datagram becomes
a ``race`` entry for the service's UDP event; whichever replica claims it
first sends the handler's ``bytes`` result from its own socket, so each
request is answered exactly once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from .._core._codec import Call, Mode
from .._core._errors import EntryTooLargeError
from .._core._machine import Applied

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("start_tcp", "start_udp")

log = logging.getLogger("dominoes.ingress")


async def start_tcp(replica: Replica, host: str, port: int) -> asyncio.Server | None:
    """Listen for the service's TCP handler, if it has one."""
    handler = replica.service.tcp
    if handler is None:
        return None
    loop = asyncio.get_running_loop()
    counters = replica.ingress
    if inspect.iscoroutinefunction(handler):

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            counters.tcp_accepted += 1
            counters.tcp_connections += 1
            try:
                await handler(replica, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception:
                log.exception("TCP handler failed")
            finally:
                counters.tcp_connections -= 1
                writer.close()

        return await asyncio.start_server(on_connection, host, port, reuse_port=True)

    def protocol() -> asyncio.BaseProtocol:
        # A protocol factory owns its connections' lifetime; it may keep
        # ``replica.ingress.tcp_connections`` itself.
        counters.tcp_accepted += 1
        proto: asyncio.BaseProtocol = handler(replica)
        return proto

    return await loop.create_server(protocol, host, port, reuse_port=True)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.event = replica.core.machine.resolve(replica.service.udp)  # type: ignore[arg-type]
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = replica.ingress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.counters.udp_received += 1
        core = self.replica.core
        try:
            payload = core.encode_call(
                self.event, [data, addr[0], addr[1]], {}, now=time.time(), mode=Mode.RACE
            )
            seq = self.replica.append_payload(payload)
        except EntryTooLargeError as exc:
            self.counters.udp_refused += 1
            self._send(f"ERR {exc}\n".encode(), addr[0], addr[1])
            return
        if not seq:
            self.counters.udp_dropped_full += 1  # UDP under backpressure: drop, as the kernel would

    def reply(self, applied: Applied) -> None:
        entry = applied.entry
        if type(entry) is not Call or entry.event != self.event or entry.mode != Mode.RACE:
            return
        if entry.origin >= self.replica.replicas or len(entry.args) != 3:
            return  # not a datagram: a local client (or a replica) raised the event
        _, host, port = entry.args
        if applied.error is not None:
            self._send(f"ERR {applied.error}\n".encode(), host, port)
        elif isinstance(applied.result, bytes | bytearray):
            self._send(bytes(applied.result), host, port)

    def _send(self, data: bytes, host: str, port: int) -> None:
        if self.transport is not None:
            self.transport.sendto(data, (host, port))
            self.counters.replies_sent += 1


async def start_udp(replica: Replica, host: str, port: int) -> asyncio.DatagramTransport | None:
    """Bind the service's UDP event, if it has one; replies go through an owner hook."""
    if replica.service.udp is None:
        return None
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Datagrams(replica), local_addr=(host, port), reuse_port=True
    )
    replica.owner_hooks.append(protocol.reply)
    replica.udp = transport
    return transport
