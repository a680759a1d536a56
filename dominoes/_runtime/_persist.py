"""A replica's side of a durable log: held replies, restore at start, snapshots.

With ``--durable DIR`` the log writer (``_writer``) copies every entry to
segment files and publishes ``acked``: the seq below which entries may be
acknowledged under the fsync policy.  A replica applies entries as soon as
they are published, as always; what waits is what the world sees of them:

* the owner's reply (the future of ``submit``, the ingress reply) and its
  effects are *held* while the entry's seq is at or above ``acked``, in
  order, and delivered as soon as the writer passes them (it wakes the
  replicas when it does);
* a replica holding replies wakes the writer before it sleeps, so a reply
  never waits for the writer's idle tick.

State other replicas read may hold an entry whose reply is still held (it
is applied, not yet durable): a read can see a write that a power failure
would then lose.  Redis behaves the same way; docs/design/durability.md
says more.

Snapshots: the lowest-numbered live replica writes one on the schedule
(``--snapshot-every``), and any replica on demand (``dominoes snapshot``,
the KV's ``SAVE``/``BGSAVE``).  A forked child encodes the state at the
replica's cursor (copy-on-write: the replica goes on serving; the pause is
the ``fork``), writes it atomically and deletes what it makes redundant.

A service with partitioned components: a replica's state is its partitions
only, so every replica writes snapshots of its own (``snapshot-<cursor>.r<i>.snap``),
on its own schedule, and restarts from its newest one, replaying the log
after it *as itself*: the log holds everything that replica applied, the
partitions it gained in a reconfiguration included (their state travels
in ``parts`` entries).  A replica killed and restarted while the service
runs joins from a live replica's snapshot; a partition no live replica
holds (``copies=1``) is rebuilt the same way (:meth:`Persistence.recover_lost`):
its own snapshot, the log up to the join, and only the lost partitions taken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._core._codec import decode
from .._core._errors import DurabilityError
from .._core._layout import D_POLICY, D_SNAP_SEQ, D_SNAP_TIME, D_SYNCED, KIND_NOOP, ReplicaState
from .._core._machine import Applied, StateMachine
from .._core._segment import decode_snapshot, snapshot_name
from ._durable import (
    DurableLogError,
    LogReader,
    prune,
    segments,
    snapshots,
    usable_snapshots,
    write_snapshot,
)
from ._fork import _become_background

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("DurableOptions", "Persistence", "SnapshotInfo", "replay")

log = logging.getLogger("dominoes.replica")

POLICY_NAMES: Final = {1: "always", 2: "everysec", 3: "no"}
#: How long a joining replica waits for the log writer to have written up to
#: its join before it gives up rebuilding lost partitions from the log.
WRITER_WAIT: Final = 30.0


def replay(
    machine: StateMachine, data_dir: Path, start: int, until: int, poisoned: frozenset[int]
) -> int:
    """Apply the durable log's records from ``start`` to ``until`` to ``machine``
    (at ``start``), as its replica did live; how many records."""
    n = 0
    for record in LogReader(data_dir).read(start, until):
        if record.seq != machine.cursor:
            raise RuntimeError(f"replay: record {record.seq}, expected {machine.cursor}")
        if record.kind == KIND_NOOP:
            machine.skip(record.seq, record.nslots)
        elif record.seq in poisoned:  # as the live replicas did: an error, not the handler
            machine.apply_poisoned(decode(record.payload, record.seq), False, record.nslots)
        else:
            machine.apply(decode(record.payload, record.seq), False, record.nslots)
        n += 1
    if machine.cursor != until:
        raise RuntimeError(f"replay ended at {machine.cursor}, not {until}")
    return n


@dataclass(frozen=True)
class DurableOptions:
    """How a replica of a durable service persists (from ``dominoes run``)."""

    data_dir: Path
    #: write a snapshot after this many entries (0: never on a count)
    snapshot_entries: int = 1_000_000
    #: or after this many seconds with new entries (0: never on a clock)
    snapshot_seconds: float = 600.0
    #: the log is a JetStream stream (``--log nats://``): no writer, no held
    #: replies; snapshots go to ``data_dir`` and the bridge uploads them to the
    #: stream's Object Store, each with the stream position it follows
    shared: bool = False


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot on disk."""

    seq: int
    path: Path
    #: seconds the fork took (the serving replica's pause)
    pause: float


class Persistence:
    """One replica's durable-log duties (see the module doc)."""

    def __init__(self, replica: Replica, options: DurableOptions | None) -> None:
        self._r = replica
        self.options = options
        #: owned outcomes whose entries the writer has not acknowledged yet, in order
        self.held: collections.deque[Applied] = collections.deque()
        self.active = options is not None and replica.log.writer_line is not None
        self._acked = 0
        self._writer = replica.log.writer_line
        # what this replica's line says it waits for (R_WANTS): 0, or held[0].seq + 1
        self._wanted = 0
        self._saving: asyncio.Future[SnapshotInfo] | None = None
        self.snapshots_written = 0
        self.snapshot_failures = 0
        self.last_snapshot_ok = True
        self.last_pause = 0.0
        self.replayed = 0
        self.replay_seconds = 0.0
        self._since = time.time()
        #: a partitioned service: each replica snapshots its own partitions
        #: (its own files, its own schedule: ``_last`` is its newest cursor)
        self.partitioned = bool(replica.core.machine.partitioned) and self.active
        self._mine: int | None = replica.index if self.partitioned else None
        self._last = self._last_time = 0
        if self.partitioned and options is not None:
            own = snapshots(options.data_dir, replica.index)
            self._last = own[-1][0] if own else 0
            self._last_time = int(own[-1][1].stat().st_mtime) if own else 0
        #: partitions rebuilt from the durable log at the last join (recover_lost)
        self.recovered_parts = 0

    @property
    def snapshots_on(self) -> bool:
        """Snapshots are written on schedule and on demand (durable, or shared)."""
        return self.active or (self.options is not None and self.options.shared)

    # --- what the writer publishes ---------------------------------------------------

    @property
    def policy(self) -> str:
        return POLICY_NAMES.get(self._r.log.durability_word(D_POLICY), "")

    def refusal(self) -> DurabilityError | None:
        """The error a new update gets while the writer cannot write (None: it can)."""
        code = self._r.log.write_error
        if not code:
            return None
        return DurabilityError(
            f"the durable log cannot be written ({os.strerror(code)}); updates are refused "
            f"until it can, reads go on"
        )

    def status(self) -> dict[str, Any]:
        """The persistence section of statistics (INFO persistence reads it)."""
        log = self._r.log
        snaps = snapshots(self.options.data_dir, self._mine) if self.options is not None else []
        segs = segments(self.options.data_dir) if self.options is not None else []
        size = 0
        for _, path in segs:
            with contextlib.suppress(OSError):
                size += path.stat().st_size
        return {
            "enabled": self.active,
            "dir": str(self.options.data_dir) if self.options is not None else "",
            "policy": self.policy,
            "acked": log.acked,
            "synced": log.durability_word(D_SYNCED),
            "error": os.strerror(log.write_error) if log.write_error else "",
            "snapshot_seq": self._last if self.partitioned else log.durability_word(D_SNAP_SEQ),
            "snapshot_time": log.durability_word(D_SNAP_TIME),
            "partitioned": self.partitioned,
            "recovered_partitions": self.recovered_parts,
            "snapshot_in_progress": self._saving is not None and not self._saving.done(),
            "snapshots_on_disk": len(snaps),
            "segments": len(segs),
            "log_bytes": size,
            "held_replies": len(self.held),
            "snapshots_written": self.snapshots_written,
            "snapshot_failures": self.snapshot_failures,
            "last_snapshot_ok": self.last_snapshot_ok,
            "last_snapshot_pause": self.last_pause,
            "replayed": self.replayed,
            "replay_seconds": self.replay_seconds,
        }

    # --- held replies ---------------------------------------------------------------------

    def hold(self, applied: Applied) -> bool:
        """Keep ``applied``'s reply and effects until the writer acknowledges it; True if held."""
        if self.held or applied.seq >= self._acked:
            self._acked = self._r.log.acked
            if self.held or applied.seq >= self._acked:
                self.held.append(applied)
                return True
        return False

    def release(self) -> int:
        """Deliver the held outcomes the writer has acknowledged since; how many."""
        held = self.held
        if not held:
            return 0
        acked = self._acked = self._r.log.acked
        n = 0
        deliver = self._r._deliver_now
        while held and held[0].seq < acked:
            deliver(held.popleft())
            n += 1
        if n and not held and self._wanted:
            self._wanted = 0
            self._r.log.set_wants(self._r.index, 0)
        return n

    def mark_wanted(self) -> None:
        """Before the asleep flag: store which seq will release a held reply (the
        writer wakes only sleepers it releases; see ``Log.take_waiting``)."""
        wanted = self.held[0].seq + 1
        if wanted != self._wanted:
            self._wanted = wanted
            self._r.log.set_wants(self._r.index, wanted)

    def wake_writer(self) -> None:
        """Replies wait for the writer: make sure it is not asleep."""
        if self.held and self._writer is not None and self._r.log.wake_writer():
            self._r.wakeups.signal(self._writer)

    def drop(self) -> list[Applied]:
        held = list(self.held)
        self.held.clear()
        return held

    # --- restore at start -------------------------------------------------------------------

    def restore(
        self, snapshot: Path | None, start: int, next_seq: int, poisoned: frozenset[int]
    ) -> int:
        """Load the snapshot, replay the records after it; how many were replayed.

        ``poisoned``: the entries the supervisor's recovery found poison marks
        for (a mark may follow its entry, so they are known before the read).
        """
        assert self.options is not None
        t0 = time.monotonic()
        machine = self._r.core.machine
        if snapshot is not None:
            cursor, state = decode_snapshot(snapshot.read_bytes())
            machine.restore(state)
            assert machine.cursor == cursor == start, (machine.cursor, cursor, start)
        if self.options.shared:  # the bridge copies the stream after the snapshot
            self.replay_seconds = time.monotonic() - t0
            return 0
        n = replay(machine, self.options.data_dir, start, next_seq, poisoned)
        self.replayed, self.replay_seconds = n, time.monotonic() - t0
        return n

    def recover_lost(self, machine: StateMachine) -> int:
        """Rebuild the partitions ``machine`` lost at a join from this replica's own
        durable snapshot and the log; how many it rebuilt.

        ``machine`` was just restored from live replicas' snapshots at its
        cursor, and :attr:`StateMachine.lost` lists the partitions none of
        them held (``copies=1``: their holder was this replica before it
        died).  A second machine restores this replica's newest snapshot,
        replays the log as this replica up to ``machine``'s cursor (waiting
        for the log writer to have written it), and gives the lost
        partitions' state.  Raises :class:`DurableLogError` if the log
        cannot give it (the partitions then start empty, as without
        ``--durable``).
        """
        opts = self.options
        r = self._r
        if opts is None or not self.partitioned or not machine.lost:
            return 0
        until = machine.cursor
        t0 = time.monotonic()
        deadline = t0 + WRITER_WAIT
        while r.log.acked < until:  # the writer has the entries up to the join
            if r.log.write_error or time.monotonic() > deadline:
                raise DurableLogError(
                    f"the log writer has not written up to seq {until} "
                    f"({os.strerror(r.log.write_error) if r.log.write_error else 'too slow'})"
                )
            if r.log.wake_writer() and self._writer is not None:
                r.wakeups.signal(self._writer)
            time.sleep(0.001)
        side = r.service.new_machine(r.index, r.replicas)
        side.snapshot_writer = lambda seq, joiner: True  # asks in the log: not ours to write
        side.digest_writer = lambda seq: True
        start = 1
        for cursor, _path, state in usable_snapshots(
            opts.data_dir, until=until, warn=log.warning, replica=r.index
        ):
            side.restore(state)
            start = cursor
            break
        reader = LogReader(opts.data_dir)
        for _ in reader.read(start, until):  # poison marks may follow their entries
            pass
        replay(side, opts.data_dir, start, until, frozenset(reader.poisoned))
        n = 0
        for name, pid in machine.lost:
            held, mine = machine.partitioned[name], side.partitioned[name]
            if pid in mine.parts:
                held.load_part(pid, mine.part_state(pid))
                n += 1
        machine.lost = [
            (name, pid) for name, pid in machine.lost if pid not in side.partitioned[name].parts
        ]
        self.recovered_parts += n
        log.warning(
            "replica %d: rebuilt %d partition(s) no live replica held from its durable "
            "snapshot at seq %d and %d log entries (%.2f s)",
            r.index,
            n,
            start,
            until - start,
            time.monotonic() - t0,
        )
        return n

    # --- snapshots ---------------------------------------------------------------------------

    def designated(self) -> bool:
        """True on the lowest-numbered live replica: the one that snapshots on schedule
        (a partitioned service: every replica, each for its own partitions)."""
        r = self._r
        if self.partitioned:
            return r.log.state(r.index) == ReplicaState.LIVE
        for i in range(r.replicas):
            if r.log.state(i) == ReplicaState.LIVE:
                return i == r.index
        return False

    def tick(self, now: float) -> None:
        """The sampling tick: start a scheduled snapshot when one is due here."""
        opts = self.options
        if opts is None or not self.snapshots_on or (self._saving and not self._saving.done()):
            return
        r = self._r
        if r.joining.active or r.core.gave_up:
            return
        if self.partitioned and r.core.machine.fetches_needed():
            return  # loading partitions: not a state to snapshot (see ``snapshot``)
        log = r.log
        cursor = r.core.machine.cursor
        last = (self._last if self.partitioned else log.durability_word(D_SNAP_SEQ)) or 1
        if cursor <= last:
            return
        due = opts.snapshot_entries and cursor - last >= opts.snapshot_entries
        if not due and opts.snapshot_seconds:
            since = self._last_time if self.partitioned else log.durability_word(D_SNAP_TIME)
            if not since:  # none yet: count from when this replica started
                since = int(self._since)
            due = now - since >= opts.snapshot_seconds
        if due and self.designated():
            self.snapshot()

    def snapshot(self) -> asyncio.Future[SnapshotInfo]:
        """Write a snapshot of the state at this replica's cursor; a future of where.

        One at a time: while one is being written, its future is returned.
        """
        r = self._r
        loop = r.loop
        assert loop is not None
        if self._saving is not None and not self._saving.done():
            return self._saving
        fut: asyncio.Future[SnapshotInfo] = loop.create_future()
        if self.options is None:
            fut.set_exception(
                DurabilityError("this service is not durable (run it with --durable)")
            )
            return fut
        if r.core.gave_up or r.joining.active:
            fut.set_exception(DurabilityError("the replica is recovering; try again"))
            return fut
        if self.partitioned and r.core.machine.fetches_needed():
            # its journal of a partition being loaded is not in a snapshot
            fut.set_exception(DurabilityError("the replica is loading partitions; try again"))
            return fut
        shared = self.options.shared
        if shared and r.core.source == (0, 0):
            fut.set_exception(DurabilityError("nothing applied from the stream yet; try again"))
            return fut
        self._saving = fut
        data_dir = self.options.data_dir
        machine = r.core.machine
        cursor = machine.cursor
        t0 = time.perf_counter()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # no memory for a child (strict overcommit), no pids
            self.snapshot_failures += 1
            self.last_snapshot_ok = False
            log.error("replica %d: cannot fork for a snapshot: %s", r.index, exc)
            fut.set_exception(DurabilityError(f"cannot fork for a snapshot: {exc}"))
            return fut
        if pid == 0:  # the child: the state exactly at ``cursor``, copy-on-write
            code = 1
            try:
                _become_background(parent)
                if shared:  # where in the stream the state stands: for the bridge
                    message, index = r.core.source
                    (data_dir / f"snapshot-{cursor:020d}.pos").write_text(f"{message} {index}\n")
                write_snapshot(data_dir, cursor, machine.snapshot(), self._mine)
                if self.partitioned:
                    prune(data_dir, replicas=r.replicas, replica=r.index)
                elif not shared:  # the bridge removes what it uploaded
                    prune(data_dir)
                code = 0
            finally:
                os._exit(code)
        pause = self.last_pause = time.perf_counter() - t0

        def done(ok: bool) -> None:
            if fut.done():
                return
            if not ok:
                self.snapshot_failures += 1
                self.last_snapshot_ok = False
                log.error("replica %d: the snapshot at seq %d failed", r.index, cursor)
                fut.set_exception(DurabilityError(f"the snapshot at seq {cursor} failed"))
                return
            if r.log.raise_durability_word(D_SNAP_SEQ, cursor):  # the newest: say when
                r.log.set_durability_word(D_SNAP_TIME, int(time.time()))
            self._last = max(self._last, cursor)
            self._last_time = int(time.time())
            self.snapshots_written += 1
            self.last_snapshot_ok = True
            log.info("replica %d: snapshot at seq %d (fork %.1f ms)", r.index, cursor, pause * 1e3)
            path = data_dir / snapshot_name(cursor, self._mine)
            fut.set_result(SnapshotInfo(cursor, path, pause))

        r.children.watch(pid, done)
        return fut
