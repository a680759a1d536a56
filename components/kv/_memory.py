"""maxmemory: an accounted size per key, deterministic eviction, Redis's OOM error.

What counts
-----------
A replica's own memory reading (RSS, ``sys.getsizeof``) differs between
replicas and between a replica and its restart, so it cannot decide anything
in the replicated state.  Instead every key has an **accounted size**, kept
in the replicated state and computed from the value alone: its bytes plus a
fixed overhead per key and per element (:func:`measure`).  ``used`` is their
sum; ``CONFIG SET maxmemory`` compares with it, and ``INFO memory`` shows it
as ``used_memory_dataset`` (the figure eviction acts on).

Keeping it current costs nothing while ``maxmemory`` is 0 (the default).
Once it is set, the first entry measures every key (once), and after each
entry the keys its writes name are measured again, amortised: a collection
is measured element by element only when its length has moved by an eighth
since the last full count, and scaled by its length in between.  Every input
is replicated state, so every replica computes the same sizes.

Deciding
--------
Before an entry's commands run (order -8 on both command events), if ``used``
is over ``maxmemory``: the policy evicts keys until it is under, choosing
with the entry's seeded random (``ctx.random``) from a list of the accounted
keys; ``*-lru`` (and ``*-lfu``, the same here) takes the least recently
*written* of 5 sampled keys (reads run on one replica and change no
replicated state), ``*-random`` one of them, ``volatile-ttl`` the nearest
deadline; ``volatile-*`` only keys with a deadline.  If it is still over
(``noeviction``, or nothing to evict), the entry's commands that may grow the
data (Redis's ``denyoom`` commands) answer ``OOM command not allowed when used
memory > 'maxmemory'.``; the others (reads, DEL, LPOP, EXPIRE, ...) run.  The
check is per entry: a batch that crosses the limit runs whole, and the next
entry is refused or evicts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final

from dominoes import Component, Context, on

from ._commands import Commands
from ._errors import KvError
from ._keyspace import Keyspace
from ._streams import Stream
from ._table import WRITE, Spec
from ._zsets import ZSet

__all__ = ("DENYOOM", "OOM", "Memory", "measure")

#: Redis 7.0's ``denyoom`` commands (``COMMAND`` on redis-server 7.0), and the
#: blocking forms that push: refused once ``used`` is over ``maxmemory``.
DENYOOM: Final = frozenset(
    b"APPEND BITFIELD BITOP BLMOVE BRPOPLPUSH COPY DECR DECRBY GEOADD GEORADIUS "
    b"GEORADIUSBYMEMBER GEOSEARCHSTORE GETSET HINCRBY HINCRBYFLOAT HMSET HSET HSETNX INCR "
    b"INCRBY INCRBYFLOAT LINSERT LMOVE LPUSH LPUSHX LSET MSET MSETNX PFADD PFMERGE PSETEX "
    b"RESTORE RPOPLPUSH RPUSH RPUSHX SADD SDIFFSTORE SET SETBIT SETEX SETNX SETRANGE "
    b"SINTERSTORE SORT SUNIONSTORE XADD XSETID ZADD ZDIFFSTORE ZINCRBY ZINTERSTORE "
    b"ZRANGESTORE ZUNIONSTORE EVAL EVALSHA FCALL".split()
)
OOM: Final = "OOM command not allowed when used memory > 'maxmemory'."
#: The internal command a refused one becomes (in no table: no client can send it).
_REFUSED: Final = b"\x00OOM"

#: Accounted overheads (bytes): per key, per collection element.
KEY_OVERHEAD: Final = 56
ELEMENT_OVERHEAD: Final = 40
SAMPLES: Final = 5
_LRU: Final = frozenset({b"allkeys-lru", b"allkeys-lfu", b"volatile-lru", b"volatile-lfu"})


def measure(key: bytes, value: Any) -> int:
    """The accounted size of ``key`` holding ``value``: the same on every replica."""
    size = KEY_OVERHEAD + len(key)
    t = type(value)
    if t is bytes:
        return size + len(value)
    if t is dict:
        return size + sum(len(k) + len(v) + ELEMENT_OVERHEAD for k, v in value.items())
    if t is deque or t is set:
        return size + sum(len(v) + ELEMENT_OVERHEAD for v in value)
    if t is ZSet:
        return size + sum(len(m) + 2 * ELEMENT_OVERHEAD for m in value.scores)
    if t is Stream:
        return size + sum(
            sum(map(len, fields)) + ELEMENT_OVERHEAD for fields in value.entries.values()
        )
    return size


class Memory(Component):
    """Accounted sizes, eviction and OOM (see the module doc)."""

    name = "memory"
    transient: ClassVar[tuple[str, ...]] = (
        "keyspace",
        "table",
        "settings",
        "keys",
        "_plan",
        "exempt",
    )

    def __init__(
        self, keyspace: Keyspace, table: dict[bytes, Spec], settings: Any, keys: Any
    ) -> None:
        self.keyspace = keyspace
        self.table = table
        #: the replicated CONFIG SET values (``ServerConfig``) and last-write times (``Keys``)
        self.settings = settings
        self.keys = keys
        self._plan: dict[bytes, Spec] | None = None
        #: command name -> whether this call of it may run over the limit anyway (a
        #: script or function whose flags say ``no-writes`` or ``allow-oom``); links
        #: to the scripting components, set when the service is composed
        self.exempt: dict[bytes, Callable[[list[bytes]], bool]] = {}
        #: accounting is on (maxmemory was set): key -> [size, length when last counted, size then]
        self.active = False
        self.sizes: dict[bytes, list[int]] = {}
        self.used = 0
        #: the accounted keys, for sampling in O(1), and each one's index in it
        self.order: list[bytes] = []
        self.where: dict[bytes, int] = {}
        self.evicted = 0
        self.refused = 0

    # --- configuration -------------------------------------------------------------------

    def limit(self) -> int:
        return int(self.settings.config.get(b"maxmemory", b"0"))

    def policy(self) -> bytes:
        return bytes(self.settings.config.get(b"maxmemory-policy", b"noeviction"))

    # --- before the commands: evict, or refuse --------------------------------------------

    @on(Commands.run, order=-8)
    @on(Commands.exec, order=-8)
    def check(self, ctx: Context, commands: list[list[bytes]], client: int = 0) -> None:
        limit = self.limit()
        if not limit:
            if self.active:
                self._stop()
            return
        if not self.active:
            self._start()
        if self.used <= limit:
            return
        if len(self.order) != len(self.keyspace.values):
            self.reconcile()  # keys expired, flushed or made by a script meanwhile
            if self.used <= limit:
                return
        self._evict(ctx, limit)
        if self.used <= limit:
            return
        exempt = self.exempt
        for args in commands:
            name = args[0]
            if name in DENYOOM and not (name in exempt and exempt[name](args)):
                args[0:1] = [_REFUSED, args[0]]
                self.refused += 1

    def _refused(self, ctx: Context, args: list[bytes]) -> Any:
        raise KvError(OOM)

    def internal_commands(self) -> dict[bytes, Any]:
        return {_REFUSED: self._refused}

    def _evict(self, ctx: Context, limit: int) -> None:
        policy = self.policy()
        if policy == b"noeviction":
            return
        volatile = policy.startswith(b"volatile-")
        deadlines = self.keyspace.deadlines
        rng = ctx.random
        order = self.order
        while self.used > limit and order:
            picks = [order[rng.randrange(len(order))] for _ in range(SAMPLES)]
            if volatile:
                picks = [k for k in picks if k in deadlines]
                if not picks:
                    picks = [k for k in order if k in deadlines][:SAMPLES]
                    if not picks:
                        return  # no key with a deadline: nothing to evict
            if policy in _LRU:
                written = self.keys.written
                victim = min(picks, key=lambda k: (written.get(k, 0), k))
            elif policy == b"volatile-ttl":
                victim = min(picks, key=lambda k: (deadlines[k], k))
            else:
                victim = picks[0]
            self.keyspace.remove(victim)
            self._forget(victim)
            self.evicted += 1

    # --- after the commands: measure what they wrote ---------------------------------------

    @on(Commands.run, order=9)
    @on(Commands.exec, order=9)
    def account(self, ctx: Context, commands: list[list[bytes]], client: int = 0) -> None:
        if not self.active:
            return
        plan = self._writes
        for args in commands:
            spec = plan.get(args[0])
            if spec is not None:
                for key in spec.keys(args):
                    self._refresh(key)

    @property
    def _writes(self) -> dict[bytes, Spec]:
        if self._plan is None:
            self._plan = {
                name: spec for name, spec in self.table.items() if spec.kind is WRITE and spec.first
            }
        return self._plan

    def _refresh(self, key: bytes) -> None:
        value = self.keyspace.values.get(key)
        if value is None:
            self._forget(key)
            return
        entry = self.sizes.get(key)
        n = len(value)
        if entry is not None and type(value) is not bytes and entry[1]:
            counted, at = entry[1], entry[2]
            if counted * 7 <= n * 8 <= counted * 9:  # within an eighth: scale
                size = at * n // counted
                self.used += size - entry[0]
                entry[0] = size
                return
        size = measure(key, value)
        if entry is None:
            self.sizes[key] = [size, n, size]
            self.where[key] = len(self.order)
            self.order.append(key)
            self.used += size
        else:
            self.used += size - entry[0]
            entry[0], entry[1], entry[2] = size, n, size

    def _forget(self, key: bytes) -> None:
        entry = self.sizes.pop(key, None)
        if entry is None:
            return
        self.used -= entry[0]
        i = self.where.pop(key)
        last = self.order.pop()
        if last != key:
            self.order[i] = last
            self.where[last] = i

    def _start(self) -> None:
        self.active = True
        self.sizes, self.order, self.where, self.used = {}, [], {}, 0
        for key in list(self.keyspace.values):
            self._refresh(key)

    def _stop(self) -> None:
        self.active = False
        self.sizes, self.order, self.where, self.used = {}, [], {}, 0

    def reconcile(self) -> None:
        """Forget the keys that went without a command naming them (expired, flushed), and
        count those that came that way (a script's, a served BLMOVE's destination)."""
        values = self.keyspace.values
        for key in [k for k in self.order if k not in values]:
            self._forget(key)
        for key in [k for k in values if k not in self.sizes]:
            self._refresh(key)

    def info(self) -> dict[str, Any]:
        return {
            "used_memory_dataset": self.used,
            "maxmemory": self.limit(),
            "maxmemory_policy": self.policy().decode(),
            "evicted_keys": self.evicted,
        }

    # --- snapshots -----------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.active = bool(state["active"])
        self.sizes = {bytes(k): [int(x) for x in v] for k, v in state["sizes"].items()}
        self.used = int(state["used"])
        self.order = [bytes(k) for k in state["order"]]
        self.where = {k: i for i, k in enumerate(self.order)}
        self.evicted = int(state["evicted"])
        self.refused = int(state["refused"])
