"""The replica driver: one replica's side of the log, without I/O.

``ReplicaCore`` glues a :class:`~._log.Log` handle to a
:class:`~._machine.StateMachine`.  It knows how to append (encode, reserve,
publish), how to drain the log in order (read, claim, decode, apply, advance)
and when to ask for timers to fire.  It never sleeps, reads a clock or touches
a socket: the caller passes ``now`` and decides when to call it.  The
in-process ``testing.Cluster`` and the multi-process runtime drive the same
class, and own nothing of the replica's logic themselves.

What the core owns (the drivers only map it to futures, sockets, eventfds):

* the pending table: a driver registers a *waiter* (an ``asyncio.Future``, a
  ``testing.Pending``) with each append, and :meth:`poll` hands it back on
  the entry's :class:`Applied` (``applied.waiter``);
* encoding a submit (:meth:`encode_call`, taking a :class:`Mode`);
* group commit (:meth:`queue` then :meth:`commit`): many calls, one entry;
* asking for due timers to fire (:meth:`fire_due`);
* choosing whom to ask for a snapshot (:meth:`ask_snapshot`);
* digests and their reports (:meth:`digest_done`, :meth:`flush_outbox`);
* the recovery point (``_recovery.RecoveryPoint``).

The batch rule
--------------
:meth:`poll` applies entries up to the tail it observes when it starts, at
most ``batch`` of them, then publishes its cursor once.  Bounding the batch
keeps one busy replica from starving its own ingress and effects; stopping at
the observed tail keeps a steady stream of appends from turning one poll into
an endless loop.

Linearizable reads
------------------
``poll`` publishes the replica's cursor and raises the log's completed tail
(:meth:`Log.applied`) before it returns what it applied, so no reply to an
entry leaves before ``completed`` covers it.  A read first calls
:meth:`behind`: one acquire load of ``completed``; when this replica is behind
it, :meth:`poll` ``until`` it.  Everything below ``completed`` is published
(some replica applied it), so that catch-up never waits.

Giving up on an entry (poison entries, invariant 9)
---------------------------------------------------
The core keeps a *recovery point*: a snapshot of the state at some cursor and
a journal of the raw entries applied since, renewed every
``checkpoint_entries`` entries or ``checkpoint_bytes`` of journal.  When the
driver interrupts an apply that overran its timeout (by raising
:class:`ApplyTimeout` inside the handler), ``poll`` stops before that entry
and sets :attr:`gave_up`; :meth:`rollback` then restores the snapshot and
replays the journal, so the state is exactly as it was before the entry,
however far the handler got.  The entry is then either applied again (some
replica finished it: it is not poison) or, once every live replica gave up
on it, applied as an error by :meth:`apply_poisoned`, the same on every
replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeAlias, TypeVar

import msgspec

from ._backend import LogBackend
from ._codec import (
    Call,
    Control,
    Entry,
    Fire,
    Mode,
    Scoped,
    batch_payload,
    decode,
    encode,
    scoped_payload,
)
from ._component import EventRef
from ._errors import ApplyTimeout, EntryTooLargeError, LogFullError, UnknownEventError
from ._layout import STAMP, ReplicaState
from ._log import KIND_BLOB, KIND_ENTRY, KIND_NOOP, KIND_STAMPED
from ._machine import Applied, StateMachine
from ._membership import Membership, SnapshotAsk, owns_foreign
from ._partition import PartitionUnavailableError
from ._recovery import (
    DEFAULT_CHECKPOINT_BYTES,
    DEFAULT_CHECKPOINT_ENTRIES,
    Recovering,
    RecoveryPoint,
)

__all__ = ("BlobStore", "ReplicaCore", "ReplicaStatistics", "SnapshotAsk")

#: The driver's waiter type (what it registers to learn an outcome).
W = TypeVar("W")

#: A scoped call's header fields: (event, component, partitions, its time).
Scope: TypeAlias = tuple[str, str, list[int], float]
#: A call queued for group commit: (encoded call, waiter, batchable, its scope or None).
Queued: TypeAlias = tuple[bytes, W, bool, Scope | None]

#: Entries applied per poll before the caller gets control back.  Larger
#: batches amortise the cursor store and the loop's overhead; smaller ones
#: bound how long ingress and effects wait behind a burst.
DEFAULT_BATCH: Final = 256
#: Seconds one apply may take before it counts as a stall.  A stalled apply
#: holds up this replica's ingress and effects, and everything queued behind.
DEFAULT_STALL_THRESHOLD: Final = 0.1
#: Seconds a replica other than a timer's designated one waits past the
#: deadline before it asks for the timer to fire (covers a dead designee).
DEFAULT_TIMER_GRACE: Final = 0.05

#: Calls at most in one group commit (one ``Batch`` entry).
GROUP_MAX: Final = 256

assert DEFAULT_BATCH > 0


#: The largest entry a blob store takes (bytes).  Past it an append raises
#: EntryTooLargeError: every replica holds the whole payload in memory while
#: it applies it, and so does its state afterwards.
DEFAULT_BLOB_MAX_BYTES: Final = 1024 * 1024 * 1024


class BlobStore(Protocol):
    """Where entries larger than the ring's limit live (the driver's I/O).

    The ring then carries a ``KIND_BLOB`` entry whose payload is the
    reference ``put`` returned; every replica reads the bytes with ``get``.
    ``appended`` tells the store the seq of the entry that holds the
    reference, so it can delete the bytes once every replica is past it;
    ``discard`` drops a blob no entry will ever name (its append was refused
    and the caller went on with another payload).
    """

    def put(self, data: bytes) -> bytes: ...
    def get(self, ref: bytes) -> bytes: ...
    def appended(self, ref: bytes, seq: int) -> None: ...
    def discard(self, ref: bytes) -> None: ...


class ReplicaStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one replica (local, not replicated)."""

    index: int
    cursor: int
    applied_entries: int
    noops_skipped: int
    claims_won: int
    owned_entries: int
    appended: int
    append_refusals: int
    errors: int
    timers_pending: int
    timers_fired: int
    stalls: int
    divergences: int
    rollbacks: int
    checkpoints: int
    poisoned: int
    blobs_appended: int
    group_commits: int
    #: partitioned components: how many partitions this replica holds, by component
    partitions: dict[str, int] = {}
    #: partial results sent to the replicas whose calls touched partitions held here
    partials_sent: int = 0
    #: this replica's calls applied and waiting for other holders' partials now
    waiting_for_partials: int = 0
    #: scoped entries passed over: none of their partitions is held here
    skipped_entries: int = 0


class ReplicaCore(Membership, Recovering, Generic[W]):
    """One replica's view of the log and its state machine (see the module doc)."""

    def __init__(
        self,
        log: LogBackend,
        machine: StateMachine,
        *,
        replicas: int,
        batch: int = DEFAULT_BATCH,
        timer_grace: float = DEFAULT_TIMER_GRACE,
        clock: Callable[[], float] | None = None,
        stall_threshold: float = DEFAULT_STALL_THRESHOLD,
        on_stall: Callable[[Entry, float], None] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.log = log
        self.machine = machine
        machine.defer_outputs = True  # poll() calls finish() outside the timed apply
        machine.claim = self._claim_slot
        self.index = machine.index
        #: how many replicas the service runs (for spreading timer fires, and
        #: placing the partitions of partitioned components)
        self.replicas = replicas
        if machine.replicas != replicas:
            machine.replicas = replicas
        self.batch = batch
        self.timer_grace = timer_grace
        self.claims_won = 0
        self.owned_entries = 0
        self.noops_skipped = 0
        self.appended = 0
        self.append_refusals = 0
        #: entries this replica must append on its own behalf (digest reports);
        #: the driver appends them when there is room
        self.outbox: list[bytes] = []
        # Stall detection needs a clock, which the driver injects (the core
        # reads none of its own).
        self._clock = clock
        self.stall_threshold = stall_threshold
        self._on_stall = on_stall
        self.stalls = 0
        #: perf-clock time the current apply started (0.0: not applying); the
        #: driver's timer reads it to interrupt an apply that overran
        self.applying = 0.0
        #: the seq whose apply was interrupted (0: none); see the module doc
        self.gave_up = 0
        #: the last given-up seq tried again because the completed tail passed it
        self.retried = 0
        #: the recovery point: None until enable_recovery() (testing.Cluster
        #: replicas run without one)
        self.recovery: RecoveryPoint | None = None
        #: renew the recovery point after this many entries or journal bytes
        self.checkpoint_entries = DEFAULT_CHECKPOINT_ENTRIES
        self.checkpoint_bytes = DEFAULT_CHECKPOINT_BYTES
        #: the pending table: (seq, call index in a batch or -1) -> waiter
        self.pending: dict[tuple[int, int], W] = {}
        #: this replica's calls applied but waiting for partials from the
        #: holders of partitions it does not hold: (seq, sub) -> their outcome
        self.parked: dict[tuple[int, int], Applied] = {}
        # partials to send after this poll: [origin, seq, sub, component, partition, ok, value]
        self._forwarding: list[list[Any]] = []
        self.partials_sent = 0
        # partitions this replica is loading -> the replica asked for their state
        self._fetching: dict[tuple[str, int], int] = {}
        self.parts_sent = 0
        #: calls queued for group commit, in order
        self.group: list[Queued[W]] = []
        self.group_commits = 0
        #: the driver's background snapshot: ``snapshotter(cursor)`` starts
        #: encoding the state at ``cursor`` elsewhere and returns True, or
        #: returns False (then the checkpoint is taken inline)
        self.snapshotter: Callable[[int], bool] | None = None
        #: where entries over the ring's limit go (None: such an entry raises
        #: EntryTooLargeError); ``blob_max_bytes`` bounds them
        self.blobs: BlobStore | None = None
        self.blob_max_bytes = DEFAULT_BLOB_MAX_BYTES
        self.blobs_appended = 0
        # a blob written for an append the full log refused: the retry of the
        # same payload reuses it instead of writing it again
        self._blob_retry: tuple[bytes, bytes] | None = None
        # who owns the last given-up seq (its claim CAS cannot be won twice)
        self._memo_seq = 0
        self._memo_owner = False
        # the last slot claimed for a race call of a batch, and whether it was won
        self._claim_seq = 0
        self._claim_won = False
        #: this machine's id when the log is shared across machines (0: the log
        #: is this machine's alone); see :meth:`unstamp`
        self.origin = log.origin
        #: where the last stamped entry applied came from: (stream sequence of
        #: its message, its index there); a snapshot records it, so that a
        #: machine that loads the snapshot reads the stream from just after it
        self.source = (0, 0)

    # --- appending -----------------------------------------------------------------

    def make_call(
        self,
        event: EventRef,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        now: float,
        mode: Mode = Mode.AFFINITY,
        request_id: str = "",
    ) -> Call:
        """A call entry from this replica (raises :class:`UnknownEventError`)."""
        name = event if type(event) is str else self.machine.resolve(event)
        if name not in self.machine.registry:
            raise UnknownEventError(f"no handler is bound to event {name!r}")
        return Call(name, list(args), kwargs, now, self.index, mode, request_id)

    def encode_call(
        self,
        event: EventRef,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
        *,
        now: float,
        mode: Mode = Mode.AFFINITY,
        request_id: str = "",
    ) -> bytes:
        """The payload of a call entry.

        Raises :class:`UnknownEventError` if no handler is bound to ``event``
        (before anything is appended) and ``TypeError`` for arguments msgpack
        cannot encode.
        """
        call = self.make_call(event, args, kwargs, now=now, mode=mode, request_id=request_id)
        payload = encode(call)
        scope = self._scope(call)
        if scope is None:
            return payload
        out = scoped_payload(payload, call.event, scope[0], scope[1], False, now, self.index)
        return out if len(out) <= self.log.max_entry_bytes else payload

    def _scope(self, call: Call) -> tuple[str, list[int]] | None:
        """``StateMachine.scope`` for one of this replica's calls that may be scoped:
        ``affinity``, without a request id (a retry's de-duplication is replicated
        state of the machine)."""
        if call.mode != Mode.AFFINITY or call.request_id or not self.machine.partitioned:
            return None
        return self.machine.scope(call.event, call.args, call.kwargs)

    def encode_batch(self, calls: list[Call], *, now: float) -> bytes:
        """One entry holding several of this replica's ``affinity`` calls.

        Raises ``TypeError`` for arguments msgpack cannot encode, naming no
        call: encode calls alone to find it.  (Drivers batch through
        :meth:`queue` and :meth:`commit`.)
        """
        for call in calls:
            if call.mode != Mode.AFFINITY or call.origin != self.index or call.request_id:
                raise ValueError("only this replica's affinity calls without request ids batch")
        return batch_payload([encode(c) for c in calls], now, self.index)

    # --- submitting: the pending table and group commit ------------------------------

    def submit(self, payload: bytes, waiter: W, *, now: float) -> int:
        """Append an encoded entry and register ``waiter`` for its outcome; 0 when full.

        Calls queued for group commit go first (order is kept across forms),
        so 0 also means some of them are still waiting for room.
        """
        if self.group and (not self.commit(now) or self.group):
            return 0
        seq = self.try_append(payload)
        if seq:
            self.pending[seq, -1] = waiter
        return seq

    def submit_nowait(self, payload: bytes, waiter: W, *, now: float) -> int:
        """:meth:`submit`, raising :class:`LogFullError` instead of returning 0."""
        seq = self.submit(payload, waiter, now=now)
        if not seq:
            raise self._full_error()
        return seq

    def queue(self, call: Call, waiter: W) -> None:
        """Queue a call for group commit (:meth:`commit` appends it).

        Raises :class:`EntryTooLargeError` for a call no append can take, and
        ``TypeError`` for arguments msgpack cannot encode.  Only ``affinity``
        calls without a request id share an entry; others are appended alone,
        in their turn.
        """
        payload = encode(call)  # encoded once: a batch is framed from these bytes
        self.check_size(len(payload))
        batchable = call.mode == Mode.AFFINITY and not call.request_id
        scope = self._scope(call) if batchable else None
        if scope is not None:
            self.group.append((payload, waiter, batchable, (call.event, *scope, call.ts)))
        else:
            self.group.append((payload, waiter, batchable, None))

    def commit(self, now: float) -> int:
        """Append the queued calls in order, as few entries as fit; entries appended.

        Consecutive batchable calls (at most :data:`GROUP_MAX`) share one
        ``Batch`` entry, halved until it fits the log's entry limit.  Stops at
        the first refusal (the log is full): :attr:`group` keeps the rest.
        """
        group = self.group
        limit = self.log.max_entry_bytes
        appended = 0
        while group:
            chunk = group[:GROUP_MAX]
            for i, item in enumerate(chunk):
                if not item[2]:
                    del chunk[max(i, 1) :]  # a lone call ends the batch (or is it)
                    break
            while len(chunk) > 1:  # shrink until the batch fits one entry
                payload = batch_payload([item[0] for item in chunk], now, self.index)
                if len(payload) <= limit:
                    break
                del chunk[len(chunk) // 2 :]
            else:
                payload = chunk[0][0]  # one call: a plain Call entry
            if chunk[0][3] is not None:
                payload = self._scoped(payload, chunk)
            seq = self.try_append(payload)
            if not seq:
                break
            appended += 1
            pending = self.pending
            if len(chunk) == 1:
                pending[seq, -1] = chunk[0][1]
            else:
                self.group_commits += 1
                for i, item in enumerate(chunk):
                    pending[seq, i] = item[1]
            del group[: len(chunk)]
        return appended

    def _scoped(self, payload: bytes, chunk: list[Queued[W]]) -> bytes:
        """``payload`` (of ``chunk``'s calls) in a :class:`Scoped` header when every
        call is scoped to one event and component, and it fits an entry."""
        first = chunk[0][3]
        assert first is not None
        event, component, pids, ts = first
        if len(chunk) > 1:
            union = set(pids)
            for item in chunk[1:]:
                scope = item[3]
                if scope is None or scope[0] != event or scope[1] != component:
                    return payload
                union.update(scope[2])
                ts = max(ts, scope[3])
            pids = sorted(union)
        out = scoped_payload(payload, event, component, pids, len(chunk) > 1, ts, self.index)
        return out if len(out) <= self.log.max_entry_bytes else payload

    def drop_pending(self) -> list[W]:
        """Forget every waiter (registered and queued); they get no outcome now."""
        out = list(self.pending.values())
        out.extend(item[1] for item in self.group)
        self.pending.clear()
        self.group.clear()
        return out

    @property
    def max_entry_bytes(self) -> int:
        """The largest payload an append takes (the blob limit when there is a store)."""
        return self.blob_max_bytes if self.blobs is not None else self.log.max_entry_bytes

    def check_size(self, nbytes: int) -> None:
        """Raise :class:`EntryTooLargeError` if no append can take ``nbytes``."""
        if nbytes > self.log.max_entry_bytes and (
            self.blobs is None or nbytes > self.blob_max_bytes
        ):
            raise EntryTooLargeError(nbytes, self.max_entry_bytes)

    def try_append(self, payload: bytes) -> int:
        """Append an encoded entry; its seq, or 0 when the log is full (backpressure).

        A payload over the ring's limit goes to the blob store, and the ring
        carries a reference to it (``KIND_BLOB``).
        """
        log = self.log
        if len(payload) > log.max_entry_bytes and self.blobs is not None:
            return self._append_blob(payload)
        seq = log.try_append(self.index, payload)
        if seq:
            self.appended += 1
        else:
            self.append_refusals += 1
        return seq

    def _append_blob(self, payload: bytes) -> int:
        blobs = self.blobs
        assert blobs is not None
        self.check_size(len(payload))
        retry = self._blob_retry
        if retry is not None and retry[0] is payload:
            ref = retry[1]
        else:
            if retry is not None:  # the refused payload was given up: its blob too
                blobs.discard(retry[1])
            ref = blobs.put(payload)
        seq = self.log.try_append(self.index, ref, KIND_BLOB)
        if seq:
            self._blob_retry = None
            blobs.appended(ref, seq)
            self.appended += 1
            self.blobs_appended += 1
        else:
            self._blob_retry = (payload, ref)
            self.append_refusals += 1
        return seq

    def _blob(self, ref: bytes) -> bytes:
        if self.blobs is None:
            raise RuntimeError(f"replica {self.index}: a blob entry, but no blob store")
        return self.blobs.get(ref)

    def append_nowait(self, payload: bytes) -> int:
        """Append an encoded entry or raise :class:`LogFullError` (no waiter)."""
        seq = self.try_append(payload)
        if not seq:
            raise self._full_error()
        return seq

    def _full_error(self) -> LogFullError:
        return LogFullError(
            f"log full: {self.log.capacity} slots, slowest replica at "
            f"{self.log.slowest_cursor()}; retry, or await the append"
        )

    # --- applying --------------------------------------------------------------------

    def ready(self) -> bool:
        """True if the next entry is published (there is something to apply)."""
        return self.log.published(self.machine.cursor)

    def behind(self) -> int:
        """The completed tail if this replica has not applied up to it, else 0 (one load)."""
        target = self.log.completed
        return target if target > self.machine.cursor else 0

    def poll(self, limit: int | None = None, until: int | None = None) -> list[Applied]:
        """Apply published entries in order (the batch rule above); what they produced.

        ``until`` stops before that seq instead of the tail observed now (a
        read's catch-up); ``limit`` bounds the entries applied.  Each outcome
        carries the waiter registered for it (``applied.waiter``), a call of
        a batch its own; :attr:`gave_up` is set when an apply was interrupted.
        """
        log, machine, index, pending = self.log, self.machine, self.index, self.pending
        stop = log.tail if until is None else until
        budget = self.batch if limit is None else limit
        out: list[Applied] = []
        recovery = self.recovery
        journal = None if recovery is None else recovery.journal
        clock = self._clock
        added = 0
        seq = start = machine.cursor
        while budget and seq < stop:
            got = log.read(seq)
            if got is None:
                break
            kind, nslots, payload = got
            if kind == KIND_NOOP:
                machine.skip(seq, nslots)
                self.noops_skipped += 1
                if journal is not None:  # a replay must skip it too, or it meets a gap
                    journal.append((seq, kind, nslots, payload))
            else:
                key = seq
                if kind == KIND_STAMPED:
                    kind, payload, key = self.unstamp(payload)
                elif kind == KIND_BLOB:
                    payload = self._blob(payload)
                    kind = KIND_ENTRY  # the journal keeps the bytes, not the reference
                entry = decode(payload, seq)
                owner = self._owns(entry) if key else owns_foreign(entry)
                if clock is None:
                    applied = machine.apply(entry, owner, nslots)
                else:
                    t0 = self.applying = clock()
                    try:
                        applied = machine.apply(entry, owner, nslots)
                        # Cleared inside the try: a timeout raised between the
                        # apply's return and this store is still caught (the
                        # rollback then undoes a whole entry, which is safe).
                        self.applying = 0.0
                    except ApplyTimeout:
                        # The state may hold part of this entry: stop before
                        # it; the driver rolls back (see the module doc).  Its
                        # claim is won already: remember who owns it.
                        self.applying = 0.0
                        self.gave_up = self._memo_seq = seq
                        self._memo_owner = owner
                        machine.cursor = seq
                        break
                    took = clock() - t0
                    if took > self.stall_threshold:
                        self.stalls += 1
                        if self._on_stall is not None:
                            self._on_stall(entry, took)
                # A snapshot or digest asked here is not the entry's time, so it
                # is produced outside the timed apply (and rarely: test first).
                if applied.digest_due or applied.snapshot_for >= 0:
                    if not key:  # a joiner on another machine asked one there
                        applied.snapshot_for = -1
                    machine.finish(applied)
                    if applied.digest is not None:  # computed here, not by a digest_writer
                        report = Control("digest", [index, seq, applied.digest], entry.ts, index)
                        self.outbox.append(encode(report))
                if journal is not None:
                    journal.append((seq, kind, nslots, payload))
                    added += len(payload)
                batch = applied.batch
                if batch is None:
                    if pending:
                        applied.waiter = pending.pop((key, -1), None)
                    if applied.parts is not None:
                        self._partials(applied, key)
                    elif applied.control is not None:
                        what, items = applied.control
                        if what == "results":
                            self._completed(items, out)
                        else:
                            self._send_parts(items)
                    out.append(applied)
                else:
                    for sub in batch:
                        if pending:
                            sub.waiter = pending.pop((key, sub.sub), None)
                        if sub.parts is not None:
                            self._partials(sub, key)
                    out.extend(batch)
            budget -= 1
            seq = machine.cursor
        if self._forwarding:
            self._send_partials()
        if machine.partitioned and seq != start:
            self.ask_fetches()
        if seq != start:
            log.applied(index, seq)
        if recovery is not None:
            recovery.journal_bytes += added
            # never checkpoint a state that may hold part of a given-up entry
            if not self.gave_up and recovery.due():
                self.checkpoint()
        return out

    # --- partitioned components: partials between replicas -----------------------------

    def _partials(self, applied: Applied, key: int) -> None:
        """A call with partitioned parts was applied: forward ours, park what waits.

        A replica that ran parts whose holders do not include the call's
        origin sends their partials to it (one ``results`` entry per poll
        carries them all).  The origin's waiter stays parked until the last
        partial arrives (:meth:`_completed`).  ``key`` 0 (another machine's
        entry) has no waiter here.
        """
        rec = applied.parts
        assert rec is not None
        if rec.sends is not None and key:
            origin = applied.entry.origin  # type: ignore[union-attr]
            self._forwarding.extend(
                [origin, applied.seq, applied.sub, name, pid, ok, value]
                for name, pid, ok, value in rec.sends
            )
        if rec.waiting is None:
            return
        # a local client's call (its origin is a client line) is answered by the
        # replica that owns it, from the late outcome: not before every part is in
        client = applied.owner and applied.entry.origin >= self.replicas  # type: ignore[union-attr]
        if applied.waiter is None and not client:
            return
        late = Applied(applied.seq, applied.entry, client, applied.sub)
        if client:
            applied.owner = False
        late.late = True
        late.waiter, applied.waiter = applied.waiter, None
        late.parts = rec
        # each holder's incarnation now: a holder restarted since never sends
        log, machine, n = self.log, self.machine, self.replicas
        rec.holder_pids = {
            h: log.pid(h)
            for name, pid in rec.waiting
            for h in machine.partitioned[name].holders(pid, n)
        }
        self.parked[(applied.seq, applied.sub)] = late

    def check_parked(self) -> list[Applied]:
        """Fail this replica's calls waiting for partials that no holder can still send.

        A holder can send a call's partial while it is live, or joining from
        a position before the call (it applies the call in its backlog).  A
        partition whose holders are all dead, or restarted since the call
        started waiting (another incarnation: a pid other than the one it had
        then), or joining from past the call, sends nothing: the calls that
        wait for it get a :class:`PartitionUnavailableError` (the part may or
        may not have been applied before its holders died).  The driver calls
        this when a replica may have died (a tick, or a kill); returns those
        outcomes.
        """
        log, machine, n = self.log, self.machine, self.replicas
        failed = []
        for key, late in list(self.parked.items()):
            seq, rec = key[0], late.parts
            assert rec is not None
            assert rec.waiting is not None
            pids = rec.holder_pids

            def gone(h: int, seq: int = seq, pids: dict[int, int] = pids) -> bool:
                state = log.state(h)
                if state == ReplicaState.JOINING:
                    return log.cursor(h) > seq
                return state != ReplicaState.LIVE or log.pid(h) != pids.get(h, 0)

            down = sorted(
                part
                for part in rec.waiting
                if all(map(gone, machine.partitioned[part[0]].holders(part[1], n)))
            )
            if down:
                del self.parked[key]
                rec.waiting = None
                name, pid = down[0]
                late.error = PartitionUnavailableError(
                    f"partition {pid} of {name} has no live holder (replicas "
                    f"{list(machine.partitioned[name].holders(pid, n))} are down): the call "
                    "may or may not have been applied there; retry once it is back"
                )
                failed.append(late)
        return failed

    def _send_parts(self, transfer: list[Any]) -> None:
        """Send the partitions' states a gainer's ``fetch`` asked this replica for."""
        ts, index = self.machine.now, self.index
        for gainer, name, at, pid, state in transfer:
            payload = encode(Control("parts", [gainer, name, at, pid, state], ts, index))
            self.outbox.append(payload)
            self.parts_sent += 1

    def ask_fetches(self) -> int:
        """Ask a live ready holder for each partition this replica is loading; how many asks.

        A partition asked for already is asked again only when the replica
        asked is no longer live.  The driver calls it after applying, and on
        its tick (a holder may die before it answers).
        """
        machine, log, n = self.machine, self.log, self.replicas
        needed = machine.fetches_needed()
        fetching = self._fetching
        if not needed:
            fetching.clear()
            return 0
        asks: dict[tuple[int, str], list[int]] = {}
        for name, pid in needed:
            writer = fetching.get((name, pid))
            if writer is not None and log.state(writer) == ReplicaState.LIVE:
                continue
            live = [
                h
                for h in machine.partitioned[name].holders(pid, n)
                if h != self.index and log.state(h) == ReplicaState.LIVE
            ]
            if live:
                fetching[(name, pid)] = min(live)
                asks.setdefault((min(live), name), []).append(pid)
        ts, index = machine.now, self.index
        for (writer, name), pids in asks.items():
            self.outbox.append(encode(Control("fetch", [index, writer, name, pids], ts, index)))
        return len(asks)

    def _completed(self, items: list[list[Any]], out: list[Applied]) -> None:
        """Partials for this replica's parked calls arrived: report those now complete."""
        parked, machine = self.parked, self.machine
        for item in items:
            try:
                _, seq, sub, name, pid, ok, value = item
                late = parked.get((seq, sub))
            except (TypeError, ValueError):  # not a partial this code wrote: ignored
                continue
            if late is not None and machine.fill(late, name, pid, ok, value):
                del parked[(seq, sub)]
                out.append(late)

    def _send_partials(self) -> None:
        """Queue this poll's partials for their origins, in entries the log takes."""
        items, self._forwarding = self._forwarding, []
        self.partials_sent += len(items)
        limit = self.max_entry_bytes // 2
        ts, index = self.machine.now, self.index
        chunk: list[list[Any]] = []
        size = 0
        for item in items:
            n = len(item[6]) + 64
            if n > limit:  # too large to carry: the origin gets an error instead
                item[5], item[6] = (
                    False,
                    (
                        f"EntryTooLargeError: partition {item[4]}'s result ({n} bytes) "
                        f"is over the log's entry limit ({limit} bytes for a forwarded result)"
                    ),
                )
                n = 256
            if chunk and size + n > limit:
                self.outbox.append(encode(Control("results", [index, chunk], ts, index)))
                chunk, size = [], 0
            chunk.append(item)
            size += n
        if chunk:
            self.outbox.append(encode(Control("results", [index, chunk], ts, index)))

    def _outcomes(self, applied: Applied, out: list[Applied], key: int | None = None) -> None:
        """Append ``applied`` (or its batch's calls) to ``out``, with their waiters.

        ``key`` is what the waiters are registered under (:meth:`unstamp`);
        None: the entry's seq.
        """
        pending = self.pending
        for one in [applied] if applied.batch is None else applied.batch:
            if pending and key != 0:
                one.waiter = pending.pop((one.seq if key is None else key, one.sub), None)
            out.append(one)

    def unstamp(self, payload: bytes) -> tuple[int, bytes, int]:
        """A ``KIND_STAMPED`` entry's kind, payload and pending key.

        The ring of a machine that shares a log with others (``--log
        nats://``) carries each entry with a stamp: the machine it came from
        and its seq in that machine's outbox, which is what :meth:`submit`
        returned and registered the waiter under.  The key is that seq for
        an entry from this machine, and 0 for one from another machine: no
        waiter here, and only ``every`` calls are owned (see
        ``docs/design/jetstream.md``).
        """
        origin, tag, message, index = STAMP.unpack_from(payload)
        self.source = (message, index)
        return KIND_ENTRY, payload[STAMP.size :], tag if origin == self.origin else 0

    def owns_stamped(self, entry: Entry, key: int) -> bool:
        """:meth:`_owns` for an entry :meth:`unstamp` gave ``key`` (0: another machine's)."""
        return self._owns(entry) if key else owns_foreign(entry)

    def _owns(self, entry: Entry) -> bool:
        if entry.seq == self._memo_seq:  # again: the claim was decided the first time
            return self._memo_owner
        mode: Mode | None = None
        if type(entry) is Call:
            mode, event = entry.mode, entry.event
        elif type(entry) is Scoped and not entry.batch:  # a scoped call is an affinity call
            mode, event = Mode.AFFINITY, entry.event
        if mode is not None:
            modes = self.machine.modes
            if modes:  # a reconfiguration set this event's mode
                mode = modes.get(event, mode)
            if mode == Mode.AFFINITY:
                owner = entry.origin == self.index
            elif mode == Mode.EVERY:
                owner = True
            else:
                owner = self.log.claim(entry.seq, self.index)
                self.claims_won += owner
        elif type(entry) is Fire:
            owner = self.log.claim(entry.seq, self.index)
            self.claims_won += owner
        else:
            owner = entry.origin == self.index
        self.owned_entries += owner
        return owner

    def _claim_slot(self, seq: int) -> bool:
        """Claim the slot at ``seq`` for a ``race`` call of a batch (once: a re-apply
        after a rollback finds the first answer)."""
        if seq == self._claim_seq:
            return self._claim_won
        won = self.log.claim(seq, self.index)
        self.claims_won += won
        self._claim_seq, self._claim_won = seq, won
        return won

    # --- timers ----------------------------------------------------------------------------

    def flush_outbox(self) -> int:
        """Append queued reports while the log has room; how many are still queued."""
        while self.outbox:
            if not self.try_append(self.outbox[0]):
                break
            self.outbox.pop(0)
        return len(self.outbox)

    def due_fires(self, now: float) -> list[bytes]:
        """Payloads of the ``Fire`` entries this replica should append at local time ``now``."""
        machine = self.machine
        due = machine.due_timers(now, self.replicas, self.timer_grace)
        return [encode(Fire(tid, machine.fire_time(tid, now), self.index)) for tid in due]

    def fire_due(self, now: float) -> int:
        """Append ``Fire`` entries for the timers due at local time ``now``; how many.

        A refusal (the log is full) stops it, and every due timer is asked
        for again at the next call.
        """
        n = 0
        for payload in self.due_fires(now):
            if not self.try_append(payload):
                self.machine.timers_refused()
                break
            n += 1
        return n

    def next_deadline(self) -> float | None:
        return self.machine.next_deadline()

    # --- introspection -----------------------------------------------------------------------

    def statistics(self) -> ReplicaStatistics:
        m = self.machine
        return ReplicaStatistics(
            index=self.index,
            cursor=m.cursor,
            applied_entries=m.applied_entries,
            noops_skipped=self.noops_skipped,
            claims_won=self.claims_won,
            owned_entries=self.owned_entries,
            appended=self.appended,
            append_refusals=self.append_refusals,
            errors=m.errors,
            timers_pending=m.pending_timers,
            timers_fired=m.timers_fired,
            stalls=self.stalls,
            divergences=m.divergences,
            rollbacks=self.rollbacks,
            checkpoints=self.checkpoints,
            poisoned=len(m.poisoned),
            blobs_appended=self.blobs_appended,
            group_commits=self.group_commits,
            partitions={name: len(h.parts) for name, h in m.partitioned.items()},
            partials_sent=self.partials_sent,
            waiting_for_partials=len(self.parked),
            skipped_entries=m.skipped_entries,
        )
