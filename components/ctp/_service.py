"""The profiles, and what turns a profile into a service that runs under ``dominoes run``.

Each datagram is a ``race`` entry of :meth:`Transport.datagram` (the service's
``udp`` event).  :func:`start` (``on_start``) gives each replica's transport
its way out (the replica's UDP socket) and its way into the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any, Final

from dominoes import Component, LogFullError, Option, Replica, Service

from ._base import MICRO_PROTOCOLS, Profile
from ._protocols import Dedup, Fec, Nak, Par
from ._tftp import Tftp
from ._transport import Transport

__all__ = (
    "PROFILES",
    "RELIABLE_ORDERED",
    "RELIABLE_UNORDERED",
    "TFTP",
    "UNRELIABLE_FEC",
    "compose",
    "report",
    "start",
    "tftp",
)

log = logging.getLogger("dominoes.ctp")

#: datagrams a replica holds until its socket opens (then they go out, in order)
EARLY_LIMIT: Final = 4096

#: every seq delivered once, in order: the native profile for files and streams
RELIABLE_ORDERED: Final = Profile.of(
    "reliable-ordered",
    "transport",
    "wire",
    ("segment", {"size": 1400}),
    "sequence",
    ("par", {"rto": 0.5}),
    "nak",
    "dedup",
    "resequence",
    ("window", {"size": 64}),
    ("rtt", {"min_rto": 0.2}),
    "aimd",
    "reassemble",
)
#: every seq delivered once, as it arrives
RELIABLE_UNORDERED: Final = Profile(
    "reliable-unordered", RELIABLE_ORDERED.without("resequence").protocols
)
#: nothing is sent again; Reed-Solomon parity rebuilds up to ``m`` lost segments of
#: each group of ``k``; delivered at most once, as it arrives
UNRELIABLE_FEC: Final = Profile.of(
    "unreliable-fec",
    "transport",
    "wire",
    ("segment", {"size": 1400}),
    "sequence",
    ("fec", {"k": 8, "m": 2}),
    ("rate", {"burst": 16, "pps": 4000.0}),
    "dedup",
    "reassemble",
)
#: RFC 1350 with options: lock-step (a window of 1), a retransmission timer per block.
#: The timer backs off to 1 s at most: a server must not answer a client's
#: repeated ACK (RFC 1123 4.2.3.1), so its own timer is all that resends a lost
#: block, and clients give up after a few silent seconds (atftp 0.8 retries its
#: ACK every second and aborts after about 7); backing off to 2 s left 3 tries
#: in that window, and a loaded machine's later timers fewer.
TFTP: Final = Profile.of(
    "tftp",
    ("transport", {"idle": 30.0}),
    "tftp",
    ("segment", {"size": 512, "terminal_short": True}),
    "sequence",
    ("par", {"rto": 1.0, "retries": 8, "max_rto": 1.0}),
    ("rtt", {"min_rto": 0.2}),
    "dedup",
    ("window", {"size": 1}),
)

PROFILES: Final = {p.name: p for p in (RELIABLE_ORDERED, RELIABLE_UNORDERED, UNRELIABLE_FEC, TFTP)}


def report(replica: Replica) -> Any:
    """``dominoes stats`` / the monitor's ``ctp`` section: sessions and counters."""

    def section(detail: str | None) -> Any:
        transport = replica.component(Transport)
        if detail == "sessions":
            return [
                {
                    "session": s.sid,
                    "role": s.role,
                    "in_flight": s.in_flight,
                    "snd_next": s.snd_next,
                    "rcv_next": s.rcv_next,
                    "cwnd": round(s.cwnd, 2),
                    "rto": round(s.rto, 3),
                    "srtt": round(s.srtt, 4),
                }
                for s in transport.sessions.values()
            ]
        if detail is not None:
            return {"error": f"unknown detail {detail!r}: try 'sessions'"}
        out: dict[str, Any] = {"sessions": len(transport.sessions), **transport.counters}
        if transport.last_error:
            out["last_error"] = transport.last_error
        machine = replica.core.machine
        for name in MICRO_PROTOCOLS:
            try:
                comp: Any = machine.component(name)
            except LookupError:
                continue
            if isinstance(comp, Par):
                out["retransmitted"] = comp.retransmitted
                out["timeouts"] = comp.timeouts
            elif isinstance(comp, Nak):
                out["naks_sent"] = comp.naks_sent
                out["nak_resent"] = comp.resent
            elif isinstance(comp, Dedup):
                out["duplicates_dropped"] = comp.dropped
            elif isinstance(comp, Fec):
                out["fec_recovered"] = comp.recovered
                out["fec_late"] = comp.late
                out["fec_parity_sent"] = comp.parity_sent
                out["fec_parity_received"] = comp.parity_received
            elif isinstance(comp, Tftp):
                out["tftp"] = comp.report()
        return out

    return section


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # logged by the replica; a lost entry is a lost datagram here


async def start(replica: Replica) -> None:
    """``on_start``: this replica's transport sends from its UDP socket and appends
    through the replica; ``dominoes stats`` gets a ``ctp`` section."""
    transport = replica.component(Transport)
    loop = asyncio.get_running_loop()
    # on_start runs before the replica's UDP socket opens; what an entry applied
    # meanwhile sends (the first segments of a transfer started in on_start) waits
    # for it, a few milliseconds at most
    early: list[tuple[bytes, tuple[str, int]]] = []

    def flush() -> None:
        if replica.udp is None:
            if not replica.closed:
                loop.call_later(0.005, flush)
            return
        for data, addr in early:
            replica.udp.sendto(data, addr)
        early.clear()

    def output(data: bytes, addr: tuple[str, int]) -> None:
        if replica.udp is not None and not early:
            replica.udp.sendto(data, addr)
            return
        if len(early) < EARLY_LIMIT:
            if not early:
                loop.call_soon(flush)
            early.append((data, addr))

    def submit(event: Any, *args: Any) -> None:
        try:
            replica.submit_nowait(event, *args).add_done_callback(_consume)
        except LogFullError:
            log.warning("replica %d: log full, %s dropped", replica.index, event)

    transport.output = output
    transport.submit = submit
    replica.reports["ctp"] = report(replica)


def compose(
    profile: Profile | str,
    name: str | None = None,
    extra: Iterable[Component] = (),
    **service_kwargs: Any,
) -> Service:
    """A service of ``profile`` (and ``extra`` components) that receives the
    service's UDP datagrams; ``service_kwargs`` go to :class:`Service`."""
    if isinstance(profile, str):
        profile = PROFILES[profile]
    service_kwargs.setdefault("on_start", start)
    return profile.compose(name, extra, udp=Transport.datagram, **service_kwargs)


def _root(path: str) -> str:
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise ValueError(f"--root {root} is not a directory")
    return root


async def _start_tftp(replica: Replica) -> None:
    await start(replica)
    root = _root(str(replica.options["root"]))
    await replica.submit(Tftp.configure, root, bool(replica.options["writable"]))


#: ``dominoes run dominoes.components.ctp:tftp --root DIR [--writable] --port 6969``
tftp: Final = compose(
    TFTP,
    "tftp",
    on_start=_start_tftp,
    options=[
        Option("root", required=True, help="the directory served (and written, with --writable)"),
        Option("writable", flag=True, help="accept uploads (WRQ) into the root"),
    ],
    serves=lambda options, host, port: (
        f"udp {host}:{port} (TFTP of {options['root']}"
        + (", writable)" if options["writable"] else ", read-only)")
    ),
)
