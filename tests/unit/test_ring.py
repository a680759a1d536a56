"""C Ring fast path vs the pure-Python Log: same results, same bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes import EntryTooLargeError
from dominoes._core._log import LAYOUT_VERSION
from dominoes._runtime._atomics import AtomicWords, Ring
from dominoes.lowlevel import KIND_ENTRY, KIND_NOOP, Log, PlainWords

CAP, SLOT, REPL = 8, 128, 3


def pair(
    cap: int = CAP, slot: int = SLOT, repl: int = REPL, max_entry: int | None = None
) -> list[tuple[bytearray, Log]]:
    logs: list[tuple[bytearray, Log]] = []
    for kind in ("plain", "atomic"):
        buf = bytearray(Log.size_for(cap, slot, repl))
        words: PlainWords | AtomicWords = PlainWords(buf) if kind == "plain" else AtomicWords(buf)
        log = Log.create(
            buf, words, capacity=cap, slot_size=slot, max_replicas=repl, max_entry_slots=max_entry
        )
        logs.append((buf, log))
    assert logs[0][1]._ring is None
    assert logs[1][1]._ring is not None
    return logs


payloads = st.binary(min_size=0, max_size=3 * (SLOT - 80) + 5)
ops = st.one_of(
    st.tuples(
        st.just("append"),
        st.integers(0, REPL - 1),
        payloads,
        st.sampled_from([KIND_ENTRY, KIND_NOOP, 7]),
    ),
    st.tuples(st.just("read"), st.integers(0, 40)),
    st.tuples(st.just("published"), st.integers(0, 40)),
    st.tuples(st.just("claim"), st.integers(0, 40), st.integers(0, REPL - 1)),
    st.tuples(st.just("advance_to_tail"), st.integers(0, REPL - 1)),
    st.tuples(st.just("advance_some"), st.integers(0, REPL - 1), st.integers(0, 3)),
    st.tuples(st.just("asleep"), st.integers(0, REPL - 1), st.booleans()),
    st.tuples(st.just("wake"), st.one_of(st.none(), st.integers(0, REPL + 3))),
    st.tuples(st.just("join"), st.integers(0, REPL - 1)),
    st.tuples(st.just("join_only"), st.integers(0, REPL - 1)),
    st.tuples(st.just("set_live"), st.integers(0, REPL - 1)),
    st.tuples(st.just("leave"), st.integers(0, REPL - 1)),
    st.tuples(st.just("dead"), st.integers(0, REPL - 1)),
    st.tuples(st.just("reserve_die"), st.integers(0, REPL - 1), st.integers(1, 2)),
    st.tuples(st.just("fill"), st.integers(0, REPL - 1)),
)


def apply(log: Log, op: tuple[Any, ...]) -> object:
    name = op[0]
    try:
        if name == "append":
            return log.try_append(op[1], op[2], op[3])
        if name == "read":
            return log.read(op[1])
        if name == "published":
            return log.published(op[1])
        if name == "claim":
            return log.claim(op[1], op[2])
        if name == "advance_to_tail":
            log.advance(op[1], log.tail)
            return None
        if name == "advance_some":
            c = log.cursor(op[1])
            # only past published seqs, as a replica would
            while op[2] and log.published(c):
                got = log.read(c)
                assert got is not None
                c += got[1]
                op = (*op[:2], op[2] - 1)
            log.advance(op[1], c)
            return c
        if name == "asleep":
            log.set_asleep(op[1], op[2])
            return None
        if name == "wake":
            return log.wake_list(op[1])
        if name == "join":  # an illegal one raises LifecycleError on both sides
            c = log.join(op[1])
            log.set_live(op[1])
            return c
        if name == "join_only":
            return log.join(op[1])
        if name == "set_live":
            log.set_live(op[1])
            return None
        if name == "leave":
            log.leave(op[1])
            return None
        if name == "dead":
            log.mark_dead(op[1])
            return None
        if name == "reserve_die":
            seq = log.try_reserve(op[1], op[2])
            return seq
        if name == "fill":
            return log.fill_abandoned(op[1])
    except Exception as exc:  # noqa: BLE001
        return ("raised", type(exc).__name__)
    raise AssertionError(name)


@settings(deadline=None)  # examples: the profile (200 in CI, 2000 thorough)
@given(st.lists(ops, max_size=60))
def test_same_results_and_bytes(seq_ops: list[tuple[Any, ...]]) -> None:
    (pbuf, plog), (abuf, alog) = pair()
    for i in range(REPL):
        for log in (plog, alog):
            log.join(i)
            log.set_live(i)
    for op in seq_ops:
        rp = apply(plog, op)
        ra = apply(alog, op)
        assert rp == ra, (op, rp, ra)
        assert pbuf == abuf, op


def test_too_large_and_bad_args() -> None:
    (pbuf, plog), (abuf, alog) = pair(max_entry=2)
    for log in (plog, alog):
        log.join(0)
        log.set_live(0)
        with pytest.raises(EntryTooLargeError):
            log.try_append(0, b"x" * (2 * (SLOT - 80) + 1))
        assert log.try_append(0, b"x" * (2 * (SLOT - 80))) == 1
        with pytest.raises(IndexError):
            log.try_append(REPL, b"x")
    assert pbuf == abuf
    with pytest.raises(IndexError):
        alog.try_append(-1, b"x")
    assert alog._ring is not None
    with pytest.raises(ValueError, match="16 bits"):
        alog._ring.append(0, 10**6, b"x", 1 << 16)
    # Log.try_append is typed for bytes; the C ring takes any buffer
    assert alog.try_append(0, memoryview(b"abc")) == 3  # type: ignore[arg-type]
    assert alog.try_append(0, bytearray(b"abc")) == 4  # type: ignore[arg-type]
    assert alog.read(4) == (KIND_ENTRY, 1, b"abc")


def test_release_and_geometry() -> None:
    buf = bytearray(Log.size_for(CAP, SLOT, REPL))
    words = AtomicWords(buf)
    log = Log.create(buf, words, capacity=CAP, slot_size=SLOT, max_replicas=REPL)
    ring = log._ring
    assert isinstance(ring, Ring)
    log.join(0)
    log.set_live(0)
    assert log.try_append(0, b"hi") == 1
    with pytest.raises(ValueError, match="layout"):
        words.ring(LAYOUT_VERSION + 1, log.slots_offset, CAP, SLOT, 4, 64, 192, REPL)
    with pytest.raises(ValueError, match="geometry"):
        words.ring(LAYOUT_VERSION, log.slots_offset, CAP * 2, SLOT, 4, 64, 128, REPL)
    with pytest.raises(ValueError, match="geometry"):
        words.ring(LAYOUT_VERSION, log.slots_offset, 6, SLOT, 4, 64, 128, REPL)
    with pytest.raises(ValueError, match="geometry"):
        words.ring(LAYOUT_VERSION, log.slots_offset, CAP, 100, 4, 64, 128, REPL)
    with pytest.raises(TypeError):
        type(ring)()
    log.release()
    assert log._ring is None
    words.release()
    assert ring.released
    for call in (
        lambda: ring.read(1),
        lambda: ring.claim(1, 0),
        lambda: ring.published(1),
        lambda: ring.sleepers(1),
        lambda: ring.append(0, 100, b"x", 1),
    ):
        with pytest.raises(ValueError, match="released"):
            call()
    # buffer is resizable again once released
    buf.extend(b"x")


def test_corrupt_slot_is_an_error_not_an_overread() -> None:
    _, (abuf, alog) = pair()
    alog.join(0)
    alog.set_live(0)
    assert alog.try_append(0, b"abc") == 1
    head = alog.slots_offset + 1 * SLOT
    abuf[head + 72 : head + 76] = (10**6).to_bytes(4, "little")
    with pytest.raises(ValueError, match="corrupt"):
        alog.read(1)
