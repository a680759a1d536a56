"""Control sockets: how ``dominoes stats`` and ``dominoes top`` reach live replicas.

Each replica serves a unix socket ``replica-<i>.sock`` (mode 0600) in the
service's run directory, speaking JSON lines: ``{"op": "stats"}`` returns its
``statistics()`` structs, ``{"op": "digest"}`` its state digest.  The
supervisor's ``control.sock`` gathers them into one document.

Both ends check the other's uid with ``SO_PEERCRED`` (see ``_peercred``): a
replica answers only its own uid, as the supervisor does, and :func:`ask`
believes only a server of its own uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import orjson

from ._peercred import check_server, peer_refusal

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("ask", "replica_socket", "serve_replica")

ASK_TIMEOUT: Final = 2.0


def replica_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"replica-{index}.sock"


def replica_report(replica: Replica) -> dict[str, Any]:
    """Everything one replica knows about itself, as JSON-ready builtins."""
    report: dict[str, Any] = msgspec.to_builtins(
        {
            "replica": replica.statistics(),
            "log": replica.log_statistics(),
            "registry": replica.registry_statistics(),
            "divergences": replica.divergences,
        }
    )
    return report


async def serve_replica(replica: Replica) -> asyncio.Server:
    path = replica_socket(replica.run_dir, replica.index)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            refusal = peer_refusal(
                writer.get_extra_info("socket"),
                f"replica {replica.index} of service {replica.service.name!r}",
                f"replica-{replica.index}.sock",
            )
            if refusal is not None:
                # Read the request first, so the peer's write cannot fail with
                # EPIPE before it has read why it is refused.
                with contextlib.suppress(TimeoutError, ValueError):
                    async with asyncio.timeout(ASK_TIMEOUT):
                        await reader.readline()
                writer.write(orjson.dumps({"error": refusal}) + b"\n")
                await writer.drain()
                return
            while line := await reader.readline():
                try:
                    op = orjson.loads(line).get("op")
                    if op == "stats":
                        reply: Any = replica_report(replica)
                    elif op == "digest":
                        seq, digest = replica.digest()
                        reply = {"seq": seq, "digest": digest}
                    else:
                        reply = {"error": f"unknown op {op!r}"}
                except Exception as exc:  # noqa: BLE001 - reported to the asker
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(orjson.dumps(reply) + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, str(path))
    os.chmod(path, 0o600)
    return server


async def ask(path: Path, request: dict[str, Any], timeout: float = ASK_TIMEOUT) -> Any:  # noqa: ASYNC109
    """One request on a JSON-lines unix socket; the decoded reply.

    Raises ``ForeignServerError`` (a ``PermissionError``) if another uid serves ``path``.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        try:
            check_server(writer.get_extra_info("socket"), path)
            writer.write(orjson.dumps(request) + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise ConnectionError(f"{path} closed the connection")
    return orjson.loads(line)
