"""A replicated counter over a TCP (and UDP) line protocol.

Run it on every core::

    dominoes run examples.counter:service --replicas 2 --port 7000

and talk to it with any line client (``nc 127.0.0.1 7000``)::

    INCR <key> [n]     -> the new value (an update: appended to the log)
    GET <key>          -> the value      (a query: answered locally, after catching up)
    INFO               -> "replica <index> seq <last applied>" (which replica you reached)
    anything else      -> ERR ...

Each UDP datagram holding one such line gets one reply datagram, from
whichever replica claimed it.
"""

from __future__ import annotations

import asyncio

from dominoes import Component, Context, DominoesError, Replica, Service, query, update

MAX_LINE = 4096
INT64 = (-(2**63), 2**63 - 1)


class Counter(Component):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        value = self.counts.get(key, 0) + by
        if not INT64[0] <= value <= INT64[1]:
            raise OverflowError("increment would overflow")
        self.counts[key] = value
        return value

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)

    @update
    def datagram(self, ctx: Context, data: bytes, host: str, port: int) -> bytes:
        """One UDP request; the owner sends the returned bytes back."""
        command = parse(data)
        if isinstance(command, str):
            return command.encode()
        op, key, by = command
        if op == "INFO":
            return b"replica %d seq %d\n" % (ctx.replica, ctx.seq)
        if op == "GET":
            return b"%d\n" % self.counts.get(key, 0)
        return b"%d\n" % self.incr(ctx, key, by)


def parse(line: bytes) -> tuple[str, str, int] | str:
    """``(op, key, n)`` for a well-formed line, else the ``ERR ...`` reply."""
    try:
        text = line.decode().strip()
    except UnicodeDecodeError:
        return "ERR line is not UTF-8\n"
    parts = text.split()
    if not parts:
        return "ERR empty command\n"
    op = parts[0].upper()
    if op == "INCR" and len(parts) in (2, 3):
        try:
            by = int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            return "ERR increment is not an integer\n"
        if not INT64[0] <= by <= INT64[1]:
            return "ERR increment out of range\n"
        return ("INCR", parts[1], by)
    if op == "GET" and len(parts) == 2:
        return ("GET", parts[1], 0)
    if op == "INFO" and len(parts) == 1:
        return ("INFO", "", 0)
    if op in ("INCR", "GET", "INFO"):
        return f"ERR wrong number of arguments for {op}\n"
    return f"ERR unknown command {parts[0][:32]!r}\n"


async def serve(
    replica: Replica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One TCP connection: a line in, a line out, in order."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return
        except asyncio.LimitOverrunError:
            writer.write(b"ERR line too long\n")
            await writer.drain()
            return
        if len(line) > MAX_LINE:
            writer.write(b"ERR line too long\n")
            await writer.drain()
            return
        command = parse(line)
        if isinstance(command, str):
            writer.write(command.encode())
        elif command[0] == "GET":
            # read, not query: a partitioned counter (examples/partitioned.py) forwards
            # a key held by another replica to it, and refuses one whose holders are down
            try:
                writer.write(b"%d\n" % await replica.read(Counter.get, command[1]))
            except DominoesError as exc:
                writer.write(f"ERR {exc}\n".encode())
        elif command[0] == "INFO":
            writer.write(b"replica %d seq %d\n" % (replica.index, replica.applied_seq))
        else:
            try:
                # submit_soon: every connection's INCRs of this loop iteration
                # share one log entry (group commit).
                value = await replica.submit_soon(Counter.incr, command[1], by=command[2])
            except (DominoesError, OverflowError, ValueError) as exc:
                # ValueError: what a micro-protocol bound to Counter.incr refuses
                # (examples/limits.py's cap, bound at run time)
                writer.write(f"ERR {exc}\n".encode())
            else:
                writer.write(b"%d\n" % value)
        await writer.drain()


service = Service("counter", [Counter()], tcp=serve, udp=Counter.datagram)
