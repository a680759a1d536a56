"""The RESP front end: one :class:`Server` per replica, one ``Connection`` per client.

Each replica accepts its own connections (``SO_REUSEPORT``) and is the owner of
every entry they append (``affinity``), so it alone parses, replies and writes.

The modules, one responsibility each:

``_server``
    the replica's :class:`Server`: the registry of live connections, the
    *group* (group commit: every connection's batch of one loop iteration in
    one ``Commands.run`` log entry), command lookup, INFO, and the ingress
    factory and start hook the service installs;
``_connection``
    a :class:`~._connection.Connection`: RESP parsing hand-off, the hot loop,
    the reply queue and flow control;
``_conncommands``
    the connection commands (HELLO, CLIENT, MULTI/EXEC, CONFIG, INFO, ...);
``_entries``
    a connection's log entries: appended in order, waiting for room in a full
    log, split when too large, refused by a durable log that cannot write,
    their replies;
``_persistence``
    SAVE, BGSAVE, LASTSAVE, INFO persistence and CONFIG's persistence
    parameters, over the durable log (``--durable``);
``_limits``
    the output limits (``client-output-buffer-limit``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

import msgspec

from dominoes import EntryTooLargeError, LogFullError, Replica

from ._commands import Bound, Commands, client_id, replica_of
from ._conncommands import REDIS_VERSION, ServerConfig
from ._connection import MAX_BATCH, Connection
from ._entries import RUN, Entry, Unblocker, refused
from ._errors import KvError
from ._limits import NORMAL_OUTPUT_LIMITS, PUBSUB_OUTPUT_LIMITS, Limits
from ._persistence import Saves
from ._pubsub import PubSub
from ._resp import OK
from ._routing import checker, reader
from ._shard import PARTITIONS
from ._table import CONN, READ, WRITE, Spec

__all__ = ("Connection", "KvConnection", "Server", "server_for", "start_hook", "tcp_factory")

#: How long CLIENT KILL waits for another replica's count (a dead replica never answers).
KILL_REPORT_TIMEOUT: Final = 5.0


class KvConnection(Connection):
    """A connection with what the server commands add: authentication (``requirepass``),
    CLIENT REPLY OFF/SKIP."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        if server.config.requirepass:
            self.authenticated = False
            self.special = True

    def _state_changed(self) -> None:
        super()._state_changed()
        if not self.authenticated or self.skip_next:
            self.special = True

    def _finish(self) -> None:
        if self.muted and self.out:  # CLIENT REPLY OFF: what was made since is dropped
            self.out.clear()
            self._push_bytes = 0
        super()._finish()

    def push(self, value: Any) -> None:
        if not self.muted:
            super().push(value)


#: Most spellings of command names :attr:`Server.known` keeps (a client
#: sending random names cannot grow it without bound).
MAX_KNOWN_SPELLINGS: Final = 4096


class _Cmd:
    """What the hot loop needs of one command, precomputed per replica."""

    __slots__ = ("check", "hi", "kind", "lo", "name", "plain", "read", "spec")

    def __init__(self, spec: Spec, read: Callable[[int, list[bytes]], Any] | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        #: the number of words (the name included) it accepts
        self.lo = spec.min_words
        self.hi = spec.max_words
        #: a write that goes into the batch as it is (no client id, not broadcast)
        self.plain = spec.kind is WRITE and not spec.client_id and not spec.broadcast
        #: a read's local implementation, ``read(now_ms, args)`` (every READ has one)
        self.read = read if read is not None else _no_local_read
        #: partitioned KV: ``check(conn, args)`` before it runs (None: no check)
        self.check: Callable[[Connection, list[bytes]], KvError | None] | None = None


def _no_local_read(now: int, args: list[bytes]) -> Any:
    """``_Cmd.read`` of a command that is not a read (the hot loop never calls it)."""
    raise TypeError(f"{args[0].decode()} has no local implementation")


def _group_done(group: list[tuple[Connection, Entry, int, int]], fut: asyncio.Future[Any]) -> None:
    """The group's entry is applied: each connection in it writes what is ready."""
    last = None
    for conn, _, _, _ in group:
        if conn is not last:  # once per run of its batches (a repeat is harmless)
            conn._on_done(fut)
            last = conn


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Server:
    """One replica's side of the service: its command implementations and connections."""

    def __init__(self, replica: Replica, table: dict[bytes, Spec]) -> None:
        self.replica = replica
        self.table = table
        self.index = replica.index
        #: the keys are partitioned (``--partition copies=K``): see ``_routing``
        self.partitioned = any(c.name == "shard" for c in replica.service.components)
        #: the events of a batch and of a transaction, and of a pub/sub batch
        self.run_event = "shard.run" if self.partitioned else RUN
        self.exec_event = "shard.exec" if self.partitioned else Commands.exec.event
        self.front_event = RUN
        bound = replica.component(Commands).bound
        #: local reads: name -> implementation(now_ms, args)
        self.reads: Bound = {k: v for k, v in bound.items() if not v[1]}
        #: the commands by name as clients spell it (``SET``, ``set``, ...)
        self.known: dict[bytes, _Cmd] = {}
        self.commands: Commands = replica.component(Commands)
        self._limits_of: list[int] | None = None
        self._normal = Limits(*NORMAL_OUTPUT_LIMITS)
        self._pubsub = Limits(*PUBSUB_OUTPUT_LIMITS)
        #: catch up to the completed tail before answering reads (``--reads``)
        self.linearizable = replica.service.reads != "local"
        pubsub: PubSub = replica.component(PubSub)
        #: live connections by client id (pub/sub delivers through it)
        self.connections: dict[int, Connection] = {}
        pubsub.local = self.connections  # type: ignore[assignment]  # dict is invariant
        # A fresh incarnation of this replica: number clients past every id its
        # previous incarnations left in the replicated state, and drop those.
        commands: Commands = replica.component(Commands)
        first = commands.first_counter(self.index)
        self._ids = itertools.count(first)
        self._tasks: set[asyncio.Future[Any]] = set()
        #: hands blocked clients their replies (BLPOP, ...), from the first block on
        self.unblocker: Unblocker | None = None
        #: the group being gathered: (connection, entry, first command, commands)
        self._group: list[tuple[Connection, Entry, int, int]] = []
        self._group_commands: list[list[bytes]] = []
        self._group_scheduled = False
        self.started = time.time()
        #: SAVE, BGSAVE, LASTSAVE and INFO persistence
        self.saves = Saves(replica, self.started)
        self.connections_received = 0
        self.commands_processed = 0
        self.protocol_errors = 0
        #: the replicated settings (CONFIG SET, requirepass); CLIENT KILL's entries
        self.config: ServerConfig = replica.component(ServerConfig)
        self.config.server = self
        #: CLIENT KILLs waiting for other replicas' counts: token -> (future, count, waiting)
        self._kills: dict[int, tuple[asyncio.Future[Any], list[int], set[int]]] = {}
        self._kill_tokens = itertools.count(1)
        #: clients disconnected for their output (Redis 7.0 does not count them;
        #: later versions print the same INFO field)
        self.output_limit_disconnections = 0
        self.background(Commands.clients_gone, self.index, first)
        if self.partitioned:  # the watches are in the partitions, some held elsewhere
            self.background("shard.clients_gone", self.index, 1 << 53)

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: the counters INFO stats prints."""
        self.commands_processed = 0
        self.connections_received = 0
        self.protocol_errors = 0
        self.output_limit_disconnections = 0

    # --- CLIENT KILL -----------------------------------------------------------------------

    def kill_local(self, filters: list[Any]) -> int:
        """Close this replica's connections ``filters`` match; how many.

        ``filters``: id (0: any), addr, laddr (b"": any), type ("": any), skipme,
        the id of the client that asked.  The client that asked, if it matches,
        gets its reply first (Redis closes it after the command).
        """
        cid, addr, laddr, kind, skipme, asker = filters
        addr = bytes(addr).decode("utf-8", "replace")
        laddr = bytes(laddr).decode("utf-8", "replace")
        killed = 0
        for conn in list(self.connections.values()):
            if (
                (cid and conn.id != cid)
                or (addr and conn.peer != addr)
                or (laddr and conn._local_addr() != laddr)
                or (kind and conn._type() != kind.encode())
                or (skipme and conn.id == asker)
                or conn.closing
            ):
                continue
            killed += 1
            if conn.id == asker:
                conn.closing = True  # after this reply
            else:
                conn._kill()
        return killed

    def kill_everywhere(self, filters: list[Any], old_form: bool = False) -> asyncio.Future[Any]:
        """CLIENT KILL on every replica (an ``every`` entry); a future of the count (or of
        the old form's reply)."""
        token = next(self._kill_tokens)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        cid = filters[0]
        waiting = {replica_of(cid)} if cid else set(range(self.replica.replicas))
        self._kills[token] = (fut, [0], waiting)
        self.background(ServerConfig.kill, token, self.index, filters, mode="every")
        timer = loop.call_later(KILL_REPORT_TIMEOUT, self._kill_done, token)
        fut.add_done_callback(lambda _: timer.cancel())
        if not old_form:
            return fut
        reply: asyncio.Future[Any] = loop.create_future()

        def answer(done: asyncio.Future[Any]) -> None:
            killed = done.result() if not done.cancelled() and not done.exception() else 0
            reply.set_result(OK if killed else KvError("ERR No such client"))

        fut.add_done_callback(answer)
        return reply

    def killed_here(self, token: int, origin: int, filters: list[Any]) -> None:
        """A CLIENT KILL's effect on this replica: close, and tell the asking replica."""
        count = self.kill_local(filters)
        if origin == self.index:
            self.kill_report(token, self.index, count)
        else:
            self.background(ServerConfig.killed, token, origin, self.index, count, mode="every")

    def kill_report(self, token: int, replica: int, count: int) -> None:
        pending = self._kills.get(token)
        if pending is None:
            return
        _, total, waiting = pending
        total[0] += count
        waiting.discard(replica)
        if not waiting:
            self._kill_done(token)

    def _kill_done(self, token: int) -> None:
        pending = self._kills.pop(token, None)
        if pending is not None and not pending[0].done():
            pending[0].set_result(pending[1][0])

    def limits(self, pubsub: bool) -> Limits:
        """The output limits of a normal client, or of a subscriber (``pubsub``)."""
        configured = self.commands.output_limits
        if configured is not self._limits_of:  # CONFIG SET applied (on any replica)
            self._limits_of = configured
            values = configured or [*NORMAL_OUTPUT_LIMITS, *PUBSUB_OUTPUT_LIMITS]
            self._normal = Limits(*values[:3])
            self._pubsub = Limits(*values[3:6])
        return self._pubsub if pubsub else self._normal

    def limits_text(self) -> bytes:
        """``CONFIG GET client-output-buffer-limit``'s value (Redis's layout, no replica class)."""
        normal, pubsub = self.limits(False).values(), self.limits(True).values()
        return b"normal %d %d %d pubsub %d %d %d" % (*normal, *pubsub)

    def lookup(self, spelled: bytes) -> _Cmd | None:
        """The command a client named ``spelled`` (any case); None if unknown."""
        name = spelled.upper()
        spec = self.table.get(name)
        if spec is None:
            return None
        read = self.reads.get(name)
        local = read[0] if read is not None else None
        if self.partitioned and spec.kind is READ:
            local = reader(spec, self.replica, local)
        cmd = _Cmd(spec, local)
        if self.partitioned and spec.kind is not CONN:
            cmd.check = checker(spec)
        if len(self.known) < MAX_KNOWN_SPELLINGS:
            self.known[spelled] = cmd
        return cmd

    # --- the group: one Commands.run for many connections' batches ------------------------

    def join_group(self, conn: Connection, entry: Entry, commands: list[list[bytes]]) -> None:
        """Add a connection's batch of writes to the group appended at the next flush.

        Every batch of one loop iteration goes into one ``Commands.run``
        update: one call to encode, apply and answer on every replica instead
        of one per connection.  Its result is every command's reply, in
        order; each connection's entry takes its slice.
        """
        self._group.append((conn, entry, len(self._group_commands), len(commands)))
        self._group_commands += commands
        if len(self._group_commands) >= MAX_BATCH:
            self.flush_group()
        elif not self._group_scheduled:
            self._group_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._group_scheduled = False
        self.flush_group()

    def flush_group(self) -> None:
        """Append the group now (the log keeps it before anything appended after)."""
        group = self._group
        if not group:
            return
        commands = self._group_commands
        self._group = []
        self._group_commands = []
        try:
            try:
                fut = self.replica.submit_nowait(self.run_event, commands)
            except LogFullError:  # queued, in order, until there is room
                fut = self.replica.submit_soon(self.run_event, commands)
        except EntryTooLargeError:  # each connection's batch on its own (split if need be)
            for conn, entry, start, count in group:
                conn._submit(entry, self.run_event, (commands[start : start + count],), "affinity")
            return
        if fut.done():  # the durable log refused it (a full disk)
            fut = refused(fut, self.run_event, (commands,), self)
        for _, entry, start, count in group:
            entry.parts.append((fut, count, start))
        fut.add_done_callback(functools.partial(_group_done, group))

    def new_client_id(self) -> int:
        return client_id(next(self._ids), self.index)

    def background(self, event: Any, *args: Any, mode: str | None = None) -> None:
        """Append an entry whose result nobody waits for (waiting for room if the log is full);
        ``mode``: its ownership (``every`` for CLIENT KILL's), else the event's own."""
        self.flush_group()  # after what the connections batched (a closing client's WATCH)
        how = {} if mode is None else {"_mode": mode}
        try:
            fut: asyncio.Future[Any] = self.replica.submit_nowait(event, *args, **how)
        except LogFullError:
            fut = asyncio.ensure_future(self.replica.submit(event, *args, **how))
            self._tasks.add(fut)
            fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(_ignore_result)

    def info(self, sections: list[bytes]) -> bytes:
        """The text of INFO for ``sections`` (lower case; empty: the default ones)."""
        wanted = {s.lower() for s in sections} or {b"default"}
        every = bool(wanted & {b"all", b"everything", b"default"})
        replica = self.replica
        now = time.time()
        nkeys = sum(k.count_live(int(now * 1000)) for k in self.local_data("keyspace"))
        parts: list[str] = []

        def section(name: str, fields: dict[str, Any]) -> None:
            if every or name.lower().encode() in wanted:
                body = "".join(f"{k}:{v}\r\n" for k, v in fields.items())
                parts.append(f"# {name}\r\n{body}")

        section(
            "Server",
            {
                "redis_version": REDIS_VERSION,
                "redis_mode": "standalone",
                "server_name": "dominoes-kv",
                "os": f"{os.uname().sysname} {os.uname().release} {os.uname().machine}",
                "arch_bits": 64,
                "multiplexing_api": "asyncio",
                "python_version": sys.version.split()[0],
                "process_id": os.getpid(),
                "uptime_in_seconds": int(now - self.started),
                "uptime_in_days": int(now - self.started) // 86400,
            },
        )
        section(
            "Clients",
            {
                "connected_clients": len(self.connections),
                # every replica's: the waiters are replicated state
                "blocked_clients": sum(b.blocked_clients() for b in self.local_data("blocking")),
            },
        )
        memory: dict[str, Any] = {"evicted_keys": 0}
        for part in self.local_data("memory"):  # summed over the partitions held here
            for k, v in part.info().items():
                memory[k] = memory.get(k, 0) + v if isinstance(v, int) else v
        memory["maxmemory"] = int(self.config.config.get(b"maxmemory", b"0"))  # the setting
        section("Memory", {k: v for k, v in memory.items() if k != "evicted_keys"})
        if every or b"persistence" in wanted:
            section("Persistence", self.saves.info())
        section(
            "Stats",
            {
                "total_connections_received": self.connections_received,
                "total_commands_processed": self.commands_processed,
                "protocol_errors": self.protocol_errors,
                "client_output_buffer_limit_disconnections": self.output_limit_disconnections,
                "expired_keys": sum(e.expired for e in self.local_data("expiry")),
                "evicted_keys": memory["evicted_keys"],
            },
        )
        section("Replication", {"role": "master", "connected_slaves": 0})
        fields: dict[str, Any] = {
            "replica_index": replica.index,
            "replicas": replica.replicas,
            "replica_core": "" if replica.cpu is None else replica.cpu,
            "applied_seq": replica.applied_seq,
            "lag": replica.lag,
            "reads": replica.service.reads,
        }
        fields.update(_flatten(replica.statistics()))
        section("Dominoes", fields)
        if every or b"keyspace" in wanted:
            expires = sum(
                1
                for k in self.local_data("keyspace")
                for d in k.deadlines.values()
                if d > now * 1000
            )
            body = f"db0:keys={nkeys},expires={expires},avg_ttl=0\r\n" if nkeys else ""
            parts.append(f"# Keyspace\r\n{body}")
        return "\r\n".join(parts).encode()

    def local_data(self, name: str) -> list[Any]:
        """This replica's instances of a data component: one, or one per partition held here.

        A partitioned KV's INFO counts the partitions this replica holds.
        """
        if not self.partitioned:
            return [self.replica.component(name)]
        shards: list[Any] = [self.replica.partition("shard", pid) for pid in range(PARTITIONS)]
        return [s.parts[name] for s in shards if s is not None]


def _flatten(stats: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """The scalar fields of a statistics struct (and of the structs inside it)."""
    out: dict[str, Any] = {}
    try:
        items = msgspec.structs.asdict(stats).items()
    except TypeError:
        return out
    for key, value in items:
        if isinstance(value, msgspec.Struct) and depth < 2:
            out.update(_flatten(value, f"{prefix}{key}_", depth + 1))
        elif isinstance(value, bool):
            out[prefix + key] = int(value)
        elif isinstance(value, int | str):
            out[prefix + key] = value
        elif isinstance(value, float):
            out[prefix + key] = f"{value:.3f}"
    return out


_servers: weakref.WeakKeyDictionary[Replica, Server] = weakref.WeakKeyDictionary()


def server_for(replica: Replica, table: dict[bytes, Spec]) -> Server:
    """This replica's ``Server``, made on first use."""
    server = _servers.get(replica)
    if server is None:
        server = _servers[replica] = Server(replica, table)
    return server


def tcp_factory(table: dict[bytes, Spec]) -> Callable[[Replica], Connection]:
    """The service's TCP ingress: ``factory(replica)`` makes one connection's protocol."""

    def factory(replica: Replica) -> Connection:
        return KvConnection(server_for(replica, table))

    return factory


def start_hook(table: dict[bytes, Spec]) -> Callable[[Replica], None]:
    """``Service(on_start=...)``: make the replica's ``Server`` as soon as it is live.

    A restarted replica thereby drops its previous incarnation's subscriptions
    and watches (``Commands.clients_gone``) at once, not at its first connection.
    """

    def start(replica: Replica) -> None:
        server_for(replica, table)

    return start
