"""The connection commands: the ``kind=CONN`` commands a connection answers itself.

PING, ECHO, QUIT, SELECT, AUTH, HELLO, RESET, CLIENT, COMMAND, CONFIG, INFO,
and the transaction commands MULTI, DISCARD and EXEC (SAVE, BGSAVE and
LASTSAVE are in ``_persistence``): each changes the
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

import time
from typing import TYPE_CHECKING, Any, Final

from ._commands import IN_TRANSACTION, Commands
from ._entries import Entry
from ._errors import KvError, arity_error, parse_int
from ._glob import glob_matcher
from ._limits import OUTPUT_LIMIT, config_failed, parse_output_limits
from ._persistence import CONFIG_ON_COMMAND_LINE
from ._resp import OK, PONG, QUEUED, Status, Verbatim
from ._table import CONN, Spec, command

if TYPE_CHECKING:
    from collections import deque

    from dominoes import Replica

    from ._server import Server

__all__ = ("REDIS_VERSION", "ConnectionCommands")

#: The Redis version the server claims (clients check it for features).
REDIS_VERSION: Final = "7.0.0"

#: The command events by name (a name skips resolving the descriptor on every append).
_EXEC: Final = Commands.exec.event
_SET_LIMITS: Final = Commands.set_output_limits.event
_TX_CONTROL: Final = frozenset({b"EXEC", b"DISCARD", b"MULTI", b"QUIT", b"RESET"})
_SUBSCRIBED_OK: Final = frozenset(
    {b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"}
)
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
        batch: list[list[bytes]]
        pending: deque[bytes | Entry]
        closing: bool
        last_command: bytes

        def _reply(self, value: Any) -> None: ...
        def _refuse(self, error: KvError) -> None: ...
        def _state_changed(self) -> None: ...
        def _held(self) -> int: ...
        def _flush_batch(self) -> None: ...
        def _submit(self, entry: Entry, event: Any, args: tuple[Any, ...], mode: str) -> None: ...

    # --- MULTI and pub/sub state -----------------------------------------------------------

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
                **self.server.saves.config(),  # appendonly, appendfsync, dir, save
                b"databases": b"1",
                b"maxmemory": b"0",
                OUTPUT_LIMIT: self.server.limits_text(),
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
            option = CONFIG_ON_COMMAND_LINE.get(name)
            if option is not None:
                self._reply(
                    KvError(
                        f"ERR CONFIG SET failed (possibly related to argument "
                        f"'{name.decode()}') - it is set on the command line: "
                        f"dominoes run ... {option}"
                    )
                )
                return
            if name != OUTPUT_LIMIT:
                text = name.decode("utf-8", "replace")
                self._reply(
                    KvError(
                        f"ERR CONFIG SET '{text}' is not supported by the dominoes KV service "
                        "(only client-output-buffer-limit is)"
                    )
                )
                return
        if len(names) > 1:
            self._reply(config_failed("duplicate parameter"))
            return
        normal, pubsub = self.server.limits(False), self.server.limits(True)
        limits = [*normal.values(), *pubsub.values()]
        try:
            parse_output_limits(pairs[1], limits)
        except KvError as exc:
            self._reply(exc)
            return
        if self.batch:
            self._flush_batch()
        entry = Entry(self.resp3, transaction=True)
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
        entry = Entry(self.resp3, transaction=True)
        self.pending.append(entry)
        self._submit(entry, _EXEC, (commands, client), "every" if every else "affinity")

    def _batch_silently(self, args: list[bytes]) -> None:
        """Append an internal command whose reply the client must not see."""
        if self.batch:
            self._flush_batch()
        self.batch.append(args)
        self._flush_batch()
        entry = self.pending[-1]
        assert isinstance(entry, Entry)
        entry.silent = True


def _unknown_subcommand(text: str) -> KvError:
    return KvError(f"ERR unknown subcommand or wrong number of arguments for '{text}'")


_BAD_NAME: Final = KvError(
    "ERR Client names cannot contain spaces, newlines or special characters."
)


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)
