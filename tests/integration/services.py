"""Services the integration tests run with ``dominoes run tests.integration.services:NAME``."""

from __future__ import annotations

import asyncio
import time

import msgspec

from dominoes import Component, Context, DominoesError, Replica, Service, query, update


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
    """``ADD x`` -> new length; ``LEN``; ``PRINT`` -> fingerprint; ``INFO``; ``STATS``."""
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["ADD"] and len(words) == 2:
            try:
                reply = str(await replica.submit(Journal.add, int(words[1])))
            except (DominoesError, ValueError) as exc:
                reply = f"ERR {exc}"
        elif words == ["LEN"]:
            reply = str(replica.query(Journal.length))
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
