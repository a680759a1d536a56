"""A configurable transport over UDP, composed of micro-protocols (Cactus's CTP),
replicated on every core; and TFTP as one of its profiles.

* :mod:`.events`: the event names micro-protocols bind to;
* :mod:`._types`: :class:`Segment` and :class:`Session`;
* :mod:`._base`: :class:`MicroProtocol` and :class:`Profile` (a configuration
  is data: micro-protocol names and their static arguments);
* :mod:`._transport`: the transport driver (sessions, channels, the way out)
  and the native wire codec;
* :mod:`._protocols`: segmentation, sequencing, positive and negative
  acknowledgement, duplicate suppression, resequencing, windowed flow control,
  AIMD congestion control, forward error correction (``zfec``), reassembly;
* :mod:`._tftp`: TFTP's codec and driver (RFC 1350, 2347-2349);
* :mod:`._service`: the profiles, and a profile as a service under
  ``dominoes run`` (``dominoes.components.ctp:tftp``).
"""

from __future__ import annotations

from . import events
from ._base import MICRO_PROTOCOLS, MicroProtocol, Profile, register
from ._protocols import (
    Aimd,
    Dedup,
    Fec,
    Nak,
    Par,
    Rate,
    Reassembly,
    Resequencer,
    Rtt,
    Segmentation,
    Sequencing,
    Window,
)
from ._service import (
    PROFILES,
    RELIABLE_ORDERED,
    RELIABLE_UNORDERED,
    TFTP,
    UNRELIABLE_FEC,
    compose,
    report,
    start,
    tftp,
)
from ._tftp import Tftp
from ._transport import Transport, Wire, session_id
from ._types import Segment, Session

__all__ = (
    "MICRO_PROTOCOLS",
    "PROFILES",
    "RELIABLE_ORDERED",
    "RELIABLE_UNORDERED",
    "TFTP",
    "UNRELIABLE_FEC",
    "Aimd",
    "Dedup",
    "Fec",
    "MicroProtocol",
    "Nak",
    "Par",
    "Profile",
    "Rate",
    "Reassembly",
    "Resequencer",
    "Rtt",
    "Segment",
    "Segmentation",
    "Sequencing",
    "Session",
    "Tftp",
    "Transport",
    "Window",
    "Wire",
    "compose",
    "events",
    "register",
    "report",
    "session_id",
    "start",
    "tftp",
)
