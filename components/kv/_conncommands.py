"""The connection commands: the ``kind=CONN`` commands a connection answers itself.

PING, ECHO, QUIT, SELECT, AUTH, HELLO, RESET, CLIENT, COMMAND, CONFIG, INFO,
ACL, WAIT, DEBUG, LATENCY, SLOWLOG, and the transaction commands MULTI,
DISCARD and EXEC (SAVE, BGSAVE and LASTSAVE are in ``_persistence``): each
changes the
connection's own state and answers at once (``_reply``), or, for EXEC and
``CONFIG SET``, appends one entry of its own.  :class:`ConnectionCommands` is
a mixin of :class:`~._connection.Connection`; the hot loop calls a command as
``getattr(conn, spec.method)(args)``, and ``commands_of(Connection, "")``
finds them for the table.

It also holds the connection state those commands keep: queueing inside MULTI
and the RESP2 subscribed mode (``_special``), and the local mirror of the
pub/sub and WATCH writes (``_client_command``).  WATCH and UNWATCH are writes
(their entries register the keys in the replicated state); EXEC's entry names
the client so its check finds them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

from dominoes import Component, Context, update

from ._blocking import Blocking
from ._commands import IN_TRANSACTION, Commands, replica_of
from ._entries import Deferred, Entry
from ._errors import INT64_MAX, KvError, arity_error, parse_int, syntax_error
from ._functions import FUNCTION_SUBCOMMANDS
from ._glob import glob_matcher
from ._keys import OBJECT_SUBCOMMANDS
from ._keyspace import Keyspace
from ._limits import OUTPUT_LIMIT, parse_output_limits
from ._persistence import CONFIG_ON_COMMAND_LINE
from ._resp import OK, PONG, QUEUED, Status, Verbatim
from ._routing import queued_error, transaction
from ._scripting import SCRIPT_SUBCOMMANDS
from ._streams import XGROUP_SUBCOMMANDS, XINFO_SUBCOMMANDS
from ._table import CONN, Spec, command
from ._zsets import ZSet

if TYPE_CHECKING:
    from collections import deque

    from dominoes import Replica

    from ._server import Server

__all__ = ("REDIS_VERSION", "REQUIREPASS_ENV", "ConnectionCommands", "ServerConfig")

#: The Redis version the server claims (clients check it for features).
REDIS_VERSION: Final = "7.0.0"

#: The command events by name (a name skips resolving the descriptor on every append).
_SET_LIMITS: Final = Commands.set_output_limits.event
_TX_CONTROL: Final = frozenset({b"EXEC", b"DISCARD", b"MULTI", b"QUIT", b"RESET"})
_SUBSCRIBED_OK: Final = frozenset(
    {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE",
     b"SUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"}
)  # fmt: skip
#: The subcommands of container commands that may be queued in MULTI, with Redis's arities:
#: Redis refuses an unknown one, or a wrong number of arguments, when it queues the command.
SUBCOMMANDS: Final[dict[bytes, dict[bytes, int]]] = {
    b"PUBSUB": {
        b"CHANNELS": -2, b"NUMPAT": 2, b"NUMSUB": -2, b"SHARDCHANNELS": -2, b"SHARDNUMSUB": -2,
        b"HELP": 2,
    },
    b"MEMORY": {
        b"DOCTOR": 2, b"HELP": 2, b"MALLOC-STATS": 2, b"PURGE": 2, b"STATS": 2, b"USAGE": -3,
    },
    b"OBJECT": OBJECT_SUBCOMMANDS,
    b"XGROUP": XGROUP_SUBCOMMANDS,
    b"XINFO": XINFO_SUBCOMMANDS,
    b"SCRIPT": SCRIPT_SUBCOMMANDS,
    b"FUNCTION": FUNCTION_SUBCOMMANDS,
}  # fmt: skip


def subcommand_error(args: list[bytes]) -> KvError | None:
    """Redis's error for an unknown subcommand or its arity (None: none), per SUBCOMMANDS."""
    arities = SUBCOMMANDS.get(args[0])
    if arities is None or len(args) < 2:
        return None
    sub = args[1].upper()
    want = arities.get(sub)
    if want is None:
        text = args[1].decode("utf-8", "replace")
        return KvError(f"ERR unknown subcommand '{text}'. Try {args[0].decode()} HELP.")
    n = len(args)
    if (want >= 0 and n != want) or (want < 0 and n < -want):
        return arity_error(args[0].lower() + b"|" + sub.lower())
    return None


_SHARD_COMMANDS: Final = frozenset({b"SSUBSCRIBE", b"SUNSUBSCRIBE"})
#: What a client may send before it authenticates (Redis's ``no-auth`` commands).
_NO_AUTH: Final = frozenset({b"AUTH", b"HELLO", b"QUIT", b"RESET"})
_NOAUTH: Final = KvError("NOAUTH Authentication required.")
_EXEC_NOAUTH: Final = KvError(
    "EXECABORT Transaction discarded because of: NOAUTH Authentication required."
)
_WRONGPASS: Final = KvError("WRONGPASS invalid username-password pair or user is disabled.")
_EXECABORT: Final = KvError("EXECABORT Transaction discarded because of previous errors.")
_NOT_IN_MULTI: Final = KvError("ERR Command not allowed inside a transaction")


class ConnectionCommands:
    """The connection commands, and the MULTI and pub/sub state they keep."""

    if TYPE_CHECKING:  # provided by Connection
        server: Server
        replica: Replica
        table: dict[bytes, Spec]
        id: int
        peer: str
        created: float
        resp3: bool
        name: bytes | None
        lib: dict[bytes, bytes]
        multi: list[list[bytes]] | None
        multi_error: bool
        channels: set[bytes]
        patterns: set[bytes]
        watching: bool
        watched_keys: list[bytes]
        batch: list[list[bytes]]
        pending: deque[bytes | Entry]
        closing: bool
        last_command: bytes
        transport: asyncio.Transport | None
        out: list[bytes]
        backlog: list[list[bytes]]
        more: bool
        queued: int
        _push_bytes: int
        special: bool

        def _reply(self, value: Any) -> None: ...
        def _on_done(self, fut: asyncio.Future[Any]) -> None: ...
        def _in_turn(self, action: Any) -> None: ...
        def _run(self, commands: list[list[bytes]]) -> None: ...
        def _refuse(self, error: KvError) -> None: ...
        def _state_changed(self) -> None: ...
        def _held(self) -> int: ...
        def _flush_batch(self) -> None: ...
        def _batch_kind(self, args: list[bytes]) -> None: ...
        def _submit(self, entry: Entry, event: Any, args: tuple[Any, ...], mode: str) -> None: ...

    #: the client has authenticated (or needs not: no ``requirepass`` when it connected)
    authenticated: bool = True
    #: CLIENT REPLY OFF is in force (from its turn in the reply queue)
    muted: bool = False
    #: CLIENT REPLY OFF was sent (``muted`` follows in its turn)
    reply_off: bool = False
    #: CLIENT REPLY SKIP: the next command's reply is dropped
    skip_next: bool = False
    #: when the client last sent something (``time.time()``: CLIENT LIST's idle)
    last_active: float = 0.0

    # --- MULTI and pub/sub state -----------------------------------------------------------

    def _special(self, name: bytes, spec: Spec, args: list[bytes]) -> bool:
        """Not authenticated, inside MULTI, subscribed in RESP2, or after CLIENT REPLY
        SKIP: whether the command was handled here."""
        self.last_command = name
        if not self.authenticated:
            if not self.server.config.requirepass:  # CONFIG SET requirepass "" since
                self.authenticated = True
                self._state_changed()
            elif name not in _NO_AUTH:
                self._refuse(_EXEC_NOAUTH if name == b"EXEC" else _NOAUTH)
                return True
        if self.skip_next and not (name == b"CLIENT" and args[1:2] == [b"REPLY"]):
            # the reply of this one command is dropped: mute, run it, unmute, in turn
            self.skip_next = False
            self._state_changed()
            self._mute(True, None)
            self.server.commands_processed -= 1  # counted by the loop that called this
            self._run([args])
            self._mute(False, None)
            return True
        if self.multi is not None and name not in _TX_CONTROL:
            if name == b"WATCH":
                self._reply(KvError("ERR WATCH inside MULTI is not allowed"))
            elif spec.no_multi or (spec.kind is CONN and name not in IN_TRANSACTION):
                self._refuse(_NOT_IN_MULTI)
            elif (refused := subcommand_error(args)) is not None:
                self._refuse(refused)  # as Redis: at queueing time, so EXEC aborts
            elif self.server.partitioned and (refused := queued_error(spec, args)) is not None:
                self._refuse(refused)
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

    def _client_command(self, name: bytes, args: list[bytes]) -> None:
        """Put this client's id in ``args`` and mirror what it changes locally.

        The mirror (subscriptions, whether it watches) tells at once which mode
        the connection is in, without waiting for the entry.
        """
        names = args[1:]
        args.insert(1, b"%d" % self.id)
        if name == b"WATCH":
            self.watching = True
            self.watched_keys += names
            return
        if name == b"UNWATCH":
            self.watching = False
            self.watched_keys = []
            return
        if name in _SHARD_COMMANDS:  # shard channels, kept as 1-tuples among the channels
            shards = [(n,) for n in names]
            if name == b"SSUBSCRIBE":
                self.channels.update(shards)  # type: ignore[arg-type]
            elif names:
                self.channels.difference_update(shards)
            else:
                self.channels.difference_update([c for c in self.channels if _is_shard(c)])
            self._state_changed()
            return
        which = self.patterns if name[0] == 80 else self.channels  # 'P'
        if name.endswith(b"UNSUBSCRIBE"):
            if names:
                which.difference_update(names)
            else:
                which.difference_update([c for c in which if not _is_shard(c)])
        else:
            which.update(names)
        self._state_changed()

    def _mute(self, on: bool, reply: Any) -> None:
        """CLIENT REPLY OFF (``on``) or ON, in its turn: once every reply before it is out.

        While muted, what reaches the output is dropped (``_finish`` of the
        connection); ``reply`` (ON's +OK) is sent once unmuted.
        """
        if self.batch:
            self._flush_batch()

        def action() -> Any:
            out = self.out
            if on:
                if out and self.transport is not None and not self.muted:
                    self.transport.write(b"".join(out))
                out.clear()
                self._push_bytes = 0
                self.muted = True
            else:
                if self.muted:
                    out.clear()
                    self._push_bytes = 0
                self.muted = False
            return reply

        if not self.pending:  # its turn is now
            action()
            if reply is not None:
                self._reply(reply)
            return
        entry = Deferred(self.resp3, action)
        if reply is None:
            entry.silent = True
        self.pending.append(entry)

    def _kill(self) -> None:
        """CLIENT KILL: close this connection now, dropping what it has not sent."""
        transport = self.transport
        self.closing = True
        self.backlog = []
        self.more = False
        if transport is not None:
            transport.abort()  # connection_lost unsubscribes and unwatches

    # --- connection commands ---------------------------------------------------------------

    @command("PING", -1, kind=CONN, flags=("fast",))
    def cmd_ping(self, args: list[bytes]) -> None:
        if len(args) > 2:
            self._reply(arity_error(b"ping"))
        elif self.replica.persist.active and (refused := self.server.saves.refusal()):
            self._reply(refused)  # as Redis 7: a health check sees that writes fail
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

    @command("AUTH", -2, kind=CONN, flags=("fast", "noscript", "loading", "stale"))
    def cmd_auth(self, args: list[bytes]) -> None:
        if len(args) > 3:
            self._reply(syntax_error())
            return
        password = self.server.config.requirepass
        if len(args) == 2 and not password:
            self._reply(
                KvError(
                    "ERR AUTH <password> called without any password configured for the "
                    "default user. Are you sure your configuration is correct?"
                )
            )
            return
        user = args[1] if len(args) == 3 else b"default"
        if not self._authenticate(user, args[-1]):
            self._reply(_WRONGPASS)
            return
        self._reply(OK)

    def _authenticate(self, user: bytes, password: bytes) -> bool:
        """AUTH and HELLO AUTH: the default user (the only one) and ``requirepass``."""
        required = self.server.config.requirepass
        if user != b"default" or (required and password != required):
            return False
        if not self.authenticated:
            self.authenticated = True
            self._state_changed()
        return True

    @command("HELLO", -1, kind=CONN, flags=("fast", "noscript", "loading", "stale"))
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
        credentials: tuple[bytes, bytes] | None = None
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                credentials = (args[i + 1], args[i + 2])
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                name = args[i + 1]
                i += 2
            else:
                text = args[i].decode("utf-8", "replace")
                self._reply(KvError(f"ERR Syntax error in HELLO option '{text}'"))
                return
        if credentials is not None and not self._authenticate(*credentials):
            self._reply(_WRONGPASS)
            return
        if not self.authenticated:
            self._reply(
                KvError(
                    "NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the "
                    "same time"
                )
            )
            return
        if name is not None and not _valid_name(name):
            self._reply(_BAD_NAME)
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
            self._batch_silently([b"SUNSUBSCRIBE", b"%d" % self.id])
        if self.skip_next or self.reply_off:
            self.skip_next = self.reply_off = False
            self._mute(False, None)
        if self.server.config.requirepass:  # as Redis: back to the default user's state
            self.authenticated = False
        if self.watching:
            self.watching = False
            self.watched_keys = []
            self._batch_silently([b"UNWATCH", b"%d" % self.id])
        self.resp3 = False
        self._state_changed()
        self.name = None
        self._reply(Status(b"RESET"))

    @command("CLIENT", -2, kind=CONN, flags=("noscript", "loading", "stale"))
    def cmd_client(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        want = _CLIENT_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try CLIENT HELP."))
            return
        if (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"client|" + sub.lower()))
            return
        try:
            getattr(self, _CLIENT_METHODS[sub])(args)
        except KvError as exc:
            self._reply(exc)

    def _client_unblock(self, args: list[bytes]) -> None:
        """CLIENT UNBLOCK id [TIMEOUT|ERROR]: a client blocked on any replica (through the log)."""
        if len(args) > 4:
            text = args[1].decode("utf-8", "replace")
            raise KvError(
                f"ERR unknown subcommand or wrong number of arguments for '{text}'. "
                "Try CLIENT HELP."
            )
        cid = parse_int(args[2])
        error = False
        if len(args) == 4:
            reason = args[3].upper()
            if reason not in (b"TIMEOUT", b"ERROR"):
                raise KvError("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
            error = reason == b"ERROR"
        if self.batch:
            self._flush_batch()
        entry = Entry(self.resp3, transaction=True)
        self.pending.append(entry)
        self._submit(entry, _UNBLOCK, ([cid, int(error)],), "affinity")

    def _client_setname(self, args: list[bytes]) -> None:
        if not _valid_name(args[2]):
            raise _BAD_NAME
        self.name = args[2] or None
        self._reply(OK)

    def _client_getname(self, args: list[bytes]) -> None:
        self._reply(self.name)

    def _client_id(self, args: list[bytes]) -> None:
        self._reply(self.id)

    def _client_setinfo(self, args: list[bytes]) -> None:
        attr = args[2].upper()
        if attr not in (b"LIB-NAME", b"LIB-VER"):
            text = args[2].decode("utf-8", "replace")
            raise KvError(f"ERR Unrecognized option '{text}'")
        self.lib[attr] = args[3]
        self._reply(OK)

    def _client_info(self, args: list[bytes]) -> None:
        self._reply(Verbatim(self._describe() + b"\n"))

    def _client_list(self, args: list[bytes]) -> None:
        conns = list(self.server.connections.values())
        if len(args) > 2:
            opt = args[2].upper()
            if opt == b"TYPE" and len(args) == 4:
                kind = args[3].lower()
                if kind not in _CLIENT_TYPES:
                    text = args[3].decode("utf-8", "replace")
                    raise KvError(f"ERR Unknown client type '{text}'")
                conns = [c for c in conns if c._type() == kind]
            elif opt == b"ID" and len(args) >= 4:
                ids = []
                for word in args[3:]:
                    try:
                        ids.append(parse_int(word))
                    except KvError:
                        raise KvError("ERR Invalid client ID") from None
                by_id = self.server.connections
                conns = [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
            else:
                raise syntax_error()
        self._reply(Verbatim(b"".join(c._describe() + b"\n" for c in conns)))

    def _client_kill(self, args: list[bytes]) -> None:
        if len(args) == 3:  # the old form: CLIENT KILL addr:port
            addr = args[2]
            killed = self.server.kill_local([0, addr, b"", "", False, self.id])
            if killed or self.server.replica.replicas == 1:
                self._reply(OK if killed else KvError("ERR No such client"))
                return
            filters = [0, addr, b"", "", False, self.id]
            self._in_turn(lambda: self.server.kill_everywhere(filters, old_form=True))
            return
        if len(args) % 2:
            raise syntax_error()
        cid, addr, laddr, kind, skipme = 0, b"", b"", "", True
        for i in range(2, len(args), 2):
            opt, value = args[i].upper(), args[i + 1]
            if opt == b"ID":
                try:
                    cid = parse_int(value)
                except KvError:
                    cid = 0
                if cid <= 0:
                    raise KvError("ERR client-id should be greater than 0")
            elif opt == b"ADDR":
                addr = value
            elif opt == b"LADDR":
                laddr = value
            elif opt == b"TYPE":
                kind = value.lower().decode("utf-8", "replace")
                if kind.encode() not in _CLIENT_TYPES:
                    text = value.decode("utf-8", "replace")
                    raise KvError(f"ERR Unknown client type '{text}'")
            elif opt == b"USER":
                if value != b"default":
                    text = value.decode("utf-8", "replace")
                    raise KvError(f"ERR No such user '{text}'")
            elif opt == b"SKIPME":
                word = value.lower()
                if word not in (b"yes", b"no"):
                    raise syntax_error()
                skipme = word == b"yes"
            else:
                raise syntax_error()
        filters = [cid, addr, laddr, kind, skipme, self.id]
        server = self.server
        if cid and replica_of(cid) >= server.replica.replicas:
            self._reply(0)  # no replica numbers its clients so
            return
        if server.replica.replicas == 1 or (cid and replica_of(cid) == server.index):
            self._reply(server.kill_local(filters))
            return
        self._in_turn(lambda: server.kill_everywhere(filters))

    def _client_no_evict(self, args: list[bytes]) -> None:
        if args[2].upper() not in (b"ON", b"OFF"):
            raise syntax_error()
        self._reply(OK)  # the service never evicts: nothing to protect the client from

    def _client_tracking(self, args: list[bytes]) -> None:
        word = args[2].upper()
        if word == b"OFF" and len(args) == 3:
            self._reply(OK)  # it is off
        elif word in (b"ON", b"OFF"):
            raise KvError(
                "ERR CLIENT TRACKING is not supported by the dominoes KV service (client-side "
                "caching needs invalidation messages from every replica's writes; not built)"
            )
        else:
            raise syntax_error()

    def _client_trackinginfo(self, args: list[bytes]) -> None:
        self._reply({b"flags": {b"off"}, b"redirect": -1, b"prefixes": []})

    def _client_getredir(self, args: list[bytes]) -> None:
        self._reply(-1)

    def _client_caching(self, args: list[bytes]) -> None:
        raise KvError(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with "
            "OPTIN or OPTOUT mode enabled"
        )

    def _client_pause(self, args: list[bytes]) -> None:
        try:
            timeout = parse_int(args[2])
        except KvError:
            raise KvError("ERR timeout is not an integer or out of range") from None
        if timeout < 0:
            raise KvError("ERR timeout is negative")
        if len(args) == 4 and args[3].upper() not in (b"WRITE", b"ALL"):
            raise KvError("ERR CLIENT PAUSE mode must be WRITE or ALL")
        if len(args) > 4:
            raise syntax_error()
        if timeout == 0:
            self._reply(OK)  # a pause of no time: nothing to do
            return
        raise KvError(
            "ERR CLIENT PAUSE is not supported by the dominoes KV service (every replica "
            "serves clients on its own core; a pause of all of them is not built)"
        )

    def _client_unpause(self, args: list[bytes]) -> None:
        self._reply(OK)  # nothing is ever paused

    def _client_reply(self, args: list[bytes]) -> None:
        mode = args[2].upper()
        if mode == b"ON":
            self.skip_next = self.reply_off = False
            self._state_changed()
            self._mute(False, OK)
        elif mode == b"OFF":
            self.skip_next = False
            self.reply_off = True
            self._state_changed()
            self._mute(True, None)
        elif mode == b"SKIP":
            if not self.reply_off:
                self.skip_next = True
                self._state_changed()
        else:
            raise syntax_error()

    def _client_help(self, args: list[bytes]) -> None:
        self._reply([Status(line.encode()) for line in _CLIENT_HELP])

    def _type(self) -> bytes:
        """CLIENT LIST/KILL TYPE: pubsub if subscribed, else normal."""
        return b"pubsub" if self.channels or self.patterns else b"normal"

    def _local_addr(self) -> str:
        transport = self.transport
        name = transport.get_extra_info("sockname") if transport is not None else None
        if isinstance(name, tuple) and len(name) >= 2:
            return f"{name[0]}:{name[1]}"
        return ""

    def _describe(self) -> bytes:
        now = time.time()
        name = (self.name or b"").decode("utf-8", "replace")
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        shards = sum(1 for c in self.channels if _is_shard(c))
        subscribed = self.channels or self.patterns
        flags = ("x" if self.multi is not None else "") + ("P" if subscribed else "")
        omem = self._held()
        active = self.last_active or self.created
        return (
            f"id={self.id} addr={self.peer} laddr={self._local_addr()} fd={fd} name={name} "
            f"age={int(now - self.created)} idle={max(0, int(now - active))} "
            f"flags={flags or 'N'} db=0 sub={len(self.channels) - shards} "
            f"psub={len(self.patterns)} ssub={shards} "
            f"multi={-1 if self.multi is None else len(self.multi)} "
            f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll={len(self.pending)} "
            f"omem={omem} tot-mem={omem} events=r "
            f"cmd={self.last_command.decode('ascii', 'replace').lower()} user=default "
            f"redir=-1 resp={3 if self.resp3 else 2} "
            f"lib-name={self.lib.get(b'LIB-NAME', b'').decode('utf-8', 'replace')} "
            f"lib-ver={self.lib.get(b'LIB-VER', b'').decode('utf-8', 'replace')} "
            f"replica={self.server.index}"
        ).encode()

    @command("COMMAND", -1, kind=CONN, flags=("loading", "stale"))
    def cmd_command(self, args: list[bytes]) -> None:
        table = self.table
        n = len(args)
        if n == 1:
            self._reply([spec.info() for spec in table.values()])
            return
        sub = args[1].upper()
        want = _COMMAND_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try COMMAND HELP."))
            return
        if (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"command|" + sub.lower()))
            return
        if sub == b"COUNT":
            self._reply(len(table))
        elif sub == b"INFO":
            names = [a.upper() for a in args[2:]] or list(table)
            self._reply([table[n].info() if n in table else None for n in names])
        elif sub == b"DOCS":
            self._reply({})
        elif sub == b"LIST":
            self._reply(self._command_list(args))
        elif sub == b"GETKEYS":
            spec = table.get(args[2].upper())
            if spec is None:
                self._reply(KvError("ERR Invalid command specified"))
            elif not spec.arity_ok(n - 2):
                self._reply(KvError("ERR Invalid number of arguments specified for command"))
            elif not spec.first:
                self._reply(KvError("ERR The command has no key arguments"))
            else:
                self._reply(spec.user_keys(args[2:]))
        else:  # HELP
            self._reply([Status(line.encode()) for line in _COMMAND_HELP])

    def _command_list(self, args: list[bytes]) -> list[bytes] | KvError:
        names = [n.lower() for n in self.table]
        if len(args) == 2:
            return names
        if len(args) != 5 or args[2].upper() != b"FILTERBY":
            return syntax_error()
        kind, value = args[3].upper(), args[4]
        if kind == b"MODULE":
            return []
        if kind == b"PATTERN":
            match = glob_matcher(value.lower())  # Redis matches without case
            return [n for n in names if match(n)]
        if kind == b"ACLCAT":
            return syntax_error()  # no ACL categories per command (see ACL CAT)
        return syntax_error()

    @command("CONFIG", -2, kind=CONN, flags=("noscript", "loading", "stale"))
    def cmd_config(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        want = _CONFIG_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try CONFIG HELP."))
            return
        if (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"config|" + sub.lower()))
            return
        if sub == b"GET":
            self._reply(self._config_get(args[2:]))
        elif sub == b"RESETSTAT":
            self.server.reset_stats()
            self._reply(OK)
        elif sub == b"SET":
            self._config_set(args[2:])
        elif sub == b"REWRITE":
            self._reply(KvError("ERR The server is running without a config file"))
        else:  # HELP
            self._reply([Status(line.encode()) for line in _CONFIG_HELP])

    def _config_values(self) -> dict[bytes, bytes]:
        """Every parameter CONFIG GET knows, and its value."""
        server = self.server
        local = self._local_addr()
        host, _, port = local.rpartition(":")
        return {
            **server.saves.config(),  # appendonly, appendfsync, dir, save
            **server.config.config,  # the replicated ones CONFIG SET changes
            b"databases": b"1",
            b"port": port.encode(),
            b"bind": host.encode(),
            b"maxclients": b"10000",
            b"slowlog-log-slower-than": b"10000",
            b"slowlog-max-len": b"128",
            b"latency-monitor-threshold": b"0",
            b"latency-tracking": b"no",
            b"cluster-enabled": b"no",
            b"replica-read-only": b"yes",
            b"protected-mode": b"no",
            b"io-threads": b"1",
            OUTPUT_LIMIT: server.limits_text(),
        }

    def _config_get(self, patterns: list[bytes]) -> dict[bytes, bytes]:
        known = self._config_values()
        found: dict[bytes, bytes] = {}
        for pattern in patterns:
            if not any(c in pattern for c in b"*?["):  # a name: answered as it was spelled
                value = known.get(pattern.lower())
                if value is not None:
                    found[pattern] = value
                continue
            match = glob_matcher(pattern.lower())
            found.update((k, v) for k, v in known.items() if match(k))
        return found

    def _config_set(self, pairs: list[bytes]) -> None:
        """CONFIG SET: the parameters in :data:`SETTABLE` and client-output-buffer-limit,
        through the log, so every replica's connections obey them."""
        if len(pairs) < 2 or len(pairs) % 2:
            self._reply(arity_error(b"config|set"))
            return
        names = [p.lower() for p in pairs[::2]]
        for name in names:
            if name not in SETTABLE and name not in _CONFIG_FIXED:
                text = name.decode("utf-8", "replace")
                self._reply(
                    KvError(f"ERR Unknown option or number of arguments for CONFIG SET - '{text}'")
                )
                return
        seen: set[bytes] = set()
        for name in names:
            if name in seen:
                self._reply(_set_failed(name, "duplicate parameter"))
                return
            seen.add(name)
        for name in names:
            fixed = _CONFIG_FIXED.get(name)
            if fixed is not None:
                self._reply(_set_failed(name, fixed))
                return
        values: list[bytes] = []
        for name, value in zip(names, pairs[1::2], strict=True):
            try:
                values.append(SETTABLE[name](name, value))
            except KvError as exc:
                self._reply(exc)
                return
        settings = [(n, v) for n, v in zip(names, values, strict=True) if n != OUTPUT_LIMIT]
        if OUTPUT_LIMIT in names:
            value = values[names.index(OUTPUT_LIMIT)]
            if not self._set_output_limits(value, silent=bool(settings)):
                return
            if not settings:
                return
        if self.batch:
            self._flush_batch()
        entry = Entry(self.resp3, transaction=True)
        self.pending.append(entry)
        self._submit(entry, _SET_CONFIG, (settings,), "affinity")

    def _set_output_limits(self, value: bytes, silent: bool) -> bool:
        """Append client-output-buffer-limit's entry (``silent``: the next entry answers);
        False if the value is refused (the reply is sent)."""
        normal, pubsub = self.server.limits(False), self.server.limits(True)
        limits = [*normal.values(), *pubsub.values()]
        try:
            parse_output_limits(value, limits)
        except KvError as exc:
            self._reply(exc)
            return False
        if self.batch:
            self._flush_batch()
        entry = Entry(self.resp3, transaction=True)
        entry.silent = silent
        self.pending.append(entry)
        self._submit(entry, _SET_LIMITS, (limits,), "affinity")
        return True

    @command("INFO", -1, kind=CONN)
    def cmd_info(self, args: list[bytes]) -> None:
        self._reply(Verbatim(self.server.info(args[1:])))

    # --- server commands answered by the connection ------------------------------------------

    @command("ACL", -2, kind=CONN, flags=("noscript", "loading", "stale"))
    def cmd_acl(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        want = _ACL_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try ACL HELP."))
        elif (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"acl|" + sub.lower()))
        elif sub == b"WHOAMI":
            self._reply(b"default")
        elif sub == b"USERS":
            self._reply([b"default"])
        elif sub == b"LIST":
            self._reply([b"user default on " + self._acl_password() + b" ~* &* +@all"])
        elif sub == b"GETUSER":
            if args[2] != b"default":
                self._reply(None)
                return
            password = self.server.config.requirepass
            self._reply(
                {
                    b"flags": {b"on"} if password else {b"on", b"nopass"},
                    b"passwords": [hashlib.sha256(password).hexdigest().encode()]
                    if password
                    else [],
                    b"commands": b"+@all",
                    b"keys": b"~*",
                    b"channels": b"&*",
                    b"selectors": [],
                }
            )
        elif sub == b"CAT":
            if n == 2:
                self._reply(list(_ACL_CATEGORIES))
            else:
                text = args[2].decode("utf-8", "replace")
                if args[2].lower() not in _ACL_CATEGORIES:
                    self._reply(KvError(f"ERR Unknown category '{text}'"))
                else:
                    self._reply(
                        KvError(
                            f"ERR ACL CAT {text} is not supported by the dominoes KV service "
                            "(its commands carry no ACL categories)"
                        )
                    )
        elif sub == b"HELP":
            self._reply([Status(line.encode()) for line in _ACL_HELP])
        else:
            self._reply(
                KvError(
                    f"ERR ACL {sub.decode('utf-8', 'replace')} is not supported by the dominoes "
                    "KV service (one user, default; set its password with requirepass)"
                )
            )

    def _acl_password(self) -> bytes:
        password = self.server.config.requirepass
        if not password:
            return b"nopass"
        return b"#" + hashlib.sha256(password).hexdigest().encode()

    @command("WAIT", 3, kind=CONN, flags=("noscript",))
    def cmd_wait(self, args: list[bytes]) -> None:
        """Every replica applies every write: the others are always in sync, at once."""
        try:
            parse_int(args[1])
        except KvError as exc:
            self._reply(exc)
            return
        try:
            timeout = parse_int(args[2])
        except KvError:
            self._reply(KvError("ERR timeout is not an integer or out of range"))
            return
        if timeout < 0:
            self._reply(KvError("ERR timeout is negative"))
            return
        replicas = self.server.replica.replicas - 1
        self._in_turn(lambda: replicas)

    @command("DEBUG", -2, kind=CONN, flags=("noscript", "loading", "stale"))
    def cmd_debug(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        if sub == b"SLEEP" and len(args) == 3:
            try:
                seconds = float(args[2])
            except ValueError:
                seconds = 0.0  # as Redis (atof)
            if not seconds > 0:
                self._reply(OK)
                return
            delay = min(seconds, 3600.0)

            def later() -> asyncio.Future[Any]:
                loop = asyncio.get_running_loop()
                fut: asyncio.Future[Any] = loop.create_future()

                def wake() -> None:
                    if not fut.done():
                        fut.set_result(OK)

                loop.call_later(delay, wake)
                return fut

            self._in_turn(later)
            return
        text = args[1].decode("utf-8", "replace")
        self._reply(
            KvError(
                f"ERR DEBUG {text} is not supported by the dominoes KV service "
                "(only DEBUG SLEEP is, which delays this connection's reply, not the server)"
            )
        )

    @command("LATENCY", -2, kind=CONN, flags=("noscript", "loading", "stale"))
    def cmd_latency(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        want = _LATENCY_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try LATENCY HELP."))
        elif (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"latency|" + sub.lower()))
        elif sub in (b"LATEST", b"HISTORY"):
            self._reply([])
        elif sub == b"RESET":
            self._reply(0)
        elif sub == b"DOCTOR":
            self._reply(Verbatim(_LATENCY_DOCTOR))
        elif sub == b"GRAPH":
            text = args[2].decode("utf-8", "replace")
            self._reply(KvError(f"ERR No samples available for event '{text}'"))
        elif sub == b"HISTOGRAM":
            self._reply({})
        else:
            self._reply([Status(line.encode()) for line in _LATENCY_HELP])

    @command("SLOWLOG", -2, kind=CONN, flags=("loading", "stale"))
    def cmd_slowlog(self, args: list[bytes]) -> None:
        sub = args[1].upper()
        n = len(args)
        want = _SLOWLOG_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            self._reply(KvError(f"ERR unknown subcommand '{text}'. Try SLOWLOG HELP."))
        elif (want >= 0 and n != want) or (want < 0 and n < -want):
            self._reply(arity_error(b"slowlog|" + sub.lower()))
        elif sub == b"GET":
            if n > 3:
                text = args[1].decode("utf-8", "replace")
                self._reply(
                    KvError(
                        f"ERR unknown subcommand or wrong number of arguments for '{text}'. "
                        "Try SLOWLOG HELP."
                    )
                )
                return
            if n == 3:
                try:
                    count = parse_int(args[2])
                except KvError:
                    count = -2
                if count < -1:
                    self._reply(KvError("ERR count should be greater than or equal to -1"))
                    return
            self._reply([])  # the service keeps no slow log
        elif sub == b"LEN":
            self._reply(0)
        elif sub == b"RESET":
            self._reply(OK)
        else:
            self._reply([Status(line.encode()) for line in _SLOWLOG_HELP])

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
            self.watched_keys = []
            unwatch = [b"UNWATCH", b"%d" % self.id]
            self._batch_kind(unwatch)
            self.batch.append(unwatch)
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
        watched, self.watched_keys = self.watched_keys, []
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
        entry = Entry(self.resp3, transaction=True)
        if self.server.partitioned:
            routed = transaction(commands, watched if client else [])
            if isinstance(routed, KvError):
                if client:
                    self._batch_silently([b"UNWATCH", b"%d" % client])
                self._reply(routed)
                return
            commands, entry.watched, every = routed, bool(client), False
        self.pending.append(entry)
        self._submit(
            entry, self.server.exec_event, (commands, client), "every" if every else "affinity"
        )

    def _batch_silently(self, args: list[bytes]) -> None:
        """Append an internal command whose reply the client must not see."""
        if self.batch:
            self._flush_batch()
        self._batch_kind(args)
        self.batch.append(args)
        self._flush_batch()
        entry = self.pending[-1]
        assert isinstance(entry, Entry)
        entry.silent = True


def _unknown_subcommand(text: str) -> KvError:
    return KvError(f"ERR unknown subcommand or wrong number of arguments for '{text}'")


#: CLIENT's subcommands: arity (Redis's), and the method answering it
_CLIENT_ARITY: Final = {
    b"CACHING": 3, b"GETNAME": 2, b"GETREDIR": 2, b"ID": 2, b"INFO": 2, b"KILL": -3,
    b"LIST": -2, b"NO-EVICT": 3, b"PAUSE": -3, b"REPLY": 3, b"SETNAME": 3, b"SETINFO": 4,
    b"TRACKING": -3, b"TRACKINGINFO": 2, b"UNPAUSE": 2, b"HELP": 2, b"UNBLOCK": -3,
}  # fmt: skip
_CLIENT_METHODS: Final = {
    name: "_client_" + name.decode().lower().replace("-", "_") for name in _CLIENT_ARITY
}
_CLIENT_TYPES: Final = frozenset({b"normal", b"master", b"replica", b"slave", b"pubsub"})
_CLIENT_HELP: Final = (
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CACHING (YES|NO)",
    "    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
    "GETREDIR",
    "    Return the client ID we are redirecting to when tracking is enabled.",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made from the specified address",
    "    * LADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "UNPAUSE",
    "    Stop the current client pause, resuming traffic.",
    "PAUSE <timeout> [WRITE|ALL]",
    "    Suspend all, or just write, clients for <timeout> milliseconds.",
    "REPLY (ON|OFF|SKIP)",
    "    Control the replies sent to the current connection.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "UNBLOCK <clientid> [TIMEOUT|ERROR]",
    "    Unblock the specified blocked client.",
    "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]]",
    "         [OPTIN] [OPTOUT] [NOLOOP]",
    "    Control server assisted client side caching.",
    "TRACKINGINFO",
    "    Report tracking status for the current connection.",
    "NO-EVICT (ON|OFF)",
    "    Protect current client connection from eviction.",
    "HELP",
    "    Prints this help.",
)

_BAD_NAME: Final = KvError(
    "ERR Client names cannot contain spaces, newlines or special characters."
)


def _is_shard(channel: object) -> bool:
    """A shard channel in the connection's mirror of its channels (a 1-tuple)."""
    return type(channel) is tuple


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


# --- COMMAND, CONFIG, ACL, LATENCY, SLOWLOG: arities (Redis's) and help texts ---------------

_COMMAND_ARITY: Final = {
    b"COUNT": 2, b"INFO": -2, b"DOCS": -2, b"LIST": -2, b"GETKEYS": -4, b"HELP": 2,
}  # fmt: skip
_COMMAND_HELP: Final = (
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all Redis commands.",
    "COUNT",
    "    Return the total number of commands in this Redis server.",
    "LIST",
    "    Return a list of all commands in this Redis server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "GETKEYS <full-command>",
    "    Return the keys from a full Redis command.",
    "HELP",
    "    Prints this help.",
)
_CONFIG_ARITY: Final = {b"GET": -3, b"SET": -4, b"RESETSTAT": 2, b"REWRITE": 2, b"HELP": 2}
_CONFIG_HELP: Final = (
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET <directive> <value>",
    "    Set the configuration <directive> to <value>.",
    "RESETSTAT",
    "    Reset statistics reported by the INFO command.",
    "REWRITE",
    "    Rewrite the configuration file.",
    "HELP",
    "    Prints this help.",
)
_ACL_ARITY: Final = {
    b"CAT": -2, b"DELUSER": -3, b"DRYRUN": -4, b"GENPASS": -2, b"GETUSER": 3, b"LIST": 2,
    b"LOAD": 2, b"LOG": -2, b"SAVE": 2, b"SETUSER": -3, b"USERS": 2, b"WHOAMI": 2, b"HELP": 2,
}  # fmt: skip
_ACL_CATEGORIES: Final = (
    b"keyspace", b"read", b"write", b"set", b"sortedset", b"list", b"hash", b"string",
    b"bitmap", b"hyperloglog", b"geo", b"stream", b"pubsub", b"admin", b"fast", b"slow",
    b"blocking", b"dangerous", b"connection", b"transaction", b"scripting",
)  # fmt: skip
_ACL_HELP: Final = (
    "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CAT",
    "    List all commands categories.",
    "GETUSER <username>",
    "    Get the user's details.",
    "LIST",
    "    Show users details in config file format.",
    "USERS",
    "    List all the registered usernames.",
    "WHOAMI",
    "    Return the current connection username.",
    "HELP",
    "    Prints this help.",
)
_LATENCY_ARITY: Final = {
    b"DOCTOR": 2, b"GRAPH": 3, b"HISTORY": 3, b"LATEST": 2, b"RESET": -2, b"HISTOGRAM": -2,
    b"HELP": 2,
}  # fmt: skip
_LATENCY_DOCTOR: Final = (
    b"I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. "
    b'You may use "CONFIG SET latency-monitor-threshold <milliseconds>." in order to enable it. '
    b"If we weren't in a deep space mission I'd suggest to take a look at "
    b"https://redis.io/topics/latency-monitor.\n"
)
_LATENCY_HELP: Final = (
    "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return a human readable latency analysis report.",
    "GRAPH <event>",
    "    Return an ASCII latency graph for the <event> class.",
    "HISTORY <event>",
    "    Return time-latency samples for the <event> class.",
    "LATEST",
    "    Return the latest latency samples for all events.",
    "RESET [<event> ...]",
    "    Reset latency data of one or more <event> classes.",
    "    (default: reset all data for all event classes)",
    "HISTOGRAM [COMMAND ...]",
    "    Return a cumulative distribution of latencies in the format of a histogram for the "
    "specified command names.",
    "    If no commands are specified then all histograms are replied.",
    "HELP",
    "    Prints this help.",
)
_SLOWLOG_ARITY: Final = {b"GET": -2, b"LEN": 2, b"RESET": 2, b"HELP": 2}
_SLOWLOG_HELP: Final = (
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Prints this help.",
)


# --- CONFIG SET's parameters ---------------------------------------------------------------


def _set_failed(name: bytes, why: str) -> KvError:
    text = name.decode("utf-8", "replace")
    return KvError(f"ERR CONFIG SET failed (possibly related to argument '{text}') - {why}")


_UNITS: Final = {
    b"": 1, b"b": 1, b"k": 1000, b"kb": 1024, b"m": 1000**2, b"mb": 1024**2, b"g": 1000**3,
    b"gb": 1024**3,
}  # fmt: skip
_MEMORY_VALUE: Final = re.compile(rb"([0-9]+)([a-z]*)")
_POLICIES: Final = (
    b"volatile-lru", b"volatile-lfu", b"volatile-random", b"volatile-ttl", b"allkeys-lru",
    b"allkeys-lfu", b"allkeys-random", b"noeviction",
)  # fmt: skip
_EVENT_CLASSES: Final = frozenset(b"Ag$lshzxeKEtmdn")


def _memory(name: bytes, value: bytes) -> bytes:
    match = _MEMORY_VALUE.fullmatch(value.lower())
    unit = _UNITS.get(match[2]) if match else None
    if match is None or unit is None or int(match[1]) * unit > INT64_MAX:
        raise _set_failed(name, "argument must be a memory value")
    return b"%d" % (int(match[1]) * unit)


def _policy(name: bytes, value: bytes) -> bytes:
    if value.lower() not in _POLICIES:
        raise _set_failed(
            name, "argument(s) must be one of the following: " + ", ".join(
                p.decode() for p in _POLICIES
            ),
        )  # fmt: skip
    return value.lower()


def _timeout(name: bytes, value: bytes) -> bytes:
    try:
        n = parse_int(value)
    except KvError:
        raise _set_failed(name, "argument couldn't be parsed into an integer") from None
    if not 0 <= n <= 2147483647:
        raise _set_failed(name, "argument must be between 0 and 2147483647 inclusive")
    return b"%d" % n


def _events(name: bytes, value: bytes) -> bytes:
    if any(c not in _EVENT_CLASSES for c in value):
        raise _set_failed(name, "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.")
    if value:
        raise _set_failed(
            name, "keyspace notifications are not supported by the dominoes KV service"
        )
    return value


def _any(name: bytes, value: bytes) -> bytes:
    return value


#: The parameters CONFIG SET changes (replicated), each with its value's check.
SETTABLE: Final = {
    b"requirepass": _any,
    b"maxmemory": _memory,
    b"maxmemory-policy": _policy,
    b"timeout": _timeout,
    b"notify-keyspace-events": _events,
    OUTPUT_LIMIT: _any,  # checked by parse_output_limits
}
#: Known parameters CONFIG SET refuses, and why.
_CONFIG_FIXED: Final = {
    **{
        name: f"it is set on the command line: dominoes run ... {option}"
        for name, option in CONFIG_ON_COMMAND_LINE.items()
    },
    b"port": "it is set on the command line: dominoes run ... --port",
    b"bind": "it is set on the command line: dominoes run ... --host",
    b"databases": "can't set immutable config",
}
#: Where ``DOMINOES_KV_REQUIREPASS`` (the password of the default user at start) is read.
REQUIREPASS_ENV: Final = "DOMINOES_KV_REQUIREPASS"


class ServerConfig(Component):
    """The server's replicated settings (CONFIG SET), CLIENT KILL across replicas,
    and the server commands that read the state (TIME, MEMORY).

    ``config`` holds the parameters CONFIG SET changes; ``requirepass`` starts
    from the environment variable ``DOMINOES_KV_REQUIREPASS`` (the same in
    every replica process, which ``dominoes run`` starts with its own
    environment), so a password is enforced from the first connection on.

    CLIENT KILL on a connection of another replica is an ``every`` entry
    (:meth:`kill`): each replica's effect closes its own matching
    connections, and the others tell the one that asked how many, in an
    ``every`` entry of their own (:meth:`killed`), whose effect there adds them
    up (``Server.kill_everywhere``).
    """

    name = "serverconfig"
    transient: ClassVar[tuple[str, ...]] = ("keyspace", "server")

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        password = os.environ.get(REQUIREPASS_ENV, "")
        self.config: dict[bytes, bytes] = {
            b"requirepass": os.fsencode(password),
            b"maxmemory": b"0",
            b"maxmemory-policy": b"noeviction",
            b"timeout": b"0",
            b"notify-keyspace-events": b"",
        }
        #: this replica's server (set by it; None before it exists, as in a replay)
        self.server: Any = None

    @property
    def requirepass(self) -> bytes:
        return self.config[b"requirepass"]

    @update
    def set_config(self, ctx: Context, pairs: list[tuple[bytes, bytes]]) -> Status:
        for name, value in pairs:
            self.config[bytes(name)] = bytes(value)
        return OK

    @update
    def kill(self, ctx: Context, token: int, origin: int, filters: list[Any]) -> None:
        """CLIENT KILL everywhere: each replica closes its matching connections."""
        ctx.effect(self._kill_here, token, origin, filters)

    def _kill_here(self, token: int, origin: int, filters: list[Any]) -> None:
        server = self.server
        if server is not None:
            server.killed_here(token, origin, filters)

    @update
    def killed(self, ctx: Context, token: int, origin: int, replica: int, count: int) -> None:
        """A replica's count of the connections a CLIENT KILL closed there."""
        ctx.effect(self._killed, token, origin, replica, count)

    def _killed(self, token: int, origin: int, replica: int, count: int) -> None:
        server = self.server
        if server is not None and server.index == origin:
            server.kill_report(token, replica, count)

    # --- read commands -----------------------------------------------------------------------

    @command("TIME", 1, flags=("loading", "stale", "fast"))
    def time(self, now: int, args: list[bytes]) -> list[bytes]:
        """The clock of the replica that answers (not the entry's time: a read)."""
        us = time.time_ns() // 1000
        return [b"%d" % (us // 1_000_000), b"%d" % (us % 1_000_000)]

    @command("MEMORY", -2, keys=(2, 2, 1))
    def memory(self, now: int, args: list[bytes]) -> Any:
        sub = args[1].upper()
        n = len(args)
        if sub == b"USAGE":
            if n < 3:
                raise arity_error(b"memory|usage")
            if n not in (3, 5) or (n == 5 and args[3].upper() != b"SAMPLES"):
                raise syntax_error()
            if n == 5:
                parse_int(args[4])
            value = self.keyspace.get(args[2], now)
            if value is None:
                return None
            return _estimate(args[2], value)
        want = _MEMORY_ARITY.get(sub)
        if want is None:
            text = args[1].decode("utf-8", "replace")
            raise KvError(f"ERR unknown subcommand '{text}'. Try MEMORY HELP.")
        if n != want:
            raise arity_error(b"memory|" + sub.lower())
        if sub == b"DOCTOR":
            small = self.keyspace.count_live(now) < 10000
            return Verbatim(_MEMORY_EMPTY if small else _MEMORY_DOCTOR)
        if sub == b"STATS":
            return self._memory_stats(now)
        if sub == b"MALLOC-STATS":
            return b"Stats not supported for the current allocator"
        if sub == b"PURGE":
            return OK
        return [Status(line.encode()) for line in _MEMORY_HELP]

    def _memory_stats(self, now: int) -> dict[bytes, Any]:
        """A few of Redis's fields, from this replica's process (an estimate)."""
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        keys = self.keyspace.count_live(now)
        return {
            b"peak.allocated": rss,
            b"total.allocated": rss,
            b"startup.allocated": 0,
            b"replication.backlog": 0,
            b"clients.slaves": 0,
            b"clients.normal": 0,
            b"aof.buffer": 0,
            b"keys.count": keys,
            b"dataset.bytes": 0,
        }


_MEMORY_ARITY: Final = {b"DOCTOR": 2, b"STATS": 2, b"MALLOC-STATS": 2, b"PURGE": 2, b"HELP": 2}
_MEMORY_DOCTOR: Final = (
    b"Hi Sam, I can't find any memory issue in your instance. "
    b"I can only account for what occurs on this base.\n"
)
_MEMORY_EMPTY: Final = (
    b"Hi Sam, this instance is empty or is using very little memory, my issues detector "
    b"can't be used in these conditions. Please, leave for your mission on Earth and fill it "
    b"with some data. The new Sam and I will be back to our programming as soon as I finished "
    b"rebooting.\n"
)
_MEMORY_HELP: Final = (
    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return memory problems reports.",
    "MALLOC-STATS",
    "    Return internal statistics report from the memory allocator.",
    "PURGE",
    "    Attempt to purge dirty pages for reclamation by the allocator.",
    "STATS",
    "    Return information about the memory usage of the server.",
    "USAGE <key> [SAMPLES <count>]",
    "    Return memory in bytes used by <key> and its value. Nested values are",
    "    sampled up to <count> times (default: 5, 0 means sample all).",
    "HELP",
    "    Prints this help.",
)


def _estimate(key: bytes, value: Any) -> int:
    """MEMORY USAGE: the bytes of the key and its value, as this process holds them."""
    size = sys.getsizeof(key) + sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in value.items())
    elif isinstance(value, ZSet):
        size += sum(sys.getsizeof(m) + 24 for m in value.scores) * 2
    elif not isinstance(value, bytes):
        size += sum(sys.getsizeof(v) for v in value)
    return size


_SET_CONFIG: Final = ServerConfig.set_config.event
_UNBLOCK: Final = Blocking.unblock.event
