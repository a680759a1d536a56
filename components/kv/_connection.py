"""A client connection: parsing, the hot loop, the reply queue and flow control.

Per ``data_received``, every complete command (``RequestParser``) is handled
in order:

* a **connection command** (PING, HELLO, MULTI, CLIENT, INFO, ...) changes
  the connection's own state and answers at once (``_conncommands``);
* a **write** joins the current *batch*: consecutive writes (and the reads
  that follow them in the pipeline) are one batch, and the batches of every
  connection in one loop iteration are one ``Commands.run`` call, one log
  entry (the server's *group*; each connection takes its slice of the
  replies).  Any other append (EXEC, PUBLISH, a closing client's cleanup)
  appends the group first, so each connection's entries keep its order
  (``_entries``);
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

Flow control: reading pauses while many entries are in flight, while appends
wait for room in a full log, and while the transport's write buffer is over
its high-water mark, which is the connection's output watermark (at most
``OUTPUT_WATERMARK``); it resumes when they drain.  One read can hold
thousands of pipelined commands, so the commands of one read stop running
too, kept in ``backlog``, once the output they made passes the watermark (or
many entries are in flight); done entries' replies are encoded no faster
either.  A client that pipelines large GETs and never reads thereby holds
about a watermark of output, not a reply per command it sent.  Past the
output limits the client is disconnected (``_limits``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from dominoes import LogUnavailableError

from ._blocking import BLOCKING_READ, Blocking, blocks
from ._commands import internal_error
from ._conncommands import ConnectionCommands
from ._entries import Appends, Blocked, Deferred, Delayed, Entry, Unblocker, ready
from ._errors import KvError, arity_error, unknown_command, unreachable
from ._limits import OutputLimits
from ._persistence import PersistenceCommands
from ._pubsub import PubSub
from ._resp import ProtocolError, RequestParser, encode
from ._routing import FRONT, Forward
from ._table import READ, WRITE

if TYPE_CHECKING:
    from ._server import Server

__all__ = ("MAX_BATCH", "MAX_IN_FLIGHT", "Connection")

log = logging.getLogger("dominoes.kv")

#: Entries one connection may have in flight before it stops reading.
MAX_IN_FLIGHT: Final = 64
#: Commands in one batch entry; a longer pipeline run is split.
MAX_BATCH: Final = 1024


class Connection(ConnectionCommands, PersistenceCommands, OutputLimits, Appends, asyncio.Protocol):
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
        #: the batch holds pub/sub commands (partitioned KV: they go to ``Commands.run``)
        self.batch_front = False
        #: the keys this client WATCHes (partitioned KV: EXEC checks their partition)
        self.watched_keys: list[bytes] = []
        self.pending: deque[bytes | Entry] = deque()
        self.out: list[bytes] = []
        self.watching = False
        self.delayed: Delayed = deque()
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
        #: a read fence is in flight (``--log nats://``): the backlog waits for it
        self.fencing = False
        #: commands at the front of the backlog a served fence covers
        self.fenced = 0
        #: a protocol error, answered once the commands before it have run
        self.failure: str | None = None
        #: the transport's high-water mark: the output watermark of this client's class
        self.watermark = 0
        #: since when (monotonic) the output has been at or above the soft limit
        self.soft_since: float | None = None
        self._soft_timer: asyncio.TimerHandle | None = None
        #: the entry of the blocking command (BLPOP, ...) this client waits on
        self.blocked: Blocked | None = None

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
            self.watched_keys = []
            self.server.background(self.server.run_event, [[b"UNWATCH", b"%d" % self.id]])
        if self.blocked is not None:
            self.blocked = None
            self.server.background(Blocking.disconnect, self.id)

    def pause_writing(self) -> None:
        self.writable = False
        self._flow()

    def resume_writing(self) -> None:
        self.writable = True
        self._flow()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failure is not None:
            return
        now = self.last_active = time.time()  # CLIENT LIST's idle, and the reads' clock
        try:
            commands: list[list[bytes]] = self.parser.feed(data)
        except ProtocolError as exc:
            commands = exc.commands
            self.failure = exc.message
            self.server.protocol_errors += 1
        if self.backlog or self.blocked is not None:  # after the held-back commands
            self.backlog += commands
            if self.blocked is not None and len(self.backlog) > MAX_BATCH:
                self._stop_reading()  # a blocked client's pipeline: enough held
        else:
            self._now = int(now * 1000)
            if commands:
                if self.server.linearizable and not self._read_ready(commands):
                    self._finish()
                    return
                self._run(commands)
            self._answer_failure()
        self._finish()

    def _writes_only(self, commands: list[list[bytes]]) -> bool:
        """Every command is a plain write (known spelling, outside MULTI and pub/sub)."""
        if self.special:
            return False
        known = self.server.known
        for args in commands:
            cmd = known.get(args[0])
            if cmd is None or cmd.kind is not WRITE or not cmd.plain:
                return False
        return True

    def _read_ready(self, commands: list[list[bytes]]) -> bool:
        """Whether ``commands`` may run now (linearizable reads).

        On one machine the replica catches up at once (``read_fence`` is
        ``sync``).  With a log shared across machines it returns a fence to
        wait for: the commands go to the backlog, and run once the replica
        has applied every entry the stream held when they arrived.
        """
        replica = self.replica
        if replica.across_machines and self._writes_only(commands):
            return True  # their replies come from the log's order: nothing to wait for
        fence = replica.read_fence()
        if fence is None:
            return True
        self.backlog = commands
        self.fencing = True
        covered = len(commands)

        def served(fut: asyncio.Future[None]) -> None:
            self.fencing = False
            if fut.cancelled() or self.transport is None:
                return  # the replica is closing
            exc = fut.exception()
            if isinstance(exc, LogUnavailableError):  # answer each, keep the connection
                refused = self.backlog[:covered]
                del self.backlog[:covered]
                for _ in refused:
                    self._reply(unreachable(str(exc)))
                self._finish()
                self._continue()
                return
            if exc is not None:
                return  # the replica is closing
            self.fenced = covered
            self._continue()

        fence.add_done_callback(served)
        return False

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
            and not self.fencing
            and not self.more
            and not self.closing
            and self.blocked is None
            and self.writable
            and not self.delayed
            and len(self.pending) <= MAX_IN_FLIGHT
        ):
            commands = self.backlog
            # some arrived after the fence was asked: they need one of their own
            if (
                self.fenced < len(commands)
                and self.server.linearizable
                and not self._read_ready(commands)
            ):
                self._finish()
                return
            self.backlog = []
            self.fenced = 0
            self._now = int(time.time() * 1000)
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
        limits = self._limits()
        check_at = limits.first if held < limits.first else limits.next_check(held)
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
            check = cmd.check
            if check is not None:  # a partitioned KV's (see _routing)
                refused = check(self, args)
                batch = self.batch
                if refused is not None:
                    self._refuse(refused)
                    batch = self.batch
                    continue
            if cmd.spec.may_block and blocks(args):  # XREAD ... BLOCK: a blocking write
                args[0:1] = [BLOCKING_READ, b"%d" % self.id, cmd.name]
                batch.append(args)
                self._block(commands, args)
                break
            if kind is WRITE:
                if not cmd.plain:
                    if cmd.spec.blocking:
                        args.insert(1, b"%d" % self.id)
                        batch.append(args)
                        self._block(commands, args)
                        break
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
                except Forward:  # its partition is held elsewhere: through the log
                    reads -= 1
                    self.replica.forwarded_reads += 1
                    batch.append(args)
                    continue
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

    def _block(self, commands: list[list[bytes]], last: list[bytes]) -> None:
        """A blocking command ends the batch; the commands after it wait for its reply.

        Reading goes on (a client that closes while blocked is noticed, and
        its waiter dropped), into ``backlog``.
        """
        server = self.server
        if server.unblocker is None:
            server.unblocker = Unblocker(self.replica, server.connections)
        entry = self.blocked = Blocked(self.resp3)
        self._flush_batch(entry)
        start = next(i for i, args in enumerate(commands) if args is last) + 1
        rest = commands[start:]
        if rest:
            server.commands_processed -= len(rest)  # counted when they run
            self.backlog = rest + self.backlog

    def unblocked(self, reply: Any) -> None:
        """The reply of the blocking command this client waits on (a served or timed-out waiter)."""
        entry = self.blocked
        if entry is None or self.transport is None:
            return
        entry.answer(reply)
        self._drain()
        self._finish()

    def _held(self) -> int:
        """The output this connection holds: queued and unsent frames, the transport's buffer."""
        transport = self.transport
        held = self.queued if transport is None else transport.get_write_buffer_size() + self.queued
        out = self.out
        return held + sum(map(len, out)) if out else held

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

    # --- log entries -----------------------------------------------------------------------

    def _flush_batch(self, entry: Entry | None = None) -> None:
        commands = self.batch
        self.batch = []
        mode = "every" if self.batch_every else "affinity"
        self.batch_every = False
        if entry is None:
            entry = Entry(self.resp3, transaction=False)
        self.pending.append(entry)
        if self.batch_front:  # pub/sub commands of a partitioned KV
            self._submit(entry, self.server.front_event, (commands,), mode)
        elif mode == "affinity" and not self.delayed:
            self.server.join_group(self, entry, commands)
        else:
            self._submit(entry, self.server.run_event, (commands,), mode)

    def _batch_kind(self, args: list[bytes]) -> None:
        """Start a batch of ``args``'s kind (pub/sub or data) if the batch is of the other."""
        if self.server.partitioned:
            front = self.table[args[0]].component in FRONT
            if front != self.batch_front:
                if self.batch:
                    self._flush_batch()
                self.batch_front = front

    # --- the reply queue and flow control --------------------------------------------------

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
        if room <= 0 and not progress and pending and ready(pending[0]):
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
                if head is self.blocked:  # answered: the commands after it may run
                    self.blocked = None
                    if self.backlog and not self._continue_scheduled:
                        self._continue_scheduled = True
                        asyncio.get_running_loop().call_soon(self._continue)
            elif type(head) is Deferred and head.start(self._on_done):
                continue  # its turn came (SAVE, BGSAVE, LASTSAVE) and its reply is ready
            else:
                break
            pending.popleft()
            if room <= 0 and pending and ready(pending[0]):
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
        if (self.more and self.writable) or (self.backlog and not stop and not self.fencing):
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
