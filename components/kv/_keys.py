"""More key commands: COPY, MOVE, SWAPDB, RANDOMKEY, TOUCH, OBJECT, DUMP, RESTORE, SORT, SORT_RO.

Semantics, replies and error texts are Redis 7.0's (``db.c``, ``object.c``,
``cluster.c``'s DUMP/RESTORE, ``sort.c``), checked against ``redis-server``,
with these choices for a service that has one database and replicates every
write:

* **One database.**  The KV answers as a Redis started with ``databases 1``:
  ``COPY ... DB 0`` works, any other database is ``ERR DB index is out of
  range`` (as ``SELECT 1`` is); ``MOVE key 0`` is Redis's ``ERR source and
  destination objects are the same`` and ``MOVE key <1..>`` out of range;
  ``SWAPDB 0 0`` is OK (a no-op in Redis too), any other pair out of range.
* **OBJECT ENCODING** answers from the value's content, with Redis 7.0's
  default thresholds: strings ``int`` (a canonical 64-bit integer), ``embstr``
  (up to 44 bytes) or ``raw``; lists ``quicklist`` (7.0 has no listpack
  lists); hashes ``listpack`` (at most 512 fields, fields and values at most
  64 bytes) or ``hashtable``; sets ``intset`` (at most 512 integers) or
  ``hashtable``; sorted sets ``listpack`` (at most 128 members of at most 64
  bytes) or ``skiplist``.  Redis also remembers history (a hash that grew
  past the limits and shrank stays ``hashtable``; APPEND and SETRANGE leave a
  ``raw`` string; INCRBYFLOAT an ``embstr``): the KV does not.
* **OBJECT IDLETIME** counts from the key's last *write* (or TOUCH, or
  RESTORE's IDLETIME), not its last read: a read runs on one replica only,
  and recording it in replicated state would make every read a write.  The
  times are :attr:`Keys.written`, stamped after each entry for the keys its
  write commands name (:meth:`Keys.stamp`).  OBJECT FREQ answers Redis's
  error for the default ``maxmemory-policy`` (``noeviction``: no LFU).
* **DUMP** payloads are the KV's own: a version byte, the value as msgpack
  (the snapshot form of ``_keyspace.py``, unordered collections sorted, so a
  value always dumps to the same bytes), and an 8-byte BLAKE2b checksum.  A
  payload that is not one (Redis's own included) is ``ERR DUMP payload
  version or checksum are wrong``.  COPY copies the value through the same
  encoding, so the copy shares nothing with the original and every type the
  keyspace snapshots (one list: ``_keyspace._TAGS``) is covered.
* **SORT** is a write (it may STORE; Redis flags it a write too) and runs in
  a log entry on every replica; **SORT_RO** is a read.  ALPHA compares bytes
  (Redis's ``strcoll`` in the C locale, but a NUL byte does not end the
  string).  Elements whose order Redis leaves to its hash tables (a set's
  members without sorting, ties of ALPHA with BY) come here in a fixed order:
  a set of integers ascending (as Redis's intset), other members by bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, ClassVar, Final, Protocol

import msgspec

from dominoes import Component, Context, on

from ._chance import READS
from ._commands import Commands
from ._errors import (
    INT64_MAX,
    KvError,
    arity_error,
    parse_count,
    parse_int,
    syntax_error,
    wrong_type,
)
from ._keyspace import _TAGS, Keyspace, Value, _plain, _typed, now_ms, type_name
from ._resp import OK, Status
from ._table import WRITE, Spec, command
from ._zsets import _C_SPACE, ZSet, _strtod

__all__ = (
    "OBJECT_SUBCOMMANDS",
    "Keys",
    "dump_payload",
    "encoding_of",
    "load_payload",
    "seal",
    "unseal",
)

#: A C ``int``: the range of DB indexes and of Redis's ``getIntFromObjectOrReply``.
INT_MIN: Final = -(2**31)
INT_MAX: Final = 2**31 - 1

#: Redis 7.0's default encoding thresholds (redis.conf).
EMBSTR_MAX: Final = 44
HASH_LISTPACK_ENTRIES: Final = 512
ZSET_LISTPACK_ENTRIES: Final = 128
LISTPACK_VALUE: Final = 64
INTSET_ENTRIES: Final = 512
#: Redis shares the string objects of the integers 0..9999 (OBJECT REFCOUNT: INT_MAX).
SHARED_INTEGERS: Final = 10000

#: Most seconds RESTORE's IDLETIME sets: Redis's LRU clock has 24 bits of seconds (it wraps
#: larger ones around it; IDLETIME 9223372036854775807 reads back as this).
LRU_MAX_IDLE: Final = 2**24 - 2

#: The first byte of a DUMP payload; another version is refused as Redis refuses one.
DUMP_VERSION: Final = 1
_CHECKSUM: Final = 8
#: OBJECT's subcommands and their arity (Redis 7.0's ``object|...`` entries).
OBJECT_SUBCOMMANDS: Final = {b"ENCODING": 3, b"FREQ": 3, b"IDLETIME": 3, b"REFCOUNT": 3, b"HELP": 2}
_BAD_PAYLOAD: Final = "ERR DUMP payload version or checksum are wrong"

#: Writes whose keys :meth:`Keys.stamp` leaves alone: RESTORE stamps its key itself
#: (IDLETIME), WATCH writes nothing.
_UNSTAMPED: Final = frozenset({b"RESTORE", b"WATCH"})

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()

_OBJECT_HELP: Final = [
    Status(line.encode())
    for line in (
        "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ENCODING <key>",
        "    Return the kind of internal representation used in order to store the value",
        "    associated with a <key>.",
        "FREQ <key>",
        "    Return the access frequency index of the <key>. The returned integer is",
        "    proportional to the logarithm of the recent access frequency of the key.",
        "IDLETIME <key>",
        "    Return the idle time of the <key>, that is the approximated number of",
        "    seconds elapsed since the last access to the key.",
        "REFCOUNT <key>",
        "    Return the number of references of the value associated with the specified",
        "    <key>.",
        "HELP",
        "    Prints this help.",
    )
]
#: The maxmemory policies under which Redis counts frequencies instead of idle times.
_LFU_POLICIES: Final = frozenset({b"allkeys-lfu", b"volatile-lfu"})
#: The counter Redis gives a new key under an LFU policy.
LFU_INIT_VAL: Final = 5
_LFU: Final = (
    "ERR An LFU maxmemory policy is selected, idle time not tracked. Please note that when "
    "switching between policies at runtime LRU and LFU data will take some time to adjust."
)
_NO_LFU: Final = (
    "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note "
    "that when switching between policies at runtime LRU and LFU data will take some time "
    "to adjust."
)


class Settings(Protocol):
    """What OBJECT reads of the server's replicated settings (``ServerConfig``)."""

    config: dict[bytes, bytes]


# --- values: encodings, payloads, copies --------------------------------------------------------


def _is_int(s: bytes) -> bool:
    """Whether Redis's ``string2ll`` takes all of ``s`` (canonical, 64-bit)."""
    if not s or len(s) > 20:
        return False
    try:
        parse_int(s)
    except KvError:
        return False
    return True


def _intset(members: set[bytes]) -> bool:
    return len(members) <= INTSET_ENTRIES and all(_is_int(m) for m in members)


def encoding_of(value: Value) -> bytes:
    """What Redis 7.0's OBJECT ENCODING answers for a value of this content (see the module doc)."""
    kind = type(value)
    if kind is bytes:
        assert isinstance(value, bytes)
        if _is_int(value):
            return b"int"
        return b"embstr" if len(value) <= EMBSTR_MAX else b"raw"
    if kind is dict:
        assert isinstance(value, dict)
        small = len(value) <= HASH_LISTPACK_ENTRIES and all(
            len(f) <= LISTPACK_VALUE and len(v) <= LISTPACK_VALUE for f, v in value.items()
        )
        return b"listpack" if small else b"hashtable"
    if kind is set:
        assert isinstance(value, set)
        return b"intset" if _intset(value) else b"hashtable"
    if kind is ZSet:
        assert isinstance(value, ZSet)
        small = len(value) <= ZSET_LISTPACK_ENTRIES and all(
            len(m) <= LISTPACK_VALUE for m in value.scores
        )
        return b"listpack" if small else b"skiplist"
    if type_name(value) == "list":
        return b"quicklist"
    return type_name(value).encode()  # a stream is "stream"


def _refcount(value: Value) -> int:
    if type(value) is bytes and _is_int(value) and 0 <= int(value) < SHARED_INTEGERS:
        return INT_MAX
    return 1


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM).digest()


def _canonical(item: Any) -> Any:
    """``item`` with its unordered collections in order: a value always encodes to the same
    bytes (a set's or a dict's order is not the same on every replica)."""
    kind = type(item)
    if kind is dict:
        return {k: _canonical(item[k]) for k in sorted(item)}
    if kind is set or kind is frozenset:
        return sorted(item)
    if (kind is list or kind is tuple) and not all(type(x) is bytes for x in item):
        return [_canonical(x) for x in item]
    return item


def _encode(value: Value) -> bytes:
    return _encoder.encode([_TAGS[type(value)], _canonical(_plain(value))])


def seal(data: bytes) -> bytes:
    """A payload: the version byte, ``data``, a checksum of both (DUMP, FUNCTION DUMP)."""
    body = bytes((DUMP_VERSION,)) + data
    return body + _digest(body)


def unseal(payload: bytes) -> bytes | None:
    """The data a :func:`seal` payload holds; None if it is foreign or corrupt."""
    if len(payload) <= 1 + _CHECKSUM or payload[0] != DUMP_VERSION:
        return None
    body, checksum = payload[:-_CHECKSUM], payload[-_CHECKSUM:]
    if _digest(body) != checksum:
        return None
    return body[1:]


def dump_payload(value: Value) -> bytes:
    """DUMP's payload: :func:`seal` of msgpack ``[tag, snapshot form]``."""
    return seal(_encode(value))


def _sound(item: Any) -> bool:
    """Whether a decoded snapshot form holds only what values are made of."""
    if item is None or isinstance(item, bytes | int):
        return True
    if isinstance(item, float):
        return not math.isnan(item)
    if isinstance(item, list | tuple):
        return all(_sound(x) for x in item)
    if isinstance(item, dict):
        return all(isinstance(k, bytes) and _sound(v) for k, v in item.items())
    return False


def load_payload(payload: bytes) -> Value:
    """The value a DUMP payload holds; Redis's errors for a foreign, corrupt or bad one."""
    data = unseal(payload)
    if data is None:
        raise KvError(_BAD_PAYLOAD)
    try:
        tag, plain = _decoder.decode(data)
        if tag not in _TAGS.values() or not _sound(plain):
            raise ValueError(tag)
        value = _typed(tag, plain)
    except (msgspec.DecodeError, ValueError, TypeError, KeyError):
        raise KvError("ERR Bad data format") from None
    if not _well_formed(value):
        raise KvError("ERR Bad data format")
    return value


def _well_formed(value: Value) -> bool:
    """Strings of bytes where the value holds strings; no empty collection (Redis refuses
    one too).  Other types check their own form when they are built from it."""
    if isinstance(value, dict):
        return bool(value) and all(type(v) is bytes for v in value.values())
    if isinstance(value, deque | set):
        return bool(value) and all(type(v) is bytes for v in value)
    if isinstance(value, ZSet):
        return bool(value) and all(type(m) is bytes for m in value.scores)
    return True


def copy_value(value: Value) -> Value:
    """A deep copy of ``value`` (through the snapshot form, so any type the keyspace knows)."""
    if type(value) is bytes:
        return value
    tag, plain = _decoder.decode(_encode(value))
    return _typed(tag, plain)


# --- SORT ---------------------------------------------------------------------------------------


def _c_string(b: bytes) -> bytes:
    """``b`` as C's string functions see it (up to the first NUL)."""
    nul = b.find(b"\0")
    return b if nul < 0 else b[:nul]


def _sort_score(text: bytes) -> float | None:
    """SORT's ``strtod`` of an element or a BY value; None where Redis gives up (the error)."""
    c = _c_string(text)
    if not c:
        return 0.0  # strtod read nothing and stopped at the NUL: Redis takes the 0
    stripped = c.lstrip(_C_SPACE)
    parsed = _strtod(stripped) if stripped else None
    if parsed is None or parsed[1] or math.isnan(parsed[0]):
        return None
    return parsed[0]


class _Pattern:
    """A BY or GET pattern: ``#``, or ``prefix*postfix`` with an optional ``->field``."""

    __slots__ = ("field", "hash", "postfix", "prefix", "star")

    def __init__(self, pattern: bytes) -> None:
        c = _c_string(pattern)
        self.hash = c == b"#"  # "#" alone, or followed by a NUL
        star = c.find(b"*")
        self.star = star >= 0
        self.prefix = pattern[:star]
        self.field: bytes | None = None
        arrow = c.find(b"->", star + 1) if star >= 0 else -1
        if arrow >= 0 and arrow + 2 < len(c):
            self.field = pattern[arrow + 2 :]
            self.postfix = pattern[star + 1 : arrow]
        else:
            self.postfix = pattern[star + 1 :]


class Keys(Component):
    """The commands above, and the last write time of each key (OBJECT IDLETIME)."""

    name = "keys"
    transient: ClassVar[tuple[str, ...]] = ("keyspace", "table", "settings", "_plan")

    #: key -> replicated time (ms) of its last write; keys gone are dropped after the entry
    written: dict[bytes, int]

    def __init__(
        self, keyspace: Keyspace, table: dict[bytes, Spec], settings: Settings | None = None
    ) -> None:
        self.keyspace = keyspace
        self.table = table
        #: the replicated CONFIG SET parameters (``maxmemory-policy``), if the service has them
        self.settings = settings
        self.written = {}
        self._plan: dict[bytes, Spec | bool] | None = None

    # --- last write times ------------------------------------------------------------------

    @on(Commands.run, order=10)
    @on(Commands.exec, order=10)
    def stamp(self, ctx: Context, commands: list[list[bytes]], client: int = 0) -> None:
        """After an entry's commands ran: the keys its writes name were written now."""
        values = self.keyspace.values
        written = self.written
        if not values:
            if written:
                written.clear()
            return
        now = now_ms(ctx)
        stamped = self._stamped
        # The hot path (a batch of one-key writes) costs one lookup and one store per
        # command: keys deleted meanwhile keep a stale stamp (OBJECT IDLETIME of a
        # missing key is nil; a write that creates it again stamps it again), and the
        # stale ones are dropped when they outnumber the live keys.
        for args in commands:
            spec = stamped.get(args[0])
            if spec is True:  # the one key at args[1], the commonest case
                written[args[1]] = now
            elif spec is not None:
                for key in spec.keys(args):  # type: ignore[union-attr]
                    written[key] = now
        if len(written) > 2 * len(values) + 1024:  # keys expired or flushed: drop them
            self.written = {k: t for k, t in written.items() if k in values}

    @property
    def _stamped(self) -> dict[bytes, Spec | bool]:
        """The writes :meth:`stamp` looks at: their spec, or True for those of one key at 1."""
        if self._plan is None:
            self._plan = {
                name: True if (spec.first, spec.last, spec.step) == (1, 1, 1) else spec
                for name, spec in self.table.items()
                if spec.kind is WRITE and spec.first and name not in _UNSTAMPED
            }
        return self._plan

    # --- one database -------------------------------------------------------------------------

    @staticmethod
    def _db(raw: bytes, message: str | None = None) -> int:
        db = parse_count(raw, INT_MIN, INT_MAX, message)
        if db != 0:
            raise KvError("ERR DB index is out of range")
        return db

    @command("COPY", -3, write=True, keys=(1, 2, 1))
    def copy(self, ctx: Context, args: list[bytes]) -> int:
        replace = False
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if opt == b"REPLACE":
                replace = True
            elif opt == b"DB" and i + 1 < len(args):
                self._db(args[i + 1])
                i += 1
            else:
                raise syntax_error()
            i += 1
        src, dst = args[1], args[2]
        if src == dst:
            raise KvError("ERR source and destination objects are the same")
        ks = self.keyspace
        now = now_ms(ctx)
        value = ks.get(src, now)
        if value is None:
            return 0
        if ks.get(dst, now) is not None and not replace:
            return 0
        ks.remove(dst)
        ks.put(dst, copy_value(value))
        deadline = ks.deadlines.get(src) if ks.deadlines else None
        if deadline is not None:
            ks.set_deadline(ctx, dst, deadline)
        return 1

    @command("MOVE", 3, write=True, keys=(1, 1, 1), flags=("fast",))
    def move(self, ctx: Context, args: list[bytes]) -> int:
        self._db(args[2])
        raise KvError("ERR source and destination objects are the same")

    @command("SWAPDB", 3, write=True, flags=("fast",))
    def swapdb(self, ctx: Context, args: list[bytes]) -> Status:
        first = parse_count(args[1], INT_MIN, INT_MAX, "invalid first DB index")
        second = parse_count(args[2], INT_MIN, INT_MAX, "invalid second DB index")
        if first != 0 or second != 0:
            raise KvError("ERR DB index is out of range")
        return OK

    # --- reads --------------------------------------------------------------------------------

    @command("RANDOMKEY", 1)
    def randomkey(self, now: int, args: list[bytes]) -> bytes | None:
        ks = self.keyspace
        values = ks.values
        for _ in range(100):  # as Redis: draw again while the key drawn has expired
            if not values:
                return None
            key = next(islice(values, READS.randrange(len(values)), None))
            if ks.get(key, now) is not None:
                return key
        live = ks.live_keys(now)
        return READS.choice(live) if live else None

    @command("TOUCH", -2, write=True, keys=(1, -1, 1), flags=("fast",))
    def touch(self, ctx: Context, args: list[bytes]) -> int:
        """A write, so that OBJECT IDLETIME starts again from it (see the module doc)."""
        ks = self.keyspace
        now = now_ms(ctx)
        return sum(ks.get(key, now) is not None for key in args[1:])

    @command("OBJECT", -2, keys=(2, 2, 1))
    def object(self, now: int, args: list[bytes]) -> Any:
        sub = args[1].upper()
        if sub == b"HELP":
            if len(args) != 2:
                raise arity_error(b"object|help")
            return list(_OBJECT_HELP)
        if sub not in OBJECT_SUBCOMMANDS:
            text = args[1].decode("utf-8", "replace")[:128]
            raise KvError(f"ERR unknown subcommand '{text}'. Try OBJECT HELP.")
        if len(args) != 3:
            raise arity_error(b"object|" + sub)
        key = args[2]
        value = self.keyspace.get(key, now)
        if value is None:
            return None
        if sub == b"ENCODING":
            return encoding_of(value)
        if sub == b"REFCOUNT":
            return _refcount(value)
        idle = max(0, now - self.written.get(key, now))
        lfu = self._lfu()
        if sub == b"FREQ":
            if not lfu:
                raise KvError(_NO_LFU)
            return max(0, LFU_INIT_VAL - idle // 60_000)  # decays by one a minute
        if lfu:
            raise KvError(_LFU)
        return idle // 1000

    def _lfu(self) -> bool:
        """Whether ``maxmemory-policy`` is an LFU one (OBJECT FREQ's counter, no IDLETIME)."""
        if self.settings is None:
            return False
        return self.settings.config.get(b"maxmemory-policy", b"") in _LFU_POLICIES

    @command("DUMP", 2, keys=(1, 1, 1))
    def dump(self, now: int, args: list[bytes]) -> bytes | None:
        value = self.keyspace.get(args[1], now)
        return None if value is None else dump_payload(value)

    # --- RESTORE ------------------------------------------------------------------------------

    @command("RESTORE", -4, write=True, keys=(1, 1, 1))
    def restore_key(self, ctx: Context, args: list[bytes]) -> Status:
        """RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f], in Redis's order
        of checks: options, BUSYKEY, the TTL, the payload."""
        replace = absttl = False
        idle = freq = -1
        i = 4
        while i < len(args):
            opt = args[i].upper()
            more = i + 1 < len(args)
            if opt == b"REPLACE":
                replace = True
            elif opt == b"ABSTTL":
                absttl = True
            elif opt == b"IDLETIME" and more and freq == -1:
                idle = parse_int(args[i + 1])
                if idle < 0:
                    raise KvError("ERR Invalid IDLETIME value, must be >= 0")
                i += 1
            elif opt == b"FREQ" and more and idle == -1:
                freq = parse_int(args[i + 1])
                if not 0 <= freq <= 255:
                    raise KvError("ERR Invalid FREQ value, must be >= 0 and <= 255")
                i += 1  # no LFU policy (see OBJECT FREQ): accepted and unused, as in Redis
            else:
                raise syntax_error()
            i += 1
        ks = self.keyspace
        key = args[1]
        now = now_ms(ctx)
        if not replace and ks.get(key, now) is not None:
            raise KvError("BUSYKEY Target key name already exists.")
        ttl = parse_int(args[2])
        if ttl < 0:
            raise KvError("ERR Invalid TTL value, must be >= 0")
        value = load_payload(args[3])
        if replace:
            ks.remove(key)
        if ttl and not absttl:
            # Redis adds in a 64-bit integer: past it the sum wraps negative, already expired
            ttl = ttl + now if ttl <= INT64_MAX - now else -1
        if ttl and ttl <= now:
            self.written.pop(key, None)
            return OK  # already expired: not created (an old key was deleted by REPLACE)
        ks.put(key, value)
        if ttl:
            ks.set_deadline(ctx, key, ttl)
        self.written[key] = now - min(idle, LRU_MAX_IDLE) * 1000 if idle > 0 else now
        return OK

    # --- SORT ---------------------------------------------------------------------------------

    @command("SORT", -2, write=True, keys=(1, 1, 1))
    def sort(self, ctx: Context, args: list[bytes]) -> Any:
        return self._sort(now_ms(ctx), args, ctx)

    @command("SORT_RO", -2, keys=(1, 1, 1))
    def sort_ro(self, now: int, args: list[bytes]) -> Any:
        return self._sort(now, args, None)

    def _lookup(self, pattern: _Pattern, element: bytes, now: int) -> bytes | None:
        """Redis's ``lookupKeyByPattern``: the string or hash field a pattern names."""
        if pattern.hash:
            return element
        if not pattern.star:
            return None
        value = self.keyspace.get(pattern.prefix + element + pattern.postfix, now)
        if pattern.field is not None:
            return value.get(pattern.field) if type(value) is dict else None
        return value if type(value) is bytes else None

    def _sort(self, now: int, args: list[bytes], ctx: Context | None) -> Any:
        desc = alpha = dontsort = False
        start, count = 0, -1
        store: bytes | None = None
        by: _Pattern | None = None
        gets: list[_Pattern] = []
        i = 2
        n = len(args)
        while i < n:
            opt = args[i].upper()
            left = n - i - 1
            if opt == b"ASC":
                desc = False
            elif opt == b"DESC":
                desc = True
            elif opt == b"ALPHA":
                alpha = True
            elif opt == b"LIMIT" and left >= 2:
                start, count = parse_int(args[i + 1]), parse_int(args[i + 2])
                i += 2
            elif opt == b"STORE" and left >= 1 and ctx is not None:
                store = args[i + 1]
                i += 1
            elif opt == b"BY" and left >= 1:
                by = _Pattern(args[i + 1])
                if not by.star:
                    dontsort = True  # and a later BY with a star does not undo it, as in Redis
                i += 1
            elif opt == b"GET" and left >= 1:
                gets.append(_Pattern(args[i + 1]))
                i += 1
            else:
                raise syntax_error()
            i += 1
        value = self.keyspace.get(args[1], now)
        kind = type_name(value)
        if kind not in ("list", "set", "zset", "none"):
            raise wrong_type()
        if dontsort and kind == "set" and store is not None:
            dontsort, alpha, by = False, True, None  # a set is sorted to store it, as in Redis
        elements = self._elements(value, kind, dontsort, desc)
        size = len(elements)
        first = max(start, 0)
        last = size - 1 if count < 0 else first + count - 1
        if first >= size:
            first, last = size - 1, size - 2
        last = min(last, size - 1)
        if not dontsort:
            elements = self._sorted(
                elements, by, alpha=alpha, desc=desc, store=store is not None, now=now
            )
        chosen = elements[first : last + 1] if last >= first else []
        if not gets:
            out: list[bytes | None] = list(chosen)
        else:
            out = [self._lookup(p, e, now) for e in chosen for p in gets]
        if store is None:
            return out
        assert ctx is not None
        ks = self.keyspace
        ks.remove(store)
        if out:
            ks.put(store, deque(b"" if x is None else x for x in out))
            self.written[store] = now  # its key spec names only the key sorted
        else:
            self.written.pop(store, None)
        return len(out)

    def _elements(self, value: Value | None, kind: str, dontsort: bool, desc: bool) -> list[bytes]:
        """The elements in the order SORT loads them (reversed for DESC without sorting, as
        Redis walks a list or a sorted set backwards; a set's order is its own either way)."""
        if value is None:
            return []
        if kind == "list":
            assert isinstance(value, deque)
            items = list(value)
        elif kind == "zset":
            assert isinstance(value, ZSet)
            items = [m for _, m in value]
        else:
            assert isinstance(value, set)
            if _intset(value):
                return sorted(value, key=int)
            return sorted(value)
        if dontsort and desc:
            items.reverse()
        return items

    def _sorted(
        self,
        elements: list[bytes],
        by: _Pattern | None,
        *,
        alpha: bool,
        desc: bool,
        store: bool,
        now: int,
    ) -> list[bytes]:
        if alpha:
            # Redis compares with strcoll (C strings) to answer, with memcmp to STORE; ties
            # keep the order the elements were loaded in (glibc's qsort is a merge sort)
            text: Callable[[bytes], bytes] = _identity if store else _c_string
            if by is None:
                return sorted(elements, key=text, reverse=desc)
            pattern = by

            def compared(e: bytes) -> tuple[bool, bytes]:
                v = self._lookup(pattern, e, now)
                return (False, b"") if v is None else (True, text(v))

            return sorted(elements, key=compared, reverse=desc)
        scored: list[tuple[float, bytes]] = []
        for e in elements:
            v = e if by is None else self._lookup(by, e, now)
            score = 0.0 if v is None else _sort_score(v)
            if score is None:
                raise KvError("ERR One or more scores can't be converted into double")
            scored.append((score, e))
        scored.sort(reverse=desc)
        return [e for _, e in scored]


def _identity(e: bytes) -> bytes:
    return e
