"""A Redis-protocol key-value store whose whole state is replicated on every core.

Run it (6380 is its usual port; ``dominoes run``'s default is 7000)::

    dominoes run dominoes.components.kv:service --replicas 2 --port 6380
    redis-cli -p 6380 SET greeting hello

Any Redis client (redis-cli, redis-py, redis-benchmark) talks to it: RESP2,
and RESP3 after ``HELLO 3``.  Writes go through the log as batches, reads are
answered from the local replica.  See ``docs/howto/kv.md``.

The service is composed of small components, each a micro-protocol (see
``_service.py``), built only on the public dominoes API.
"""

from __future__ import annotations

from ._commands import Commands as Commands
from ._commands import Transactions as Transactions
from ._connection import Connection as Connection
from ._errors import KvError as KvError
from ._expiry import Expiry as Expiry
from ._hashes import Hashes as Hashes
from ._keyspace import Keyspace as Keyspace
from ._lists import Lists as Lists
from ._pubsub import PubSub as PubSub
from ._resp import RequestParser as RequestParser
from ._resp import encode as encode
from ._server import Server as Server
from ._service import DEFAULT_PORT as DEFAULT_PORT
from ._service import TABLE as TABLE
from ._service import make_service as make_service
from ._service import service as service
from ._sets import Sets as Sets
from ._strings import Strings as Strings

__all__ = (
    "DEFAULT_PORT",
    "TABLE",
    "Commands",
    "Connection",
    "Expiry",
    "Hashes",
    "Keyspace",
    "KvError",
    "Lists",
    "PubSub",
    "RequestParser",
    "Server",
    "Sets",
    "Strings",
    "Transactions",
    "encode",
    "make_service",
    "service",
)
