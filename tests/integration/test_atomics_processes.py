"""``AtomicWords`` across real processes over one shared-memory segment.

These are the three checks that justify the extension (see
``docs/design/log.md``, on the atomic operations): exact ``fetch_add`` totals under
contention, exactly one ``cas`` winner per slot, and the store->load (Dekker)
litmus test that plain memoryview stores fail.

Children are started with ``spawn``, attach to the segment by name and release
their words before closing it; only the parent unlinks.  Every wait is bounded:
a child that hangs is terminated and the test fails.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import pytest

from dominoes._core._words import Words
from dominoes._runtime._atomics import AtomicWords

pytestmark = pytest.mark.integration

#: Hard limit for one test's children, start to finish.  Normal runs take ~1-3 s.
TIMEOUT = 60.0

# Control block, every word on its own 64-byte line so the protocol words do
# not share a line with the words under test.
LINE = 64
READY = 0 * LINE  # children that have attached and are waiting for GO
GO = 1 * LINE  # set by the parent once all are ready: they start together
ARRIVE = 2 * LINE  # the Dekker round barrier, a monotonic counter
FLAG = 3 * LINE  # Dekker flags: FLAG + i * LINE for i in 0, 1
RESULT = 8 * LINE  # per-child result word: RESULT + i * LINE, up to 8 children
DATA = 4096  # the words (or bytes) under test start here

FETCH_ADD_N = 1_000_000
CAS_SLOTS = 100_000
CAS_PROCS = 3
DEKKER_ROUNDS = 200_000


# --- plumbing ----------------------------------------------------------------------


@pytest.fixture
def segment() -> Iterator[Callable[[int], SharedMemory]]:
    """Create zeroed segments on demand; close and unlink them however the test ends."""
    made: list[SharedMemory] = []

    def make(data_bytes: int) -> SharedMemory:
        shm = SharedMemory(create=True, size=DATA + data_bytes)
        made.append(shm)
        return shm

    yield make
    for shm in made:
        try:
            shm.close()
        finally:
            shm.unlink()
        assert not os.path.exists(f"/dev/shm/{shm.name}")


def mapped(shm: SharedMemory) -> memoryview:
    """The segment's mapping (typed ``memoryview | None``: None once closed)."""
    assert shm.buf is not None
    return shm.buf


def _start_together(w: Words) -> None:
    """Child side of the start line: report ready, then wait (politely) for GO."""
    w.fetch_add(READY, 1)
    deadline = time.monotonic() + TIMEOUT
    while w.load_acquire(GO) != 1:
        if time.monotonic() > deadline:
            raise TimeoutError("parent never said GO")
        time.sleep(0.0005)  # others may still be starting: leave them the cores


def _run(shm: SharedMemory, target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
    """Run ``target(*a)`` in one spawned child per ``a``; fail on error or timeout.

    Stops at the first child that fails, since its partners may be spinning on
    it; whatever is still running at the end is terminated.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=a, daemon=True) for a in args]
    deadline = time.monotonic() + TIMEOUT

    def failed() -> bool:
        return any(p.exitcode not in (None, 0) for p in procs)

    with AtomicWords(mapped(shm)) as w:
        try:
            for p in procs:
                p.start()
            while w.load_acquire(READY) != len(procs):
                if failed() or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            else:
                w.store_release(GO, 1)
            alive = procs
            while alive and not failed() and (left := deadline - time.monotonic()) > 0:
                wait([p.sentinel for p in alive], timeout=left)
                alive = [p for p in alive if p.exitcode is None]
            codes = [p.exitcode for p in procs]  # None: still running
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
                    p.join(5)
                    if p.exitcode is None:
                        p.kill()
                        p.join()
    if any(c not in (None, 0) for c in codes):
        pytest.fail(f"child exit codes {codes} (None: terminated); tracebacks are in stderr")
    if None in codes:
        pytest.fail(f"child exit codes {codes}: still running after {TIMEOUT}s, terminated")


def _attach(name: str) -> tuple[SharedMemory, AtomicWords]:
    shm = SharedMemory(name=name)
    return shm, AtomicWords(mapped(shm))


def _detach(shm: SharedMemory, w: AtomicWords) -> None:
    w.release()  # before close(): the words hold an export of the mapping
    shm.close()


# --- 1. fetch_add totals ---------------------------------------------------------------


def _fetch_add_child(name: str, n: int) -> None:
    shm, w = _attach(name)
    try:
        _start_together(w)
        add = w.fetch_add
        for _ in range(n):
            add(DATA, 1)
    finally:
        _detach(shm, w)


@pytest.mark.parametrize("nprocs", [2, 4])
def test_fetch_add_total_is_exact(segment: Callable[[int], SharedMemory], nprocs: int) -> None:
    shm = segment(8)
    _run(shm, _fetch_add_child, [(shm.name, FETCH_ADD_N)] * nprocs)
    with AtomicWords(mapped(shm)) as w:
        assert w.load_acquire(DATA) == nprocs * FETCH_ADD_N


# --- 2. one CAS winner per slot --------------------------------------------------------


def _cas_child(name: str, me: int, nslots: int) -> None:
    shm, w = _attach(name)
    try:
        _start_together(w)
        cas, load, tag = w.cas, w.load_acquire, me + 1
        wins = 0
        for off in range(DATA, DATA + 8 * nslots, 8):
            if cas(off, 0, tag):
                wins += 1
            elif load(off) == 0:
                # a strong CAS fails only if the word was not 0
                raise AssertionError(f"cas failed on an unclaimed slot at {off}")
        w.store_release(RESULT + me * LINE, wins)
    finally:
        _detach(shm, w)


def test_cas_claims_have_exactly_one_winner(segment: Callable[[int], SharedMemory]) -> None:
    shm = segment(8 * CAS_SLOTS)
    _run(shm, _cas_child, [(shm.name, i, CAS_SLOTS) for i in range(CAS_PROCS)])
    with AtomicWords(mapped(shm)) as w:
        wins = [w.load_acquire(RESULT + i * LINE) for i in range(CAS_PROCS)]
        owners = [w.load_acquire(off) for off in range(DATA, DATA + 8 * CAS_SLOTS, 8)]
    # every slot has a winner, and each winner's tally matches the slots that
    # name it: a slot won twice would make the tallies exceed the slot count
    assert sum(wins) == CAS_SLOTS
    assert set(owners) <= set(range(1, CAS_PROCS + 1))
    assert [owners.count(i + 1) for i in range(CAS_PROCS)] == wins


# --- 3. store->load ordering (Dekker) --------------------------------------------------


def _dekker_child(name: str, me: int, rounds: int, plain: bool = False) -> None:
    """Per round: store own flag, load the other's; record whether we saw its store.

    ``plain=True`` stores and loads the flags through a plain ``memoryview``
    (the barrier stays atomic): a control showing that the harness observes
    reordering when there is some.  The tests do not use it.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        # Both sides must really run at once for the litmus test to mean anything.
        os.sched_setaffinity(0, {cpus[me]})
    shm, w = _attach(name)
    q = mapped(shm).cast("Q")
    seen = mapped(shm)[DATA + me * rounds : DATA + (me + 1) * rounds]
    try:
        _start_together(w)
        mine, theirs = FLAG + me * LINE, FLAG + (1 - me) * LINE
        qmine, qtheirs = mine // 8, theirs // 8
        arrive, load, store = w.fetch_add, w.load_acquire, w.store_seqcst
        deadline = time.monotonic() + TIMEOUT
        for r in range(1, rounds + 1):
            # Round barrier: both have finished round r - 1.  Spin inline, so
            # the two sides leave it as close together as possible.
            arrive(ARRIVE, 1)
            target, spins = 2 * r, 0
            while load(ARRIVE) < target:
                spins += 1
                if spins & 0xFFFF == 0 and time.monotonic() > deadline:
                    raise TimeoutError(f"round {r}: the other side never arrived")
            # the other flag holds r - 1 (old) or r (its store for this round)
            if plain:
                q[qmine] = r
                seen[r - 1] = q[qtheirs] == r
            else:
                store(mine, r)
                seen[r - 1] = load(theirs) == r
    finally:
        seen.release()
        q.release()
        _detach(shm, w)


def test_store_load_is_never_reordered(segment: Callable[[int], SharedMemory]) -> None:
    shm = segment(2 * DEKKER_ROUNDS)
    _run(shm, _dekker_child, [(shm.name, 0, DEKKER_ROUNDS), (shm.name, 1, DEKKER_ROUNDS)])
    a = bytes(mapped(shm)[DATA : DATA + DEKKER_ROUNDS])
    b = bytes(mapped(shm)[DATA + DEKKER_ROUNDS : DATA + 2 * DEKKER_ROUNDS])
    assert set(a) <= {0, 1}
    assert set(b) <= {0, 1}
    both_missed = sum(1 for x, y in zip(a, b, strict=True) if not x and not y)
    # With sequentially consistent stores at least one side sees the other's
    # store in every round; plain stores fail this in ~0.1-0.3% of rounds.
    assert both_missed == 0, f"store->load reordered in {both_missed}/{DEKKER_ROUNDS} rounds"
