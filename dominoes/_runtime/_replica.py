"""A replica at run time: the event-loop shell around ``ReplicaCore``.

The replica loop
----------------
Nothing here busy-polls.  One callback, :meth:`Replica._drain`, does an
iteration of the replica loop (docs/design/invariants.md) and is scheduled
with ``call_soon`` whenever there may be work:

1. apply published entries up to the tail observed now, at most one batch
   (``ReplicaCore.poll``: the batch rule);
2. resolve the futures of entries this replica appended and run the effects
   it owns;
3. return to the loop, so ingress (sockets) runs between batches; if more is
   published, schedule another iteration;
4. otherwise sleep: store the asleep flag (seq_cst), re-check the log, and
   wait for the eventfd (``loop.add_reader``) that producers signal only
   when the flag is set.  A safety timer re-checks every ``SAFETY_TICK`` in
   case a producer died between publishing and signalling.

Reads (linearizable by default)
-------------------------------
:meth:`Replica.sync` is a read's first step: one load of the log's completed
tail and, when this replica is behind it, a synchronous catch-up to it
(``ReplicaCore.poll(until=...)``), whose replies and effects go out as usual.
``query`` calls it unless the query reads locally; ingress that answers reads
itself (the KV) calls it once per batch of reads.

Apply timeouts and poison entries
---------------------------------
A periodic ``SIGALRM`` checks the apply in progress; one that has run for
``apply_timeout`` seconds is interrupted by raising ``ApplyTimeout`` inside
the handler.  The replica rolls back to just before the entry
(``ReplicaCore.rollback``), announces it in its log line (``stuck``) and
waits: if another replica applied the entry, it applies it again; once the
supervisor sees every live replica waiting at the same entry, it declares
it poison and each applies it as an error.  The replica keeps serving reads
meanwhile (at the state before the entry).

Appending never awaits between reserve and publish (``Log.try_append`` is
synchronous).  When the log is full, :meth:`Replica.submit` waits with the one
back-off (``_backoff``) and the ingress that called it stops reading:
backpressure.

Everything a replica decides (what to append, whose outcome an applied entry
is, when a timer is due, whom to ask for a snapshot) is ``ReplicaCore``'s;
this class maps the core's outcomes to futures, sockets, eventfds and forked
children.  The log is reached only through the ``LogBackend`` protocol, and
wake-ups through ``Wakeups``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from .._core._backend import LogBackend
from .._core._codec import Mode
from .._core._component import Component, EventRef, query
from .._core._errors import ApplyTimeout, DominoesError, DurabilityError
from .._core._log import LogStatistics
from .._core._machine import Applied, Divergence
from .._core._replica import DEFAULT_STALL_THRESHOLD, ReplicaCore
from .._core._service import Service
from ._backoff import Backoff, when_room
from ._blobs import FileBlobs
from ._children import Children
from ._feeds import Feeds
from ._fence import ReadFences
from ._joining import Joining, write_snapshot
from ._persist import DurableOptions, Persistence
from ._stats import (
    ComponentSummary,
    IngressCounters,
    Rates,
    RegistryStatistics,
    RuntimeStatistics,
    component_sizes,
    runtime_statistics,
    thread_usage,
)
from ._wakeups import Wakeups, wake_sleepers

__all__ = ("Replica",)

log = logging.getLogger("dominoes.replica")

#: Seconds between safety re-checks of the log while asleep.  Wake-ups are
#: signalled, so this only bounds the delay after a producer died between
#: publishing and signalling (or a supervisor filled a no-op).
SAFETY_TICK: Final = 0.005

#: Seconds an apply may run before it is interrupted and the replica rolls back
#: (None: never).  A legitimate entry must finish well within it, on a loaded
#: machine too: every replica that gives up on an entry makes it an error.
DEFAULT_APPLY_TIMEOUT: Final = 2.0

#: Seconds between samples of loop lag and rates.
SAMPLE_EVERY: Final = 0.25

OwnerHook = Callable[[Applied], None]
#: what names a query: its function, or its registered name
QueryRef = str | query[..., Any]
C = TypeVar("C", bound=Component)


class Replica:
    """One replica of a service, inside its own process and event loop.

    Ingress code receives it: ``value = await replica.submit(Counter.incr, "k")``
    appends an update and returns its result once this replica applied it;
    ``replica.query(Counter.get, "k")`` reads the local state.
    """

    def __init__(
        self,
        service: Service,
        index: int,
        log: LogBackend,
        wakeups: Wakeups,
        *,
        replicas: int,
        run_dir: Path,
        cpu: int | None = None,
        digest_every: int | None = None,
        stall_threshold: float = DEFAULT_STALL_THRESHOLD,
        apply_timeout: float | None = DEFAULT_APPLY_TIMEOUT,
        fork_snapshots: bool = True,
        durable: DurableOptions | None = None,
    ) -> None:
        self.service = service
        self.index = index
        self.replicas = replicas
        self.run_dir = run_dir
        #: the CPU this replica is pinned to (None if unpinned)
        self.cpu = cpu
        #: the service's own options (``Service(options=...)``), name -> value, as
        #: ``dominoes run`` gave them; each declared option's default otherwise
        self.options: dict[str, Any] = {o.name: o.default for o in service.options}
        #: the address ``dominoes run --host/--port`` gave the service (its ingress
        #: listens there; a service with its own ingress may read it)
        self.host = "127.0.0.1"
        self.port = 0
        #: a service's own report sections, name -> ``fn(detail)`` returning JSON-ready
        #: data: ``dominoes stats`` shows ``fn(None)`` under ``reports``, and the monitor
        #: gets a command ``NAME [DETAIL]`` (registered before the monitor starts: in
        #: ``on_start``)
        self.reports: dict[str, Callable[[str | None], Any]] = {}
        #: the log backend this replica appends to and applies from
        self.log = log
        #: how it wakes sleeping replicas and is woken
        self.wakeups = wakeups
        machine = service.new_machine(index)
        if digest_every is not None:
            machine.digest_every = digest_every
        self.core: ReplicaCore[asyncio.Future[Any]] = ReplicaCore(
            self.log,
            machine,
            replicas=replicas,
            clock=time.perf_counter,
            stall_threshold=stall_threshold,
            on_stall=self._on_stall,
        )
        self.stall_threshold = stall_threshold
        #: entries over the ring's limit go to files in the run dir
        self.blobs = FileBlobs(run_dir, index)
        self.core.blobs = self.blobs
        self.apply_timeout = apply_timeout
        #: write snapshots and digests from a forked child (False: inline)
        self.fork_snapshots = fork_snapshots
        #: forked children writing snapshots and digests
        self.children = Children(self)
        #: the durable log's duties: held replies, restore, snapshots (``--durable``)
        self.persist = Persistence(self, durable)
        #: linearizable reads across machines (``--log nats://``; inactive otherwise)
        self.fences = ReadFences(self)
        if self.fences.active:
            # an entry must travel to other machines by value: no blob files
            self.core.blobs = None
        if machine.partitioned and self.fences.active:
            raise DominoesError(
                f"service {service.name!r} has partitioned components "
                f"({', '.join(machine.partitioned)}), which run on one machine's "
                "shared-memory log, not --log nats:// for now: a partition is held by "
                "some replicas only, and the machines of a shared log each restore "
                "one machine's snapshot"
            )
        #: lines a producer here wakes: the replicas, and the log writer or the
        #: bridge after them
        self.wake_lines = replicas + 1 if self.persist.active or self.fences.active else replicas
        #: what an applied outcome goes to: chosen once, so that a replica
        #: without a durable log pays nothing per outcome for it
        self._deliver: Callable[[Applied], None] = (
            self._deliver_holding if self.persist.active else self._deliver_now
        )
        self.syncs = 0
        #: reads of partitions held elsewhere, sent through the log (``read``)
        self.forwarded_reads = 0
        self.poisoned_seen = 0
        #: slow applies that were the core's other processes, not the apply (see _on_stall)
        self.preempted = 0
        self._batch_usage: resource.struct_rusage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Group commit (submit_soon): the core queues the calls; this callback
        # appends them once per loop iteration, or after a back-off when full.
        self._group_scheduled = False
        self._group_backoff = Backoff()
        self._scheduled = False
        self._asleep = False
        self._timer: asyncio.TimerHandle | None = None
        self._safety: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: joining a running service (restarted replicas)
        self.joining = Joining(self)
        #: called with every applied entry this replica owns (ingress replies)
        self.owner_hooks: list[OwnerHook] = []
        #: this replica's subscribers to what entries publish (``ctx.publish``)
        self.feeds = Feeds()
        #: the embedded HTTP server of a service with an ASGI app (an ``AsgiServer``)
        self.web: Any = None
        #: this replica's UDP socket under ``Service(udp=...)`` (an asyncio
        #: ``DatagramTransport``, bound to the service's port with ``SO_REUSEPORT``):
        #: effects send datagrams from it, so that a peer sees one address whichever
        #: replica answers.  None before the ingress opens and without ``udp``
        self.udp: Any = None
        self.effects_run = 0
        self.effect_errors = 0
        self.effect_stalls = 0
        self.wakeups_sent = 0
        self.queries = 0
        #: the last divergence reports seen (most recent last)
        self.divergences: list[Divergence] = []
        #: ingress counters, kept by the ingress adapters
        self.ingress = IngressCounters()
        self.loop_name = ""
        self.loop_lag = 0.0
        self.loop_lag_max = 0.0
        self.rates = Rates()
        self._sampler: asyncio.TimerHandle | None = None
        self.closed = False

    # --- public API ---------------------------------------------------------------

    async def submit(
        self,
        event: EventRef,
        /,
        *args: Any,
        _mode: Mode | str = Mode.AFFINITY,
        _request_id: str = "",
        **kwargs: Any,
    ) -> Any:
        """Append an update and return its result once this replica applied it.

        Waits while the log is full.  The handler's exception is raised here.
        """
        if self._refusable and (refused := self._refusal()) is not None:
            raise refused
        payload = self._encode(event, args, kwargs, _mode, _request_id)
        assert self._loop is not None
        fut = self._loop.create_future()
        await when_room(lambda: self._submit_now(payload, fut), stopped=lambda: self.closed)
        return await fut

    def submit_soon(
        self, event: EventRef, /, *args: Any, _mode: Mode | str = Mode.AFFINITY, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """Queue an update for group commit; a future of its result.

        Every ``submit_soon`` of one event-loop iteration goes into one log
        entry (a ``Batch``, in call order), so many connections' requests cost
        one reservation, one publication and one wake-up; a call in another
        mode than ``affinity`` gets an entry of its own, in its turn.  It
        never raises :class:`LogFullError`: a full log delays the group, in
        order.  An unknown event, unencodable arguments (``TypeError``) and an
        update over the size limit (:class:`EntryTooLargeError`) raise here.

        Order is kept across forms: ``submit`` and ``submit_nowait`` append
        what this replica queued before them first.
        """
        assert self._loop is not None
        if self.closed:
            return self._stopped_future()
        core = self.core
        call = core.make_call(event, args, kwargs, now=time.time(), mode=Mode.parse(_mode))
        fut = self._loop.create_future()
        if self._refusable and (refused := self._refusal()) is not None:
            fut.set_exception(refused)
            return fut
        core.queue(call, fut)
        if not self._group_scheduled:
            self._group_scheduled = True
            self._loop.call_soon(self._commit_group)
        return fut

    def _commit_group(self) -> None:
        """The group commit callback: append what is queued, or retry after a back-off."""
        if self.closed:  # a late callback: close() cancelled the group
            return
        core = self.core
        if core.commit(time.time()):
            self._after_append()
        if not core.group:
            self._group_scheduled = False
            self._group_backoff.reset()
            return
        assert self._loop is not None
        self._loop.call_later(self._group_backoff.next(), self._commit_group)

    def submit_nowait(
        self,
        event: EventRef,
        /,
        *args: Any,
        _mode: Mode | str = Mode.AFFINITY,
        _request_id: str = "",
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        """Append an update now, or raise :class:`LogFullError`; a future of its result.

        Once the replica is closed (stopping), the future is cancelled at once.
        """
        if self.closed:
            return self._stopped_future()
        payload = self._encode(event, args, kwargs, _mode, _request_id)
        assert self._loop is not None
        fut = self._loop.create_future()
        if self._refusable and (refused := self._refusal()) is not None:
            fut.set_exception(refused)
            return fut
        self._submit_now(payload, fut)
        return fut

    def _submit_now(self, payload: bytes, fut: asyncio.Future[Any]) -> int:
        """Append (queued group-commit calls first) or raise :class:`LogFullError`.

        Wakes sleeping replicas after anything was appended, even when this
        payload itself found the log full behind the group.
        """
        core = self.core
        before = core.appended
        try:
            return core.submit_nowait(payload, fut, now=time.time())
        finally:
            if core.appended != before:
                self._after_append()

    def query(self, ref: str | query[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a ``@query`` against this replica's state.

        A linearizable query (the default) first catches up to the completed
        tail (:meth:`sync`), so it reflects every write acknowledged anywhere
        on this machine before it; a ``local`` one reads the state as it is.
        With ``--log nats://``, use ``await`` :meth:`read` to see writes
        acknowledged on other machines too.  A query of a partitioned
        component whose partition this replica does not hold raises
        :class:`~dominoes.PartitionError`; :meth:`read` forwards it.
        """
        self.queries += 1
        machine = self.core.machine
        name = machine.resolve(ref)
        if name not in machine.local_queries:
            self.sync()
        return machine.query(name, *args, **kwargs)

    async def read(self, ref: QueryRef, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`query`, linearizable across machines as well.

        With a log shared across machines (``--log nats://``) a linearizable
        query first awaits a read fence (:meth:`read_fence`), so it reflects
        every write acknowledged on any machine before it was called.  On one
        machine it is :meth:`query` (nothing to await), except for a read of
        partitions of a partitioned component this replica does not hold:
        that goes through the log to their holders and comes back as a call.
        """
        machine = self.core.machine
        name = machine.resolve(ref)
        if name not in machine.local_queries:
            fence = self.read_fence()
            if fence is not None:
                await fence
        # after the catch-up: a partition this replica held before it may have
        # moved (a change of copies applied by the catch-up)
        if machine.partitioned and not machine.holds(name, *args, **kwargs):
            # a partition held elsewhere: the read goes through the log to its
            # holders (linearizable: it is ordered with every write)
            self.forwarded_reads += 1
            return await self.submit(name, *args, **kwargs)
        self.queries += 1
        return machine.query(name, *args, **kwargs)

    @property
    def _refusable(self) -> bool:
        """Updates may be refused: the durable log's disk, or the stream, can fail."""
        return self.persist.active or self.fences.active

    def _refusal(self) -> DurabilityError | None:
        """Why updates are refused now (None: they are not)."""
        if self.persist.active:
            return self.persist.refusal()
        return self.fences.refusal()

    @property
    def across_machines(self) -> bool:
        """True when the log is shared with other machines (``--log nats://``):
        a linearizable read then awaits :meth:`read_fence`."""
        return self.fences.active

    def read_fence(self) -> asyncio.Future[None] | None:
        """A read's first step: None once reads may run now, or a future to await first.

        On one machine it is :meth:`sync` (reads may run at once).  With a log
        shared across machines (``--log nats://``) it returns a future that
        completes once this replica has applied every entry the stream held
        when the read arrived (``_fence``): a write acknowledged on any machine
        before then is visible.  Ingress awaits it, then answers the reads
        that arrived before it asked.
        """
        if not self.fences.active:
            self.sync()
            return None
        return self.fences.ask()

    def sync(self) -> None:
        """Apply, now, every entry some replica has applied and this one has not.

        One atomic load when there is nothing to do.  Call it before answering
        reads from the local state (invariant 8, docs/design/invariants.md); replies and effects of
        the entries it applies go out as usual.  A joining replica serves no
        reads yet (ingress starts once it joined).  One that gave up on an
        entry first looks for the verdict: if another replica applied the
        entry (its reply may have left), it applies it again now; otherwise
        it reads at its own position, where every live replica waits.
        """
        core = self.core
        if self.closed:  # stopped applying: nothing to catch up with
            return
        target = core.behind()
        if not target or self.joining.active:
            return
        if core.gave_up and not self._verdict():
            return
        self.syncs += 1
        self._batch_usage = thread_usage()  # see _on_stall
        while core.machine.cursor < target:
            before = core.machine.cursor
            for applied in core.poll(until=target):
                self._deliver(applied)
            if core.gave_up:
                self._on_gave_up()
                return
            if core.machine.cursor == before:  # cannot happen below `completed`
                log.error("replica %d: catch-up stopped at %d of %d", self.index, before, target)
                return

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this replica is attached to (None before ``attach``)."""
        return self._loop

    def component(self, which: type[C] | str) -> C:
        """This replica's instance of a component (read it; never write it here)."""
        return self.core.machine.component(which)  # type: ignore[return-value]

    def partition(self, which: type[C] | str, partition: int) -> C | None:
        """This replica's instance of one partition of a partitioned component.

        None when this replica does not hold ``partition`` (or is still
        loading it after a change of ``copies``).  Like :meth:`component`, it
        is for reading, after a catch-up when the read must see every
        acknowledged write (:meth:`sync`); never change it here.  The
        partition of a key is ``Component.partition.of(key)``.
        """
        name = which if isinstance(which, str) else which.name
        return self.core.machine.local_part(name, partition)  # type: ignore[return-value]

    @property
    def applied_seq(self) -> int:
        """The last log position applied here."""
        return self.core.machine.cursor - 1

    @property
    def lag(self) -> int:
        """Log positions appended but not yet applied here."""
        return max(0, self.log.tail - self.core.machine.cursor)

    def statistics(self) -> RuntimeStatistics:
        """This replica's counters, as one frozen struct."""
        return runtime_statistics(self)

    def log_statistics(self) -> LogStatistics:
        """The shared log's header, as this replica sees it."""
        return self.log.statistics()

    def registry_statistics(self) -> RegistryStatistics:
        """Events, bindings and a size summary of every component's state."""
        m = self.core.machine
        return RegistryStatistics(
            events=len(m.registry.events()),
            bindings=len(m.registry),
            queries=len(m.query_names),
            components=tuple(
                ComponentSummary(
                    name=name,
                    cls=type(c).__name__,
                    sizes=component_sizes(m.partitioned.get(name, c)),
                )
                for name, c in m.components.items()
            ),
        )

    def digest(self) -> tuple[int, dict[str, str]]:
        """(applied seq, per-component digest) of the state right now."""
        return self.applied_seq, self.core.machine.digest()

    # --- appending ----------------------------------------------------------------------

    def _encode(
        self,
        event: EventRef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mode: Mode | str,
        rid: str,
    ) -> bytes:
        return self.core.encode_call(
            event, args, kwargs, now=time.time(), mode=Mode.parse(mode), request_id=rid
        )

    def append_payload(self, payload: bytes) -> int:
        """Append an encoded entry (0 if the log is full, or closed) and wake who sleeps."""
        if self.closed:
            return 0
        seq = self.core.try_append(payload)
        if seq:
            self._after_append()
        return seq

    def _after_append(self) -> None:
        self.wakeups_sent += wake_sleepers(self.log, self.wakeups, self.wake_lines, self.index)
        self._schedule()

    # --- the loop -------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop, loop_name: str = "") -> None:
        """Register the wake-up fd and timers on ``loop`` (call from inside it)."""
        self._loop = loop
        self.loop_name = loop_name or type(loop).__module__.split(".")[0]
        self.wakeups.listen(loop, self.index, self._on_wake)
        self._safety = loop.call_later(SAFETY_TICK, self._on_safety)
        # Snapshots (recovery points, and those asked through the log by a
        # joining replica) are written by a forked child: the replica goes on.
        if self.fork_snapshots:
            self.children.install()
        timeout = self.apply_timeout
        if timeout is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, self._on_alarm)
            tick = min(0.25, timeout / 4)
            signal.setitimer(signal.ITIMER_REAL, tick, tick)

    def start_sampling(self) -> None:
        """Start measuring loop lag and rates (once serving: start-up is not lag)."""
        assert self._loop is not None
        self._sampler = self._loop.call_later(SAMPLE_EVERY, self._sample, self._loop.time())

    def _sample(self, scheduled: float) -> None:
        """Measure loop lag (how late this callback runs) and refresh the rates."""
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - scheduled - SAMPLE_EVERY)
        self.loop_lag = lag
        self.loop_lag_max = max(self.loop_lag_max * 0.99, lag)
        self.rates.update(self.core.machine.applied_entries, self.queries, time.monotonic())
        if self.blobs._live:
            self.blobs.collect(self.log.slowest_cursor())
        if self.persist.snapshots_on:
            self.persist.tick(time.time())
        if not self.closed:
            self._sampler = self._loop.call_later(SAMPLE_EVERY, self._sample, now)

    def _on_stall(self, entry: Any, took: float) -> None:
        """An apply took longer than the threshold, in wall-clock time: was it the apply?

        The core times applies with a wall clock (reading the thread's CPU
        time costs a system call, too much per entry).  A replica is pinned
        to one core, so when anything else runs there (the load generator,
        another program, a snapshot child) it waits in the run queue, mid-
        apply: measured under ``redis-benchmark -P 16``, applies of 0.2-0.4 ms
        of CPU took 30-540 ms of wall time, every one of them preempted (an
        involuntary context switch, the whole difference spent runnable in
        the run queue).  That is not a slow handler and must not send anyone
        looking for one (it shows as loop lag).  So, from the thread's usage
        since its batch began: less CPU than the threshold, and no voluntary
        context switch (a handler that blocks, sleeps or waits on I/O makes
        one), means the apply did not stall the replica: the machine did.
        """
        event = getattr(entry, "event", type(entry).__name__)
        before = self._batch_usage
        now = thread_usage()
        cpu = blocked = None
        if before is not None:
            cpu = max(0.0, now.ru_utime + now.ru_stime - before.ru_utime - before.ru_stime)
            blocked = now.ru_nvcsw - before.ru_nvcsw
        if cpu is not None and cpu < self.stall_threshold and not blocked:
            self.core.stalls -= 1  # counted by the core on the wall clock
            self.preempted += 1
            log.info(
                "replica %d was not running for most of the %.1f ms apply of seq=%d (%s; at "
                "most %.1f ms of CPU): another process had its core; not a stall",
                self.index,
                took * 1000,
                entry.seq,
                event,
                cpu * 1000,
            )
            return
        component = event.split(".", 1)[0] if "." in event else "-"
        log.warning(
            "stall kind=apply seq=%d event=%s component=%s took_ms=%.1f threshold_ms=%.0f",
            entry.seq,
            event,
            component,
            took * 1000,
            self.stall_threshold * 1000,
        )

    def digest_done(self, seq: int, digest: dict[str, str] | None) -> None:
        """A digest of the state at ``seq`` computed elsewhere (None: it failed)."""
        for divergence in self.core.digest_done(seq, digest, now=time.time()):
            self._on_divergence(divergence)
        if not self.closed:
            self._schedule()  # the report waits in the outbox

    def _on_divergence(self, d: Divergence) -> None:
        self.divergences = [*self.divergences[-9:], d]
        log.error(
            "DIVERGENCE seq=%d replicas=%d,%d component=%s: replicas hold different state; "
            "a handler is not deterministic (clock, randomness, I/O or set order?)",
            d.seq,
            d.replicas[0],
            d.replicas[1],
            d.component,
        )

    def _on_wake(self) -> None:
        self._awake()
        self._schedule()

    def _on_safety(self) -> None:
        assert self._loop is not None
        if not self.closed:
            self._safety = self._loop.call_later(SAFETY_TICK, self._on_safety)
            self.log.beat(self.index)  # the loop runs: the supervisor watches this
        core = self.core
        if core.parked:  # calls waiting for partials: are their holders still up?
            for applied in core.check_parked():
                self._deliver(applied)
        if core.machine.partitioned and core.ask_fetches():  # a holder asked died?
            self._schedule()  # the ask waits in the outbox
        if self.joining.waiting:
            self.joining.copy()
            if self.joining.check():
                self._schedule()
        elif self.core.ready():
            self._awake()
            self._schedule()
        if self.persist.held:  # a wake-up from the log writer is never waited for long
            self.persist.wake_writer()
            self.persist.release()
        self._fire_timers()

    def _awake(self) -> None:
        if self._asleep:
            self._asleep = False
            self.log.set_asleep(self.index, False)

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None and not self.joining.waiting:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self.joining.waiting or self.closed:
            return
        core = self.core
        if self.joining.catching_up and not self.joining.catch_up(self._deliver):
            self._schedule()  # ingress and timers run between batches
            return
        if core.gave_up and not self._verdict():
            return  # waiting: the safety tick looks again
        self._batch_usage = thread_usage()  # see _on_stall
        persist = self.persist
        if persist.held:
            persist.release()
        for applied in core.poll():
            self._deliver(applied)
        if self.fences.waiting:
            self.fences.check()
        if core.gave_up:
            self._on_gave_up()
            return
        if core.outbox:
            core.flush_outbox()
            self._after_append()
        if self.core.ready():
            self._schedule()
            return
        # Sleep: flag first (seq_cst), then look once more, so a producer that
        # published before seeing the flag is not missed.  Held replies wait
        # for the log writer, which wakes this replica when it releases one
        # (what it waits for is stored before the flag: mark_wanted).
        if persist.held:
            persist.mark_wanted()
        self._asleep = True
        self.log.set_asleep(self.index, True)
        if persist.held:
            persist.wake_writer()
            if persist.release():
                self._awake()
                self._schedule()
                return
        if self.core.ready():
            self._awake()
            self._schedule()
            return
        self._arm_timer()

    # --- apply timeouts and poison entries ---------------------------------------------------

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: interrupt an apply that has run past ``apply_timeout``."""
        began = self.core.applying
        timeout = self.apply_timeout
        if began and timeout is not None and time.perf_counter() - began > timeout:
            # ``applying`` stays set: a handler that swallows this (a bare
            # ``except:``) gets it again at the next tick.
            raise ApplyTimeout(f"apply ran past {timeout}s")

    def _on_gave_up(self) -> None:
        """An apply was interrupted: roll back to just before it, announce, wait."""
        core = self.core
        seq = core.gave_up
        log.error(
            "replica %d: gave up applying seq=%d after %.1fs; rolled back to before it, "
            "waiting for the other replicas",
            self.index,
            seq,
            self.apply_timeout or 0.0,
        )
        core.rollback()
        self.log.set_stuck(self.index, seq)

    def _verdict(self) -> bool:
        """Waiting at a given-up entry: True once it may be applied (poison or again)."""
        core = self.core
        seq = core.gave_up
        verdict = core.verdict()
        if verdict == "poison":
            self.poisoned_seen += 1
            log.error("replica %d: seq=%d is poison; applying it as an error", self.index, seq)
            for applied in core.apply_poisoned():
                self._deliver(applied)
        elif verdict == "again":
            log.warning("replica %d: seq=%d was applied elsewhere; applying again", self.index, seq)
            core.retry()
        else:
            return False
        self.log.set_stuck(self.index, 0)
        return True

    def _deliver_holding(self, applied: Applied) -> None:
        """``_deliver`` with a durable log: an owned outcome waits for the log writer."""
        if applied.owner or applied.waiter is not None or applied.effects:
            if applied.divergence is not None:
                self._on_divergence(applied.divergence)
                applied.divergence = None
            if applied.snapshot is not None:
                write_snapshot(self, applied)
                applied.snapshot = None
            if self.persist.hold(applied):
                return  # its reply and effects wait for the log writer
        self._deliver_now(applied)

    def _deliver_now(self, applied: Applied) -> None:
        """Resolve ``applied``'s waiter, write a snapshot it asked for, run its effects."""
        if applied.divergence is not None:
            self._on_divergence(applied.divergence)
        fut = applied.waiter
        if fut is not None and not fut.done():
            if applied.error is not None:
                fut.set_exception(applied.error)
            else:
                fut.set_result(applied.result)
        if applied.snapshot is not None:
            write_snapshot(self, applied)
        if applied.published is not None:  # every replica delivers to its own subscribers
            self.feeds.deliver(applied.published)
        # queued only where they run: on the owner, or for a partitioned part,
        # on the holder that performs it
        for fn, args, kwargs in applied.effects:
            self._run_effect(fn, args, kwargs)
        if not applied.owner:
            return
        for hook in self.owner_hooks:
            try:
                hook(applied)
            except Exception:
                self.effect_errors += 1
                log.exception(
                    "replica %d: ingress reply for seq %d failed", self.index, applied.seq
                )

    def _run_effect(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.effects_run += 1
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.effect_errors += 1
            log.exception("effect failed fn=%s", _name(fn))
            return
        finally:
            took = time.perf_counter() - t0
            if took > self.stall_threshold:
                self.effect_stalls += 1
                log.warning(
                    "stall kind=effect fn=%s took_ms=%.1f threshold_ms=%.0f",
                    _name(fn),
                    took * 1000,
                    self.stall_threshold * 1000,
                )
        if inspect.isawaitable(result):
            assert self._loop is not None
            task = self._loop.create_task(_await(result))
            self._tasks.add(task)
            task.add_done_callback(self._effect_done)

    def _effect_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.effect_errors += 1
            log.error("replica %d: effect failed: %r", self.index, task.exception())

    # --- timers ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        assert self._loop is not None
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - time.time())
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._fire_timers)

    def _fire_timers(self) -> None:
        if self.joining.active or self.closed:
            return
        if self.core.fire_due(time.time()):
            self._after_append()

    # --- joining ---------------------------------------------------------------------------

    def start_fresh(self) -> None:
        """A replica present from the log's beginning (its line was set live)."""
        self.core.enable_recovery()
        self.joining.joined.set()

    def start_join(self, pid: int) -> None:
        """Join a running service: hold the log, ask a live replica for a snapshot."""
        self.core.join(pid)
        self.joining.ask()

    async def joined(self) -> None:
        """Wait until this replica is live (immediately, unless it is joining)."""
        await self.joining.joined.wait()

    # --- stopping ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Apply everything published so far and let owned effects finish.

        Bound it with ``asyncio.timeout``: a dead producer's unpublished slot
        is only filled once the supervisor notices the death.
        """
        if self.joining.active or self.closed:
            return  # joining (nothing applied here to drain), or stopped already
        target = self.log.tail
        while self.core.machine.cursor < target and not self.closed:
            self._drain()
            await asyncio.sleep(0.001)
        persist = self.persist
        while persist.held and not self.closed:  # replies the log writer has yet to take
            persist.wake_writer()
            persist.release()
            await asyncio.sleep(0.001)
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def close(self, *, leave: bool = True) -> None:
        """Stop the loop's callbacks; ``leave`` marks the line absent (a clean exit).

        Idempotent.  Callbacks already scheduled (a drain, a group commit, an
        ingress callback that submits) still run after this, until the loop
        closes: they find ``closed`` set and do nothing, and what they submit
        is cancelled at once.  The log must stay mapped until the loop is
        closed (``_process.main`` releases it then).
        """
        if self.closed:
            return
        self.closed = True
        if self.apply_timeout is not None and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.children.close()  # their work is moot now; do not let them outlive us
        if leave:
            # Only the blobs every replica is past: another replica still
            # draining may have this one's next to apply.  The supervisor
            # deletes the rest once every replica is past them (or at its exit).
            self.blobs.collect(self.log.slowest_cursor())
        if self._loop is not None:
            self.wakeups.unlisten(self._loop, self.index)
        for handle in (self._timer, self._safety, self._sampler):
            if handle is not None:
                handle.cancel()
        for fut in self.core.drop_pending():
            fut.cancel()
        self.fences.cancel()
        for held in self.persist.drop():  # never acknowledged: the writer did not take them
            if held.waiter is not None:
                held.waiter.cancel()
        if leave:
            self.log.leave(self.index)

    def _stopped_future(self) -> asyncio.Future[Any]:
        """What a submit gets once the replica is closed: a future cancelled already."""
        assert self._loop is not None
        fut = self._loop.create_future()
        fut.cancel()
        return fut


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
