"""A small RESP client that keeps every reply's type, for the tests that compare
the KV service's replies with a real ``redis-server``'s, read by the same client.

:class:`Wire` is one connection in RESP2 or RESP3 (``HELLO 3``);
:func:`wires_on_every_replica` opens one on each replica of the KV service;
:class:`Pair` sends the same commands to the oracle and to the service.
"""

from __future__ import annotations

import socket
from typing import Any


class Wire:
    """One connection, RESP2 or RESP3 (``HELLO 3``); replies as tagged Python values.

    ``bytes`` a bulk string, ``int`` an integer, ``list`` an array, ``True`` or
    ``False`` a RESP3 boolean, and tuples for the rest: ``("+", text)``,
    ``("-", error text)``, ``("nil",)`` RESP2's null bulk, ``("nil*",)`` RESP2's
    null array, ``("_",)`` RESP3's null, ``(",", text)`` a double, ``("(", text)``
    a big number, ``("~", members sorted)`` a set, ``("%", [(key, value), ...])``
    a map, ``(">", items)`` a push, ``("=", text)`` a verbatim string (its bytes,
    without the ``txt:`` format).  :func:`plain` forgets the last two.
    """

    def __init__(
        self, port: int, proto: int = 2, password: str | None = None, *, timeout: float = 20
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.proto = proto
        if password is not None:
            assert self.call("AUTH", password) == ("+", "OK")
        if proto == 3:
            assert isinstance(self.call("HELLO", "3"), tuple)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, *args: str | bytes | int) -> None:
        """Send one command; its reply is left for :meth:`read`."""
        words = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        frame = [b"*%d\r\n" % len(words)]
        for w in words:
            frame.append(b"$%d\r\n%s\r\n" % (len(w), w))
        self.sock.sendall(b"".join(frame))

    def call(self, *args: str | bytes | int) -> Any:
        self.send(*args)
        return self.read()

    def read(self) -> Any:
        """The next reply (or push) on the connection."""
        line = self.reader.readline()
        assert line.endswith(b"\r\n"), f"connection closed: {line!r}"
        tag, rest = line[:1], line[1:-2]
        if tag == b"$":
            n = int(rest)
            if n < 0:
                return ("nil",)
            return self.reader.read(n + 2)[:-2]
        if tag == b":":
            return int(rest)
        if tag in (b"+", b"-", b",", b"("):
            return (tag.decode(), rest.decode())
        if tag == b"_":
            return ("_",)
        if tag == b"#":
            return rest == b"t"
        if tag == b"*":
            n = int(rest)
            return ("nil*",) if n < 0 else [self.read() for _ in range(n)]
        if tag == b">":
            return (">", [self.read() for _ in range(int(rest))])
        if tag == b"~":
            return ("~", sorted((self.read() for _ in range(int(rest))), key=repr))
        if tag == b"%":
            return ("%", [(self.read(), self.read()) for _ in range(int(rest))])
        if tag == b"=":
            return ("=", self.reader.read(int(rest) + 2)[4:-2])
        raise AssertionError(f"unexpected reply {line!r}")

    def closed(self) -> bool:
        """Whether the server closed the connection (EOF, or a reset)."""
        try:
            return self.reader.readline() == b""
        except OSError:
            return True

    def field(self, name: str) -> str:
        """A field of this connection's CLIENT INFO."""
        info = self.call("CLIENT", "INFO")
        text = info[1] if isinstance(info, tuple) and info[0] == "=" else info
        assert isinstance(text, bytes), f"CLIENT INFO: {info!r}"
        for word in text.decode().split():
            key, _, value = word.partition("=")
            if key == name:
                return str(value)
        raise AssertionError(f"no {name} in {text!r}")


def plain(reply: Any) -> Any:
    """``reply`` with its verbatim strings as the bulk strings they carry and its
    pushes as arrays (at any depth): the other types kept."""
    if isinstance(reply, list):
        return [plain(x) for x in reply]
    if isinstance(reply, tuple) and reply:
        if reply[0] == "=":
            return reply[1]
        if reply[0] == ">":
            return [plain(x) for x in reply[1]]
        if reply[0] == "~":
            return ("~", sorted((plain(x) for x in reply[1]), key=repr))
        if reply[0] == "%":
            return ("%", [(plain(k), plain(v)) for k, v in reply[1]])
    return reply


def replica_of(wire: Wire) -> int:
    """The index of the replica ``wire`` is connected to (its CLIENT INFO's ``replica``)."""
    return int(wire.field("replica"))


def wires_on_every_replica(
    port: int,
    proto: int = 2,
    replicas: int = 2,
    *,
    password: str | None = None,
    timeout: float = 20,
) -> dict[int, Wire]:
    """A connection to each replica (SO_REUSEPORT spreads new connections)."""
    found: dict[int, Wire] = {}
    for _ in range(200):
        w = Wire(port, proto, password, timeout=timeout)
        index = replica_of(w)
        if index in found:
            w.close()
            continue
        found[index] = w
        if len(found) == replicas:
            return found
    for w in found.values():
        w.close()
    raise AssertionError(f"connections reached only replicas {sorted(found)}")


class Pair:
    """The same commands to the oracle and to the KV service, in one protocol.

    On the KV side the replicas take turns, so what one writes the other reads.
    :meth:`same` compares the replies after :meth:`normal`: here :func:`plain`
    (a verbatim string is its bulk string, a push its array), which a module
    overrides to forgive what Redis leaves unspecified, or to keep every type.
    """

    def __init__(self, oracle: Wire, ours: dict[int, Wire]) -> None:
        self.oracle = oracle
        self.ours = ours
        self.turn = 0

    def both(self, *args: str | bytes | int) -> tuple[Any, Any]:
        """The oracle's reply and ours, as read (the replicas take turns)."""
        expected = self.oracle.call(*args)
        got = self.ours[self.turn].call(*args)
        self.turn ^= 1
        return expected, got

    def normal(self, args: tuple[str | bytes | int, ...], reply: Any) -> Any:
        return plain(reply)

    def same(self, *args: str | bytes | int) -> Any:
        expected, got = self.both(*args)
        want, have = self.normal(args, expected), self.normal(args, got)
        assert have == want, f"{args}: redis {expected!r}, dominoes {got!r}"
        return got
