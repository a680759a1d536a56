"""The RESP front end: one :class:`Server` per replica, one :class:`Connection` per client.

Theory of operation
-------------------
Each replica accepts its own connections (``SO_REUSEPORT``) and is the owner of
every entry they append (``affinity``), so it alone parses, replies and writes.

Per ``data_received``, every complete command is handled in order:

* a **connection command** (PING, HELLO, MULTI, CLIENT, INFO, ...) changes
  the connection's own state and answers at once;
* a **write** joins the current *batch*: consecutive writes (and the reads
  that follow them in the pipeline) are one batch, and the batches of every
  connection in one loop iteration are one ``Commands.run`` call, one log
  entry (the server's *group*; each connection takes its slice of the
  replies).  Any other append (EXEC, PUBLISH, a closing client's cleanup)
  appends the group first, so each connection's entries keep its order;
* a **read** runs against the local state at once, unless the connection has
  writes in flight or batched: then it joins the batch, so it sees them
  (read-your-writes) and its reply keeps its place.  Before the commands of
  one ``data_received`` run, the replica catches up to the log's completed
  tail (``Replica.sync``: one atomic load when it is not behind), so a read
  sees every write acknowledged on any replica before it arrived.  With
  ``--reads local`` that step is skipped and reads may be stale.

Replies are queued in request order in ``pending``: frames that are ready,
and entries whose replies come when this replica has applied them.  The
queue's ready head is written with one ``transport.write`` per callback.

WATCH and UNWATCH are writes (their entries register the keys in the
replicated state); EXEC's entry names the client so its check finds them.

Flow control: reading pauses while many entries are in flight, while appends
wait for room in a full log, and while the transport's write buffer is over
its high-water mark, which is the connection's output watermark (at most
:data:`OUTPUT_WATERMARK`); it resumes when they drain.  One read can hold
thousands of pipelined commands, so the commands of one read stop running
too, kept in ``backlog``, once the output they made passes the watermark (or
many entries are in flight); done entries' replies are encoded no faster
either.  A client that pipelines large GETs and never reads thereby holds
about a watermark of output, not a reply per command it sent.

Output limits: Redis's ``client-output-buffer-limit`` for the normal and
pubsub classes (``CONFIG SET``, replicated through the log).  The output a
client holds is its queued reply frames plus the transport's write buffer;
at the hard limit it is disconnected at once, at or above the soft limit for
its seconds it is disconnected too (a timer looks, so an idle stuck client is
found).  The watermark stays under the soft limit and half the hard one, so
a client that reads keeps below them: it takes a client that stops reading
(soft), or a single reply larger than the limit (hard), to reach them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgspec

from dominoes import EntryTooLargeError, LogFullError, Replica

from ._commands import IN_TRANSACTION, Bound, Commands, client_id, internal_error
from ._errors import INT64_MAX, KvError, arity_error, parse_int, unknown_command
from ._glob import glob_matcher
from ._keyspace import Keyspace
from ._pubsub import PubSub
from ._resp import OK, PONG, QUEUED, ProtocolError, RequestParser, Status, Verbatim, encode
from ._table import CONN, READ, WRITE, Spec, command

__all__ = ("Connection", "Server", "tcp_factory")

log = logging.getLogger("dominoes.kv")

#: Entries one connection may have in flight before it stops reading.
MAX_IN_FLIGHT: Final = 64
#: Commands in one batch entry; a longer pipeline run is split.
MAX_BATCH: Final = 1024
#: A subscriber whose unsent output exceeds this is disconnected (Redis: 32 MB).
PUBSUB_OUTPUT_LIMIT: Final = 32 * 1024 * 1024
#: ``client-output-buffer-limit`` for normal clients: hard bytes, soft bytes, soft
#: seconds.  Redis's default is ``0 0 0`` (unlimited), which let one client that
#: pipelined GETs of a large value without reading make a replica hold gigabytes.
#: 256 MB hard and 64 MB for 60 s are Redis's own limits for replica links, the
#: clients it expects to lag most: no healthy client waits on that much output,
#: and a handful of stuck ones cannot exhaust the machine.
NORMAL_OUTPUT_LIMITS: Final = (256 * 1024 * 1024, 64 * 1024 * 1024, 60)
#: The same for subscribers: a hard limit only (the behaviour before the limits
#: became configurable; Redis's is ``32mb 8mb 60``).
PUBSUB_OUTPUT_LIMITS: Final = (PUBSUB_OUTPUT_LIMIT, 0, 0)
#: Output a connection may hold before reading and running its commands stop
#: until the client reads (flow control, below the limits): large enough to
#: keep the socket busy, small enough that a stuck client costs little.  A soft
#: limit, or half a hard limit, set lower than it lowers it.
OUTPUT_WATERMARK: Final = 1024 * 1024
#: Back-off bounds (seconds) while the log is full and appends wait for room.
FULL_BACKOFF_MIN: Final = 0.0002
FULL_BACKOFF_MAX: Final = 0.005
#: The Redis version the server claims (clients check it for features).
REDIS_VERSION: Final = "7.0.0"

_OK_FRAME: Final = b"+OK\r\n"
#: The command events by name (a name skips resolving the descriptor on every append).
_RUN: Final = Commands.run.event
_EXEC: Final = Commands.exec.event
_TX_CONTROL: Final = frozenset({b"EXEC", b"DISCARD", b"MULTI", b"QUIT", b"RESET"})
_SUBSCRIBED_OK: Final = frozenset(
    {b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"}
)
_EXECABORT: Final = KvError("EXECABORT Transaction discarded because of previous errors.")
_NOT_IN_MULTI: Final = KvError("ERR Command not allowed inside a transaction")


#: Most spellings of command names :attr:`Server.known` keeps (a client
#: sending random names cannot grow it without bound).
MAX_KNOWN_SPELLINGS: Final = 4096


class _Limits:
    """One client class's output limits, and where its connections first look at them."""

    __slots__ = ("check", "flow", "hard", "seconds", "soft")

    def __init__(self, hard: int, soft: int, seconds: int) -> None:
        self.hard = hard
        self.soft = soft
        self.seconds = seconds
        #: the output at which reading and running commands stop (flow control)
        self.flow = min(OUTPUT_WATERMARK, soft or OUTPUT_WATERMARK, hard // 2 or OUTPUT_WATERMARK)
        #: the least output at which a limit may apply (0 is no limit)
        self.check = min([n for n in (hard, soft) if n] or [sys.maxsize])

    def values(self) -> list[int]:
        return [self.hard, self.soft, self.seconds]

    def next_check(self, held: int) -> int:
        """The next output, above ``held``, at which something happens."""
        return min([n for n in (self.hard, self.soft, self.flow) if n > held] or [sys.maxsize])


class _Cmd:
    """What the hot loop needs of one command, precomputed per replica."""

    __slots__ = ("hi", "kind", "lo", "name", "plain", "read", "spec")

    def __init__(self, spec: Spec, read: Callable[[int, list[bytes]], Any] | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        #: the number of words (the name included) it accepts
        self.lo = spec.min_words
        self.hi = spec.max_words
        #: a write that goes into the batch as it is (no client id, not broadcast)
        self.plain = spec.kind is WRITE and not spec.client_id and not spec.broadcast
        #: a read's local implementation, ``read(now_ms, args)``
        self.read = read


def _group_done(group: list[tuple[Connection, _Entry, int, int]], fut: asyncio.Future[Any]) -> None:
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
        bound = replica.component(Commands).bound
        #: local reads: name -> implementation(now_ms, args)
        self.reads: Bound = {k: v for k, v in bound.items() if not v[1]}
        #: the commands by name as clients spell it (``SET``, ``set``, ...)
        self.known: dict[bytes, _Cmd] = {}
        self.keyspace: Keyspace = replica.component(Keyspace)
        self.commands: Commands = replica.component(Commands)
        self._limits_of: list[int] | None = None
        self._normal = _Limits(*NORMAL_OUTPUT_LIMITS)
        self._pubsub = _Limits(*PUBSUB_OUTPUT_LIMITS)
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
        #: the group being gathered: (connection, entry, first command, commands)
        self._group: list[tuple[Connection, _Entry, int, int]] = []
        self._group_commands: list[list[bytes]] = []
        self._group_scheduled = False
        self.started = time.time()
        self.connections_received = 0
        self.commands_processed = 0
        self.protocol_errors = 0
        #: clients disconnected for their output (Redis 7.0 does not count them;
        #: later versions print the same INFO field)
        self.output_limit_disconnections = 0
        self.background(Commands.clients_gone, self.index, first)

    def limits(self, pubsub: bool) -> _Limits:
        """The output limits of a normal client, or of a subscriber (``pubsub``)."""
        configured = self.commands.output_limits
        if configured is not self._limits_of:  # CONFIG SET applied (on any replica)
            self._limits_of = configured
            values = configured or [*NORMAL_OUTPUT_LIMITS, *PUBSUB_OUTPUT_LIMITS]
            self._normal = _Limits(*values[:3])
            self._pubsub = _Limits(*values[3:6])
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
        cmd = _Cmd(spec, read[0] if read is not None else None)
        if len(self.known) < MAX_KNOWN_SPELLINGS:
            self.known[spelled] = cmd
        return cmd

    # --- the group: one Commands.run for many connections' batches ------------------------

    def join_group(self, conn: Connection, entry: _Entry, commands: list[list[bytes]]) -> None:
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
                fut = self.replica.submit_nowait(_RUN, commands)
            except LogFullError:  # queued, in order, until there is room
                fut = self.replica.submit_soon(_RUN, commands)
        except EntryTooLargeError:  # each connection's batch on its own (split if need be)
            for conn, entry, start, count in group:
                conn._submit(entry, _RUN, (commands[start : start + count],), "affinity")
            return
        for _, entry, start, count in group:
            entry.parts.append((fut, count, start))
        fut.add_done_callback(functools.partial(_group_done, group))

    def new_client_id(self) -> int:
        return client_id(next(self._ids), self.index)

    def background(self, event: Any, *args: Any) -> None:
        """Append an entry whose result nobody waits for (waiting for room if the log is full)."""
        self.flush_group()  # after what the connections batched (a closing client's WATCH)
        try:
            fut: asyncio.Future[Any] = self.replica.submit_nowait(event, *args)
        except LogFullError:
            fut = asyncio.ensure_future(self.replica.submit(event, *args))
            self._tasks.add(fut)
            fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(_ignore_result)

    def info(self, sections: list[bytes]) -> bytes:
        """The text of INFO for ``sections`` (lower case; empty: the default ones)."""
        wanted = {s.lower() for s in sections} or {b"default"}
        every = bool(wanted & {b"all", b"everything", b"default"})
        replica = self.replica
        now = time.time()
        keyspace = self.keyspace
        nkeys = keyspace.count_live(int(now * 1000))
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
        section("Clients", {"connected_clients": len(self.connections)})
        section(
            "Stats",
            {
                "total_connections_received": self.connections_received,
                "total_commands_processed": self.commands_processed,
                "protocol_errors": self.protocol_errors,
                "client_output_buffer_limit_disconnections": self.output_limit_disconnections,
                "expired_keys": replica.component("expiry").expired,
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
            expires = sum(1 for d in keyspace.deadlines.values() if d > now * 1000)
            body = f"db0:keys={nkeys},expires={expires},avg_ttl=0\r\n" if nkeys else ""
            parts.append(f"# Keyspace\r\n{body}")
        return "\r\n".join(parts).encode()


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
        return Connection(server_for(replica, table))

    return factory


def start_hook(table: dict[bytes, Spec]) -> Callable[[Replica], None]:
    """``Service(on_start=...)``: make the replica's ``Server`` as soon as it is live.

    A restarted replica thereby drops its previous incarnation's subscriptions
    and watches (``Commands.clients_gone``) at once, not at its first connection.
    """

    def start(replica: Replica) -> None:
        server_for(replica, table)

    return start


class _Entry:
    """A log entry this connection appended, in its place among the replies.

    A batch too large for one log entry is split, so an entry may stand for
    several appends, and an append may hold several connections' commands (the
    server's group): ``parts`` holds, per append, its future, how many of its
    replies are this entry's and where they start.
    """

    __slots__ = ("parts", "resp3", "silent", "transaction")

    def __init__(self, resp3: bool, transaction: bool) -> None:
        self.resp3 = resp3
        self.transaction = transaction
        #: an internal entry (RESET's unsubscriptions): its replies are not sent
        self.silent = False
        self.parts: list[tuple[asyncio.Future[Any], int, int]] = []

    def done(self) -> bool:
        parts = self.parts
        if len(parts) == 1:
            return parts[0][0].done()
        return bool(parts) and all(f.done() for f, _, _ in parts)

    def frames(self) -> list[bytes]:
        resp3 = self.resp3
        out: list[bytes] = []
        if self.silent:
            return out
        for fut, count, start in self.parts:
            result = _outcome(fut)
            if self.transaction:
                out.append(encode(result, resp3))
            elif isinstance(result, KvError):
                out.extend([encode(result, resp3)] * count)
            else:
                if start or count != len(result):
                    result = result[start : start + count]
                out.extend([_OK_FRAME if r is OK else encode(r, resp3) for r in result])
        return out


def _ready(head: bytes | _Entry) -> bool:
    """Whether a head of ``pending`` can be sent: a frame, or an applied entry."""
    return type(head) is bytes or head.done()  # type: ignore[union-attr]


def _outcome(fut: asyncio.Future[Any]) -> Any:
    try:
        return fut.result()
    except asyncio.CancelledError:
        return KvError("ERR the replica is stopping")
    except KvError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - the handler's bug is this entry's reply
        return internal_error(exc)


class Connection(asyncio.Protocol):
    """One client connection (see the module doc)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.replica = server.replica
        self.table = server.table
        self.id = server.new_client_id()
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.resp3 = False
        self.name: bytes | None = None
        self.lib: dict[bytes, bytes] = {}
        self.multi: list[list[bytes]] | None = None
        self.multi_error = False
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.batch: list[list[bytes]] = []
        self.batch_every = False
        self.pending: deque[bytes | _Entry] = deque()
        self.out: list[bytes] = []
        self.watching = False
        self.delayed: deque[tuple[_Entry, Any, tuple[Any, ...], str]] = deque()
        self.closing = False
        self.reading = True
        self.writable = True
        self.created = time.time()
        self.last_command = b""
        self._now = 0
        self._push_scheduled = False
        #: MULTI, or RESP2 with subscriptions: commands need more than the fast path
        self.special = False
        #: bytes of the reply frames waiting in ``pending`` behind entries
        self.queued = 0
        #: bytes ``_reply`` added since ``_run`` last counted them
        self.replied = 0
        #: bytes of the pub/sub frames in ``out`` (written at the next flush)
        self._push_bytes = 0
        #: commands read but not run yet: their replies wait for the client to read
        self.backlog: list[list[bytes]] = []
        #: ``pending`` has replies ready that were held back for the same reason
        self.more = False
        self._continue_scheduled = False
        #: a protocol error, answered once the commands before it have run
        self.failure: str | None = None
        #: the transport's high-water mark: the output watermark of this client's class
        self.watermark = 0
        #: since when (monotonic) the output has been at or above the soft limit
        self.soft_since: float | None = None
        self._soft_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._watermark(self._limits().flow)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.connections[self.id] = self
        self.server.connections_received += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self.backlog = []
        self.more = False
        if self._soft_timer is not None:
            self._soft_timer.cancel()
            self._soft_timer = None
        self.server.connections.pop(self.id, None)
        if self.channels or self.patterns:
            self.channels.clear()
            self.patterns.clear()
            self.server.background(PubSub.disconnect, self.id)
        if self.watching:
            self.watching = False
            self.server.background(Commands.run, [[b"UNWATCH", b"%d" % self.id]])

    def pause_writing(self) -> None:
        self.writable = False
        self._flow()

    def resume_writing(self) -> None:
        self.writable = True
        self._flow()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failure is not None:
            return
        try:
            commands: list[list[bytes]] = self.parser.feed(data)
        except ProtocolError as exc:
            commands = exc.commands
            self.failure = exc.message
            self.server.protocol_errors += 1
        if self.backlog:  # read before reading paused: after the held-back commands
            self.backlog += commands
        else:
            self._now = int(time.time() * 1000)
            if commands:
                if self.server.linearizable:
                    self.replica.sync()
                self._run(commands)
            self._answer_failure()
        self._finish()

    def _answer_failure(self) -> None:
        """A protocol error: answer it and close, once every command before it has run."""
        if self.failure is not None and not self.backlog and not self.closing:
            self._reply(KvError(f"ERR Protocol error: {self.failure}"))
            self.closing = True

    def _continue(self) -> None:
        """The client read some output: send held-back replies, run held-back commands."""
        self._continue_scheduled = False
        if self.transport is None:
            return
        if self.more:
            self._drain(progress=True)
        if (
            self.backlog
            and not self.more
            and not self.closing
            and self.writable
            and not self.delayed
            and len(self.pending) <= MAX_IN_FLIGHT
        ):
            commands = self.backlog
            self.backlog = []
            self._now = int(time.time() * 1000)
            if self.server.linearizable:
                self.replica.sync()
            self._run(commands)
            self._answer_failure()
        self._finish()

    # --- running commands ------------------------------------------------------------------

    def _run(self, commands: list[list[bytes]]) -> None:
        """Handle commands in order (the hot loop: reads and writes inline).

        ``batch``, ``special`` and ``resp3`` are cached in locals; everything
        but the two fast cases (a plain write, an inline read) may change them,
        so those paths reload them.
        """
        server = self.server
        server.commands_processed += len(commands)
        known = server.known
        batch = self.batch
        special = self.special
        resp3 = self.resp3
        pending = self.pending
        out = self.out
        now = self._now
        reads = 0  # answered here: added to the replica's queries once, after the loop
        # The output this connection holds, and the next amount at which to look
        # at the limits (a cheap integer compare per reply in between).
        held = self._held()
        self.replied = 0
        check_at = self._limits().next_check(held)
        for args in commands:
            cmd = known.get(args[0])
            if cmd is None:
                cmd = server.lookup(args[0])
                if cmd is None:
                    self._refuse(unknown_command(args))
                    batch = self.batch
                    if self.closing:
                        break
                    continue
            n = len(args)
            if n < cmd.lo or n > cmd.hi:
                self._refuse(arity_error(cmd.name))
                batch = self.batch
                continue
            args[0] = cmd.name
            if special:
                handled = self._special(cmd.name, cmd.spec, args)
                batch = self.batch
                special = self.special
                resp3 = self.resp3
                if handled:
                    continue
            kind = cmd.kind
            if kind is WRITE:
                if not cmd.plain:
                    if cmd.spec.client_id:
                        self._client_command(cmd.name, args)
                        special = self.special
                    if cmd.spec.broadcast:
                        self.batch_every = True
                batch.append(args)
                if len(batch) >= MAX_BATCH:
                    self._flush_batch()
                    batch = self.batch
                    if len(pending) > MAX_IN_FLIGHT:  # the rest when entries drain
                        self._hold_back(commands, args)
                        break
            elif kind is READ:
                if batch or pending:  # behind this connection's writes
                    batch.append(args)
                    if len(batch) >= MAX_BATCH:
                        self._flush_batch()
                        batch = self.batch
                        if len(pending) > MAX_IN_FLIGHT:
                            self._hold_back(commands, args)
                            break
                    continue
                reads += 1
                try:
                    value = cmd.read(now, args)
                except KvError as exc:
                    value = exc
                except Exception as exc:
                    log.exception("replica %d: %s failed", server.index, cmd.name.decode())
                    value = internal_error(exc)
                if type(value) is bytes:  # encode()'s commonest case, inline
                    frame = b"$%d\r\n%s\r\n" % (len(value), value)
                else:
                    frame = encode(value, resp3)
                out.append(frame)
                held += len(frame)
                if held >= check_at:
                    if self._output_full(held):
                        self._hold_back(commands, args)
                        break
                    check_at = self._limits().next_check(held)
            else:
                self.last_command = cmd.name
                try:
                    getattr(self, cmd.spec.method)(args)
                except Exception as exc:
                    log.exception("replica %d: %s failed", server.index, cmd.name.decode())
                    self._reply(internal_error(exc))
                if self.closing:
                    break
                batch = self.batch
                special = self.special
                resp3 = self.resp3
                held += self.replied
                self.replied = 0
                if held >= check_at:
                    if self._output_full(held):
                        self._hold_back(commands, args)
                        break
                    check_at = self._limits().next_check(held)
        self.replica.queries += reads

    def _held(self) -> int:
        """The output this connection holds: queued and unsent frames, the transport's buffer."""
        transport = self.transport
        buffered = 0 if transport is None else transport.get_write_buffer_size()
        return buffered + self.queued + sum(map(len, self.out))

    def _limits(self) -> _Limits:
        return self.server.limits(bool(self.channels or self.patterns))

    def _output_full(self, held: int) -> bool:
        """Whether commands must stop running: ``held`` is over a limit (the client is
        cut off) or over the flow-control watermark (the rest waits until it reads)."""
        return self._check_limits(held) or self.closing or held >= self._limits().flow

    def _hold_back(self, commands: list[list[bytes]], last: list[bytes]) -> None:
        """Keep the commands after ``last`` until the client has read; stop reading meanwhile."""
        if self.closing:
            return
        start = next(i for i, args in enumerate(commands) if args is last) + 1
        rest = commands[start:]
        if rest:
            self.server.commands_processed -= len(rest)  # counted when they run
            self.backlog = rest + self.backlog
        self._stop_reading()

    def _watermark(self, flow: int) -> None:
        """The transport pauses writing (so reading pauses) past ``flow`` bytes of output."""
        self.watermark = flow
        transport = self.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=flow)

    def _stop_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _special(self, name: bytes, spec: Spec, args: list[bytes]) -> bool:
        """Inside MULTI, or subscribed in RESP2: whether the command was handled here."""
        self.last_command = name
        if self.multi is not None and name not in _TX_CONTROL:
            if name == b"WATCH":
                self._reply(KvError("ERR WATCH inside MULTI is not allowed"))
            elif spec.no_multi or (spec.kind is CONN and name not in IN_TRANSACTION):
                self._refuse(_NOT_IN_MULTI)
            else:
                if spec.client_id:  # UNWATCH: a no-op by then, as in Redis
                    args.insert(1, b"%d" % self.id)
                self.multi.append(args)
                self._reply(QUEUED)
            return True
        if (self.channels or self.patterns) and not self.resp3 and name not in _SUBSCRIBED_OK:
            self._reply(
                KvError(
                    f"ERR Can't execute '{name.decode().lower()}': only (P|S)SUBSCRIBE / "
                    "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )
            )
            return True
        return False

    def _state_changed(self) -> None:
        """Recompute ``special``: MULTI, or RESP2 with subscriptions (call on every change)."""
        self.special = self.multi is not None or (
            not self.resp3 and bool(self.channels or self.patterns)
        )

    def _refuse(self, error: KvError) -> None:
        """An error at queueing time; inside MULTI it dooms the transaction."""
        if self.multi is not None:
            self.multi_error = True
        self._reply(error)

    def _reply(self, value: Any) -> None:
        """Answer now, behind whatever this connection still waits for."""
        if self.batch:
            self._flush_batch()
        frame = encode(value, self.resp3)
        self.replied += len(frame)
        if self.pending:
            self.pending.append(frame)
            self.queued += len(frame)
        else:
            self.out.append(frame)

    # --- output limits ---------------------------------------------------------------------

    def _check_limits(self, held: int) -> bool:
        """Enforce the output limits on ``held`` bytes of output; True if the client is cut off.

        As in Redis: at or above the hard limit, at once; at or above the soft
        limit, once it has stayed there for the soft seconds (a timer looks
        again then, since a stuck client makes no callback of its own).
        """
        limits = self._limits()
        if limits.hard and held >= limits.hard:
            self._cut(held, "hard", limits.hard)
            return True
        if limits.soft and held >= limits.soft:
            now = time.monotonic()
            if self.soft_since is None:
                self.soft_since = now
                if self._soft_timer is None:
                    self._soft_timer = asyncio.get_running_loop().call_later(
                        limits.seconds, self._soft_due
                    )
            elif now - self.soft_since >= limits.seconds:
                self._cut(held, "soft", limits.soft, limits.seconds)
                return True
        else:
            self.soft_since = None
        return False

    def _soft_due(self) -> None:
        self._soft_timer = None
        if self.transport is None or self.soft_since is None:
            return
        limits = self._limits()
        held = self._held()
        if self._check_limits(held) or self.soft_since is None:
            return
        left = self.soft_since + limits.seconds - time.monotonic()
        self._soft_timer = asyncio.get_running_loop().call_later(max(left, 0.0), self._soft_due)

    def _cut(self, held: int, which: str, limit: int, seconds: int = 0) -> None:
        """Disconnect a client over its output limit, dropping what it holds."""
        server = self.server
        server.output_limit_disconnections += 1
        kind = "pubsub" if self.channels or self.patterns else "normal"
        during = f" for {seconds} s" if which == "soft" else ""
        log.warning(
            "replica %d: client id=%d addr=%s closed for its output buffer: %d bytes over "
            "the %s limit of %d bytes%s (client-output-buffer-limit %s)",
            server.index, self.id, self.peer, held, which, limit, during, kind,
        )  # fmt: skip
        transport = self.transport
        self.transport = None  # connection_lost still runs (unsubscribes, unwatches)
        self.closing = True
        self.backlog = []
        self.more = False
        self.out.clear()
        self.pending.clear()
        self.queued = self._push_bytes = 0
        if self._soft_timer is not None:
            self._soft_timer.cancel()
            self._soft_timer = None
        if transport is not None:
            transport.abort()

    # --- log entries -----------------------------------------------------------------------

    def _flush_batch(self) -> None:
        commands = self.batch
        self.batch = []
        mode = "every" if self.batch_every else "affinity"
        self.batch_every = False
        entry = _Entry(self.resp3, transaction=False)
        self.pending.append(entry)
        if mode == "affinity" and not self.delayed:
            self.server.join_group(self, entry, commands)
        else:
            self._submit(entry, _RUN, (commands,), mode)

    def _submit(self, entry: _Entry, event: Any, args: tuple[Any, ...], mode: str) -> None:
        self.server.flush_group()  # what connections batched before goes first
        if self.delayed:  # keep this connection's entries in order in the log
            self.delayed.append((entry, event, args, mode))
            return
        try:
            if mode == "affinity":
                # Group commit: this loop iteration's updates share one log entry.
                fut = self.replica.submit_soon(event, *args)
            else:
                fut = self.replica.submit_nowait(event, *args, _mode=mode)
        except LogFullError:
            self.delayed.append((entry, event, args, mode))
            task = asyncio.ensure_future(self._submit_delayed())
            self.server._tasks.add(task)
            task.add_done_callback(self.server._tasks.discard)
            self._flow()
            return
        except EntryTooLargeError as exc:
            for part in self._split(entry, event, args, mode, exc):
                self._submit(*part)
            return
        entry.parts.append((fut, len(args[0]), 0))
        fut.add_done_callback(self._on_done)

    def _split(
        self, entry: _Entry, event: Any, args: tuple[Any, ...], mode: str, exc: Exception
    ) -> list[tuple[_Entry, Any, tuple[Any, ...], str]]:
        """Halves of a batch too large for one entry; a lone command or a transaction fails."""
        commands = args[0]
        if event == _RUN and len(commands) > 1:
            half = len(commands) // 2
            return [
                (entry, event, (commands[:half],), mode),
                (entry, event, (commands[half:],), mode),
            ]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(KvError(f"ERR request too large for the log: {exc}"))
        entry.parts.append((fut, len(commands), 0))
        fut.add_done_callback(self._on_done)
        return []

    async def _submit_delayed(self) -> None:
        """The log was full: append this connection's entries, in order, as room appears."""
        delayed = self.delayed
        pause = FULL_BACKOFF_MIN
        while delayed:
            entry, event, args, mode = delayed[0]
            try:
                fut = self.replica.submit_nowait(event, *args, _mode=mode)
            except LogFullError:
                await asyncio.sleep(pause)
                pause = min(2 * pause, FULL_BACKOFF_MAX)
                continue
            except EntryTooLargeError as exc:
                delayed.popleft()
                delayed.extendleft(reversed(self._split(entry, event, args, mode, exc)))
                continue
            pause = FULL_BACKOFF_MIN
            delayed.popleft()
            entry.parts.append((fut, len(args[0]), 0))
            fut.add_done_callback(self._on_done)
        self._flow()

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        self._drain()
        self._finish()

    def _drain(self, progress: bool = False) -> None:
        """Move the ready head of ``pending`` to ``out``, about a watermark at a time.

        A done entry's replies are encoded here.  Once the transport and ``out``
        hold a watermark of output, the rest waits (``more``) until the client
        has read some.  ``progress``: move at least one head (the continuation
        runs when the transport has room, so that cannot spin).
        """
        pending = self.pending
        out = self.out
        transport = self.transport
        room = self._limits().flow - sum(map(len, out))
        if transport is not None:
            room -= transport.get_write_buffer_size()
        self.more = False
        if room <= 0 and not progress and pending and _ready(pending[0]):
            self.more = True
            self._stop_reading()
            return
        while pending:
            head = pending[0]
            if type(head) is bytes:
                out.append(head)
                self.queued -= len(head)
                room -= len(head)
            elif head.done():  # type: ignore[union-attr]
                frames = head.frames()  # type: ignore[union-attr]
                out.extend(frames)
                room -= sum(map(len, frames))
            else:
                break
            pending.popleft()
            if room <= 0 and pending and _ready(pending[0]):
                self.more = True
                self._stop_reading()
                break

    def _finish(self) -> None:
        """End of a callback: submit the open batch, write what is ready, adjust reading."""
        if self.batch:
            self._flush_batch()
        transport = self.transport
        out = self.out
        if transport is None:
            out.clear()
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            self._push_bytes = 0
        if self.closing and not self.pending:
            transport.close()
            return
        held = transport.get_write_buffer_size() + self.queued
        limits = self._limits()
        if (held >= limits.check or self.soft_since is not None) and self._check_limits(held):
            return
        if limits.flow != self.watermark:  # CONFIG SET, or this client (un)subscribed
            self._watermark(limits.flow)
        self._flow()

    def _flow(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if (
            self.reading
            and self.writable
            and not self.delayed
            and len(self.pending) <= MAX_IN_FLIGHT
        ):
            return  # the common case: reading, and nothing says stop
        stop = not self.writable or bool(self.delayed) or len(self.pending) > MAX_IN_FLIGHT
        if stop:
            self._stop_reading()
        # Held back for the client to read: go on once the transport has room
        # (ready replies), and the log too (commands).
        if (self.more and self.writable) or (self.backlog and not stop):
            if not self._continue_scheduled:
                self._continue_scheduled = True
                asyncio.get_running_loop().call_soon(self._continue)
        elif not stop and not self.reading and not self.closing and not self.more:
            self.reading = True
            transport.resume_reading()

    # --- pub/sub delivery (called by PubSub's effect) --------------------------------------

    def push(self, value: Any) -> None:
        transport = self.transport
        if transport is None:
            return
        frame = encode(value, self.resp3)
        if self.pending:
            self.pending.append(frame)
            self.queued += len(frame)
        else:
            self.out.append(frame)
            self._push_bytes += len(frame)
            if not self._push_scheduled:
                self._push_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_pushes)
        held = transport.get_write_buffer_size() + self.queued + self._push_bytes
        if held >= self._limits().check or self.soft_since is not None:
            self._check_limits(held)  # a subscriber too slow for its messages is cut off

    def _flush_pushes(self) -> None:
        self._push_scheduled = False
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()
        self._push_bytes = 0

    def _client_command(self, name: bytes, args: list[bytes]) -> None:
        """Put this client's id in ``args`` and mirror what it changes locally.

        The mirror (subscriptions, whether it watches) tells at once which mode
        the connection is in, without waiting for the entry.
        """
        names = args[1:]
        args.insert(1, b"%d" % self.id)
        if name == b"WATCH":
            self.watching = True
            return
        if name == b"UNWATCH":
            self.watching = False
            return
        which = self.patterns if name[0] == 80 else self.channels  # 'P'
        if name.endswith(b"UNSUBSCRIBE"):
            if names:
                which.difference_update(names)
            else:
                which.clear()
        else:
            which.update(names)
        self._state_changed()

    # --- connection commands ---------------------------------------------------------------

    @command("PING", -1, kind=CONN, flags=("fast",))
    def cmd_ping(self, args: list[bytes]) -> None:
        if len(args) > 2:
            self._reply(arity_error(b"ping"))
        elif (self.channels or self.patterns) and not self.resp3:
            self._reply([b"pong", args[1] if len(args) == 2 else b""])
        else:
            self._reply(PONG if len(args) == 1 else args[1])

    @command("ECHO", 2, kind=CONN, flags=("fast",))
    def cmd_echo(self, args: list[bytes]) -> None:
        self._reply(args[1])

    @command("QUIT", -1, kind=CONN, flags=("fast",))
    def cmd_quit(self, args: list[bytes]) -> None:
        self._reply(OK)
        self.closing = True

    @command("SELECT", 2, kind=CONN, flags=("fast",))
    def cmd_select(self, args: list[bytes]) -> None:
        try:
            db = parse_int(args[1])
        except KvError as exc:
            self._reply(exc)
            return
        self._reply(OK if db == 0 else KvError("ERR DB index is out of range"))

    @command("AUTH", -2, kind=CONN, flags=("fast",))
    def cmd_auth(self, args: list[bytes]) -> None:
        self._reply(
            KvError(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"
            )
        )

    @command("HELLO", -1, kind=CONN, flags=("fast",))
    def cmd_hello(self, args: list[bytes]) -> None:
        version = 3 if self.resp3 else 2
        if len(args) >= 2:
            try:
                version = parse_int(args[1])
            except KvError:
                self._reply(KvError("ERR Protocol version is not an integer or out of range"))
                return
            if version not in (2, 3):
                self._reply(KvError("NOPROTO unsupported protocol version"))
                return
        name = self.name
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                name = args[i + 1]
                if not _valid_name(name):
                    self._reply(_BAD_NAME)
                    return
                i += 2
            else:
                text = args[i].decode("utf-8", "replace")
                self._reply(KvError(f"ERR Syntax error in HELLO option '{text}'"))
                return
        self.resp3 = version == 3
        self._state_changed()
        self.name = name or None
        self._reply(
            {
                b"server": b"redis",
                b"version": REDIS_VERSION.encode(),
                b"proto": version,
                b"id": self.id,
                b"mode": b"standalone",
                b"role": b"master",
                b"modules": [],
            }
        )

    @command("RESET", 1, kind=CONN, flags=("fast",))
    def cmd_reset(self, args: list[bytes]) -> None:
        self.multi = None
        self._state_changed()
        self.multi_error = False
        if self.channels or self.patterns:
            self.channels.clear()
            self.patterns.clear()
            self._batch_silently([b"UNSUBSCRIBE", b"%d" % self.id])
            self._batch_silently([b"PUNSUBSCRIBE", b"%d" % self.id])
        if self.watching:
            self.watching = False
            self._batch_silently([b"UNWATCH", b"%d" % self.id])
        self.resp3 = False
        self._state_changed()
        self.name = None
        self._reply(Status(b"RESET"))

    @command("CLIENT", -2, kind=CONN)
    def cmd_client(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        arity = {b"SETNAME": 3, b"GETNAME": 2, b"ID": 2, b"INFO": 2, b"LIST": -2, b"SETINFO": 4}
        want = arity.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try CLIENT HELP."))
            return
        if (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"client|" + sub.lower()))
            return
        if sub == b"SETNAME":
            if not _valid_name(args[2]):
                self._reply(_BAD_NAME)
                return
            self.name = args[2] or None
            self._reply(OK)
        elif sub == b"GETNAME":
            self._reply(self.name)
        elif sub == b"ID":
            self._reply(self.id)
        elif sub == b"SETINFO":
            attr = args[2].upper()
            if attr not in (b"LIB-NAME", b"LIB-VER"):
                text = args[2].decode("utf-8", "replace")
                self._reply(KvError(f"ERR Unrecognized option '{text}'"))
                return
            self.lib[attr] = args[3]
            self._reply(OK)
        elif sub == b"INFO":
            self._reply(Verbatim(self._describe() + b"\n"))
        else:
            lines = b"".join(c._describe() + b"\n" for c in self.server.connections.values())
            self._reply(Verbatim(lines))

    def _describe(self) -> bytes:
        now = time.time()
        name = (self.name or b"").decode("utf-8", "replace")
        return (
            f"id={self.id} addr={self.peer} name={name} age={int(now - self.created)} "
            f"db=0 sub={len(self.channels)} psub={len(self.patterns)} "
            f"multi={-1 if self.multi is None else len(self.multi)} "
            f"omem={self._held()} resp={3 if self.resp3 else 2} replica={self.server.index} "
            f"cmd={self.last_command.decode('ascii', 'replace').lower()} "
            f"lib-name={self.lib.get(b'LIB-NAME', b'').decode('utf-8', 'replace')} "
            f"lib-ver={self.lib.get(b'LIB-VER', b'').decode('utf-8', 'replace')}"
        ).encode()

    @command("COMMAND", -1, kind=CONN)
    def cmd_command(self, args: list[bytes]) -> None:
        table = self.table
        if len(args) == 1:
            self._reply([spec.info() for spec in table.values()])
            return
        sub = args[1].upper()
        if sub == b"COUNT" and len(args) == 2:
            self._reply(len(table))
        elif sub == b"INFO":
            names = [a.upper() for a in args[2:]] or list(table)
            self._reply([table[n].info() if n in table else None for n in names])
        elif sub == b"DOCS":
            self._reply({})
        elif sub == b"LIST" and len(args) == 2:
            self._reply([n.lower() for n in table])
        elif sub == b"GETKEYS" and len(args) >= 3:
            spec = table.get(args[2].upper())
            if spec is None or not spec.arity_ok(len(args) - 2):
                self._reply(KvError("ERR Invalid command specified"))
            elif not spec.first:
                self._reply(KvError("ERR The command has no key arguments"))
            else:
                self._reply(spec.user_keys(args[2:]))
        else:
            text = args[1].decode("utf-8", "replace")
            self._reply(_unknown_subcommand(text))

    @command("CONFIG", -2, kind=CONN)
    def cmd_config(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        if sub == b"GET" and len(args) >= 3:
            known = {
                b"save": b"",
                b"appendonly": b"no",
                b"databases": b"1",
                b"maxmemory": b"0",
                _OUTPUT_LIMIT: self.server.limits_text(),
            }
            found: dict[bytes, bytes] = {}
            for pattern in args[2:]:
                match = glob_matcher(pattern.lower())
                found.update((k, v) for k, v in known.items() if match(k))
            self._reply(found)
        elif sub == b"RESETSTAT" and len(args) == 2:
            self._reply(OK)
        elif sub == b"SET":
            self._config_set(args[2:])
        else:
            text = args[1].decode("utf-8", "replace")
            self._reply(_unknown_subcommand(text))

    def _config_set(self, pairs: list[bytes]) -> None:
        """CONFIG SET: only client-output-buffer-limit, which goes through the log.

        So every replica's connections obey it, whichever replica the client
        that set it is connected to.
        """
        if len(pairs) < 2 or len(pairs) % 2:
            self._reply(arity_error(b"config|set"))
            return
        names = [p.lower() for p in pairs[::2]]
        for name in names:
            if name != _OUTPUT_LIMIT:
                text = name.decode("utf-8", "replace")
                self._reply(
                    KvError(
                        f"ERR CONFIG SET '{text}' is not supported by the dominoes KV service "
                        "(only client-output-buffer-limit is)"
                    )
                )
                return
        if len(names) > 1:
            self._reply(_config_failed("duplicate parameter"))
            return
        normal, pubsub = self.server.limits(False), self.server.limits(True)
        limits = [*normal.values(), *pubsub.values()]
        try:
            _parse_output_limits(pairs[1], limits)
        except KvError as exc:
            self._reply(exc)
            return
        if self.batch:
            self._flush_batch()
        entry = _Entry(self.resp3, transaction=True)
        self.pending.append(entry)
        self._submit(entry, _SET_LIMITS, (limits,), "affinity")

    @command("INFO", -1, kind=CONN)
    def cmd_info(self, args: list[bytes]) -> None:
        self._reply(Verbatim(self.server.info(args[1:])))

    # --- transactions ----------------------------------------------------------------------

    @command("MULTI", 1, kind=CONN, flags=("fast",))
    def cmd_multi(self, args: list[bytes]) -> None:
        if self.multi is not None:
            self._reply(KvError("ERR MULTI calls can not be nested"))
            return
        self.multi = []
        self._state_changed()
        self.multi_error = False
        self._reply(OK)

    @command("DISCARD", 1, kind=CONN, flags=("fast",))
    def cmd_discard(self, args: list[bytes]) -> None:
        if self.multi is None:
            self._reply(KvError("ERR DISCARD without MULTI"))
            return
        self.multi = None
        self._state_changed()
        self.multi_error = False
        if self.watching:  # UNWATCH's reply (+OK) is DISCARD's
            self.watching = False
            self.batch.append([b"UNWATCH", b"%d" % self.id])
        else:
            self._reply(OK)

    @command("EXEC", 1, kind=CONN)
    def cmd_exec(self, args: list[bytes]) -> None:
        commands = self.multi
        if commands is None:
            self._reply(KvError("ERR EXEC without MULTI"))
            return
        self.multi = None
        self._state_changed()
        client = self.id if self.watching else 0
        self.watching = False
        if self.multi_error:
            self.multi_error = False
            if client:
                self._batch_silently([b"UNWATCH", b"%d" % client])
            self._reply(_EXECABORT)
            return
        if not commands and not client:
            self._reply([])
            return
        if self.batch:
            self._flush_batch()
        every = any(self.table[c[0]].broadcast for c in commands)
        entry = _Entry(self.resp3, transaction=True)
        self.pending.append(entry)
        self._submit(entry, _EXEC, (commands, client), "every" if every else "affinity")

    def _batch_silently(self, args: list[bytes]) -> None:
        """Append an internal command whose reply the client must not see."""
        if self.batch:
            self._flush_batch()
        self.batch.append(args)
        self._flush_batch()
        entry = self.pending[-1]
        assert isinstance(entry, _Entry)
        entry.silent = True


_OUTPUT_LIMIT: Final = b"client-output-buffer-limit"
_SET_LIMITS: Final = Commands.set_output_limits.event
#: ``client-output-buffer-limit`` classes: where their three numbers go in the list
_CLASSES: Final = {b"normal": 0, b"pubsub": 3, b"replica": -1, b"slave": -1}
_UNITS: Final = {
    b"": 1,
    b"b": 1,
    b"k": 1000,
    b"kb": 1024,
    b"m": 1000**2,
    b"mb": 1024**2,
    b"g": 1000**3,
    b"gb": 1024**3,
}
_MEMORY: Final = re.compile(rb"([0-9]+)([a-z]*)")


def _config_failed(why: str) -> KvError:
    return KvError(
        f"ERR CONFIG SET failed (possibly related to argument 'client-output-buffer-limit') - {why}"
    )


def _parse_output_limits(value: bytes, limits: list[int]) -> None:
    """Redis's ``<class> <hard> <soft> <soft seconds>`` groups, applied to ``limits`` in place.

    Sizes take Redis's units (``kb``, ``mb``, ``gb``: powers of 1024; ``k``,
    ``m``, ``g``: of 1000).  The replica class is accepted and ignored: the
    service has no replica links.
    """
    words = value.split()
    if len(words) % 4:
        raise _config_failed("Wrong number of arguments in buffer limit configuration.")
    for i in range(0, len(words), 4):
        at = _CLASSES.get(words[i].lower())
        if at is None:
            raise _config_failed("Invalid client class specified in buffer limit configuration.")
        numbers: list[int] = []
        for word in words[i + 1 : i + 4]:
            match = _MEMORY.fullmatch(word.lower())
            unit = _UNITS.get(match[2]) if match else None
            if match is None or unit is None or (match[2] and len(numbers) == 2):
                raise _config_failed(
                    "Error in hard, soft or soft_seconds setting in buffer limit configuration."
                )
            numbers.append(min(int(match[1]) * unit, INT64_MAX))
        if at >= 0:
            limits[at : at + 3] = numbers


def _unknown_subcommand(text: str) -> KvError:
    return KvError(f"ERR unknown subcommand or wrong number of arguments for '{text}'")


_BAD_NAME: Final = KvError(
    "ERR Client names cannot contain spaces, newlines or special characters."
)


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)
