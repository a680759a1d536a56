"""Lists: LPUSH, RPUSH, LPOP, RPOP (with count), LLEN, LRANGE, LINDEX, LPOS, LINSERT, LREM,
LSET, LTRIM, LMOVE, RPOPLPUSH, LMPOP, ..."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, ClassVar

from dominoes import Component, Context

from ._errors import (
    LONG_MAX,
    KvError,
    mpop_options,
    parse_count,
    parse_int,
    syntax_error,
    wrong_type,
)
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
        items = self._list(args[1], now)  # nil, or WRONGTYPE, before the index (as Redis)
        if not items:
            return None
        index = parse_int(args[2])
        if index < 0:
            index += len(items)
        return items[index] if 0 <= index < len(items) else None

    @command("LPOS", -3, keys=(1, 1, 1))
    def lpos(self, now: int, args: list[bytes]) -> Any:
        """LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]."""
        rank, count, maxlen = 1, -1, 0
        i = 3
        while i < len(args):
            opt = args[i].upper()
            if i + 1 >= len(args):
                raise syntax_error()
            if opt == b"RANK":
                # Redis 7.0 takes the whole 64-bit range; its -LONG_MIN stays negative,
                # which makes every match from the tail qualify: the rank of -1.
                rank = parse_int(args[i + 1])
                if rank == -LONG_MAX - 1:
                    rank = -1
                if rank == 0:
                    raise KvError(
                        "ERR RANK can't be zero: use 1 to start from the first match, "
                        "2 from the second ... or use negative to start from the end of the list"
                    )
            elif opt == b"COUNT":
                count = parse_count(args[i + 1], 0, LONG_MAX, "COUNT can't be negative")
            elif opt == b"MAXLEN":
                maxlen = parse_count(args[i + 1], 0, LONG_MAX, "MAXLEN can't be negative")
            else:
                raise syntax_error()
            i += 2
        items = self._list(args[1], now)
        if items is None:
            return [] if count != -1 else None
        element = args[2]
        n = len(items)
        backwards = rank < 0
        rank = abs(rank)
        walk = reversed(items) if backwards else iter(items)
        if maxlen:
            walk = islice(walk, maxlen)
        found: list[int] = []
        matches = 0
        for index, item in enumerate(walk):
            if item == element:
                matches += 1
                if matches >= rank:
                    found.append(n - index - 1 if backwards else index)
                    if count == -1 or (count and len(found) >= count):
                        break
        if count != -1:
            return found
        return found[0] if found else None

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
        items = self._list(args[1], now_ms(ctx))  # no such key, or WRONGTYPE, first (as Redis)
        if items is None:
            raise KvError("ERR no such key")
        index = parse_int(args[2])
        if index < 0:
            index += len(items)
        if not 0 <= index < len(items):
            raise KvError("ERR index out of range")
        items[index] = args[3]
        self.keyspace.bump(args[1])
        return OK

    @command("LINSERT", 5, write=True, keys=(1, 1, 1))
    def linsert(self, ctx: Context, args: list[bytes]) -> int:
        where = args[2].upper()
        if where not in (b"BEFORE", b"AFTER"):
            raise syntax_error()
        items = self._list(args[1], now_ms(ctx))
        if items is None:
            return 0
        try:
            index = items.index(args[3])
        except ValueError:
            return -1
        items.insert(index if where == b"BEFORE" else index + 1, args[4])
        self.keyspace.bump(args[1])
        return len(items)

    @command("LREM", 4, write=True, keys=(1, 1, 1))
    def lrem(self, ctx: Context, args: list[bytes]) -> int:
        """Remove ``count`` occurrences from the head (negative: from the tail; 0: all)."""
        count = parse_int(args[2])
        key = args[1]
        items = self._list(key, now_ms(ctx))
        if items is None:
            return 0
        element = args[3]
        limit = abs(count) or len(items)
        if count < 0:
            items.reverse()
        kept: deque[bytes] = deque()
        removed = 0
        for item in items:
            if removed < limit and item == element:
                removed += 1
            else:
                kept.append(item)
        if count < 0:
            kept.reverse()
            items.reverse()
        if not removed:
            return 0
        items.clear()
        items.extend(kept)
        if items:
            self.keyspace.bump(key)
        else:
            self.keyspace.remove(key)
        return removed

    @command("LTRIM", 4, write=True, keys=(1, 1, 1))
    def ltrim(self, ctx: Context, args: list[bytes]) -> Any:
        start, end = parse_int(args[2]), parse_int(args[3])
        key = args[1]
        items = self._list(key, now_ms(ctx))
        if items is None:
            return OK
        n = len(items)
        if start < 0:
            start = max(0, n + start)
        if end < 0:
            end += n
        if start > end or start >= n:
            left, right = n, 0
        else:
            left, right = start, n - min(end, n - 1) - 1
        if left + right >= n:
            self.keyspace.remove(key)
            return OK
        for _ in range(left):
            items.popleft()
        for _ in range(right):
            items.pop()
        self.keyspace.bump(key)  # as Redis: touched (for WATCH) even when nothing goes
        return OK

    @command("LMOVE", 5, write=True, keys=(1, 2, 1))
    def lmove(self, ctx: Context, args: list[bytes]) -> bytes | None:
        ends = []
        for raw in args[3:5]:
            end = raw.upper()
            if end not in (b"LEFT", b"RIGHT"):
                raise syntax_error()
            ends.append(end == b"LEFT")
        return self._move(ctx, args[1], args[2], from_left=ends[0], to_left=ends[1])

    @command("RPOPLPUSH", 3, write=True, keys=(1, 2, 1))
    def rpoplpush(self, ctx: Context, args: list[bytes]) -> bytes | None:
        return self._move(ctx, args[1], args[2], from_left=False, to_left=True)

    def _move(
        self, ctx: Context, src: bytes, dst: bytes, *, from_left: bool, to_left: bool
    ) -> bytes | None:
        now = now_ms(ctx)
        source = self._list(src, now)
        if source is None:
            return None
        target = self._list(dst, now)
        value = source.popleft() if from_left else source.pop()
        ks = self.keyspace
        if target is None:
            target = deque()
            ks.put(dst, target)
        else:
            ks.bump(dst)
        if to_left:
            target.appendleft(value)
        else:
            target.append(value)
        if source:
            ks.bump(src)
        else:
            ks.remove(src)
        return value

    # keys=(2, -1, 1) also names LEFT/RIGHT, COUNT and its value: the expiry
    # micro-protocol then expires them too if they are due, which changes nothing.
    @command("LMPOP", -4, write=True, keys=(2, -1, 1))
    def lmpop(self, ctx: Context, args: list[bytes]) -> Any:
        """LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count]: [key, popped] or null."""
        keys, where, count = mpop_options(args, 1, (b"LEFT", b"RIGHT"))
        now = now_ms(ctx)
        for key in keys:
            items = self._list(key, now)
            if not items:
                continue
            take = items.popleft if where == b"LEFT" else items.pop
            popped = [take() for _ in range(min(count, len(items)))]
            if items:
                self.keyspace.bump(key)
            else:
                self.keyspace.remove(key)
            return [key, popped]
        return NULL_ARRAY
