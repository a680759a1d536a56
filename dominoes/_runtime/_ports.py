"""Refuse a port that another socket holds, and hold it for the service's lifetime.

Why
---
Every replica binds the service's port with SO_REUSEPORT so that the kernel
spreads connections (and datagrams) over the replicas.  But Linux lets *any*
socket of the same user that also sets SO_REUSEPORT join that port: another
dominoes service started on it, the same service started twice with different
run dirs, a leftover replica whose supervisor is gone (or that is SIGSTOPped),
any program using SO_REUSEPORT.  The kernel then silently hands that socket a
share of the service's connections (redis-cli's PING reached the counter
example and read "Protocol error"; a second KV answered from an empty
keyspace).  SO_REUSEPORT cannot tell "my replicas" from "anyone with my uid",
so the supervisor checks the port itself before any replica starts, and then
holds it, so that the check stays true while the service runs.

How (each step checked with small experiments on Linux 6.18)
------------------------------------------------------------
TCP, at every address ``create_server`` would listen on:

1. Probe: bind a socket with SO_REUSEADDR but *not* SO_REUSEPORT, and close
   it.  The bind fails with EADDRINUSE if anything listens there (with or
   without SO_REUSEPORT) or holds the port bound without SO_REUSEADDR, which
   is what another supervisor's guard (2) does.  SO_REUSEADDR lets it pass
   TIME_WAIT connections, so a service restarted right after it stopped is
   not refused.
2. Guard: bind a socket with SO_REUSEPORT only, and never listen on it.  The
   replicas (SO_REUSEADDR + SO_REUSEPORT, same uid) still bind and listen
   next to it, while every later probe fails: a second service is refused as
   long as this supervisor lives, also while none of its replicas holds the
   port (starting up, or all of them restarting at once).  A socket that is
   bound but not listening is in no listening hash and no reuseport group, so
   it never receives a connection.  It must not set SO_REUSEADDR: Linux lets
   non-listening SO_REUSEADDR sockets share a port, so a probe would pass it.
   An SO_REUSEPORT-only bind fails next to TIME_WAIT connections of a server
   that did not set SO_REUSEPORT (a redis-server just stopped, say); only then
   the guard binds with both options and clears SO_REUSEADDR after the bind.
   On this kernel later probes then fail (their conflict check reads the live
   flags); a kernel whose bind fast path trusts the flags a socket had when it
   bound may let a probe pass such a guard.

UDP, at the first address ``create_datagram_endpoint`` would bind:

   UDP has no TIME_WAIT, so a bind with neither option is an exact, atomic
   probe: it fails if any UDP socket holds the address.  That socket then
   becomes the guard: SO_REUSEPORT set *after* the bind lets the replicas
   (same uid) bind next to it, since UDP's conflict check reads the live
   flags, while a later plain probe still fails.  A bound UDP socket would get
   its share of the datagrams, so the guard connects to its own address: a
   connected socket only matches datagrams from its peer (the service's own
   port, which never sends to itself), and reuseport selection skips
   connected sockets (since Linux 5.8).  Connecting a wildcard-bound
   socket (0.0.0.0, ::) pins its local address to loopback, so for a wildcard
   host the UDP guard refuses wildcard and loopback probes only; the TCP
   guard is not affected.

Probe and guard are two steps for TCP, so two supervisors could both pass
their probes before either binds its guard.  A claim therefore takes a lock
for those microseconds: an abstract unix socket named for the port (per
network namespace, like ports; the kernel drops it if the process dies).

What this cannot stop: a socket of the same user that sets SO_REUSEPORT and
binds *after* the service started still joins the port; that is what
SO_REUSEPORT is for.  Port 0 (each replica gets an ephemeral port of its own)
is not claimed, nor is any port for a service with neither a TCP handler nor
a UDP event.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Iterator
from typing import Final

__all__ = ("PortClaim", "PortInUseError", "claim_ports")

#: Seconds to wait for another claim of the same port to finish (it takes microseconds).
LOCK_TIMEOUT: Final = 5.0
_LOCK_POLL: Final = 0.001


class PortInUseError(RuntimeError):
    """Another socket holds the service's port."""

    def __init__(self, host: str, port: int, proto: str) -> None:
        super().__init__(
            f"port {port} on {host} is in use ({proto}); "
            "stop what holds it or choose another --port"
        )
        self.host = host
        self.port = port
        self.proto = proto


class PortClaim:
    """The guard sockets that hold a service's port until :meth:`close`."""

    def __init__(self, sockets: list[socket.socket] | None = None) -> None:
        self.sockets: list[socket.socket] = sockets if sockets is not None else []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def __enter__(self) -> PortClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim_ports(
    host: str, port: int, *, tcp: bool, udp: bool, lock_timeout: float = LOCK_TIMEOUT
) -> PortClaim:
    """Check that no other socket holds ``port`` on ``host`` and hold it (see the module doc).

    Raises :class:`PortInUseError` if one does; other bind errors (an address
    that is not local, a privileged port) as :class:`RuntimeError`, and a port
    out of range as :class:`ValueError`.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0-65535, not {port}")
    if port == 0 or not (tcp or udp):
        return PortClaim()
    claim = PortClaim()
    with _claim_lock(port, lock_timeout):
        try:
            if tcp:
                for family, addr in _addresses(host, port, socket.SOCK_STREAM):
                    claim.sockets.append(_guard_tcp(host, port, family, addr))
            if udp:
                claim.sockets.append(_guard_udp(host, port))
        except BaseException:
            claim.close()
            raise
    return claim


def _addresses(host: str, port: int, kind: int) -> list[tuple[int, tuple[object, ...]]]:
    """The (family, address) pairs asyncio would bind for ``host`` (deduplicated, in order)."""
    try:
        if kind == socket.SOCK_STREAM:  # as create_server: "" is every interface
            infos = socket.getaddrinfo(host or None, port, 0, kind, 0, socket.AI_PASSIVE)
        else:  # as create_datagram_endpoint(local_addr=(host, port))
            infos = socket.getaddrinfo(host, port, 0, kind)
    except socket.gaierror as exc:
        raise RuntimeError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    seen: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, addr in infos:
        if (family, addr) not in seen:
            seen.append((family, addr))
    return seen


def _guard_tcp(host: str, port: int, family: int, addr: tuple[object, ...]) -> socket.socket:
    def tcp_socket(*options: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        for option in options:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if family == socket.AF_INET6:  # as asyncio's create_server: no dual stack
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return sock

    with tcp_socket(socket.SO_REUSEADDR) as probe:
        _bind(probe, addr, host, port, "tcp")
    guard = tcp_socket(socket.SO_REUSEPORT)
    try:
        try:
            _bind(guard, addr, host, port, "tcp")
            return guard
        except PortInUseError:
            guard.close()
        # The probe passed: TIME_WAIT connections of a server without SO_REUSEPORT.
        guard = tcp_socket(socket.SO_REUSEADDR, socket.SO_REUSEPORT)
        _bind(guard, addr, host, port, "tcp")
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        return guard
    except BaseException:
        guard.close()
        raise


def _guard_udp(host: str, port: int) -> socket.socket:
    for family, addr in _addresses(host, port, socket.SOCK_DGRAM):
        try:
            guard = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            continue  # as asyncio: a family this host cannot use
        try:
            _bind(guard, addr, host, port, "udp")
            guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            guard.connect(guard.getsockname())
        except BaseException:
            guard.close()
            raise
        return guard
    raise RuntimeError(f"cannot bind UDP on {host}:{port}: no usable address")


def _bind(sock: socket.socket, addr: tuple[object, ...], host: str, port: int, proto: str) -> None:
    try:
        sock.bind(addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port, proto) from None
        raise RuntimeError(
            f"cannot bind {proto.upper()} on {host}:{port}: {exc.strerror}"
        ) from None


@contextlib.contextmanager
def _claim_lock(port: int, timeout: float) -> Iterator[None]:
    """Serialise claims of ``port`` in this network namespace: bind an abstract unix socket."""
    name = f"dominoes/port-claim/{port}"
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                lock.bind("\0" + name)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"cannot claim port {port}: another process has held the lock @{name} "
                    f"for {timeout:g}s"
                )
            time.sleep(_LOCK_POLL)
        yield
    finally:
        lock.close()
