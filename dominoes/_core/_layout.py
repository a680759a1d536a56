"""The log's byte layout: word offsets, shape limits and their checks.

Everything here is a number or a check on numbers; :mod:`._log` does the
ring's operations over it.  The C fast path (``dominoes/_runtime/_atomics.c``)
repeats the offsets it uses (``R_ASLEEP``, ``R_INTENT_SEQ``, ``R_INTENT_N``,
``SLOT_SEQ``, ``SLOT_META``, ``SLOT_HEADER``) and checks ``LAYOUT_VERSION``;
change one here and you change it there.

Layout (every hot word on its own 64-byte line)::

    line 0      magic, version, capacity, slot_size, max_replicas, max_entry_slots,
                poisoned (the last seq declared a poison entry; rarely written),
                origin (this machine's id in a log shared across machines; 0: none)
    line 1      tail
    line 2      completed: the highest cursor any replica has applied up to
    line 3      durability: the log writer's line + 1 (0: not durable), acked,
                synced, error, the last snapshot (seq, time),
                the fsync policy (see ``D_*``); with a log shared across
                machines (``--log nats://``), the bridge's read fence
                (``B_ASKED``, ``B_SERVED``) in the two words a writer uses
                there and the bridge's error in ``D_ERROR``
    line 4+i    replica i: cursor, state, pid, asleep, intent_seq, intent_n,
                (reserved), stuck (the seq whose apply it gave up on; 0: none)
    line 4+R+i  replica i's heartbeat: bumped by its event loop while it serves
                (R = max_replicas; its own line, so the bumps never share a
                line with the cursor other replicas read)
    slots       slot k at slots_offset + k * slot_size:
                  +0   claim word (own line): 0, or winner replica + 1
                  +64  published_seq  (stored with release, LAST)
                  +72  payload length (u32) | nslots (u16) | kind (u16)
                  +80  payload bytes; an entry spanning n slots continues in
                       the payload area (+80) of the next n - 1 slots, wrapping
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = (
    "COMPLETED",
    "DURABILITY",
    "FSYNC_POLICIES",
    "D_ACKED",
    "D_ERROR",
    "D_POLICY",
    "D_RESERVED",
    "D_SNAP_SEQ",
    "D_SNAP_TIME",
    "D_SYNCED",
    "D_WRITER",
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_REPLICAS",
    "DEFAULT_SLOT_SIZE",
    "H_CAPACITY",
    "H_MAGIC",
    "H_MAX_ENTRY",
    "H_MAX_REPLICAS",
    "H_ORIGIN",
    "H_POISONED",
    "H_SLOT_SIZE",
    "H_VERSION",
    "KIND_BLOB",
    "KIND_ENTRY",
    "KIND_NOOP",
    "KIND_STAMPED",
    "STAMP",
    "B_ASKED",
    "B_SERVED",
    "LAYOUT_VERSION",
    "LINE",
    "MAGIC",
    "MAX_NSLOTS",
    "META",
    "REPLICAS",
    "R_ASLEEP",
    "R_CURSOR",
    "R_INTENT_N",
    "R_INTENT_SEQ",
    "R_PID",
    "R_WANTS",
    "R_STATE",
    "R_STUCK",
    "SLOT_HEADER",
    "SLOT_META",
    "SLOT_SEQ",
    "TAIL",
    "ReplicaState",
    "check_shape",
    "size_for",
    "slots_offset",
)

# --- Tunables ---------------------------------------------------------------

#: Bytes per slot.  Larger slots waste memory on small entries; smaller slots
#: make ~100-byte requests span two slots (two cache lines more per entry).
#: 256 leaves 176 payload bytes, which holds a typical command in one slot.
DEFAULT_SLOT_SIZE: Final = 256
#: Slots in the ring.  The log's capacity bounds how far the slowest live
#: replica may lag before producers feel backpressure: 16384 x 256 B = 4 MiB.
DEFAULT_CAPACITY: Final = 16384
#: Replica lines in the header.  Each costs two 64-byte lines (its words and
#: its heartbeat).
DEFAULT_MAX_REPLICAS: Final = 64

MAGIC: Final = 0x444F4D494E4F4553  # b"DOMINOES", big-endian
LAYOUT_VERSION: Final = 3

LINE: Final = 64

# --- Header words (line 0) and the shared lines after it ----------------------

H_MAGIC: Final = 0
H_VERSION: Final = 8
H_CAPACITY: Final = 16
H_SLOT_SIZE: Final = 24
H_MAX_REPLICAS: Final = 32
H_MAX_ENTRY: Final = 40
H_POISONED: Final = 48
#: This machine's id when the ring is one machine's copy of a log shared across
#: machines (``--log nats://``): entries carry their origin machine's id, and a
#: replica owns only entries from its own machine.  0: the ring is the log.
H_ORIGIN: Final = 56
TAIL: Final = LINE
#: Its own line: every replica raises it once per applied batch and every
#: linearizable read loads it, while producers hammer ``tail``.
COMPLETED: Final = 2 * LINE
#: The durability line: what the log writer (``--durable``) publishes to the
#: replicas, and what they ask of it.  All zero when the log is not durable.
DURABILITY: Final = 3 * LINE
#: Replica i's line is at ``REPLICAS + i * LINE``; its heartbeat line at
#: ``REPLICAS + (max_replicas + i) * LINE``.
REPLICAS: Final = 4 * LINE

# --- Durability line words (offsets from DURABILITY) ---------------------------------

#: the log writer's line + 1; 0 when no writer holds the log (not durable)
D_WRITER: Final = 0
#: every seq below it may be acknowledged: written (``everysec``, ``no``) or
#: fsynced (``always``) by the log writer.  Replicas hold a reply to an entry
#: at or above it.
D_ACKED: Final = 8
#: every seq below it is fsynced to the log file
D_SYNCED: Final = 16
#: the errno of the writer's last failed write or fsync (0: healthy); while it
#: is set, new updates are refused with a clear error
D_ERROR: Final = 24
#: unused and reserved
D_RESERVED: Final = 32
#: the cursor of the newest snapshot on disk (0: none)
D_SNAP_SEQ: Final = 40
#: its wall-clock time, in whole seconds (0: none)
D_SNAP_TIME: Final = 48
#: the fsync policy: 1 always, 2 everysec, 3 no (0: not durable)
D_POLICY: Final = 56

# --- The bridge's words (``--log nats://``: no log writer uses the line) -------------

#: the highest read-fence generation a replica asked for (replicas raise it)
B_ASKED: Final = D_RESERVED
#: the highest generation the bridge has served: every entry the stream held
#: when it began serving it is in the ring (the tail is past it)
B_SERVED: Final = D_SYNCED

# --- Replica line words --------------------------------------------------------

R_CURSOR: Final = 0
R_STATE: Final = 8
#: The pid given to ``join``: a replica's incarnation (``Log.pid``; a restarted
#: replica joins with a new one), and for whoever inspects a log image.
R_PID: Final = 16
R_ASLEEP: Final = 24
R_INTENT_SEQ: Final = 32
R_INTENT_N: Final = 40
#: With a durable log: the seq whose acknowledgment this replica waits for
#: before it can send a held reply (0: none), so that the log writer wakes
#: only the sleepers it can release.  (Layout version 2 counted joins here.)
R_WANTS: Final = 48
R_STUCK: Final = 56

# --- Slot words -------------------------------------------------------------------

SLOT_SEQ: Final = 64
SLOT_META: Final = 72
SLOT_HEADER: Final = 80
#: payload length (u32), nslots (u16), kind (u16), little-endian, at ``SLOT_META``
META: Final = struct.Struct("<IHH")
#: the most slots one entry can span: ``nslots`` is 16 bits
MAX_NSLOTS: Final = 0xFFFF

KIND_ENTRY: Final = 1
KIND_NOOP: Final = 2
#: An entry too large for the ring: the payload is a reference to it in the
#: driver's blob store (see ``ReplicaCore.blobs``), which holds the bytes.
KIND_BLOB: Final = 3
#: An entry from a log shared across machines, copied into this machine's
#: ring by the bridge: the payload is ``STAMP`` (its origin machine, its seq
#: in that machine's outbox, the stream message that carried it and its
#: index there) followed by the entry.
KIND_STAMPED: Final = 4
#: origin machine id (u64), outbox seq (u64), stream sequence (u64), index in
#: the message (u32), little-endian
STAMP: Final = struct.Struct("<QQQI")

assert DEFAULT_CAPACITY & (DEFAULT_CAPACITY - 1) == 0, "capacity must be a power of two"
assert DEFAULT_SLOT_SIZE % LINE == 0
assert DEFAULT_SLOT_SIZE > SLOT_HEADER


#: ``D_POLICY`` values, by name
FSYNC_POLICIES: Final = {"always": 1, "everysec": 2, "no": 3}


class ReplicaState:
    """Values of a replica line's ``state`` word (see the lifecycle table in ``_log``)."""

    ABSENT: Final = 0
    JOINING: Final = 1
    LIVE: Final = 2
    DEAD: Final = 3
    #: states whose cursor holds the log back
    HOLDING: Final = frozenset({JOINING, LIVE})
    NAMES: Final = {ABSENT: "absent", JOINING: "joining", LIVE: "live", DEAD: "dead"}


# --- Shape -------------------------------------------------------------------------


def slots_offset(max_replicas: int) -> int:
    """Where slot 0 starts: after the header, the replica lines and the heartbeat lines."""
    return REPLICAS + 2 * max_replicas * LINE


def size_for(
    capacity: int = DEFAULT_CAPACITY,
    slot_size: int = DEFAULT_SLOT_SIZE,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
) -> int:
    """Bytes of buffer a log of this shape needs."""
    return slots_offset(max_replicas) + capacity * slot_size


def check_shape(
    capacity: int, slot_size: int, max_replicas: int, max_entry_slots: int | None
) -> int:
    """Refuse a shape the layout cannot hold; returns ``max_entry_slots`` (its default filled in).

    The default ``max_entry_slots`` is half the capacity, capped at what a
    slot header can count.
    """
    if capacity < 2 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two >= 2, not {capacity}")
    if slot_size % LINE or slot_size <= SLOT_HEADER:
        raise ValueError(f"slot_size must be a multiple of {LINE} above {SLOT_HEADER}")
    if not 1 <= max_replicas <= 1024:
        raise ValueError("max_replicas must be in 1..1024")
    if max_entry_slots is None:
        max_entry_slots = max(1, min(capacity // 2, MAX_NSLOTS))
    if not 1 <= max_entry_slots <= min(capacity, MAX_NSLOTS):
        raise ValueError(
            f"max_entry_slots must be in 1..{min(capacity, MAX_NSLOTS)}, not {max_entry_slots}"
        )
    return max_entry_slots
