"""Streams: XADD, XRANGE, XREAD, XTRIM, XSETID, consumer groups (XGROUP, XREADGROUP, XACK,
XPENDING, XCLAIM, XAUTOCLAIM) and XINFO, as Redis 7.0 answers them.

A stream (:class:`Stream`) keeps its entries in a ``SortedDict`` keyed by the
ID ``(ms, seq)`` (each entry a flat ``[field, value, ...]`` list), so a range
is O(log n) to find; its last generated ID, the largest ID XDEL removed, how
many entries were ever added, and its consumer groups (:class:`Group`: the
last delivered ID, the entries-read counter, the pending entries list, the
consumers).  An empty stream is kept (Redis deletes a stream only with DEL).

**Replication.**  Writes run in a log entry on every replica, so everything
they decide comes from the entry: ``*`` IDs use the entry's time (``ctx.now``,
in ms) with Redis's monotonic rule (the last ID's ms and seq + 1 when the
clock is behind), delivery times and consumers' seen-times are the entry's
time, so every replica assigns the same IDs and holds the same PEL.  Reads
(XPENDING's idle times, XINFO CONSUMERS's idle) compute elapsed times from
the local clock they are given, as Redis does from its own.

**WATCH.**  As in Redis 7.0, XADD, XDEL, XTRIM (when it deletes) and the creation of a
stream touch a watched key; XSETID, XGROUP, XREADGROUP, XACK, XCLAIM and XAUTOCLAIM
do not (Redis does not signal them).

**Trimming.**  Redis trims ``~`` (approximate) only by whole macro nodes of up
to 100 entries, an implementation detail; here ``~`` trims exactly, but at
most LIMIT entries (10000 when LIMIT is not given, as Redis's default with
100-entry nodes).  ``=`` is exactly Redis's.

**Blocking.**  :meth:`Streams.serve_read` is "serve this XREAD/XREADGROUP now,
or None if there is nothing yet".  An XREAD/XREADGROUP with BLOCK (outside
MULTI) becomes a blocking read (``_blocking.Blocking.blocking_read``), which
calls it at once and again whenever XADD adds to one of its streams
(``Keyspace.signal``).  Inside MULTI or a script, BLOCK with nothing to return
answers as if the timeout had passed (a null array), as Redis does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from sortedcontainers import SortedDict

from dominoes import Component, Context

from ._errors import INT64_MAX, KvError, arity_error, parse_int, syntax_error, wrong_type
from ._resp import NULL_ARRAY, OK, MapOfArrays, Status
from ._table import command

if TYPE_CHECKING:
    from ._keyspace import Keyspace

__all__ = ("XGROUP_SUBCOMMANDS", "XINFO_SUBCOMMANDS", "Group", "Stream", "Streams")

ID: TypeAlias = tuple[int, int]

U64_MAX: Final = 2**64 - 1
MIN_ID: Final = (0, 0)
MAX_ID: Final = (U64_MAX, U64_MAX)
#: entries_read when unknown (Redis's SCG_INVALID_ENTRIES_READ): XINFO shows nil.
INVALID_READ: Final = -1
#: LIMIT of a ``~`` trim without LIMIT: Redis's 100 * stream-node-max-entries.
DEFAULT_APPROX_LIMIT: Final = 10000
#: XAUTOCLAIM looks at no more than COUNT * this many PEL entries per call.
_ATTEMPTS_FACTOR: Final = 10
_AUTOCLAIM_MAX_COUNT: Final = (2**63 - 1) // 16
#: XAUTOCLAIM allocates COUNT IDs of 16 bytes up front: Redis refuses a COUNT whose array
#: jemalloc cannot map (beyond 2**47 bytes, 128 TiB, on x86-64 Linux).
_TRANSIENT_MAX: Final = 2**47


def _now_ms(ctx: Context) -> int:
    """The entry's replicated time in ms (``now_ms`` of ``_keyspace.py``, which imports us)."""
    return int(ctx.now * 1000)


# --- IDs ---------------------------------------------------------------------------------

_STRICT_LL: Final = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_STRTOULL: Final = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def _ull(text: bytes) -> int | None:
    """Redis's ``string2ull``: a strict int64 (not negative), else what ``strtoull`` reads
    from the whole text (leading spaces, a sign, leading zeros; ``-n`` wraps), else None."""
    if _STRICT_LL.fullmatch(text) is not None and int(text) <= INT64_MAX:
        n = int(text)
        return n if n >= 0 else None
    if text[:1] == b"-" and _STRICT_LL.fullmatch(text) is not None:
        return None  # a valid (negative) long long
    m = _STRTOULL.fullmatch(text)
    if m is None:
        return None
    n = int(m.group(2))
    if n > U64_MAX:
        return None
    return (-n) % 2**64 if m.group(1) == b"-" else n


def invalid_id() -> KvError:
    return KvError("ERR Invalid stream ID specified as stream command argument")


def parse_id(text: bytes, *, strict: bool = True, missing_seq: int = 0) -> ID:
    """``<ms>-<seq>`` or ``<ms>`` (seq ``missing_seq``); ``-`` and ``+`` unless strict."""
    parsed = _parse_id(text, strict=strict, missing_seq=missing_seq, star=False)
    if parsed is None:
        raise invalid_id()
    return parsed[0]


def _parse_id(text: bytes, *, strict: bool, missing_seq: int, star: bool) -> tuple[ID, bool] | None:
    """(id, seq_given) or None; ``star``: ``<ms>-*`` is accepted (seq_given False)."""
    if len(text) > 127:
        return None
    if text == b"-" or text == b"+":
        if strict:
            return None
        return (MIN_ID if text == b"-" else MAX_ID), True
    head, dash, tail = text.partition(b"-")
    ms = _ull(head)
    if ms is None:
        return None
    if not dash:
        return (ms, missing_seq), True
    if star and tail == b"*":
        return (ms, 0), False
    seq = _ull(tail)
    if seq is None:
        return None
    return (ms, seq), True


def incr_id(i: ID) -> ID | None:
    ms, seq = i
    if seq == U64_MAX:
        return None if ms == U64_MAX else (ms + 1, 0)
    return ms, seq + 1


def decr_id(i: ID) -> ID | None:
    ms, seq = i
    if seq == 0:
        return None if ms == 0 else (ms - 1, U64_MAX)
    return ms, seq - 1


def fmt(i: ID) -> bytes:
    return b"%d-%d" % i


def _interval(text: bytes, missing_seq: int, *, end: bool) -> ID:
    """A range bound: ``(id`` is exclusive (strict ID after the parenthesis)."""
    if len(text) > 1 and text[:1] == b"(":
        i = parse_id(text[1:], strict=True, missing_seq=missing_seq)
        moved = decr_id(i) if end else incr_id(i)
        if moved is None:
            raise KvError(f"ERR invalid {'end' if end else 'start'} ID for the interval")
        return moved
    return parse_id(text, strict=False, missing_seq=missing_seq)


# --- the value -----------------------------------------------------------------------------


class Nack:
    """A pending entry: when it was last delivered, how often, to which consumer."""

    __slots__ = ("consumer", "count", "time")

    def __init__(self, time: int, count: int, consumer: Consumer | None) -> None:
        self.time = time
        self.count = count
        self.consumer = consumer


class Consumer:
    __slots__ = ("name", "pel", "seen")

    def __init__(self, name: bytes, seen: int) -> None:
        self.name = name
        self.seen = seen
        self.pel: SortedDict[ID, Nack] = SortedDict()


class Group:
    __slots__ = ("consumers", "last", "pel", "read")

    def __init__(self, last: ID, read: int) -> None:
        self.last = last
        self.read = read
        self.pel: SortedDict[ID, Nack] = SortedDict()
        self.consumers: dict[bytes, Consumer] = {}

    def consumer(self, name: bytes, now: int) -> Consumer:
        """The consumer ``name`` (created if new), seen now."""
        c = self.consumers.get(name)
        if c is None:
            c = self.consumers[name] = Consumer(name, now)
        else:
            c.seen = now
        return c

    def drop(self, i: ID) -> None:
        nack = self.pel.pop(i)
        if nack.consumer is not None:
            nack.consumer.pel.pop(i, None)


class Stream:
    """A stream value (TYPE ``stream``)."""

    __slots__ = ("added", "entries", "groups", "last", "max_deleted")

    def __init__(self) -> None:
        self.entries: SortedDict[ID, list[bytes]] = SortedDict()
        self.last: ID = MIN_ID
        self.max_deleted: ID = MIN_ID
        self.added = 0
        self.groups: dict[bytes, Group] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ID]:
        """The entries' IDs, in order."""
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"<Stream {len(self.entries)} entries, last {fmt(self.last).decode()}>"

    @property
    def first(self) -> ID:
        return self.entries.peekitem(0)[0] if self.entries else MIN_ID

    def last_valid(self) -> ID:
        """The last entry's ID (0-0 if empty): Redis's ``streamLastValidID``."""
        return self.entries.peekitem(-1)[0] if self.entries else MIN_ID

    def range(self, lo: ID, hi: ID, count: int = 0, rev: bool = False) -> list[ID]:
        """The IDs within [lo, hi], at most ``count`` (0: all), backwards if ``rev``."""
        if lo > hi:
            return []
        ids = self.entries.irange(lo, hi, reverse=rev)
        return list(islice(ids, count) if count else ids)

    def has_tombstones(self, start: ID) -> bool:
        """Redis's ``streamRangeHasTombstones(s, start, NULL)``."""
        if not self.entries or self.max_deleted == MIN_ID:
            return False
        return start <= self.max_deleted

    def estimate_read(self, i: ID) -> int:
        """Redis's ``streamEstimateDistanceFromFirstEverEntry``."""
        if not self.added:
            return 0
        if not self.entries and i <= self.last:
            return self.added
        if i == self.last:
            return self.added
        if i > self.last:
            return INVALID_READ
        first = self.first
        if self.max_deleted == MIN_ID or self.max_deleted < first:
            if i < first:
                return self.added - len(self.entries)
            if i == first:
                return self.added - len(self.entries) + 1
        return INVALID_READ

    def lag(self, g: Group) -> int | None:
        if not self.added:
            return 0
        if g.read != INVALID_READ and not self.has_tombstones(g.last):
            return self.added - g.read
        read = self.estimate_read(g.last)
        return None if read == INVALID_READ else self.added - read

    def trim(self, strategy: bytes, threshold: Any, approx: bool, limit: int) -> int:
        """XTRIM's and XADD's trimming; how many entries went (see the module's doc on ``~``)."""
        entries = self.entries
        if strategy == b"MAXLEN":
            excess = len(entries) - threshold
        else:
            excess = entries.bisect_left(threshold)
        if excess <= 0:
            return 0
        if approx and limit:
            excess = min(excess, limit)
        for _ in range(excess):
            entries.popitem(0)
        return int(excess)

    def copy(self) -> Stream:
        return Stream.from_plain(self.plain())

    # --- snapshots ---------------------------------------------------------------------------

    def plain(self) -> list[Any]:
        groups = []
        for name, g in self.groups.items():
            consumers = [[c.name, c.seen] for c in g.consumers.values()]
            pel = [
                [i[0], i[1], n.time, n.count, None if n.consumer is None else n.consumer.name]
                for i, n in g.pel.items()
            ]
            groups.append([name, g.last[0], g.last[1], g.read, consumers, pel])
        return [
            [[i[0], i[1], fields] for i, fields in self.entries.items()],
            [*self.last, *self.max_deleted, self.added],
            groups,
        ]

    @classmethod
    def from_plain(cls, value: Any) -> Stream:
        entries, (lms, lseq, dms, dseq, added), groups = value
        s = cls()
        s.entries = SortedDict(
            ((int(ms), int(seq)), [bytes(f) for f in fields]) for ms, seq, fields in entries
        )
        s.last = (int(lms), int(lseq))
        s.max_deleted = (int(dms), int(dseq))
        s.added = int(added)
        for name, ms, seq, read, consumers, pel in groups:
            g = Group((int(ms), int(seq)), int(read))
            for cname, seen in consumers:
                g.consumers[bytes(cname)] = Consumer(bytes(cname), int(seen))
            for ms_, seq_, time, count, cname in pel:
                i = (int(ms_), int(seq_))
                c = None if cname is None else g.consumers[bytes(cname)]
                n = Nack(int(time), int(count), c)
                g.pel[i] = n
                if c is not None:
                    c.pel[i] = n
            s.groups[bytes(name)] = g
        return s


# --- replies -------------------------------------------------------------------------------


def _entry(s: Stream, i: ID) -> list[Any]:
    return [fmt(i), list(s.entries[i])]


def _entries(s: Stream, ids: Iterable[ID]) -> list[Any]:
    return [_entry(s, i) for i in ids]


def _nogroup(group: bytes, key: bytes) -> KvError:
    return KvError(f"NOGROUP No such consumer group '{_text(group)}' for key name '{_text(key)}'")


def _nogroup_or_key(key: bytes, group: bytes, suffix: str = "") -> KvError:
    return KvError(f"NOGROUP No such key '{_text(key)}' or consumer group '{_text(group)}'{suffix}")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _subcommand_error(sub: bytes, container: str) -> KvError:
    return KvError(
        f"ERR unknown subcommand or wrong number of arguments for '{_text(sub)}'. "
        f"Try {container} HELP."
    )


def _unknown_subcommand(sub: bytes, container: str) -> KvError:
    return KvError(f"ERR unknown subcommand '{_text(sub)}'. Try {container} HELP.")


def _long(text: bytes, message: str = "") -> int:
    try:
        return parse_int(text)
    except KvError:
        if message:
            raise KvError(f"ERR {message}") from None
        raise


XGROUP_SUBCOMMANDS: Final = {b"CREATE": -5, b"SETID": -5, b"DESTROY": 4, b"CREATECONSUMER": 5,
                        b"DELCONSUMER": 5, b"HELP": 2}  # fmt: skip
XINFO_SUBCOMMANDS: Final = {b"CONSUMERS": 4, b"GROUPS": 3, b"STREAM": -3, b"HELP": 2}

_XGROUP_HELP: Final = [
    b"XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CREATE <key> <groupname> <id|$> [option]",
    b"    Create a new consumer group. Options are:",
    b"    * MKSTREAM",
    b"      Create the empty stream if it does not exist.",
    b"    * ENTRIESREAD entries_read",
    b"      Set the group's entries_read counter (internal use).",
    b"CREATECONSUMER <key> <groupname> <consumer>",
    b"    Create a new consumer in the specified group.",
    b"DELCONSUMER <key> <groupname> <consumer>",
    b"    Remove the specified consumer.",
    b"DESTROY <key> <groupname>",
    b"    Remove the specified group.",
    b"SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
    b"    Set the current group ID and entries_read counter.",
    b"HELP",
    b"    Prints this help.",
]
_XINFO_HELP: Final = [
    b"XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CONSUMERS <key> <groupname>",
    b"    Show consumers of <groupname>.",
    b"GROUPS <key>",
    b"    Show the stream consumer groups.",
    b"STREAM <key> [FULL [COUNT <count>]",
    b"    Show information about the stream.",
    b"HELP",
    b"    Prints this help.",
]


def _subcommand(args: list[bytes], arities: dict[bytes, int], container: str) -> bytes:
    sub = args[1].upper()
    arity = arities.get(sub)
    if arity is None:
        raise _unknown_subcommand(args[1], container)
    if (arity >= 0 and len(args) != arity) or len(args) < -arity:
        raise KvError(
            f"ERR wrong number of arguments for '{container.lower()}|{_text(sub).lower()}' command"
        )
    return sub


class ReadRequest:
    """A parsed XREAD / XREADGROUP: what :meth:`Streams.serve_read` serves."""

    __slots__ = ("block", "consumer", "count", "group", "ids", "keys", "noack")

    def __init__(self) -> None:
        self.count = 0
        self.block: int | None = None  # ms, 0 forever; None: no BLOCK
        self.group: bytes | None = None
        self.consumer = b""
        self.noack = False
        self.keys: list[bytes] = []
        self.ids: list[ID | None] = []  # None: ">" (XREADGROUP's new entries)


def parse_read(args: list[bytes], xreadgroup: bool) -> tuple[ReadRequest, list[bytes]]:
    """The options of XREAD/XREADGROUP, and the IDs' texts (resolved against the keys later)."""
    req = ReadRequest()
    n = len(args)
    streams = 0
    i = 1
    while i < n:
        more = n - i - 1
        opt = args[i].upper()
        if opt == b"BLOCK" and more:
            i += 1
            timeout = _long(args[i], "timeout is not an integer or out of range")
            if timeout < 0:
                raise KvError("ERR timeout is negative")
            req.block = timeout
        elif opt == b"COUNT" and more:
            i += 1
            req.count = max(parse_int(args[i]), 0)
        elif opt == b"STREAMS" and more:
            streams = i + 1
            if (n - streams) % 2:
                name = "xreadgroup" if xreadgroup else "xread"
                symbol = ">" if xreadgroup else "$"
                raise KvError(
                    f"ERR Unbalanced '{name}' list of streams: for each stream key an ID or "
                    f"'{symbol}' must be specified."
                )
            break
        elif opt == b"GROUP" and more >= 2:
            if not xreadgroup:
                raise KvError(
                    "ERR The GROUP option is only supported by XREADGROUP. "
                    "You called XREAD instead."
                )
            req.group, req.consumer = args[i + 1], args[i + 2]
            i += 2
        elif opt == b"NOACK":
            if not xreadgroup:
                raise KvError(
                    "ERR The NOACK option is only supported by XREADGROUP. "
                    "You called XREAD instead."
                )
            req.noack = True
        else:
            raise syntax_error()
        i += 1
    if not streams:
        raise syntax_error()
    if xreadgroup and req.group is None:
        raise KvError("ERR Missing GROUP option for XREADGROUP")
    half = (n - streams) // 2
    req.keys = args[streams : streams + half]
    return req, args[streams + half :]


class Streams(Component):
    """Stream values (:class:`Stream`) in the keyspace."""

    name = "streams"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _stream(self, key: bytes, now: int) -> Stream | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not Stream:
            raise wrong_type()
        return value

    # --- XADD, XTRIM, XDEL, XSETID ---------------------------------------------------------

    @staticmethod
    def _trim_args(args: list[bytes], xadd: bool) -> tuple[int, dict[str, Any]]:
        """Redis's ``streamParseAddOrTrimArgsOrReply``: (the ID's position, the options)."""
        o: dict[str, Any] = {"strategy": None, "threshold": 0, "approx": False, "limit": 0,
                             "nomkstream": False, "id": None, "seq_given": True}  # fmt: skip
        limit_given = False
        approx = False
        n = len(args)
        i = 2
        while i < n:
            more = n - 1 - i
            word = args[i]
            opt = word.upper()
            if xadd and word == b"*":
                break
            if opt in (b"MAXLEN", b"MINID") and more:
                if o["strategy"] is not None:
                    raise KvError(
                        "ERR syntax error, MAXLEN and MINID options at the same time are not "
                        "compatible"
                    )
                approx = False
                nxt = args[i + 1]
                if more >= 2 and nxt in (b"~", b"="):
                    approx = nxt == b"~"
                    i += 1
                if opt == b"MAXLEN":
                    threshold: Any = parse_int(args[i + 1])
                    if threshold < 0:
                        raise KvError("ERR The MAXLEN argument must be >= 0.")
                else:
                    threshold = parse_id(args[i + 1])
                i += 1
                o["strategy"] = opt
                o["threshold"] = threshold
            elif opt == b"LIMIT" and more:
                limit = parse_int(args[i + 1])
                if limit < 0:
                    raise KvError("ERR The LIMIT argument must be >= 0.")
                o["limit"] = limit
                limit_given = True
                i += 1
            elif xadd and opt == b"NOMKSTREAM":
                o["nomkstream"] = True
            elif xadd:
                parsed = _parse_id(word, strict=True, missing_seq=0, star=True)
                if parsed is None:
                    raise invalid_id()
                o["id"], o["seq_given"] = parsed
                break
            else:
                raise syntax_error()
            i += 1
        if o["limit"] and o["strategy"] is None:
            raise KvError(
                "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy"
            )
        if not xadd and o["strategy"] is None:
            raise KvError("ERR syntax error, XTRIM must be called with a trimming strategy")
        if limit_given:
            if not approx:
                raise KvError("ERR syntax error, LIMIT cannot be used without the special ~ option")
        else:
            o["limit"] = DEFAULT_APPROX_LIMIT if approx else 0
        o["approx"] = approx
        return i, o

    @command("XADD", -5, write=True, keys=(1, 1, 1), flags=("fast",))
    def xadd(self, ctx: Context, args: list[bytes]) -> Any:
        pos, o = self._trim_args(args, xadd=True)
        fields = args[pos + 1 :]
        if len(fields) < 2 or len(fields) % 2:
            raise arity_error(args[0])
        given: ID | None = o["id"]
        if given == MIN_ID and o["seq_given"]:
            raise KvError("ERR The ID specified in XADD must be greater than 0-0")
        key = args[1]
        now = _now_ms(ctx)
        s = self._stream(key, now)
        if s is None:
            if o["nomkstream"]:
                return None
            s = Stream()
            created = True
        else:
            created = False
        last = s.last
        if last == MAX_ID:
            raise KvError(
                "ERR The stream has exhausted the last possible ID, unable to add more items"
            )
        if given is None:
            new = (now, 0) if now > last[0] else incr_id(last)
        elif not o["seq_given"]:
            ms = given[0]
            same_ms = ms == last[0]
            new = (ms, 0) if not same_ms else None if last[1] == U64_MAX else (ms, last[1] + 1)
        else:
            new = given
        if new is None or new <= last:
            raise KvError(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item"
            )
        if created:
            self.keyspace.put(key, s)
        else:
            self.keyspace.bump(key)
            self.keyspace.signal(key)  # blocked XREADs may have something now
        s.entries[new] = list(fields)
        s.last = new
        s.added += 1
        if o["strategy"] is not None:
            s.trim(o["strategy"], o["threshold"], o["approx"], o["limit"])
        return fmt(new)

    @command("XTRIM", -4, write=True, keys=(1, 1, 1))
    def xtrim(self, ctx: Context, args: list[bytes]) -> int:
        _, o = self._trim_args(args, xadd=False)
        s = self._stream(args[1], _now_ms(ctx))
        if s is None:
            return 0
        deleted = s.trim(o["strategy"], o["threshold"], o["approx"], o["limit"])
        if deleted:
            self.keyspace.bump(args[1])
        return deleted

    @command("XDEL", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def xdel(self, ctx: Context, args: list[bytes]) -> int:
        s = self._stream(args[1], _now_ms(ctx))
        if s is None:  # Redis 7.0 looks the key up before it parses the IDs
            return 0
        ids = [parse_id(a) for a in args[2:]]
        deleted = 0
        for i in ids:
            if s.entries.pop(i, None) is not None:
                if i > s.max_deleted:
                    s.max_deleted = i
                deleted += 1
        if deleted:
            self.keyspace.bump(args[1])
        return deleted

    @command("XSETID", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def xsetid(self, ctx: Context, args: list[bytes]) -> Any:
        new = parse_id(args[2])
        added = -1
        max_deleted = MIN_ID
        i = 3
        n = len(args)
        while i < n:
            more = n - 1 - i
            opt = args[i].upper()
            if opt == b"ENTRIESADDED" and more:
                added = parse_int(args[i + 1])
                if added < 0:
                    raise KvError("ERR entries_added must be positive")
            elif opt == b"MAXDELETEDID" and more:
                max_deleted = parse_id(args[i + 1])
                if new < max_deleted:
                    raise KvError(
                        "ERR The ID specified in XSETID is smaller than the provided "
                        "max_deleted_entry_id"
                    )
            else:
                raise syntax_error()
            i += 2
        s = self._stream(args[1], _now_ms(ctx))
        if s is None:
            raise KvError("ERR no such key")
        if s.entries:
            if new < s.last_valid():
                raise KvError(
                    "ERR The ID specified in XSETID is smaller than the target stream top item"
                )
            if added != -1 and len(s.entries) > added:
                raise KvError(
                    "ERR The entries_added specified in XSETID is smaller than the target "
                    "stream length"
                )
        # Redis 7.0 does not compare with the stream's own max_deleted_entry_id (7.2 does)
        s.last = new
        if added != -1:
            s.added = added
        if max_deleted != MIN_ID:
            s.max_deleted = max_deleted
        return OK

    # --- XLEN, XRANGE, XREVRANGE -------------------------------------------------------------

    @command("XLEN", 2, keys=(1, 1, 1), flags=("fast",))
    def xlen(self, now: int, args: list[bytes]) -> int:
        s = self._stream(args[1], now)
        return 0 if s is None else len(s.entries)

    @command("XRANGE", -4, keys=(1, 1, 1))
    def xrange(self, now: int, args: list[bytes]) -> Any:
        return self._range(now, args, rev=False)

    @command("XREVRANGE", -4, keys=(1, 1, 1))
    def xrevrange(self, now: int, args: list[bytes]) -> Any:
        return self._range(now, args, rev=True)

    def _range(self, now: int, args: list[bytes], rev: bool) -> Any:
        start_text, end_text = (args[3], args[2]) if rev else (args[2], args[3])
        start = _interval(start_text, 0, end=False)
        end = _interval(end_text, U64_MAX, end=True)
        count = -1
        j = 4
        while j < len(args):
            if args[j].upper() == b"COUNT" and j + 1 < len(args):
                count = max(parse_int(args[j + 1]), 0)
                j += 2
            else:
                raise syntax_error()
        s = self._stream(args[1], now)
        if s is None:
            return []
        if count == 0:
            return NULL_ARRAY
        return _entries(s, s.range(start, end, max(count, 0), rev))

    # --- XREAD, XREADGROUP ---------------------------------------------------------------------

    def _resolve_ids(self, now: int, req: ReadRequest, texts: list[bytes]) -> None:
        """Redis's second pass of XREAD/XREADGROUP: each key's type and group, each ID."""
        for key, text in zip(req.keys, texts, strict=True):
            s = self._stream(key, now)
            if req.group is not None and (s is None or req.group not in s.groups):
                raise _nogroup_or_key(key, req.group, " in XREADGROUP with GROUP option")
            if text == b"$":
                if req.group is not None:
                    raise KvError(
                        "ERR The $ ID is meaningless in the context of XREADGROUP: you want to "
                        "read the history of this consumer by specifying a proper ID, or use "
                        "the > ID to get new messages. The $ ID would just return an empty "
                        "result set."
                    )
                req.ids.append(MIN_ID if s is None else s.last)
            elif text == b">":
                if req.group is None:
                    raise KvError(
                        "ERR The > ID can be specified only when calling XREADGROUP using the "
                        "GROUP <group> <consumer> option."
                    )
                req.ids.append(None)
            else:
                req.ids.append(parse_id(text))

    def serve_read(self, ctx: Context | None, now: int, req: ReadRequest) -> Any:
        """Serve a parsed XREAD (``ctx`` None) or XREADGROUP now: the reply, or None when
        there is nothing for it yet (the blocking machinery may try again later)."""
        out = MapOfArrays()
        for key, gt in zip(req.keys, req.ids, strict=True):
            s = self._stream(key, now)
            if s is None:
                continue
            if req.group is None:
                assert gt is not None
                if s.entries and s.last_valid() > gt:
                    start = incr_id(gt)
                    assert start is not None
                    out.append((key, _entries(s, s.range(start, MAX_ID, req.count))))
                continue
            g = s.groups[req.group]
            if gt is not None:  # the consumer's history
                out.append((key, self._history(s, g, req.consumer, gt, req.count, now)))
            elif s.entries and s.last_valid() > g.last:
                assert ctx is not None
                out.append((key, self._deliver(s, g, req, now)))
        return out if out else None

    def _history(self, s: Stream, g: Group, consumer: bytes, gt: ID, count: int, now: int) -> Any:
        c = g.consumer(consumer, now)
        start = incr_id(gt)
        if start is None:
            return []
        ids = c.pel.irange(start, MAX_ID)
        out = []
        for i in list(islice(ids, count) if count else ids):
            fields = s.entries.get(i)
            if fields is None:  # deleted since (XDEL, XTRIM): the ID and a null
                out.append([fmt(i), NULL_ARRAY])
                continue
            nack = c.pel[i]
            nack.time = now
            nack.count += 1
            out.append([fmt(i), list(fields)])
        return out

    def _deliver(self, s: Stream, g: Group, req: ReadRequest, now: int) -> Any:
        c = g.consumer(req.consumer, now)
        start = incr_id(g.last)
        assert start is not None
        out = []
        for i in s.range(start, MAX_ID, req.count):
            if g.read != INVALID_READ and not s.has_tombstones(i):
                g.read += 1
            elif s.added:
                g.read = s.estimate_read(i)
            g.last = i
            if not req.noack:
                nack = g.pel.get(i)
                if nack is not None:  # delivered before (XGROUP SETID back): a new owner
                    if nack.consumer is not None:
                        nack.consumer.pel.pop(i, None)
                    nack.time, nack.count, nack.consumer = now, 1, c
                else:
                    nack = g.pel[i] = Nack(now, 1, c)
                c.pel[i] = nack
            out.append(_entry(s, i))
        return out

    def _read_reply(self, req: ReadRequest, served: Any) -> Any:
        if served is not None:
            return served
        # Nothing yet: with BLOCK outside MULTI the connection made this a blocking read
        # (Blocking.blocking_read); here it is a read that may not block (in MULTI, or
        # a script), which answers as if its timeout had passed, as Redis does.
        return NULL_ARRAY

    @command("XREAD", -4, keys=(1, -1, 1), flags=("may-block",))
    def xread(self, now: int, args: list[bytes]) -> Any:
        req, texts = parse_read(args, xreadgroup=False)
        self._resolve_ids(now, req, texts)
        return self._read_reply(req, self.serve_read(None, now, req))

    @command("XREADGROUP", -7, write=True, keys=(1, -1, 1), flags=("may-block",))
    def xreadgroup(self, ctx: Context, args: list[bytes]) -> Any:
        req, texts = parse_read(args, xreadgroup=True)
        now = _now_ms(ctx)
        self._resolve_ids(now, req, texts)
        return self._read_reply(req, self.serve_read(ctx, now, req))

    # --- consumer groups -----------------------------------------------------------------------

    @command("XGROUP", -2, write=True, keys=(2, 2, 1))
    def xgroup(self, ctx: Context, args: list[bytes]) -> Any:
        sub = _subcommand(args, XGROUP_SUBCOMMANDS, "XGROUP")
        if sub == b"HELP":
            return [Status(line) for line in _XGROUP_HELP]
        n = len(args)
        now = _now_ms(ctx)
        mkstream = False
        read = INVALID_READ
        if sub in (b"CREATE", b"SETID") and n >= 6:  # options first, as Redis 7.0
            i = 5
            while i < n:
                opt = args[i].upper()
                if opt == b"MKSTREAM" and sub == b"CREATE":
                    mkstream = True
                    i += 1
                elif opt == b"ENTRIESREAD" and i + 1 < n:
                    read = parse_int(args[i + 1])
                    if read < 0 and read != INVALID_READ:
                        raise KvError("ERR value for ENTRIESREAD must be positive or -1")
                    i += 2
                else:
                    raise _subcommand_error(args[1], "XGROUP")
        key, name = args[2], args[3]
        s = self._stream(key, now)
        g = None
        if not mkstream:
            if s is None:
                raise KvError(
                    "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE "
                    "you may want to use the MKSTREAM option to create an empty stream "
                    "automatically."
                )
            g = s.groups.get(name)
            if g is None and sub in (b"SETID", b"CREATECONSUMER", b"DELCONSUMER"):
                raise _nogroup(name, key)
        if sub == b"CREATE" and 5 <= n <= 8:
            last = parse_id(args[4]) if args[4] != b"$" else MIN_ID if s is None else s.last
            if s is None:
                s = Stream()
                self.keyspace.put(key, s)
            if name in s.groups:
                raise KvError("BUSYGROUP Consumer Group name already exists")
            s.groups[name] = Group(last, read)
            return OK
        assert s is not None
        if sub == b"SETID" and n in (5, 7):
            assert g is not None
            last = s.last if args[4] == b"$" else parse_id(args[4], strict=False)
            g.last = last
            g.read = read
            return OK
        if sub == b"DESTROY":
            if g is None:
                return 0
            del s.groups[name]
            return 1
        if sub == b"CREATECONSUMER":
            assert g is not None
            if args[4] in g.consumers:
                return 0
            g.consumers[args[4]] = Consumer(args[4], now)
            return 1
        if sub == b"DELCONSUMER":
            assert g is not None
            gone = g.consumers.pop(args[4], None)
            if gone is None:
                return 0
            for pid in gone.pel:
                del g.pel[pid]
            return len(gone.pel)
        raise _subcommand_error(args[1], "XGROUP")

    @command("XACK", -4, write=True, keys=(1, 1, 1), flags=("fast",))
    def xack(self, ctx: Context, args: list[bytes]) -> int:
        s = self._stream(args[1], _now_ms(ctx))
        g = None if s is None else s.groups.get(args[2])
        if g is None:
            return 0
        ids = [parse_id(a) for a in args[3:]]
        acked = 0
        for i in ids:
            if i in g.pel:
                g.drop(i)
                acked += 1
        return acked

    @command("XPENDING", -3, keys=(1, 1, 1))
    def xpending(self, now: int, args: list[bytes]) -> Any:
        n = len(args)
        if n != 3 and not 6 <= n <= 9:
            raise syntax_error()
        key, name = args[1], args[2]
        minidle = 0
        consumer = None
        start = end = MIN_ID
        count = 0
        if n >= 6:
            at = 3
            if args[3].upper() == b"IDLE":
                minidle = parse_int(args[4])
                if n < 8:
                    raise syntax_error()
                at = 5
            count = max(parse_int(args[at + 2]), 0)
            start = _interval(args[at], 0, end=False)
            end = _interval(args[at + 1], U64_MAX, end=True)
            if at + 3 < n:
                consumer = args[at + 3]
        s = self._stream(key, now)
        g = None if s is None else s.groups.get(name)
        if g is None:
            raise _nogroup_or_key(key, name)
        if n == 3:
            if not g.pel:
                return [0, None, None, NULL_ARRAY]
            owners = [[c.name, b"%d" % len(c.pel)] for _, c in sorted(g.consumers.items()) if c.pel]
            return [len(g.pel), fmt(g.pel.peekitem(0)[0]), fmt(g.pel.peekitem(-1)[0]), owners]
        if consumer is not None:
            c = g.consumers.get(consumer)
            if c is None:
                return []
            pel = c.pel
        else:
            pel = g.pel
        out: list[Any] = []
        if start > end:
            return out
        for i in pel.irange(start, end):
            if not count:
                break
            nack = pel[i]
            if minidle and now - nack.time < minidle:
                continue
            count -= 1
            owner = nack.consumer.name if nack.consumer is not None else b""
            out.append([fmt(i), owner, max(now - nack.time, 0), nack.count])
        return out

    @command("XCLAIM", -6, write=True, keys=(1, 1, 1), flags=("fast",))
    def xclaim(self, ctx: Context, args: list[bytes]) -> Any:
        key, name = args[1], args[2]
        now = _now_ms(ctx)
        s = self._stream(key, now)
        g = None if s is None else s.groups.get(name)
        if s is None or g is None:
            raise _nogroup_or_key(key, name)
        minidle = max(_long(args[4], "Invalid min-idle-time argument for XCLAIM"), 0)
        ids: list[ID] = []
        j = 5
        n = len(args)
        while j < n:
            parsed = _parse_id(args[j], strict=True, missing_seq=0, star=False)
            if parsed is None:
                break
            ids.append(parsed[0])
            j += 1
        force = justid = False
        retrycount = -1
        delivery = -1
        last = MIN_ID
        while j < n:
            more = n - 1 - j
            opt = args[j].upper()
            if opt == b"FORCE":
                force = True
            elif opt == b"JUSTID":
                justid = True
            elif opt == b"IDLE" and more:
                j += 1
                delivery = now - _long(args[j], "Invalid IDLE option argument for XCLAIM")
            elif opt == b"TIME" and more:
                j += 1
                delivery = _long(args[j], "Invalid TIME option argument for XCLAIM")
            elif opt == b"RETRYCOUNT" and more:
                j += 1
                retrycount = _long(args[j], "Invalid RETRYCOUNT option argument for XCLAIM")
            elif opt == b"LASTID" and more:
                j += 1
                last = parse_id(args[j])
            else:
                raise KvError(f"ERR Unrecognized XCLAIM option '{_text(args[j])}'")
            j += 1
        if last > g.last:
            g.last = last
        if delivery == -1 or delivery < 0 or delivery > now:
            delivery = now
        consumer: Consumer | None = None
        out: list[Any] = []
        for i in ids:
            nack = g.pel.get(i)
            if i not in s.entries:
                if nack is not None:
                    g.drop(i)
                continue
            if force and nack is None:
                nack = g.pel[i] = Nack(now, 1, None)
            if nack is None:
                continue
            if nack.consumer is not None and minidle and now - nack.time < minidle:
                continue
            if consumer is None:
                consumer = g.consumer(args[3], now)
            if nack.consumer is not consumer and nack.consumer is not None:
                nack.consumer.pel.pop(i, None)
            nack.time = delivery
            if retrycount >= 0:
                nack.count = retrycount
            elif not justid:
                nack.count += 1
            if nack.consumer is not consumer:
                consumer.pel[i] = nack
                nack.consumer = consumer
            out.append(fmt(i) if justid else _entry(s, i))
        return out

    @command("XAUTOCLAIM", -6, write=True, keys=(1, 1, 1), flags=("fast",))
    def xautoclaim(self, ctx: Context, args: list[bytes]) -> Any:
        key, name = args[1], args[2]
        now = _now_ms(ctx)
        minidle = max(_long(args[4], "Invalid min-idle-time argument for XAUTOCLAIM"), 0)
        start = _interval(args[5], 0, end=False)
        count = 100
        justid = False
        j = 6
        n = len(args)
        while j < n:
            more = n - 1 - j
            opt = args[j].upper()
            if opt == b"COUNT" and more:
                count = _long(args[j + 1], "COUNT must be > 0")
                if not 1 <= count <= _AUTOCLAIM_MAX_COUNT:
                    raise KvError("ERR COUNT must be > 0")
                j += 1
            elif opt == b"JUSTID":
                justid = True
            else:
                raise syntax_error()
            j += 1
        s = self._stream(key, now)
        g = None if s is None else s.groups.get(name)
        if s is None or g is None:
            raise _nogroup_or_key(key, name)
        if count * 16 > _TRANSIENT_MAX:
            raise KvError(
                "ERR Insufficient memory, failed allocating transient memory, COUNT too high."
            )
        attempts = count * _ATTEMPTS_FACTOR
        ids = list(islice(g.pel.irange(start, MAX_ID), min(attempts, len(g.pel)) + 1))
        consumer: Consumer | None = None
        claimed: list[Any] = []
        deleted: list[bytes] = []
        k = 0  # the next of `ids` to look at
        eof = False
        while True:
            if attempts == 0:
                break
            attempts -= 1
            if not count:
                break
            if k >= len(ids):
                eof = True
                break
            i = ids[k]
            k += 1
            nack = g.pel[i]
            if i not in s.entries:
                g.drop(i)
                deleted.append(fmt(i))
                count -= 1
                continue
            if minidle and now - nack.time < minidle:
                continue
            if consumer is None:
                consumer = g.consumer(args[3], now)
            if nack.consumer is not consumer and nack.consumer is not None:
                nack.consumer.pel.pop(i, None)
            nack.time = now
            if not justid:
                nack.count += 1
            if nack.consumer is not consumer:
                consumer.pel[i] = nack
                nack.consumer = consumer
            claimed.append(fmt(i) if justid else _entry(s, i))
            count -= 1
        cursor = MIN_ID if eof or k >= len(ids) else ids[k]
        return [fmt(cursor), claimed, deleted]

    # --- XINFO ---------------------------------------------------------------------------------

    @command("XINFO", -2, keys=(2, 2, 1))
    def xinfo(self, now: int, args: list[bytes]) -> Any:
        sub = _subcommand(args, XINFO_SUBCOMMANDS, "XINFO")
        if sub == b"HELP":
            return [Status(line) for line in _XINFO_HELP]
        key = args[2]
        s = self._stream(key, now)
        if s is None:
            raise KvError("ERR no such key")
        if sub == b"CONSUMERS":
            g = s.groups.get(args[3])
            if g is None:
                raise _nogroup(args[3], key)
            return [
                {b"name": c.name, b"pending": len(c.pel), b"idle": max(now - c.seen, 0)}
                for _, c in sorted(g.consumers.items())
            ]
        if sub == b"GROUPS":
            return [
                {
                    b"name": name,
                    b"consumers": len(g.consumers),
                    b"pending": len(g.pel),
                    b"last-delivered-id": fmt(g.last),
                    b"entries-read": None if g.read == INVALID_READ else g.read,
                    b"lag": s.lag(g),
                }
                for name, g in sorted(s.groups.items())
            ]
        opts = args[3:]
        if not opts:
            return self._info_stream(s)
        if len(opts) not in (1, 3) or opts[0].upper() != b"FULL":
            raise _subcommand_error(args[1], "XINFO")
        count = 10
        if len(opts) == 3:
            if opts[1].upper() != b"COUNT":
                raise _subcommand_error(args[1], "XINFO")
            count = parse_int(opts[2])
            if count < 0:
                count = 10
        return self._info_full(s, count)

    @staticmethod
    def _head(s: Stream) -> dict[bytes, Any]:
        keys = (len(s.entries) + 99) // 100
        return {
            b"length": len(s.entries),
            # Redis's radix tree of 100-entry listpacks: an estimate here (see the docs)
            b"radix-tree-keys": keys,
            b"radix-tree-nodes": keys + 1,
            b"last-generated-id": fmt(s.last),
            b"max-deleted-entry-id": fmt(s.max_deleted),
            b"entries-added": s.added,
            b"recorded-first-entry-id": fmt(s.first),
        }

    def _info_stream(self, s: Stream) -> dict[bytes, Any]:
        out = self._head(s)
        out[b"groups"] = len(s.groups)
        out[b"first-entry"] = _entry(s, s.entries.peekitem(0)[0]) if s.entries else None
        out[b"last-entry"] = _entry(s, s.entries.peekitem(-1)[0]) if s.entries else None
        return out

    def _info_full(self, s: Stream, count: int) -> dict[bytes, Any]:
        out = self._head(s)
        out[b"entries"] = _entries(s, s.range(MIN_ID, MAX_ID, count))
        groups = []
        for name, g in sorted(s.groups.items()):
            pel = g.pel.items()
            consumers = []
            for _, c in sorted(g.consumers.items()):
                cpel = c.pel.items()
                consumers.append({
                    b"name": c.name,
                    b"seen-time": c.seen,
                    b"pel-count": len(c.pel),
                    b"pending": [
                        [fmt(i), n.time, n.count]
                        for i, n in (islice(cpel, count) if count else cpel)
                    ],
                })  # fmt: skip
            groups.append({
                b"name": name,
                b"last-delivered-id": fmt(g.last),
                b"entries-read": None if g.read == INVALID_READ else g.read,
                b"lag": s.lag(g),
                b"pel-count": len(g.pel),
                b"pending": [
                    [fmt(i), n.consumer.name if n.consumer is not None else b"", n.time, n.count]
                    for i, n in (islice(pel, count) if count else pel)
                ],
                b"consumers": consumers,
            })  # fmt: skip
        out[b"groups"] = groups
        return out
