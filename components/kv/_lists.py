"""Lists: LPUSH, RPUSH, LPOP, RPOP (with count), LLEN, LRANGE, LINDEX, ..."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, ClassVar

from dominoes import Component, Context

from ._errors import KvError, parse_int, wrong_type
from ._keyspace import Keyspace, now_ms
from ._resp import NULL_ARRAY, OK
from ._table import command

__all__ = ("Lists",)


class Lists(Component):
    """List values (``collections.deque``) in the keyspace."""

    name = "lists"
    transient: ClassVar[tuple[str, ...]] = ("keyspace",)

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace

    def _list(self, key: bytes, now: int) -> deque[bytes] | None:
        value = self.keyspace.get(key, now)
        if value is not None and type(value) is not deque:
            raise wrong_type()
        return value

    # --- reads -----------------------------------------------------------------------------

    @command("LLEN", 2, keys=(1, 1, 1), flags=("fast",))
    def llen(self, now: int, args: list[bytes]) -> int:
        return len(self._list(args[1], now) or ())

    @command("LRANGE", 4, keys=(1, 1, 1))
    def lrange(self, now: int, args: list[bytes]) -> list[bytes]:
        start, stop = parse_int(args[2]), parse_int(args[3])
        items = self._list(args[1], now)
        if not items:
            return []
        n = len(items)
        if start < 0:
            start = max(0, n + start)
        if stop < 0:
            stop += n
        stop = min(stop, n - 1)
        if start > stop:
            return []
        if start > n // 2:  # walk from the nearer end
            tail = list(islice(reversed(items), n - 1 - stop, n - start))
            tail.reverse()
            return tail
        return list(islice(items, start, stop + 1))

    @command("LINDEX", 3, keys=(1, 1, 1))
    def lindex(self, now: int, args: list[bytes]) -> bytes | None:
        index = parse_int(args[2])
        items = self._list(args[1], now)
        if not items:
            return None
        if index < 0:
            index += len(items)
        return items[index] if 0 <= index < len(items) else None

    # --- writes ----------------------------------------------------------------------------

    @command("LPUSH", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("RPUSH", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("LPUSHX", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("RPUSHX", -3, write=True, keys=(1, 1, 1), flags=("fast",))
    def push(self, ctx: Context, args: list[bytes]) -> int:
        name = args[0]
        key = args[1]
        items = self._list(key, now_ms(ctx))
        if items is None:
            if name.endswith(b"X"):
                return 0
            items = deque()
            self.keyspace.put(key, items)
        else:
            self.keyspace.bump(key)
        if name[0] == 76:  # 'L'
            items.extendleft(args[2:])
        else:
            items.extend(args[2:])
        return len(items)

    @command("LPOP", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    @command("RPOP", -2, write=True, keys=(1, 1, 1), flags=("fast",))
    def pop(self, ctx: Context, args: list[bytes]) -> Any:
        if len(args) > 3:
            raise KvError(f"ERR wrong number of arguments for '{args[0].decode().lower()}' command")
        count = None
        if len(args) == 3:
            try:
                count = parse_int(args[2])
            except KvError:
                count = -1
            if count < 0:
                raise KvError("ERR value is out of range, must be positive")
        key = args[1]
        items = self._list(key, now_ms(ctx))
        if items is None:
            return None if count is None else NULL_ARRAY
        if count == 0:
            return []
        take = items.popleft if args[0] == b"LPOP" else items.pop
        if count is None:
            out: Any = take()
        else:
            out = [take() for _ in range(min(count, len(items)))]
        if items:
            self.keyspace.bump(key)
        else:
            self.keyspace.remove(key)
        return out

    @command("LSET", 4, write=True, keys=(1, 1, 1))
    def lset(self, ctx: Context, args: list[bytes]) -> Any:
        index = parse_int(args[2])
        items = self._list(args[1], now_ms(ctx))
        if items is None:
            raise KvError("ERR no such key")
        if index < 0:
            index += len(items)
        if not 0 <= index < len(items):
            raise KvError("ERR index out of range")
        items[index] = args[3]
        self.keyspace.bump(args[1])
        return OK
