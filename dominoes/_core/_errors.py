"""Exceptions raised by dominoes.  Every one derives from :class:`DominoesError`."""

from __future__ import annotations

__all__ = (
    "ApplySuspendedError",
    "ApplyTimeout",
    "DominoesError",
    "DurabilityError",
    "LogUnavailableError",
    "EntryTooLargeError",
    "LayoutError",
    "LifecycleError",
    "LogFullError",
    "PoisonedEntryError",
    "QueryWroteStateError",
    "UnknownEventError",
)


class DominoesError(Exception):
    """Base class of every error dominoes raises on its own behalf."""


class LogFullError(DominoesError):
    """The log has no free slot: a ``*_nowait`` append was refused.

    The log never overwrites an entry that a live replica has not applied, so a
    full log is backpressure.  Retry later, or use the awaitable form, which
    waits for space.
    """


class DurabilityError(DominoesError):
    """The durable log cannot take updates now (its last write or fsync failed).

    Raised by ``submit``-family calls while the log writer reports an error
    (a full disk, an I/O error); reads go on.  Updates accepted before the
    error are acknowledged once the disk takes them; nothing acknowledged is
    lost.  The message says what failed, e.g. ``No space left on device``.
    """


class LogUnavailableError(DurabilityError):
    """The log's stream cannot be reached (``--log nats://``): updates and
    linearizable reads are refused until it can; ``local`` reads go on.

    Raised once the machine's bridge has failed to reach the NATS servers
    for a few seconds (a partition, every server down); updates already
    accepted wait, and go through once the stream is back.
    """


class EntryTooLargeError(DominoesError, ValueError):
    """An encoded entry needs more slots than the log allows for one entry."""

    def __init__(self, nbytes: int, limit: int) -> None:
        super().__init__(
            f"entry of {nbytes} bytes is larger than the log's limit of {limit} bytes "
            "per entry (raise slot_size or capacity, or send less per request)"
        )
        self.nbytes = nbytes
        self.limit = limit


class LayoutError(DominoesError):
    """A buffer does not hold a log of the layout and version this code expects."""


class LifecycleError(DominoesError, ValueError):
    """A replica-lifecycle call its line's current state does not allow.

    ``join``, ``set_live``, ``mark_dead`` and ``leave`` move a replica line
    between ``absent``, ``joining``, ``live`` and ``dead`` along the table in
    ``docs/design/log.md``; any other move is a caller's bug, refused before
    the line is touched.
    """

    def __init__(self, replica: int, state: str, operation: str, detail: str = "") -> None:
        message = f"replica {replica} is {state}: {operation}() is not allowed"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.replica = replica
        self.state = state
        self.operation = operation


class ApplySuspendedError(DominoesError, RuntimeError):
    """An ``async def`` handler awaited something that really suspended.

    Applying an entry is atomic: there is no ``await`` between the handlers of
    one entry on any replica.  Move the waiting part into an effect.
    """


class UnknownEventError(DominoesError, LookupError):
    """No handler is bound to the event an entry or a submit names."""


class QueryWroteStateError(DominoesError, RuntimeError):
    """A ``@query`` changed replicated state (detected in debug mode)."""


class PoisonedEntryError(DominoesError, RuntimeError):
    """The entry's apply did not finish within the apply timeout on any live replica.

    Every replica gave up on it, rolled its state back to just before it, and
    then applied it as this error instead (invariant 9, docs/design/invariants.md): the service
    keeps its state and goes on, and the entry's owner reports this error.
    """


class ApplyTimeout(BaseException):
    """Raised inside a handler whose apply overran the replica's apply timeout.

    A ``BaseException``, so that a handler's ``except Exception`` (and the
    machine's own, which turns exceptions into replicated outcomes) lets it
    through: what a timeout interrupted is not a replicated outcome, since
    another replica may have finished the same entry.  The runtime rolls the
    replica back to its recovery point instead.
    """
