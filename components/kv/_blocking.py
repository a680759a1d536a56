"""Blocking pops, replicated: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP.

A blocked client lives in the replicated state
------------------------------------------------
A blocking command is a write, appended like any other (the connection puts
its client id in ``args[1]``, as for WATCH).  Applied on every replica, it
either finds something to pop at once and answers like its non-blocking twin,
or it registers a *waiter*: the client, its command, a token, and a
replicated timer for its timeout (``ctx.raise_later``).  Its reply is then
:data:`BLOCKED`, a marker the client never sees: the connection holds the
commands the client sent after it until the real reply comes.

Serving waiters at apply time
-----------------------------
The keyspace notes every key that is *created* while a waiter waits on it
(``Keyspace.put``: a key a waiter waits on is always missing or of another
type, since a waiter is served as soon as its key has something).  After
each write command of a batch, and after a whole transaction, the
``Commands`` event calls :meth:`Blocking.serve`, which serves those keys'
waiters in FIFO order, each with the key that became ready, exactly as Redis
serves them.  A served BLMOVE's push may wake the next key's waiters, so it
loops until no key is ready.  All of that is deterministic apply, the same on
every replica: every replica pops the same elements for the same clients.

Who replies
-----------
The waiter's reply is published (``ctx.publish``, an every-replica effect) on
:data:`TOPIC`; each replica's KV server hands the replies of *its* clients
(a client id's low bits name its replica) to their connections.  So the
pusher may be on one replica and the waiter on another: the waiter's own
replica answers it, right after it applied the push.  A timeout is a timer
entry, fired exactly once even if the replica that armed it died.

A client that closes while blocked appends :meth:`Blocking.disconnect`; the
clients of a dead replica are dropped by ``Commands.clients_gone`` when it
restarts (until then a push may still be served to one of them, and that
element is lost with it, as with a Redis client whose socket died unnoticed).

Inside MULTI (and scripts) a blocking command does not block: it answers as
its timeout had passed, as in Redis.
"""

from __future__ import annotations

import math
import re
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final

from dominoes import Component, Context, on, update

from ._commands import REPLICA_BITS, ClientState, Commands, replica_of
from ._errors import KvError, mpop_options, syntax_error, wrong_type
from ._keyspace import Keyspace, now_ms
from ._lists import Lists
from ._resp import NULL_ARRAY
from ._streams import Stream, Streams, fmt, parse_read
from ._table import command
from ._zsets import ZSet, Zsets, _nested, _score

__all__ = ("BLOCKED", "BLOCKING_READ", "TOPIC", "Blocking", "blocks", "parse_timeout")

#: The feed topic carrying ``(client id, reply)`` for every served or timed-out waiter.
TOPIC: Final = "dominoes.kv.unblocked"

INT64_MAX: Final = 2**63 - 1


class _Blocked:
    """The reply of a command that blocked: the real one comes through :data:`TOPIC`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BLOCKED"


BLOCKED: Final = _Blocked()

#: The internal command an XREAD or XREADGROUP with BLOCK becomes (the connection
#: rewrites it: ``BLOCKING_READ cid XREAD ...``).  Not in the command table, so no
#: client can name it.
BLOCKING_READ: Final = b"\x00BLOCKING-READ"
_STREAM_READS: Final = (b"XREAD", b"XREADGROUP")


def blocks(args: list[bytes]) -> bool:
    """Whether an XREAD/XREADGROUP has a BLOCK option (before STREAMS)."""
    for word in args[1:]:
        upper = word.upper()
        if upper == b"STREAMS":
            return False
        if upper == b"BLOCK":
            return True
    return False


_TIMEOUT_ERROR: Final = "ERR timeout is not a float or out of range"
_DECIMAL: Final = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX: Final = re.compile(
    rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_INFINITE: Final = re.compile(rb"[+-]?(?:inf|infinity)", re.IGNORECASE)
#: The largest finite and the smallest (subnormal) positive x86 ``long double``.
_LONG_DOUBLE_MAX: Final = Decimal("1.18973149535723176502e+4932")
_LONG_DOUBLE_MIN: Final = Decimal("3.64519953188247460253e-4951")


def parse_timeout(raw: bytes) -> int:
    """A blocking command's timeout in ms, as Redis 7.0 reads it (0: wait forever).

    Seconds as ``strtold`` reads them (decimal, hexadecimal, ``inf``; no
    leading space, no ``nan``), times 1000, rounded up, cast to a C ``long
    long``: what does not fit (``inf``, ``1e30``) wraps negative there, hence
    Redis's "timeout is negative" for those too.
    """
    if _INFINITE.fullmatch(raw):
        raise KvError("ERR timeout is negative")
    try:
        if _DECIMAL.fullmatch(raw):
            seconds = Decimal(raw.decode())
        elif _HEX.fullmatch(raw):
            text = raw.decode()
            if "p" not in text.lower():
                text += "p0"
            seconds = Decimal(float.fromhex(text))
        else:
            raise KvError(_TIMEOUT_ERROR)
    except (InvalidOperation, OverflowError, ValueError):
        raise KvError(_TIMEOUT_ERROR) from None
    if seconds and not _LONG_DOUBLE_MIN <= seconds.copy_abs() <= _LONG_DOUBLE_MAX:
        raise KvError(_TIMEOUT_ERROR)  # strtold's ERANGE: past a long double, or under it
    ms = math.ceil(seconds.scaleb(3))
    if ms < 0 or ms > INT64_MAX:
        raise KvError("ERR timeout is negative")
    return ms


class Blocking(Component, ClientState):
    """Waiters (replicated), serving them at apply time, their timeouts (see the module doc)."""

    name = "blocking"
    transient: ClassVar[tuple[str, ...]] = ("keyspace", "lists", "zsets", "streams", "deny")

    def __init__(self, keyspace: Keyspace, lists: Lists, zsets: Zsets, streams: Streams) -> None:
        self.keyspace = keyspace
        self.lists = lists
        self.zsets = zsets
        self.streams = streams
        #: token -> [client id, the command's args (client id removed), its keys, timer id]
        self.waiters: dict[int, list[Any]] = {}
        #: key -> the tokens waiting on it, oldest first
        self.queues: dict[bytes, list[int]] = {}
        #: client id -> its token (a client blocks on one command at a time)
        self.by_client: dict[int, int] = {}
        self.next_token = 0
        #: waiters served, timed out
        self.served = 0
        self.timeouts = 0
        #: a transaction (or a script) is running: blocking commands answer at once
        self.deny = False
        keyspace.blocked = self.queues

    # --- the commands (the connection puts its client id in args[1]) ----------------------

    @command("BLPOP", -3, write=True, keys=(2, -2, 1), flags=("client-id", "blocking"))
    @command("BRPOP", -3, write=True, keys=(2, -2, 1), flags=("client-id", "blocking"))
    @command("BZPOPMIN", -3, write=True, keys=(2, -2, 1), flags=("client-id", "blocking"))
    @command("BZPOPMAX", -3, write=True, keys=(2, -2, 1), flags=("client-id", "blocking"))
    def bpop(self, ctx: Context, args: list[bytes]) -> Any:
        timeout = parse_timeout(args[-1])
        return self._try_or_block(ctx, args, args[2:-1], timeout)

    @command("BLMOVE", 6, write=True, keys=(2, 3, 1), flags=("client-id", "blocking"))
    def blmove(self, ctx: Context, args: list[bytes]) -> Any:
        for raw in args[4:6]:
            if raw.upper() not in (b"LEFT", b"RIGHT"):
                raise syntax_error()
        timeout = parse_timeout(args[6])
        return self._try_or_block(ctx, args, [args[2]], timeout)

    @command("BRPOPLPUSH", 4, write=True, keys=(2, 3, 1), flags=("client-id", "blocking"))
    def brpoplpush(self, ctx: Context, args: list[bytes]) -> Any:
        timeout = parse_timeout(args[4])
        return self._try_or_block(ctx, args, [args[2]], timeout)

    # keys=(4, -1, 1) over-reports (LEFT, COUNT ...), like LMPOP's: harmless for expiry.
    @command("BLMPOP", -5, write=True, keys=(4, -1, 1), flags=("client-id", "blocking"))
    @command("BZMPOP", -5, write=True, keys=(4, -1, 1), flags=("client-id", "blocking"))
    def bmpop(self, ctx: Context, args: list[bytes]) -> Any:
        keys, _, _ = _mpop_options(args)  # before the timeout, as Redis parses them
        timeout = parse_timeout(args[2])
        return self._try_or_block(ctx, args, keys, timeout)

    def blocking_read(self, ctx: Context, args: list[bytes]) -> Any:
        """``BLOCKING_READ cid XREAD|XREADGROUP ...``: an XREAD or XREADGROUP with BLOCK.

        Served at once if it has something; otherwise a waiter, whose ``$`` IDs
        are resolved now (the last ID of each stream at this position in the log).
        """
        cid = int(args[1])
        command = args[2:]
        group = command[0] == b"XREADGROUP"
        now = now_ms(ctx)
        req, texts = parse_read(command, xreadgroup=group)
        assert req.block is not None
        self.streams._resolve_ids(now, req, texts)
        served = self.streams.serve_read(ctx if group else None, now, req)
        if served is not None:
            return served
        if self.deny or cid == 0:
            return NULL_ARRAY
        # Keep the command with each ID made explicit ("$" resolved), for serving later.
        fixed = list(command)
        start = len(command) - len(texts)
        for j, i in enumerate(req.ids):
            if i is not None:
                fixed[start + j] = fmt(i)
        return self._wait(ctx, cid, fixed, req.keys, req.block)

    def _try_or_block(
        self, ctx: Context, args: list[bytes], keys: list[bytes], timeout: int
    ) -> Any:
        cid = int(args[1])
        now = now_ms(ctx)
        zset = args[0].startswith(b"BZ")
        kind = ZSet if zset else deque
        for key in keys:
            value = self.keyspace.get(key, now)
            if value is None:
                continue
            if type(value) is not kind:
                raise wrong_type()
            if value:
                return self._pop(ctx, args, key)
        if self.deny or cid == 0:
            return _timed_out(args[0])
        return self._wait(ctx, cid, [args[0], *args[2:]], keys, timeout)

    def _wait(
        self, ctx: Context, cid: int, command: list[bytes], keys: list[bytes], timeout: int
    ) -> Any:
        """Register ``cid``'s waiter for ``command`` (its client id left out) on ``keys``."""
        old = self.by_client.get(cid)
        if old is not None:  # cannot happen through a connection; keep one per client
            self._drop(ctx, old)
        token = self.next_token = self.next_token + 1
        timer = 0
        if timeout:
            timer = ctx.raise_later(timeout / 1000, Blocking.expire, token)
        unique = list(dict.fromkeys(keys))
        self.waiters[token] = [cid, command, unique, timer]
        self.by_client[cid] = token
        for key in unique:
            self.queues.setdefault(key, []).append(token)
        return BLOCKED

    def _pop(self, ctx: Context, args: list[bytes], key: bytes) -> Any:
        """Pop for ``args`` (client id at ``args[1]``) from ``key``, which holds something."""
        name = args[0]
        now = now_ms(ctx)
        ks = self.keyspace
        if name == b"BLPOP" or name == b"BRPOP":
            items = self.lists._list(key, now)
            assert items
            value = items.popleft() if name == b"BLPOP" else items.pop()
            if items:
                ks.bump(key)
            else:
                ks.remove(key)
            return [key, value]
        if name == b"BLMOVE" or name == b"BRPOPLPUSH":
            if name == b"BLMOVE":
                src_left, dst_left = args[4].upper() == b"LEFT", args[5].upper() == b"LEFT"
            else:
                src_left, dst_left = False, True
            return self.lists._move(ctx, key, args[3], from_left=src_left, to_left=dst_left)
        if name == b"BLMPOP":
            _, where, count = _mpop_options(args)
            chosen = self.lists._list(key, now)
            assert chosen
            take = chosen.popleft if where == b"LEFT" else chosen.pop
            popped = [take() for _ in range(min(count, len(chosen)))]
            if chosen:
                ks.bump(key)
            else:
                ks.remove(key)
            return [key, popped]
        z = ks.values[key]
        assert type(z) is ZSet
        if name == b"BZMPOP":
            _, where, count = _mpop_options(args)
            return [key, _nested(self.zsets._pop(key, z, count, where == b"MAX"))]
        [(score, member)] = self.zsets._pop(key, z, 1, name == b"BZPOPMAX")
        return [key, member, _score(score)]

    # --- serving -----------------------------------------------------------------------------

    def serve(self, ctx: Context) -> None:
        """Serve the waiters of the keys made ready since the last call, FIFO, at apply time."""
        ready = self.keyspace.ready
        ks = self.keyspace
        while ready:
            key = next(iter(ready))
            del ready[key]
            queue = self.queues.get(key)
            if not queue:
                continue
            now = now_ms(ctx)
            for token in tuple(queue):
                value = ks.get(key, now)
                if value is None:
                    break
                waiter = self.waiters[token]
                cid, args = waiter[0], waiter[1]
                if args[0] in _STREAM_READS:
                    if type(value) is not Stream:
                        continue
                    reply = self._read_again(ctx, args, now)
                    if reply is None:
                        continue  # nothing new for this one (an XREADGROUP's group is behind)
                else:
                    if not value:
                        break
                    if type(value) is not (ZSet if args[0].startswith(b"BZ") else deque):
                        continue  # a list waiter on a key that is now a sorted set, ...
                    full = [args[0], b"%d" % cid, *args[1:]]
                    try:
                        reply = self._pop(ctx, full, key)
                    except KvError as exc:  # BLMOVE to a key of another type: nothing moved
                        reply = exc
                self._drop(ctx, token)
                self.served += 1
                ctx.publish(TOPIC, (cid, reply))

    def _read_again(self, ctx: Context, command: list[bytes], now: int) -> Any:
        """A waiting XREAD/XREADGROUP served now: its reply, None if nothing yet, or its error."""
        group = command[0] == b"XREADGROUP"
        try:
            req, texts = parse_read(command, xreadgroup=group)
            self.streams._resolve_ids(now, req, texts)
            return self.streams.serve_read(ctx if group else None, now, req)
        except KvError as exc:  # its group was destroyed meanwhile, ...
            return exc

    def _drop(self, ctx: Context, token: int) -> list[Any] | None:
        waiter = self.waiters.pop(token, None)
        if waiter is None:
            return None
        cid, _, keys, timer = waiter
        self.by_client.pop(cid, None)
        for key in keys:
            queue = self.queues.get(key)
            if queue is not None:
                queue.remove(token)
                if not queue:
                    del self.queues[key]
        if timer:
            ctx.cancel(timer)
        return waiter

    @update
    def expire(self, ctx: Context, token: int) -> None:
        """A waiter's timeout (a replicated timer) passed: it answers nil."""
        waiter = self.waiters.get(token)
        if waiter is None:
            return  # served, or gone, before the timer entry applied
        waiter[3] = 0  # this timer fired: nothing to cancel
        self._drop(ctx, token)
        self.timeouts += 1
        ctx.publish(TOPIC, (waiter[0], _timed_out(waiter[1][0])))

    @update
    def unblock(self, ctx: Context, request: list[int]) -> int:
        """CLIENT UNBLOCK ``[client id, error]``: 1 if the client was blocked (it then
        answers as timed out, or with an error)."""
        cid, error = request
        token = self.by_client.get(cid)
        if token is None:
            return 0
        waiter = self._drop(ctx, token)
        assert waiter is not None
        reply: Any = _timed_out(waiter[1][0])
        if error:
            reply = KvError("UNBLOCKED client unblocked via CLIENT UNBLOCK")
        ctx.publish(TOPIC, (cid, reply))
        return 1

    def internal_commands(self) -> dict[bytes, Any]:
        """Write commands that are not in the table (the connection makes them)."""
        return {BLOCKING_READ: self.blocking_read}

    @update
    def disconnect(self, ctx: Context, cid: int) -> None:
        """A blocked client closed its connection: forget its waiter."""
        token = self.by_client.get(cid)
        if token is not None:
            self._drop(ctx, token)

    @on(Commands.clients_gone)
    def _gone(self, ctx: Context, replica: int, below: int) -> None:
        for cid in sorted(self.by_client):
            if replica_of(cid) == replica and cid >> REPLICA_BITS < below:
                self.disconnect(ctx, cid)

    def highest_client(self, replica: int) -> int:
        return max(
            (c >> REPLICA_BITS for c in self.by_client if replica_of(c) == replica), default=0
        )

    def blocked_clients(self) -> int:
        return len(self.waiters)

    # --- snapshots -----------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.waiters = {
            int(t): [int(w[0]), [bytes(a) for a in w[1]], [bytes(k) for k in w[2]], int(w[3])]
            for t, w in state["waiters"].items()
        }
        self.queues = {bytes(k): [int(t) for t in v] for k, v in state["queues"].items()}
        self.by_client = {int(c): int(t) for c, t in state["by_client"].items()}
        self.next_token = int(state["next_token"])
        self.served = int(state["served"])
        self.timeouts = int(state["timeouts"])
        self.keyspace.blocked = self.queues


def _timed_out(name: bytes) -> Any:
    """The reply of a blocking command whose timeout passed."""
    return None if name in (b"BLMOVE", b"BRPOPLPUSH") else NULL_ARRAY


def _mpop_options(args: list[bytes]) -> tuple[list[bytes], bytes, int]:
    """BLMPOP/BZMPOP ``cid timeout numkeys key... LEFT|RIGHT|MIN|MAX [COUNT n]``."""
    return mpop_options(args, 3, (b"MIN", b"MAX") if args[0] == b"BZMPOP" else (b"LEFT", b"RIGHT"))
