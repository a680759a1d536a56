"""A plain uvloop RESP server over a dict: the no-framework baseline.

    python benchmarks/baselines/plain_resp.py --port P [--processes N] [--no-pin]

One uvloop event loop per process, ``hiredis.Reader`` to parse, a ``dict`` of
bytes to bytes.  Every ``data_received`` parses all complete commands and
writes all their replies with one ``transport.write`` (pipelining).

Commands: SET key value (no options), GET, DEL, EXISTS, INCR, DBSIZE, FLUSHDB,
FLUSHALL, plus the connection commands of ``_resp.py`` (PING, ECHO, SELECT 0,
CONFIG GET, INFO, COMMAND, CLIENT, QUIT).

With ``--processes N`` > 1 it runs N ``SO_REUSEPORT`` processes, each pinned to
one core and each with **its own dict**: a client sees whichever process the
kernel gave its connection to.  Fast but wrong: the upper bound for a
replicated service on N cores.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _resp
from _resp import NIL, OK, bulk, encode, error, local_reply, unknown, wrong_arity

SERVER = "plain"


class PlainProtocol(asyncio.Protocol):
    __slots__ = ("_db", "_quit", "_reader", "_transport")

    def __init__(self, db: dict[bytes, bytes]) -> None:
        self._db = db
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._quit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        reader = self._reader
        reader.feed(data)
        out: list[bytes] = []
        close = False
        try:
            while (cmd := reader.gets()) is not False:
                if type(cmd) is not list or not cmd:
                    out.append(error("ERR Protocol error: expected a command array"))
                    close = True
                    break
                out.append(self._execute(cmd))
                if self._quit:
                    close = True
                    break
        except hiredis.ProtocolError as exc:
            out.append(error(f"ERR Protocol error: {exc}"))
            close = True
        if out:
            transport.write(b"".join(out))
        if close:
            transport.close()

    def _execute(self, cmd: list[bytes]) -> bytes:
        name = cmd[0].upper()
        db = self._db
        n = len(cmd)
        if name == b"GET":
            if n != 2:
                return wrong_arity(name)
            value = db.get(cmd[1])
            return NIL if value is None else bulk(value)
        if name == b"SET":
            if n != 3:
                return wrong_arity(name) if n < 3 else error("ERR syntax error")
            db[cmd[1]] = cmd[2]
            return OK
        if name == b"DEL":
            if n < 2:
                return wrong_arity(name)
            return encode(sum(db.pop(k, None) is not None for k in cmd[1:]))
        if name == b"EXISTS":
            if n < 2:
                return wrong_arity(name)
            return encode(sum(k in db for k in cmd[1:]))
        if name == b"INCR":
            if n != 2:
                return wrong_arity(name)
            try:
                number = int(db.get(cmd[1], b"0")) + 1
            except ValueError:
                return error("ERR value is not an integer or out of range")
            db[cmd[1]] = b"%d" % number
            return encode(number)
        if name == b"DBSIZE":
            return encode(len(db))
        if name in (b"FLUSHDB", b"FLUSHALL"):
            db.clear()
            return OK
        if name == b"QUIT":
            self._quit = True
            return OK
        reply = local_reply(name, cmd, SERVER)
        return unknown(name) if reply is None else reply


async def _setup() -> tuple[Callable[[], asyncio.Protocol], Callable[[], Awaitable[None]]]:
    db: dict[bytes, bytes] = {}

    async def cleanup() -> None:
        return None

    return (lambda: PlainProtocol(db)), cleanup


def main() -> int:
    args = _resp.parse_args(__doc__.split("\n\n")[0])
    return _resp.run(args, _setup, __file__)


if __name__ == "__main__":
    sys.exit(main())
