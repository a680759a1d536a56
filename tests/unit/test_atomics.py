"""Single-process semantics of the ``_atomics`` C extension.

Cross-process behaviour (atomicity, ordering) is in
``tests/integration/test_atomics_processes.py``; here every operation's result,
every error and the buffer lifetime are pinned down on a ``bytearray`` and on a
real ``SharedMemory`` segment.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes._core._log import KIND_ENTRY, Log
from dominoes._core._words import PlainWords, Words
from dominoes._runtime._atomics import WORD, AtomicWords

MAX = 2**64 - 1
# Native byte order: the words are machine words, whatever struct says.
U64 = struct.Struct("=Q")
SIZE = 4096


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    seg = SharedMemory(create=True, size=SIZE)
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()
    assert not os.path.exists(f"/dev/shm/{seg.name}")


@pytest.fixture(params=["bytearray", "shm"])
def backing(request: pytest.FixtureRequest) -> Iterator[bytearray | memoryview]:
    """A zeroed writable buffer of SIZE bytes, of each kind the runtime uses."""
    if request.param == "bytearray":
        yield bytearray(SIZE)
    else:
        yield request.getfixturevalue("shm").buf


@pytest.fixture
def words(backing: bytearray | memoryview) -> Iterator[AtomicWords]:
    w = AtomicWords(backing)
    yield w
    w.release()  # before the shm fixture closes the segment


def test_word_constant() -> None:
    assert WORD == 8


def test_nbytes_and_repr(words: AtomicWords) -> None:
    assert words.nbytes == SIZE
    assert not words.released
    assert f"nbytes={SIZE}" in repr(words)


def test_load_and_stores(words: AtomicWords, backing: bytearray | memoryview) -> None:
    assert words.load_acquire(0) == 0
    for off, value in [(0, 1), (8, MAX), (SIZE - 8, 0x0123_4567_89AB_CDEF)]:
        words.store_release(off, value)
        assert words.load_acquire(off) == value
        # the word is the plain machine word at that offset, visible to other views
        assert U64.unpack_from(backing, off)[0] == value
    words.store_seqcst(16, 42)
    assert words.load_acquire(16) == 42
    U64.pack_into(backing, 24, 7)  # and writes through other views are seen
    assert words.load_acquire(24) == 7
    # neighbouring words are untouched
    assert words.load_acquire(32) == 0
    assert bytes(backing[SIZE - 16 : SIZE - 8]) == bytes(8)


def test_cas(words: AtomicWords) -> None:
    assert words.cas(8, 0, 5) is True
    assert words.load_acquire(8) == 5
    assert words.cas(8, 0, 6) is False  # expected is stale: no change
    assert words.load_acquire(8) == 5
    assert words.cas(8, 5, MAX) is True
    assert words.cas(8, MAX, 0) is True
    assert words.load_acquire(8) == 0


def test_fetch_add(words: AtomicWords) -> None:
    assert words.fetch_add(0, 1) == 0
    assert words.fetch_add(0, 10) == 1
    assert words.load_acquire(0) == 11
    assert words.fetch_add(0, -1) == 11  # negative deltas decrement, as in PlainWords
    assert words.load_acquire(0) == 10
    words.store_release(0, MAX)
    assert words.fetch_add(0, 2) == MAX  # wraps modulo 2**64
    assert words.load_acquire(0) == 1
    assert words.fetch_add(0, MAX) == 1  # adding 2**64 - 1 is subtracting 1
    assert words.load_acquire(0) == 0
    assert words.fetch_add(0, -(2**63)) == 0
    assert words.load_acquire(0) == 2**63


def test_fence(words: AtomicWords) -> None:
    # the stub says None; this checks the C function agrees
    assert words.fence() is None  # type: ignore[func-returns-value]


@pytest.mark.parametrize("off", [1, 4, 7, 12, SIZE - 4])
def test_misaligned_offset(words: AtomicWords, off: int) -> None:
    with pytest.raises(ValueError, match="not a multiple of 8"):
        words.load_acquire(off)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        words.store_release(off, 1)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        words.cas(off, 0, 1)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        words.fetch_add(off, 1)


@pytest.mark.parametrize("off", [SIZE, SIZE + 8, -8, -(2**40), 2**62, 2**70, -(2**70)])
def test_offset_out_of_range(words: AtomicWords, off: int) -> None:
    for op in (
        lambda: words.load_acquire(off),
        lambda: words.store_release(off, 1),
        lambda: words.store_seqcst(off, 1),
        lambda: words.cas(off, 0, 1),
        lambda: words.fetch_add(off, 1),
    ):
        with pytest.raises(ValueError, match="out of range"):
            op()


def test_buffer_shorter_than_a_word() -> None:
    with AtomicWords(bytearray(4)) as w, pytest.raises(ValueError, match="out of range"):
        w.load_acquire(0)
    with AtomicWords(bytearray()) as w:
        assert w.nbytes == 0
        with pytest.raises(ValueError, match="out of range"):
            w.load_acquire(0)


@pytest.mark.parametrize("value", [-1, 2**64, 2**100])
def test_value_out_of_range(words: AtomicWords, value: int) -> None:
    with pytest.raises(OverflowError):
        words.store_release(0, value)
    with pytest.raises(OverflowError):
        words.store_seqcst(0, value)
    with pytest.raises(OverflowError):
        words.cas(0, value, 1)
    with pytest.raises(OverflowError):
        words.cas(0, 0, value)
    assert words.load_acquire(0) == 0  # nothing was written


def test_delta_out_of_range(words: AtomicWords) -> None:
    for delta in (2**64, -(2**63) - 1):
        with pytest.raises(OverflowError):
            words.fetch_add(0, delta)
    assert words.load_acquire(0) == 0


def test_argument_types_and_counts(words: AtomicWords) -> None:
    with pytest.raises(TypeError):
        words.load_acquire(8.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        words.store_release(8, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes exactly 3 arguments \(2 given\)"):
        words.cas(8, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"takes exactly 1 argument \(0 given\)"):
        words.load_acquire()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="keyword"):
        words.fetch_add(offset=0, delta=1)  # type: ignore[call-arg]
    assert words.load_acquire(False) == 0  # bool is an int: offset 0


def test_release_makes_every_operation_fail(backing: bytearray | memoryview) -> None:
    w = AtomicWords(backing)
    w.store_release(0, 3)
    w.release()
    assert w.released
    assert "released" in repr(w)
    w.release()  # idempotent
    for op in (
        lambda: w.load_acquire(0),
        lambda: w.store_release(0, 1),
        lambda: w.store_seqcst(0, 1),
        lambda: w.cas(0, 3, 4),
        lambda: w.fetch_add(0, 1),
        lambda: w.nbytes,
        w.__enter__,
    ):
        with pytest.raises(ValueError, match=r"^buffer released$"):
            op()
    w.fence()  # touches no memory, so it still works
    assert U64.unpack_from(backing, 0)[0] == 3


def test_context_manager_releases(backing: bytearray | memoryview) -> None:
    with AtomicWords(backing) as w:
        w.store_release(8, 9)
    assert w.released
    with pytest.raises(ValueError, match="buffer released"):
        w.load_acquire(8)
    # an exception in the block also releases, and is not swallowed
    with pytest.raises(KeyError), AtomicWords(backing) as w2:
        raise KeyError
    assert w2.released


def test_holds_the_buffer_until_released() -> None:
    buf = bytearray(64)
    w = AtomicWords(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # a resize would move the memory under the words
    w.release()
    buf.extend(b"x")


def test_shared_memory_close_after_release(shm: SharedMemory) -> None:
    assert shm.buf is not None
    w = AtomicWords(shm.buf)
    w.store_release(0, 1)
    with pytest.raises(BufferError):
        shm.close()  # refuses while the words hold the mapping
    w.release()
    shm.close()  # the fixture closes again (a no-op) and unlinks


def test_gc_releases_the_buffer(shm: SharedMemory) -> None:
    assert shm.buf is not None
    w = AtomicWords(shm.buf)
    del w  # dealloc releases, so close works without an explicit release
    shm.close()


def test_rejects_unusable_buffers() -> None:
    with pytest.raises(BufferError, match="writable, contiguous"):
        AtomicWords(bytes(64))  # read-only
    with pytest.raises(BufferError, match="writable, contiguous"):
        AtomicWords(memoryview(bytearray(64)).toreadonly())
    with pytest.raises(BufferError, match="writable, contiguous"):
        AtomicWords(memoryview(bytearray(128))[::2])  # strided
    with pytest.raises(TypeError, match="needs a buffer"):
        AtomicWords(64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8-byte aligned"):
        AtomicWords(memoryview(bytearray(64))[4:])


def test_aligned_subview_offsets_are_relative() -> None:
    buf = bytearray(64)
    with AtomicWords(memoryview(buf)[16:48]) as w:
        assert w.nbytes == 32
        w.store_release(0, 5)
        with pytest.raises(ValueError, match="out of range"):
            w.load_acquire(32)
    assert U64.unpack_from(buf, 16)[0] == 5


def test_not_picklable_or_subclassable(words: AtomicWords) -> None:
    # A pickled copy in another process would point at nothing: share the
    # segment name and attach instead.
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(words)
    with pytest.raises(TypeError):
        type("Sub", (AtomicWords,), {})


# --- agreement with PlainWords ----------------------------------------------------

_OFFS = st.sampled_from([0, 8, 16, 56])
_VALS = st.one_of(st.sampled_from([0, 1, MAX, 2**63]), st.integers(0, MAX))
_OPS = st.one_of(
    st.tuples(st.just("load_acquire"), _OFFS),
    st.tuples(st.just("store_release"), _OFFS, _VALS),
    st.tuples(st.just("store_seqcst"), _OFFS, _VALS),
    st.tuples(st.just("cas"), _OFFS, _VALS, _VALS),
    st.tuples(st.just("cas"), _OFFS, st.just(0), _VALS),
    st.tuples(st.just("fetch_add"), _OFFS, st.integers(-(2**63), MAX)),
    st.tuples(st.just("fence")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_OPS, max_size=40))
def test_agrees_with_plain_words(ops: list[tuple[object, ...]]) -> None:
    """Single-threaded, AtomicWords must behave exactly like PlainWords."""
    a_buf, p_buf = bytearray(64), bytearray(64)
    plain: Words = PlainWords(p_buf)
    with AtomicWords(a_buf) as atomic:
        for name, *args in ops:
            assert isinstance(name, str)
            assert getattr(atomic, name)(*args) == getattr(plain, name)(*args), (name, args)
    # same bytes (PlainWords is little-endian; so is every machine this runs on)
    assert a_buf == p_buf


# --- the Words protocol, as the log uses it -------------------------------------


def test_satisfies_the_words_protocol(words: AtomicWords) -> None:
    members = [n for n in vars(Words) if not n.startswith("_")]
    assert set(members) == {
        "load_acquire",
        "store_release",
        "store_seqcst",
        "cas",
        "fetch_add",
        "fence",
    }
    for name in members:
        assert callable(getattr(words, name))


def _log_round_trip(buf: bytearray | memoryview) -> None:
    words = AtomicWords(buf)
    log = other = None
    try:
        log = Log.create(buf, words, capacity=64, slot_size=256, max_replicas=4)
        log.join(0)
        log.set_live(0)
        small = b"payload"
        large = bytes(range(256)) * 2  # spans several slots
        seq1 = log.try_append(0, small)
        seq2 = log.try_append(0, large)
        assert (seq1, seq2) == (1, 2)
        assert log.read(seq1) == (KIND_ENTRY, 1, small)
        entry = log.read(seq2)
        assert entry is not None
        kind, nslots, payload = entry
        assert kind == KIND_ENTRY
        assert nslots > 1
        assert payload == large
        assert log.read(log.tail) is None  # nothing published there yet
        assert log.claim(seq1, 0)
        assert not log.claim(seq1, 1)
        assert log.claimant(seq1) == 0
        # a second handle over the same words sees the same log
        other = Log(buf, words)
        assert other.read(seq2) == entry
    finally:
        # every export of the buffer must go before SharedMemory.close()
        for handle in (log, other):
            if handle is not None:
                handle.release()
        words.release()


def test_log_round_trip_on_bytearray() -> None:
    _log_round_trip(bytearray(Log.size_for(64, 256, 4)))


def test_log_round_trip_on_shared_memory() -> None:
    seg = SharedMemory(create=True, size=Log.size_for(64, 256, 4))
    try:
        assert seg.buf is not None
        _log_round_trip(seg.buf)
    finally:
        seg.close()  # fails if anything above kept an export of the mapping
        seg.unlink()
    assert not os.path.exists(f"/dev/shm/{seg.name}")
