"""A small Redis-protocol key-value store whose keys are partitioned across replicas.

    dominoes run examples.partkv:service --replicas 2 --port 6390

``service`` keeps each key on one replica (``copies=1``); ``copies2`` keeps it
on two; ``replicated`` is the same store on every replica (the all-replicated
twin the benchmark compares it with).  Talk to any of them with ``redis-cli``
or redis-py: a connection on either replica sees every key.

Commands: ``SET key value``, ``GET``, ``INCR``, ``INCRBY``, ``DEL``, ``EXISTS``,
``MSET``, ``MGET``, ``DBSIZE``, ``FLUSHALL``, ``MULTI``/``EXEC``/``DISCARD``
(a transaction is one call, so one log entry: atomic across partitions,
without locks or two-phase commit), and ``PING``, ``ECHO``, ``INFO``,
``CONFIG GET``, ``COMMAND``, ``CLIENT``, ``SELECT 0``, ``QUIT`` answered
locally.  Keys follow Redis Cluster's hash tags: ``{user1}:a`` and
``{user1}:b`` are in one partition.  A command naming keys of different
partitions is refused with ``CROSSSLOT``, as Redis Cluster does.  (The full
KV, ``dominoes.components.kv``, runs partitioned with ``--partition copies=K``.)

Each connection sends a run of consecutive writes as one call
(``Store.run``, a list of commands split by partition) and a run of reads as
one read (``Store.read``, forwarded through the log when it needs partitions
held elsewhere), and answers in order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

import hiredis

from dominoes import (
    KEY_ORDER,
    Component,
    Context,
    DominoesError,
    Partition,
    Replica,
    Service,
    combine,
    hash_tag,
    query,
    update,
)

OK: Final = b"+OK\r\n"
NIL: Final = b"$-1\r\n"
WRITES: Final = {b"SET": 3, b"INCR": 2, b"INCRBY": 3, b"DEL": -2, b"MSET": -3}
READS: Final = {b"GET": 2, b"EXISTS": -2, b"MGET": -2}
NOT_INTEGER: Final = "ERR value is not an integer or out of range"


def first_key(command: list[bytes]) -> bytes:
    """A keyed command's partition key: its first key (they all share a partition)."""
    return command[1]


class StoreBase(Component):
    """The store; ``Store`` is it partitioned by key."""

    name = "Store"

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    @combine(KEY_ORDER)
    @update
    def run(self, ctx: Context, commands: list[list[bytes]]) -> list[Any]:
        """Apply a run of commands (writes, or a transaction's writes and reads) in
        order; one reply each (``str`` for an error)."""
        return [self._apply(c) for c in commands]

    def _apply(self, c: list[bytes]) -> Any:
        data, name = self.data, c[0]
        if name in READS:
            return self.read([c])[0]
        if name == b"SET":
            data[c[1]] = c[2]
            return True
        if name in (b"INCR", b"INCRBY"):
            try:
                by = int(c[2]) if name == b"INCRBY" else 1
                value = int(data.get(c[1], b"0")) + by
            except ValueError:
                return NOT_INTEGER
            if not -(2**63) <= value < 2**63:
                return "ERR increment or decrement would overflow"
            data[c[1]] = b"%d" % value
            return value
        if name == b"DEL":
            return sum(data.pop(k, None) is not None for k in c[1:])
        if name == b"MSET":
            data.update(zip(c[1::2], c[2::2], strict=True))
            return True
        return f"ERR unknown command '{name.decode(errors='replace')}'"

    @combine(KEY_ORDER)
    @query
    def read(self, commands: list[list[bytes]]) -> list[Any]:
        """Answer a run of read commands; one reply each."""
        data = self.data
        out: list[Any] = []
        for c in commands:
            if c[0] == b"GET":
                out.append(data.get(c[1]))
            elif c[0] == b"EXISTS":
                out.append(sum(k in data for k in c[1:]))
            else:  # MGET
                out.append([data.get(k) for k in c[1:]])
        return out

    @combine(sum)
    @query
    def size(self) -> int:
        return len(self.data)

    @combine(sum)
    @update
    def flush(self, ctx: Context) -> int:
        n = len(self.data)
        self.data.clear()
        return n


#: how ``Store`` is split: by each command's first key, Redis hash tags kept together
SPEC: Final = Partition("commands", keyof=first_key, tag=hash_tag)


class Store(StoreBase, partition=SPEC):
    """Each partition on 1 replica."""

    name = "Store"


class Store2(StoreBase, partition=Partition("commands", copies=2, keyof=first_key, tag=hash_tag)):
    """Each partition on 2 replicas."""

    name = "Store"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def error(text: str) -> bytes:
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def encode(value: Any) -> bytes:
    if value is None:
        return NIL
    if value is True:
        return OK
    if isinstance(value, bytes):
        return bulk(value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return error(value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)
    return error(f"ERR cannot encode {type(value).__name__}")


def check(command: list[bytes]) -> bytes | None:
    """An error reply for a keyed command that cannot run, else None."""
    name = command[0]
    arity = WRITES.get(name) or READS[name]
    n = len(command)
    if (arity > 0 and n != arity) or n < -arity or (name == b"MSET" and n % 2 == 0):
        return error(f"ERR wrong number of arguments for '{name.decode().lower()}' command")
    keys = command[1::2] if name == b"MSET" else command[1:2] if arity > 0 else command[1:]
    if len({SPEC.of(k) for k in keys}) > 1:
        return error("CROSSSLOT Keys in request don't hash to the same slot")
    return None


class Connection(asyncio.Protocol):
    """One client: commands parsed as they come, replies written in order."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # the connection's work in order: ready replies, or runs to submit
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        # MULTI: the commands queued (None: not in a transaction), and whether
        # one of them was refused (EXEC then discards the transaction)
        self.multi: list[list[bytes]] | None = None
        self.aborted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.task = asyncio.get_running_loop().create_task(self.answer())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        run: list[list[bytes]] = []
        kind = ""
        try:
            while (cmd := self.reader.gets()) is not False:
                if type(cmd) is not list or not cmd or not all(type(w) is bytes for w in cmd):
                    self.put(kind, run)
                    self.queue.put_nowait(("close", error("ERR Protocol error: expected array")))
                    return
                cmd[0] = cmd[0].upper()
                name = cmd[0]
                if self.multi is not None or name in (b"MULTI", b"EXEC", b"DISCARD"):
                    self.put(kind, run)
                    run, kind = [], ""
                    self.queue.put_nowait(("reply", self.transaction(cmd)))
                    continue
                this = "write" if name in WRITES else "read" if name in READS else ""
                problem = check(cmd) if this else None
                if this and problem is None:
                    if this != kind:
                        self.put(kind, run)
                        run, kind = [], this
                    run.append(cmd)
                    continue
                self.put(kind, run)
                run, kind = [], ""
                self.queue.put_nowait(("reply", problem or self.local(cmd)))
        except hiredis.ProtocolError as exc:
            self.put(kind, run)
            self.queue.put_nowait(("close", error(f"ERR Protocol error: {exc}")))
            return
        self.put(kind, run)

    def transaction(self, cmd: list[bytes]) -> Any:
        """MULTI, EXEC, DISCARD, and the commands queued between them."""
        name = cmd[0]
        if name == b"MULTI":
            if self.multi is not None:
                self.aborted = True
                return error("ERR MULTI calls can not be nested")
            self.multi, self.aborted = [], False
            return OK
        if name in (b"EXEC", b"DISCARD"):
            queued, aborted = self.multi, self.aborted
            if queued is None:
                return error(f"ERR {name.decode()} without MULTI")
            self.multi, self.aborted = None, False
            if name == b"DISCARD":
                return OK
            if aborted:
                return error("EXECABORT Transaction discarded because of previous errors.")
            return ("exec", queued) if queued else b"*0\r\n"
        assert self.multi is not None
        if name not in WRITES and name not in READS:
            self.aborted = True
            return error(f"ERR '{name.decode(errors='replace')}' is not supported in MULTI here")
        problem = check(cmd)
        if problem is not None:
            self.aborted = True
            return problem
        self.multi.append(cmd)
        return b"+QUEUED\r\n"

    def put(self, kind: str, run: list[list[bytes]]) -> None:
        if run:
            self.queue.put_nowait((kind, run))

    def local(self, cmd: list[bytes]) -> Any:
        name, n = cmd[0], len(cmd)
        if name == b"PING":
            return b"+PONG\r\n" if n == 1 else bulk(cmd[1])
        if name == b"ECHO" and n == 2:
            return bulk(cmd[1])
        if name == b"DBSIZE":
            return ("size", [])
        if name in (b"FLUSHALL", b"FLUSHDB"):
            return ("flush", [])
        if name == b"INFO":
            text = f"# Server\r\nredis_version:7.0.0\r\nreplica_index:{self.replica.index}\r\n"
            return bulk(text.encode())
        if name == b"CONFIG" and n >= 3 and cmd[1].upper() == b"GET":
            pairs = {b"save": b"", b"appendonly": b"no"}
            found = [bulk(k) + bulk(pairs[k]) for k in cmd[2:] if k in pairs]
            return b"*%d\r\n" % (2 * len(found)) + b"".join(found)
        if name == b"COMMAND":
            return b"*0\r\n"
        if name in (b"CLIENT", b"SELECT") and (name == b"CLIENT" or cmd[1:] == [b"0"]):
            return OK
        if name == b"QUIT":
            return ("quit", OK)
        return error(f"ERR unknown command '{name.decode(errors='replace')}'")

    async def answer(self) -> None:
        """Submit each run in order and write the replies, as each completes."""
        replica, queue = self.replica, self.queue
        while True:
            kind, what = await queue.get()
            out: bytes
            try:
                if kind == "write":
                    out = b"".join(map(encode, await replica.submit_soon(Store.run, what)))
                elif kind == "read":
                    out = b"".join(map(encode, await replica.read(Store.read, what)))
                elif isinstance(what, tuple):  # a keyless command, EXEC, or QUIT
                    if what[0] == "exec":  # one call: one log entry, whatever it touches
                        replies = await replica.submit_soon(Store.run, what[1])
                        out = b"*%d\r\n" % len(replies) + b"".join(map(encode, replies))
                    elif what[0] == "size":
                        out = encode(await replica.read(Store.size))
                    elif what[0] == "flush":
                        await replica.submit(Store.flush)
                        out = OK
                    else:
                        kind, out = "close", what[1]
                else:
                    out = what
            except DominoesError as exc:  # a partition's holders are down, the log refused
                n = len(what) if kind in ("write", "read") else 1
                out = error(f"ERR {exc}") * n
            transport = self.transport
            if transport is None:
                return
            transport.write(out)
            if kind == "close":
                transport.close()
                return


service = Service("partkv", [Store()], tcp=Connection)
copies2 = Service("partkv", [Store2()], tcp=Connection)
replicated = Service("partkv", [StoreBase()], tcp=Connection)
