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
    "Scoped",
    "batch_payload",
    "decode",
    "encode",
    "scoped_payload",
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


class Scoped(msgspec.Struct, tag="s", array_like=True, gc=False):
    """A call, or a batch of calls of one event, that touches only partitions
    ``pids`` of the partitioned component ``component``, in a header that a
    replica reads without decoding the call.

    Every handler of ``event`` is a partitioned handler of ``component`` (the
    appender checked, and every replica checks again when it applies: a
    reconfiguration may have bound another since).  A replica that holds none
    of ``pids`` (nor is loading one) and is not the origin has nothing to do
    for it but advance its cursor and its clock: it passes over ``entry``, the
    encoded :class:`Call` or :class:`Batch`, without decoding it
    (``StateMachine._apply_scoped``).  ``ts`` is the newest of its calls' times.
    """

    event: str
    component: str
    pids: list[int]
    #: ``entry`` is a :class:`Batch` (owned by its origin), else a :class:`Call`
    batch: bool
    ts: float
    origin: int
    entry: msgspec.Raw
    seq: int = 0

    def inner(self) -> Call | Batch:
        """The call or batch it carries, at its seq."""
        entry: Call | Batch = _inner_decoder.decode(self.entry)
        entry.seq = self.seq
        return entry


def scoped_payload(
    inner: bytes, event: str, component: str, pids: list[int], batch: bool, ts: float, origin: int
) -> bytes:
    """Encode a :class:`Scoped` around an encoded call or batch."""
    return _encoder.encode(Scoped(event, component, pids, batch, ts, origin, msgspec.Raw(inner)))


Entry: TypeAlias = Call | Batch | Fire | Control | Scoped

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Entry)
_inner_decoder: Final = msgspec.msgpack.Decoder(Call | Batch)

encode = _encoder.encode


def decode(payload: bytes, seq: int) -> Entry:
    """Decode one entry read from the log at ``seq``."""
    entry = _decoder.decode(payload)
    entry.seq = seq
    return entry
