"""The expiry micro-protocol: lazy expiry ahead of every command, active expiry by timer.

Time is replicated time only
----------------------------
A deadline is milliseconds of ``ctx.now``, the entry's timestamp in the log,
and every decision to delete is taken inside an apply from ``ctx.now`` too, so
a key expires at the same log position on every replica, whatever their clocks.

* **Lazy**: :meth:`Expiry.lazy` is bound at order -10 to both command events.
  Before any command of an entry runs, it deletes the keys the entry names
  whose deadline is at or before ``ctx.now`` (WATCH's check does the same
  for the keys a transaction watches).
* **Active**: one replicated timer (``ctx.raise_later``) is armed for the
  earliest deadline, rounded up to :data:`GRANULE_MS`.  When it fires (a timer
  entry in the log, fired exactly once even if the replica that armed it
  died), :meth:`Expiry.sweep` deletes up to :data:`SWEEP_MAX` due keys and
  arms the timer for the next one.
* **Reads** (local queries) see a key past its deadline, by the local clock,
  as absent, without deleting it (``Keyspace.get``).

The sweep finds due keys through a heap of ``(deadline, key)``.  It is an
index, not state: it is ``transient`` (rebuilt from ``Keyspace.deadlines``
after a snapshot is restored) and may hold stale pairs, which are skipped.
Pairs come off it in ``(deadline, key)`` order whatever its layout, so every
replica deletes the same keys in the same sweep.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar, Final

from dominoes import Component, Context, on, update

from ._commands import Commands
from ._errors import KvError, parse_int
from ._keyspace import Keyspace, deadline_ms, now_ms
from ._table import Spec, command

__all__ = ("GRANULE_MS", "SWEEP_MAX", "Expiry")

#: Timer granularity: deadlines within one granule share one timer entry, so
#: keys expiring every millisecond cost at most 1000/GRANULE_MS entries a second.
GRANULE_MS: Final = 10
#: Most keys one sweep deletes; the rest wait for the next sweep (armed at once),
#: so one timer entry never stalls the replicas for long.
SWEEP_MAX: Final = 1000


def _granule(deadline: int) -> int:
    return -(-deadline // GRANULE_MS) * GRANULE_MS


class Expiry(Component):
    """Lazy and active expiry, and the TTL commands (EXPIRE, TTL, PERSIST, ...)."""

    name = "expiry"
    transient: ClassVar[tuple[str, ...]] = ("keyspace", "table", "_heap", "_heap_stale")

    #: the event the sweep timer raises (a partitioned KV's fires into its partition)
    sweep_event: ClassVar[str] = "expiry.sweep"

    def __init__(self, keyspace: Keyspace, table: dict[bytes, Spec]) -> None:
        self.keyspace = keyspace
        keyspace.expiry = self
        self.table = table
        #: the pending sweep timer's id (0: none) and when it is due (ms)
        self.timer = 0
        self.timer_at = 0
        #: keys deleted because they expired
        self.expired = 0
        self._heap: list[tuple[int, bytes]] = []
        self._heap_stale = False

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._heap = []
        self._heap_stale = True

    # --- lazy expiry -----------------------------------------------------------------------

    @on(Commands.run, order=-10)
    @on(Commands.exec, order=-10)
    def lazy(self, ctx: Context, commands: list[list[bytes]], client: int = 0) -> None:
        ks = self.keyspace
        deadlines = ks.deadlines
        if not deadlines:
            return
        now = now_ms(ctx)
        table = self.table
        for args in commands:
            spec = table.get(args[0])
            if spec is None or not spec.first:
                continue
            for key in spec.keys(args):
                deadline = deadlines.get(key)
                if deadline is not None and deadline <= now:
                    ks.remove(key)
                    self.expired += 1

    # --- active expiry ---------------------------------------------------------------------

    def scheduled(self, ctx: Context, key: bytes, deadline: int) -> None:
        """Keyspace calls this for every deadline it sets."""
        if not self._heap_stale:
            heap = self._heap
            heapq.heappush(heap, (deadline, key))
            if len(heap) > 2 * len(self.keyspace.deadlines) + 1024:
                self._heap_stale = True  # mostly stale pairs: rebuild at the next sweep
        due = _granule(deadline)
        if not self.timer or due < self.timer_at:
            self._arm(ctx, due)

    def flushed(self, ctx: Context) -> None:
        """Keyspace calls this when every key is gone (FLUSHALL)."""
        if self.timer:
            ctx.cancel(self.timer)
        self.timer = self.timer_at = 0
        self._heap = []
        self._heap_stale = False

    def _arm(self, ctx: Context, at: int) -> None:
        if self.timer:
            ctx.cancel(self.timer)
        # +1 ms: the timer's float deadline must not round below `at`
        now = now_ms(ctx)
        delay = (at - now + 1) / 1000 if at > now else 0.0
        self.timer = ctx.raise_later(delay, self.sweep_event)
        self.timer_at = at

    def _rebuild(self) -> None:
        self._heap = [(d, k) for k, d in self.keyspace.deadlines.items()]
        heapq.heapify(self._heap)
        self._heap_stale = False

    @update
    def sweep(self, ctx: Context) -> int:
        """The expiry timer fired: delete due keys, arm the timer for the next."""
        self.timer = self.timer_at = 0
        if self._heap_stale:
            self._rebuild()
        ks = self.keyspace
        heap, deadlines = self._heap, ks.deadlines
        now = now_ms(ctx)
        deleted = 0
        while heap:
            deadline, key = heap[0]
            if deadlines.get(key) != deadline:
                heapq.heappop(heap)
                continue
            if deadline > now or deleted >= SWEEP_MAX:
                break
            heapq.heappop(heap)
            ks.remove(key)
            deleted += 1
        self.expired += deleted
        if heap:
            self._arm(ctx, max(_granule(heap[0][0]), now))
        return deleted

    # --- commands --------------------------------------------------------------------------

    @command("EXPIRE", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("PEXPIRE", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("EXPIREAT", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("PEXPIREAT", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def expire(self, ctx: Context, args: list[bytes]) -> int:
        """EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, in Redis 7.0's order of checks.

        The options first (an unknown or incompatible one wins over a bad
        time), then the time (not an integer; overflowing 64 bits of ms when
        converted or added to now), then the key (missing: 0).  A time at or
        before now deletes the key.
        """
        name = args[0]
        now = now_ms(ctx)
        nx = xx = gt = lt = False
        for opt in args[3:]:
            o = opt.upper()
            if o == b"NX":
                nx = True
            elif o == b"XX":
                xx = True
            elif o == b"GT":
                gt = True
            elif o == b"LT":
                lt = True
            else:
                raise KvError(f"ERR Unsupported option {opt.decode('utf-8', 'replace')}")
        if nx and (xx or gt or lt):
            raise KvError("ERR NX and XX, GT or LT options at the same time are not compatible")
        if gt and lt:
            raise KvError("ERR GT and LT options at the same time are not compatible")
        when = deadline_ms(
            parse_int(args[2]),
            seconds=name in (b"EXPIRE", b"EXPIREAT"),
            relative=name in (b"EXPIRE", b"PEXPIRE"),
            now=now,
            command=name.decode().lower(),
        )
        ks = self.keyspace
        key = args[1]
        if ks.get(key, now) is None:
            return 0
        current = ks.deadlines.get(key)
        if nx and current is not None:
            return 0
        if xx and current is None:
            return 0
        if gt and (current is None or when <= current):
            return 0
        if lt and current is not None and when >= current:
            return 0
        if when <= now:
            ks.remove(key)
            return 1
        ks.set_deadline(ctx, key, when)
        ks.bump(key)
        return 1

    def _deadline(self, key: bytes, now: int) -> int:
        """``key``'s deadline in ms; -2 if it does not exist (or is past it), -1 if it has none."""
        ks = self.keyspace
        if ks.get(key, now) is None:
            return -2
        return ks.deadlines.get(key, -1)

    @command("TTL", 2, keys=(1, 1, 1), flags=("fast",))
    @command("PTTL", 2, keys=(1, 1, 1), flags=("fast",))
    def ttl(self, now: int, args: list[bytes]) -> int:
        deadline = self._deadline(args[1], now)
        if deadline < 0:
            return deadline
        left = max(0, deadline - now)
        return left if args[0] == b"PTTL" else (left + 500) // 1000

    @command("EXPIRETIME", 2, keys=(1, 1, 1), flags=("fast",))
    @command("PEXPIRETIME", 2, keys=(1, 1, 1), flags=("fast",))
    def expiretime(self, now: int, args: list[bytes]) -> int:
        deadline = self._deadline(args[1], now)
        if deadline < 0:
            return deadline
        return deadline if args[0] == b"PEXPIRETIME" else deadline // 1000

    @command("PERSIST", 2, write=True, keys=(1, 1, 1), flags=("fast",))
    def persist(self, ctx: Context, args: list[bytes]) -> int:
        ks = self.keyspace
        if ks.get(args[1], now_ms(ctx)) is None or not ks.clear_deadline(args[1]):
            return 0
        ks.bump(args[1])
        return 1
