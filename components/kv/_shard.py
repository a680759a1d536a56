"""The KV partitioned by key: each partition is a whole KV engine.

``dominoes run dominoes.components.kv:service --partition copies=K`` runs this
composition instead of the replicated one::

    commands   Commands over PubSub and ServerConfig: replicated (pub/sub, CONFIG, ...)
    pubsub     PubSub: replicated, as in the replicated KV
    serverconfig  ServerConfig: replicated
    shard      Shard, partitioned by key: per partition, the data components
               (Keyspace, Expiry, Keys, Memory, Transactions, Strings, ..., Scripting,
               Functions) and a Commands running them

A key's partition is CRC-32 of its hash tag (Redis Cluster's ``{tag}``) modulo
:data:`PARTITIONS`; each partition is held by ``copies`` replicas.  A batch of
commands (``Shard.run``) or a transaction (``Shard.exec``) is one log entry,
split by the partition of each command's first key (:func:`route`): every
replica applies the commands of the partitions it holds, and the replica that
appended the entry gathers the replies of the others (their *partials*).  So
a transaction across partitions is still one entry, applied atomically, with
no locks and no two-phase commit.

What a command sees is its partition: a command naming keys of two partitions
is refused with ``CROSSSLOT`` before it is appended (as Redis Cluster does),
and so is a transaction that WATCHes keys unless all its keys and the watched
ones share a partition.  The keyless commands that read or change every key
(DBSIZE, KEYS, SCAN, RANDOMKEY, FLUSHALL, SCRIPT, FUNCTION, ...) go to every
partition (:data:`dominoes.EVERY`) and their replies are combined
(:func:`combine_every`).  A script that declares no key runs in partition 0.

The replies cross replicas as msgpack, so the shard returns them packed
(``_resp.pack``: the RESP types that msgpack would flatten become ``Ext``
values), and the connection's encoder writes packed values as it writes the
others.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, ClassVar, Final

import msgspec
from msgspec.msgpack import Ext

from dominoes import EVERY, KEY_ORDER, Component, Context, Partition, combine, hash_tag, update

from ._commands import Commands
from ._errors import KvError
from ._expiry import Expiry
from ._memory import Memory
from ._resp import pack_replies
from ._table import Spec

__all__ = (
    "PARTITIONS",
    "WATCHED",
    "Shard",
    "command_keys",
    "combine_every",
    "locate",
    "shard_class",
)

#: How many partitions the keys are hashed into.
PARTITIONS: Final = 64
#: The pseudo-command a transaction that WATCHed keys starts with: ``[WATCHED, key]``
#: routes it to the watched partition, whose part runs WATCH's check.
WATCHED: Final = b"\x00WATCHED"
#: The reply of :data:`WATCHED` when the check failed: the transaction did not run.
ABORTED: Final = Ext(3, b"aborted")

# --- keys --------------------------------------------------------------------------------

#: commands whose keys follow a count: name -> (where the count is, keys before it),
#: as the client writes them; a command that carries its client's id (BLMPOP and
#: BZMPOP, queued in MULTI) has it at 1 in the log, and its count one further
_NUMKEYS: Final = {
    b"EVAL": (2, 0), b"EVALSHA": (2, 0), b"EVAL_RO": (2, 0), b"EVALSHA_RO": (2, 0),
    b"FCALL": (2, 0), b"FCALL_RO": (2, 0),
    b"ZINTER": (1, 0), b"ZUNION": (1, 0), b"ZDIFF": (1, 0), b"ZINTERCARD": (1, 0),
    b"SINTERCARD": (1, 0), b"LMPOP": (1, 0), b"ZMPOP": (1, 0),
    b"BLMPOP": (2, 0), b"BZMPOP": (2, 0),
    b"ZINTERSTORE": (2, 1), b"ZUNIONSTORE": (2, 1), b"ZDIFFSTORE": (2, 1),
}  # fmt: skip
#: commands whose STORE option names a key: the options that take one
_STORE_OPTIONS: Final = {
    b"SORT": (b"STORE",),
    b"GEORADIUS": (b"STORE", b"STOREDIST"),
    b"GEORADIUSBYMEMBER": (b"STORE", b"STOREDIST"),
}


def command_keys(spec: Spec, args: list[bytes]) -> list[bytes]:
    """Every key ``args`` names, as the command reads them (as it is in the log).

    Precise where the table's key positions are not: counted keys (EVAL,
    ZUNIONSTORE, LMPOP, ...), XREAD's STREAMS, SORT's and GEORADIUS's STORE.
    A malformed count gives no keys (the command answers its own error).
    """
    name = spec.name
    counted = _NUMKEYS.get(name)
    if counted is not None:
        at, before = counted
        if spec.client_id:
            at += 1
        try:
            n = int(args[at])
        except (IndexError, ValueError):
            return []
        if n < 0 or at + 1 + n > len(args):
            return []
        return [*args[at - before : at], *args[at + 1 : at + 1 + n]]
    if name == b"XREAD" or name == b"XREADGROUP":
        for i in range(1, len(args)):
            if args[i].upper() == b"STREAMS":
                rest = args[i + 1 :]
                return rest[: len(rest) // 2]
        return []
    keys = spec.keys(args)
    options = _STORE_OPTIONS.get(name)
    if options is not None:
        for i in range(2, len(args) - 1):
            if args[i].upper() in options:
                keys = [*keys, args[i + 1]]
    return keys


def partition_of(key: bytes) -> int:
    """The partition ``key`` is in (its hash tag's CRC-32 modulo :data:`PARTITIONS`)."""
    return zlib.crc32(hash_tag(key)) % PARTITIONS


#: keyless commands that read or change every key: they go to every partition
_EVERYWHERE: Final = frozenset(
    {b"DBSIZE", b"KEYS", b"SCAN", b"RANDOMKEY", b"FLUSHALL", b"FLUSHDB", b"SWAPDB", b"SCRIPT",
     b"FUNCTION", b"UNWATCH"}
)  # fmt: skip


#: commands whose first key is not at the table's first key position
_COUNTED: Final = frozenset({*_NUMKEYS, b"XREAD", b"XREADGROUP"})


def _route_with(table: dict[bytes, Spec]) -> Callable[[list[bytes]], Any]:
    def route(command: list[bytes]) -> Any:
        """A command's partition key: its first key, EVERY, or b"" (partition 0)."""
        name = command[0]
        if name == WATCHED:  # [WATCHED, key]; a malformed one (a local client's) goes to 0
            return command[1] if len(command) > 1 else b""
        spec = table.get(name)
        if spec is None:
            return b""
        if spec.first and name not in _COUNTED:
            if len(command) > spec.first:
                return command[spec.first]
            return b""
        if name in _EVERYWHERE:
            return EVERY
        keys = command_keys(spec, command)
        return keys[0] if keys else b""

    return route


def _locator(table: dict[bytes, Spec], route: Callable[[list[bytes]], Any]) -> Callable[[Any], int]:
    """``Partition(locate=...)``: a command's partition, fast for the common one-key case."""
    first = {n: s.first for n, s in table.items() if s.first and n not in _COUNTED}
    crc32 = zlib.crc32

    def locate(command: list[bytes]) -> int:
        at = first.get(command[0])
        if at is not None and len(command) > at:
            key = command[at]
            if b"{" in key:
                key = hash_tag(key)
            return crc32(key) % PARTITIONS
        key = route(command)
        return -1 if key is EVERY else partition_of(key)

    return locate


def _is_error(value: Any) -> bool:
    return type(value) is Ext and value.code == 2


def combine_every(command: list[bytes], values: list[Any]) -> Any:
    """A command sent to every partition: its reply, from each partition's (packed).

    An error from any partition is the reply (every partition checks the
    arguments alike, so they all fail the same way).
    """
    for v in values:
        if _is_error(v):
            return v
    name = command[0]
    if name == b"DBSIZE":
        return sum(v for v in values if type(v) is int)
    if name == b"KEYS":
        return [k for v in values if type(v) is list for k in v]
    if name == b"RANDOMKEY" or name == b"SCAN":
        return next((v for v in values if v is not None), None)
    if name == b"SCRIPT" and len(command) > 1 and command[1].upper() == b"EXISTS":
        # a script EVAL cached is in its partition's cache only: known if any has it
        lists = [v for v in values if type(v) is list]
        return [max(flags) for flags in zip(*lists, strict=True)] if lists else values[0]
    return values[0]


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()


# --- the partition's engine ----------------------------------------------------------------


class _Expiry(Expiry):
    """Expiry whose sweep timer fires into its partition (``Shard.sweep``)."""

    name = "expiry"

    sweep_event = "shard.sweep"


class _Memory(Memory):
    """Memory with ``maxmemory`` split evenly between the partitions."""

    name = "memory"

    def limit(self) -> int:
        total = super().limit()
        return max(1, total // PARTITIONS) if total else 0


class Shard(Component):
    """One partition of the KV: a whole engine (see the module doc).

    ``shard_class(copies)`` is this class partitioned with ``copies`` copies;
    this base is never bound itself.
    """

    name = "shard"
    transient: ClassVar[tuple[str, ...]] = (
        "parts", "commands", "keyspace", "expiry", "memory", "keys", "transactions",
        "settings", "_pid",
    )  # fmt: skip

    def __init__(self) -> None:
        from ._service import SHARD_TABLE, compose

        parts = compose(SHARD_TABLE, pubsub=False, expiry=_Expiry, memory=_Memory)
        self.parts = {c.name: c for c in parts}
        self.commands = Commands(SHARD_TABLE, parts)
        p: Any = self.parts
        self.keyspace, self.expiry, self.memory = p["keyspace"], p["expiry"], p["memory"]
        self.keys, self.transactions, self.settings = (
            p["keys"],
            p["transactions"],
            p["serverconfig"],
        )
        #: the partition being applied (SCAN's cursor names it)
        self._pid = 0
        bound = self.commands.bound
        bound[b"SCAN"] = (self._scan, False, None)
        p["scripting"].local = self._local

    # --- state -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {n: c.snapshot() for n, c in self.parts.items() if n != "serverconfig"}

    def restore(self, state: dict[str, Any]) -> None:
        for name, part in state.items():
            self.parts[name].restore(part)

    def __deepcopy__(self, memo: dict[int, Any]) -> Shard:
        new = type(self)()
        new.restore(_decoder.decode(_encoder.encode(self.snapshot())))
        return new

    def _link(self, ctx: Context) -> None:
        """Follow the replicated CONFIG SET values (maxmemory, its policy)."""
        live: Any = ctx.component("serverconfig")
        self.settings.config = live.config
        self._pid = ctx.partition or 0

    # --- the command events ------------------------------------------------------------

    # A command that goes to every partition (EVERY) is one list object in every
    # part's share, applied by each part in turn: no part may change it in place.
    # None does: the only rewrite, memory's OOM refusal, is of DENYOOM commands,
    # and none of them goes to every partition.

    @combine(KEY_ORDER)
    @update
    def run(self, ctx: Context, commands: list[list[bytes]]) -> list[Any]:
        """A batch of commands of this partition (see ``Commands.run``); packed replies."""
        self._link(ctx)
        self.expiry.lazy(ctx, commands)
        self.memory.check(ctx, commands)
        out = self.commands.run(ctx, commands)
        self.memory.account(ctx, commands)
        self.keys.stamp(ctx, commands)
        return pack_replies(out)

    @combine(KEY_ORDER)
    @update
    def exec(self, ctx: Context, commands: list[list[bytes]], client: int) -> list[Any]:
        """This partition's commands of a transaction; packed replies.

        A transaction that WATCHed keys starts with ``[WATCHED, key]`` (all its
        keys share that key's partition): its reply is None, or
        :data:`ABORTED` when a watched key changed, and then nothing ran.
        """
        self._link(ctx)
        watched = bool(commands) and commands[0][0] == WATCHED
        if watched:
            commands = commands[1:]
        self.expiry.lazy(ctx, commands, client)
        if watched and self.transactions.changed(ctx, client):
            return [ABORTED] + [None] * len(commands)
        self.memory.check(ctx, commands, client)
        out = self.commands.exec(ctx, commands, client)
        self.memory.account(ctx, commands, client)
        self.keys.stamp(ctx, commands, client)
        replies = pack_replies(out)
        return [None, *replies] if watched else replies

    @update
    def sweep(self, ctx: Context) -> int:
        """The partition's expiry timer fired (``Expiry.sweep``)."""
        self._link(ctx)
        return int(self.expiry.sweep(ctx))

    @update
    def clients_gone(self, ctx: Context, replica: int, below: int) -> None:
        """Drop the watches of ``replica``'s clients numbered below ``below``."""
        self.transactions._gone(ctx, replica, below)

    def _local(self, spec: Spec, args: list[bytes]) -> bool:
        """Whether a script's command names keys of this partition only."""
        pid = self._pid
        return all(partition_of(k) == pid for k in command_keys(spec, args))

    # --- SCAN across partitions ----------------------------------------------------------

    def _scan(self, now: int, args: list[bytes]) -> Any:
        """SCAN of one partition: the cursor is (the partition's cursor, the partition).

        Every partition gets the command; the one the cursor names answers,
        and its cursor goes on to the next partition when it is done.
        """
        try:
            cursor = int(args[1])
        except ValueError:
            cursor = -1
        if not 0 <= cursor < (1 << 48) * PARTITIONS:
            raise KvError("ERR invalid cursor")
        pid, inner = cursor % PARTITIONS, cursor // PARTITIONS
        if pid != self._pid:
            return None
        reply = self.keyspace.scan(now, [args[0], b"%d" % inner, *args[2:]])
        following = int(reply[0])
        if following:
            reply[0] = b"%d" % (following * PARTITIONS + pid)
        else:
            reply[0] = b"%d" % (pid + 1 if pid + 1 < PARTITIONS else 0)
        return reply


#: the shard's routing, made once, on first use (the table is composed in ``_service``):
#: (keyof, locate)
_ROUTING: list[tuple[Callable[[list[bytes]], Any], Callable[[Any], int]]] = []


def _routing() -> tuple[Callable[[list[bytes]], Any], Callable[[Any], int]]:
    if not _ROUTING:
        from ._service import SHARD_TABLE

        route = _route_with(SHARD_TABLE)
        _ROUTING.append((route, _locator(SHARD_TABLE, route)))
    return _ROUTING[0]


def locate(command: list[bytes]) -> int:
    """The partition ``Shard.run`` sends ``command`` to (-1: every partition)."""
    return _routing()[1](command)


def shard_class(copies: int) -> type[Shard]:
    """:class:`Shard` partitioned into :data:`PARTITIONS`, each held by ``copies`` replicas."""
    route, fast = _routing()
    spec = Partition(
        "commands",
        copies=copies,
        partitions=PARTITIONS,
        tag=hash_tag,
        keyof=route,
        every=combine_every,
        locate=fast,
    )

    class PartitionedShard(Shard, partition=spec):
        name = "shard"

    PartitionedShard.__qualname__ = PartitionedShard.__name__ = f"Shard_copies{copies}"
    return PartitionedShard
