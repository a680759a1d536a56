"""Services the integration tests run with ``dominoes run tests.integration.services:NAME``."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from typing import cast

import msgspec

from dominoes import Component, Context, DominoesError, Replica, Service, query, update
from dominoes.lowlevel import Log


class Journal(Component):
    """An append-only list: any lost, repeated or reordered entry shows in it."""

    def __init__(self) -> None:
        self.items: list[int] = []

    @update
    def add(self, ctx: Context, x: int) -> int:
        if ctx.replica == 1:
            # Replica 1 is deliberately slow.  Sleeping reads no replicated
            # state and changes none, so replicas still converge.
            time.sleep(0.002)
        self.items.append(x)
        return len(self.items)

    @query
    def length(self) -> int:
        return len(self.items)

    @query
    def fingerprint(self) -> str:
        return msgspec.msgpack.encode(self.items).hex()[-32:] + f":{sum(self.items)}"


async def journal_protocol(
    replica: Replica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``ADD x`` -> new length; ``LEN``; ``RLEN`` (``await replica.read``: linearizable
    across machines too); ``PRINT`` -> fingerprint; ``INFO``; ``STATS``."""
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["ADD"] and len(words) == 2:
            try:
                reply = str(await replica.submit(Journal.add, int(words[1])))
            except (DominoesError, ValueError) as exc:
                reply = f"ERR {exc}"
        elif words == ["LEN"]:
            reply = str(replica.query(Journal.length))
        elif words == ["RLEN"]:
            reply = str(await replica.read(Journal.length))
        elif words == ["PRINT"]:
            reply = replica.query(Journal.fingerprint)
        elif words == ["INFO"]:
            reply = f"replica {replica.index} seq {replica.applied_seq}"
        elif words == ["STATS"]:
            reply = msgspec.json.encode(replica.statistics()).decode()
        else:
            reply = "ERR unknown command"
        writer.write(reply.encode() + b"\n")
        await writer.drain()


slow = Service("slow", [Journal()], tcp=journal_protocol)
journal = Service("journal", [Journal()], tcp=journal_protocol)


class Clocky(Component):
    """A deliberately non-deterministic component: it reads the local clock."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @update
    def tick(self, ctx: Context) -> int:
        self.stamps.append(time.time())  # the bug divergence detection must catch
        return len(self.stamps)


class Steady(Component):
    """The deterministic twin: ``ctx.now`` is the same on every replica."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @update
    def tick(self, ctx: Context) -> int:
        self.stamps.append(ctx.now)
        return len(self.stamps)


class Sleepy(Component):
    def __init__(self) -> None:
        self.naps = 0

    @update
    def nap(self, ctx: Context, seconds: float) -> int:
        time.sleep(seconds)  # a handler that blocks the loop: a stall
        self.naps += 1
        return self.naps


class Grudge(Component):
    """Blocks replica 1 only: a replica stuck inside a handler."""

    def __init__(self) -> None:
        self.snubs = 0

    @update
    def snub(self, ctx: Context, seconds: float) -> int:
        if ctx.replica == 1:
            time.sleep(seconds)  # local only: no replicated state depends on it
        self.snubs += 1
        return self.snubs


async def call_protocol(
    replica: Replica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``CALL <event> [float]`` submits the event; ``INFO`` names the replica."""
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["CALL"] and len(words) in (2, 3):
            args = [float(words[2])] if len(words) == 3 else []
            try:
                reply = str(await replica.submit(words[1], *args))
            except DominoesError as exc:
                reply = f"ERR {exc}"
        elif words == ["INFO"]:
            reply = f"replica {replica.index} seq {replica.applied_seq}"
        else:
            reply = "ERR unknown command"
        writer.write(reply.encode() + b"\n")
        await writer.drain()


clocky = Service("clocky", [Clocky()], tcp=call_protocol)
steady = Service("steady", [Steady()], tcp=call_protocol)
sleepy = Service("sleepy", [Sleepy()], tcp=call_protocol)
grudge = Service("grudge", [Grudge()], tcp=call_protocol)


class Roll(Component):
    """Which replicas announced themselves from ``on_start``."""

    def __init__(self) -> None:
        self.started: list[int] = []

    @update
    def hello(self, ctx: Context, replica: int) -> None:
        self.started.append(replica)

    @query
    def who(self) -> str:
        return ",".join(map(str, sorted(self.started)))


async def announce(replica: Replica) -> None:
    await replica.submit(Roll.hello, replica.index)


async def roll_protocol(
    replica: Replica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while await reader.readline():
        writer.write(replica.query(Roll.who).encode() + b"\n")
        await writer.drain()


roll = Service("roll", [Roll()], tcp=roll_protocol, on_start=announce)


def wedge(replica: Replica) -> None:
    """Replica 1 reserves a slot and never publishes it: a producer frozen mid-append.

    Once per service run (a marker in the run dir), so the restart is clean.
    """
    marker = replica.run_dir / "wedged"
    if replica.index == 1 and not marker.exists():
        marker.touch()
        # the runtime's log backend is the shared-memory Log, which can reserve
        cast(Log, replica.core.log).try_reserve(1, 1)


wedged = Service("wedged", [Grudge()], tcp=call_protocol, on_start=wedge)


class Poison(Component):
    """Handlers that hang on request: on every replica, so only a poison verdict ends them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    @update
    def put(self, ctx: Context, key: str, value: str) -> str:
        self.values[key] = value
        return "OK"

    @update
    def spin(self, ctx: Context, key: str) -> str:
        self.values[key] = "half-done"  # partial state: the rollback must undo it
        while True:  # a pure-Python hang, on every replica
            pass

    @update
    def backtrack(self, ctx: Context, key: str) -> str:
        self.values[key] = "half-done"
        # A catastrophic regex: the C matcher hangs (it checks for signals).
        return str(re.fullmatch(rb"(a*)*b", b"a" * 64))

    @update
    def stubborn(self, ctx: Context, key: str) -> str:
        self.values[key] = "half-done"
        try:
            while True:
                pass
        except BaseException:  # noqa: BLE001 - swallows the first interrupt
            pass
        while True:  # the next tick interrupts it again
            pass

    @update
    def quit(self, ctx: Context) -> str:
        sys.exit(3)  # must not end the replica: it is this entry's error

    @update
    def crash(self, ctx: Context) -> str:
        os._exit(3)  # ends every replica at once: nothing is left to recover from

    @query
    def get(self, key: str) -> str:
        return self.values.get(key, "(nil)")


async def poison_protocol(
    replica: Replica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``PUT k v``, ``SPIN k``, ``BACKTRACK k``, ``STUBBORN k``, ``GET k``, ``INFO``."""
    while line := await reader.readline():
        words = line.decode().split()
        try:
            if words[:1] == ["PUT"] and len(words) == 3:
                reply = await replica.submit(Poison.put, words[1], words[2])
            elif words[:1] == ["SPIN"] and len(words) == 2:
                reply = await replica.submit(Poison.spin, words[1])
            elif words[:1] == ["BACKTRACK"] and len(words) == 2:
                reply = await replica.submit(Poison.backtrack, words[1])
            elif words[:1] == ["STUBBORN"] and len(words) == 2:
                reply = await replica.submit(Poison.stubborn, words[1])
            elif words == ["QUIT"]:
                reply = await replica.submit(Poison.quit)
            elif words == ["CRASH"]:
                reply = await replica.submit(Poison.crash)
            elif words[:1] == ["GET"] and len(words) == 2:
                reply = replica.query(Poison.get, words[1])
            elif words == ["INFO"]:
                reply = f"replica {replica.index} seq {replica.applied_seq}"
            else:
                reply = "ERR unknown command"
        except Exception as exc:  # noqa: BLE001 - every error is this request's reply
            reply = f"ERR {type(exc).__name__}: {exc}"
        writer.write(reply.encode() + b"\n")
        await writer.drain()


poison = Service("poison", [Poison()], tcp=poison_protocol)
