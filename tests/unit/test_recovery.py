"""The recovery point and poison entries, in the sans-IO core (no processes).

A handler that overruns is interrupted by ``ApplyTimeout`` (the runtime raises
it from a timer signal; here the handler raises it itself, after changing
state, as an interrupted handler would have).  ``poll`` stops before the
entry, ``rollback`` restores the state before it, and the entry is then
applied again or applied as a ``PoisonedEntryError``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dominoes import Component, Context, Mode, PoisonedEntryError, Service, query, update
from dominoes.lowlevel import ApplyTimeout, Control, Log, PlainWords, ReplicaCore, encode


class Store(Component):
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    @update
    def put(self, ctx: Context, key: str, value: int) -> int:
        self.values[key] = value
        return value

    @update
    def hang(self, ctx: Context, key: str) -> None:
        self.values[key] = -1  # a change the rollback must undo
        raise ApplyTimeout("interrupted")

    @update
    def hang_on(self, ctx: Context, key: str, replica: int) -> None:
        """Hangs on one replica only (as a replica that is slow would), succeeds elsewhere."""
        self.values[key] = -1
        if ctx.replica == replica:
            raise ApplyTimeout("interrupted")
        self.values[key] = 1

    @query
    def get(self, key: str) -> int | None:
        return self.values.get(key)


SERVICE = Service("store", [Store()])
_ticks = itertools.count()


def clock() -> float:
    return float(next(_ticks))  # a fake clock: poll times applies only with one


def new_log() -> tuple[bytearray, PlainWords]:
    buf = bytearray(Log.size_for(64, 256, 4))
    words = PlainWords(buf)
    Log.create(buf, words, capacity=64, slot_size=256, max_replicas=4)
    return buf, words


#: The cores here register no waiters (``append_nowait``, ``poll``): no waiter type.
Core = ReplicaCore[None]


def pair(checkpoint_entries: int = 4) -> tuple[Core, Core]:
    buf, words = new_log()
    cores: list[Core] = []
    for i in range(2):
        core: Core = ReplicaCore(
            Log(buf, words), SERVICE.new_machine(i), replicas=2, clock=clock, stall_threshold=1e9
        )
        core.start()
        core.checkpoint_entries = checkpoint_entries
        core.enable_recovery()
        cores.append(core)
    return cores[0], cores[1]


def append(core: Core, event: str, *args: Any, rid: str = "", mode: Mode = Mode.AFFINITY) -> int:
    payload = core.encode_call(event, args, {}, now=1.0, mode=mode, request_id=rid)
    return core.append_nowait(payload)


def values(core: ReplicaCore[Any]) -> dict[str, int]:
    store = core.machine.component(Store)
    assert isinstance(store, Store)
    return dict(store.values)


def test_rollback_restores_the_state_before_the_interrupted_entry() -> None:
    a, b = pair()
    for i in range(10):
        append(a, "Store.put", f"k{i}", i)
    seq = append(a, "Store.hang", "k3")
    append(a, "Store.put", "after", 1)
    while not a.gave_up:  # small batches: a checkpoint at the end of some
        a.poll(limit=3)
    assert a.gave_up == seq
    assert a.machine.cursor == seq
    assert values(a)["k3"] == -1  # the handler got that far
    a.rollback()
    assert values(a)["k3"] == 3
    assert a.machine.cursor == seq
    assert a.checkpoints == 2  # the start, and one after 6 entries: the rest is replayed
    # Replica b gave up too; with every replica waiting, the entry is poison.
    b.poll()
    assert b.gave_up == seq
    b.rollback()
    outs = [a.apply_poisoned(), b.apply_poisoned()]
    for out in outs:
        assert isinstance(out[0].error, PoisonedEntryError)
        assert "Store.hang" in str(out[0].error)
    assert [o[0].owner for o in outs] == [True, False]  # affinity: the appender owns it
    a.poll()
    b.poll()
    assert values(a) == values(b)
    assert values(a)["after"] == 1
    assert values(a)["k3"] == 3
    assert a.machine.poisoned == b.machine.poisoned == {seq: "Store.hang"}
    assert a.machine.digest() == b.machine.digest()
    assert a.log.completed == a.machine.cursor


def test_a_rollback_replays_a_no_op_slot_in_the_journal() -> None:
    """A dead producer's slot filled with a no-op is part of the journal: the
    replay skips it instead of stopping at a gap."""
    a, _ = pair(checkpoint_entries=1000)
    append(a, "Store.put", "x", 1)
    log = a.log
    assert isinstance(log, Log)  # pair() builds the cores over the ring itself
    dead = log.try_reserve(2)  # replica line 2 reserves, dies before publishing
    log.mark_dead(2)
    assert log.fill_abandoned(2) == 1
    append(a, "Store.put", "y", 2)
    seq = append(a, "Store.hang", "z")
    while not a.gave_up:
        a.poll(limit=1)
    assert dead < seq
    a.rollback()
    assert a.machine.cursor == seq
    assert values(a) == {"x": 1, "y": 2}


def test_a_rollback_replays_an_earlier_poison_entry_as_poison() -> None:
    a, _ = pair(checkpoint_entries=1000)  # no checkpoint between the two
    first = append(a, "Store.hang", "x")
    a.poll()
    a.rollback()
    a.apply_poisoned()
    append(a, "Store.put", "y", 2)
    second = append(a, "Store.hang", "z")
    a.poll()
    assert a.gave_up == second
    a.rollback()  # replays `first` as poison, not by running it again
    assert a.machine.poisoned == {first: "Store.hang"}
    assert values(a) == {"y": 2}


def test_a_retry_keeps_the_claim_of_the_first_attempt() -> None:
    a, b = pair()
    seq = append(a, "Store.hang", "k", mode=Mode.RACE)
    b.poll()  # b claims it first, then gives up
    assert b.gave_up == seq
    b.rollback()
    a.poll()
    a.rollback()
    assert [a.apply_poisoned()[0].owner, b.apply_poisoned()[0].owner] == [False, True]


def test_a_poisoned_batch_fails_every_call_and_remembers_request_ids() -> None:
    a, _ = pair()
    calls = [
        a.make_call("Store.put", ["k", 1], {}, now=1.0),
        a.make_call("Store.hang", ["k"], {}, now=1.0),
    ]
    seq = a.append_nowait(a.encode_batch(calls, now=1.0))
    a.poll()
    assert a.gave_up == seq
    a.rollback()
    outs = a.apply_poisoned()
    assert [type(o.error) for o in outs] == [PoisonedEntryError, PoisonedEntryError]
    assert a.machine.poisoned == {seq: "Store.hang, Store.put"}
    assert values(a) == {}
    rid_seq = append(a, "Store.hang", "r", rid="req-1")
    a.poll()
    assert a.gave_up == rid_seq
    a.rollback()
    a.apply_poisoned()
    append(a, "Store.hang", "r", rid="req-1")  # a retry gets the recorded error
    (retry,) = a.poll()
    assert retry.duplicate
    assert "PoisonedEntryError" in str(retry.error)


def test_rollback_needs_a_recovery_point() -> None:
    buf, words = new_log()
    core: Core = ReplicaCore(Log(buf, words), SERVICE.new_machine(0), replicas=1)
    with pytest.raises(RuntimeError, match="recovery point"):
        core.rollback()


class MemoryBlobs:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.seqs: dict[bytes, int] = {}

    def put(self, data: bytes) -> bytes:
        ref = b"blob-0-0-%d" % len(self.data)
        self.data[ref] = data
        return ref

    def get(self, ref: bytes) -> bytes:
        return self.data[ref]

    def appended(self, ref: bytes, seq: int) -> None:
        self.seqs[ref] = seq

    def discard(self, ref: bytes) -> None:
        del self.data[ref]


def test_an_entry_over_the_ring_limit_goes_through_the_blob_store() -> None:
    from dominoes import EntryTooLargeError

    a, b = pair()
    blobs = MemoryBlobs()
    a.blobs = b.blobs = blobs
    big = "x" * (a.log.max_entry_bytes + 10)
    a.blob_max_bytes = 100
    with pytest.raises(EntryTooLargeError):
        a.check_size(a.log.max_entry_bytes + 1)
    a.blob_max_bytes = 1 << 20
    seq = append(a, "Store.put", big, 1)
    assert list(blobs.seqs.values()) == [seq]
    (out,) = b.poll()
    assert out.result == 1
    assert values(b) == {big: 1}
    a.poll()
    assert values(a) == values(b)
    assert a.statistics().blobs_appended == 1


def test_a_refused_blob_is_reused_by_its_retry_and_dropped_when_given_up() -> None:
    a, b = pair()
    blobs = MemoryBlobs()
    a.blobs = b.blobs = blobs
    while a.try_append(a.encode_call("Store.put", ["f", 0], {}, now=1.0)):
        pass  # the log is full: nobody applied anything yet
    size = a.log.max_entry_bytes + 10
    first = a.encode_call("Store.put", ["x" * size, 1], {}, now=1.0)
    assert a.try_append(first) == 0
    assert a.try_append(first) == 0  # the same payload again: the same blob
    assert len(blobs.data) == 1
    second = a.encode_call("Store.put", ["y" * size, 2], {}, now=1.0)
    assert a.try_append(second) == 0  # the first was given up: its blob goes
    assert len(blobs.data) == 1
    while a.poll() or b.poll():
        pass
    seq = a.try_append(second)
    assert seq
    assert list(blobs.seqs.values()) == [seq]


def _bogus_report(reporter: int, at: int) -> bytes:
    """A digest report from ``reporter`` for seq ``at`` that disagrees with any state."""
    return encode(
        Control("digest", [reporter, at, {"Store": "x", "_dominoes": "y"}], 1.0, reporter)
    )


def test_a_rollback_does_not_count_a_divergence_again() -> None:
    """The replay re-applies a digest report already compared: divergence
    detection is local bookkeeping, and the replay must not repeat it."""
    a, _ = pair(checkpoint_entries=100)
    a.machine.digest_every = 2
    append(a, "Store.put", "k", 1)
    append(a, "Store.put", "k", 2)  # seq 2: a digest point
    a.poll()
    a.append_nowait(_bogus_report(1, 2))
    a.poll()
    assert a.machine.divergences == 1
    append(a, "Store.hang", "k")
    a.poll()
    assert a.gave_up
    a.rollback()
    assert a.machine.divergences == 1


def test_a_rollback_does_not_queue_an_early_digest_report_twice() -> None:
    """A report that came before this replica's background digest is kept for
    :meth:`digest_done`; replaying it after a rollback must not keep it twice."""
    a, _ = pair(checkpoint_entries=100)
    a.machine.digest_every = 2
    a.machine.digest_writer = lambda seq: True  # digests in the background
    append(a, "Store.put", "k", 1)
    append(a, "Store.put", "k", 2)  # seq 2: a digest point, pending
    a.poll()
    a.append_nowait(_bogus_report(1, 2))
    append(a, "Store.hang", "k")
    a.poll()
    assert a.gave_up
    a.rollback()
    digest = a.machine.digest()  # the state at seq 2 (only put k=2 since)
    found = a.digest_done(2, digest, now=1.0)
    assert [(d.seq, d.replicas) for d in found] == [(2, (1, 0))]
    assert a.machine.divergences == 1


def test_the_journal_counts_the_bytes_of_a_poll_that_gave_up() -> None:
    """Entries applied before the given-up one are journaled, and their bytes
    count toward ``checkpoint_bytes`` like any others."""
    a, _ = pair(checkpoint_entries=100)
    append(a, "Store.put", "k", 1)
    append(a, "Store.hang", "k")
    a.poll()
    assert a.gave_up == 2
    point = a.recovery
    assert point is not None
    assert len(point.journal) == 1
    assert point.journal_bytes == sum(len(p) for _, _, _, p in point.journal)


def test_a_joiners_backlog_counts_toward_its_journal_bytes() -> None:
    """A joiner that keeps a recovery point journals the backlog it applies
    after its snapshot, and counts its bytes toward ``checkpoint_bytes``."""
    a, b = pair(checkpoint_entries=100)
    snapshot = a.machine.snapshot()  # the state at cursor 1
    first, second = append(a, "Store.put", "k", 1), append(a, "Store.put", "j", 2)
    backlog = []
    for seq in (first, second):
        got = a.log.read(seq)
        assert got is not None
        backlog.append((seq, *got))
    b.restore_snapshot(snapshot, recovery=True)
    b.apply_backlog(backlog)
    assert values(b) == {"k": 1, "j": 2}
    point = b.recovery
    assert point is not None
    assert len(point.journal) == 2
    assert point.journal_bytes == sum(len(p) for _, _, _, p in point.journal)


def test_a_poisoned_group_commit_hands_each_call_its_own_waiter() -> None:
    """Group commit registers a waiter per call of the batch; applying the
    batch as poison must hand each call's error to that call's waiter, and
    a retry of the same seq after the verdict finds none left over."""
    buf, words = new_log()
    core: ReplicaCore[str] = ReplicaCore(
        Log(buf, words), SERVICE.new_machine(0), replicas=1, clock=clock, stall_threshold=1e9
    )
    core.start()
    core.enable_recovery()
    core.queue(core.make_call("Store.put", ["k", 1], {}, now=1.0), "put")
    core.queue(core.make_call("Store.hang", ["k"], {}, now=1.0), "hang")
    core.queue(core.make_call("Store.put", ["j", 2], {}, now=1.0, mode=Mode.RACE), "alone")
    assert core.commit(1.0) == 2  # the batch, then the race call on its own
    assert core.poll() == []
    seq = core.gave_up
    assert seq
    core.rollback()
    outs = core.apply_poisoned()
    assert [(o.waiter, o.sub, type(o.error)) for o in outs] == [
        ("put", 0, PoisonedEntryError),
        ("hang", 1, PoisonedEntryError),
    ]
    (alone,) = core.poll()
    assert (alone.waiter, alone.sub, alone.result) == ("alone", -1, 2)
    assert core.pending == {}
    assert values(core) == {"j": 2}


def test_an_entry_a_live_replica_applied_is_tried_again() -> None:
    a, b = pair()
    seq = append(a, "Store.hang_on", "k", 1)
    a.poll()  # a applies it (and could have replied)
    b.poll()
    assert b.gave_up == seq
    b.rollback()
    assert b.verdict() == "again"


def test_an_entry_applied_by_a_replica_that_died_is_tried_again_once() -> None:
    """The completed tail says it was applied (a reply may have left): not poison yet.

    One more try, then the replica waits for the supervisor like the others,
    instead of retrying for ever an entry it cannot finish.
    """
    a, b = pair()
    seq = append(a, "Store.hang_on", "k", 1)
    a.poll()
    a.log.mark_dead(0)  # the only replica that applied it is gone
    b.poll()
    assert b.gave_up == seq
    b.rollback()
    assert b.log.completed > seq
    assert b.verdict() == "again"
    b.retry()
    b.poll()
    assert b.gave_up == seq  # it hangs here again
    b.rollback()
    assert b.verdict() == ""  # now it waits for the verdict
    supervisor = b.log
    assert isinstance(supervisor, Log)
    supervisor.declare_poisoned(seq)  # what the supervisor does next
    assert b.verdict() == "poison"
