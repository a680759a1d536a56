"""The totally ordered log, as arithmetic over one writable buffer.

Theory of operation
===================

The log is a ring of ``capacity`` fixed-size slots plus a header, laid out in
any writable buffer: a ``bytearray`` for ``testing.Cluster``, a shared memfd
for the runtime.  Every shared word is reached through a
:class:`~dominoes._core._words.Words` implementation, so this module decides
*what* is ordered and the words decide *how*.  The byte layout (word offsets,
shape limits) is :mod:`._layout`; every name it defines is re-exported here.

Sequence numbers start at 1 and never wrap (64 bits).  Entry ``seq`` lives in
slot ``seq % capacity``.  ``tail`` is the next seq to reserve.  Each replica's
``cursor`` is the next seq it will apply.

Slot lifecycle
--------------
The table is the contract; the methods below are its only transitions.

=============  ===============================  ==================================
state          how it is entered                  what may happen next
=============  ===============================  ==================================
free           every live cursor is past seq -   ``try_reserve`` CASes tail over
               capacity (or the log is new)       it: reserved
reserved       ``try_reserve``                    ``write`` publishes it, or the
                                                  reserver dies and ``fill_abandoned``
                                                  publishes a no-op
published      ``published_seq := seq``, release  readers apply; ``claim`` may CAS
applied-by-all every live cursor > seq            it becomes free for seq + capacity
=============  ===============================  ==================================

Rules, and why:

* **Reserve only what is free.**  Reservation is a CAS on ``tail`` after
  checking the slowest live cursor, not a blind ``fetch_add``: a fetch-add
  cannot refuse, so a producer that overshot would hold a reserved slot while
  it waited for space, stalling every reader behind it.  A CAS that would not
  fit is simply not made, so a full log is backpressure, never an overwrite,
  and a reserved slot is always written at once.
* **Publish last.**  The payload, length, kind and a zeroed claim word are
  written first; ``published_seq`` is stored with release semantics last, so a
  reader that acquires ``published_seq == seq`` sees the whole entry.
* **Never hold a reservation across a wait.**  ``write`` follows
  ``try_reserve`` with no suspension point in between (the runtime never
  awaits there).  An unpublished slot stalls every reader behind it.
* **Announce a reservation before making it.**  A producer stores
  ``intent_n`` and ``intent_seq`` before its CAS and clears them after
  publishing, so when it dies the survivors can tell which slots it may own
  and fill them with no-ops (``abandoned`` / ``fill_abandoned``).
* **Copy out.**  ``read`` returns ``bytes``, never a view into a slot, because a
  slot is reused as soon as the cursor passes it.

The hot path in C
-----------------
When the words object offers ``ring(...)`` (the runtime's C ``AtomicWords``
does; :class:`~dominoes._core._words.PlainWords` does not), ``try_append``,
``read``, ``claim``, ``published`` and ``wake_list`` each become one C call
that performs the same word operations, in the same order and with the same
orderings, as the Python code below, which stays the reference (and what
``testing.Cluster`` runs).  A cross-process append then costs ~0.2 us instead
of ~2 us (``benchmarks/channel.py``).  Only the cached ``_limit`` refresh
(the scan of replica lines) stays in Python: it runs when the log looks full.

Replica lifecycle
-----------------
:data:`LIFECYCLE` is the contract: (state, operation) -> next state.  Every
``join``, ``set_live``, ``mark_dead`` and ``leave`` goes through
:func:`lifecycle_step`, which raises :class:`LifecycleError` for a pair the
table lacks, before the line is touched.  These calls are rare (a start, a
death, a restart), so the check costs the hot path nothing.

=========  ==========================  ========  ========  =========  ======
state      holds the log back?         join      set_live  mark_dead  leave
=========  ==========================  ========  ========  =========  ======
absent     no                          joining   --        dead [1]   --
joining    yes (from its join cursor)  --        live      dead       absent
live       yes                         --        --        dead       absent
dead       no                          joining   --        dead [2]   absent
                                       [3]                            [4]
=========  ==========================  ========  ========  =========  ======

[1] A line that never joined can still produce: a local client appends on
    a line of its own without holding the log.  When it goes, the supervisor
    marks the line dead, so that its announced reservation no longer counts
    as a live producer's, fills what it left, then ``leave``\\ s it.  A
    replica that left cleanly and then exited is marked dead the same way.
[2] Idempotent: the supervisor marks a restarted replica dead again when it
    died before it could rejoin.
[3] Only once its abandoned reservation is filled (``fill_abandoned``):
    ``join`` clears the intent it would be filled from.
[4] The recovered client line of [1] becomes free again.

Each single line has one writer at a time (its own replica, or the
supervisor once that replica's process is gone), so reading the state and
then storing the next one is not a race.
"""

from __future__ import annotations

from typing import Final, Protocol

import msgspec

from ._errors import EntryTooLargeError, LayoutError, LifecycleError
from ._layout import (
    B_ASKED,
    B_SERVED,
    COMPLETED,
    D_ACKED,
    D_ERROR,
    D_POLICY,
    D_RESERVED,
    D_SNAP_SEQ,
    D_SNAP_TIME,
    D_SYNCED,
    D_WRITER,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_SLOT_SIZE,
    DURABILITY,
    FSYNC_POLICIES,
    H_CAPACITY,
    H_MAGIC,
    H_MAX_ENTRY,
    H_MAX_REPLICAS,
    H_ORIGIN,
    H_POISONED,
    H_SLOT_SIZE,
    H_VERSION,
    KIND_BLOB,
    KIND_ENTRY,
    KIND_NOOP,
    KIND_STAMPED,
    LAYOUT_VERSION,
    LINE,
    MAGIC,
    MAX_NSLOTS,
    META,
    R_ASLEEP,
    R_CURSOR,
    R_INTENT_N,
    R_INTENT_SEQ,
    R_PID,
    R_STATE,
    R_STUCK,
    R_WANTS,
    REPLICAS,
    SLOT_HEADER,
    SLOT_META,
    SLOT_SEQ,
    STAMP,
    TAIL,
    ReplicaState,
    check_shape,
    size_for,
    slots_offset,
)
from ._words import Words

__all__ = (
    # defined here
    "LIFECYCLE",
    "Log",
    "LogStatistics",
    "lifecycle_step",
    # the layout (._layout), re-exported
    "B_ASKED",
    "B_SERVED",
    "COMPLETED",
    "DURABILITY",
    "D_ACKED",
    "D_ERROR",
    "D_POLICY",
    "D_RESERVED",
    "D_SNAP_SEQ",
    "D_SNAP_TIME",
    "D_SYNCED",
    "D_WRITER",
    "FSYNC_POLICIES",
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
    "STAMP",
    "TAIL",
    "ReplicaState",
    "check_shape",
    "size_for",
    "slots_offset",
)

_ABSENT, _JOINING, _LIVE, _DEAD = (
    ReplicaState.ABSENT,
    ReplicaState.JOINING,
    ReplicaState.LIVE,
    ReplicaState.DEAD,
)

#: The replica lifecycle: ``(state, operation) -> next state``.  A pair not
#: here is an illegal transition (see the module doc for the table and its
#: footnotes).  Other backends keep the same table.
LIFECYCLE: Final[dict[tuple[int, str], int]] = {
    (_ABSENT, "join"): _JOINING,
    (_DEAD, "join"): _JOINING,  # a restart, once its reservation is filled
    (_JOINING, "set_live"): _LIVE,
    (_ABSENT, "mark_dead"): _DEAD,  # a producer-only line (a local client) that went
    (_JOINING, "mark_dead"): _DEAD,
    (_LIVE, "mark_dead"): _DEAD,
    (_DEAD, "mark_dead"): _DEAD,  # a restarted replica that died before rejoining
    (_JOINING, "leave"): _ABSENT,
    (_LIVE, "leave"): _ABSENT,
    (_DEAD, "leave"): _ABSENT,  # a recovered producer-only line becomes free
}


def lifecycle_step(replica: int, state: int, operation: str) -> int:
    """The state ``operation`` moves ``replica`` to from ``state``; raises if the table lacks it."""
    try:
        return LIFECYCLE[state, operation]
    except KeyError:
        name = ReplicaState.NAMES.get(state, f"in an unknown state ({state})")
        allowed = [ReplicaState.NAMES[s] for s in ReplicaState.NAMES if (s, operation) in LIFECYCLE]
        detail = f"only from {' or '.join(allowed)}" if allowed else "no such operation"
        raise LifecycleError(replica, name, operation, detail) from None


class _Ring(Protocol):
    """The C fast path over one log's layout (``AtomicWords.ring``); see the module doc."""

    def append(self, replica: int, limit: int, payload: bytes, kind: int, /) -> int: ...
    def read(self, seq: int, /) -> tuple[int, int, bytes] | None: ...
    def published(self, seq: int, /) -> bool: ...
    def claim(self, seq: int, replica: int, /) -> bool: ...
    def sleepers(self, count: int, /) -> list[int]: ...


class LogStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the log's header, as seen by one reader."""

    capacity: int
    slot_size: int
    tail: int
    free_slots: int
    slowest_replica: int | None
    slowest_cursor: int
    live: tuple[int, ...]
    joining: tuple[int, ...]
    dead: tuple[int, ...]


class Log:
    """One process's handle on a log laid out in ``buf``.

    Create the layout once with :meth:`create`; every other participant calls
    :meth:`attach`.  Handles are cheap, and each keeps its own cached view of
    how far it may reserve, so give every replica its own handle.
    """

    __slots__ = (
        "_buf",
        "_limit",
        "_ring",
        "_w",
        "capacity",
        "max_entry_slots",
        "max_replicas",
        "payload_per_slot",
        "slot_size",
        "slots_offset",
    )

    def __init__(self, buf: bytearray | memoryview, words: Words) -> None:
        self._buf = memoryview(buf)
        self._w = words
        if words.load_acquire(H_MAGIC) != MAGIC:
            raise LayoutError("buffer does not hold a dominoes log (bad magic)")
        version = words.load_acquire(H_VERSION)
        if version != LAYOUT_VERSION:
            raise LayoutError(f"log layout version {version}, this code reads {LAYOUT_VERSION}")
        self.capacity = words.load_acquire(H_CAPACITY)
        self.slot_size = words.load_acquire(H_SLOT_SIZE)
        self.max_replicas = words.load_acquire(H_MAX_REPLICAS)
        self.max_entry_slots = words.load_acquire(H_MAX_ENTRY)
        self.payload_per_slot = self.slot_size - SLOT_HEADER
        self.slots_offset = slots_offset(self.max_replicas)
        if len(self._buf) < self.slots_offset + self.capacity * self.slot_size:
            raise LayoutError("buffer is smaller than the log its header describes")
        self._limit = 0
        make_ring = getattr(words, "ring", None)
        self._ring: _Ring | None = None
        if make_ring is not None:
            self._ring = make_ring(
                LAYOUT_VERSION,
                self.slots_offset,
                self.capacity,
                self.slot_size,
                self.max_entry_slots,
                TAIL,
                REPLICAS,
                self.max_replicas,
            )

    # --- creation -----------------------------------------------------------

    @staticmethod
    def size_for(
        capacity: int = DEFAULT_CAPACITY,
        slot_size: int = DEFAULT_SLOT_SIZE,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
    ) -> int:
        """Bytes of buffer a log of this shape needs."""
        return size_for(capacity, slot_size, max_replicas)

    @classmethod
    def create(
        cls,
        buf: bytearray | memoryview,
        words: Words,
        *,
        capacity: int = DEFAULT_CAPACITY,
        slot_size: int = DEFAULT_SLOT_SIZE,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        max_entry_slots: int | None = None,
        first: int = 1,
    ) -> Log:
        """Lay out an empty log in ``buf`` (which must be zero-filled) and attach to it.

        ``first`` is the seq of its first entry: 1 for a new service, the
        position after the last recorded entry for one restarted from its
        durable log.
        """
        if first < 1:
            raise ValueError(f"first must be >= 1, not {first}")
        max_entry_slots = check_shape(capacity, slot_size, max_replicas, max_entry_slots)
        if len(buf) < size_for(capacity, slot_size, max_replicas):
            raise ValueError("buffer too small; use Log.size_for()")
        w = words
        w.store_release(H_CAPACITY, capacity)
        w.store_release(H_SLOT_SIZE, slot_size)
        w.store_release(H_MAX_REPLICAS, max_replicas)
        w.store_release(H_MAX_ENTRY, max_entry_slots)
        w.store_release(H_VERSION, LAYOUT_VERSION)
        w.store_release(TAIL, first)
        w.store_release(COMPLETED, first)
        for i in range(max_replicas):
            w.store_release(REPLICAS + i * LINE + R_CURSOR, first)
        w.store_release(H_MAGIC, MAGIC)  # last: attachers check it first
        return cls(buf, words)

    # --- replica lines --------------------------------------------------------

    def _line(self, replica: int) -> int:
        if not 0 <= replica < self.max_replicas:
            raise IndexError(f"replica {replica} out of range 0..{self.max_replicas - 1}")
        return REPLICAS + replica * LINE

    def cursor(self, replica: int) -> int:
        return self._w.load_acquire(self._line(replica) + R_CURSOR)

    def state(self, replica: int) -> int:
        return self._w.load_acquire(self._line(replica) + R_STATE)

    def _step(self, replica: int, operation: str) -> tuple[int, int]:
        """``(line, next state)`` of a lifecycle ``operation``: the one place it is checked.

        Raises :class:`LifecycleError` for a move :data:`LIFECYCLE` lacks, and
        for a ``join`` of a dead line whose reservation is not filled yet.
        """
        line = self._line(replica)
        state = self._w.load_acquire(line + R_STATE)
        after = lifecycle_step(replica, state, operation)
        if operation == "join" and state == _DEAD and self.recovery_pending(replica):
            raise LifecycleError(
                replica,
                ReplicaState.NAMES[state],
                operation,
                "it died holding a reservation; fill_abandoned() it first",
            )
        return line, after

    def join(self, replica: int, *, pid: int = 0, cursor: int | None = None) -> int:
        """Register ``replica`` as joining, holding the log from ``cursor``.

        The default cursor is the current tail: everything appended from now on
        is kept until this replica applies it (or is marked dead).  Returns the
        cursor.  A joining replica holds the log back but is not yet live.
        Allowed from absent or dead (see :data:`LIFECYCLE`).
        """
        line, after = self._step(replica, "join")
        w = self._w
        if cursor is None:
            cursor = w.load_acquire(TAIL)
        w.store_release(line + R_INTENT_SEQ, 0)
        w.store_release(line + R_STUCK, 0)
        w.store_release(line + R_WANTS, 0)
        w.store_release(line + R_PID, pid)
        w.store_release(line + R_CURSOR, cursor)
        w.store_seqcst(line + R_STATE, after)
        # A producer's cached limit was computed before we joined; it is at most
        # (old slowest cursor + capacity) <= (cursor + capacity), so it cannot
        # reuse anything this replica still needs.
        return cursor

    def set_live(self, replica: int, cursor: int | None = None) -> None:
        """Mark a joining replica live, optionally moving its cursor forward first.

        Only a joining replica goes live; a live one moves its cursor with
        :meth:`advance` or :meth:`applied`.
        """
        line, after = self._step(replica, "set_live")
        if cursor is not None:
            self.advance(replica, cursor)
        self._w.store_seqcst(line + R_STATE, after)

    def mark_dead(self, replica: int) -> None:
        """Stop ``replica``'s cursor from holding the log back.

        Call it only once the replica can no longer touch the log (its process
        has exited).  Then call :meth:`abandoned` / :meth:`fill_abandoned`.
        Allowed from any state (see :data:`LIFECYCLE`).
        """
        line, after = self._step(replica, "mark_dead")
        self._w.store_seqcst(line + R_STATE, after)

    def leave(self, replica: int) -> None:
        """A clean exit: the replica's line becomes absent (not from absent)."""
        line, after = self._step(replica, "leave")
        self._w.store_seqcst(line + R_STATE, after)

    def set_asleep(self, replica: int, asleep: bool) -> None:
        """The reader's half of the wake-up protocol (seq_cst store, then re-check)."""
        self._w.store_seqcst(self._line(replica) + R_ASLEEP, int(asleep))

    def asleep(self, replica: int) -> bool:
        return self._w.load_acquire(self._line(replica) + R_ASLEEP) != 0

    def replicas_in(self, states: frozenset[int]) -> list[int]:
        w = self._w
        return [
            i
            for i in range(self.max_replicas)
            if w.load_acquire(REPLICAS + i * LINE + R_STATE) in states
        ]

    # --- the producer side -----------------------------------------------------

    @property
    def tail(self) -> int:
        """The next seq to be reserved."""
        return self._w.load_acquire(TAIL)

    @property
    def max_entry_bytes(self) -> int:
        return self.max_entry_slots * self.payload_per_slot

    def slots_for(self, nbytes: int) -> int:
        """Slots an entry of ``nbytes`` payload bytes occupies; raises if too large."""
        n = max(1, -(-nbytes // self.payload_per_slot))
        if n > self.max_entry_slots:
            raise EntryTooLargeError(nbytes, self.max_entry_bytes)
        return n

    def _slowest(self) -> tuple[int | None, int]:
        """(replica, cursor) of the slowest holding replica; (None, tail) if none.

        Every cursor is read before any state.  A joining replica stores its
        cursor, then its state, then appends its snapshot request; a cursor
        seen past that request was stored after the request was applied, so
        the state loads that follow see the joiner.  (States first could miss
        a joiner and then see cursors already past its request.)
        """
        w = self._w
        tail = w.load_acquire(TAIL)
        lines = range(REPLICAS, REPLICAS + self.max_replicas * LINE, LINE)
        cursors = [w.load_acquire(line + R_CURSOR) for line in lines]
        holding = ReplicaState.HOLDING
        best: int | None = None
        low = tail
        for i, line in enumerate(lines):
            if w.load_acquire(line + R_STATE) in holding and (best is None or cursors[i] < low):
                best, low = i, cursors[i]
        return best, low

    def slowest_cursor(self) -> int:
        """The cursor of the slowest holding replica (the tail if none): every
        seq below it is applied by every replica that holds the log."""
        return self._slowest()[1]

    def free_slots(self) -> int:
        _, low = self._slowest()
        return self.capacity - (self.tail - low)

    def try_reserve(self, replica: int, nslots: int = 1) -> int:
        """Reserve ``nslots`` consecutive seqs for ``replica``; 0 if the log is full.

        On success the caller must :meth:`write` the returned seq before it
        does anything that can wait.
        """
        w = self._w
        line = self._line(replica)
        w.store_release(line + R_INTENT_N, nslots)
        while True:
            t = w.load_acquire(TAIL)
            end = t + nslots
            if end > self._limit:
                self._limit = self._slowest()[1] + self.capacity
                if end > self._limit:
                    w.store_release(line + R_INTENT_SEQ, 0)
                    return 0
            w.store_seqcst(line + R_INTENT_SEQ, t)
            if w.cas(TAIL, t, end):
                return t

    def write(self, seq: int, nslots: int, payload: bytes, kind: int = KIND_ENTRY) -> None:
        """Fill reserved slots ``seq .. seq+nslots-1`` and publish the entry (seq last)."""
        size, cap, pps, buf = self.slot_size, self.capacity, self.payload_per_slot, self._buf
        base = self.slots_offset
        n = len(payload)
        if n > nslots * pps:
            raise ValueError("payload does not fit the reserved slots")
        for k in range(1, nslots):  # continuation slots first
            off = base + ((seq + k) % cap) * size + SLOT_HEADER
            chunk = payload[k * pps : (k + 1) * pps]
            buf[off : off + len(chunk)] = chunk
        head = base + (seq % cap) * size
        first = payload[:pps]
        buf[head + SLOT_HEADER : head + SLOT_HEADER + len(first)] = first
        META.pack_into(buf, head + SLOT_META, n, nslots, kind)
        w = self._w
        w.store_release(head, 0)  # the claim word, for this seq
        w.store_release(head + SLOT_SEQ, seq)  # publish: last

    def done(self, replica: int) -> None:
        """Clear the producer's reservation intent after a successful write."""
        self._w.store_release(self._line(replica) + R_INTENT_SEQ, 0)

    def try_append(self, replica: int, payload: bytes, kind: int = KIND_ENTRY) -> int:
        """Reserve, write and publish ``payload`` in one step; 0 if the log is full."""
        ring = self._ring
        if ring is not None:
            if len(payload) > self.payload_per_slot:
                self.slots_for(len(payload))  # raises EntryTooLargeError past the limit
            # try_reserve + write + done in C; 0 means "past the cached limit",
            # so refresh it from the cursors (as try_reserve does) and try once more.
            seq = ring.append(replica, self._limit, payload, kind)
            if not seq:
                self._limit = self._slowest()[1] + self.capacity
                seq = ring.append(replica, self._limit, payload, kind)
            return seq
        nslots = self.slots_for(len(payload))
        if not 0 <= kind <= 0xFFFF:  # checked before reserving: never strand a slot
            raise ValueError(f"kind {kind} does not fit 16 bits")
        seq = self.try_reserve(replica, nslots)
        if seq:
            self.write(seq, nslots, payload, kind)
            self.done(replica)
        return seq

    def wake_list(self, replicas: int | None = None) -> list[int]:
        """Replicas (among the first ``replicas``) whose asleep flag is set.

        The producer's half of the wake-up: call it after publishing.  The full
        fence orders the publication before the flag loads; the reader stores
        its flag seq_cst before it re-checks the log, so one of the two always
        sees the other.
        """
        top = self.max_replicas
        n = top if replicas is None or replicas > top else replicas
        ring = self._ring
        if ring is not None:
            return ring.sleepers(n)
        w = self._w
        w.fence()
        return [i for i in range(n) if w.load_acquire(REPLICAS + i * LINE + R_ASLEEP)]

    def take_sleepers(self, replicas: int | None = None) -> list[int]:
        """The sleepers of :meth:`wake_list` whose flag this caller cleared first.

        Each sleeping replica is signalled once per sleep, not once per append:
        the producer that wins the CAS of its flag from 1 to 0 signals it, the
        others see 0 and skip it.  The sleeper wakes on the signal either way.
        """
        w = self._w
        return [i for i in self.wake_list(replicas) if w.cas(REPLICAS + i * LINE + R_ASLEEP, 1, 0)]

    # --- the reader side -------------------------------------------------------

    def published(self, seq: int) -> bool:
        ring = self._ring
        if ring is not None:
            return ring.published(seq)
        head = self.slots_offset + (seq % self.capacity) * self.slot_size
        return self._w.load_acquire(head + SLOT_SEQ) == seq

    def read(self, seq: int) -> tuple[int, int, bytes] | None:
        """``(kind, nslots, payload)`` of the entry at ``seq``, or None if unpublished.

        The payload is a copy: the slot may be reused once the cursor passes it.
        """
        ring = self._ring
        if ring is not None:
            return ring.read(seq)
        size, cap, buf = self.slot_size, self.capacity, self._buf
        head = self.slots_offset + (seq % cap) * size
        if self._w.load_acquire(head + SLOT_SEQ) != seq:
            return None
        n, nslots, kind = META.unpack_from(buf, head + SLOT_META)
        pps = self.payload_per_slot
        if nslots == 1:
            return kind, 1, bytes(buf[head + SLOT_HEADER : head + SLOT_HEADER + n])
        parts = []
        left = n
        for k in range(nslots):
            off = self.slots_offset + ((seq + k) % cap) * size + SLOT_HEADER
            take = min(pps, left)
            parts.append(buf[off : off + take])
            left -= take
        return kind, nslots, b"".join(parts)

    def claim(self, seq: int, replica: int) -> bool:
        """Try to become the owner of the entry at ``seq``; exactly one caller wins."""
        ring = self._ring
        if ring is not None:
            return ring.claim(seq, replica)
        head = self.slots_offset + (seq % self.capacity) * self.slot_size
        return self._w.cas(head, 0, replica + 1)

    def claimant(self, seq: int) -> int | None:
        """Who claimed ``seq`` (valid while the slot still holds it), or None."""
        head = self.slots_offset + (seq % self.capacity) * self.slot_size
        v = self._w.load_acquire(head)
        return v - 1 if v else None

    def advance(self, replica: int, cursor: int) -> None:
        """Move ``replica``'s cursor: every seq below ``cursor`` is applied there."""
        self._w.store_release(self._line(replica) + R_CURSOR, cursor)

    # --- the completed tail (linearizable reads) ------------------------------------

    @property
    def completed(self) -> int:
        """The highest cursor any replica has published: every seq below it is applied
        somewhere, so it is published, and any reply to it may have left.

        A read that catches up to this value first sees every write acknowledged
        before it arrived (invariant 8, docs/design/invariants.md).  One acquire load.
        """
        return self._w.load_acquire(COMPLETED)

    def applied(self, replica: int, cursor: int) -> None:
        """Publish ``replica``'s cursor and raise the completed tail to it.

        The raise is an atomic max (a CAS loop that ends at once when another
        replica is already ahead).  It happens before the caller delivers any
        reply for the batch, so a reply never leaves before ``completed``
        covers its entry.
        """
        w = self._w
        w.store_release(self._line(replica) + R_CURSOR, cursor)
        seen = w.load_acquire(COMPLETED)
        while seen < cursor:
            if w.cas(COMPLETED, seen, cursor):
                return
            seen = w.load_acquire(COMPLETED)

    # --- liveness ---------------------------------------------------------------------

    def _beat_line(self, replica: int) -> int:
        if not 0 <= replica < self.max_replicas:
            raise IndexError(f"replica {replica} out of range 0..{self.max_replicas - 1}")
        return REPLICAS + (self.max_replicas + replica) * LINE

    def beat(self, replica: int) -> None:
        """Bump ``replica``'s heartbeat: its event loop is running (serving)."""
        self._w.fetch_add(self._beat_line(replica), 1)

    def heartbeat(self, replica: int) -> int:
        """``replica``'s heartbeat count; a value that stops moving means a frozen loop."""
        return self._w.load_acquire(self._beat_line(replica))

    def pid(self, replica: int) -> int:
        """The pid ``replica`` last joined with (0: none was given)."""
        return self._w.load_acquire(self._line(replica) + R_PID)

    # --- poison entries ----------------------------------------------------------------

    def stuck(self, replica: int) -> int:
        """The seq ``replica`` gave up applying (rolled back before it), or 0."""
        return self._w.load_acquire(self._line(replica) + R_STUCK)

    def set_stuck(self, replica: int, seq: int) -> None:
        """Announce that ``replica`` waits before ``seq`` for a poison verdict (0: clears)."""
        self._w.store_seqcst(self._line(replica) + R_STUCK, seq)

    @property
    def poisoned(self) -> int:
        """The last seq the supervisor declared a poison entry (0: none yet)."""
        return self._w.load_acquire(H_POISONED)

    def declare_poisoned(self, seq: int) -> None:
        """Every live replica gave up on ``seq``: each applies it as an error instead."""
        self._w.store_seqcst(H_POISONED, seq)

    # --- a log shared across machines ---------------------------------------------------

    @property
    def origin(self) -> int:
        """This machine's id when the ring copies a log shared across machines (0: none).

        Its entries are then ``KIND_STAMPED``, and a replica owns only those
        whose stamp names this machine.
        """
        return self._w.load_acquire(H_ORIGIN)

    def set_origin(self, origin: int) -> None:
        """Name this machine (the supervisor, before any replica starts)."""
        self._w.store_seqcst(H_ORIGIN, origin)

    # --- recovery ------------------------------------------------------------------

    def _abandoned(self, dead: int) -> tuple[list[int], bool]:
        """Unpublished seqs ``dead`` may own, and whether some could not be decided.

        The dead producer announced ``intent_seq = t`` (a reservation
        boundary: the tail it read) and ``intent_n`` before its CAS.  Walk the
        entry heads from ``t`` to ``min(t + n, tail)``:

        * a published head: skip its ``nslots`` (continuations carry no seq);
        * a head a live producer announces: skip that producer's reservation
          (it is writing, or its CAS lost and it is about to re-announce:
          undecided, ask again);
        * otherwise an unpublished seq nobody live claims: it is ``dead``'s,
          or belonged to another producer that died too.  Either way it can
          only ever be a no-op.

        Order matters: the tail first, then the live intents, then the slots.
        A producer whose CAS the tail read reflects announced its intent
        before that CAS, so the intent snapshot sees it; a producer that
        published cleared its intent only after publishing, so the slot check
        sees it.
        """
        w = self._w
        line = self._line(dead)
        t = w.load_acquire(line + R_INTENT_SEQ)
        if not t:
            return [], False
        n = w.load_acquire(line + R_INTENT_N)
        tail = w.load_acquire(TAIL)
        live: dict[int, int] = {}
        for i in range(self.max_replicas):
            other = REPLICAS + i * LINE
            if i == dead or w.load_acquire(other + R_STATE) == ReplicaState.DEAD:
                continue
            seq = w.load_acquire(other + R_INTENT_SEQ)
            if seq:
                live[seq] = max(live.get(seq, 0), w.load_acquire(other + R_INTENT_N))
        found: list[int] = []
        undecided = False
        s, end = t, min(t + n, tail)
        cap, size, base = self.capacity, self.slot_size, self.slots_offset
        while s < end:
            head = base + (s % cap) * size
            published = w.load_acquire(head + SLOT_SEQ)
            if published == s:
                s += max(1, META.unpack_from(self._buf, head + SLOT_META)[1])
            elif published > s:
                break  # the slot was reused since: everything here is long done
            elif s in live:
                undecided = True
                s += max(1, live[s])
            else:
                found.append(s)
                s += 1
        return found, undecided

    def abandoned(self, dead: int) -> list[int]:
        """Seqs a dead producer left reserved and unpublished, that only a no-op can fill.

        Seqs that a live producer also announces are left out (undecided);
        :meth:`recovery_pending` stays true until they are decided.
        """
        return self._abandoned(dead)[0]

    def fill_abandoned(self, dead: int) -> int:
        """Publish a no-op in every slot ``dead`` left reserved and unpublished.

        Returns the number of slots filled.  Call it again (a few milliseconds
        later) while :meth:`recovery_pending` is true: a live producer that
        announced the same seq makes the case undecided for a moment.  The
        dead line's intent is cleared once nothing is left to decide.
        """
        found, undecided = self._abandoned(dead)
        for s in found:
            self.write(s, 1, b"", KIND_NOOP)
        if not undecided:
            self._w.store_release(self._line(dead) + R_INTENT_SEQ, 0)
        return len(found)

    def announcer(self, seq: int) -> int | None:
        """The line whose announced reservation starts at ``seq`` (a held-up head), or None."""
        w = self._w
        for i in range(self.max_replicas):
            if w.load_acquire(REPLICAS + i * LINE + R_INTENT_SEQ) == seq:
                return i
        return None

    def recovery_pending(self, dead: int) -> bool:
        """True while ``dead``'s intent still names slots that may need a no-op."""
        return self._w.load_acquire(self._line(dead) + R_INTENT_SEQ) != 0

    # --- durability (the log writer's line) ------------------------------------------

    def durability_word(self, offset: int) -> int:
        """One word of the durability line (``D_*``): what the log writer publishes."""
        return self._w.load_acquire(DURABILITY + offset)

    def set_durability_word(self, offset: int, value: int) -> None:
        """Store one word of the durability line (the writer, the supervisor)."""
        self._w.store_seqcst(DURABILITY + offset, value)

    def raise_durability_word(self, offset: int, value: int) -> bool:
        """Raise one durability word to ``value`` (an atomic max); True if this call raised it."""
        w, at = self._w, DURABILITY + offset
        seen = w.load_acquire(at)
        while seen < value:
            if w.cas(at, seen, value):
                return True
            seen = w.load_acquire(at)
        return False

    @property
    def acked(self) -> int:
        """Every seq below it may be acknowledged; 0 when no writer makes the log durable.

        A replica holds the reply to an entry at or above it (the writer has
        not written, or under ``always`` not fsynced, that entry yet).
        """
        return self._w.load_acquire(DURABILITY + D_ACKED)

    @property
    def writer_line(self) -> int | None:
        """The log writer's line, or None when the log is not durable."""
        v = self._w.load_acquire(DURABILITY + D_WRITER)
        return v - 1 if v else None

    @property
    def write_error(self) -> int:
        """The errno of the writer's last failed write (0: healthy)."""
        return self._w.load_acquire(DURABILITY + D_ERROR)

    def set_wants(self, replica: int, seq: int) -> None:
        """``replica`` holds replies until ``acked`` exceeds ``seq - 1`` (0: holds none).

        Store it before the asleep flag: the writer reads the flag, then this.
        """
        self._w.store_seqcst(self._line(replica) + R_WANTS, seq)

    def take_waiting(self, replicas: int, acked: int) -> list[int]:
        """The writer's half: sleepers among the first ``replicas`` lines whose held
        replies ``acked`` releases, with their asleep flag cleared by this call."""
        w, out = self._w, []
        for i in range(min(replicas, self.max_replicas)):
            line = REPLICAS + i * LINE
            if w.load_acquire(line + R_ASLEEP):
                wants = w.load_acquire(line + R_WANTS)
                if 0 < wants <= acked and w.cas(line + R_ASLEEP, 1, 0):
                    out.append(i)
        return out

    def wake_writer(self) -> bool:
        """True if the writer was asleep and this caller cleared its flag (then signal it)."""
        line = self.writer_line
        if line is None:
            return False
        return self._w.cas(REPLICAS + line * LINE + R_ASLEEP, 1, 0)

    # --- introspection ---------------------------------------------------------------

    def statistics(self) -> LogStatistics:
        slowest, low = self._slowest()
        tail = self.tail
        by_state: dict[int, list[int]] = {s: [] for s in ReplicaState.NAMES}
        for i in range(self.max_replicas):
            by_state[self.state(i)].append(i)
        return LogStatistics(
            capacity=self.capacity,
            slot_size=self.slot_size,
            tail=tail,
            free_slots=self.capacity - (tail - low),
            slowest_replica=slowest,
            slowest_cursor=low,
            live=tuple(by_state[ReplicaState.LIVE]),
            joining=tuple(by_state[ReplicaState.JOINING]),
            dead=tuple(by_state[ReplicaState.DEAD]),
        )

    def release(self) -> None:
        """Drop this handle's view of the buffer (shared memory cannot close while it lives)."""
        self._ring = None
        self._buf.release()
