"""The value types the netstack's layers share: TCP flags and segments.

A :class:`Segment` is what the TCP engine (:mod:`._tcp`) consumes and produces, with
no IP or checksum in it: :mod:`._wire` turns bytes on the wire into segments and back.
Every field is plain data, so a segment can travel in a log entry or a snapshot.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ("ACK", "FIN", "PSH", "RST", "SYN", "URG", "Segment", "flag_names")

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20

_NAMES: Final = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"))


def flag_names(flags: int) -> str:
    """tcpdump's letters for ``flags`` (``S.`` is SYN+ACK)."""
    return "".join(letter for bit, letter in _NAMES if flags & bit) or "none"


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """One TCP segment, as the engine sees it (ports and options decoded; no checksum).

    ``mss`` and ``wscale`` are the options of that name (None: absent); they are
    only meaningful on a SYN.  ``window`` is the raw 16-bit field: the engine
    applies the connection's scale.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None
    #: SACK-permitted was offered (noted, never used: the engine does not SACK)
    sack_ok: bool = False

    @property
    def seg_len(self) -> int:
        """The sequence space it occupies: its payload, plus one for SYN and for FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def __repr__(self) -> str:
        opts = "".join(
            f" {k}={v}" for k, v in (("mss", self.mss), ("wscale", self.wscale)) if v is not None
        )
        return (
            f"<{self.src_port}>{self.dst_port} [{flag_names(self.flags)}] seq={self.seq} "
            f"ack={self.ack} win={self.window} len={len(self.payload)}{opts}>"
        )
