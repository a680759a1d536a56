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
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from dominoes import EntryTooLargeError, LogFullError
from dominoes.lowlevel import when_room

from ._commands import Commands, internal_error
from ._errors import KvError
from ._resp import OK, encode

if TYPE_CHECKING:
    from dominoes import Replica

    from ._server import Server

__all__ = ("RUN", "Appends", "Delayed", "Entry", "ready")

#: ``Commands.run``'s event by name (a name skips resolving the descriptor on every append).
RUN: Final = Commands.run.event
_OK_FRAME: Final = b"+OK\r\n"


class Entry:
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
        entry.parts.append((fut, len(args[0]), 0))
        fut.add_done_callback(self._on_done)

    def _split(
        self, entry: Entry, event: Any, args: tuple[Any, ...], mode: str, exc: Exception
    ) -> list[tuple[Entry, Any, tuple[Any, ...], str]]:
        """Halves of a batch too large for one entry; a lone command or a transaction fails."""
        commands = args[0]
        if event == RUN and len(commands) > 1:
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
            entry.parts.append((fut, len(args[0]), 0))
            fut.add_done_callback(self._on_done)
        self._flow()
