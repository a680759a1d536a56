"""Joining the log: a replica's membership, and a joiner's snapshot and backlog.

A replica present from the start joins at seq 1 and goes live
(:meth:`Membership.start`).  A restarted replica joins a running log: it
holds the log from the tail, asks a live replica for a snapshot through the
log (:meth:`Membership.ask_snapshot`), copies what is appended meanwhile
(:meth:`Membership.copy_backlog`), restores the snapshot, applies that
backlog, and goes live (:meth:`Membership.go_live`).  The runtime's
``_joining`` and ``testing.Cluster.restart`` drive these calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ._backend import LogBackend
from ._codec import Call, Control, Entry, Fire, Mode, Scoped, decode, encode
from ._log import KIND_BLOB, KIND_ENTRY, KIND_NOOP, KIND_STAMPED, ReplicaState
from ._machine import Applied, StateMachine
from ._recovery import Journaled, RecoveryPoint

__all__ = ("Membership", "SnapshotAsk", "owns_foreign")


class SnapshotAsk(NamedTuple):
    """A joiner's request for a snapshot (:meth:`ReplicaCore.ask_snapshot`)."""

    #: the live replica asked to write it
    source: int
    #: the entry to append (the source writes its state when it applies it)
    payload: bytes
    #: the seq the joiner now holds the log from (it copies entries from there)
    held_from: int
    #: the other live replicas asked to write theirs at the same position, for
    #: partitions the joiner holds and the source does not
    extras: tuple[int, ...] = ()


class Membership:
    """``ReplicaCore``'s membership and joining calls (a mixin of it)."""

    log: LogBackend
    machine: StateMachine
    index: int
    replicas: int
    recovery: RecoveryPoint | None

    if TYPE_CHECKING:

        def _blob(self, ref: bytes) -> bytes: ...
        def _outcomes(
            self, applied: Applied, out: list[Applied], key: int | None = None
        ) -> None: ...
        def unstamp(self, payload: bytes) -> tuple[int, bytes, int]: ...
        def owns_stamped(self, entry: Entry, key: int) -> bool: ...
        def _partials(self, applied: Applied, key: int) -> None: ...
        def _send_partials(self) -> None: ...
        def enable_recovery(self, snapshot: bytes | None = None) -> None: ...

    def start(self, pid: int = 0) -> None:
        """Join a new log at its beginning and go live (a replica present from seq 1)."""
        self.log.join(self.index, pid=pid, cursor=self.machine.cursor)
        self.log.set_live(self.index)

    def join(self, pid: int = 0) -> int:
        """Join a running log: hold it from the current tail until a snapshot arrives."""
        return self.log.join(self.index, pid=pid)

    def hold_from_tail(self) -> int:
        """While joining, move the hold point up to the current tail (before re-asking)."""
        tail = self.log.tail
        self.log.advance(self.index, tail)
        return tail

    def load(self, snapshot: bytes, more: Sequence[bytes] = ()) -> None:
        """Restore a snapshot taken through the log, then go live at its cursor.

        ``more``: the snapshots the ask's ``extras`` wrote (partitions).
        """
        self.machine.restore(snapshot, more)
        self.log.set_live(self.index, self.machine.cursor)

    def copy_backlog(self, backlog: list[Journaled], start: int) -> int:
        """While joining: copy published entries from ``start`` into ``backlog``, and
        release them (the line's hold moves past them).  Returns the next seq.

        A joiner waits for its snapshot, which for a large state takes
        seconds to write and to load.  Holding the ring all that time would
        fill it and stall every writer; copying what arrives meanwhile (and
        resolving blobs, whose files go once every holder is past them) lets
        the ring move on.  :meth:`load_with_backlog` applies the copy.
        """
        log = self.log
        seq, stop = start, log.tail
        while seq < stop:
            got = log.read(seq)
            if got is None:
                break
            kind, nslots, payload = got
            if kind == KIND_BLOB:
                payload, kind = self._blob(payload), KIND_ENTRY
            backlog.append((seq, kind, nslots, payload))
            seq += nslots
        if seq != start:
            log.advance(self.index, seq)
        return seq

    def load_with_backlog(
        self,
        snapshot: bytes,
        backlog: list[Journaled],
        copied: int,
        *,
        recovery: bool = False,
        more: Sequence[bytes] = (),
    ) -> list[Applied]:
        """Restore ``snapshot``, apply the backlog past it, and go live after both
        (:meth:`restore_snapshot`, :meth:`apply_backlog` and :meth:`go_live` in one)."""
        self.restore_snapshot(snapshot, recovery=recovery, more=more)
        out = self.apply_backlog(backlog)
        self.go_live(copied)
        return out

    def restore_snapshot(
        self, snapshot: bytes, *, recovery: bool = False, more: Sequence[bytes] = ()
    ) -> None:
        """Restore a joiner's snapshot without going live (its backlog comes next).

        ``recovery``: the recovery point starts at the snapshot, and the
        backlog applied after it goes into its journal.  ``more``: the
        snapshots the ask's ``extras`` wrote at the same position.
        """
        machine = self.machine
        machine.restore(snapshot, more)
        if recovery:
            # a recovery point holds this replica's own state: its partitions,
            # not the source's
            self.enable_recovery(machine.snapshot() if machine.partitioned else snapshot)

    def apply_backlog(self, backlog: list[Journaled]) -> list[Applied]:
        """Apply copied entries, in order, skipping those the snapshot holds.

        The backlog's entries were applied by the replicas that were live
        then; their claims are decided, so this replica owns only its own
        affinity entries and ``every`` ones.
        """
        machine = self.machine
        recovery = self.recovery
        out: list[Applied] = []
        for seq, kind, nslots, payload in backlog:
            if seq < machine.cursor:
                continue
            if seq != machine.cursor:
                raise RuntimeError(
                    f"replica {self.index}: backlog gap at {seq}, not {machine.cursor}"
                )
            if kind == KIND_NOOP:
                machine.skip(seq, nslots)
            else:
                key = None
                if kind == KIND_STAMPED:
                    kind, payload, key = self.unstamp(payload)
                entry = decode(payload, seq)
                # another machine's entry (key 0): only an every call is owned here
                owner = owns_foreign(entry) if key == 0 else self._owns_decided(entry)
                applied = machine.apply(entry, owner, nslots)
                if key == 0:  # a joiner on another machine asked one there
                    applied.snapshot_for = -1
                machine.finish(applied)
                self._outcomes(applied, out, key)
                if key != 0:  # partials of the partitions held here, for their origins
                    for one in [applied] if applied.batch is None else applied.batch:
                        if one.parts is not None and one.parts.sends is not None:
                            self._partials(one, 1)
            if recovery is not None:
                recovery.journal.append((seq, kind, nslots, payload))
                recovery.journal_bytes += len(payload)
        self._send_partials()
        return out

    def go_live(self, copied: int) -> None:
        """After the backlog: live from ``copied`` (everything before it is applied)."""
        machine = self.machine
        if machine.cursor < copied:
            raise RuntimeError(
                f"replica {self.index}: backlog ends at {machine.cursor}, not {copied}"
            )
        cursor = machine.cursor
        self.log.set_live(self.index, cursor)
        self.log.applied(self.index, cursor)

    def _owns_decided(self, entry: Entry) -> bool:
        """Ownership of an entry others applied already (no claim is made)."""
        if type(entry) is Scoped and not entry.batch:  # an affinity call in a header
            mode = self.machine.modes.get(entry.event, Mode.AFFINITY)
            return mode == Mode.EVERY or (mode == Mode.AFFINITY and entry.origin == self.index)
        if type(entry) is Call:
            mode = self.machine.modes.get(entry.event, entry.mode)
            return mode == Mode.EVERY or (mode == Mode.AFFINITY and entry.origin == self.index)
        return type(entry) is not Fire and entry.origin == self.index

    def ask_snapshot(self, *, now: float, source: int | None = None) -> SnapshotAsk:
        """While joining: whom to ask for a snapshot, and the entry that asks.

        ``source`` defaults to the lowest live replica other than this one.
        The joiner's hold on the log moves up to the current tail first:
        nothing it held before is needed (it applied nothing yet), and a log
        that filled up behind it must have room for the request.
        """
        live = self.log.replicas_in(frozenset({ReplicaState.LIVE}))
        others = [i for i in live if i != self.index and i < self.replicas]
        if source is None:
            if not others:
                raise RuntimeError("no live replica to take a snapshot from")
            source = others[0]
        extras = self._extra_sources(source, others)
        held = self.hold_from_tail()
        arg: list[object] = [source, self.index]
        if extras:
            arg.append(list(extras))
        payload = encode(Control("snapshot", arg, now, self.index))
        return SnapshotAsk(source, payload, held, extras)

    def _extra_sources(self, source: int, live: list[int]) -> tuple[int, ...]:
        """The live replicas other than ``source`` whose snapshots complete the partitions.

        A joiner does not know the service's placement yet: ``copies`` may
        have changed since the service started (``reconfiguration.copies``),
        and the change is in the snapshot it is about to load.  So with any
        partitioned component it asks every live replica: once loaded, it
        takes each partition it holds from a snapshot that has it, and a
        partition none of them has starts empty (``StateMachine.lost``).
        """
        if not self.machine.partitioned:
            return ()
        return tuple(sorted(h for h in live if h != source and h != self.index))


def owns_foreign(entry: Entry) -> bool:
    """Whether a replica owns an entry from another machine: only an ``every`` call.

    Every other entry is owned on the machine it came from (by its origin
    replica, or by the replica there that wins its claim): the clients
    waiting for it are connected there.
    """
    return type(entry) is Call and entry.mode == Mode.EVERY
