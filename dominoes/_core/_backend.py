"""The log-backend interface: everything a replica needs from its log.

A *backend* is one implementation of the totally ordered log.  Two exist:

``shm``
    the ring in a shared memfd (``dominoes._runtime._shm``), one per machine,
    written by every replica process with atomics;
``memory``
    the same ring in a ``bytearray`` with plain words, for replicas driven in
    one thread (``testing.Cluster``, in-process runtime tests).

The next ones (a durable log file, NATS JetStream) implement the same
protocols.  ``docs/design/log-backend.md`` states each call's contract and the
invariant it carries; ``tests/conformance`` is the suite every backend runs.

Three protocols split the work by who calls it:

* :class:`LogBackend`: a replica's handle (append, read, claim, progress,
  membership, waiting).  ``ReplicaCore`` and the runtime's ``Replica`` use
  nothing else of the log.
* :class:`SupervisedLog`: the supervisor's handle, a ``LogBackend`` that can
  also judge and repair (heartbeats, poison verdicts, a dead producer's
  unpublished positions).
* ``Wakeups`` (in ``dominoes._runtime._wakeups``, being I/O): how a producer
  wakes a sleeping replica, and how a replica waits on its event loop (an
  eventfd per replica for ``shm``).
* :class:`LogHost` / :class:`LogFactory`: the supervisor's side: create the
  log, hand it to replica processes, watch membership.  ``dominoes run --log
  NAME`` loads the factory named ``NAME`` from the ``dominoes.logs`` entry-point
  group.

Designed for backends where an append completes later (a remote sequencer):
``try_append`` returns 0 for "no room now, retry" and a seq once the entry's
position is fixed; a backend whose positions are fixed remotely publishes the
entry at that seq when it arrives, and ``read`` returns None until then, as
the ring does for a reserved slot not yet written.  A cursor that survives a
restart is the replica's own ``join(cursor=...)``: nothing in the protocol
assumes a replica starts at the log's current tail.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._log import KIND_ENTRY, LogStatistics

__all__ = ("LogBackend", "LogFactory", "LogHost", "SupervisedLog")


@runtime_checkable
class LogBackend(Protocol):
    """One participant's handle on the log.  See the module doc and the design doc."""

    # --- shape -------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Slots in the log: at most this many unapplied positions exist at once."""
        ...

    @property
    def max_entry_bytes(self) -> int:
        """The largest payload one ``try_append`` takes."""
        ...

    # --- appending ------------------------------------------------------------------
    def try_append(self, replica: int, payload: bytes, kind: int = KIND_ENTRY, /) -> int:
        """Give ``payload`` the next position; its seq, or 0 when the log is full.

        Never overwrites an entry some holding replica has not applied
        (invariant 4); 0 is backpressure, and the caller retries later.
        """
        ...

    # --- durability ---------------------------------------------------------------------
    @property
    def acked(self) -> int:
        """Every seq below it may be acknowledged; 0 when the log is not durable.

        A replica holds the reply to an owned entry at or above it (and its
        effects) until it passes.
        """
        ...

    @property
    def writer_line(self) -> int | None:
        """The line of the process that makes the log durable, or None."""
        ...

    @property
    def write_error(self) -> int:
        """The errno of the durable log's last failed write (0: healthy)."""
        ...

    def wake_writer(self) -> bool:
        """True if the writer was asleep and this caller cleared its flag (then signal it)."""
        ...

    def set_wants(self, replica: int, seq: int, /) -> None:
        """``replica`` holds replies until ``acked`` passes ``seq - 1`` (0: none); store it
        before the asleep flag, so the writer wakes only sleepers it releases."""
        ...

    def durability_word(self, offset: int, /) -> int:
        """A word the durable log publishes (``D_*`` of the layout)."""
        ...

    def set_durability_word(self, offset: int, value: int, /) -> None:
        """Store a durability word (the writer; a replica's last snapshot)."""
        ...

    def raise_durability_word(self, offset: int, value: int, /) -> bool:
        """Raise a durability word to ``value`` (atomic max); True if this call raised it."""
        ...

    # --- across machines ---------------------------------------------------------------
    @property
    def origin(self) -> int:
        """This machine's id when entries come from a log shared across machines
        (``KIND_STAMPED``); 0 when this log is the whole log."""
        ...

    # --- reading --------------------------------------------------------------------
    @property
    def tail(self) -> int:
        """The next seq to be given out (every seq below it is reserved)."""
        ...

    def published(self, seq: int, /) -> bool:
        """True once the entry at ``seq`` can be read."""
        ...

    def read(self, seq: int, /) -> tuple[int, int, bytes] | None:
        """``(kind, nslots, payload)`` of the entry at ``seq``, or None if unpublished.

        The next entry is at ``seq + nslots``.  Every reader sees the same
        bytes at the same seq (invariant 1).
        """
        ...

    # --- ownership --------------------------------------------------------------------
    def claim(self, seq: int, replica: int, /) -> bool:
        """Try to own the entry at ``seq``; exactly one replica ever gets True (invariant 3)."""
        ...

    # --- progress ---------------------------------------------------------------------
    def advance(self, replica: int, cursor: int, /) -> None:
        """``replica`` no longer needs entries below ``cursor`` (slots may be reused)."""
        ...

    def applied(self, replica: int, cursor: int, /) -> None:
        """``replica`` applied everything below ``cursor``: advance, and raise ``completed``."""
        ...

    @property
    def completed(self) -> int:
        """A seq every entry below which some live replica has applied (invariant 8)."""
        ...

    def cursor(self, replica: int, /) -> int:
        """The next seq ``replica`` applies."""
        ...

    def slowest_cursor(self) -> int:
        """The lowest cursor among replicas holding the log."""
        ...

    # --- membership -------------------------------------------------------------------
    def join(self, replica: int, *, pid: int = 0, cursor: int | None = None) -> int:
        """Hold the log from ``cursor`` (default: the tail) as a joining replica."""
        ...

    def set_live(self, replica: int, cursor: int | None = None, /) -> None:
        """A joined replica applies from ``cursor`` on and counts for ``completed``."""
        ...

    def leave(self, replica: int, /) -> None:
        """A clean exit: stop holding the log."""
        ...

    def mark_dead(self, replica: int, /) -> None:
        """A dead replica stops holding the log (invariant 7)."""
        ...

    def state(self, replica: int, /) -> int:
        """``ReplicaState`` of ``replica``."""
        ...

    def pid(self, replica: int, /) -> int:
        """The pid ``replica`` last joined with (0: none given): a new one means a
        new incarnation."""
        ...

    def replicas_in(self, states: frozenset[int], /) -> list[int]:
        """The replicas whose state is one of ``states``."""
        ...

    # --- waiting and liveness -----------------------------------------------------------
    def set_asleep(self, replica: int, asleep: bool, /) -> None:
        """The reader's half of the wake-up protocol (store, then re-check ``published``)."""
        ...

    def take_sleepers(self, replicas: int | None = None, /) -> list[int]:
        """The producer's half: replicas asleep now, whose flag this call cleared."""
        ...

    def beat(self, replica: int, /) -> None:
        """``replica``'s loop is running (the supervisor's heartbeat)."""
        ...

    # --- poison entries (invariant 9) --------------------------------------------------
    def set_stuck(self, replica: int, seq: int, /) -> None:
        """``replica`` gave up applying ``seq`` (0: not stuck)."""
        ...

    @property
    def poisoned(self) -> int:
        """The seq declared poison by the supervisor (0: none)."""
        ...

    # --- statistics --------------------------------------------------------------------
    def statistics(self) -> LogStatistics:
        """Shape, tail and membership, as this handle sees them."""
        ...


@runtime_checkable
class SupervisedLog(LogBackend, Protocol):
    """The supervisor's handle: a replica's calls, and those that judge and repair.

    The supervisor watches every line (heartbeats, gave-up seqs), declares
    poison entries, and makes a dead producer's unpublished positions no-ops
    so that nobody waits on them (invariant 7).  ``LogHost.log`` gives one.
    """

    @property
    def max_replicas(self) -> int:
        """Lines in the log: replicas first, then local clients."""
        ...

    def heartbeat(self, replica: int, /) -> int:
        """A counter ``beat`` bumps; it stops moving when a replica's loop does."""
        ...

    def stuck(self, replica: int, /) -> int:
        """The seq ``replica`` gave up applying (0: none)."""
        ...

    def declare_poisoned(self, seq: int, /) -> None:
        """Every live replica gave up on ``seq``: each applies it as an error (invariant 9)."""
        ...

    def fill_abandoned(self, dead: int, /) -> int:
        """Publish no-ops where the dead line reserved and never published; how many."""
        ...

    def recovery_pending(self, dead: int, /) -> bool:
        """The dead line may still own unpublished positions (fill before it rejoins)."""
        ...

    def announcer(self, seq: int, /) -> int | None:
        """The line that announced a reservation covering ``seq``, if any."""
        ...


class LogHost(Protocol):
    """One process's hold on one backend instance: the supervisor's, or a replica's.

    The supervisor gets one from :meth:`LogFactory.create`; a replica process
    from :meth:`LogFactory.attach`, given the handles the supervisor passed.
    """

    @property
    def log(self) -> SupervisedLog:
        """This process's handle (the supervisor's: membership, dead replicas, verdicts)."""
        ...

    def handles(self) -> list[int]:
        """File descriptors a replica process inherits to reach this log."""
        ...

    def close(self) -> None:
        """Release the log (replicas still holding it keep it alive)."""
        ...


class LogFactory(Protocol):
    """What a ``dominoes.logs`` entry point names: creates hosts, attaches replicas."""

    @property
    def name(self) -> str:
        """The backend's name (``--log NAME``)."""
        ...

    def create(
        self,
        *,
        capacity: int,
        slot_size: int,
        replicas: int,
        max_entry_slots: int | None,
        first: int = 1,
    ) -> LogHost:
        """A new, empty log for ``replicas`` replicas (in the supervisor).

        ``first`` is the seq its first entry gets: above 1 when a durable
        service restarts after the entries its files hold.
        """
        ...

    def attach(self, handles: list[int]) -> LogHost:
        """Reach a log :meth:`create` made, in another process, from its ``handles()``.

        Raises ``ValueError`` for a backend whose log cannot be reached from
        another process.
        """
        ...
