"""Who is at the other end of a unix socket, and the one rule every socket of a service keeps.

A service's sockets (the supervisor's ``control.sock``, each replica's
``replica-<i>.sock`` and ``monitor-<i>.sock``) hand out its statistics, its
log and a Python shell: only the uid the service runs as may use them.  Their
0600 mode in a 0700 run directory already keeps other users out; the
kernel's ``SO_PEERCRED`` (the uid of the process at the other end, which it
cannot forge) keeps them out even where the file system would not, e.g. a
socket hard-linked or re-moded somewhere reachable.

The rule works both ways.  A server refuses a peer of another uid
(:func:`peer_refusal`).  A client refuses a server of another uid
(:func:`check_server`): in a run directory someone else created or swapped
(``/tmp`` is shared), ``control.sock`` may be another user's listener that
answers with a made-up document, or takes the request and what comes with it.
SO_PEERCRED on the client's end gives the credentials of the process that
called ``listen()``, so the check cannot be fooled by who created the file.
Every client of a service socket connects through :func:`connect_checked`,
which does both in one step.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path
from typing import Final, NamedTuple, Protocol

__all__ = (
    "ForeignServerError",
    "Peer",
    "check_server",
    "connect_checked",
    "peer",
    "peer_refusal",
)

log = logging.getLogger("dominoes.peercred")

#: ``struct ucred`` as SO_PEERCRED returns it: pid, uid, gid.
UCRED: Final = struct.Struct("3i")


class _Sockopts(Protocol):
    """What SO_PEERCRED needs: a socket, or asyncio's and uvloop's stand-ins for one."""

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


class Peer(NamedTuple):
    """The credentials of the process at the other end of a unix socket."""

    pid: int
    uid: int
    gid: int


class ForeignServerError(PermissionError):
    """A service socket is served by a process of another uid: it is not to be trusted."""


def peer(sock: _Sockopts) -> Peer:
    """The peer's credentials (``OSError`` if the socket cannot tell, e.g. closed)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    return Peer(*UCRED.unpack(raw))


def peer_refusal(sock: _Sockopts | None, what: str, where: str) -> str | None:
    """Why the peer of a connection accepted on one of ``what``'s sockets is refused, or None.

    ``what`` names the service (``"service 'kv'"``), ``where`` the socket in
    the warning logged on a refusal (``"control"``).  The reason starts with
    ``PermissionError:``, which clients turn back into that exception.
    """
    if sock is None:
        return "PermissionError: cannot read the peer's credentials (connection closed)"
    try:
        who = peer(sock)
    except OSError as exc:
        return f"PermissionError: cannot read the peer's credentials: {exc}"
    mine = os.geteuid()
    if who.uid == mine:
        return None
    log.warning("%s: refused pid %d of uid %d (service uid %d)", where, who.pid, who.uid, mine)
    return (
        f"PermissionError: {what} runs as uid {mine}; "
        f"a process of uid {who.uid} may not attach to it (only the same uid can)"
    )


def check_server(sock: _Sockopts, path: Path | str) -> None:
    """Raise :class:`ForeignServerError` unless the server at ``path`` runs as this uid.

    ``sock`` is the client's connected socket; call this before sending
    anything on it, and before believing anything read from it.
    """
    try:
        who = peer(sock)
    except OSError as exc:
        raise ForeignServerError(f"cannot tell who serves {path}: {exc}") from None
    mine = os.geteuid()
    if who.uid != mine:
        raise ForeignServerError(
            f"{path} is served by uid {who.uid} (pid {who.pid}), not by this user (uid {mine}); "
            "refusing to trust it: another user created or replaced the service's run directory"
        )


def connect_checked(path: Path | str, timeout: float | None) -> socket.socket:
    """A unix stream socket connected to ``path``, whose server runs as this uid.

    The socket is blocking with ``timeout`` (``socket.settimeout``; None: no
    limit).  A unix connect completes at once, or waits only while the
    server's accept queue is full.  What the connect raises propagates as is
    (``FileNotFoundError`` or ``ConnectionRefusedError``: nobody serves
    ``path``; ``TimeoutError``), and :class:`ForeignServerError` (a
    ``PermissionError``) if a process of another uid serves it; either way the
    socket is closed.  Nothing is sent before the check.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        check_server(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock
