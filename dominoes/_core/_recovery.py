"""The recovery point: a snapshot and the journal of entries applied since.

When a driver interrupts an apply that overran its timeout, the state may
hold part of the entry.  :meth:`RecoveryPoint.replay` restores the snapshot
and re-applies the journal (as a non-owner: replies and effects of those
entries happened already), so the state is exactly as it was before the
entry, however far the handler got (docs/design/reads-and-poison.md).

The point is renewed every ``every_entries`` entries or ``every_bytes`` of
journal: inline (a snapshot on the caller's time), or by a background
snapshot the driver starts (a forked child) and reports done or failed; the
journal keeps everything until then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._codec import decode
from ._log import KIND_NOOP
from ._machine import StateMachine

__all__ = ("POISONED", "RecoveryPoint")

#: Entries and journal bytes after which the recovery point is renewed.  A
#: renewal snapshots the whole state (a cost proportional to its size, paid by
#: a forked child at run time, inline without a snapshotter); the journal's
#: memory is bounded by these, and so is the replay a rollback does.
DEFAULT_CHECKPOINT_ENTRIES: Final = 65536
DEFAULT_CHECKPOINT_BYTES: Final = 64 * 1024 * 1024

#: A journal entry's kind for an entry applied as poison (never a log kind).
POISONED: Final = -1

#: (seq, kind, nslots, payload) of one applied log position
Journaled = tuple[int, int, int, bytes]


class RecoveryPoint:
    """A snapshot of the state at some cursor, and every position applied since."""

    __slots__ = (
        "_pending",
        "checkpoints",
        "every_bytes",
        "every_entries",
        "journal",
        "journal_bytes",
        "load",
        "rollbacks",
    )

    def __init__(self, snapshot: bytes) -> None:
        #: reads the snapshot (from memory, or the file a background one wrote)
        self.load: Callable[[], bytes] = lambda: snapshot
        self.journal: list[Journaled] = []
        self.journal_bytes = 0
        self.every_entries = DEFAULT_CHECKPOINT_ENTRIES
        self.every_bytes = DEFAULT_CHECKPOINT_BYTES
        # a background snapshot in progress: (its cursor, journal length then)
        self._pending: tuple[int, int] | None = None
        self.checkpoints = 1
        self.rollbacks = 0

    def due(self) -> bool:
        """The journal has grown past a bound: renew the point."""
        return len(self.journal) >= self.every_entries or self.journal_bytes >= self.every_bytes

    @property
    def renewing(self) -> bool:
        """A background snapshot is being written."""
        return self._pending is not None

    def renewed(self, snapshot: bytes) -> None:
        """An inline snapshot at the current cursor replaces the point."""
        self.load = lambda: snapshot
        self.journal.clear()
        self.journal_bytes = 0
        self.checkpoints += 1

    def started(self, cursor: int) -> None:
        """A background snapshot of the state at ``cursor`` has begun."""
        self._pending = (cursor, len(self.journal))

    def done(self, cursor: int, load: Callable[[], bytes]) -> None:
        """The background snapshot at ``cursor`` is complete; ``load()`` reads it."""
        pending = self._pending
        if pending is None or pending[0] != cursor:
            return
        self._pending = None
        self.load = load
        del self.journal[: pending[1]]
        self.journal_bytes = sum(len(p) for _, _, _, p in self.journal)
        self.checkpoints += 1

    def failed(self, cursor: int) -> None:
        """The background snapshot at ``cursor`` failed: the older point stays."""
        if self._pending is not None and self._pending[0] == cursor:
            self._pending = None

    def replay(self, machine: StateMachine) -> None:
        """Restore the snapshot into ``machine`` and re-apply the journal as a non-owner.

        A replay produces no snapshot or digest (the machine defers outputs
        and nothing calls ``finish``): those were written the first time.
        Local statistics are kept as they were.
        """
        stats = (machine.applied_entries, machine.errors, machine.timers_fired)
        machine.restore(self.load())
        for seq, kind, nslots, payload in self.journal:
            if kind == KIND_NOOP:
                machine.skip(seq, nslots)
            elif kind == POISONED:
                machine.apply_poisoned(decode(payload, seq), False, nslots)
            else:
                machine.apply(decode(payload, seq), False, nslots)
        machine.applied_entries, machine.errors, machine.timers_fired = stats
        self.rollbacks += 1
