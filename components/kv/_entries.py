"""A connection's log entries: appending them in order, and their replies.

An :class:`Entry` stands in a connection's reply queue (``pending``) for the
log entry (or entries) whose replies it waits for.  :class:`Appends` (a mixin
of :class:`~._connection.Connection`) appends them:

* a connection's entries reach the log in the order it made them: while one
  waits for room in a full log (``delayed``), the ones after it wait behind
  it, and a task appends them as room appears, through the project's one
  back-off (:func:`dominoes.lowlevel.when_room`);
* a batch too large for one log entry (``EntryTooLargeError``) is split in
  halves, each appended on its own in order; a lone command, or a
  transaction, too large fails with an error reply.

Plain batches usually take the server's group instead (one log entry for every
connection's batch of a loop iteration: ``Server.join_group``).

While the durable log cannot be written (``--durable``, a full disk), an
append fails at once with ``DurabilityError`` (:func:`refused`): a batch's
writes then answer Redis's ``MISCONF``, and its reads (pipelined behind
writes) run on the local state in their turn, as if they had not been
batched; a transaction answers ``MISCONF``.

A :class:`Deferred` stands in ``pending`` for a connection command that must
wait for the entries before it (SAVE, BGSAVE, LASTSAVE): it starts when it
reaches the head of the queue.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from dominoes import (
    DurabilityError,
    EntryTooLargeError,
    LogFullError,
    LogUnavailableError,
    PartitionUnavailableError,
)
from dominoes.lowlevel import when_room

from ._blocking import BLOCKED, TOPIC
from ._commands import Bound, Commands, internal_error
from ._errors import KvError, misconf, unreachable
from ._resp import NULL_ARRAY, OK, encode

if TYPE_CHECKING:
    from dominoes import Replica

    from ._server import Server

__all__ = (
    "RUN",
    "Appends",
    "Blocked",
    "Deferred",
    "Delayed",
    "Entry",
    "Refused",
    "Unblocker",
    "ready",
    "refused",
)

#: ``Commands.run``'s event by name (a name skips resolving the descriptor on every append).
RUN: Final = Commands.run.event
#: the batch events: the replicated KV's, and the partitioned KV's (``Shard.run``)
RUNS: Final = frozenset({RUN, "shard.run"})
_OK_FRAME: Final = b"+OK\r\n"


class Entry:
    """A log entry this connection appended, in its place among the replies.

    A batch too large for one log entry is split, so an entry may stand for
    several appends, and an append may hold several connections' commands (the
    server's group): ``parts`` holds, per append, its future, how many of its
    replies are this entry's and where they start.
    """

    __slots__ = ("parts", "resp3", "silent", "transaction", "watched")

    def __init__(self, resp3: bool, transaction: bool) -> None:
        self.resp3 = resp3
        self.transaction = transaction
        #: a partitioned KV's transaction that WATCHed keys: its first reply is
        #: WATCH's check (``_shard.WATCHED``), not a command's
        self.watched = False
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
                if self.watched and type(result) is list:
                    result = NULL_ARRAY if result[0] is not None else result[1:]
                out.append(encode(result, resp3))
            elif isinstance(result, KvError):
                out.extend([encode(result, resp3)] * count)
            else:
                if type(result) is Refused:
                    result = result.replies(start, count)
                elif start or count != len(result):
                    result = result[start : start + count]
                out.extend([_OK_FRAME if r is OK else encode(r, resp3) for r in result])
        return out


_UNSET: Final = object()


class Blocked(Entry):
    """An entry ending with a blocking command (BLPOP, ...), in its place among the replies.

    If the command blocked (its reply in the entry is :data:`~._blocking.BLOCKED`),
    the entry is done only once the real reply came (:meth:`answer`, from the
    :class:`Unblocker`), whichever of the two arrives first.
    """

    __slots__ = ("reply",)

    def __init__(self, resp3: bool) -> None:
        super().__init__(resp3, transaction=False)
        self.reply: Any = _UNSET

    def answer(self, reply: Any) -> None:
        self.reply = reply

    def done(self) -> bool:
        if not super().done():
            return False
        fut, count, start = self.parts[-1]
        result = _outcome(fut)
        if type(result) is not list or result[start + count - 1] is not BLOCKED:
            return True
        if self.reply is _UNSET:
            return False
        replies = result[start : start + count]
        replies[-1] = self.reply
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answered.set_result(replies)
        self.parts[-1] = (answered, count, 0)
        return True


class Unblocker:
    """One replica's end of :data:`~._blocking.TOPIC`: its blocked clients' replies.

    Every replica applies the entry that serves a waiter (or times it out);
    each hands the replies of its own clients to their connections.
    """

    def __init__(self, replica: Replica, connections: dict[int, Any]) -> None:
        self.connections = connections
        # Unbounded in practice: one message per served waiter, read at once.
        self.subscription = replica.feeds.subscribe([TOPIC], maxsize=2**62)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for cid, reply in self.subscription:
            conn = self.connections.get(cid)
            if conn is not None:
                conn.unblocked(reply)


class Deferred(Entry):
    """A connection command's reply that waits for the entries before it in ``pending``.

    ``action()`` runs when it reaches the head of the queue (:meth:`start`,
    called by the connection's ``_drain``): every entry the connection
    appended before it has been applied here by then.  It returns the reply,
    or a future of it.
    """

    __slots__ = ("action",)

    def __init__(self, resp3: bool, action: Callable[[], Any] | None) -> None:
        super().__init__(resp3, transaction=True)
        self.action = action

    def start(self, on_done: Callable[[asyncio.Future[Any]], None]) -> bool:
        """Run the action if it has not run; whether the reply is ready."""
        action = self.action
        if action is not None:
            self.action = None
            try:
                value = action()
            except Exception as exc:  # noqa: BLE001 - a bug in the command is its reply
                value = internal_error(exc)
            self.begin(value, on_done)
        return self.done()

    def begin(self, value: Any, on_done: Callable[[asyncio.Future[Any]], None]) -> None:
        """The action's ``value`` is the reply (or a future of it); ``on_done`` when it is ready."""
        if isinstance(value, asyncio.Future):
            fut = value
        else:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(value)
        self.parts.append((fut, 1, 0))
        fut.add_done_callback(on_done)


class Refused:
    """A batch the durable log refused: its commands' replies, made in their turn.

    A write answers ``error`` (MISCONF); a read runs on this replica's state
    when the entry's replies are encoded, which is after every entry its
    connection appended before it was applied, so it sees them.
    """

    __slots__ = ("commands", "error", "reads")

    def __init__(self, commands: list[list[bytes]], error: KvError, reads: Bound) -> None:
        self.commands = commands
        self.error = error
        self.reads = reads

    def replies(self, start: int, count: int) -> list[Any]:
        now = int(time.time() * 1000)
        out: list[Any] = []
        for args in self.commands[start : start + count]:
            read = self.reads.get(args[0])
            if read is None or read[1]:
                out.append(self.error)
                continue
            try:
                out.append(read[0](now, args))
            except KvError as exc:
                out.append(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in one read is that read's reply
                out.append(internal_error(exc))
        return out


def refused(
    fut: asyncio.Future[Any], event: Any, args: tuple[Any, ...], server: Server
) -> asyncio.Future[Any]:
    """``fut``, or, if the durable log refused the append, a future of the replies.

    Call it when ``fut`` is done at once: a refusal fails it with
    ``DurabilityError`` then.  A batch (``Commands.run``) gets a
    :class:`Refused`; a transaction (or another event) fails with MISCONF.
    """
    if fut.cancelled():
        return fut
    exc = fut.exception()
    if not isinstance(exc, DurabilityError):
        return fut
    if isinstance(exc, LogUnavailableError):
        error = unreachable(str(exc))
    else:
        code = server.replica.log.write_error
        error = misconf(os.strerror(code) if code else str(exc))
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if event in RUNS:
        out.set_result(Refused(args[0], error, server.reads))
    else:
        out.set_exception(error)
    return out


#: What waits for room in a full log: (entry, event, args, mode).
Delayed = deque[tuple[Entry, Any, tuple[Any, ...], str]]


def ready(head: bytes | Entry) -> bool:
    """Whether a head of ``pending`` can be sent: a frame, or an applied entry."""
    return type(head) is bytes or head.done()  # type: ignore[union-attr]


def _outcome(fut: asyncio.Future[Any]) -> Any:
    try:
        return fut.result()
    except asyncio.CancelledError:
        return KvError("ERR the replica is stopping")
    except KvError as exc:
        return exc
    except LogUnavailableError as exc:  # the log's stream cannot be reached
        return unreachable(str(exc))
    except DurabilityError as exc:  # refused by the durable log (refused() usually says so first)
        return misconf(str(exc))
    except PartitionUnavailableError as exc:  # a partitioned KV's keys whose holders are down
        return KvError(f"CLUSTERDOWN {exc}")
    except Exception as exc:  # noqa: BLE001 - the handler's bug is this entry's reply
        return internal_error(exc)


class Appends:
    """Appending a connection's entries to the log, in order."""

    if TYPE_CHECKING:  # provided by Connection
        server: Server
        replica: Replica
        delayed: Delayed

        def _on_done(self, fut: asyncio.Future[Any]) -> None: ...
        def _flow(self) -> None: ...

    def _submit(self, entry: Entry, event: Any, args: tuple[Any, ...], mode: str) -> None:
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
        if fut.done():
            fut = refused(fut, event, args, self.server)
        entry.parts.append((fut, len(args[0]), 0))
        fut.add_done_callback(self._on_done)

    def _split(
        self, entry: Entry, event: Any, args: tuple[Any, ...], mode: str, exc: Exception
    ) -> list[tuple[Entry, Any, tuple[Any, ...], str]]:
        """Halves of a batch too large for one entry; a lone command or a transaction fails."""
        commands = args[0]
        if event in RUNS and len(commands) > 1:
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
        submit = self.replica.submit_nowait
        while delayed:
            entry, event, args, mode = delayed[0]
            try:
                fut = await when_room(functools.partial(submit, event, *args, _mode=mode))
            except EntryTooLargeError as exc:
                delayed.popleft()
                delayed.extendleft(reversed(self._split(entry, event, args, mode, exc)))
                continue
            delayed.popleft()
            if fut.done():
                fut = refused(fut, event, args, self.server)
            entry.parts.append((fut, len(args[0]), 0))
            fut.add_done_callback(self._on_done)
        self._flow()
