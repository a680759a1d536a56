"""The keyspace micro-protocol: key -> value, deadline and version, and the key commands.

State (replicated)
------------------
``values``
    key -> value; the value's Python type is the Redis type: ``bytes`` a
    string, ``dict`` a hash, ``deque`` a list, ``set`` a set, ``ZSet`` a
    sorted set.  An empty container is never stored (Redis deletes a hash,
    list, set or sorted set that becomes empty).
``deadlines``
    key -> expiry time in milliseconds of *replicated* time (``ctx.now``).
    The expiry micro-protocol (``_expiry.py``) deletes keys when they are due.
``watched``, ``versions``, ``tick``
    For WATCH, and only for watched keys, so that writes to other keys pay
    nothing: ``watched`` counts the clients watching a key; every write or
    deletion of a watched key takes the next ``tick`` as its version.  A
    transaction conflicts when a key's version is newer than the tick its
    client saw when the WATCH applied (``_commands.py``).

Reads from the local state (queries) pass the local clock as ``now`` and see
a key past its deadline as absent without deleting it: queries never write.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from dominoes import Component, Context

from ._errors import INT64_MAX, INT64_MIN, KvError, parse_int, syntax_error
from ._glob import glob_matcher
from ._resp import OK, Status
from ._streams import Stream
from ._table import command
from ._zsets import ZSet

if TYPE_CHECKING:
    from ._expiry import Expiry

__all__ = ("Keyspace", "Value", "deadline_ms", "invalid_expire_time", "now_ms", "type_name")

Value: TypeAlias = bytes | dict[bytes, bytes] | deque[bytes] | set[bytes] | ZSet | Stream

#: SCAN walks a 32-bit hash space; one call returns at least 1/SCAN_PAGES of
#: the keyspace (or COUNT keys if more), so a full scan costs O(SCAN_PAGES * n)
#: however small COUNT is.
SCAN_PAGES: Final = 64
_HASH_MASK: Final = 0xFFFFFFFF

_TYPES: Final = {
    bytes: "string",
    dict: "hash",
    deque: "list",
    set: "set",
    ZSet: "zset",
    Stream: "stream",
}
#: A value's type in snapshots (``"z"`` was taken by sets: a sorted set is ``"Z"``).
_TAGS: Final = {bytes: "s", dict: "h", deque: "l", set: "z", ZSet: "Z", Stream: "x"}


def now_ms(ctx: Context) -> int:
    """The entry's replicated time in milliseconds."""
    return int(ctx.now * 1000)


#: The seconds a 64-bit millisecond count holds: C's ``LLONG_MAX / 1000`` and
#: ``LLONG_MIN / 1000``, which truncate toward zero (Python's ``//`` floors,
#: and ``INT64_MIN // 1000`` seconds would overflow once multiplied by 1000).
SECONDS_MAX: Final = INT64_MAX // 1000
SECONDS_MIN: Final = -(-INT64_MIN // 1000)


def deadline_ms(
    when: int, *, seconds: bool, relative: bool, now: int, command: str, positive: bool = False
) -> int:
    """The absolute deadline, in ms, that ``when`` names, checked as Redis 7.0 checks it.

    ``when`` is in seconds or milliseconds, from ``now`` or since the epoch.
    Redis refuses, with ``ERR invalid expire time in '<command>' command``, a
    time whose conversion to milliseconds or whose sum with ``now`` leaves the
    64-bit range (``expireGenericCommand``), so it never stores a wrapped
    deadline.  ``positive``: SET, SETEX, PSETEX and GETEX also refuse a time
    at or below zero (``getExpireMillisecondsOrReply``); EXPIRE and its kin
    take one and delete the key.
    """
    if positive and when <= 0:
        raise invalid_expire_time(command)
    if seconds:
        if not SECONDS_MIN <= when <= SECONDS_MAX:
            raise invalid_expire_time(command)
        when *= 1000
    if relative:
        if when > INT64_MAX - now:
            raise invalid_expire_time(command)
        when += now
    return when


def invalid_expire_time(command: str) -> KvError:
    return KvError(f"ERR invalid expire time in '{command}' command")


def type_name(value: Value | None) -> str:
    return "none" if value is None else _TYPES[type(value)]


class Keyspace(Component):
    """Keys, their values, deadlines and versions; DEL, EXISTS, TYPE, KEYS, SCAN, ..."""

    name = "keyspace"
    transient: ClassVar[tuple[str, ...]] = ("expiry", "blocked", "ready")

    def __init__(self) -> None:
        self.values: dict[bytes, Value] = {}
        self.deadlines: dict[bytes, int] = {}
        self.watched: dict[bytes, int] = {}
        self.versions: dict[bytes, int] = {}
        self.tick = 0
        #: the expiry micro-protocol, told about every new deadline (set by Expiry)
        self.expiry: Expiry | None = None
        #: key -> the blocked clients waiting on it (``Blocking.queues``, set by Blocking)
        self.blocked: dict[bytes, list[int]] = {}
        #: keys created while clients wait on them, in order, until Blocking serves them
        self.ready: dict[bytes, None] = {}

    # --- the API of the data-type components -----------------------------------------------

    def get(self, key: bytes, now: int) -> Value | None:
        """The live value of ``key``; a key past its deadline is absent."""
        value = self.values.get(key)
        if value is not None and self.deadlines:
            deadline = self.deadlines.get(key)
            if deadline is not None and deadline <= now:
                return None
        return value

    def put(self, key: bytes, value: Value) -> None:
        """Store ``value`` (its deadline, if any, is kept)."""
        self.values[key] = value
        if self.watched:
            self.bump(key)
        if self.blocked and key in self.blocked:
            self.ready[key] = None

    def signal(self, key: bytes) -> None:
        """``key`` (which exists) got something new a blocked client may wait for (XADD)."""
        if self.blocked and key in self.blocked:
            self.ready[key] = None

    def bump(self, key: bytes) -> None:
        """``key`` changed in place (its value, or its deadline)."""
        if self.watched and key in self.watched:
            self.tick += 1
            self.versions[key] = self.tick

    def remove(self, key: bytes) -> bool:
        """Delete ``key``; False if it did not exist."""
        if self.values.pop(key, None) is None:
            return False
        if self.deadlines:
            self.deadlines.pop(key, None)
        if self.watched:
            self.bump(key)
        return True

    def expire_if_due(self, key: bytes, now: int) -> bool:
        """Delete ``key`` if its deadline is at or before ``now`` (replicated time)."""
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline <= now:
            return self.remove(key)
        return False

    def set_deadline(self, ctx: Context, key: bytes, deadline: int) -> None:
        """Give ``key`` a deadline; one already past deletes it now, as Redis does
        (``checkAlreadyExpired``), so the writes after it in the same entry (a
        pipeline's batch, a transaction) never find it, nor inherit the deadline."""
        if deadline <= now_ms(ctx):
            self.remove(key)
            return
        self.deadlines[key] = deadline
        if self.expiry is not None:
            self.expiry.scheduled(ctx, key, deadline)

    def clear_deadline(self, key: bytes) -> bool:
        return self.deadlines.pop(key, None) is not None if self.deadlines else False

    # --- WATCH ---------------------------------------------------------------------------

    def watch(self, key: bytes) -> int:
        """One more client watches ``key``; the tick to compare its version with later."""
        self.watched[key] = self.watched.get(key, 0) + 1
        return self.tick

    def unwatch(self, key: bytes) -> None:
        left = self.watched.get(key, 0) - 1
        if left > 0:
            self.watched[key] = left
        else:
            self.watched.pop(key, None)
            self.versions.pop(key, None)

    def changed_since(self, key: bytes, tick: int) -> bool:
        """Whether watched ``key`` was written or deleted after ``tick``."""
        return self.versions.get(key, 0) > tick

    def live_keys(self, now: int) -> list[bytes]:
        deadlines = self.deadlines
        if not deadlines:
            return list(self.values)
        return [k for k in self.values if deadlines.get(k, now + 1) > now]

    def count_live(self, now: int) -> int:
        expired = sum(1 for d in self.deadlines.values() if d <= now)
        return len(self.values) - expired

    # --- commands --------------------------------------------------------------------------

    @command("DEL", -2, write=True, keys=(1, -1, 1))
    @command("UNLINK", -2, write=True, keys=(1, -1, 1))
    def delete(self, ctx: Context, args: list[bytes]) -> int:
        return sum(self.remove(key) for key in args[1:])

    @command("EXISTS", -2, keys=(1, -1, 1), flags=("fast",))
    def exists(self, now: int, args: list[bytes]) -> int:
        return sum(self.get(key, now) is not None for key in args[1:])

    @command("TYPE", 2, keys=(1, 1, 1), flags=("fast",))
    def type(self, now: int, args: list[bytes]) -> Status:
        return Status(type_name(self.get(args[1], now)).encode())

    @command("KEYS", 2)
    def keys(self, now: int, args: list[bytes]) -> list[bytes]:
        match = glob_matcher(args[1])
        return [k for k in self.live_keys(now) if match(k)]

    @command("DBSIZE", 1, flags=("fast",))
    def dbsize(self, now: int, args: list[bytes]) -> int:
        return self.count_live(now)

    @command("SCAN", -2)
    def scan(self, now: int, args: list[bytes]) -> list[Any]:
        """A stateless cursor over a 32-bit hash of the key, walked in windows.

        Keys present for the whole iteration are returned exactly once (each
        key's hash is fixed and the windows partition the hash space); COUNT
        is a hint, as in Redis.
        """
        try:
            cursor = int(args[1])
            if not 0 <= cursor <= _HASH_MASK or not args[1].isdigit():
                raise ValueError
        except ValueError:
            raise KvError("ERR invalid cursor") from None
        match = None
        count = 10
        want_type = None
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if i + 1 >= len(args):
                raise syntax_error()
            if opt == b"MATCH":
                match = glob_matcher(args[i + 1])
            elif opt == b"COUNT":
                count = parse_int(args[i + 1])
                if count < 1:
                    raise syntax_error()
            elif opt == b"TYPE":
                want_type = args[i + 1].decode("utf-8", "replace").lower()
            else:
                raise syntax_error()
            i += 2
        slots = [(h, k) for k in self.values if (h := hash(k) & _HASH_MASK) >= cursor]
        want = max(count, len(self.values) // SCAN_PAGES)
        if len(slots) <= want:
            page = [k for _, k in slots]
            following = 0
        else:
            boundary = heapq.nsmallest(want + 1, slots)[want][0]
            if boundary == cursor:  # more than `want` keys share one hash: take them all
                page = [k for h, k in slots if h == boundary]
                following = boundary + 1 if boundary < _HASH_MASK else 0
            else:
                page = [k for h, k in slots if h < boundary]
                following = boundary
        out = []
        for key in page:
            value = self.get(key, now)
            if value is None:
                continue
            if match is not None and not match(key):
                continue
            if want_type is not None and type_name(value) != want_type:
                continue
            out.append(key)
        return [b"%d" % following, out]

    @command("FLUSHDB", -1, write=True)
    @command("FLUSHALL", -1, write=True)
    def flush(self, ctx: Context, args: list[bytes]) -> Status:
        if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
            raise syntax_error()
        for key in self.watched:  # as Redis: a watched key that existed is touched
            if key in self.values:
                self.bump(key)
        self.values.clear()
        self.deadlines.clear()
        if self.expiry is not None:
            self.expiry.flushed(ctx)
        return OK

    @command("RENAME", 3, write=True, keys=(1, 2, 1))
    def rename(self, ctx: Context, args: list[bytes]) -> Status:
        self._rename(ctx, args[1], args[2], replace=True)
        return OK

    @command("RENAMENX", 3, write=True, keys=(1, 2, 1), flags=("fast",))
    def renamenx(self, ctx: Context, args: list[bytes]) -> int:
        return int(self._rename(ctx, args[1], args[2], replace=False))

    def _rename(self, ctx: Context, src: bytes, dst: bytes, *, replace: bool) -> bool:
        value = self.values.get(src)
        if value is None:
            raise KvError("ERR no such key")
        if src == dst:  # RENAME k k is OK; RENAMENX k k is 0
            return replace
        if dst in self.values:
            if not replace:
                return False
            self.remove(dst)
        deadline = self.deadlines.get(src) if self.deadlines else None
        self.remove(src)
        self.put(dst, value)
        if deadline is not None:
            self.set_deadline(ctx, dst, deadline)
        return True

    # --- snapshots: tag each value with its type (msgpack has no set, deque or ZSet) -------

    def snapshot(self) -> dict[str, Any]:
        return {
            "values": {k: [_TAGS[type(v)], _plain(v)] for k, v in self.values.items()},
            "deadlines": self.deadlines,
            "watched": self.watched,
            "versions": self.versions,
            "tick": self.tick,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.values = {k: _typed(tag, v) for k, (tag, v) in state["values"].items()}
        self.deadlines = dict(state["deadlines"])
        self.watched = dict(state["watched"])
        self.versions = dict(state["versions"])
        self.tick = int(state["tick"])


def _plain(value: Value) -> Any:
    if type(value) is ZSet or type(value) is Stream:
        return value.plain()
    return list(value) if type(value) is deque else value


def _typed(tag: str, value: Any) -> Value:
    if tag == "s":
        return bytes(value)
    if tag == "h":
        return dict(value)
    if tag == "l":
        return deque(value)
    if tag == "Z":
        return ZSet((bytes(m), float(s)) for m, s in value)
    if tag == "x":
        return Stream.from_plain(value)
    return set(value)
