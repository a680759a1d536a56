"""Lua scripting: EVAL, EVALSHA, EVAL_RO, EVALSHA_RO and SCRIPT.

A script is one log entry
-------------------------
EVAL and EVALSHA are write commands: the script runs inside its log entry
on **every** replica, so it is atomic everywhere and every replica computes
the same effects.  That needs a deterministic script: ``redis.call('TIME')``
answers the entry's replicated time, ``math.random`` draws from a generator
seeded from ``ctx.random`` for each run, and a runaway script is stopped
after a fixed number of Lua instructions (``DOMINOES_KV_LUA_INSTRUCTIONS``,
default :data:`~._lua.DEFAULT_INSTRUCTION_LIMIT`), never after some wall
time, so every replica stops it at the same instruction.  The writes it made
before it was stopped stay, as in Redis (which never rolls a script back).

EVAL_RO and EVALSHA_RO are read commands: they run on the replica the client
is connected to, against its state, and refuse writes with Redis's error.

``redis.call`` runs a command through the command table's implementation
(the same one a client reaches), after the lazy expiry of the keys it names
(:meth:`Expiry.lazy`, as ahead of every command of an entry).

The script cache (``scripts``: SHA1 -> body, filled by EVAL and SCRIPT LOAD)
is replicated state, in snapshots; each replica's Lua runtime and its
compiled functions are local (``transient``) and rebuilt on demand.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, ClassVar, Final

from dominoes import Component, Context

from ._chance import READS
from ._commands import Bound, bind_table
from ._errors import KvError, parse_int
from ._keyspace import now_ms
from ._lua import DEFAULT_INSTRUCTION_LIMIT, Engine, sha1hex
from ._resp import OK, Status, split_args
from ._table import Spec, command

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._expiry import Expiry

__all__ = ("NOT_IN_SCRIPTS", "RANDOM_READS", "SCRIPT_SUBCOMMANDS", "Scripting", "keys_and_args")

#: Commands a script may not call (Redis 7.0's ``noscript`` commands), whatever
#: component implements them; connection commands other than PING and ECHO
#: cannot be called either.
NOT_IN_SCRIPTS: Final = frozenset(
    b"""EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO SCRIPT FUNCTION MULTI EXEC DISCARD
    WATCH UNWATCH SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE
    BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP WAIT WAITAOF CLIENT
    SAVE BGSAVE BGREWRITEAOF SHUTDOWN MONITOR SYNC PSYNC REPLICAOF SLAVEOF DEBUG AUTH
    HELLO RESET QUIT""".split()
)

#: Read commands that choose at random (with their module's own generator): inside a
#: write script they must choose the same on every replica (see :func:`_seeded`).
RANDOM_READS: Final = frozenset({b"SRANDMEMBER", b"HRANDFIELD", b"ZRANDMEMBER", b"RANDOMKEY"})

_NOSCRIPT: Final = "NOSCRIPT No matching script. Please use EVAL."
_LIMIT_ENV: Final = "DOMINOES_KV_LUA_INSTRUCTIONS"

_SCRIPT_HELP: Final = [
    "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DEBUG (YES|SYNC|NO)",
    "    Set the debug mode for subsequent scripts executed.",
    "EXISTS <sha1> [<sha1> ...]",
    "    Return information about the existence of the scripts in the script cache.",
    "FLUSH [ASYNC|SYNC]",
    "    Flush the Lua scripts cache. Very dangerous on replicas.",
    "    When called without the optional mode argument, the behavior is determined by the",
    "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
    "    * ASYNC: Asynchronously flush the scripts cache.",
    "    * SYNC: Synchronously flush the scripts cache.",
    "KILL",
    "    Kill the currently executing Lua script.",
    "LOAD <script>",
    "    Load a script into the scripts cache without executing it.",
    "HELP",
    "    Prints this help.",
]

#: SCRIPT's subcommands and their arity (Redis 7.0's ``script|...`` entries).
SCRIPT_SUBCOMMANDS: Final = {
    b"DEBUG": 3,
    b"EXISTS": -3,
    b"FLUSH": -2,
    b"HELP": 2,
    b"KILL": 2,
    b"LOAD": 3,
}


def instruction_limit() -> int:
    """The busy-script limit, in Lua instructions (the environment may set it)."""
    text = os.environ.get(_LIMIT_ENV, "")
    try:
        value = int(text) if text else DEFAULT_INSTRUCTION_LIMIT
    except ValueError:
        value = DEFAULT_INSTRUCTION_LIMIT
    return max(1, value)


class Scripting(Component):
    """The script cache and the scripting commands (see the module doc)."""

    name = "scripting"
    transient: ClassVar[tuple[str, ...]] = (
        "table",
        "parts",
        "_bound",
        "_engine",
        "_ctx",
        "_now",
        "_readonly",
        "_expiry",
        "local",
    )

    #: SHA1 (40 lower-case hex digits) -> script body
    scripts: dict[bytes, bytes]

    def __init__(self, table: dict[bytes, Spec], parts: list[Component]) -> None:
        self.table = table
        #: the service's other components (links, not state), for redis.call
        self.parts = parts
        self.scripts = {}
        self._bound: Bound | None = None
        self._engine: Engine | None = None
        #: while a script runs: its entry's context (None in a read-only script) and time
        self._ctx: Context | None = None
        self._now = 0
        #: the running script may not write (EVAL_RO, or its shebang says no-writes)
        self._readonly = False
        #: partitioned KV: ``local(spec, args)``, whether a command's keys are all in
        #: the script's partition (None: every key is)
        self.local: Callable[[Spec, list[bytes]], bool] | None = None

    # --- the runtime -------------------------------------------------------------------------

    @property
    def bound(self) -> Bound:
        if self._bound is None:
            by_name = {c.name: c for c in self.parts}
            by_name[self.name] = self
            self._bound = bind_table(self.table, by_name.__getitem__)
        return self._bound

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self._dispatch, instruction_limit=instruction_limit())
        return self._engine

    @functools.cached_property
    def _expiry(self) -> Expiry | None:
        for part in self.parts:
            if part.name == "expiry":
                return part  # type: ignore[return-value]
        return None

    def _dispatch(self, args: list[bytes]) -> Any:
        """One ``redis.call`` of the running script."""
        name = args[0].upper()
        args[0] = name
        spec = self.table.get(name)
        if name == b"TIME":
            if len(args) != 1:
                raise KvError("ERR Wrong number of args calling Redis command from script")
            now = self._now
            return [b"%d" % (now // 1000), b"%d" % (now % 1000 * 1000)]
        if spec is None:
            if name in NOT_IN_SCRIPTS:  # Redis has it (FCALL, BLPOP, ...), and refuses it here
                raise KvError("ERR This Redis command is not allowed from script")
            raise KvError("ERR Unknown Redis command called from script")
        if not spec.arity_ok(len(args)):
            raise KvError("ERR Wrong number of args calling Redis command from script")
        impl = self.bound.get(name)
        if impl is None or name in NOT_IN_SCRIPTS or "noscript" in spec.flags or spec.client_id:
            raise KvError("ERR This Redis command is not allowed from script")
        fn, write, _ = impl
        if self.local is not None and spec.first and not self.local(spec, args):
            raise KvError("ERR Script attempted to access a non local key in a cluster node")
        ctx = self._ctx
        if write and self._readonly:
            raise KvError("ERR Write commands are not allowed from read-only scripts.")
        if ctx is None:
            return fn(self._now, args)
        expiry = self._expiry
        if expiry is not None and spec.first:
            expiry.lazy(ctx, [args])
        if write:
            return fn(ctx, args)
        if name in RANDOM_READS:
            return _seeded(ctx.random.getrandbits(64), fn, self._now, args)
        return fn(self._now, args)

    def _compile(self, sha: bytes, body: bytes) -> tuple[Any, frozenset[str]]:
        """The compiled script and its shebang's flags (KvError: it does not compile)."""
        flags, code = _shebang(body)
        return self.engine.compile(sha, code), flags

    def _run(
        self, ctx: Context | None, now: int, sha: bytes, body: bytes, args: list[bytes]
    ) -> Any:
        keys, argv = keys_and_args(args)
        fn, flags = self._compile(sha, body)
        return self.execute(ctx, now, fn, sha, flags, keys, argv)

    def execute(
        self,
        ctx: Context | None,
        now: int,
        fn: Any,
        label: bytes,
        flags: frozenset[str],
        keys: list[bytes],
        argv: list[bytes],
        *,
        function: bool = False,
    ) -> Any:
        """Run the compiled script or library function ``fn`` (``label`` names it in
        errors): in a write's entry with ``ctx``, or as a read (``ctx`` None, the ``*_RO``
        commands) where only a ``no-writes`` one may run."""
        if ctx is None and flags is not _COMPAT and "no-writes" not in flags:
            raise KvError("ERR Can not execute a script with write flag using *_ro command.")
        seed = ctx.random.getrandbits(64) if ctx is not None else READS.getrandbits(64)
        self._ctx, self._now = ctx, now
        self._readonly = ctx is None or "no-writes" in flags
        try:
            reply = self.engine.run(fn, label, keys, argv, seed, function=function)
        finally:
            self._ctx = None
        if isinstance(reply, KvError):
            raise reply
        return reply

    def ignores_oom(self, args: list[bytes]) -> bool:
        """Whether an EVAL or EVALSHA may run over maxmemory: its shebang says
        ``no-writes`` or ``allow-oom``.  (A script without a shebang is refused whole; Redis
        refuses it only at its first write that may grow the data.)"""
        if len(args) < 2:
            return False
        body = self.scripts.get(args[1].lower()) if args[0] == b"EVALSHA" else args[1]
        if body is None:
            return True  # NOSCRIPT is the answer
        try:
            flags, _ = _shebang(body)
        except KvError:
            return True  # the script's error is the answer
        return "no-writes" in flags or "allow-oom" in flags

    # --- EVAL and its kin ----------------------------------------------------------------------

    @command("EVAL", -3, write=True, flags=("noscript", "broadcast", "stale"))
    def eval(self, ctx: Context, args: list[bytes]) -> Any:
        keys_and_args(args)  # numkeys is checked before the script
        body = args[1]
        sha = sha1hex(body)
        self._compile(sha, body)  # a script that does not compile is not cached
        self.scripts[sha] = body
        return self._run(ctx, now_ms(ctx), sha, body, args)

    @command("EVALSHA", -3, write=True, flags=("noscript", "broadcast", "stale"))
    def evalsha(self, ctx: Context, args: list[bytes]) -> Any:
        sha, body = self._cached(args)
        return self._run(ctx, now_ms(ctx), sha, body, args)

    def _cached(self, args: list[bytes]) -> tuple[bytes, bytes]:
        """EVALSHA's script, in Redis's order: a SHA that is not 40 characters long is
        NOSCRIPT at once, then numkeys is checked, then the cache."""
        if len(args[1]) != 40:
            raise KvError(_NOSCRIPT)
        keys_and_args(args)
        sha = args[1].lower()
        body = self.scripts.get(sha)
        if body is None:
            raise KvError(_NOSCRIPT)
        return sha, body

    @command("EVAL_RO", -3, flags=("noscript", "stale"))
    def eval_ro(self, now: int, args: list[bytes]) -> Any:
        keys_and_args(args)
        body = args[1]
        return self._run(None, now, sha1hex(body), body, args)

    @command("EVALSHA_RO", -3, flags=("noscript", "stale"))
    def evalsha_ro(self, now: int, args: list[bytes]) -> Any:
        sha, body = self._cached(args)
        return self._run(None, now, sha, body, args)

    # --- SCRIPT ------------------------------------------------------------------------------

    @command("SCRIPT", -2, write=True, flags=("noscript",))
    def script(self, ctx: Context, args: list[bytes]) -> Any:
        sub = args[1].upper()
        arity = SCRIPT_SUBCOMMANDS.get(sub)
        if arity is None:
            text = args[1].decode("utf-8", "replace")
            raise KvError(f"ERR unknown subcommand '{text}'. Try SCRIPT HELP.")
        n = len(args)
        if (arity >= 0 and n != arity) or n < -arity:
            raise KvError(
                f"ERR wrong number of arguments for 'script|{sub.decode().lower()}' command"
            )
        if sub == b"LOAD":
            body = args[2]
            sha = sha1hex(body)
            self._compile(sha, body)
            self.scripts[sha] = body
            return sha
        if sub == b"EXISTS":
            return [int(a.lower() in self.scripts) for a in args[2:]]
        if sub == b"FLUSH":
            if n > 3 or (n == 3 and args[2].upper() not in (b"SYNC", b"ASYNC")):
                raise KvError("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
            self.scripts.clear()
            if self._engine is not None:
                self._engine.functions.clear()
            return OK
        if sub == b"KILL":
            # A script runs inside one log entry: nothing else runs on a replica meanwhile,
            # so no script is ever running when SCRIPT KILL is applied.
            raise KvError("NOTBUSY No scripts in execution right now.")
        if sub == b"DEBUG":
            mode = args[2].upper()
            if mode not in (b"YES", b"SYNC", b"NO"):
                raise KvError("ERR Use SCRIPT DEBUG YES/SYNC/NO")
            if mode == b"NO":
                return OK
            raise KvError(
                "ERR SCRIPT DEBUG is not supported: a script runs inside a log entry on "
                "every replica, where it cannot stop for a debugger"
            )
        return [Status(line.encode()) for line in _SCRIPT_HELP]  # HELP

    # --- snapshots -----------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.scripts = {bytes(k): bytes(v) for k, v in state["scripts"].items()}


#: The flags of a script without a shebang (Redis's "eval compatibility mode").
_COMPAT: Final = frozenset({"compat"})
_SHEBANG_FLAGS: Final = frozenset(
    {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
)


def _shebang(body: bytes) -> tuple[frozenset[str], bytes]:
    """A script's flags (``#!lua flags=no-writes,...``) and the Lua code to compile.

    The shebang line becomes a comment, so line numbers stay those of the body.
    """
    if not body.startswith(b"#!"):
        return _COMPAT, body
    end = body.find(b"\n")
    if end < 0:
        raise KvError("ERR Invalid script shebang")
    parts = split_args(body[:end])
    if not parts:
        raise KvError("ERR Invalid engine in script shebang")
    if parts[0] != b"#!lua":
        raise KvError(f"ERR Unexpected engine in script shebang: {_text(parts[0])}")
    flags: set[str] = set()
    for part in parts[1:]:
        if not part.startswith(b"flags="):
            raise KvError(f"ERR Unknown lua shebang option: {_text(part)}")
        for flag in part[6:].split(b","):
            name = _text(flag)
            if name not in _SHEBANG_FLAGS:
                if not flag and part == b"flags=":
                    continue
                raise KvError(f"ERR Unexpected flag in script shebang: {name}")
            flags.add(name)
    return frozenset(flags), b"--" + body[2:]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def keys_and_args(args: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """EVAL's KEYS and ARGV, with Redis's checks of numkeys."""
    numkeys = parse_int(args[2])
    if numkeys > len(args) - 3:
        raise KvError("ERR Number of keys can't be greater than number of args")
    if numkeys < 0:
        raise KvError("ERR Number of keys can't be negative")
    return args[3 : 3 + numkeys], args[3 + numkeys :]


def _seeded(seed: int, fn: Any, now: int, args: list[bytes]) -> Any:
    """Run a random read with the reads' generator (``_chance.READS``) seeded from
    ``seed``, then put it back.

    Inside a write script the choice of SRANDMEMBER, HRANDFIELD, ZRANDMEMBER or
    RANDOMKEY feeds the script's writes, so every replica must make the same one.
    """
    state = READS.getstate()
    READS.seed(seed)
    try:
        return fn(now, args)
    finally:
        READS.setstate(state)
