"""A linearizability checker for histories of SET, GET and INCR on string keys.

The model is a register with a counter: per key, the state is the key's value
(``None`` while the key does not exist).

* ``SET k v`` sets it (its result, ``OK``, is not checked);
* ``GET k`` returns it;
* ``INCR k`` reads it as an integer (a missing key is 0), adds one, stores
  and returns the new integer.  On a value that is not an integer Redis
  answers an error and changes nothing: a result that is an ``Exception``
  instance stands for that error.

A history is a sequence of ``(client, op, key, arg, result, invoke_time,
response_time)`` tuples (or :class:`Op`).  Times are any comparable numbers
(``time.monotonic_ns()``); an operation that got no response (a timeout, a
broken connection) has ``response_time = math.inf`` (or ``None``) and its
result is ignored: it may have taken effect at any moment after its
invocation, or never.  Values may be ``str``, ``bytes`` or ``int``; they are
compared as text (``b"5"``, ``"5"`` and ``5`` are one value).

The search
----------
Keys are independent objects, so each key's sub-history is checked on its own
(linearizability is local / P-compositional: the whole history is
linearizable iff every key's is).

Per key, this is Wing & Gong's search as improved by Lowe ("Testing for
linearizability", 2017) and by Horn & Kroening ("Faster linearizability
checking via P-compositionality", 2015), the algorithm Porcupine and (in
spirit) Knossos implement:

* The history is a doubly linked list of call and return events in time
  order (at equal times calls come first: such operations count as
  concurrent, which is the lenient reading).
* Walking from the head, a *call* is a candidate to be linearized next.  If
  the model accepts it in the current state (a GET must return the state,
  an INCR the state plus one), it is linearized: its call and return events
  are unlinked from the list and the search restarts at the head.
* Reaching a *return* event means that operation returned before everything
  that follows was invoked, so it must already have been linearized: the
  search backtracks (pops the last linearized operation, relinks it, and
  tries the next candidate after it).  Backtracking with nothing to pop
  means no linearization exists.
* Memoisation: a configuration is the set of linearized operations plus the
  model state; the future of the search depends on nothing else, so a
  configuration seen before is not explored again.  The set is a bitmask;
  the cache stores it as (lowest unlinearized operation, the mask shifted
  down to it) so that its entries stay as small as the concurrency window
  rather than growing with the history.
* Pending operations (no response) have no return event: nothing forces
  them to be linearized, and the search succeeds once every completed
  operation is linearized.  Pending GETs tell nothing and are dropped.

The search is bounded by a node budget (one node per step of the walk);
running out yields ``status == "unknown"`` rather than a search without end.
On a violation the result describes where the search got stuck: the longest
linearizable prefix it found (its last operations and the state after them)
and the operations that could come next, none of which fits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

__all__ = ("DEFAULT_BUDGET", "CheckResult", "Op", "check", "check_key")

#: Search nodes per key before the answer is "unknown".
DEFAULT_BUDGET: Final = 2_000_000

_SET, _GET, _INCR = 0, 1, 2
_KINDS: Final = {"SET": _SET, "GET": _GET, "INCR": _INCR}
#: "No such transition": the model rejects the operation in this state.
_REJECT: Final = object()


class Op(NamedTuple):
    """One operation of a history."""

    client: Any
    op: str
    key: Any
    arg: Any
    result: Any
    invoke: float
    response: float  # math.inf: no response

    @property
    def pending(self) -> bool:
        return self.response == math.inf


@dataclass(frozen=True)
class CheckResult:
    """The verdict: ``status`` is ``"ok"``, ``"violation"`` or ``"unknown"``."""

    status: str
    #: the key that is not linearizable (or whose search ran out of budget)
    key: Any = None
    #: a description for a test failure message
    message: str = ""
    #: search nodes visited, over every key checked
    nodes: int = 0
    #: operations checked (pending GETs excluded)
    ops: int = 0
    #: each key's status
    keys: dict[Any, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        if self.message:
            return self.message
        return f"linearizable: {self.ops} ops on {len(self.keys)} keys, {self.nodes} search nodes"


def _text(value: Any) -> str | None:
    """A value as the model compares it: text, or None for a missing key."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"not a value: {value!r}")


def _integer(state: str | None) -> int | None:
    """The state as INCR reads it (None: not an integer, INCR fails)."""
    if state is None:
        return 0
    try:
        n = int(state)
    except ValueError:
        return None
    # Redis accepts only the canonical spelling: no sign, space or leading zero.
    return n if str(n) == state and -(2**63) <= n < 2**63 else None


def _as_op(entry: Op | Sequence[Any]) -> Op:
    op = entry if isinstance(entry, Op) else Op(*entry)
    name = str(op.op).upper()
    if name not in _KINDS:
        raise ValueError(f"unknown operation {op.op!r} in {entry!r}")
    response = math.inf if op.response is None else op.response
    if response < op.invoke:
        raise ValueError(f"response before invocation in {entry!r}")
    return op._replace(op=name, response=response)


def check(
    history: Iterable[Op | Sequence[Any]],
    *,
    budget: int = DEFAULT_BUDGET,
    initial: Mapping[Any, Any] | None = None,
    time_unit: float = 1e-9,
) -> CheckResult:
    """Check a whole history, key by key; the first violation found is reported.

    ``budget`` bounds the nodes searched per key; ``initial`` gives keys'
    values before the history (default: every key missing); ``time_unit`` is
    the seconds per unit of the history's times (for messages only; the
    default suits ``time.monotonic_ns()``).
    """
    by_key: dict[Any, list[Op]] = defaultdict(list)
    for entry in history:
        op = _as_op(entry)
        by_key[op.key].append(op)
    initial = initial or {}
    statuses: dict[Any, str] = {}
    nodes = ops = 0
    unknown: CheckResult | None = None
    for key in sorted(by_key, key=repr):
        result = check_key(
            key, by_key[key], budget=budget, initial=initial.get(key), time_unit=time_unit
        )
        statuses[key] = result.status
        nodes += result.nodes
        ops += result.ops
        if result.status == "violation":
            return CheckResult("violation", key, result.message, nodes, ops, statuses)
        if result.status == "unknown" and unknown is None:
            unknown = result
    if unknown is not None:
        return CheckResult("unknown", unknown.key, unknown.message, nodes, ops, statuses)
    return CheckResult("ok", None, "", nodes, ops, statuses)


def check_key(
    key: Any,
    history: Iterable[Op | Sequence[Any]],
    *,
    budget: int = DEFAULT_BUDGET,
    initial: Any = None,
    time_unit: float = 1e-9,
) -> CheckResult:
    """Check one key's history (every operation must be on ``key``)."""
    ops = [_as_op(e) for e in history]
    if any(op.key != key for op in ops):
        raise ValueError(f"check_key({key!r}) got operations on other keys")
    # A GET that got no answer neither changed nor revealed anything.
    ops = [op for op in ops if not (op.pending and op.op == "GET")]
    ops.sort(key=lambda op: (op.invoke, op.response))
    return _Search(key, ops, _text(initial), time_unit).run(budget)


class _Search:
    """The WGL search over one key's operations (sorted by invocation)."""

    def __init__(self, key: Any, ops: list[Op], initial: str | None, time_unit: float) -> None:
        self.key = key
        self.ops = ops
        self.initial = initial
        self.ms = time_unit * 1e3  # milliseconds per time unit, for messages
        # The deepest configuration reached: its depth, and (its last
        # operations, the state after them, the candidates to come next).
        self.depth = 0
        self.best: tuple[list[int], str | None, list[int]] = ([], initial, [])
        n = len(ops)
        # The model's view of each operation.
        self.kind = [_KINDS[op.op] for op in ops]
        self.arg = [_text(op.arg) if op.op == "SET" else None for op in ops]
        self.known = [not op.pending for op in ops]
        self.result: list[Any] = []
        for op in ops:
            if op.pending or op.op == "SET" or isinstance(op.result, Exception):
                self.result.append(op.result)
            elif op.op == "GET":
                self.result.append(_text(op.result))
            else:
                self.result.append(int(op.result))
        # Completed operations are numbered 0.. (in invocation order) in one
        # mask, pending ones in another: the cache shifts the first down to its
        # lowest unlinearized operation, which a pending operation may never
        # leave.
        self.completed = sum(self.known)
        self.bit: list[int] = []
        c = p = 0
        for known in self.known:
            self.bit.append(1 << (c if known else p))
            if known:
                c += 1
            else:
                p += 1
        # Events: 0 is the list head, then the calls and returns in time order
        # (a pending operation has no return), and last the tail.
        events: list[tuple[float, int, int]] = []  # (time, 0 call / 1 return, op)
        for i, op in enumerate(ops):
            events.append((op.invoke, 0, i))
            if not op.pending:
                events.append((op.response, 1, i))
        events.sort()
        size = len(events) + 2
        self.tail = size - 1
        self.ev_op = [-1] * size
        self.ev_call = [False] * size
        self.ret_of = [-1] * n  # an operation's return event (-1: pending)
        self.call_of = [0] * n
        for e, (_, is_return, i) in enumerate(events, start=1):
            self.ev_op[e] = i
            self.ev_call[e] = not is_return
            if is_return:
                self.ret_of[i] = e
            else:
                self.call_of[i] = e
        self.nxt = [*range(1, size), -1]
        self.prv = [-1, *range(size - 1)]

    def step(self, i: int, state: str | None) -> Any:
        """The state after operation ``i`` in ``state``, or ``_REJECT``."""
        kind = self.kind[i]
        if kind == _SET:
            return self.arg[i]
        if kind == _GET:
            return state if self.result[i] == state else _REJECT
        n = _integer(state)
        result = self.result[i]
        if not self.known[i]:
            return state if n is None else str(n + 1)
        if isinstance(result, Exception):
            return state if n is None else _REJECT
        return str(result) if n is not None and result == n + 1 else _REJECT

    def _lift(self, i: int) -> None:
        nxt, prv = self.nxt, self.prv
        for e in (self.call_of[i], self.ret_of[i]):
            if e >= 0:
                nxt[prv[e]] = nxt[e]
                prv[nxt[e]] = prv[e]

    def _unlift(self, i: int) -> None:
        nxt, prv = self.nxt, self.prv
        for e in (self.ret_of[i], self.call_of[i]):  # the reverse of _lift
            if e >= 0:
                nxt[prv[e]] = e
                prv[nxt[e]] = e

    def run(self, budget: int) -> CheckResult:
        nxt, ev_op, ev_call, known, bit = self.nxt, self.ev_op, self.ev_call, self.known, self.bit
        step = self.step
        state = self.initial
        cmask = pmask = 0  # linearized completed / pending operations
        remaining = self.completed
        stack: list[tuple[int, str | None]] = []  # (operation, state before it)
        cache: set[tuple[int, int, int, str | None]] = set()
        self._remember(stack, state)
        best = 0
        nodes = 0
        entry = nxt[0]
        while remaining:
            nodes += 1
            if nodes > budget:
                return self._verdict("unknown", nodes, budget)
            i = ev_op[entry]
            if ev_call[entry]:
                new = step(i, state)
                if new is not _REJECT:
                    if known[i]:
                        c, p = cmask | bit[i], pmask
                    else:
                        c, p = cmask, pmask | bit[i]
                    low = (~c & (c + 1)).bit_length() - 1
                    memo = (low, c >> low, p, new)
                    if memo not in cache:
                        cache.add(memo)
                        stack.append((i, state))
                        state, cmask, pmask = new, c, p
                        self._lift(i)
                        if known[i]:
                            remaining -= 1
                        if len(stack) > best:
                            best = len(stack)
                            self._remember(stack, state)
                        entry = nxt[0]
                        continue
                entry = nxt[entry]
            else:
                # ``i`` returned before every later call: it must be linearized.
                if not stack:
                    return self._verdict("violation", nodes, budget)
                i, state = stack.pop()
                if known[i]:
                    cmask &= ~bit[i]
                    remaining += 1
                else:
                    pmask &= ~bit[i]
                self._unlift(i)
                entry = nxt[self.call_of[i]]
        return CheckResult("ok", None, "", nodes, len(self.ops), {self.key: "ok"})

    def _remember(self, stack: list[tuple[int, str | None]], state: str | None) -> None:
        """Note the deepest configuration: its last operations and what could follow."""
        window: list[int] = []
        e = self.nxt[0]
        while e != self.tail:
            i = self.ev_op[e]
            if not self.ev_call[e]:
                # The first return: this operation cannot be put off past it.
                window.remove(i)
                window.append(i)
                break
            window.append(i)
            e = self.nxt[e]
        self.depth = len(stack)
        self.best = ([i for i, _ in stack[-6:]], state, window)

    def _describe(self, i: int, origin: float) -> str:
        op = self.ops[i]
        start = (op.invoke - origin) * self.ms
        if op.pending:
            span, result = f"{start:.3f}ms-(no response)", "?"
        else:
            span, result = f"{start:.3f}-{(op.response - origin) * self.ms:.3f}ms", repr(op.result)
        arg = "" if op.op != "SET" else f" {op.arg!r}"
        return f"{span} client {op.client}: {op.op} {op.key!r}{arg} -> {result}"

    def _verdict(self, status: str, nodes: int, budget: int) -> CheckResult:
        origin = self.ops[0].invoke if self.ops else 0
        prefix, state, window = self.best
        done = len(self.ops) - sum(1 for k in self.known if not k)
        lines = []
        if status == "unknown":
            lines.append(
                f"key {self.key!r}: UNKNOWN, the search ran out of its budget of {budget} nodes "
                f"({len(self.ops)} ops; make the history shorter or less concurrent)"
            )
        else:
            lines.append(
                f"key {self.key!r}: NOT linearizable ({len(self.ops)} ops, {done} completed; "
                f"{nodes} search nodes; times in ms from the first invocation)"
            )
        lines.append(f"the longest linearizable prefix found has {self.depth} ops; its last ones:")
        lines += [f"  {self._describe(i, origin)}" for i in prefix] or ["  (none)"]
        lines.append(f"state after it: {state!r}")
        if status == "violation":
            lines.append(
                "the candidates to come next (invoked before the first of them returned, which "
                "is listed last); none of them fits that state:"
            )
        else:
            lines.append("the candidates to come next there:")
        shown = window if len(window) <= 12 else [*window[:5], -1, *window[-6:]]
        lines += [f"  {self._describe(i, origin)}" if i >= 0 else "  ..." for i in shown]
        message = "\n".join(lines)
        return CheckResult(status, self.key, message, nodes, len(self.ops), {self.key: status})
