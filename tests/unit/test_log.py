"""The log's arithmetic over a bytearray: layout, reserve/publish, read, claim, recovery."""

from __future__ import annotations

import pytest

import dominoes._core._layout as layout
import dominoes._core._log as log_module
from dominoes import EntryTooLargeError
from dominoes._core._errors import LifecycleError
from dominoes._core._log import LIFECYCLE, lifecycle_step
from dominoes.lowlevel import KIND_ENTRY, KIND_NOOP, LayoutError, Log, PlainWords, ReplicaState


def make_log(capacity: int = 8, slot_size: int = 128, replicas: int = 3, **kw: int) -> Log:
    buf = bytearray(Log.size_for(capacity, slot_size, replicas))
    log = Log.create(
        buf, PlainWords(buf), capacity=capacity, slot_size=slot_size, max_replicas=replicas, **kw
    )
    for i in range(replicas):
        log.join(i)
        log.set_live(i)
    return log


def handle(log: Log) -> Log:
    """A second participant's handle on the same buffer."""
    return Log(log._buf, log._w)


def test_layout_is_checked_on_attach() -> None:
    buf = bytearray(Log.size_for(8, 128, 2))
    with pytest.raises(LayoutError, match="magic"):
        Log(buf, PlainWords(buf))
    log = Log.create(buf, PlainWords(buf), capacity=8, slot_size=128, max_replicas=2)
    assert (log.capacity, log.slot_size, log.max_replicas) == (8, 128, 2)
    buf[8] = 99  # the version word
    with pytest.raises(LayoutError, match="version"):
        Log(buf, PlainWords(buf))


def test_a_big_log_caps_its_default_entry_size_at_what_a_slot_header_can_count() -> None:
    log = make_log(capacity=1 << 18, slot_size=128, replicas=1)  # capacity // 2 > 0xFFFF
    assert log.max_entry_slots == 0xFFFF


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"capacity": 6}, "power of two"),
        ({"slot_size": 100}, "multiple of 64"),
        ({"slot_size": 64}, "multiple of 64"),
        ({"max_entry_slots": 9}, "max_entry_slots"),
    ],
)
def test_bad_shapes_are_refused(kw: dict[str, int], message: str) -> None:
    args = {"capacity": 8, "slot_size": 128, "max_replicas": 2} | kw
    buf = bytearray(Log.size_for(16, 256, 2))
    with pytest.raises(ValueError, match=message):
        Log.create(buf, PlainWords(buf), **args)


def test_sequence_starts_at_one_and_reads_in_order() -> None:
    log = make_log()
    seqs = [log.try_append(0, f"e{i}".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert log.tail == 6
    assert [log.read(s) for s in seqs] == [(KIND_ENTRY, 1, f"e{i}".encode()) for i in range(5)]
    assert log.read(6) is None


def test_a_reserved_slot_is_invisible_until_published() -> None:
    log = make_log()
    seq = log.try_reserve(0, 1)
    assert seq == 1
    assert not log.published(seq)
    assert log.read(seq) is None
    log.write(seq, 1, b"hello")
    assert log.read(seq) == (KIND_ENTRY, 1, b"hello")


def test_read_returns_a_copy_not_a_view() -> None:
    log = make_log()
    seq = log.try_append(0, b"abc")
    got = log.read(seq)
    assert got is not None
    assert type(got[2]) is bytes
    log.write(seq, 1, b"xyz")  # the slot is overwritten in place
    assert got[2] == b"abc"


def test_claim_has_exactly_one_winner_and_resets_on_reuse() -> None:
    log = make_log(capacity=2, replicas=3)
    seq = log.try_append(0, b"x")
    assert [log.claim(seq, r) for r in (2, 0, 1)] == [True, False, False]
    assert log.claimant(seq) == 2
    for r in range(3):
        log.advance(r, seq + 1)
    log.try_append(0, b"y")  # seq 2 uses the other slot
    for r in range(3):
        log.advance(r, 3)
    reused = log.try_append(1, b"z")  # seq 3 reuses seq 1's slot
    assert reused % 2 == seq % 2
    assert log.claimant(reused) is None
    assert log.claim(reused, 0)


def test_full_log_is_backpressure_never_an_overwrite() -> None:
    log = make_log(capacity=4, replicas=2)
    assert [log.try_append(0, bytes([i])) for i in range(4)] == [1, 2, 3, 4]
    assert log.free_slots() == 0
    assert log.try_append(0, b"late") == 0  # refused
    assert log.tail == 5  # nothing was reserved
    log.advance(0, 5)  # replica 0 applied everything, replica 1 nothing
    assert log.try_append(0, b"late") == 0  # the slowest live cursor decides
    assert log.read(1) == (KIND_ENTRY, 1, b"\x00")  # untouched
    log.advance(1, 2)
    assert log.free_slots() == 1
    assert log.try_append(0, b"late") == 5
    assert log.read(5) == (KIND_ENTRY, 1, b"late")


def test_a_producers_cached_limit_never_lets_it_overwrite() -> None:
    log = make_log(capacity=4, replicas=2)
    other = handle(log)
    for i in range(4):
        assert other.try_append(1, bytes([i]))
    # ``log`` computed no limit yet; ``other`` cached one at 1 + 4.
    assert log.try_append(0, b"x") == 0
    assert other.try_append(1, b"x") == 0


def test_entries_larger_than_a_slot_span_slots_across_the_wrap() -> None:
    log = make_log(capacity=8, slot_size=128, replicas=1, max_entry_slots=6)
    pps = log.payload_per_slot
    assert pps == 48
    for r in range(6):
        log.try_append(0, b"-")
        log.advance(0, r + 2)
    big = bytes(range(256)) * 1  # 256 bytes: 6 slots, from slot 7 around to slot 4
    seq = log.try_append(0, big)
    assert seq == 7
    assert log.tail == 7 + 6
    kind, nslots, payload = log.read(seq)  # type: ignore[misc]
    assert (kind, nslots, payload) == (KIND_ENTRY, 6, big)


def test_an_entry_too_large_is_a_clear_error_not_a_truncation() -> None:
    log = make_log(capacity=8, slot_size=128, replicas=1, max_entry_slots=2)
    assert log.max_entry_bytes == 96
    with pytest.raises(EntryTooLargeError, match="97 bytes is larger than the log's limit of 96"):
        log.try_append(0, b"x" * 97)
    assert log.tail == 1
    assert log.try_append(0, b"x" * 96) == 1


def test_a_dead_replica_stops_holding_the_log() -> None:
    log = make_log(capacity=4, replicas=3)
    for i in range(4):
        log.try_append(0, bytes([i]))
    log.advance(0, 5)
    log.advance(1, 5)
    assert log.free_slots() == 0  # replica 2 never applied anything
    log.mark_dead(2)
    assert log.free_slots() == 4
    stats = log.statistics()
    assert stats.dead == (2,)
    assert stats.live == (0, 1)
    assert stats.slowest_replica in (0, 1)


def test_a_joining_replica_holds_the_log_from_its_join_cursor() -> None:
    log = make_log(capacity=4, replicas=2)
    log.mark_dead(1)
    log.try_append(0, b"a")
    log.advance(0, 2)
    assert log.join(1) == 2
    assert log.state(1) == ReplicaState.JOINING
    for _ in range(4):
        assert log.try_append(0, b"b")
        log.advance(0, log.tail)
    assert log.try_append(0, b"c") == 0  # held by the joiner at seq 2
    log.set_live(1, 6)
    assert log.try_append(0, b"c") == 6


def test_a_reservation_abandoned_by_a_dead_producer_is_filled_with_a_noop() -> None:
    log = make_log(replicas=2)
    log.try_append(0, b"before")
    seq = log.try_reserve(1, 2)  # replica 1 reserves two slots and dies
    after = log.try_append(0, b"after")
    assert log.read(seq) is None  # readers are stuck behind it
    log.mark_dead(1)
    assert log.abandoned(1) == [seq, seq + 1]
    assert log.fill_abandoned(1) == 2
    assert not log.recovery_pending(1)
    assert log.read(seq) == (KIND_NOOP, 1, b"")
    assert log.read(seq + 1) == (KIND_NOOP, 1, b"")
    assert log.read(after) == (KIND_ENTRY, 1, b"after")
    assert log.fill_abandoned(1) == 0  # idempotent


def test_a_published_or_never_made_reservation_is_not_filled() -> None:
    log = make_log(replicas=2)
    log.try_append(1, b"published")  # intent cleared by try_append
    log.mark_dead(1)
    assert log.abandoned(1) == []
    # an intent announced but whose CAS never happened: tail did not move past it
    log2 = make_log(replicas=2)
    log2._w.store_release(log2._line(1) + 40, 1)  # intent_n
    log2._w.store_release(log2._line(1) + 32, log2.tail)  # intent_seq
    log2.mark_dead(1)
    assert log2.abandoned(1) == []
    assert log2.fill_abandoned(1) == 0
    assert log2.tail == 1  # nothing was published ahead of the tail


def test_an_intent_shared_with_a_live_producer_is_left_alone() -> None:
    # Replica 1 announced seq t and died; replica 0 announced the same t and
    # won the CAS (it is writing).  Filling t would clobber a live producer.
    log = make_log(replicas=2)
    t = log.tail
    log._w.store_release(log._line(1) + 40, 1)
    log._w.store_release(log._line(1) + 32, t)
    assert log.try_reserve(0, 1) == t  # replica 0's intent is t too, until done()
    log.mark_dead(1)
    assert log.abandoned(1) == []
    assert log.fill_abandoned(1) == 0
    assert log.recovery_pending(1)  # undecided while replica 0 announces t
    log.write(t, 1, b"live")
    log.done(0)
    assert log.fill_abandoned(1) == 0  # published now
    assert not log.recovery_pending(1)
    assert log.read(t) == (KIND_ENTRY, 1, b"live")


def announce(log: Log, replica: int, seq: int, n: int) -> None:
    log._w.store_release(log._line(replica) + 40, n)
    log._w.store_release(log._line(replica) + 32, seq)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_two_producers_dying_with_the_same_intent_leave_no_hole(order: tuple[int, int]) -> None:
    # Both announced seq 1; replica 0 won a 3-slot CAS, replica 1's 1-slot
    # CAS lost; both died before anything was published.
    log = make_log(replicas=3)
    announce(log, 1, 1, 1)
    assert log.try_reserve(0, 3) == 1
    after = log.try_append(2, b"after")
    for dead in (0, 1):
        log.mark_dead(dead)
    for dead in order:
        log.fill_abandoned(dead)
    assert [log.read(s) for s in (1, 2, 3)] == [(KIND_NOOP, 1, b"")] * 3
    assert log.read(after) == (KIND_ENTRY, 1, b"after")
    assert not log.recovery_pending(0)
    assert not log.recovery_pending(1)


def test_a_dead_losers_larger_intent_never_covers_a_live_producers_slots() -> None:
    # Replica 1 announced 3 slots at seq 1 but lost; replica 0 won 1 slot and
    # died; replica 2 reserved seq 2..3 and is still writing.
    log = make_log(replicas=3)
    announce(log, 1, 1, 3)
    assert log.try_reserve(0, 1) == 1
    assert log.try_reserve(2, 2) == 2
    log.mark_dead(0)
    log.mark_dead(1)
    log.fill_abandoned(1)
    log.fill_abandoned(0)
    assert log.read(1) == (KIND_NOOP, 1, b"")
    assert log.read(2) is None  # replica 2's, untouched
    log.write(2, 2, b"x" * 60)
    log.done(2)
    assert log.read(2) == (KIND_ENTRY, 2, b"x" * 60)


def test_a_dead_replica_cannot_rejoin_before_its_reservation_is_filled() -> None:
    log = make_log(replicas=2)
    log.try_reserve(1, 1)
    log.mark_dead(1)
    with pytest.raises(LifecycleError, match="fill_abandoned") as err:
        log.join(1)
    assert (err.value.replica, err.value.state, err.value.operation) == (1, "dead", "join")
    assert log.state(1) == ReplicaState.DEAD
    log.fill_abandoned(1)
    assert log.join(1) == 2


# --- the replica lifecycle: every (state, operation) pair, against the table ------------

STATES = tuple(ReplicaState.NAMES)
OPERATIONS = ("join", "set_live", "mark_dead", "leave")


def line_in(state: int) -> Log:
    """A log whose line 1 is in ``state`` (reached by legal moves), line 0 live."""
    log = make_log(replicas=2)
    log.leave(1)
    path = {
        ReplicaState.ABSENT: (),
        ReplicaState.JOINING: ("join",),
        ReplicaState.LIVE: ("join", "set_live"),
        ReplicaState.DEAD: ("mark_dead",),
    }[state]
    for op in path:
        getattr(log, op)(1)
    assert log.state(1) == state
    return log


def test_the_lifecycle_table_is_the_documented_one() -> None:
    names = ReplicaState.NAMES
    table = {(names[s], op): names[t] for (s, op), t in LIFECYCLE.items()}
    assert table == {
        ("absent", "join"): "joining",
        ("dead", "join"): "joining",
        ("joining", "set_live"): "live",
        ("absent", "mark_dead"): "dead",
        ("joining", "mark_dead"): "dead",
        ("live", "mark_dead"): "dead",
        ("dead", "mark_dead"): "dead",
        ("joining", "leave"): "absent",
        ("live", "leave"): "absent",
        ("dead", "leave"): "absent",
    }


@pytest.mark.parametrize("state", STATES, ids=ReplicaState.NAMES.get)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_lifecycle_move_follows_the_table(state: int, operation: str) -> None:
    log = line_in(state)
    line = bytes(log._buf[log._line(1) : log._line(1) + 64])
    expected = LIFECYCLE.get((state, operation))
    if expected is None:
        with pytest.raises(LifecycleError) as err:
            getattr(log, operation)(1)
        assert isinstance(err.value, ValueError)
        assert bytes(log._buf[log._line(1) : log._line(1) + 64]) == line  # untouched
    else:
        getattr(log, operation)(1)
        assert log.state(1) == expected
    assert log.state(0) == ReplicaState.LIVE


def test_an_illegal_move_names_the_replica_the_state_and_the_operation() -> None:
    log = make_log(replicas=2)
    with pytest.raises(LifecycleError, match=r"^replica 1 is live: set_live\(\) is not allowed "):
        log.set_live(1)
    with pytest.raises(
        LifecycleError, match=r"replica 0 is live: join\(\) .*only from absent or dead"
    ):
        log.join(0)
    with pytest.raises(LifecycleError, match="unknown state"):
        lifecycle_step(3, 9, "join")
    with pytest.raises(LifecycleError, match="no such operation"):
        lifecycle_step(3, ReplicaState.LIVE, "explode")


def test_join_stores_no_generation_and_clears_what_the_line_waited_for() -> None:
    log = make_log(replicas=2)
    log.set_wants(1, 77)
    log.mark_dead(1)
    log.join(1, pid=1234)
    line = log._line(1)
    assert log._w.load_acquire(line + layout.R_PID) == 1234
    assert log._w.load_acquire(line + layout.R_WANTS) == 0


def test_the_layout_names_are_importable_from_the_log_module() -> None:
    for name in layout.__all__:
        assert getattr(log_module, name) is getattr(layout, name), name
        assert name in log_module.__all__
    assert Log.size_for(8, 128, 2) == layout.size_for(8, 128, 2)


def test_wake_list_names_replicas_that_said_they_sleep() -> None:
    log = make_log(replicas=3)
    log.set_asleep(2, True)
    assert log.wake_list() == [2]
    log.set_asleep(2, False)
    assert log.wake_list() == []


def test_a_sleeper_is_taken_by_one_producer_per_sleep() -> None:
    log = make_log(replicas=3)
    log.set_asleep(2, True)
    first, second = log, handle(log)
    assert first.take_sleepers() == [2]
    assert second.take_sleepers() == []  # already signalled for this sleep
    assert not log.asleep(2)
    log.set_asleep(2, True)  # it slept again
    assert second.take_sleepers() == [2]


def test_the_announcer_of_a_held_up_seq_is_found() -> None:
    log = make_log(replicas=3)
    log.try_append(0, b"a")
    seq = log.try_reserve(2, 1)
    assert log.announcer(seq) == 2
    log.write(seq, 1, b"b")
    log.done(2)
    assert log.announcer(seq) is None


def test_the_writer_wakes_only_the_sleepers_it_releases() -> None:
    log = make_log(replicas=4)
    log.set_wants(0, 10)  # waits for acked > 9, asleep
    log.set_asleep(0, True)
    log.set_wants(1, 20)  # waits for more than this acknowledgment gives
    log.set_asleep(1, True)
    log.set_asleep(2, True)  # asleep, holding nothing: producers wake it, not the writer
    log.set_wants(3, 5)  # awake: nothing to wake
    assert log.take_waiting(4, acked=12) == [0]
    assert not log.asleep(0)
    assert log.asleep(1)
    assert log.asleep(2)
    assert log.take_waiting(4, acked=12) == []  # the flag is taken once
    assert log.take_waiting(4, acked=20) == [1]
