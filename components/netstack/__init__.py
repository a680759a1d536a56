"""A TCP/IP stack (IPv4, ICMP echo, TCP) replicated on every core, over a multi-queue TUN
device: the research design's own headline application.

Layers, each its own module:

* :mod:`._types`: the shared value types (segments, flags);
* :mod:`._wire`: sans-IO codecs: IPv4, ICMP and TCP headers, checksums;
* :mod:`._tcp`: the sans-IO TCP connection engine: a table-driven state machine
  (``states x events -> action, next state``), sequence space, windows,
  retransmission (RFC 6298), fast retransmit, options (MSS, window scale);
* :mod:`._stack`: the replicated component (:class:`Tcp`): connections in the
  replicated state, segments through the log, the owner transmits;
* :mod:`._tun` and :mod:`._ingress`: a replica's TUN queue and what it does with
  each packet (checks, ICMP echo, appending TCP segments to the log);
* :mod:`._streams`: application tasks on asyncio-like streams (``Netstack``:
  ``listen``/``accept``, ``connect``; ``read``, ``write``, ``drain``, ``close``).
"""

from __future__ import annotations

from ._ingress import Ingress, parse_address, start
from ._stack import Tcp, conn_key, key_parts
from ._streams import Connection, Listener, Netstack

__all__ = (
    "Connection",
    "Ingress",
    "Listener",
    "Netstack",
    "Tcp",
    "conn_key",
    "key_parts",
    "parse_address",
    "start",
)
