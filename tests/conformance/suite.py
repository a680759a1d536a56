"""The conformance suite every log backend runs (docs/design/log-backend.md).

A backend's test module subclasses :class:`LogBackendSuite` and gives it a
``backend`` fixture: an object with the :class:`Backend` interface.

* ``backend.open(capacity=, slot_size=, replicas=)`` makes a new, empty log
  and returns an :class:`Opened`: ``host`` is the supervisor's handle
  (``LogHost.log``), ``handle()`` gives a new participant's handle (each
  replica uses its own), ``close()`` releases the log.
* ``Opened.settle()`` returns once every entry given a seq so far, through
  any handle, can be read.  The ring publishes inside ``try_append``, so its
  ``settle`` does nothing; a backend whose appends complete later (a remote
  sequencer, a group commit) waits for them there.  Tests call it between
  appending and reading, never a sleep.
* ``Opened.elsewhere`` (None if the backend cannot) runs a participant in
  another process: ``elsewhere(target, [args, ...])`` calls
  ``target(handle, sync, *args)`` once per ``args`` in a process of its own
  with a handle of its own, and returns their results in order.  ``sync`` is a
  barrier across those processes (``sync.wait(timeout)``).  Targets are the
  module-level functions below, so a child process can import them.  They
  append and then read or wake at once, so the handle they get must publish
  before ``try_append`` returns (a backend whose appends complete later
  gives them a handle that settles after each append).

Every test calls only what the ``LogBackend`` protocol declares (and, on
``host``, what ``SupervisedLog`` adds), plus
``ReplicaState`` and the errors the contract names (``EntryTooLargeError``,
``LifecycleError``).  Nothing here knows about slots, words or offsets, except
one stated assumption: a payload of at most :data:`SMALL` bytes takes one
position (``nslots == 1``) in every shape the suite opens.  A backend that
stores bytes of its own with each entry (``nats://`` stamps every entry)
fits less in one position, and says how much as ``backend.small``
(:func:`small`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dominoes import EntryTooLargeError
from dominoes._core._backend import LogBackend, SupervisedLog
from dominoes._core._errors import LifecycleError
from dominoes._core._log import D_ACKED, D_WRITER, ReplicaState

#: A payload this small takes one position (the smallest legal slot has 48
#: payload bytes; a backend without slots takes any payload in one position).
SMALL = 48
#: Generous bound for another process's work; only a hang reaches it.
ELSEWHERE_TIMEOUT = 120.0

ABSENT, JOINING, LIVE, DEAD = (
    ReplicaState.ABSENT,
    ReplicaState.JOINING,
    ReplicaState.LIVE,
    ReplicaState.DEAD,
)
OPERATIONS = ("join", "set_live", "mark_dead", "leave")

#: The replica lifecycle every backend keeps: (state, operation) -> next state.
#: Written out here, not imported, so that the suite states the contract.
LIFECYCLE_SPEC = {
    (ABSENT, "join"): JOINING,
    (DEAD, "join"): JOINING,
    (JOINING, "set_live"): LIVE,
    (ABSENT, "mark_dead"): DEAD,
    (JOINING, "mark_dead"): DEAD,
    (LIVE, "mark_dead"): DEAD,
    (DEAD, "mark_dead"): DEAD,
    (JOINING, "leave"): ABSENT,
    (LIVE, "leave"): ABSENT,
    (DEAD, "leave"): ABSENT,
}

Elsewhere = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]


@dataclass
class Opened(AbstractContextManager["Opened"]):
    """One log under test."""

    #: the supervisor's handle (``LogHost.log``)
    host: SupervisedLog
    handle: Callable[[], LogBackend]
    close: Callable[[], None]
    #: run participants in other processes (None: this backend cannot)
    elsewhere: Elsewhere | None = None
    #: wait until every entry given a seq so far is readable (the ring: at once)
    settle: Callable[[], None] = lambda: None

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(Protocol):
    """What a backend's ``backend`` fixture provides."""

    name: str

    def open(self, *, capacity: int, slot_size: int, replicas: int) -> Opened: ...


# --- helpers -------------------------------------------------------------------------


def live_log(
    backend: Backend, *, capacity: int = 8, slot_size: int = 128, replicas: int = 3
) -> tuple[Opened, list[LogBackend]]:
    """A new log whose ``replicas`` lines are all live from seq 1, one handle each."""
    opened = backend.open(capacity=capacity, slot_size=slot_size, replicas=replicas)
    handles = [opened.handle() for _ in range(replicas)]
    for i, h in enumerate(handles):
        assert h.join(i, cursor=h.tail) == 1
        h.set_live(i)
    return opened, handles


def small(backend: Backend) -> int:
    """Payload bytes that take one position in every shape the suite opens: :data:`SMALL`,
    or the smaller ``backend.small`` of a backend that stores bytes of its own with each
    entry."""
    return int(getattr(backend, "small", SMALL))


def fill(log: LogBackend, replica: int, tag: bytes = b"") -> list[int]:
    """Append small entries until the log refuses one; their seqs."""
    seqs: list[int] = []
    for i in itertools.count():
        seq = log.try_append(replica, tag + i.to_bytes(4, "little"))
        if not seq:
            return seqs
        seqs.append(seq)
        assert i <= 1 << 20, "the log never refused an append"
    raise AssertionError("unreachable")


def entry(log: LogBackend, seq: int) -> tuple[int, int, bytes]:
    """``log.read(seq)`` of an entry that must be published: ``(kind, nslots, payload)``."""
    got = log.read(seq)
    assert got is not None, f"seq {seq} is unpublished"
    return got


def apply_all(opened: Opened, log: LogBackend, replica: int) -> int:
    """Read ``replica``'s entries up to the tail and report them applied; the new cursor."""
    opened.settle()
    seq, tail = log.cursor(replica), log.tail
    while seq < tail:
        got = log.read(seq)
        assert got is not None, f"seq {seq} below the tail {tail} is unpublished"
        seq += got[1]
    log.applied(replica, seq)
    return seq


def reach(log: LogBackend, replica: int, state: int) -> None:
    """Bring a fresh (absent) line to ``state`` through legal moves."""
    assert log.state(replica) == ABSENT
    if state == JOINING:
        log.join(replica)
    elif state == LIVE:
        log.join(replica)
        log.set_live(replica)
    elif state == DEAD:
        log.join(replica)
        log.mark_dead(replica)
    assert log.state(replica) == state


def interleavings(a: Sequence[str], b: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Every merge of ``a`` and ``b`` that keeps each one's own order."""
    n = len(a) + len(b)
    for places in itertools.combinations(range(n), len(a)):
        ia, ib = iter(a), iter(b)
        yield tuple(next(ia) if k in places else next(ib) for k in range(n))


#: random appends (replica, size seed), applies (replica, up to n entries),
#: deaths and rejoins, for the no-loss, no-reorder property
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 2), st.integers(0, 10_000)),
        st.tuples(st.just("apply"), st.integers(0, 2), st.integers(1, 4)),
        st.tuples(st.just("kill"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("rejoin"), st.integers(0, 2), st.just(0)),
    ),
    max_size=60,
)
#: (replica, how far it moves its applied cursor)
STEPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=30)


def check_appends_and_applies(backend: Backend, ops: list[tuple[str, int, int]]) -> None:
    """One example of the property: every op, then every entry a holder needs is intact."""
    opened, handles = live_log(backend, capacity=8, slot_size=128, replicas=3)
    with opened:
        host, cap = opened.host, opened.host.capacity
        model: dict[int, tuple[int, bytes]] = {}  # seq -> (nslots, payload)
        cursor = {i: 1 for i in range(3)}  # the model's cursor of each holding replica
        counter = 0
        for op, r, n in ops:
            log = handles[r]
            if op == "append" and r in cursor:  # only a holding replica appends
                size = n % (log.max_entry_bytes + 1)
                counter += 1
                payload = (counter.to_bytes(4, "little") * (size // 4 + 1))[:size]
                before = host.tail
                seq = log.try_append(r, payload)
                if seq:
                    assert seq == before  # positions are dense and in order
                    opened.settle()
                    got = host.read(seq)
                    assert got is not None
                    assert got[2] == payload
                    model[seq] = (got[1], payload)
                    assert host.tail == seq + got[1]
                else:
                    assert host.tail == before
                    if size <= small(backend):
                        assert cursor, "refused with nobody holding the log"
                        assert before - min(cursor.values()) == cap
            elif op == "apply" and r in cursor:
                seq = cursor[r]
                for _ in range(n):
                    if seq not in model:
                        break
                    assert log.read(seq) == (1, *model[seq])
                    seq += model[seq][0]
                log.applied(r, seq)
                cursor[r] = seq
                assert host.completed >= seq
            elif op == "kill" and r in cursor:
                host.mark_dead(r)
                del cursor[r]
            elif op == "rejoin" and r not in cursor:
                tail = host.tail
                assert log.join(r) == tail  # a joiner holds from the tail
                log.set_live(r)
                cursor[r] = tail
            # every entry a holding replica still needs is intact, in order
            low = min(cursor.values(), default=host.tail)
            assert host.tail - host.slowest_cursor() <= cap
            assert host.slowest_cursor() == low
            for seq in sorted(s for s in model if s >= low):
                assert host.read(seq) == (1, *model[seq])


def check_completed(backend: Backend, steps: list[tuple[int, int]]) -> None:
    """One example: replicas report random progress; ``completed`` follows the rules."""
    opened, handles = live_log(backend, capacity=64, replicas=3)
    with opened:
        host = opened.host
        for _ in range(40):
            assert host.try_append(0, b"e")
        cursors = [1, 1, 1]
        seen = host.completed
        for r, k in steps:
            cursors[r] = min(cursors[r] + k, host.tail)
            handles[r].applied(r, cursors[r])
            assert handles[r].cursor(r) == cursors[r]
            now = host.completed
            assert now >= seen  # never goes back
            assert now >= cursors[r]  # covers what was just reported applied
            assert now <= max(cursors)  # and nothing nobody applied
            seen = now


# --- targets run in other processes ------------------------------------------------------


def claim_all(log: LogBackend, sync: Any, replica: int, seqs: list[int]) -> list[int]:
    """Race to claim every seq of ``seqs``; the ones this replica won."""
    sync.wait(ELSEWHERE_TIMEOUT)
    return [seq for seq in seqs if log.claim(seq, replica)]


def append_many(log: LogBackend, sync: Any, replica: int, count: int) -> list[int]:
    """Append ``count`` entries tagged with ``replica``; their seqs, in order."""
    sync.wait(ELSEWHERE_TIMEOUT)
    seqs = []
    for i in range(count):
        seq = log.try_append(replica, b"%d:%d" % (replica, i))
        assert seq, "the log was sized never to fill"
        seqs.append(seq)
    return seqs


def wake_rounds(
    log: LogBackend, sync: Any, role: str, rounds: int, producer: int, reader: int, lines: int
) -> list[Any]:
    """Both halves of the wake-up protocol, racing once per round.

    Round r: the producer appends (seq r) then takes the sleepers; the reader
    sets its flag then checks seq r.  Returns, per round, the producer's
    ``(seq, took the reader)`` or the reader's "saw seq r".  The reader clears
    its flag only once both are done with the round (a reader that saw
    nothing would be asleep until then), and before the next round starts.
    """
    out: list[Any] = []
    for r in range(1, rounds + 1):
        sync.wait(ELSEWHERE_TIMEOUT)
        if role == "producer":
            seq = log.try_append(producer, b"r%d" % r)
            out.append((seq, reader in log.take_sleepers(lines)))
        else:
            log.set_asleep(reader, True)
            out.append(log.published(r))
        sync.wait(ELSEWHERE_TIMEOUT)
        if role == "reader":
            log.set_asleep(reader, False)
    return out


# --- the suite ----------------------------------------------------------------------------


class LogBackendSuite:
    """Every test here runs against each backend; subclass it with a ``backend`` fixture."""

    # --- shape ----------------------------------------------------------------------------

    def test_handles_are_log_backends(self, backend: Backend) -> None:
        with backend.open(capacity=8, slot_size=128, replicas=2) as opened:
            assert isinstance(opened.host, LogBackend)
            assert isinstance(opened.handle(), LogBackend)

    def test_a_new_log_is_empty_and_starts_at_seq_one(self, backend: Backend) -> None:
        with backend.open(capacity=8, slot_size=128, replicas=2) as opened:
            log = opened.host
            assert log.capacity == 8
            assert log.max_entry_bytes >= SMALL
            assert log.tail == 1
            assert log.completed == 1
            assert log.slowest_cursor() == 1  # nobody holds: the tail
            assert log.poisoned == 0
            assert [log.state(i) for i in range(2)] == [ABSENT, ABSENT]
            assert log.read(1) is None
            assert not log.published(1)

    def test_a_new_log_is_not_durable_until_a_writer_says_so(self, backend: Backend) -> None:
        """``acked`` 0 (acknowledge at apply) and no writer: what a replica reads
        to decide whether to hold replies; the durability words round-trip."""
        with backend.open(capacity=8, slot_size=128, replicas=3) as opened:
            log, other = opened.host, opened.handle()
            assert log.acked == 0
            assert log.writer_line is None
            assert log.write_error == 0
            assert not log.wake_writer()
            log.set_durability_word(D_WRITER, 3)  # the writer on line 2
            log.set_durability_word(D_ACKED, 1)
            opened.settle()
            assert (other.writer_line, other.acked) == (2, 1)
            assert other.raise_durability_word(D_ACKED, 5)
            assert not other.raise_durability_word(D_ACKED, 4)  # a max: never lowered
            assert log.durability_word(D_ACKED) == 5

    # --- order and identity -------------------------------------------------------------

    def test_every_handle_reads_the_same_bytes_in_order(self, backend: Backend) -> None:
        opened, (a, b, c) = live_log(backend)
        with opened:
            payloads = [b"", b"x", bytes(range(small(backend))), b"\x00" * 3]
            producers = [(0, a), (1, b), (2, c), (0, a)]
            seqs = [h.try_append(i, p) for (i, h), p in zip(producers, payloads, strict=True)]
            assert seqs == [1, 2, 3, 4]
            assert opened.host.tail == 5
            opened.settle()
            for reader in (opened.host, a, b, c, opened.handle()):
                got = [reader.read(s) for s in seqs]
                assert [(g[1], g[2]) for g in got if g] == [(1, p) for p in payloads]
                assert all(reader.published(s) for s in seqs)
                assert reader.read(5) is None
                assert not reader.published(5)

    def test_the_kind_is_kept(self, backend: Backend) -> None:
        opened, (a, *_) = live_log(backend)
        with opened:
            seqs = [a.try_append(0, b"k", kind) for kind in (1, 2, 3, 7)]
            opened.settle()
            assert [entry(opened.host, s)[0] for s in seqs] == [1, 2, 3, 7]

    def test_multi_position_entries_read_back_whole_across_the_wrap(self, backend: Backend) -> None:
        opened, (a,) = live_log(backend, capacity=8, slot_size=128, replicas=1)
        with opened:
            big = bytes(range(256)) * (a.max_entry_bytes // 256 + 1)
            big = big[: a.max_entry_bytes]
            for start in range(9):  # every offset of the ring, then once more
                seq = a.try_append(0, big)
                assert seq
                opened.settle()
                _, nslots, payload = entry(opened.handle(), seq)
                assert payload == big
                assert nslots >= 1
                assert a.tail == seq + nslots  # the next entry is at seq + nslots
                assert apply_all(opened, a, 0) == a.tail
                assert a.try_append(0, b"s%d" % start)  # shift the next one by one
                apply_all(opened, a, 0)

    def test_an_entry_too_large_is_refused_and_reserves_nothing(self, backend: Backend) -> None:
        opened, (a,) = live_log(backend, replicas=1)
        with opened:
            with pytest.raises(EntryTooLargeError):
                a.try_append(0, b"x" * (a.max_entry_bytes + 1))
            assert a.tail == 1
            assert a.try_append(0, b"x" * a.max_entry_bytes) == 1

    # --- backpressure: no loss, no overwrite ------------------------------------------------

    def test_a_full_log_refuses_and_never_overwrites(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            seqs = fill(a, 0)
            assert seqs == list(range(1, 9))  # one position each, capacity of them
            tail = a.tail
            assert a.try_append(0, b"late") == 0
            assert b.try_append(1, b"late") == 0
            assert a.tail == tail  # a refusal gives out no position
            apply_all(opened, a, 0)  # replica 1 has applied nothing: it still holds all 8
            assert a.try_append(0, b"late") == 0
            opened.settle()
            for s in seqs:
                assert opened.host.read(s) == (1, 1, (s - 1).to_bytes(4, "little"))

    def test_room_appears_as_the_slowest_holder_applies(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            fill(a, 0)
            apply_all(opened, a, 0)
            b.applied(1, 3)  # replica 1 applied seqs 1 and 2
            assert b.slowest_cursor() == 3
            assert fill(a, 0, b"more") == [9, 10]
            b.advance(1, 5)  # advance frees as applied does
            assert fill(a, 0, b"again") == [11, 12]
            opened.settle()
            for s in range(5, 13):
                assert opened.host.published(s)  # everything replica 1 still needs

    def test_a_stale_handle_never_overwrites(self, backend: Backend) -> None:
        # Each handle may cache how far it can go; none may go past the truth.
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            other = opened.handle()
            assert fill(other, 0)
            assert a.try_append(0, b"x") == 0
            assert other.try_append(0, b"x") == 0
            b.applied(1, 2)
            a.applied(0, 2)
            assert other.try_append(0, b"y") == 9
            assert a.try_append(0, b"z") == 0

    def test_random_appends_and_applies_never_lose_or_reorder(self, backend: Backend) -> None:
        # @given on a function of the test, not on the method: the method runs
        # with one fixture per backend, which hypothesis refuses to share.
        @given(ops=OPS)
        def example(ops: list[tuple[str, int, int]]) -> None:
            check_appends_and_applies(backend, ops)

        example()

    # --- ownership --------------------------------------------------------------------

    def test_claim_has_exactly_one_winner_per_seq(self, backend: Backend) -> None:
        opened, handles = live_log(backend, capacity=4, replicas=3)
        with opened:
            a = handles[0]
            for round_ in range(3):  # the slots are reused: each new seq is claimed afresh
                seqs = fill(a, 0, b"%d" % round_)
                opened.settle()
                for seq in seqs:
                    calls = [(r, h.claim(seq, r)) for r, h in enumerate(handles) for _ in range(2)]
                    assert [ok for _, ok in calls].count(True) == 1, calls
                for r, h in enumerate(handles):
                    apply_all(opened, h, r)

    @pytest.mark.integration
    def test_claim_has_one_winner_across_processes(self, backend: Backend) -> None:
        opened, handles = live_log(backend, capacity=4096, slot_size=128, replicas=3)
        with opened:
            if opened.elsewhere is None:
                pytest.skip(f"{backend.name}: every participant runs in one process")
            seqs = fill(handles[0], 0)
            assert len(seqs) == 4096
            opened.settle()
            won = opened.elsewhere(claim_all, [(1, seqs), (2, seqs)])
            assert set(won[0]).isdisjoint(won[1])
            assert sorted(won[0] + won[1]) == seqs
            assert not any(handles[0].claim(s, 0) for s in seqs)  # decided for good

    @pytest.mark.integration
    def test_appends_racing_across_processes_get_distinct_dense_seqs(
        self, backend: Backend
    ) -> None:
        count = 1500
        opened, handles = live_log(backend, capacity=4096, slot_size=128, replicas=3)
        with opened:
            if opened.elsewhere is None:
                pytest.skip(f"{backend.name}: every participant runs in one process")
            got = opened.elsewhere(append_many, [(0, count), (1, count)])
            opened.settle()
            assert sorted(got[0] + got[1]) == list(range(1, 2 * count + 1))
            for r in (0, 1):
                assert got[r] == sorted(got[r])  # one producer's entries stay in its order
                for i, seq in enumerate(got[r]):
                    assert handles[2].read(seq) == (1, 1, b"%d:%d" % (r, i))

    # --- progress ---------------------------------------------------------------------

    def test_completed_is_monotonic_and_covers_only_applied_entries(self, backend: Backend) -> None:
        @given(steps=STEPS)
        def example(steps: list[tuple[int, int]]) -> None:
            check_completed(backend, steps)

        example()

    def test_advance_moves_the_hold_but_not_completed(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            fill(a, 0)
            a.advance(0, 9)
            b.advance(1, 5)
            assert (a.cursor(0), a.cursor(1)) == (9, 5)
            assert a.slowest_cursor() == 5
            assert opened.host.completed == 1  # nothing was reported applied
            assert fill(a, 0, b"n") == [9, 10, 11, 12]

    # --- membership ---------------------------------------------------------------------

    def test_a_dead_replica_stops_holding_the_log(self, backend: Backend) -> None:
        opened, (a, b, _) = live_log(backend, capacity=8, replicas=3)
        with opened:
            fill(a, 0)
            apply_all(opened, a, 0)
            apply_all(opened, b, 1)
            assert a.try_append(0, b"x") == 0  # replica 2 applied nothing: it holds
            opened.host.mark_dead(2)
            assert opened.host.state(2) == DEAD
            assert a.slowest_cursor() == 9
            assert fill(a, 0, b"y") == list(range(9, 17))  # a whole log more, without it
            assert opened.host.replicas_in(frozenset({DEAD})) == [2]
            assert opened.host.replicas_in(frozenset({LIVE})) == [0, 1]

    def test_a_replica_that_left_stops_holding_the_log(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            fill(a, 0)
            apply_all(opened, a, 0)
            b.leave(1)
            assert b.state(1) == ABSENT
            assert fill(a, 0, b"y") == list(range(9, 17))

    def test_a_joiner_holds_the_log_from_the_tail(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            b.leave(1)
            for _ in range(3):
                assert a.try_append(0, b"before")
            apply_all(opened, a, 0)
            assert b.join(1) == 4 == b.cursor(1)
            assert b.state(1) == JOINING
            assert b.replicas_in(frozenset({JOINING})) == [1]
            held = []
            while seq := a.try_append(0, b"after"):
                held.append(seq)
                apply_all(opened, a, 0)
            assert held == list(range(4, 12))  # a whole log from its join cursor, no more
            b.set_live(1, 6)  # live, its cursor moved forward: two positions free up
            assert b.state(1) == LIVE
            assert b.cursor(1) == 6
            assert fill(a, 0, b"z") == [12, 13]

    def test_join_at_a_given_cursor(self, backend: Backend) -> None:
        # A replica whose cursor survived a restart rejoins where it stopped.
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            for _ in range(5):
                assert a.try_append(0, b"e")
            apply_all(opened, a, 0)
            b.applied(1, 3)
            opened.host.mark_dead(1)
            assert b.join(1, cursor=3) == 3
            assert b.cursor(1) == 3
            assert b.slowest_cursor() == 3
            b.set_live(1)
            opened.settle()
            assert [b.read(s) for s in (3, 4, 5)] == [(1, 1, b"e")] * 3

    @pytest.mark.parametrize("state", [ABSENT, JOINING, LIVE, DEAD])
    @pytest.mark.parametrize("operation", OPERATIONS)
    def test_the_lifecycle_table(self, backend: Backend, state: int, operation: str) -> None:
        with backend.open(capacity=8, slot_size=128, replicas=2) as opened:
            log = opened.handle()
            reach(log, 1, state)
            cursor = log.cursor(1)
            expected = LIFECYCLE_SPEC.get((state, operation))
            call = getattr(log, operation)
            if expected is None:
                with pytest.raises(LifecycleError, match=f"replica 1 is .*{operation}") as err:
                    call(1)
                assert isinstance(err.value, ValueError)
                assert (err.value.replica, err.value.operation) == (1, operation)
                assert err.value.state == ReplicaState.NAMES[state]
                assert log.state(1) == state  # refused before anything moved
                assert log.cursor(1) == cursor
            else:
                call(1)
                assert log.state(1) == expected
            assert log.state(0) == ABSENT  # the other line is untouched

    # --- waiting ----------------------------------------------------------------------------

    def test_take_sleepers_takes_each_sleep_once(self, backend: Backend) -> None:
        opened, (a, b, c) = live_log(backend, replicas=3)
        with opened:
            assert a.take_sleepers(3) == []
            c.set_asleep(2, True)
            b.set_asleep(1, True)
            assert sorted(a.take_sleepers(3)) == [1, 2]
            assert a.take_sleepers(3) == []  # taken: the flags are clear
            assert opened.handle().take_sleepers(3) == []
            c.set_asleep(2, True)  # it slept again
            assert b.take_sleepers(2) == []  # only the first two lines were asked about
            assert b.take_sleepers() == [2]
            c.set_asleep(2, True)
            c.set_asleep(2, False)  # woke by itself
            assert a.take_sleepers(3) == []

    @pytest.mark.parametrize(
        "order", list(interleavings(("flag", "check"), ("append", "take"))), ids="-".join
    )
    def test_no_wakeup_is_lost_in_any_interleaving(
        self, backend: Backend, order: tuple[str, ...]
    ) -> None:
        # The reader stores its flag then re-checks the log; the producer
        # publishes then takes the sleepers.  Whatever the order, one sees the other.
        opened, (producer, reader) = live_log(backend, replicas=2)
        with opened:
            saw_entry, took = False, False
            for step in order:
                if step == "flag":
                    reader.set_asleep(1, True)
                elif step == "check":
                    saw_entry = reader.published(reader.cursor(1))
                elif step == "append":  # publish: the entry is readable after this step
                    assert producer.try_append(0, b"wake") == 1
                    opened.settle()
                else:
                    took = 1 in producer.take_sleepers(2)
            assert saw_entry or took, order
            if order.index("check") < order.index("append"):
                assert took  # the reader missed the entry: the producer must wake it
            if order.index("take") < order.index("flag"):
                assert saw_entry  # the producer missed the flag: the reader must see it

    @pytest.mark.integration
    def test_no_wakeup_is_lost_across_processes(self, backend: Backend) -> None:
        rounds = 500
        opened, _ = live_log(backend, capacity=1024, slot_size=128, replicas=2)
        with opened:
            if opened.elsewhere is None:
                pytest.skip(f"{backend.name}: every participant runs in one process")
            opened.host.leave(1)  # the reader only sleeps: it does not hold the log
            got = opened.elsewhere(
                wake_rounds,
                [("producer", rounds, 0, 1, 2), ("reader", rounds, 0, 1, 2)],
            )
            produced, seen = got
            assert [seq for seq, _ in produced] == list(range(1, rounds + 1))
            rounds_seen = enumerate(zip(produced, seen, strict=True), 1)
            lost = [r for r, ((_, took), saw) in rounds_seen if not (took or saw)]
            assert lost == []

    # --- liveness words and statistics ---------------------------------------------------------

    def test_beat_and_stuck_leave_the_log_alone(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, replicas=2)
        with opened:
            a.try_append(0, b"x")
            before = (a.tail, a.cursor(0), a.cursor(1), a.state(0), a.state(1))
            a.beat(0)
            b.set_stuck(1, 1)
            b.set_stuck(1, 0)
            assert (a.tail, a.cursor(0), a.cursor(1), a.state(0), a.state(1)) == before
            assert a.poisoned == 0

    def test_statistics_agree_with_the_calls(self, backend: Backend) -> None:
        opened, (a, b, _) = live_log(backend, capacity=8, slot_size=128, replicas=3)
        with opened:
            host = opened.host
            for _ in range(5):
                a.try_append(0, b"s")
            apply_all(opened, a, 0)
            b.applied(1, 3)
            host.mark_dead(2)
            stats = host.statistics()
            assert stats.capacity == 8
            assert stats.slot_size == 128
            assert stats.tail == host.tail == 6
            assert stats.slowest_cursor == host.slowest_cursor() == 3
            assert stats.slowest_replica == 1
            assert stats.free_slots == 8 - (6 - 3)
            assert stats.live == (0, 1)
            assert stats.joining == ()
            assert stats.dead == (2,)
            a.leave(0)
            b.leave(1)
            stats = host.statistics()
            assert stats.slowest_replica is None
            assert stats.slowest_cursor == stats.tail
            assert stats.free_slots == 8
            assert (stats.live, stats.dead) == ((), (2,))

    # --- the supervisor's calls (SupervisedLog) -------------------------------------------------

    def test_the_host_is_a_supervised_log_with_a_line_per_replica(self, backend: Backend) -> None:
        opened, _ = live_log(backend, replicas=2)
        with opened:
            assert isinstance(opened.host, SupervisedLog)
            assert opened.host.max_replicas >= 2

    def test_a_heartbeat_moves_only_with_its_own_replicas_beat(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, replicas=2)
        with opened:
            host = opened.host
            before = (host.heartbeat(0), host.heartbeat(1))
            a.beat(0)
            a.beat(0)
            assert host.heartbeat(0) != before[0]
            assert host.heartbeat(1) == before[1]
            b.beat(1)
            assert host.heartbeat(1) != before[1]

    def test_a_gave_up_seq_and_a_poison_verdict_reach_every_handle(self, backend: Backend) -> None:
        opened, (a, b) = live_log(backend, replicas=2)
        with opened:
            host = opened.host
            seq = a.try_append(0, b"hang")
            opened.settle()
            a.set_stuck(0, seq)
            b.set_stuck(1, seq)
            assert (host.stuck(0), host.stuck(1)) == (seq, seq)
            host.declare_poisoned(seq)
            assert a.poisoned == b.poisoned == host.poisoned == seq
            a.set_stuck(0, 0)
            assert host.stuck(0) == 0

    def test_a_dead_line_that_published_everything_needs_no_repair(self, backend: Backend) -> None:
        opened, (a, _) = live_log(backend, replicas=2)
        with opened:
            host = opened.host
            seqs = [a.try_append(0, b"done") for _ in range(3)]
            opened.settle()
            host.mark_dead(0)
            assert not host.recovery_pending(0)
            assert host.fill_abandoned(0) == 0
            assert all(host.announcer(seq) is None for seq in seqs)
            assert host.tail == seqs[-1] + 1  # nothing was added
            assert host.join(0) == host.tail  # and the line may rejoin at once
