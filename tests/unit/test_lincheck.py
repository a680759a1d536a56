"""The linearizability checker (tests/lincheck.py) on hand-made and generated histories.

Times here are plain integers (milliseconds, ``time_unit=1e-3``); an entry is
``(client, op, key, arg, result, invoke, response)`` and ``INF`` is "no
response".
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.lincheck import Op, check, check_key

INF = math.inf


def verdict(history: list[tuple[Any, ...]], **kwargs: Any) -> str:
    return check(history, time_unit=1e-3, **kwargs).status


# --- hand-made histories ------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.ok
    assert result.ops == 0


def test_sequential_history() -> None:
    history = [
        (0, "GET", "k", None, None, 0, 1),
        (0, "SET", "k", "5", True, 2, 3),
        (1, "GET", "k", None, b"5", 4, 5),
        (1, "INCR", "k", None, 6, 6, 7),
        (0, "INCR", "k", None, 7, 8, 9),
        (1, "GET", "k", None, "7", 10, 11),
        (0, "SET", "k", b"x", "OK", 12, 13),
        (0, "GET", "k", None, b"x", 14, 15),
    ]
    result = check(history, time_unit=1e-3)
    assert result.ok, result
    assert result.ops == 8
    assert result.keys == {"k": "ok"}


def test_concurrent_overlapping_history() -> None:
    # Two SETs overlap each other and two GETs: the reads fix the order (2 then 1).
    history = [
        (0, "SET", "k", "1", True, 0, 10),
        (1, "SET", "k", "2", True, 1, 9),
        (2, "GET", "k", None, "2", 2, 4),
        (3, "GET", "k", None, "1", 5, 12),
        (2, "GET", "k", None, "1", 11, 13),
        # INCRs racing with a GET that saw the first of them only
        (0, "INCR", "k", None, 2, 14, 20),
        (1, "INCR", "k", None, 3, 14, 18),
        (2, "GET", "k", None, "2", 15, 16),
        (3, "GET", "k", None, "3", 21, 22),
    ]
    assert verdict(history) == "ok"


def test_read_overlapping_a_write_may_see_either_value() -> None:
    for seen in (None, "1"):
        history = [(0, "SET", "k", "1", True, 0, 10), (1, "GET", "k", None, seen, 5, 6)]
        assert verdict(history) == "ok"


def test_stale_read_is_a_violation() -> None:
    # The GET is invoked after the second SET returned, yet sees the first value.
    history = [
        (0, "SET", "k", "old", True, 0, 1),
        (0, "SET", "k", "new", True, 2, 3),
        (1, "GET", "k", None, b"old", 4, 5),
    ]
    result = check(history, time_unit=1e-3)
    assert result.status == "violation"
    assert not result.ok
    assert result.key == "k"
    assert "NOT linearizable" in result.message
    assert "GET 'k' -> b'old'" in result.message
    assert "state after it: 'new'" in result.message


def test_reads_going_back_in_time_are_a_violation() -> None:
    # Each read overlaps the write, but the second sees the old value after
    # the first saw the new one.
    history = [
        (0, "SET", "k", "1", True, 0, 1),
        (0, "SET", "k", "2", True, 2, 20),
        (1, "GET", "k", None, "2", 3, 4),
        (2, "GET", "k", None, "1", 5, 6),
    ]
    assert verdict(history) == "violation"


def test_lost_incr_is_a_violation() -> None:
    # Two overlapping INCRs both return 1: one increment was lost.
    history = [
        (0, "INCR", "n", None, 1, 0, 10),
        (1, "INCR", "n", None, 1, 2, 12),
    ]
    result = check(history, time_unit=1e-3)
    assert result.status == "violation"
    assert "INCR 'n' -> 1" in result.message


def test_lost_incr_seen_by_a_read_is_a_violation() -> None:
    history = [
        (0, "INCR", "n", None, 1, 0, 10),
        (1, "INCR", "n", None, 2, 2, 12),
        (2, "GET", "n", None, "1", 13, 14),
    ]
    assert verdict(history) == "violation"


def test_incr_on_a_value_that_is_not_an_integer() -> None:
    error = ValueError("ERR value is not an integer or out of range")
    history = [
        (0, "SET", "k", "abc", True, 0, 1),
        (0, "INCR", "k", None, error, 2, 3),
        (0, "GET", "k", None, "abc", 4, 5),
    ]
    assert verdict(history) == "ok"
    # ... but an INCR on an integer must not fail, nor one on "abc" succeed.
    assert verdict([(0, "SET", "k", "7", True, 0, 1), (0, "INCR", "k", None, error, 2, 3)]) == (
        "violation"
    )
    assert verdict([(0, "SET", "k", "007", True, 0, 1), (0, "INCR", "k", None, 8, 2, 3)]) == (
        "violation"
    )


def test_pending_write_may_or_may_not_take_effect() -> None:
    pending_set = (0, "SET", "k", "1", None, 0, INF)
    assert verdict([pending_set, (1, "GET", "k", None, "1", 100, 101)]) == "ok"
    assert verdict([pending_set, (1, "GET", "k", None, None, 100, 101)]) == "ok"
    # Seen, then not seen: once it took effect it stays.
    history = [
        pending_set,
        (1, "GET", "k", None, "1", 100, 101),
        (1, "GET", "k", None, None, 102, 103),
    ]
    assert verdict(history) == "violation"
    # It cannot take effect before it was invoked.
    assert verdict([(0, "SET", "k", "1", None, 10, None), (1, "GET", "k", None, "1", 0, 5)]) == (
        "violation"
    )


def test_pending_incr_may_or_may_not_take_effect() -> None:
    for seen in (1, 2):
        history = [
            (0, "INCR", "n", None, None, 0, INF),
            (1, "INCR", "n", None, seen, 50, 51),
        ]
        assert verdict(history) == "ok"
    history = [(0, "INCR", "n", None, None, 0, INF), (1, "INCR", "n", None, 3, 50, 51)]
    assert verdict(history) == "violation"


def test_pending_reads_are_ignored() -> None:
    history = [
        (0, "SET", "k", "1", True, 0, 1),
        (1, "GET", "k", None, "garbage", 2, INF),
        (0, "GET", "k", None, "1", 3, 4),
    ]
    result = check(history)
    assert result.ok
    assert result.ops == 2


def test_keys_are_checked_independently() -> None:
    # Per key each history is fine; only key b's is broken.
    history = [
        (0, "SET", "a", "1", True, 0, 10),
        (1, "GET", "a", None, "1", 2, 3),
        (0, "SET", "b", "1", True, 11, 12),
        (1, "GET", "b", None, None, 13, 14),
    ]
    result = check(history, time_unit=1e-3)
    assert result.status == "violation"
    assert result.key == "b"
    assert result.keys["a"] == "ok"


def test_initial_values() -> None:
    history = [(0, "INCR", "n", None, 11, 0, 1)]
    assert verdict(history) == "violation"
    assert verdict(history, initial={"n": 10}) == "ok"


def test_out_of_budget_is_unknown() -> None:
    # Many concurrent INCRs: searching them takes more than 10 nodes.
    history = [(c, "INCR", "n", None, 10 - c, 0, 100) for c in range(10)]
    assert verdict(history) == "ok"
    result = check(history, budget=10, time_unit=1e-3)
    assert result.status == "unknown"
    assert not result.ok
    assert "UNKNOWN" in result.message


def test_malformed_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        check([(0, "DEL", "k", None, 1, 0, 1)])
    with pytest.raises(ValueError, match="response before invocation"):
        check([(0, "GET", "k", None, None, 5, 1)])
    with pytest.raises(ValueError, match="other keys"):
        check_key("k", [(0, "GET", "j", None, None, 0, 1)])


def test_op_records_are_accepted() -> None:
    history = [Op(0, "set", "k", "1", True, 0, 1), Op(1, "get", "k", None, "1", 2, 3)]
    assert check(history).ok
    assert Op(0, "SET", "k", "1", None, 0, INF).pending


# --- generated histories -------------------------------------------------------------------


@st.composite
def executions(draw: st.DrawFn) -> list[Op]:
    """A real sequential execution, stretched into overlapping intervals.

    Every value is an integer (as INCR needs).  Each operation takes effect at
    its own instant ``10 * i`` (in that order, on a model of the store, which
    gives its result) and is given an interval around that instant; some
    operations get no response (their result is lost), and some of those never
    took effect at all.
    """
    n = draw(st.integers(1, 40))
    state: dict[str, int] = {}
    history = []
    for i in range(n):
        kind = draw(st.sampled_from(["SET", "GET", "GET", "INCR"]))
        key = draw(st.sampled_from(["a", "b"]))
        at = 10 * i
        invoke = at - draw(st.integers(0, 45))
        response: float = at + draw(st.integers(0, 45))
        fate = draw(st.sampled_from(["done"] * 8 + ["lost reply", "never ran"]))
        arg: int | None = None
        result: int | bool | None = None
        if fate != "never ran":
            if kind == "SET":
                arg = 100 * i
                result = True
                state[key] = arg
            elif kind == "GET":
                result = state.get(key)
            else:
                result = state.get(key, 0) + 1
                state[key] = result
        elif kind == "SET":
            arg = 100 * i
        if fate != "done":
            response, result = INF, None
        history.append(Op(draw(st.integers(0, 7)), kind, key, arg, result, invoke, response))
    return draw(st.permutations(history))


@given(executions())
def test_generated_executions_are_linearizable(history: list[Op]) -> None:
    result = check(history, time_unit=1e-3)
    assert result.ok, result


@given(executions(), st.data())
def test_a_read_of_a_value_never_written_is_caught(history: list[Op], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(history) if op.op == "GET" and not op.pending]
    if not reads:
        history.append(Op(0, "GET", "a", None, None, -100, -90))
        reads = [len(history) - 1]
    i = data.draw(st.sampled_from(reads))
    history[i] = history[i]._replace(result="never written")
    result = check(history, time_unit=1e-3)
    assert result.status == "violation", result
    assert result.key == history[i].key
    assert "'never written'" in result.message


def brute_force(history: list[Op]) -> bool:
    """Linearizable by enumeration: some order of (a subset of the pending) operations
    respecting real time in which the model gives every completed operation its result."""
    ops = [op for op in history if not (op.pending and op.op == "GET")]
    completed = [op for op in ops if not op.pending]
    pending = [op for op in ops if op.pending]
    for mask in range(1 << len(pending)):
        chosen = completed + [op for i, op in enumerate(pending) if mask >> i & 1]
        for order in itertools.permutations(chosen):
            if all(
                not (b.response < a.invoke) for i, a in enumerate(order) for b in order[i + 1 :]
            ) and _runs(order):
                return True
    return False


def _runs(order: tuple[Op, ...]) -> bool:
    state: str | None = None
    for op in order:
        if op.op == "SET":
            state = op.arg
        elif op.op == "GET":
            if op.result != state:
                return False
        else:
            number = 0 if state is None else int(state) if state.isdigit() else None
            if number is None:
                if not op.pending and not isinstance(op.result, Exception):
                    return False
            elif op.pending or op.result == number + 1:
                state = str(number + 1)
            else:
                return False
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 6 operations with arbitrary intervals and arbitrary (often wrong) results."""
    history = []
    for client in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["SET", "GET", "INCR"]))
        invoke = draw(st.integers(0, 10))
        response: float = invoke + draw(st.integers(0, 10))
        if draw(st.integers(0, 5)) == 0:
            response = INF
        arg: str | None = None
        result: object = None
        if kind == "SET":
            arg = draw(st.sampled_from(["1", "2", "x"]))
            result = True
        elif kind == "GET":
            result = draw(st.sampled_from([None, "1", "2", "3", "x"]))
        else:
            result = draw(st.sampled_from([1, 2, 3, ValueError("not an integer")]))
        history.append(Op(client, kind, "k", arg, result, invoke, response))
    return history


@given(small_histories())
def test_the_search_agrees_with_brute_force(history: list[Op]) -> None:
    result = check(history, time_unit=1e-3)
    assert result.status in ("ok", "violation")
    assert result.ok == brute_force(history), result
