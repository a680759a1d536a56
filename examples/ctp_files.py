"""File transfer between two dominoes services over a native CTP profile.

Each service receives files into ``--root``; one started with ``--send FILE
--to HOST:PORT`` also sends that file there, once::

    dominoes run examples.ctp_files:reliable_ordered --port 7001 --root /srv/in
    dominoes run examples.ctp_files:reliable_ordered --port 7002 --root /tmp/out \\
        --send /tmp/big.bin --to 127.0.0.1:7001

The profile is in the name (``reliable_ordered``, ``reliable_unordered``,
``unreliable_fec``); both ends must use the same one.  A transfer is two
messages on one session: a header (``name`` and ``size``), then the file,
which the sender's owners read from disk at send time.  On the receiving
side every replica writes each segment into a part file as it applies it,
and renames it to ``name`` when the last byte is in (so an acknowledged
segment is on disk whichever replica dies).  ``dominoes stats`` shows the
transport's counters under ``ctp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from typing import Any, ClassVar

from dominoes.components.ctp import (
    RELIABLE_ORDERED,
    RELIABLE_UNORDERED,
    UNRELIABLE_FEC,
    Profile,
    Segment,
    Transport,
    compose,
    start,
)
from dominoes.components.ctp import events as t

from dominoes import Component, Context, Option, Replica, Service, on, query, update

HEADER = b"CTPFILE\0"


class Files(Component):
    """Sends files, and receives them into the configured root (see the module doc)."""

    name = "files"
    transient: ClassVar[tuple[str, ...]] = ("_fds",)

    def __init__(self) -> None:
        self.root = ""
        #: sid -> body msg -> [name, size, bytes received]
        self.incoming: dict[str, dict[int, list[Any]]] = {}
        #: files received whole: name -> size
        self.received: dict[str, int] = {}
        #: "host:port path" of every file this service started sending, and which are done
        self.sending: dict[str, str] = {}
        self.sent: list[str] = []
        self._fds: dict[str, int] = {}

    @update
    def configure(self, ctx: Context, root: str) -> None:
        self.root = root

    @update
    def send(self, ctx: Context, host: str, port: int, path: str, size: int, name: str) -> str:
        """Send a file (once: a second call for the same file and peer does nothing)."""
        key = f"{host}:{port} {path}"
        if key in self.sending:
            return self.sending[key]
        transport = ctx.component(Transport)
        sid = transport.session(ctx, host, port).sid
        self.sending[key] = sid
        header = HEADER + json.dumps({"name": name, "size": size}).encode()
        ctx.raise_event(t.SEND, sid, header, "", 0)
        ctx.raise_event(t.SEND, sid, b"", path, size)
        return sid

    @on(t.DRAINED)
    def drained(self, ctx: Context, sid: str) -> None:
        for key, s in self.sending.items():
            if s == sid and key not in self.sent:
                self.sent.append(key)

    @on(t.MESSAGE)
    def message(self, ctx: Context, sid: str, msg: int, data: bytes) -> None:
        if msg % 2 or not data.startswith(HEADER):
            return
        try:
            meta = json.loads(data[len(HEADER) :])
            name = posixpath.basename(str(meta["name"]))
            size = int(meta["size"])
        except (ValueError, KeyError, TypeError):
            return
        if not name or name in (".", ".."):
            return
        body = self.incoming.setdefault(sid, {}).setdefault(msg + 1, [None, size, 0])
        body[0] = name
        self._finish(sid, msg + 1)

    @on(t.DELIVER_TO_APP, order=20)
    def segment(self, ctx: Context, sid: str, seg: Segment) -> None:
        """Every replica writes each segment of a file body as it applies it."""
        if seg.msg % 2 == 0 or not self.root:
            return
        body = self.incoming.setdefault(sid, {}).setdefault(seg.msg, [None, seg.total, 0])
        body[2] += len(seg.payload)
        with contextlib.suppress(OSError):  # a full disk: the file stays incomplete
            os.pwrite(self._fd(sid, seg.msg), seg.payload, seg.off)
        self._finish(sid, seg.msg)

    def _part(self, sid: str, msg: int) -> str:
        safe = sid.replace("/", "_").replace(":", "_")
        return posixpath.join(self.root, f".ctp.{safe}.{msg}.part")

    def _fd(self, sid: str, msg: int) -> int:
        key = f"{sid} {msg}"
        fd = self._fds.get(key)
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            fd = self._fds[key] = os.open(self._part(sid, msg), flags, 0o644)
        return fd

    def _finish(self, sid: str, msg: int) -> None:
        body = self.incoming.get(sid, {}).get(msg)
        if body is None or body[0] is None or body[2] < body[1]:
            return
        name, size, _ = body
        # the replicated state first, the same on every replica whatever its disk does
        del self.incoming[sid][msg]
        self.received[name] = size
        # then this replica's I/O: a full disk leaves its copy incomplete; a part file
        # gone means another replica renamed it first (this one wrote into the same file)
        with contextlib.suppress(OSError):
            fd = self._fd(sid, msg)  # an empty file has no segment that opened it
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(self._fds.pop(f"{sid} {msg}"))
            os.replace(self._part(sid, msg), posixpath.join(self.root, name))

    @query
    def status(self) -> dict[str, Any]:
        return {"received": dict(self.received), "sent": list(self.sent)}


def _file(path: str) -> tuple[str, int]:
    path = os.path.abspath(path)
    return path, os.stat(path).st_size


async def _start(replica: Replica) -> None:
    await start(replica)
    root, _ = _file(str(replica.options["root"]))
    await replica.submit(Files.configure, root)
    send, to = replica.options["send"], replica.options["to"]
    if send and replica.index == 0:
        host, _, port = str(to).rpartition(":")
        path, size = _file(str(send))
        await replica.submit(Files.send, host, int(port), path, size, posixpath.basename(path))


def _service(profile: Profile) -> Service:
    return compose(
        profile,
        f"ctp-files-{profile.name}",
        [Files()],
        on_start=_start,
        options=[
            Option("root", required=True, help="where received files go"),
            Option("send", help="a file to send once the service is up"),
            Option("to", help="HOST:PORT of the service to send it to"),
        ],
        serves=lambda options, host, port: f"udp {host}:{port} ({profile.describe()})",
    )


reliable_ordered = _service(RELIABLE_ORDERED)
reliable_unordered = _service(RELIABLE_UNORDERED)
unreliable_fec = _service(UNRELIABLE_FEC)
__all__ = ("Files", "reliable_ordered", "reliable_unordered", "unreliable_fec")
