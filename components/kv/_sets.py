"""Sets: SADD, SREM, SMEMBERS, SISMEMBER, SMISMEMBER, SCARD."""

from __future__ import annotations

from typing import ClassVar

from dominoes import Component, Context

from ._errors import wrong_type
from ._keyspace import Keyspace, now_ms
from ._table import command

__all__ = ("Sets",)


class Sets(Component):
    """Set values (``set[bytes]``) in the keyspace."""

    name = "sets"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _set(self, key: bytes, now: int) -> set[bytes] | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not set:
            raise wrong_type()
        return value

    @command("SMEMBERS", 2, keys=(1, 1, 1))
    def smembers(self, now: int, args: list[bytes]) -> set[bytes]:
        return set(self._set(args[1], now) or ())

    @command("SISMEMBER", 3, keys=(1, 1, 1), flags=("fast",))
    def sismember(self, now: int, args: list[bytes]) -> int:
        return int(args[2] in (self._set(args[1], now) or ()))

    @command("SMISMEMBER", -3, keys=(1, 1, 1), flags=("fast",))
    def smismember(self, now: int, args: list[bytes]) -> list[int]:
        members = self._set(args[1], now) or set()
        return [int(m in members) for m in args[2:]]

    @command("SCARD", 2, keys=(1, 1, 1), flags=("fast",))
    def scard(self, now: int, args: list[bytes]) -> int:
        return len(self._set(args[1], now) or ())

    @command("SADD", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def sadd(self, ctx: Context, args: list[bytes]) -> int:
        key = args[1]
        members = self._set(key, now_ms(ctx))
        if members is None:
            members = set()
            self.keyspace.put(key, members)
        before = len(members)
        members.update(args[2:])
        added = len(members) - before
        if added:
            self.keyspace.bump(key)
        return added

    @command("SREM", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def srem(self, ctx: Context, args: list[bytes]) -> int:
        key = args[1]
        members = self._set(key, now_ms(ctx))
        if members is None:
            return 0
        before = len(members)
        members.difference_update(args[2:])
        removed = before - len(members)
        if not members:
            self.keyspace.remove(key)
        elif removed:
            self.keyspace.bump(key)
        return removed
