"""The context an update handler receives: the entry's replicated facts and its verbs.

Everything a handler may depend on comes from here, so that every replica
computes the same thing: ``ctx.now`` is the entry's replicated timestamp (never
the local clock), ``ctx.random`` is seeded from ``seq``.  Effects and replies
are *queued* and run by the owner only, after the entry's handlers finish.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._codec import Mode

if TYPE_CHECKING:
    from ._component import Component, EventRef
    from ._machine import StateMachine

__all__ = ("Context",)

C = TypeVar("C", bound="Component")


class Context:
    """Per-entry context passed as the first argument of every handler."""

    __slots__ = (
        "_async",
        "_effects",
        "_halted",
        "_machine",
        "_part",
        "_parts",
        "_published",
        "_random",
        "_replied",
        "_reply",
        "is_owner",
        "mode",
        "now",
        "origin",
        "replica",
        "request_id",
        "seq",
        "sub",
    )

    def __init__(
        self,
        machine: StateMachine,
        *,
        seq: int,
        now: float,
        origin: int,
        mode: Mode,
        is_owner: bool,
        request_id: str = "",
        sub: int = -1,
    ) -> None:
        self._machine = machine
        #: the entry's position in the log
        self.seq = seq
        #: the entry's replicated timestamp (seconds since the epoch)
        self.now = now
        #: the replica that appended the entry
        self.origin = origin
        #: the entry's ownership mode
        self.mode = mode
        #: True on the one replica that performs this entry's effects
        self.is_owner = is_owner
        #: the caller's idempotency key ("" if none)
        self.request_id = request_id
        #: the call's index in a batch entry (-1: the entry is this one call)
        self.sub = sub
        #: this replica's index (local: never let it change replicated state)
        self.replica = machine.index
        self._halted = False
        self._random: _random.Random | None = None
        self._effects: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._async: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._published: list[tuple[str, Any]] | None = None
        self._reply: Any = None
        self._replied = False
        #: the partition whose part of the call runs now ((component, partition) or None)
        self._part: tuple[str, int] | None = None
        #: what the call's partitioned parts did (``_partition.Parts``), None: it has none
        self._parts: Any = None

    @property
    def answers(self) -> bool:
        """Whether the caller may get this replica's result of the call (or of this part).

        Outside a partition's part it is :attr:`is_owner`.  In a part, it is
        the call's origin if that holds the partition, else every holder:
        each of them sends its partial and the first to arrive is used.  A
        handler may skip work whose only use is the result (a read inside a
        batch of writes) where it is False; it must still apply every write.
        """
        part = self._part
        if part is None:
            return self.is_owner
        return self._machine.answers_part(self.origin, part)

    @property
    def partition(self) -> int | None:
        """The partition whose part of the call runs now (None: not in a partitioned part)."""
        part = self._part
        return None if part is None else part[1]

    @property
    def random(self) -> _random.Random:
        """A ``random.Random`` seeded from ``seq``: the same sequence on every replica.

        Calls batched in one entry share its seq; each gets its own seed.
        """
        if self._random is None:
            seed = self.seq if self.sub < 0 else (self.seq << 20) | self.sub
            self._random = _random.Random(seed)
        return self._random

    # --- Cactus verbs ----------------------------------------------------------

    def halt(self) -> None:
        """Run no further handlers for the current occurrence of the current event."""
        self._halted = True

    def raise_event(self, event: EventRef, /, *args: Any, **kwargs: Any) -> Any:
        """Dispatch ``event`` now, synchronously and nested; returns its result."""
        return self._machine._dispatch(self, event, args, kwargs)

    def raise_async(self, event: EventRef, /, *args: Any, **kwargs: Any) -> None:
        """Dispatch ``event`` after this entry's handlers finish, before the next entry."""
        self._async.append((self._machine.resolve(event), args, kwargs))

    def raise_later(self, delay: float, event: EventRef, /, *args: Any, **kwargs: Any) -> int:
        """Arm a replicated timer firing ``event`` at ``ctx.now + delay``; returns its id.

        The timer fires exactly once in the replicated state (through a timer
        entry in the log), even if the replica that armed it dies.
        """
        deadline = self.now + max(0.0, delay)
        if self._part is not None:  # the partition's own timer, fired on its holders
            return self._machine.arm_part_timer(
                self._part, deadline, self._machine.resolve(event), args, kwargs
            )
        return self._machine.timers.arm(deadline, self._machine.resolve(event), args, kwargs)

    def cancel(self, timer_id: int) -> bool:
        """Cancel a replicated timer; False if it already fired or never existed."""
        if self._part is not None:
            return self._machine.cancel_part_timer(self._part, timer_id)
        if timer_id < 0:
            from ._partition import PartitionError

            raise PartitionError(
                f"timer {timer_id} is a partition's: only a handler of that partition cancels it"
            )
        return self._machine.timers.cancel(timer_id)

    def timer_deadline(self, timer_id: int) -> float | None:
        """When a pending timer is due (replicated time), or None."""
        if timer_id < 0:
            if self._part is None:
                from ._partition import PartitionError

                raise PartitionError(f"timer {timer_id} is a partition's: ask from its handler")
            return self._machine.part_timer_deadline(timer_id)
        return self._machine.timers.deadline(timer_id)

    # --- effects -------------------------------------------------------------------------

    def effect(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)`` to run on the owner after the entry applies.

        An effect must not change replicated state.  It may return an awaitable,
        which the runtime schedules.  Effects of an entry whose handlers raised
        are dropped.
        """
        if self.is_owner:
            self._effects.append((fn, args, kwargs))

    def publish(self, topic: str, message: Any) -> None:
        """Send ``message`` to ``topic``'s subscribers on every replica, once the entry applied.

        Publication is an ``every``-mode effect, whatever the entry's mode:
        each replica delivers the message to the subscribers connected to it
        (``State.subscribe``), when it has applied the entry, so a subscriber
        that then reads the state sees the write that published.  Nothing is
        published if a handler of the entry raised.  ``message`` is the
        replica's own copy of a replicated value: subscribers must not change it.
        """
        if self._part is not None:
            self._unsupported("publish")
        published = self._published
        if published is None:
            self._published = [(topic, message)]
        else:
            published.append((topic, message))

    def _unsupported(self, what: str) -> None:
        from ._partition import PartitionError

        assert self._part is not None
        name, pid = self._part
        raise PartitionError(
            f"{what} is not available in a partitioned component's handler "
            f"({name}, partition {pid}): only its holders run it; do it from a "
            "replicated component's handler bound to the same event"
        )

    def reply(self, value: Any) -> None:
        """Set the entry's result (instead of the handler's return value).

        Every replica computes the same result.  The replica that appended the
        entry resolves its ``submit()`` with it; ingress that answers actors
        from the owner (UDP, local clients) sends the owner's copy.
        """
        self._reply = value
        self._replied = True

    def component(self, cls: type[C] | str) -> C:
        """This replica's instance of a component, by class or name."""
        return self._machine.component(cls)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"<Context seq={self.seq} now={self.now:.6f} origin={self.origin} "
            f"mode={self.mode.name.lower()} owner={self.is_owner}>"
        )
