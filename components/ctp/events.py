"""The transport's events, the names a micro-protocol binds its handlers to.

Each is raised with the session id first; see :mod:`._types` for what follows
it, and the design note for which micro-protocol handles each, in what order.
"""

from __future__ import annotations

from ._types import (
    ACK_RECEIVED,
    CLOSED,
    DATAGRAM,
    DATAGRAM_FROM_NET,
    DELIVER_TO_APP,
    DRAINED,
    EVENTS,
    LOSS,
    MESSAGE,
    NAK_RECEIVED,
    OPENED,
    PUMP,
    RTT_SAMPLE,
    SEGMENT_FROM_APP,
    SEGMENT_OUT,
    SEGMENT_TO_NET,
    SEND,
    TIMEOUT,
)

__all__ = (
    "ACK_RECEIVED",
    "CLOSED",
    "DATAGRAM",
    "DATAGRAM_FROM_NET",
    "DELIVER_TO_APP",
    "DRAINED",
    "EVENTS",
    "LOSS",
    "MESSAGE",
    "NAK_RECEIVED",
    "OPENED",
    "PUMP",
    "RTT_SAMPLE",
    "SEGMENT_FROM_APP",
    "SEGMENT_OUT",
    "SEGMENT_TO_NET",
    "SEND",
    "TIMEOUT",
)
