"""Control sockets: how ``dominoes stats``, ``dominoes top`` and local clients reach a service.

Each replica serves a unix socket ``replica-<i>.sock`` (mode 0600) in the
service's run directory, speaking JSON lines: ``{"op": "stats"}`` returns its
``statistics()`` structs, ``{"op": "digest"}`` its state digest,
``{"op": "snapshot"}`` writes a durable snapshot now and says where,
``{"op": "events"}`` lists the events bound now
(:func:`serve_replica`).

The supervisor serves ``control.sock`` (:class:`ControlServer`), also JSON
lines: ``{"op": "status"}`` is its own reading of the log and the replicas,
``{"op": "stats"}`` gathers every replica's report into one document (asked
with :func:`ask`), ``{"op": "snapshot"}`` has the lowest-numbered live
replica write a durable snapshot (``dominoes snapshot``, through
:func:`request_snapshot`), and ``{"op": "connect"}`` makes the connection a local
client's (``dominoes.connect``): the reply carries the log's file
descriptors (``SCM_RIGHTS``), and the connection stays open for the client's
lifetime; its close gives the client's line back (see ``_leases``).

Both ends check the other's uid with ``SO_PEERCRED`` (see ``_peercred``): a
replica answers only its own uid, as the supervisor does, and :func:`ask`
believes only a server of its own uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import orjson

from .._core._errors import DurabilityError
from .._core._log import ReplicaState
from ._peercred import check_server, peer_refusal
from ._top import control_request

if TYPE_CHECKING:
    from ._replica import Replica
    from ._supervisor import Child, Supervisor

__all__ = (
    "ControlServer",
    "SnapshotRequestError",
    "ask",
    "replica_socket",
    "request_snapshot",
    "serve_replica",
)

log = logging.getLogger("dominoes.supervisor")

ASK_TIMEOUT: Final = 2.0
#: How long a snapshot may take (``dominoes snapshot``): the forked child
#: encodes and writes the whole state, which takes minutes for a big one.
SNAPSHOT_TIMEOUT: Final = 3600.0


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
    if replica.reports:  # the service's own sections (the netstack's counters, ...)
        sections: dict[str, Any] = {}
        for name, fn in replica.reports.items():
            try:
                sections[name] = msgspec.to_builtins(fn(None))
            except Exception as exc:  # noqa: BLE001 - a report's bug must not break stats
                sections[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["reports"] = sections
    if replica.persist.active:  # --durable: the log writer's progress as this replica sees it
        report["durability"] = replica.persist.status()
    if replica.web is not None:  # an ASGI app: its connections, requests and subscribers
        report["web"] = {
            "connections": replica.web.connections,
            "requests": replica.web.requests,
            "header_timeouts": replica.web.header_timeouts,
            **replica.feeds.statistics(),
        }
    if replica.across_machines:  # --log nats://: its read fences and snapshots
        report["fences"] = replica.fences.summary()
        report["snapshots"] = {
            "written": replica.persist.snapshots_written,
            "failed": replica.persist.snapshot_failures,
        }
    return report


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: str) -> None:
    """Answer a peer refused by ``SO_PEERCRED`` (``_peercred.peer_refusal``) with why.

    Its request is read first (for ``ASK_TIMEOUT`` at most, a line too long
    ending the read), so the peer's write cannot fail with EPIPE before it
    has read why it is refused, and a peer that sends nothing cannot hold
    the connection open.
    """
    with contextlib.suppress(TimeoutError, ValueError):
        async with asyncio.timeout(ASK_TIMEOUT):
            await reader.readline()
    writer.write(orjson.dumps({"error": refusal}) + b"\n")
    await writer.drain()


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
                await refuse(reader, writer, refusal)
                return
            while line := await reader.readline():
                try:
                    op = orjson.loads(line).get("op")
                    if op == "stats":
                        reply: Any = replica_report(replica)
                    elif op == "digest":
                        seq, digest = replica.digest()
                        reply = {"seq": seq, "digest": digest}
                    elif op == "snapshot":
                        reply = await _snapshot_reply(replica)
                    elif op == "events":  # bound now: reconfigurations add some
                        # as a linearizable read: every reconfiguration that any
                        # replica applied (acknowledged to its client) counts
                        replica.sync()
                        reply = {"events": replica.core.machine.registry.events()}
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


async def _snapshot_reply(replica: Replica) -> dict[str, Any]:
    """Write a durable snapshot now (``persist.snapshot``); where, or why not."""
    try:
        info = await replica.persist.snapshot()
    except DurabilityError as exc:
        return {"error": str(exc)}
    return {
        "replica": replica.index,
        "seq": info.seq,
        "path": str(info.path),
        "pause": info.pause,
    }


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


class ControlServer:
    """The supervisor's ``control.sock``: status, stats, and local clients' connects.

    Only the service's uid may use it: the socket is 0600 in a 0700 run
    directory, and a peer of another uid (``SO_PEERCRED``) is refused with a
    reason.  The connections stay open as long as their peers want (a local
    client holds its own for its lifetime); :meth:`close` ends them all.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._server: asyncio.Server | None = None
        # Open control connections (clients hold theirs for their lifetime).
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(path))
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop accepting, close every connection and let its handler finish."""
        if self._server is not None:
            self._server.close()
        # Rather than leave asyncio.run to cancel the handlers (3.11's stream
        # callback then logs a CancelledError traceback); local clients learn
        # that the service stopped.
        for writer in list(self._connections.values()):
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        leases = self._sup.leases
        client_line: int | None = None  # set by a "connect": the connection is a local client
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            refusal = peer_refusal(
                writer.get_extra_info("socket"), f"service {self._sup.service.name!r}", "control"
            )
            if refusal is not None:
                await refuse(reader, writer, refusal)
                return
            while line := await reader.readline():
                fds: list[int] = []
                try:
                    request = json.loads(line)
                    if isinstance(request, dict) and request.get("op") == "connect":
                        if client_line is not None:
                            raise ValueError("this connection is already a local client")
                        client_line = leases.grant(writer)
                        reply, fds = leases.welcome(client_line)
                    elif isinstance(request, dict) and request.get("op") == "stats":
                        reply = await self.stats()
                    elif isinstance(request, dict) and request.get("op") == "snapshot":
                        reply = await self.snapshot()
                    elif isinstance(request, dict) and request.get("op") == "events":
                        reply = await self.events()
                    else:
                        reply = self.handle(request)
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                data = json.dumps(reply).encode() + b"\n"
                if fds:
                    await send_with_fds(writer, data, fds)
                else:
                    writer.write(data)
                    await writer.drain()
        except OSError as exc:  # the peer went away mid-reply
            log.info("control connection lost: %s", exc)
        finally:
            writer.close()
            if task is not None:
                self._connections.pop(task, None)
            if client_line is not None:
                leases.release(client_line)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to a request other than ``connect``, ``stats`` and ``snapshot``."""
        op = request.get("op")
        if op == "status":
            return self.status()
        raise ValueError(f"unknown op {op!r}")

    def _summary(self, child: Child) -> dict[str, Any]:
        """What the supervisor itself knows of one replica."""
        return {
            "index": child.index,
            "pid": child.proc.pid if child.proc else None,
            "core": child.core,
            "ready": child.ready,
            "restarts": child.restarts,
            "state": ReplicaState.NAMES[self._sup.log.state(child.index)],
        }

    async def stats(self) -> dict[str, Any]:
        """Every replica's statistics (asked over its control socket) and the log's."""
        sup = self._sup

        async def one(child: Child) -> dict[str, Any]:
            entry = self._summary(child)
            if child.ready:
                try:
                    entry["report"] = await ask(
                        replica_socket(sup.run_dir, child.index), {"op": "stats"}
                    )
                except (OSError, TimeoutError) as exc:
                    entry["error"] = f"no answer: {exc or type(exc).__name__}"
            return entry

        replicas = await asyncio.gather(*(one(c) for c in sup.children))
        return {
            "service": sup.service.name,
            "supervisor": {"pid": os.getpid(), "replicas": sup.n, "run_dir": str(sup.run_dir)},
            "deaths": sup.deaths,
            "poisoned": sup.watchdog.poisoned,
            "replicas": replicas,
            "log": msgspec.to_builtins(sup.log.statistics()),
            "writer": sup.writer.summary() if sup.writer is not None else None,
            "bridge": sup.bridge.summary() if sup.bridge is not None else None,
        }

    async def snapshot(self) -> dict[str, Any]:
        """Have the lowest-numbered live replica write a durable snapshot now; its reply.

        That replica is the one that writes the scheduled snapshots too.  The
        reply is ``{"replica", "seq", "path", "pause"}`` or ``{"error"}`` (the
        service is not durable, the replica is recovering, the write failed).
        A service with partitioned components: every live replica writes its
        own, and ``"each"`` lists their replies (the first one's are the top's).
        """
        sup = self._sup
        live = [
            c
            for c in sorted(sup.children, key=lambda c: c.index)
            if c.ready and sup.log.state(c.index) == ReplicaState.LIVE
        ]
        if not live:
            return {"error": "no live replica to take the snapshot; try again"}

        async def one(index: int) -> dict[str, Any]:
            try:
                got: dict[str, Any] = await ask(
                    replica_socket(sup.run_dir, index), {"op": "snapshot"}, SNAPSHOT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                return {"error": f"replica {index} did not answer: {exc or type(exc).__name__}"}
            return got

        if not sup.partitioned:
            return await one(live[0].index)
        replies = await asyncio.gather(*(one(c.index) for c in live))
        for got in replies:
            if "error" in got:
                return got
        return {**replies[0], "each": replies}

    async def events(self) -> dict[str, Any]:
        """The events bound now, as a live replica sees them: ``{"events": [...]}``.

        A local client asks when it is given an event its welcome did not
        list: a reconfiguration may have bound it since.
        """
        sup = self._sup
        for child in sorted(sup.children, key=lambda c: c.index):
            if not child.ready or sup.log.state(child.index) != ReplicaState.LIVE:
                continue
            try:
                reply: dict[str, Any] = await ask(
                    replica_socket(sup.run_dir, child.index), {"op": "events"}
                )
            except (OSError, TimeoutError):
                continue
            return reply
        return {"error": "no live replica answered"}

    def status(self) -> dict[str, Any]:
        sup = self._sup
        stats = sup.log.statistics()
        return {
            "service": sup.service.name,
            "replicas": [
                self._summary(c) | {"cursor": sup.log.cursor(c.index)} for c in sup.children
            ],
            "log": msgspec.to_builtins(stats),
            "clients": sup.leases.lines(),
        }


async def send_with_fds(writer: asyncio.StreamWriter, data: bytes, fds: list[int]) -> None:
    """Write ``data`` with ``fds`` attached (SCM_RIGHTS) on a stream's socket.

    asyncio transports cannot pass fds, so this goes through a dup of the
    transport's socket, once the transport has flushed what it buffered (the
    bytes stay in order).
    """
    transport = writer.transport
    for _ in range(1000):
        if not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.001)
    else:
        raise TimeoutError("the control connection does not drain")
    sock: socket.socket = writer.get_extra_info("socket").dup()
    try:
        for _ in range(1000):
            try:
                sent = socket.send_fds(sock, [data], fds)
                break
            except (BlockingIOError, InterruptedError):
                await asyncio.sleep(0.001)
        else:
            raise TimeoutError("the control connection does not take the reply")
    finally:
        sock.close()
    if sent < len(data):
        writer.write(data[sent:])
        await writer.drain()


class SnapshotRequestError(Exception):
    """``dominoes snapshot`` could not have a snapshot written; the message says why."""


def request_snapshot(run_dir: Path, timeout: float = SNAPSHOT_TIMEOUT) -> dict[str, Any]:
    """Ask the service at ``run_dir`` for a durable snapshot now (blocking).

    Returns the replica's reply, ``{"replica", "seq", "path", "pause"}``;
    raises :class:`SnapshotRequestError` with one line if there is no service
    there, it is not durable, or it did not answer within ``timeout`` seconds.
    """
    try:
        (reply,) = control_request(run_dir, [{"op": "snapshot"}], timeout)
    except (ConnectionError, RuntimeError) as exc:
        raise SnapshotRequestError(str(exc)) from None
    if not isinstance(reply, dict):
        raise SnapshotRequestError(f"unreadable answer from {run_dir / 'control.sock'}: {reply!r}")
    if "error" in reply:
        raise SnapshotRequestError(str(reply["error"]))
    return reply
