"""Log entries and their wire form.

Entries are msgspec ``Struct``s encoded as msgpack arrays (``array_like``) in a
tagged union, so one decoder reads any entry in ~250 ns and the tag costs one
byte.  ``seq`` is the entry's position; it is known only after the slot is
reserved, so the appender encodes it as 0 (one byte) and :func:`decode` sets it
from the slot, whatever the payload says.  (msgspec ignores ``omit_defaults``
for ``array_like`` structs, so trailing defaults still cost a byte each.)

Arguments travel as msgpack builtins.  Every replica, *including the one that
submitted the entry*, applies the decoded arguments, so they see identical
values (a tuple argument arrives as a list everywhere).
"""

from __future__ import annotations

import enum
from typing import Any, Final, TypeAlias

import msgspec

__all__ = (
    "Batch",
    "Call",
    "Control",
    "Entry",
    "Fire",
    "Mode",
    "batch_payload",
    "decode",
    "encode",
)


class Mode(enum.IntEnum):
    """Who performs an entry's effects."""

    #: the first replica to claim the slot (a CAS) is the owner
    RACE = 0
    #: the replica that appended the entry is the owner
    AFFINITY = 1
    #: every replica performs the effects for its own local resources
    EVERY = 2

    @classmethod
    def parse(cls, mode: Mode | str) -> Mode:
        """``mode`` as a :class:`Mode`; a name (``"race"``) is accepted too."""
        if isinstance(mode, Mode):
            return mode
        try:
            return cls[mode.upper()]
        except (KeyError, AttributeError):
            raise ValueError(
                f"mode must be a Mode or one of race, affinity, every; not {mode!r}"
            ) from None


class Call(msgspec.Struct, tag="c", array_like=True, gc=False):
    """Raise ``event`` with ``args``/``kwargs`` on every replica."""

    event: str
    args: list[Any]
    kwargs: dict[str, Any]
    ts: float
    origin: int
    mode: Mode = Mode.AFFINITY
    request_id: str = ""
    seq: int = 0


class Batch(msgspec.Struct, tag="b", array_like=True, gc=False):
    """Several ``affinity`` calls of one replica, appended as one entry (group commit).

    They apply in order, each as if it were its own entry at ``seq`` (sub-entry
    ``i``), and the batch's origin owns them all.  One entry costs one
    reservation, one publication and one wake-up, whatever it holds.
    """

    calls: list[Call]
    ts: float
    origin: int
    seq: int = 0


class _RawBatch(msgspec.Struct, tag="b", array_like=True, gc=False):
    """``Batch``'s wire form built from calls already encoded (no second encoding)."""

    calls: list[msgspec.Raw]
    ts: float
    origin: int
    seq: int = 0


def batch_payload(calls: list[bytes], ts: float, origin: int) -> bytes:
    """Encode a ``Batch`` from encoded ``Call`` payloads; decodes as :class:`Batch`."""
    return _encoder.encode(_RawBatch([msgspec.Raw(c) for c in calls], ts, origin))


class Fire(msgspec.Struct, tag="f", array_like=True, gc=False):
    """A replicated timer is due: fire it, unless it already fired or was cancelled."""

    timer_id: int
    ts: float
    origin: int
    seq: int = 0


class Control(msgspec.Struct, tag="k", array_like=True, gc=False):
    """A runtime control entry, e.g. ``op="snapshot"`` asks ``arg[0]`` for a snapshot."""

    op: str
    arg: list[Any]
    ts: float
    origin: int
    seq: int = 0


Entry: TypeAlias = Call | Batch | Fire | Control

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Entry)

encode = _encoder.encode


def decode(payload: bytes, seq: int) -> Entry:
    """Decode one entry read from the log at ``seq``."""
    entry = _decoder.decode(payload)
    entry.seq = seq
    return entry
