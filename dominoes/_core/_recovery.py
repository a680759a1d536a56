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
from typing import TYPE_CHECKING, Final

from ._backend import LogBackend
from ._codec import Control, Entry, decode, encode
from ._log import KIND_BLOB, KIND_NOOP, KIND_STAMPED, ReplicaState
from ._machine import Applied, Divergence, StateMachine

__all__ = ("POISONED", "Recovering", "RecoveryPoint")

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
        Local statistics are kept as they were (a digest report replayed is
        not a second divergence).
        """
        stats = (machine.applied_entries, machine.errors, machine.timers_fired, machine.divergences)
        machine.restore(self.load())
        for seq, kind, nslots, payload in self.journal:
            if kind == KIND_NOOP:
                machine.skip(seq, nslots)
            elif kind == POISONED:
                machine.apply_poisoned(decode(payload, seq), False, nslots)
            else:
                machine.apply(decode(payload, seq), False, nslots)
        machine.applied_entries, machine.errors, machine.timers_fired, machine.divergences = stats
        self.rollbacks += 1


class Recovering:
    """``ReplicaCore``'s recovery point, poison-entry and digest calls (a mixin of it).

    See the module doc of ``_replica`` (giving up on an entry) and
    docs/design/reads-and-poison.md.
    """

    log: LogBackend
    machine: StateMachine
    index: int
    replicas: int
    recovery: RecoveryPoint | None
    gave_up: int
    retried: int
    checkpoint_entries: int
    checkpoint_bytes: int
    snapshotter: Callable[[int], bool] | None
    outbox: list[bytes]

    if TYPE_CHECKING:

        def _blob(self, ref: bytes) -> bytes: ...
        def _outcomes(
            self, applied: Applied, out: list[Applied], key: int | None = None
        ) -> None: ...
        def unstamp(self, payload: bytes) -> tuple[int, bytes, int]: ...
        def owns_stamped(self, entry: Entry, key: int) -> bool: ...
        def _owns(self, entry: Entry) -> bool: ...

    def enable_recovery(self, snapshot: bytes | None = None) -> None:
        """Keep a recovery point from now on (the runtime does; see the module doc).

        ``snapshot``: the state at the current cursor, when the caller has it
        already (a joiner's loaded snapshot); otherwise it is taken now.
        """
        point = RecoveryPoint(self.machine.snapshot() if snapshot is None else snapshot)
        point.every_entries = self.checkpoint_entries
        point.every_bytes = self.checkpoint_bytes
        self.recovery = point

    def checkpoint(self) -> None:
        """Renew the recovery point at the current cursor.

        Without a :attr:`snapshotter` the snapshot is taken here, on the
        caller's time.  With one (the runtime's forks a child that encodes
        the state while the replica goes on), the snapshot is only started:
        the journal keeps everything until :meth:`checkpoint_done` says the
        snapshot at that cursor is complete.  One runs at a time.
        """
        recovery = self.recovery
        if recovery is None:
            return
        if self.snapshotter is not None:
            if recovery.renewing:
                return
            cursor = self.machine.cursor
            if self.snapshotter(cursor):
                recovery.started(cursor)
                return
        # no background snapshot (none offered, or it could not start): here
        recovery.renewed(self.machine.snapshot())

    def checkpoint_done(self, cursor: int, load: Callable[[], bytes]) -> None:
        """The background snapshot at ``cursor`` is complete; ``load()`` reads it."""
        if self.recovery is not None:
            self.recovery.done(cursor, load)

    def checkpoint_failed(self, cursor: int) -> None:
        """The background snapshot at ``cursor`` failed: the older point stays."""
        if self.recovery is not None:
            self.recovery.failed(cursor)

    def rollback(self) -> None:
        """Restore the state to just before :attr:`gave_up` (snapshot, then replay).

        The replay applies the journal as a non-owner: the effects and replies
        of those entries already happened, and snapshots asked of this
        replica were written then.  ``gave_up`` stays set until the entry is
        applied (:meth:`retry` or :meth:`apply_poisoned`).
        """
        if self.recovery is None:
            raise RuntimeError("rollback without a recovery point (call enable_recovery)")
        machine = self.machine
        self.recovery.replay(machine)
        if self.gave_up and machine.cursor != self.gave_up:
            raise RuntimeError(
                f"replica {self.index}: rollback reached {machine.cursor}, not {self.gave_up}"
            )

    @property
    def rollbacks(self) -> int:
        return 0 if self.recovery is None else self.recovery.rollbacks

    @property
    def checkpoints(self) -> int:
        return 0 if self.recovery is None else self.recovery.checkpoints

    def digest_done(
        self, seq: int, digest: dict[str, str] | None, *, now: float
    ) -> list[Divergence]:
        """A digest the driver computed for ``seq`` (``StateMachine.digest_writer``).

        Queues this replica's report of it in :attr:`outbox` and returns the
        divergences it shows against reports that arrived first.
        """
        found = self.machine.digest_done(seq, digest)
        if digest is not None:
            self.outbox.append(
                encode(Control("digest", [self.index, seq, digest], now, self.index))
            )
        return found

    def verdict(self) -> str:
        """Waiting at the given-up entry: may it be applied now, and how?

        ``"poison"``: the supervisor declared it poison (every live replica
        gave up on it): :meth:`apply_poisoned`.  ``"again"``: some live
        replica applied it, so it is not poison: :meth:`retry`.  ``""``: keep
        waiting.

        The completed tail past the entry also means some replica applied it
        (and a reply may have left), even one that died since: that is
        worth one more try here, once per entry.  Trying again each time
        would keep every survivor busy on an entry none of them can finish
        (the supervisor never sees them all waiting), so after that try the
        replica waits for the supervisor's verdict like the others.
        """
        seq, log = self.gave_up, self.log
        if not seq:
            return ""
        if log.poisoned == seq:
            return "poison"
        # Replicas only: other live lines (a durable log's writer) hold the log
        # and move their cursors without applying anything.
        live = [i for i in log.replicas_in(frozenset({ReplicaState.LIVE})) if i < self.replicas]
        if any(log.cursor(i) > seq for i in live):
            return "again"
        if log.completed > seq and self.retried != seq:
            self.retried = seq
            return "again"
        return ""

    def retry(self) -> None:
        """Apply the given-up entry again (another replica finished it: not poison)."""
        self.gave_up = 0

    def apply_poisoned(self) -> list[Applied]:
        """Apply the given-up entry as a :class:`PoisonedEntryError` (every replica does)."""
        seq = self.gave_up
        machine = self.machine
        got = self.log.read(seq)
        if got is None or machine.cursor != seq:
            raise RuntimeError(f"replica {self.index}: poison seq {seq} is not the next entry")
        kind, nslots, payload = got
        key = None
        if kind == KIND_STAMPED:
            kind, payload, key = self.unstamp(payload)
        elif kind == KIND_BLOB:
            payload = self._blob(payload)
        entry = decode(payload, seq)
        owner = self._owns(entry) if key is None else self.owns_stamped(entry, key)
        applied = machine.apply_poisoned(entry, owner, nslots)
        if self.recovery is not None:
            self.recovery.journal.append((seq, POISONED, nslots, payload))
        self.gave_up = 0
        self.log.applied(self.index, machine.cursor)
        out: list[Applied] = []
        self._outcomes(applied, out, key)
        return out
