"""The command events: a batch of commands, or a transaction, in one log entry.

Why batches
-----------
A log entry costs an append, a wake-up and a decode on every replica, whatever
it holds.  So the connection groups the consecutive commands of a pipeline
that must go through the log into **one** entry, ``Commands.run(commands)``,
whose result is the list of their replies; a transaction (MULTI ... EXEC) is
one entry, ``Commands.exec(commands, client)``, whose result is EXEC's reply.

The micro-protocols are bound to these two events, in ``order``::

    Commands.run:   Expiry.lazy (-10)                           Commands.run (0)
    Commands.exec:  Expiry.lazy (-10)  Transactions.check (-5)  Commands.exec (0)

* ``Expiry.lazy`` deletes every key the entry names whose deadline is at or
  before ``ctx.now`` (the entry's replicated time), so a key expires at the
  same log position on every replica, before any command sees it.
* ``Transactions.check`` looks at the keys the client WATCHed: if one was
  written after the WATCH applied, it answers nil and halts the event, so the
  transaction's commands never run.
* ``Commands.run`` / ``Commands.exec`` run each command's implementation
  from the command table.  A command's error is its reply; the others still
  run (Redis's semantics inside a pipeline and inside EXEC alike).

Read commands travel in an entry only when a client pipelines them behind
writes (read-your-writes, in order); they run on the entry's owner only,
which is the replica that will send the reply, and never change state.

WATCH goes through the log
--------------------------
WATCH is a write: its entry registers the client's keys in the replicated
state (``Transactions.watches``, and a watcher count per key in the
keyspace), at its position in the log, after the client's own earlier
writes.  Only watched keys get versions, so writes to other keys pay nothing
for WATCH.  EXEC's entry unregisters them and decides the conflict at its own
position, identically on every replica.  UNWATCH, DISCARD and a closing
connection unregister them too; :meth:`Commands.clients_gone` drops what the
clients of a dead replica left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

from dominoes import Component, Context, on, query, update

from ._errors import KvError, unknown_command
from ._keyspace import Keyspace
from ._resp import NULL_ARRAY, OK, PONG, Status
from ._table import CONN, WRITE, Spec, command

__all__ = (
    "IN_TRANSACTION",
    "REPLICA_BITS",
    "Bound",
    "ClientState",
    "Commands",
    "Transactions",
    "bind_table",
    "client_id",
    "internal_error",
    "replica_of",
)

#: name -> (implementation, is_write, run implementation or None)
Bound = dict[bytes, tuple[Callable[..., Any], bool, Callable[..., list[Any]] | None]]


def internal_error(exc: BaseException) -> KvError:
    return KvError(f"ERR internal error: {type(exc).__name__}: {exc}")


def _ping(now: int, args: list[bytes]) -> Any:
    return PONG if len(args) == 1 else args[1]


def _echo(now: int, args: list[bytes]) -> bytes:
    return args[1]


#: Connection commands that may be queued in MULTI, run inside EXEC.
IN_TRANSACTION: Final[dict[bytes, Callable[[int, list[bytes]], Any]]] = {
    b"PING": _ping,
    b"ECHO": _echo,
}


def bind_table(table: dict[bytes, Spec], component: Callable[[str], Any]) -> Bound:
    """The table's implementations, bound to the components ``component(name)`` returns."""
    bound: Bound = {}
    for name, spec in table.items():
        if spec.kind is CONN:
            if name in IN_TRANSACTION:
                bound[name] = (IN_TRANSACTION[name], False, None)
            continue
        part = component(spec.component)
        run = getattr(part, spec.run) if spec.run and spec.kind is WRITE else None
        bound[name] = (getattr(part, spec.method), spec.kind is WRITE, run)
    return bound


class Commands(Component):
    """Runs batches and transactions of commands (see the module doc)."""

    name = "commands"
    transient: ClassVar[tuple[str, ...]] = ("table", "parts", "_bound", "_blocking", "_ready")

    def __init__(self, table: dict[bytes, Spec], parts: list[Component]) -> None:
        self.table = table
        #: the components implementing the commands, by name (links, not state)
        self.parts = {c.name: c for c in parts}
        self._bound: Bound | None = None
        #: blocked clients (BLPOP, ...) and the keys made ready for them (links)
        blocking: Any = self.parts.get("blocking")
        self._blocking = blocking
        self._ready: dict[bytes, None] = blocking.keyspace.ready if blocking is not None else {}
        #: ``CONFIG SET client-output-buffer-limit``: normal hard, soft, seconds, then
        #: pubsub hard, soft, seconds (empty: the server's defaults).  Replicated, so
        #: every replica's connections obey what a client set on any of them.
        self.output_limits: list[int] = []

    @property
    def bound(self) -> Bound:
        """Every command's implementation, bound to this replica's components."""
        if self._bound is None:
            bound = bind_table(self.table, self.parts.__getitem__)
            for part in self.parts.values():  # the writes no client names (a blocking read)
                internal = getattr(part, "internal_commands", None)
                if internal is not None:
                    bound.update({name: (fn, True, None) for name, fn in internal().items()})
            self._bound = bound
        return self._bound

    @update
    def run(self, ctx: Context, commands: list[list[bytes]]) -> list[Any]:
        """A pipeline's run of commands; the result is their replies, in order.

        After each write, the clients blocked on keys it created are served.
        """
        blocking = self._blocking
        if blocking is None:
            return _execute(ctx, self.bound, commands)
        return _execute(ctx, self.bound, commands, blocking.serve, self._ready)

    @update
    def exec(self, ctx: Context, commands: list[list[bytes]], client: int) -> Any:
        """A transaction of ``client`` (0: it watched nothing); EXEC's reply.

        Its WATCH check ran before, at order -5.  Blocking commands inside it
        answer at once; the clients blocked on keys it created are served
        after all of its commands, as Redis does.
        """
        blocking = self._blocking
        if blocking is None:
            return _execute(ctx, self.bound, commands)
        blocking.deny = True
        try:
            out = _execute(ctx, self.bound, commands)
        finally:
            blocking.deny = False
        if self._ready:
            blocking.serve(ctx)
        return out

    @update
    def set_output_limits(self, ctx: Context, limits: list[int]) -> Status:
        """CONFIG SET client-output-buffer-limit (the connection parsed and checked ``limits``)."""
        self.output_limits = [int(n) for n in limits]
        return OK

    @update
    def clients_gone(self, ctx: Context, replica: int, below: int) -> None:
        """Replica ``replica`` (re)starts numbering clients at ``below``: older ones are gone.

        The components that keep per-client state (pub/sub, WATCH) are bound
        to this event and drop that client state.
        """

    def first_counter(self, replica: int) -> int:
        """Where a new incarnation of ``replica`` may start numbering its clients."""
        held = [
            part.highest_client(replica)
            for part in self.parts.values()
            if isinstance(part, ClientState)
        ]
        return max(held, default=0) + 1

    @query
    def read(self, args: list[bytes], now: int | None = None) -> Any:
        """Run one read command against this replica's state (``now``: the local clock, ms).

        The command's name must be upper case; an error is returned, not raised.
        """
        impl = self.bound.get(args[0])
        if impl is None or impl[1]:
            return KvError(f"ERR not a read command: {args[0]!r}")
        try:
            return impl[0](int(time.time() * 1000) if now is None else now, args)
        except KvError as exc:
            return exc


def _execute(
    ctx: Context,
    bound: Bound,
    commands: list[list[bytes]],
    serve: Callable[[Context], None] | None = None,
    ready: dict[bytes, None] | None = None,
) -> list[Any]:
    """Run ``commands`` in order; after each write, ``serve`` the keys it made ``ready``."""
    owner = ctx.answers
    now = int(ctx.now * 1000)
    out: list[Any] = []
    append = out.append
    implementation = bound.get
    run: list[list[bytes]] = []  # consecutive commands of one name with a run implementation
    runner: Callable[..., list[Any]] | None = None
    for args in commands:
        if run:
            if args[0] == run[0][0]:
                run.append(args)
                continue
            out += _run_of(ctx, runner, run)
            run = []
        impl = implementation(args[0])
        if impl is None:
            append(unknown_command(args))
            continue
        fn, write, runner = impl
        if runner is not None:
            run = [args]
        elif write:
            try:
                append(fn(ctx, args))
            except KvError as exc:
                append(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in one command is that command's error
                append(internal_error(exc))
            if ready:
                serve(ctx)  # type: ignore[misc]
        elif owner:
            try:
                append(fn(now, args))
            except KvError as exc:
                append(exc)
            except Exception as exc:  # noqa: BLE001
                append(internal_error(exc))
        else:
            append(None)  # a read: only the replica that replies computes it
    if run:
        out += _run_of(ctx, runner, run)
    return out


def _run_of(ctx: Context, runner: Any, run: list[list[bytes]]) -> list[Any]:
    """A run implementation's replies, one per command (it answers each command's error)."""
    try:
        replies: list[Any] = runner(ctx, run)
    except Exception as exc:  # noqa: BLE001 - a bug: every command of the run gets it
        return [internal_error(exc)] * len(run)
    return replies


class ClientState:
    """A component keeping state per client id (``(counter << 10) | replica``)."""

    def highest_client(self, replica: int) -> int:
        """The highest client counter of ``replica`` it holds state for (0: none)."""
        raise NotImplementedError


def replica_of(cid: int) -> int:
    return cid & _REPLICA_MASK


#: Client ids keep the replica's index in their low bits (a log holds at most 64).
REPLICA_BITS: Final = 10
_REPLICA_MASK: Final = (1 << REPLICA_BITS) - 1


def client_id(counter: int, replica: int) -> int:
    return (counter << REPLICA_BITS) | replica


class Transactions(Component, ClientState):
    """WATCH and UNWATCH, and WATCH's check bound ahead of a transaction's commands."""

    name = "transactions"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        #: client id -> watched key -> the keyspace tick when the WATCH applied
        self.watches: dict[int, dict[bytes, int]] = {}
        #: transactions aborted because a watched key changed
        self.aborted = 0

    # the connection puts its client id in args[1]
    @command("WATCH", -2, write=True, keys=(2, -1, 1), flags=("client-id", "fast"))
    def watch(self, ctx: Context, args: list[bytes]) -> Status:
        ks = self.keyspace
        now = int(ctx.now * 1000)
        mine = self.watches.setdefault(int(args[1]), {})
        for key in args[2:]:
            if key not in mine:
                ks.expire_if_due(key, now)  # a key already expired is not a change later
                mine[key] = ks.watch(key)
        return OK

    @command("UNWATCH", 1, write=True, flags=("client-id", "fast"))
    def unwatch(self, ctx: Context, args: list[bytes]) -> Status:
        self._forget(int(args[1]))
        return OK

    def _forget(self, cid: int) -> dict[bytes, int]:
        mine = self.watches.pop(cid, None) or {}
        for key in mine:
            self.keyspace.unwatch(key)
        return mine

    @on(Commands.exec, order=-5)
    def check(self, ctx: Context, commands: list[list[bytes]], client: int) -> Any:
        if self.changed(ctx, client):
            ctx.halt()
            return NULL_ARRAY
        return None

    def changed(self, ctx: Context, client: int) -> bool:
        """WATCH's check: forget ``client``'s watches; whether one of them changed."""
        if not client or client not in self.watches:
            return False
        ks = self.keyspace
        now = int(ctx.now * 1000)
        for key in self.watches[client]:
            ks.expire_if_due(key, now)  # expired since the WATCH: a change
        changed = any(ks.changed_since(k, tick) for k, tick in self.watches[client].items())
        self._forget(client)
        if changed:
            self.aborted += 1
        return changed

    @on(Commands.clients_gone)
    def _gone(self, ctx: Context, replica: int, below: int) -> None:
        for cid in sorted(self.watches):
            if replica_of(cid) == replica and cid >> REPLICA_BITS < below:
                self._forget(cid)

    def highest_client(self, replica: int) -> int:
        return max((c >> REPLICA_BITS for c in self.watches if replica_of(c) == replica), default=0)

    def restore(self, state: dict[str, Any]) -> None:
        self.watches = {int(c): dict(keys) for c, keys in state["watches"].items()}
        self.aborted = int(state["aborted"])
