"""A replica's end of the wire: its TUN queue, read, checked and appended to the log.

:func:`start` is a service's ``on_start``: it opens this replica's queue of the
TUN device named by the service's ``--tun`` option, tells the replicated stack
its address (``--addr``) and listening port (``dominoes run --port``), and
reads the queue from the event loop.  Per read batch (up to 16 packets):

* an IPv4 header the kernel would refuse, a packet for another address, a
  fragment (not reassembled), a bad ICMP or TCP checksum: dropped here and
  counted in this replica's :attr:`Ingress.counters` (nstat names);
* an ICMP echo request: answered here, at once (the reply depends on nothing
  replicated);
* TCP segments: appended as one ``affinity`` entry (:meth:`Tcp.segments`): the
  replica that dequeued them owns them and sends the replies, so the kernel,
  whose TUN steers a flow to the queue that last wrote for it, keeps each
  flow on one queue (a ``race`` entry, owned by whichever replica claims it
  first, made flows hop between queues and reordered them: see the design
  note).  A full
  log drops the batch (counted: ``ListenDrops``-like backpressure; TCP
  retransmits), never overwrites anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any, Final

from dominoes import LogFullError, Mode, Replica

from . import _wire as wire
from ._stack import Tcp, key_parts
from ._tun import TunQueue

__all__ = ("Ingress", "parse_address", "start")

log = logging.getLogger("dominoes.netstack")

#: Packets per read batch (one log entry).
BATCH: Final = 16


def parse_address(text: str) -> tuple[int, int]:
    """``"192.0.2.2/24"`` -> (the address as an int, the prefix length)."""
    iface = ipaddress.IPv4Interface(text)
    return int(iface.ip), iface.network.prefixlen


class Ingress:
    """One replica's TUN queue and what it does with each packet."""

    def __init__(self, replica: Replica, tun: TunQueue, address: int) -> None:
        self.replica = replica
        self.tun = tun
        self.address = address
        self.counters: dict[str, int] = {}
        self._ident = 0

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _drop(self, exc: wire.WireError) -> None:
        for name in exc.counters:
            self.count(name)

    def readable(self) -> None:
        """The loop's reader callback: drain the queue, a batch at a time."""
        while True:
            packets = self.tun.read_batch(BATCH)
            if not packets:
                return
            self._handle(packets)
            if len(packets) < BATCH:
                return

    def _handle(self, packets: list[bytes]) -> None:
        batch: list[list[Any]] = []
        for packet in packets:
            self.count("IpInReceives")
            try:
                ip = wire.parse_ipv4(packet)
            except wire.WireError as exc:
                self._drop(exc)
                continue
            if ip.dst != self.address:
                self.count("IpInAddrErrors")
                continue
            if ip.proto == wire.PROTO_TCP:
                try:
                    wire.parse_tcp(ip.src, ip.dst, ip.payload)
                except wire.WireError as exc:
                    self._drop(exc)
                    continue
                batch.append([ip.src, bytes(ip.payload)])
            elif ip.proto == wire.PROTO_ICMP:
                self._icmp(ip)
            else:
                self.count("IpInUnknownProtos")
        if batch:
            try:
                fut = self.replica.submit_nowait(Tcp.segments, batch, _mode=Mode.AFFINITY)
            except LogFullError:
                self.count("TcpExtTCPBacklogDrop", len(batch))
                return
            fut.add_done_callback(_consume)

    def _icmp(self, ip: Any) -> None:
        self.count("IcmpInMsgs")
        try:
            reply = wire.echo_reply(ip.payload)
        except wire.WireError as exc:
            self._drop(exc)
            return
        if reply is None:  # not an echo request
            return
        self.count("IcmpInEchos")
        self._ident = (self._ident + 1) & 0xFFFF
        packet = wire.build_ipv4(ip.dst, ip.src, wire.PROTO_ICMP, reply, ident=self._ident)
        if self.tun.write(packet):
            self.count("IcmpOutEchoReps")

    def report(self, detail: str | None) -> Any:
        """``dominoes stats`` and the monitor's ``netstack [connections]``: this replica's
        ingress counters and the replicated stack's, or one line per connection."""
        stack = self.replica.component(Tcp)
        if detail == "connections":
            rows = []
            for key, tcb in sorted(stack.conns.items()):
                remote_ip, remote_port, local_port = key_parts(key)
                rows.append(
                    {
                        "peer": f"{wire.ip_ntoa(remote_ip)}:{remote_port}",
                        "port": local_port,
                        "state": str(tcb.state),
                        "snd_una": tcb.snd_una,
                        "snd_nxt": tcb.snd_nxt,
                        "rcv_nxt": tcb.rcv_nxt,
                        "snd_wnd": tcb.snd_wnd,
                        "cwnd": tcb.cwnd,
                        "rto": round(tcb.rto, 3),
                        "unacked_or_unsent": len(tcb.sbuf),
                    }
                )
            return rows
        if detail is not None:
            return {"error": f"unknown detail {detail!r}: try 'connections'"}
        tun = self.tun
        return {
            "address": wire.ip_ntoa(self.address),
            "connections": len(stack.conns),
            "ingress": {
                **self.counters,
                "tun_read": tun.read_packets,
                "tun_written": tun.written_packets,
                "tun_write_drops": tun.write_drops,
            },
            "tcp": dict(stack.counters),
        }

    def output(self, packets: list[bytes]) -> None:
        """Write what the stack sends (its effects on this replica)."""
        for packet in packets:
            self.tun.write(packet)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.tun.fd)
        self.tun.close()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a handler's error was logged by the replica; nothing to raise here


async def start(replica: Replica) -> Ingress:
    """``on_start``: open this replica's TUN queue and serve it (see the module doc)."""
    name = replica.options.get("tun")
    addr = replica.options.get("addr")
    if not name or not addr:
        raise ValueError("the netstack needs --tun DEVICE and --addr A.B.C.D/N")
    address, _ = parse_address(addr)
    tun = TunQueue(str(name))
    ingress = Ingress(replica, tun, address)
    stack = replica.component(Tcp)
    stack.output = ingress.output
    await replica.submit(Tcp.configure, address, [replica.port])
    # a restarted replica's application tasks are gone: reset what they served
    await replica.submit(Tcp.orphaned, replica.index)
    asyncio.get_running_loop().add_reader(tun.fd, ingress.readable)
    replica.reports["netstack"] = ingress.report
    log.info("replica %d: netstack on %s as %s, port %d", replica.index, name, addr, replica.port)
    return ingress
