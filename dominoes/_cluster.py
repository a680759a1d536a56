"""``testing.Cluster``: N replicas in one process over one in-memory log.

It is to dominoes what h11's ``ConnectionPair`` is to h11: the real core (the
same ``Log``, ``StateMachine`` and ``ReplicaCore`` the runtime uses, over the
``memory`` log backend) stepped explicitly, so a test decides who appends, who
applies first (and so who wins a ``race`` claim), when time passes, and who
dies.  Submitting, group commit, timers and snapshot requests go through the
same ``ReplicaCore`` calls as in the runtime; this module only maps their
outcomes to :class:`Pending` objects and recorded effects.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from ._core._codec import Mode
from ._core._component import Component, EventRef, query
from ._core._errors import DominoesError, LogFullError
from ._core._log import DEFAULT_MAX_REPLICAS, ReplicaState
from ._core._machine import Applied, Divergence
from ._core._memory import MemoryLogHost
from ._core._replica import DEFAULT_TIMER_GRACE, ReplicaCore, ReplicaStatistics
from ._core._service import Service

__all__ = ("Cluster", "ClusterReplica", "DivergenceError", "Pending", "ReplicaDeadError")

C = TypeVar("C", bound=Component)

#: The fake clock's start: a plausible epoch time, so handlers that format
#: ``ctx.now`` see a real-looking date.
START_TIME: Final = 1_800_000_000.0


class DivergenceError(AssertionError):
    """Replicas that applied the same entries hold different state."""


class ReplicaDeadError(DominoesError):
    """The replica cannot take submissions: it is dead, or still joining."""


class Pending:
    """A submitted entry, resolved when its origin replica applies it.

    ``seq`` is 0 while the call waits in a group commit for room in the log.
    """

    __slots__ = ("applied", "origin", "seq")

    def __init__(self, origin: int, seq: int) -> None:
        self.origin = origin
        self.seq = seq
        self.applied: Applied | None = None

    @property
    def done(self) -> bool:
        return self.applied is not None

    def result(self) -> Any:
        """The handler's result; raises the handler's exception."""
        if self.applied is None:
            raise RuntimeError(f"entry {self.seq} is not applied on replica {self.origin} yet")
        if self.applied.error is not None:
            raise self.applied.error
        return self.applied.result

    def __repr__(self) -> str:
        return f"<Pending seq={self.seq} origin={self.origin} done={self.done}>"


class ClusterReplica:
    """One replica of a :class:`Cluster`: its core, and what it applied."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.core = self._new_core()
        self.alive = True
        self.joining = False
        #: seq of every entry this incarnation applied, in order (no-ops excluded)
        self.applied: list[int] = []
        #: seq of each applied entry this replica owned
        self.owned: list[int] = []

    def _new_core(self) -> ReplicaCore[Pending]:
        c = self.cluster
        machine = c.service.new_machine(self.index)
        return ReplicaCore(c._host.handle(), machine, replicas=c.size, timer_grace=c.timer_grace)

    @property
    def machine(self) -> Any:
        return self.core.machine

    @property
    def cursor(self) -> int:
        return self.core.machine.cursor

    def component(self, which: type[C] | str) -> C:
        """This replica's instance of a component."""
        return self.core.machine.component(which)  # type: ignore[return-value]

    def statistics(self) -> ReplicaStatistics:
        return self.core.statistics()

    def __repr__(self) -> str:
        state = "dead" if not self.alive else "joining" if self.joining else "live"
        return f"<ClusterReplica {self.index} {state} cursor={self.cursor}>"


class Cluster:
    """N replicas of ``service`` in this process, over one in-memory log.

    Nothing happens until the test says so: :meth:`step` applies entries on
    one replica (or all), :meth:`advance` moves the fake clock, :meth:`kill` and
    :meth:`restart` remove and bring back a replica.  :meth:`call` and
    :meth:`submit` are the convenient forms that append and run until the
    result is known.
    """

    def __init__(
        self,
        service: Service,
        replicas: int = 3,
        *,
        capacity: int = 1024,
        slot_size: int = 256,
        max_entry_slots: int | None = None,
        timer_grace: float = DEFAULT_TIMER_GRACE,
        start_time: float = START_TIME,
    ) -> None:
        if not 1 <= replicas <= DEFAULT_MAX_REPLICAS:
            raise ValueError(f"replicas must be in 1..{DEFAULT_MAX_REPLICAS}")
        self.service = service
        self.size = replicas
        self.timer_grace = timer_grace
        #: the fake clock every replica reads (seconds since the epoch)
        self.clock = start_time
        self._host = MemoryLogHost(
            capacity=capacity,
            slot_size=slot_size,
            replicas=replicas,
            max_entry_slots=max_entry_slots,
        )
        self.log = self._host.log
        self.replicas = [ClusterReplica(self, i) for i in range(replicas)]
        for r in self.replicas:
            r.core.start()
        #: divergences detected by digest reports (``Service(digest_every=K)``)
        self.divergences: list[Divergence] = []
        #: effects run, in order: (replica, seq, function name)
        self.effects_run: list[tuple[int, int, str]] = []
        #: tasks of asynchronous effects still running (when a loop is running)
        self.effect_tasks: set[asyncio.Task[Any]] = set()
        self._snapshot_waits: dict[int, tuple[int, int]] = {}  # joiner -> (source, seq)
        # joiner -> the other replicas writing snapshots for its partitions, and
        # what arrived (writer -> snapshot; the source's under its index too)
        self._snapshot_parts: dict[int, tuple[tuple[int, ...], dict[int, bytes]]] = {}

    def __getitem__(self, index: int) -> ClusterReplica:
        return self.replicas[index]

    def __iter__(self) -> Iterator[ClusterReplica]:
        return iter(self.replicas)

    @property
    def live(self) -> list[ClusterReplica]:
        return [r for r in self.replicas if r.alive and not r.joining]

    def _replica(self, index: int) -> ClusterReplica:
        r = self.replicas[index]
        if not r.alive:
            raise ReplicaDeadError(f"replica {index} is dead")
        return r

    # --- submitting ------------------------------------------------------------------

    def submit_nowait(
        self,
        replica: int,
        event: EventRef,
        /,
        *args: Any,
        _mode: Mode | str = Mode.AFFINITY,
        _request_id: str = "",
        **kwargs: Any,
    ) -> Pending:
        """Append a call on ``replica``; raises :class:`LogFullError` when the log is full.

        ``_mode`` is :class:`Mode` ``AFFINITY`` (default: the submitting
        replica owns the entry), ``RACE`` or ``EVERY`` (or its name).
        """
        core = self._live_core(replica)
        payload = core.encode_call(
            event, args, kwargs, now=self.clock, mode=Mode.parse(_mode), request_id=_request_id
        )
        pending = Pending(replica, 0)
        pending.seq = core.submit_nowait(payload, pending, now=self.clock)
        return pending

    def submit_soon(
        self,
        replica: int,
        event: EventRef,
        /,
        *args: Any,
        _mode: Mode | str = Mode.AFFINITY,
        **kwargs: Any,
    ) -> Pending:
        """Queue a call for group commit on ``replica``, as ``Replica.submit_soon`` does.

        Queued calls are appended, as few entries as fit, by :meth:`commit`
        (which :meth:`step` calls first); a full log keeps them queued.
        """
        core = self._live_core(replica)
        call = core.make_call(event, args, kwargs, now=self.clock, mode=Mode.parse(_mode))
        pending = Pending(replica, 0)
        core.queue(call, pending)
        return pending

    def submit_batch_nowait(
        self, replica: int, calls: list[tuple[EventRef, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Pending]:
        """Append several ``affinity`` calls now through group commit (the runtime's path).

        They share one entry when it fits (else the batch is halved until
        each part does).  Raises :class:`LogFullError` when the log takes
        none of them; calls a full log refuses after the first part fail
        with :class:`LogFullError` (``Pending.seq`` stays 0).
        """
        core = self._live_core(replica)
        if core.group:
            raise LogFullError("earlier submit_soon calls are still waiting for room")
        pendings = [
            self.submit_soon(replica, event, *args, **kwargs) for event, args, kwargs in calls
        ]
        if not self.commit(replica):
            core.group.clear()
            raise LogFullError("log full: no room for the batch")
        for _, pending, *_ in core.group:  # a nowait call never waits
            pending.applied = Applied(0, None, False)
            pending.applied.error = LogFullError("log full: this part of the batch was refused")
        core.group.clear()
        return pendings

    def commit(self, replica: int) -> int:
        """Append ``replica``'s queued calls (group commit); entries appended."""
        core = self.replicas[replica].core
        n = core.commit(self.clock)
        if n:
            for (seq, _), pending in core.pending.items():
                pending.seq = seq
        return n

    def _live_core(self, replica: int) -> ReplicaCore[Pending]:
        r = self._replica(replica)
        if r.joining:
            raise ReplicaDeadError(f"replica {replica} is still joining")
        return r.core

    def call(self, replica: int, event: EventRef, /, *args: Any, **kwargs: Any) -> Any:
        """Submit, run every replica until the origin applied it, return its result.

        When the log is full it steps the replicas to make room first (what
        awaiting an append does in the runtime).
        """
        pending = self._append_with_backpressure(replica, event, args, kwargs)
        self.run_until(lambda: pending.done)
        return pending.result()

    async def submit(self, replica: int, event: EventRef, /, *args: Any, **kwargs: Any) -> Any:
        """The awaitable form of :meth:`call` (it never really suspends)."""
        await asyncio.sleep(0)
        return self.call(replica, event, *args, **kwargs)

    def _append_with_backpressure(
        self, replica: int, event: EventRef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Pending:
        for _ in range(self.log.capacity + 2):
            try:
                return self.submit_nowait(replica, event, *args, **kwargs)
            except LogFullError:
                if not self.step():
                    break
        raise LogFullError("log full and no replica can make progress")

    def query(self, replica: int, ref: str | query[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a ``@query`` on ``replica``, as the runtime does.

        A linearizable query (the default) first applies, on that replica,
        every entry another replica has applied (:meth:`sync`); a ``local``
        one (``@query.local``, ``Service(reads="local")``) reads the replica's
        state as it is, so a test can show what a stale read looks like.
        """
        r = self._replica(replica)
        machine = r.core.machine
        name = machine.resolve(ref)
        if name not in machine.local_queries:
            self.sync(replica)
        if not machine.holds(name, *args, **kwargs):
            # a partition held elsewhere: the read goes through the log to its
            # holders (what ``await State.read`` does)
            return self.call(replica, name, *args, **kwargs)
        return machine.query(name, *args, **kwargs)

    def sync(self, replica: int) -> int:
        """Catch ``replica`` up to the log's completed tail; entries applied."""
        r = self._replica(replica)
        n = 0
        while not r.joining and (target := r.core.behind()):
            got = self._poll(r, None, until=target)
            if not got:
                break
            n += got
        return n

    # --- stepping -------------------------------------------------------------------

    def step(self, replica: int | None = None, limit: int | None = None) -> int:
        """Apply what is published on one replica (or each live one); entries applied."""
        targets = self.replicas if replica is None else [self.replicas[replica]]
        n = 0
        for r in targets:
            if r.alive and not r.joining:
                if r.core.group:
                    self.commit(r.index)
                n += self._poll(r, limit)
        return n

    def _poll(self, r: ClusterReplica, limit: int | None, until: int | None = None) -> int:
        noops = r.core.noops_skipped
        results = r.core.poll(limit, until)
        if r.core.parked:  # what the runtime's tick does: holders died?
            results += r.core.check_parked()
        if r.core.machine.partitioned:  # and a holder asked for a partition's state died?
            r.core.ask_fetches()
        r.core.flush_outbox()
        for applied in results:
            if applied.divergence is not None:
                self.divergences.append(applied.divergence)
            if applied.sub <= 0 and not applied.late:
                r.applied.append(applied.seq)
            if applied.owner and applied.sub <= 0:
                r.owned.append(applied.seq)
            # a partitioned part's effects run on its holder, which may not
            # be the entry's owner: they are queued only where they run
            for fn, args, kwargs in applied.effects:
                self._run_effect(r.index, applied.seq, fn, args, kwargs)
            pending = applied.waiter
            if pending is not None:
                pending.seq = applied.seq
                pending.applied = applied
            if applied.snapshot is not None:
                self._deliver_snapshot(applied, r.index)
        return len(results) + r.core.noops_skipped - noops

    def _run_effect(
        self,
        index: int,
        seq: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.effects_run.append((index, seq, getattr(fn, "__qualname__", repr(fn))))
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(_await(result))
            else:
                task = loop.create_task(_await(result))
                self.effect_tasks.add(task)
                task.add_done_callback(self.effect_tasks.discard)

    def run_until_quiet(self, max_rounds: int = 100_000) -> int:
        """Step every live replica until none has anything to apply; entries applied."""
        total = 0
        for _ in range(max_rounds):
            n = self.step()
            if not n and self._snapshot_waits:
                self._retry_snapshots()
                n = self.step()
            if not n:
                return total
            total += n
        raise RuntimeError("cluster did not go quiet")

    def run_until(self, done: Callable[[], bool], max_rounds: int = 100_000) -> None:
        for _ in range(max_rounds):
            if done():
                return
            if not self.step() and not done():
                self._retry_snapshots()
                if not self.step() and not done():
                    raise RuntimeError("no replica can make progress, and the condition is unmet")
        raise RuntimeError("condition not met")

    # --- time -----------------------------------------------------------------------------

    def fire_due(self, replica: int | None = None) -> int:
        """Let live replicas append ``Fire`` entries for due timers; how many were appended."""
        targets = self.live if replica is None else [self._replica(replica)]
        return sum(r.core.fire_due(self.clock) for r in targets)

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward, fire due timers and run until quiet."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.clock += seconds
        self.run_until_quiet()
        while self.fire_due():
            self.run_until_quiet()

    # --- failure -------------------------------------------------------------------------------

    def kill(self, replica: int) -> None:
        """Kill a replica: its cursor stops holding the log, its reservations become no-ops."""
        r = self._replica(replica)
        r.alive = False
        r.joining = False
        for pending in r.core.drop_pending():
            pending.applied = Applied(pending.seq, None, False)
            pending.applied.error = ReplicaDeadError(f"replica {replica} died")
        self._snapshot_waits.pop(replica, None)
        self._snapshot_parts.pop(replica, None)
        self.log.mark_dead(replica)
        self.log.fill_abandoned(replica)
        # calls waiting for partials that no live replica can now send fail
        for other in self.live:
            for applied in other.core.check_parked():
                pending = applied.waiter
                if pending is not None:
                    pending.seq = applied.seq
                    pending.applied = applied

    def restart(self, replica: int, source: int | None = None) -> None:
        """Bring a dead replica back: join, snapshot through the log, catch up.

        The replica holds the log from the current tail and appends a request
        for a snapshot; ``source`` (default: the lowest live replica) writes
        its state when it applies that request, and the restarted replica
        loads it and continues from there.  Call :meth:`run_until_quiet` (or
        :meth:`step`) to let it happen.
        """
        r = self.replicas[replica]
        if r.alive:
            raise ValueError(f"replica {replica} is alive")
        r.core = r._new_core()
        r.alive = True
        r.joining = True
        r.applied = []
        r.owned = []
        r.core.join()
        self._request_snapshot(replica, source)

    def _request_snapshot(self, joiner: int, source: int | None) -> None:
        core = self.replicas[joiner].core
        try:
            ask = core.ask_snapshot(now=self.clock, source=source)
        except RuntimeError as exc:
            raise ReplicaDeadError(str(exc)) from None
        for _ in range(self.log.capacity + 2):
            seq = core.try_append(ask.payload)
            if seq:
                self._snapshot_waits[joiner] = (ask.source, seq)
                self._snapshot_parts[joiner] = (ask.extras, {})
                return
            if not self.step():
                # Other joiners may hold the log for sources that died.
                self._snapshot_waits.pop(joiner, None)
                self._retry_snapshots()
                if not self.step():
                    break
        raise LogFullError("log full while requesting a snapshot")

    def _retry_snapshots(self) -> None:
        """Ask again for snapshots whose source can no longer answer.

        A source cannot answer when it is dead or joining, or when it is a
        *new incarnation* that started past the request (its cursor is beyond
        the request's seq, so it will never apply it).
        """
        for joiner, (source, asked_at) in list(self._snapshot_waits.items()):
            extras, got = self._snapshot_parts.get(joiner, ((), {}))
            for writer in (source, *extras):
                src = self.replicas[writer]
                if writer not in got and (not src.alive or src.joining or src.cursor > asked_at):
                    self._request_snapshot(joiner, None)
                    break

    def _deliver_snapshot(self, applied: Applied, writer: int) -> None:
        entry = applied.entry
        assert entry is not None
        assert applied.snapshot is not None
        source, joiner = entry.arg[0], entry.arg[1]  # type: ignore[union-attr]
        if self._snapshot_waits.get(joiner) != (source, entry.seq):
            return  # a stale request (the joiner died, or asked again)
        extras, got = self._snapshot_parts.get(joiner, ((), {}))
        got[writer] = applied.snapshot
        if any(w not in got for w in (source, *extras)):
            return  # the partitions other replicas write for it are still to come
        del self._snapshot_waits[joiner]
        self._snapshot_parts.pop(joiner, None)
        r = self.replicas[joiner]
        r.core.load(got[source], [got[w] for w in extras])
        r.joining = False

    # --- checking --------------------------------------------------------------------------------

    def assert_converged(self) -> None:
        """Run until quiet, then check every live replica holds identical state.

        Raises :class:`DivergenceError` naming the first differing component.
        """
        self.run_until_quiet()
        live = self.live
        if not live:
            return
        ref = live[0]
        for r in live[1:]:
            if r.cursor != ref.cursor:
                raise DivergenceError(
                    f"replica {r.index} is at seq {r.cursor}, replica {ref.index} at {ref.cursor}"
                )
        # every component (and every copy of a partition: "name#p") the same
        # wherever it is held
        seen: dict[str, tuple[int, str]] = {}
        for r in live:
            for name, digest in r.core.machine.digest().items():
                first = seen.setdefault(name, (r.index, digest))
                if first[1] != digest:
                    raise DivergenceError(
                        f"replicas {first[0]} and {r.index} differ in component {name!r} "
                        f"at seq {r.cursor - 1}"
                    )

    def statistics(self) -> list[ReplicaStatistics]:
        return [r.core.statistics() for r in self.replicas if r.alive]

    def __repr__(self) -> str:
        states = " ".join(ReplicaState.NAMES[self.log.state(r.index)][0] for r in self.replicas)
        return f"<Cluster {self.service.name!r} n={self.size} tail={self.log.tail} [{states}]>"


async def _await(awaitable: Any) -> Any:
    return await awaitable
