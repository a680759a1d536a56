"""Random interleavings of appends, claims, applies, timers, kills and restarts.

A hypothesis state machine drives a ``testing.Cluster`` of 3-4 replicas over a
tiny log (8 slots, some entries spanning two), so wrap-around and backpressure
happen all the time.  After every step it checks the invariants of
docs/design/invariants.md:

1. same order, exactly once;   3. one owner per entry;
4. no entry lost or overwritten;   5. each timer fires once;
7. a dead replica never stalls the rest.

Hypothesis prints the failing sequence of steps (and a reproduction blob) on
failure; set ``HYPOTHESIS_PROFILE=thorough`` for a longer search.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dominoes import (
    Component,
    Context,
    EntryTooLargeError,
    EventRef,
    LogFullError,
    Service,
    update,
)
from dominoes.lowlevel import Log
from dominoes.testing import Cluster


class Journal(Component):
    """Replicated record of what was applied, plus owner-only effects."""

    #: effects run, across every replica of the test: (token, replica)
    effects: ClassVar[list[tuple[str, int]]] = []
    transient = ()

    def __init__(self) -> None:
        self.history: list[str] = []
        self.fired: list[str] = []
        self.timers: dict[str, int] = {}

    @update
    def note(self, ctx: Context, token: str, pad: str = "") -> int:
        self.history.append(token)
        ctx.effect(self._record, token, ctx.replica)
        return len(self.history)

    @update
    def arm(self, ctx: Context, token: str, delay: float) -> int:
        self.history.append(token)
        tid = ctx.raise_later(delay, Journal.ring, token)
        self.timers[token] = tid
        return tid

    @update
    def disarm(self, ctx: Context, token: str) -> bool:
        self.history.append("cancel:" + token)
        tid = self.timers.pop(token, None)
        return tid is not None and ctx.cancel(tid)

    @update
    def ring(self, ctx: Context, token: str) -> None:
        self.fired.append(token)
        self.timers.pop(token, None)

    @staticmethod
    def _record(token: str, replica: int) -> None:
        Journal.effects.append((token, replica))


MODES = ("affinity", "race", "every")


class Interleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        Journal.effects = []
        self.cluster: Cluster
        self.n = 0
        self.counter = 0
        #: token -> (seq, mode, origin) for every append that was accepted
        self.appended: dict[str, tuple[int, str, int]] = {}
        self.armed: set[str] = set()
        self.cancelled: set[str] = set()
        self.full = 0

    @initialize(n=st.integers(3, 4), slot_size=st.sampled_from([128, 192]))
    def start(self, n: int, slot_size: int) -> None:
        self.n = n
        self.cluster = Cluster(
            Service("interleavings", [Journal()]),
            replicas=n,
            capacity=8,
            slot_size=slot_size,
            timer_grace=0.5,
        )

    # --- helpers -------------------------------------------------------------------

    def live(self) -> list[int]:
        return [r.index for r in self.cluster.live]

    def token(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def _submit(self, replica: int, event: Any, mode: str, *args: Any, **kw: Any) -> None:
        r = self.cluster[replica]
        if not r.alive or r.joining:
            return
        tok = args[0]
        try:
            p = self.cluster.submit_nowait(replica, event, *args, _mode=mode, **kw)
        except LogFullError:
            self.full += 1
            return
        self.appended[tok] = (p.seq, mode, replica)

    # --- rules ------------------------------------------------------------------------

    @rule(data=st.data(), mode=st.sampled_from(MODES), pad=st.integers(0, 120))
    def append(self, data: st.DataObject, mode: str, pad: int) -> None:
        replica = data.draw(st.integers(0, self.n - 1))
        self._submit(replica, Journal.note, mode, self.token(), pad="x" * pad)

    @rule(data=st.data(), n=st.integers(2, 4), pad=st.integers(0, 40))
    def append_batch(self, data: st.DataObject, n: int, pad: int) -> None:
        """Group commit: several affinity calls of one replica in one entry."""
        replica = data.draw(st.integers(0, self.n - 1))
        r = self.cluster[replica]
        if not r.alive or r.joining:
            return
        tokens = [self.token() for _ in range(n)]
        tail = self.cluster.log.tail
        calls: list[tuple[EventRef, tuple[Any, ...], dict[str, Any]]] = [
            (Journal.note, (tok,), {"pad": "x" * pad}) for tok in tokens
        ]
        try:
            pendings = self.cluster.submit_batch_nowait(replica, calls)
        except LogFullError:
            self.full += 1
            return
        except EntryTooLargeError:  # refused whole, before anything is reserved
            assert self.cluster.log.tail == tail
            return
        for tok, p in zip(tokens, pendings, strict=True):
            if p.seq:  # a part the full log refused fails instead (seq 0)
                self.appended[tok] = (p.seq, "affinity", replica)

    @rule(data=st.data(), limit=st.integers(1, 5))
    def step_one(self, data: st.DataObject, limit: int) -> None:
        self.cluster.step(data.draw(st.integers(0, self.n - 1)), limit=limit)

    @rule()
    def step_all(self) -> None:
        self.cluster.step()

    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.3, 1.0, 2.5]))
    def arm_timer(self, data: st.DataObject, delay: float) -> None:
        replica = data.draw(st.integers(0, self.n - 1))
        tok = self.token()
        before = len(self.appended)
        self._submit(replica, Journal.arm, "affinity", tok, delay)
        if len(self.appended) > before:
            self.armed.add(tok)

    @precondition(lambda self: bool(self.armed - self.cancelled))
    @rule(data=st.data())
    def cancel_timer(self, data: st.DataObject) -> None:
        tok = data.draw(st.sampled_from(sorted(self.armed - self.cancelled)))
        replica = data.draw(st.integers(0, self.n - 1))
        r = self.cluster[replica]
        if not r.alive or r.joining:
            return
        try:
            self.cluster.submit_nowait(replica, Journal.disarm, tok)
        except LogFullError:
            return
        self.cancelled.add(tok)  # it may still fire first: checked at the end

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0]))
    def tick(self, dt: float) -> None:
        self.cluster.clock += dt

    @rule(data=st.data())
    def fire_due(self, data: st.DataObject) -> None:
        replica = data.draw(st.integers(0, self.n - 1))
        if self.cluster[replica].alive and not self.cluster[replica].joining:
            self.cluster.fire_due(replica)

    @precondition(lambda self: len(self.live()) >= 2)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        self.cluster.kill(data.draw(st.sampled_from(self.live())))

    @precondition(lambda self: len(self.live()) >= 2)
    @rule(data=st.data(), nslots=st.integers(1, 2))
    def reserve_then_die(self, data: st.DataObject, nslots: int) -> None:
        victim = data.draw(st.sampled_from(self.live()))
        log = self.cluster[victim].core.log
        assert isinstance(log, Log)  # a Cluster's replicas append to the memory backend's ring
        log.try_reserve(victim, nslots)  # may be refused
        self.cluster.kill(victim)

    @precondition(lambda self: any(not r.alive for r in self.cluster) and self.live())
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        dead = [r.index for r in self.cluster if not r.alive]
        self.cluster.restart(data.draw(st.sampled_from(dead)))

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def same_order_exactly_once(self) -> None:
        histories = [r.component(Journal).history for r in self.cluster.live]
        for h in histories:
            assert len(h) == len(set(h)), "an entry was applied twice"
        longest = max(histories, key=len, default=[])
        for h in histories:
            assert h == longest[: len(h)], "replicas applied different orders"
        for r in self.cluster:
            assert r.applied == sorted(set(r.applied)), "a replica applied out of order"

    @invariant()
    def in_seq_order_and_nothing_overwritten(self) -> None:
        seq_of = {tok: seq for tok, (seq, _, _) in self.appended.items()}
        for r in self.cluster.live:
            seqs = [seq_of[t] for t in r.component(Journal).history if t in seq_of]
            assert seqs == sorted(seqs), "history is not in log order"

    @invariant()
    def one_owner_per_entry(self) -> None:
        owners = Tally(Journal.effects)
        per_token = Tally(tok for tok, _ in Journal.effects)
        for (tok, replica), times in owners.items():
            assert times == 1, f"{tok} ran its effect twice on replica {replica}"
            _, mode, origin = self.appended[tok]
            if mode == "affinity":
                assert replica == origin, f"{tok} owned by {replica}, not its origin {origin}"
            if mode != "every":
                assert per_token[tok] == 1, f"{tok} has {per_token[tok]} owners"

    @invariant()
    def timers_fire_at_most_once(self) -> None:
        for r in self.cluster.live:
            fired = r.component(Journal).fired
            assert len(fired) == len(set(fired)), "a timer fired twice"

    @invariant()
    def live_replicas_are_never_stalled(self) -> None:
        # Whatever died, the live replicas can always drain what is published.
        log = self.cluster.log
        for r in self.cluster.live:
            assert r.cursor <= log.tail
        stats = log.statistics()
        assert set(stats.live) == {r.index for r in self.cluster.live}

    def teardown(self) -> None:
        if not hasattr(self, "cluster"):
            return
        c = self.cluster
        c.run_until_quiet()
        c.advance(10.0)  # every pending timer is due, even past the grace period
        c.assert_converged()
        log = c.log
        # 7. nothing is held back: every live replica applied up to the tail
        assert all(r.cursor == log.tail for r in c.live)
        assert log.free_slots() == log.capacity
        journal = c.live[0].component(Journal)
        # 4. every accepted append was applied, exactly once, in seq order
        applied = [t for t in journal.history if t in self.appended]
        assert sorted(applied) == sorted(self.appended), "an accepted entry was lost"
        # 3. race entries have exactly one owner (the first replica to apply claims)
        owners = Tally(tok for tok, _ in Journal.effects)
        for tok, (_, mode, _) in self.appended.items():
            if mode == "race" and tok.startswith("t") and tok in owners:
                assert owners[tok] == 1
        race_notes = [
            t for t, (_, m, _) in self.appended.items() if m == "race" and t not in self.armed
        ]
        for tok in race_notes:
            assert owners[tok] == 1, f"race entry {tok} has {owners[tok]} owners"
        # 5. every armed timer fired exactly once unless a cancel applied first
        fired = Tally(journal.fired)
        for tok in self.armed:
            assert fired[tok] <= 1
            if tok not in self.cancelled:
                assert fired[tok] == 1, f"timer {tok} never fired"


TestInterleavings = Interleavings.TestCase
