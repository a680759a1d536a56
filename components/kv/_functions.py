"""Redis functions: FUNCTION (LOAD, DELETE, FLUSH, LIST, STATS, DUMP, RESTORE, KILL, HELP),
FCALL and FCALL_RO.

A library is replicated state
-----------------------------
``libraries`` (library name -> its code, shebang included) is the replicated
state, in snapshots.  FUNCTION LOAD is a write: applied on every replica, each
runs the library's code in its own Lua runtime (the scripting component's,
:attr:`Scripting.engine`) to collect what it registers with
``redis.register_function``.  The code sees only Redis's library API then
(``redis.register_function``, ``redis.log``, the ``LOG_*`` and version
constants), so loading is deterministic and every replica registers the same
functions.  What each replica compiled (the Lua functions, their flags and
descriptions) is local (``transient``) and rebuilt from ``libraries`` after a
snapshot is restored.

FCALL is a write, like EVAL: the function runs inside its log entry on every
replica (its ``math.random`` seeded from ``ctx.random``, its runaway stopped by
the same instruction limit).  FCALL_RO is a read on the client's replica, and
runs only functions registered with the ``no-writes`` flag.

FUNCTION DUMP's payload is this service's own (a version byte, the libraries'
code in msgpack, a checksum), as for DUMP of a key: it restores here, not into
a redis-server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

import msgspec

from dominoes import Component, Context

from ._errors import KvError
from ._glob import stringmatch
from ._keys import seal, unseal
from ._keyspace import now_ms
from ._lua import LibraryFunction
from ._resp import OK, SetOf, Status, split_args
from ._scripting import keys_and_args
from ._table import command

if TYPE_CHECKING:
    from ._scripting import Scripting

__all__ = ("FUNCTION_SUBCOMMANDS", "Functions")

_OOM_FLAGS: Final = (b"no-writes", b"allow-oom")
#: FUNCTION DUMP's payloads start with this byte (DUMP's of keys with another).
_DUMP_TAG: Final = b"F"
_BAD_PAYLOAD: Final = "ERR DUMP payload version or checksum are wrong"
_BAD_NAME: Final = (
    "ERR Library names can only contain letters, numbers, or underscores(_) and must be at "
    "least one character long"
)

#: FUNCTION's subcommands and their arity (Redis 7.0's ``function|...`` entries).
FUNCTION_SUBCOMMANDS: Final = {
    b"DELETE": 3,
    b"DUMP": 2,
    b"FLUSH": -2,
    b"HELP": 2,
    b"KILL": 2,
    b"LIST": -2,
    b"LOAD": -3,
    b"RESTORE": -3,
    b"STATS": 2,
}

_HELP: Final = [
    "FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "LOAD [REPLACE] <FUNCTION CODE>",
    "    Create a new library with the given library name and code.",
    "DELETE <LIBRARY NAME>",
    "    Delete the given library.",
    "LIST [LIBRARYNAME PATTERN] [WITHCODE]",
    "    Return general information on all the libraries:",
    "    * Library name",
    "    * The engine used to run the Library",
    "    * Library description",
    "    * Functions list",
    "    * Library code (if WITHCODE is given)",
    "    It also possible to get only function that matches a pattern using LIBRARYNAME argument.",
    "STATS",
    "    Return information about the current function running:",
    "    * Function name",
    "    * Command used to run the function",
    "    * Duration in MS that the function is running",
    "    If no function is running, return nil",
    "    In addition, returns a list of available engines.",
    "KILL",
    "    Kill the current running function.",
    "FLUSH [ASYNC|SYNC]",
    "    Delete all the libraries.",
    "    When called without the optional mode argument, the behavior is determined by the",
    "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
    "    * ASYNC: Asynchronously flush the libraries.",
    "    * SYNC: Synchronously flush the libraries.",
    "DUMP",
    "    Return a serialized payload representing the current libraries, can be restored "
    "using FUNCTION RESTORE command",
    "RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]",
    "    Restore the libraries represented by the given payload, it is possible to give a "
    "restore policy to",
    "    control how to handle existing libraries (default APPEND):",
    "    * FLUSH: delete all existing libraries.",
    "    * APPEND: appends the restored libraries to the existing libraries. On collision, abort.",
    "    * REPLACE: appends the restored libraries to the existing libraries, On collision, "
    "replace the old",
    "      libraries with the new libraries (notice that even on this option there is a "
    "chance of failure",
    "      in case of functions name collision with another library).",
    "HELP",
    "    Prints this help.",
]


class Library(NamedTuple):
    """One loaded library, as this replica compiled it."""

    name: bytes
    code: bytes
    functions: dict[bytes, LibraryFunction]


def _name_ok(name: bytes) -> bool:
    """Letters, digits and underscores, at least one (Redis's functionsVerifyName)."""
    return bool(name) and name.replace(b"_", b"a").isalnum() and name.isascii()


def _metadata(code: bytes) -> tuple[bytes, bytes, bytes]:
    """A library's (engine, name, code after its shebang line), with Redis's errors."""
    if not code.startswith(b"#!"):
        raise KvError("ERR Missing library metadata")
    end = code.find(b"\n")
    if end < 0:
        raise KvError("ERR Invalid library metadata")
    parts = split_args(code[:end])
    if not parts:
        raise KvError("ERR Invalid library metadata")
    engine, name = parts[0][2:], None
    for part in parts[1:]:
        if part[:5].lower() == b"name=":
            if name is not None:
                raise KvError("ERR Invalid metadata value, name argument was given multiple times")
            name = part[5:]
            continue
        raise KvError(f"ERR Invalid metadata value given: {_text(part)}")
    if name is None:
        raise KvError("ERR Library name was not given")
    return engine, name, code[end:]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _syntax(sub: bytes) -> str:
    return (
        f"ERR unknown subcommand or wrong number of arguments for '{_text(sub)}'. "
        "Try FUNCTION HELP."
    )


class Functions(Component):
    """The function libraries and FUNCTION / FCALL (see the module doc)."""

    name = "functions"
    transient: ClassVar[tuple[str, ...]] = ("scripting", "_loaded", "_index")

    #: library name -> its code (the shebang line included)
    libraries: dict[bytes, bytes]

    def __init__(self, scripting: Scripting) -> None:
        #: the scripting component: its Lua runtime and its redis.call (a link, not state)
        self.scripting = scripting
        self.libraries = {}
        #: this replica's compiled libraries (None: to rebuild from ``libraries``)
        self._loaded: dict[bytes, Library] | None = {}
        #: function name -> the function, over every compiled library
        self._index: dict[bytes, LibraryFunction] = {}

    # --- the compiled libraries ----------------------------------------------------------------

    @property
    def loaded(self) -> dict[bytes, Library]:
        if self._loaded is None:
            loaded: dict[bytes, Library] = {}
            for name, code in self.libraries.items():
                try:
                    loaded[name] = self._compile(name, code)
                except KvError:  # it loaded once; a lower busy-script limit may refuse it now
                    continue
            self._compiled(loaded)  # ``libraries``, the replicated state, stays as it is
            return loaded
        return self._loaded

    def _compile(self, name: bytes, code: bytes) -> Library:
        """Run a library's code; its functions (KvError: Redis's refusal)."""
        engine, _, body = _metadata(code)
        if engine.lower() != b"lua":
            raise KvError(f"ERR Engine '{_text(engine)}' not found")
        found = self.scripting.engine.load_library(body)
        if not found:
            raise KvError("ERR No functions registered")
        return Library(name, code, {f.name: f for f in found})

    def _find(self, name: bytes) -> LibraryFunction | None:
        if self._loaded is None:
            self.loaded  # noqa: B018 - compiles the libraries and their index
        return self._index.get(name)

    def _create(self, code: bytes, replace: bool, into: dict[bytes, Library]) -> Library:
        """Load ``code`` as a library into ``into`` (Redis's functionsCreateWithLibraryCtx)."""
        engine, name, _ = _metadata(code)
        if not _name_ok(name):
            raise KvError(_BAD_NAME)
        if engine.lower() != b"lua":
            raise KvError(f"ERR Engine '{_text(engine)}' not found")
        if name in into and not replace:
            raise KvError(f"ERR Library '{_text(name)}' already exists")
        library = self._compile(name, code)
        for fname in library.functions:
            for other in into.values():
                if other.name != name and fname in other.functions:
                    raise KvError(f"ERR Function {_text(fname)} already exists")
        into[name] = library
        return library

    def _install(self, loaded: dict[bytes, Library]) -> None:
        """The libraries after a FUNCTION command: replicated state and this replica's."""
        self.libraries = {name: lib.code for name, lib in loaded.items()}
        self._compiled(loaded)

    def _compiled(self, loaded: dict[bytes, Library]) -> None:
        self._loaded = loaded
        self._index = {f: lib.functions[f] for lib in loaded.values() for f in lib.functions}

    # --- FCALL -----------------------------------------------------------------------------------

    def _call(self, ctx: Context | None, now: int, args: list[bytes]) -> Any:
        function = self._find(args[1])
        if function is None:
            raise KvError("ERR Function not found")
        try:
            keys, argv = keys_and_args(args)
        except KvError as exc:
            if str(exc).startswith("ERR Number of keys"):
                raise
            raise KvError("ERR Bad number of keys provided") from None
        flags = frozenset(f.decode() for f in function.flags)
        return self.scripting.execute(
            ctx, now, function.callback, function.name, flags, keys, argv, function=True
        )

    def ignores_oom(self, args: list[bytes]) -> bool:
        """Whether an FCALL may run over maxmemory: its function is ``no-writes`` or
        ``allow-oom`` (or is missing, so that FCALL answers that, as Redis does)."""
        function = self._find(args[1]) if len(args) > 1 else None
        return function is None or any(f in _OOM_FLAGS for f in function.flags)

    @command("FCALL", -3, write=True, flags=("noscript", "broadcast", "stale"))
    def fcall(self, ctx: Context, args: list[bytes]) -> Any:
        return self._call(ctx, now_ms(ctx), args)

    @command("FCALL_RO", -3, flags=("noscript", "stale"))
    def fcall_ro(self, now: int, args: list[bytes]) -> Any:
        return self._call(None, now, args)

    # --- FUNCTION ----------------------------------------------------------------------------

    @command("FUNCTION", -2, write=True, flags=("noscript",))
    def function(self, ctx: Context, args: list[bytes]) -> Any:
        sub = args[1].upper()
        arity = FUNCTION_SUBCOMMANDS.get(sub)
        if arity is None:
            raise KvError(f"ERR unknown subcommand '{_text(args[1])}'. Try FUNCTION HELP.")
        n = len(args)
        if (arity >= 0 and n != arity) or n < -arity:
            raise KvError(
                f"ERR wrong number of arguments for 'function|{sub.decode().lower()}' command"
            )
        handler = getattr(self, "_" + sub.decode().lower())
        return handler(args)

    def _load(self, args: list[bytes]) -> bytes:
        replace = False
        for option in args[2:-1]:
            if option.upper() != b"REPLACE":
                raise KvError(f"ERR Unknown option given: {_text(option)}")
            replace = True
        loaded = dict(self.loaded)
        library = self._create(args[-1], replace, loaded)
        self._install(loaded)
        return library.name

    def _delete(self, args: list[bytes]) -> Status:
        loaded = self.loaded
        if args[2] not in loaded:
            raise KvError("ERR Library not found")
        del loaded[args[2]]
        self._install(loaded)
        return OK

    def _flush(self, args: list[bytes]) -> Status:
        if len(args) > 3:
            raise KvError(_syntax(args[1]))
        if len(args) == 3 and args[2].upper() not in (b"SYNC", b"ASYNC"):
            raise KvError("ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
        self._install({})
        return OK

    def _list(self, args: list[bytes]) -> list[dict[bytes, Any]]:
        with_code, pattern = False, None
        i = 2
        while i < len(args):
            arg = args[i]
            if not with_code and arg.lower() == b"withcode":
                with_code = True
            elif pattern is None and arg.lower() == b"libraryname":
                if i >= len(args) - 1:
                    raise KvError("ERR library name argument was not given")
                i += 1
                pattern = args[i].lower()
            else:
                raise KvError(f"ERR Unknown argument {_text(arg)}")
            i += 1
        out: list[dict[bytes, Any]] = []
        for name, library in sorted(self.loaded.items()):
            if pattern is not None and not _matches(pattern, name.lower()):
                continue
            entry: dict[bytes, Any] = {
                b"library_name": name,
                b"engine": b"LUA",
                b"functions": [
                    {
                        b"name": f.name,
                        b"description": f.description,
                        b"flags": SetOf(Status(flag) for flag in f.flags),
                    }
                    for f in library.functions.values()
                ],
            }
            if with_code:
                entry[b"library_code"] = library.code
            out.append(entry)
        return out

    def _stats(self, args: list[bytes]) -> dict[bytes, Any]:
        loaded = self.loaded
        count = sum(len(lib.functions) for lib in loaded.values())
        return {
            b"running_script": None,
            b"engines": {b"LUA": {b"libraries_count": len(loaded), b"functions_count": count}},
        }

    def _dump(self, args: list[bytes]) -> bytes:
        codes = [self.libraries[name] for name in sorted(self.libraries)]
        return seal(_DUMP_TAG + msgspec.msgpack.encode(codes))

    def _restore(self, args: list[bytes]) -> Status:
        if len(args) > 4:
            raise KvError(_syntax(args[1]))
        policy = args[3].upper() if len(args) == 4 else b"APPEND"
        if policy not in (b"APPEND", b"REPLACE", b"FLUSH"):
            raise KvError(
                "ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE."
            )
        body = unseal(args[2])
        if body is None or not body.startswith(_DUMP_TAG):
            raise KvError(_BAD_PAYLOAD)
        try:
            codes = msgspec.msgpack.decode(body[1:], type=list[bytes])
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise KvError(_BAD_PAYLOAD) from None
        incoming: dict[bytes, Library] = {}
        for code in codes:
            self._create(code, False, incoming)
        if policy == b"FLUSH":
            self._install(incoming)
            return OK
        joined = dict(self.loaded)
        for name in incoming:
            if name in joined and policy == b"APPEND":
                raise KvError(f"ERR Library {_text(name)} already exists")
        for name in incoming:
            joined.pop(name, None)
        for library in incoming.values():
            for fname in library.functions:
                for other in joined.values():
                    if fname in other.functions:
                        raise KvError(f"ERR Function {_text(fname)} already exists")
        joined.update(incoming)
        self._install(joined)
        return OK

    def _kill(self, args: list[bytes]) -> Any:
        # A function runs inside one log entry: nothing else runs meanwhile on a replica.
        raise KvError("NOTBUSY No scripts in execution right now.")

    def _help(self, args: list[bytes]) -> list[Status]:
        return [Status(line.encode()) for line in _HELP]

    # --- snapshots -----------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.libraries = {bytes(k): bytes(v) for k, v in state["libraries"].items()}
        self._loaded = None


def _matches(pattern: bytes, name: bytes) -> bool:
    """FUNCTION LIST LIBRARYNAME's case-insensitive glob (both sides are lower-cased)."""
    return name != b"" and stringmatch(pattern, name)
