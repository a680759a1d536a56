"""Redis's persistence commands over the durable log (``dominoes run --durable DIR``).

With ``--durable`` the log writer keeps every entry in segment files and
replicas write snapshots of the state (``replica.persist``); Redis's
vocabulary maps onto that:

* ``SAVE`` writes a snapshot (from a forked child, as ``BGSAVE`` does) and
  answers once it is on disk; ``BGSAVE`` starts one and answers at once;
  ``LASTSAVE`` is the time of the last snapshot.  Each waits for the entries
  its connection appended before it, so a snapshot holds the client's own
  earlier writes, as in Redis.
* ``INFO persistence`` prints Redis's field names (the durable log is the
  ``aof``, a snapshot the ``rdb``) and ``dominoes_*`` fields for the rest.
* ``CONFIG GET`` answers ``appendonly``, ``appendfsync``, ``dir`` and
  ``save`` from the command line; ``CONFIG SET`` refuses them.
* While the log writer cannot write (a full disk), updates are refused with
  Redis's ``MISCONF Errors writing to the AOF file: <reason>``, PING too (as
  Redis 7 does, so a health check notices); reads go on.

:class:`Saves` is one replica's side (its :class:`~._server.Server` holds
it); :class:`PersistenceCommands` is a mixin of
:class:`~._connection.Connection`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final

from dominoes import DurabilityError

from ._entries import Deferred, Entry
from ._errors import KvError, misconf, syntax_error
from ._resp import OK, Status
from ._table import CONN, command

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from dominoes import Replica

    from ._server import Server

__all__ = ("CONFIG_ON_COMMAND_LINE", "PersistenceCommands", "Saves")

log = logging.getLogger("dominoes.kv")

#: The reply to SAVE and BGSAVE when the service is not durable.
NOT_DURABLE: Final = KvError(
    "ERR persistence is off: run the service with --durable DIR, or with --log nats://... "
    "(snapshots go to the stream's Object Store)"
)
#: Redis's reply to SAVE and BGSAVE while a snapshot is being written.
IN_PROGRESS: Final = KvError("ERR Background save already in progress")
STARTED: Final = Status(b"Background saving started")

#: The persistence parameters of CONFIG: set by ``dominoes run``'s options, not CONFIG SET.
CONFIG_ON_COMMAND_LINE: Final = {
    b"appendonly": "--durable DIR",
    b"appendfsync": "--fsync",
    b"dir": "--durable DIR",
    b"save": "--snapshot-every",
}


class Saves:
    """One replica's snapshots as the KV reports them (see the module doc).

    ``replica.persist`` writes them; this keeps what Redis reports and the
    runtime does not: whether the last snapshot this replica wrote failed
    (``rdb_last_bgsave_status``), and how long it took.  It learns the
    outcome of the snapshots it starts and of the scheduled ones it sees in
    progress (at an INFO, a SAVE or a BGSAVE).
    """

    def __init__(self, replica: Replica, started: float) -> None:
        self.replica = replica
        self.persist = replica.persist
        #: when this replica started (LASTSAVE before any snapshot)
        self.started = started
        self.last_ok = True
        #: seconds the last snapshot seen to the end took (-1: none)
        self.last_seconds = -1
        self._watched: asyncio.Future[Any] | None = None
        self._since = 0.0

    # --- state -------------------------------------------------------------------------

    def refusal(self) -> KvError | None:
        """MISCONF while the durable log cannot be written (None: it can)."""
        persist = self.persist
        if not persist.active:
            return None
        code = self.replica.log.write_error
        return misconf(os.strerror(code)) if code else None

    def in_progress(self, status: dict[str, Any] | None = None) -> bool:
        """Whether this replica is writing a snapshot (one it was asked for, or a scheduled one)."""
        if status is None:
            status = self.persist.status()
        running = bool(status["snapshot_in_progress"])
        if running:  # perhaps a scheduled one: learn how it ends
            self._watch(self.persist.snapshot())  # the running one's future: nothing new starts
        return running

    def last_save(self, status: dict[str, Any] | None = None) -> int:
        """LASTSAVE: the last snapshot's unix time, or this replica's start before any."""
        if status is None:
            status = self.persist.status()
        return int(status["snapshot_time"]) or int(self.started)

    # --- SAVE and BGSAVE -----------------------------------------------------------------

    def _start(self) -> asyncio.Future[Any] | KvError:
        """Start a snapshot (none is running): its future, or the error to reply."""
        if not self.persist.snapshots_on:
            return NOT_DURABLE
        try:
            fut = self.persist.snapshot()
        except OSError as exc:  # fork failed (no memory, no pids)
            log.error("replica %d: cannot fork for a snapshot: %s", self.replica.index, exc)
            self.last_ok = False
            return KvError(f"ERR cannot start a snapshot: {exc}")
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            return _failed(fut)  # not started (the replica is recovering)
        self._watch(fut)
        return fut

    def save(self) -> Any:
        """SAVE: a future of +OK once the snapshot is on disk, or the error to reply.

        With ``--log nats://`` it is on this machine's disk then; the bridge
        uploads it to the stream's Object Store right after.
        """
        if not self.persist.snapshots_on:
            return NOT_DURABLE
        if self.in_progress():
            return IN_PROGRESS
        fut = self._start()
        if isinstance(fut, KvError):
            return fut
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def written(done: asyncio.Future[Any]) -> None:
            if reply.done():
                return
            if done.cancelled():
                reply.set_exception(KvError("ERR the replica is stopping"))
            elif done.exception() is not None:
                reply.set_exception(_failed(done))
            else:
                reply.set_result(OK)

        fut.add_done_callback(written)
        return reply

    def bgsave(self, args: list[bytes]) -> Any:
        """BGSAVE [SCHEDULE]: +Background saving started, or the error to reply.

        SCHEDULE changes nothing here: Redis 7 schedules a BGSAVE only while
        another kind of child (an AOF rewrite) runs, and there is none; while
        a snapshot is being written it answers, like BGSAVE, that one is.
        """
        if len(args) > 1 and (len(args) > 2 or args[1].upper() != b"SCHEDULE"):
            return syntax_error()
        if not self.persist.snapshots_on:
            return NOT_DURABLE
        if self.in_progress():
            return IN_PROGRESS
        fut = self._start()
        return fut if isinstance(fut, KvError) else STARTED

    def _watch(self, fut: asyncio.Future[Any]) -> None:
        if fut is self._watched:
            return
        self._watched = fut
        self._since = time.monotonic()
        fut.add_done_callback(self._finished)

    def _finished(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():  # the replica is stopping
            return
        self.last_ok = fut.exception() is None
        self.last_seconds = round(time.monotonic() - self._since)

    # --- INFO persistence and CONFIG ----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The fields of ``INFO persistence``."""
        status = self.persist.status()
        in_progress = self.in_progress(status)
        durable = bool(status["enabled"])
        snap_seq = int(status["snapshot_seq"])
        changes = max(0, self.replica.applied_seq + 1 - max(snap_seq, 1))
        fields: dict[str, Any] = {
            "loading": 0,
            "async_loading": 0,
            "rdb_changes_since_last_save": changes,
            "rdb_bgsave_in_progress": int(in_progress),
            "rdb_last_save_time": self.last_save(status),
            "rdb_last_bgsave_status": "ok" if self.last_ok else "err",
            "rdb_last_bgsave_time_sec": self.last_seconds,
            "rdb_current_bgsave_time_sec": (
                round(time.monotonic() - self._since) if in_progress else -1
            ),
            "rdb_saves": status["snapshots_written"],
            "aof_enabled": int(durable),
            "aof_rewrite_in_progress": 0,
            "aof_rewrite_scheduled": 0,
            "aof_last_rewrite_time_sec": -1,
            "aof_current_rewrite_time_sec": -1,
            "aof_last_bgrewrite_status": "ok",
            "aof_rewrites": 0,
            "aof_last_write_status": "err" if status["error"] else "ok",
        }
        if durable:
            fields["aof_current_size"] = status["log_bytes"]
        fields.update(
            {
                "dominoes_dir": status["dir"],
                "dominoes_fsync": status["policy"],
                "dominoes_acked": status["acked"],
                "dominoes_synced": status["synced"],
                "dominoes_write_error": status["error"],
                "dominoes_held_replies": status["held_replies"],
                "dominoes_snapshot_seq": snap_seq,
                "dominoes_snapshots_on_disk": status["snapshots_on_disk"],
                "dominoes_segments": status["segments"],
                "dominoes_last_snapshot_pause_usec": round(status["last_snapshot_pause"] * 1e6),
                "dominoes_replayed": status["replayed"],
                "dominoes_replay_seconds": f"{status['replay_seconds']:.3f}",
            }
        )
        return fields

    def config(self) -> dict[bytes, bytes]:
        """CONFIG GET's persistence parameters (Redis's defaults when not durable)."""
        persist = self.persist
        options = persist.options
        if not persist.active or options is None:
            return {
                b"appendonly": b"no",
                b"appendfsync": b"everysec",
                b"dir": os.getcwd().encode(),
                b"save": b"",
            }
        rules = []
        if options.snapshot_seconds:  # after T seconds with at least one new entry
            rules.append(f"{_number(options.snapshot_seconds)} 1")
        if options.snapshot_entries:  # after N entries, however soon
            rules.append(f"0 {options.snapshot_entries}")
        return {
            b"appendonly": b"yes",
            b"appendfsync": (persist.policy or "everysec").encode(),
            b"dir": os.path.abspath(options.data_dir).encode(),
            b"save": " ".join(rules).encode(),
        }


def _failed(fut: asyncio.Future[Any]) -> KvError:
    exc = fut.exception()
    if isinstance(exc, KvError):
        return exc
    if isinstance(exc, DurabilityError):
        return KvError(f"ERR {exc}")
    return KvError(f"ERR snapshot failed: {type(exc).__name__}: {exc}")


def _number(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


class PersistenceCommands:
    """SAVE, BGSAVE and LASTSAVE: connection commands answered in their turn."""

    if TYPE_CHECKING:  # provided by Connection
        server: Server
        resp3: bool
        batch: list[list[bytes]]
        pending: deque[bytes | Entry]

        def _reply(self, value: Any) -> None: ...
        def _flush_batch(self) -> None: ...
        def _on_done(self, fut: asyncio.Future[Any]) -> None: ...

    @command("SAVE", 1, kind=CONN, flags=("noscript", "no-multi"))
    def cmd_save(self, args: list[bytes]) -> None:
        self._in_turn(self.server.saves.save)

    @command("BGSAVE", -1, kind=CONN, flags=("noscript",))
    def cmd_bgsave(self, args: list[bytes]) -> None:
        saves = self.server.saves
        self._in_turn(lambda: saves.bgsave(args))

    @command("LASTSAVE", 1, kind=CONN, flags=("loading", "stale", "fast"))
    def cmd_lastsave(self, args: list[bytes]) -> None:
        self._in_turn(self.server.saves.last_save)

    def _in_turn(self, action: Callable[[], Any]) -> None:
        """Reply what ``action()`` gives (a value, or a future of one) in this command's
        turn: once the entries the connection appended before it are applied here."""
        if self.batch:
            self._flush_batch()
        if self.pending:
            self.pending.append(Deferred(self.resp3, action))  # started by _drain
            return
        value = action()
        if not isinstance(value, asyncio.Future):
            self._reply(value)
            return
        entry = Deferred(self.resp3, None)
        self.pending.append(entry)
        entry.begin(value, self._on_done)
