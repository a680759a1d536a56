"""The composition: which components, in which order, and the command table.

::

    Commands      runs batches and transactions (the command events)
    Keyspace      key -> value, deadline, version; DEL, EXISTS, KEYS, SCAN, RENAME, ...
    Expiry        lazy expiry (order -10 on the command events), active expiry timer, TTLs
    Transactions  WATCH's check (order -5 on Commands.exec)
    Strings, Hashes, Lists, Sets, Zsets   one component per data type, over the keyspace
    Blocking      blocked clients (BLPOP, BZPOPMIN, ...), served at apply time
    Memory        maxmemory: accounted sizes (order 9), eviction or OOM (order -8)
    PubSub        subscriptions (replicated), delivery (an effect on every replica)
    Scripting     EVAL and the script cache; Functions: FUNCTION libraries and FCALL
"""

from __future__ import annotations

from typing import Any, Final

from dominoes import Component, Option, Service

from ._bitmaps import Bitmaps
from ._blocking import Blocking
from ._commands import Commands, Transactions
from ._conncommands import ServerConfig
from ._connection import Connection
from ._expiry import Expiry
from ._functions import Functions
from ._geo import Geo
from ._hashes import Hashes
from ._hll import HyperLogLogs
from ._keys import Keys
from ._keyspace import Keyspace
from ._lists import Lists
from ._memory import Memory
from ._pubsub import PubSub
from ._scripting import Scripting
from ._server import start_hook, tcp_factory
from ._sets import Sets
from ._shard import shard_class
from ._streams import Streams
from ._strings import Strings
from ._table import CONN, Spec, commands_of
from ._zsets import Zsets

__all__ = (
    "DEFAULT_PORT",
    "FRONT_TABLE",
    "SHARD_TABLE",
    "TABLE",
    "compose",
    "make_service",
    "service",
)

#: The port to run it on (``dominoes run ... --port 6380``); Redis's own is 6379.
DEFAULT_PORT: Final = 6380


def _table() -> dict[bytes, Spec]:
    table: dict[bytes, Spec] = {}
    sources: list[tuple[type, str]] = [
        (Keyspace, Keyspace.name),
        (Expiry, Expiry.name),
        (Keys, Keys.name),
        (Transactions, Transactions.name),
        (Strings, Strings.name),
        (Hashes, Hashes.name),
        (Lists, Lists.name),
        (Sets, Sets.name),
        (Zsets, Zsets.name),
        (Blocking, Blocking.name),
        (Geo, Geo.name),
        (Bitmaps, Bitmaps.name),
        (HyperLogLogs, HyperLogLogs.name),
        (Streams, Streams.name),
        (PubSub, PubSub.name),
        (Scripting, Scripting.name),
        (Functions, Functions.name),
        (ServerConfig, ServerConfig.name),
        (Connection, ""),
    ]
    for cls, component in sources:
        for spec in commands_of(cls, component):
            if spec.name in table:
                raise ValueError(f"command {spec.name.decode()} is declared twice")
            table[spec.name] = spec
    return dict(sorted(table.items()))


#: Every command the service knows, by upper-case name.
TABLE: Final = _table()


def compose(
    table: dict[bytes, Spec],
    *,
    pubsub: bool = True,
    expiry: type[Expiry] = Expiry,
    memory: type[Memory] = Memory,
) -> list[Component]:
    """Fresh data components over one keyspace, linked to each other (not ``Commands``)."""
    keyspace = Keyspace()
    lists, zsets, streams = Lists(keyspace), Zsets(keyspace), Streams(keyspace)
    config = ServerConfig(keyspace)
    keys = Keys(keyspace, table, config)
    mem = memory(keyspace, table, config, keys)
    parts: list[Component] = [
        keyspace,
        expiry(keyspace, table),
        keys,
        mem,
        Transactions(keyspace),
        Strings(keyspace),
        Hashes(keyspace),
        lists,
        Sets(keyspace),
        zsets,
        Blocking(keyspace, lists, zsets, streams),
        Geo(keyspace),
        Bitmaps(keyspace),
        HyperLogLogs(keyspace),
        streams,
        *([PubSub()] if pubsub else []),
        config,
    ]
    scripting = Scripting(table, parts)
    functions = Functions(scripting)
    parts += [scripting, functions]
    mem.exempt.update(
        {
            b"EVAL": scripting.ignores_oom,
            b"EVALSHA": scripting.ignores_oom,
            b"FCALL": functions.ignores_oom,
        }
    )
    return parts


#: The commands a partition's engine runs: all but pub/sub's.
SHARD_TABLE: Final = {n: s for n, s in TABLE.items() if s.component != "pubsub"}
#: The commands the replicated part of the partitioned KV runs.
FRONT_TABLE: Final = {
    n: s for n, s in TABLE.items() if s.component in ("pubsub", "serverconfig") or s.kind is CONN
}


def _copies(text: str) -> int:
    """``--partition copies=K``'s value."""
    name, sep, value = text.partition("=")
    if name.strip() != "copies" or not sep:
        raise ValueError("expected copies=K, for example --partition copies=1")
    copies = int(value)
    if copies < 1:
        raise ValueError("copies must be at least 1")
    return copies


_OPTIONS: Final = (
    Option(
        "partition",
        type=_copies,
        help="partition the keys: copies=K replicas hold each key (default: every replica "
        "holds every key)",
    ),
)


def make_service(name: str = "kv", *, copies: int | None = None) -> Service:
    """A new KV service (its own component instances) named ``name``.

    ``copies``: partition the keys, each held by ``copies`` replicas (None:
    every replica holds every key), as ``--partition copies=K`` does.
    """

    def configure(options: dict[str, Any]) -> Service:
        wanted = options.get("partition")
        if wanted == copies:
            return service
        return make_service(name, copies=wanted)

    if copies is None:
        parts = compose(TABLE)
        components: list[Component] = [Commands(TABLE, parts), *parts]
    else:
        pubsub = PubSub()
        config = ServerConfig(Keyspace())
        front: list[Component] = [pubsub, config]
        components = [Commands(FRONT_TABLE, front), *front, shard_class(copies)()]
    service = Service(
        name,
        components,
        tcp=tcp_factory(TABLE),
        on_start=start_hook(TABLE),
        options=_OPTIONS,
        configure=configure,
    )
    return service


#: ``dominoes run dominoes.components.kv:service --replicas N --port 6380``
service: Final = make_service()
