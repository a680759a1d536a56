"""The command table: each Redis command's name, arity, kind, keys and implementation.

Components declare their commands with :func:`command` on plain methods::

    @command("GET", 2, keys=(1, 1, 1))
    def get(self, now: int, args: list[bytes]) -> bytes | None: ...

    @command("SET", -3, write=True, keys=(1, 1, 1))
    def set(self, ctx: Context, args: list[bytes]) -> Any: ...

A *read* command is called as ``method(now_ms, args)`` and must not change
anything: it runs on the replica that received it, against its local state,
with the local clock, or, pipelined behind writes, inside a log entry on the
entry's owner with the entry's time.  A *write* command is called as
``method(ctx, args)`` inside a log entry, on every replica.  Connection
commands (``kind=CONN``) are methods of the connection itself.

``arity`` follows Redis: n means exactly n words (the name included), -n at
least n.  ``keys=(first, last, step)`` says where the keys are (``last`` -1 is
the last argument), like Redis's COMMAND output; the expiry micro-protocol
reads it to expire exactly the keys a command touches before it runs.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

__all__ = ("CONN", "READ", "WRITE", "Kind", "Spec", "command", "commands_of", "key_args")

F = TypeVar("F", bound=Callable[..., Any])


class Kind(enum.IntEnum):
    READ = 0
    WRITE = 1
    CONN = 2


READ: Final = Kind.READ
WRITE: Final = Kind.WRITE
CONN: Final = Kind.CONN

_ATTR: Final = "__kv_command__"


class Spec:
    """One command's row of the table."""

    __slots__ = (
        "arity",
        "blocking",
        "broadcast",
        "client_id",
        "component",
        "first",
        "flags",
        "kind",
        "last",
        "max_words",
        "may_block",
        "method",
        "min_words",
        "name",
        "no_multi",
        "run",
        "step",
    )

    def __init__(
        self,
        name: bytes,
        arity: int,
        kind: Kind,
        keys: tuple[int, int, int],
        flags: frozenset[str],
        component: str,
        method: str,
        run: str = "",
    ) -> None:
        self.name = name
        self.arity = arity
        #: how many words (the name included) the arity allows
        self.min_words = abs(arity)
        self.max_words = arity if arity >= 0 else sys.maxsize
        self.kind = kind
        self.first, self.last, self.step = keys
        self.flags = flags
        #: the component holding the implementation ("" for connection commands)
        self.component = component
        self.method = method
        #: the method applying a run of consecutive such commands at once ("": none)
        self.run = run
        #: its entry must be applied with effects on every replica (PUBLISH)
        self.broadcast = "broadcast" in flags
        #: the connection inserts its client id as the first argument (pub/sub)
        self.client_id = "client-id" in flags
        #: refused inside MULTI
        self.no_multi = "no-multi" in flags
        #: may block the client (BLPOP, ...): its reply may come from a later entry
        self.blocking = "blocking" in flags
        #: blocks when an option says so (XREAD ... BLOCK ms): the connection decides
        self.may_block = "may-block" in flags

    def arity_ok(self, n: int) -> bool:
        return self.min_words <= n <= self.max_words

    def keys(self, args: list[bytes]) -> list[bytes]:
        """The keys ``args`` names (empty for commands without keys)."""
        first = self.first
        if not first:
            return []
        last = self.last if self.last >= 0 else len(args) + self.last
        return args[first : last + 1 : self.step]

    def user_keys(self, args: list[bytes]) -> list[bytes]:
        """The keys of ``args`` as the client wrote them (before a client id is put in)."""
        return self.keys([args[0], b"", *args[1:]] if self.client_id else args)

    def info(self) -> list[Any]:
        """Its ``COMMAND INFO`` row (Redis 7 layout), as the client sees the command."""
        flags = sorted(self.flags & {"fast", "pubsub", "noscript", "loading", "stale"})
        flags.insert(0, "write" if self.kind is WRITE else "readonly")
        shift = 1 if self.client_id and self.first else 0
        return [
            self.name.lower(),
            self.arity,
            {f.encode() for f in flags},
            self.first - shift,
            self.last - shift if self.last > 0 else self.last,
            self.step,
            set(),
            [],
            [],
            [],
        ]

    def __repr__(self) -> str:
        return f"<Spec {self.name.decode()} {self.kind.name.lower()} arity={self.arity}>"


def command(
    name: str,
    arity: int,
    *,
    write: bool = False,
    kind: Kind | None = None,
    keys: tuple[int, int, int] = (0, 0, 0),
    flags: Iterable[str] = (),
    run: str = "",
) -> Callable[[F], F]:
    """Declare the decorated method as the implementation of command ``name``.

    ``run`` names a method of the same component that applies a run of
    consecutive ``name`` commands at once, ``run(ctx, commands) -> replies``:
    a write may offer one when a tight loop beats a call per command.
    """

    def mark(fn: F) -> F:
        k = kind if kind is not None else (WRITE if write else READ)
        declared = list(getattr(fn, _ATTR, ()))
        declared.append((name.upper().encode(), arity, k, keys, frozenset(flags), run))
        setattr(fn, _ATTR, declared)
        return fn

    return mark


def commands_of(cls: type, component: str) -> list[Spec]:
    """The commands declared on ``cls`` (and its bases), for the component ``component``."""
    specs: list[Spec] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            for name, arity, kind, keys, flags, run in getattr(value, _ATTR, ()):
                specs.append(Spec(name, arity, kind, keys, flags, component, attr, run))
    return specs


def key_args(table: dict[bytes, Spec], commands: list[list[bytes]]) -> Iterable[bytes]:
    """Every key the commands name, in order (with repetitions)."""
    for args in commands:
        spec = table.get(args[0])
        if spec is not None and spec.first:
            yield from spec.keys(args)
