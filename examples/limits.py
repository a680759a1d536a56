"""Micro-protocols to add to a running ``examples.counter`` service, through its log.

Start the counter, then change it while it serves::

    dominoes run examples.counter:service --replicas 2 --port 7000 &
    dominoes reconfigure counter bind Counter.incr examples.limits:cap \
        --order -1 --static '{"limit": 100}'
    dominoes reconfigure counter add examples.limits:Audit

``cap`` refuses an increment above ``limit`` (``INCR k 500`` answers ``ERR
...``). Bind it at an order below 0: handlers of one event run in ascending
order and ``Counter.incr`` runs at 0, so at ``--order -1`` the refusal comes
before the increment; bound after it, the increment would already be applied
when the error is raised; ``Audit`` counts every increment per key from the log position it was
added at, on every replica (``dominoes stats counter --json`` shows its size).
``dominoes reconfigure counter unbind ID`` and ``... remove audit`` undo them.
"""

from __future__ import annotations

from typing import ClassVar

from dominoes import Component, Context, on, query, update


def cap(ctx: Context, key: str, by: int = 1, *, limit: int) -> None:
    """Bound before ``Counter.incr``: refuse increments larger than ``limit``."""
    if by > limit:
        raise ValueError(f"increment {by} is over the limit of {limit}")


class Audit(Component):
    """How many increments each key got, since this component was added."""

    name: ClassVar[str] = "audit"

    def __init__(self) -> None:
        self.increments: dict[str, int] = {}
        #: the log position of the last increment seen
        self.last_seq = 0

    @on("Counter.incr", order=1)
    def saw(self, ctx: Context, key: str, by: int = 1) -> None:
        self.increments[key] = self.increments.get(key, 0) + 1
        self.last_seq = ctx.seq

    @update
    def reset(self, ctx: Context, key: str) -> int:
        """Forget ``key``'s count; the count it had."""
        return self.increments.pop(key, 0)

    @query
    def of(self, key: str) -> int:
        return self.increments.get(key, 0)
