"""The replicated TFTP server (``dominoes.components.ctp:tftp``) for the end-to-end tests:
starting it, reading its counters, and raw TFTP packets.

``tftp_service(root, run_dir, writable=..., host=...)`` runs
``dominoes run dominoes.components.ctp:tftp --root ROOT [--writable]`` with two
replicas on a free port.  ``stats(svc)`` is the document ``dominoes stats --json``
prints (asked through the control socket: the same request, without a process per
reading); ``ctp(doc, i)`` is replica ``i``'s ``ctp`` report, ``settled(svc)`` a
reading where every replica had applied the same log position (the replicated
counters are then equal).  The packet builders and ``parse`` speak RFC 1350/2347.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .harness import Service, running, wait_until

TARGET = "dominoes.components.ctp:tftp"

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


@contextlib.contextmanager
def tftp_service(
    root: Path, run_dir: Path, *, writable: bool = False, host: str | None = None
) -> Iterator[Service]:
    """A 2-replica TFTP service of ``root``, stopped afterwards."""
    args: tuple[str, ...] = ("--root", str(root))
    if writable:
        args += ("--writable",)
    if host is not None:
        args += ("--host", host)
    with running(TARGET, run_dir, replicas=2, args=args) as svc:
        yield svc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- readings -------------------------------------------------------------------------------------


def stats(svc: Service) -> dict[str, Any]:
    """What ``dominoes stats --json`` prints, asked through the control socket."""
    return svc.control({"op": "stats"})


def ctp(doc: dict[str, Any], replica: int) -> dict[str, Any]:
    """Replica ``replica``'s ``ctp`` report in a stats document (``{}`` if it has none:
    a replica that is restarting does not report)."""
    for r in doc["replicas"]:
        if r["index"] == replica:
            report = r.get("report") or {}
            section: dict[str, Any] = (report.get("reports") or {}).get("ctp") or {}
            return section
    return {}


def replica_report(doc: dict[str, Any], replica: int) -> dict[str, Any]:
    """Replica ``replica``'s ``replica`` section (applied_seq, core, ingress)."""
    for r in doc["replicas"]:
        if r["index"] == replica:
            section: dict[str, Any] = (r.get("report") or {}).get("replica") or {}
            return section
    return {}


def counter(section: dict[str, Any], name: str) -> int:
    """A ctp counter: ``retransmitted`` or ``tftp.rrq`` (0 when it never moved)."""
    value: Any = section
    for part in name.split("."):
        if not isinstance(value, dict):
            return 0
        value = value.get(part, 0)
    return int(value) if isinstance(value, int) else 0


def counters(svc: Service, name: str) -> list[int]:
    """``name`` on every replica (one reading)."""
    doc = stats(svc)
    return [counter(ctp(doc, r["index"]), name) for r in doc["replicas"]]


def wait_counter(svc: Service, name: str, at_least: int, timeout: float = 30.0) -> list[int]:
    """Wait until ``name`` is at least ``at_least`` on every replica; the values then."""
    seen: list[int] = []

    def reached() -> bool:
        seen[:] = counters(svc, name)
        return bool(seen) and min(seen) >= at_least

    try:
        wait_until(reached, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{name} did not reach {at_least} on every replica: {seen}") from None
    return seen


def settled(svc: Service, timeout: float = 30.0) -> dict[str, Any]:
    """A stats reading where every replica is live and had applied the same log position
    (each replica reports when it is asked: an idle service gets there)."""
    seen: list[dict[str, Any]] = []

    def same() -> bool:
        doc = stats(svc)
        seen[:] = [doc]
        if any(r.get("state") != "live" for r in doc["replicas"]):
            return False
        seqs = {replica_report(doc, r["index"]).get("applied_seq") for r in doc["replicas"]}
        return len(seqs) == 1 and None not in seqs

    wait_until(same, timeout=timeout, interval=0.05)
    return seen[0]


def wait_all_ready(svc: Service, timeout: float = 60.0) -> None:
    """Wait until every replica is ready (after a kill, the supervisor restarts it)."""
    wait_until(lambda: all(r["ready"] for r in svc.status()["replicas"]), timeout=timeout)


# --- packets --------------------------------------------------------------------------------------


def request(op: int, name: str | bytes, mode: str = "octet", **options: str) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    body = raw + b"\0" + mode.encode() + b"\0"
    for key, value in options.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    return struct.pack("!H", op) + body


def rrq(name: str | bytes, mode: str = "octet", **options: str) -> bytes:
    return request(RRQ, name, mode, **options)


def wrq(name: str | bytes, mode: str = "octet", **options: str) -> bytes:
    return request(WRQ, name, mode, **options)


def data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", DATA, block) + payload


def ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block)


def error(code: int, text: str = "") -> bytes:
    return struct.pack("!HH", ERROR, code) + text.encode() + b"\0"


def parse(packet: bytes) -> tuple[int, Any]:
    """(opcode, what it carries): DATA/ACK: the block (and payload); ERROR: (code, text);
    OACK: the options."""
    (op,) = struct.unpack_from("!H", packet)
    if op == DATA:
        (block,) = struct.unpack_from("!H", packet, 2)
        return op, (block, packet[4:])
    if op == ACK:
        return op, struct.unpack_from("!H", packet, 2)[0]
    if op == ERROR:
        (code,) = struct.unpack_from("!H", packet, 2)
        return op, (code, packet[4:].rstrip(b"\0").decode("utf-8", "replace"))
    if op == OACK:
        words = packet[2:].split(b"\0")[:-1]
        return op, {k.decode(): v.decode() for k, v in zip(words[::2], words[1::2], strict=True)}
    return op, packet[2:]


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def ask(
    sock: socket.socket, packet: bytes, addr: tuple[str, int], *, timeout: float = 10.0
) -> tuple[bytes, tuple[str, int]]:
    """Send ``packet`` and wait for one reply (and where it came from); a lost
    exchange is asked again once a second, within ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        sock.sendto(packet, addr)
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no reply to {packet[:40]!r} in {timeout} s")
        sock.settimeout(min(1.0, left))
        try:
            reply, src = sock.recvfrom(70000)
        except TimeoutError:
            continue
        return reply, (src[0], src[1])


def drain(sock: socket.socket) -> int:
    """Read what is waiting on ``sock`` without blocking; how many datagrams."""
    n = 0
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.recvfrom(70000)
            except (BlockingIOError, ConnectionRefusedError):
                return n
            n += 1
    finally:
        sock.setblocking(True)
