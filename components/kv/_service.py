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

from typing import Final

from dominoes import Component, Service

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
from ._streams import Streams
from ._strings import Strings
from ._table import Spec, commands_of
from ._zsets import Zsets

__all__ = ("DEFAULT_PORT", "TABLE", "make_service", "service")

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


def make_service(name: str = "kv") -> Service:
    """A new KV service (its own component instances) named ``name``."""
    keyspace = Keyspace()
    lists, zsets, streams = Lists(keyspace), Zsets(keyspace), Streams(keyspace)
    config = ServerConfig(keyspace)
    keys = Keys(keyspace, TABLE, config)
    memory = Memory(keyspace, TABLE, config, keys)
    parts: list[Component] = [
        keyspace,
        Expiry(keyspace, TABLE),
        keys,
        memory,
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
        PubSub(),
        config,
    ]
    scripting = Scripting(TABLE, parts)
    functions = Functions(scripting)
    parts += [scripting, functions]
    memory.exempt.update(
        {
            b"EVAL": scripting.ignores_oom,
            b"EVALSHA": scripting.ignores_oom,
            b"FCALL": functions.ignores_oom,
        }
    )
    return Service(
        name,
        [Commands(TABLE, parts), *parts],
        tcp=tcp_factory(TABLE),
        on_start=start_hook(TABLE),
    )


#: ``dominoes run dominoes.components.kv:service --replicas N --port 6380``
service: Final = make_service()
