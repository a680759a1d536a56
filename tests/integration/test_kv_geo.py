"""Geo commands against a real ``redis-server`` 7.0: the same commands, the same replies.

The subject is a 2-replica KV service; every command goes to one replica or
the other (a write on one, the read that follows on the other, after a
barrier write there so that it has applied the first), in RESP2 and in RESP3.
The oracle is a throwaway ``redis-server`` (``kv_helpers.redis_oracle``).
Replies are compared as redis-py parses them without its response callbacks
(bulk strings stay bytes, RESP3 doubles are floats), errors by their text,
and, for the coordinates (a RESP3 double whose text is Redis's ``%.17Lf``,
not ``%.17g``), byte for byte on a raw socket too.

Replies are compared exactly, order included: the members a search finds and
the order it finds them in without ASC or DESC are Redis's (the KV walks the
same geohash cells the same way), and so are ties in distance under COUNT
(Redis's partial quicksort is ported).
"""

from __future__ import annotations

import shlex
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dominoes.components.kv._service import TABLE
from dominoes.components.kv._table import WRITE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Service
from .kv_helpers import client, clients_on_every_replica, redis_oracle

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

BARRIER = ("DEL", "{barrier}")


def _raw(r: redis.Redis) -> redis.Redis:
    r.response_callbacks.clear()  # compare what the server said, not redis-py's reading of it
    return r


def _port(r: redis.Redis) -> int:
    return int(r.connection_pool.connection_kwargs["port"])


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, redis.Redis]]:
    """The oracle in RESP2 (key 2) and RESP3 (key 3)."""
    with redis_oracle(tmp_path_factory.mktemp("geo-oracle")) as r:
        version = str(r.info("server")["redis_version"])
        if not version.startswith("7.0"):
            pytest.skip(f"the oracle is Redis 7.0, this is {version}")
        clients = {2: _raw(client(_port(r), protocol=2)), 3: _raw(client(_port(r), protocol=3))}
        yield clients
        for c in clients.values():
            c.close()


@pytest.fixture(scope="module")
def ours(svc: Service) -> Iterator[dict[int, dict[int, redis.Redis]]]:
    """The service: ``ours[protocol][replica]``."""
    clients = {
        2: {i: _raw(c) for i, c in clients_on_every_replica(svc.port, protocol=2).items()},
        3: {i: _raw(c) for i, c in clients_on_every_replica(svc.port, protocol=3).items()},
    }
    yield clients
    for by_replica in clients.values():
        for c in by_replica.values():
            c.close()


def _call(r: redis.Redis, args: tuple[Any, ...]) -> Any:
    try:
        return r.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", type(exc).__name__, str(exc))


class Both:
    """Runs each command on the oracle and on the service, alternating replicas."""

    def __init__(
        self, oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]], protocol: int
    ) -> None:
        self.theirs = oracle[protocol]
        self.ours = ours[protocol]
        self.replica = 0
        self.dirty = False  # the last command was a write on the current replica
        self.flush()

    def flush(self) -> None:
        self.theirs.execute_command("FLUSHALL")
        self.ours[self.replica].execute_command("FLUSHALL")
        self.dirty = True

    def run(self, *args: Any) -> tuple[Any, Any]:
        """(the oracle's reply, ours), each command on the next replica."""
        self.replica = 1 - self.replica
        mine = self.ours[self.replica]
        if self.dirty:
            mine.execute_command(*BARRIER)  # applied after the other replica's last write
        spec = TABLE.get(str(args[0]).upper().encode())
        self.dirty = spec is not None and spec.kind is WRITE
        return _call(self.theirs, args), _call(mine, args)

    def same(self, line: str) -> Any:
        theirs, mine = self.run(*shlex.split(line))
        assert mine == theirs, line
        return theirs


# --- scripted cases: each runs from an empty database, in RESP2 and RESP3 -------------------

_CITIES = (
    "GEOADD cities 13.361389 38.115556 Palermo 15.087269 37.502669 Catania "
    "2.3522219 48.856614 Paris -0.1275 51.507222 London -74.0059 40.7128 NewYork "
    "139.6917 35.6895 Tokyo 151.2093 -33.8688 Sydney -43.1729 -22.9068 Rio "
    "-149.9003 61.2181 Anchorage 174.7633 -36.8485 Auckland -171.7514 -13.8333 Apia "
    "18.0686 59.3293 Stockholm 37.6173 55.7558 Moscow 12.4964 41.9028 Rome"
)

CASES: dict[str, list[str]] = {
    "geoadd": [
        "GEOADD g 13.361389 38.115556 Palermo 15.087269 37.502669 Catania",
        "GEOADD g 13.361389 38.115556 Palermo", "GEOADD g CH 13.361389 38.115556 Palermo",
        "GEOADD g CH 13.4 38.1 Palermo 1 1 one", "GEOADD g NX 0 0 Palermo 2 2 two",
        "GEOADD g XX 0 0 Palermo 3 3 three", "GEOADD g XX CH 5 5 Palermo 4 4 four",
        "GEOADD g ch nx 6 6 six", "GEOADD g NX XX 1 1 a", "GEOADD g GT 1 1 a",
        "GEOADD g CH CH CH", "GEOADD g 1 2", "GEOADD g 1 2 a 3", "GEOADD g x 1 a",
        "GEOADD g 1 x a", "GEOADD g 1 1 a 2 x b", "GEOADD g 0x10 0x10 hex",
        "GEOADD g ' 1' 1 space", "GEOADD g 1e400 1 over", "GEOADD g nan 1 n",
        "GEOADD g 1e-320 -0 tiny", "GEOADD g .5 -.5 dots",
        "ZRANGE g 0 -1 WITHSCORES", "TYPE g", "ZCARD g", "GEOADD missing XX 1 1 a",
        "EXISTS missing",
    ],
    "positions and hashes": [
        _CITIES, "GEOPOS cities Palermo Catania nosuch Sydney Apia",
        "GEOHASH cities Palermo Catania Paris London NewYork Tokyo Sydney Rio nosuch",
        "GEOHASH cities Anchorage Auckland Apia Stockholm Moscow Rome", "GEOPOS cities",
        "GEOHASH cities", "GEOPOS nosuch a b", "GEOHASH nosuch a b",
        "GEOPOS cities Tokyo Tokyo",
    ],
    "distances": [
        _CITIES, "GEODIST cities Palermo Catania", "GEODIST cities Palermo Catania m",
        "GEODIST cities Palermo Catania KM", "GEODIST cities Palermo Catania ft",
        "GEODIST cities Palermo Catania Mi", "GEODIST cities Paris Sydney km",
        "GEODIST cities Apia Auckland km", "GEODIST cities Anchorage Tokyo mi",
        "GEODIST cities Palermo Palermo", "GEODIST cities Palermo nosuch",
        "GEODIST cities nosuch Palermo km", "GEODIST nosuch a b", "GEODIST nosuch a b parsec",
        "GEODIST cities Palermo Catania parsec", "GEODIST cities Palermo Catania km x",
        "GEOADD same 13.5 38.1 a 13.5 38.7 b 13.5 -20 c 13.5 38.1000001 d",
        "GEODIST same a b", "GEODIST same a c km", "GEODIST same a d",
        "GEORADIUSBYMEMBER same a 20000 km STOREDIST sd", "ZRANGE sd 0 -1 WITHSCORES",
    ],
    "limits": [
        "GEOADD p 180 85.05112878 ne -180 -85.05112878 sw 180 -85.05112878 se "
        "-180 85.05112878 nw 0 0 origin 179.9999999 0 east -179.9999999 0 west",
        "ZRANGE p 0 -1 WITHSCORES", "GEOPOS p ne sw se nw origin east west",
        "GEOHASH p ne sw se nw origin east west", "GEODIST p east west", "GEODIST p ne nw km",
        "GEOADD p 180.0000001 0 x", "GEOADD p -180.0000001 0 x", "GEOADD p 0 85.05112879 x",
        "GEOADD p 0 -85.05112879 x", "GEOADD p 0 90 x", "GEOADD p 200 100 x",
        "GEOADD p inf 0 x", "GEOADD p 0 -inf x", "GEOADD p 1e300 0 x",
        "GEORADIUS p 180 0 100 km WITHDIST", "GEORADIUS p -180 0 100 km WITHDIST",
        "GEORADIUS p 0 85.05112878 500 km WITHCOORD", "GEORADIUS p 90 -85 5000 km WITHDIST ASC",
        "GEOSEARCH p FROMLONLAT 180 0 BYBOX 100 100 km", "GEOSEARCH p FROMMEMBER ne BYRADIUS 1 m",
        "GEOSEARCH p FROMMEMBER east BYBOX 50 50 km WITHDIST",
    ],
    "radius searches": [
        _CITIES, "GEORADIUS cities 15 37 200 km", "GEORADIUS cities 15 37 200 km ASC",
        "GEORADIUS cities 15 37 200 km DESC", "GEORADIUS cities 15 37 200 km WITHDIST",
        "GEORADIUS cities 15 37 200 km WITHCOORD WITHDIST WITHHASH",
        "GEORADIUS cities 15 37 200 km withhash withcoord", "GEORADIUS cities 15 37 2000 mi",
        "GEORADIUS cities 15 37 2000 mi ASC WITHDIST", "GEORADIUS cities 15 37 2000 mi COUNT 3",
        "GEORADIUS cities 15 37 2000 mi COUNT 3 DESC", "GEORADIUS cities 15 37 2000 mi COUNT 3 ANY",
        "GEORADIUS cities 15 37 2000 mi ANY COUNT 1", "GEORADIUS cities 15 37 0 m",
        "GEORADIUS cities 13.36138933897018433 38.11555639549629859 0 m",
        "GEORADIUS cities 0 0 20000 km", "GEORADIUS cities 0 0 20000 km ASC WITHDIST",
        "GEORADIUS cities 0 0 inf km DESC", "GEORADIUS cities 0 0 1e300 ft COUNT 4",
        "GEORADIUS cities 150 -35 3000 km WITHDIST", "GEORADIUS cities -175 -20 3000 km",
        "GEORADIUS cities 15 37 200 km COUNT 0", "GEORADIUS cities 15 37 200 km COUNT -1",
        "GEORADIUS cities 15 37 200 km COUNT x", "GEORADIUS cities 15 37 200 km COUNT",
        "GEORADIUS cities 15 37 200 km ANY", "GEORADIUS cities 15 37 200 km FOO",
        "GEORADIUS cities 15 37 -1 km", "GEORADIUS cities 15 37 x km",
        "GEORADIUS cities 15 37 nan km", "GEORADIUS cities 15 37 1 parsec",
        "GEORADIUS cities 200 37 1 km", "GEORADIUS cities x 37 1 km",
        "GEORADIUS cities 15 37 200 km FROMLONLAT 1 1", "GEORADIUS nosuch 15 37 200 km",
        "GEORADIUS_RO cities 15 37 200 km WITHDIST", "GEORADIUS_RO cities 15 37 200 km STORE x",
        "GEORADIUS_RO cities 15 37 200 km STOREDIST x",
    ],
    "by member": [
        _CITIES, "GEORADIUSBYMEMBER cities Palermo 200 km",
        "GEORADIUSBYMEMBER cities Palermo 200 km WITHDIST WITHCOORD ASC",
        "GEORADIUSBYMEMBER cities Paris 1500 km COUNT 4 DESC WITHDIST",
        "GEORADIUSBYMEMBER cities Paris 1500 km COUNT 4 ANY",
        "GEORADIUSBYMEMBER cities Tokyo 0 m WITHDIST", "GEORADIUSBYMEMBER cities nosuch 1 km",
        "GEORADIUSBYMEMBER cities nosuch x km", "GEORADIUSBYMEMBER cities Paris x km",
        "GEORADIUSBYMEMBER cities Paris 1 parsec", "GEORADIUSBYMEMBER nosuch a 1 km",
        "GEORADIUSBYMEMBER nosuch a x parsec", "GEORADIUSBYMEMBER nosuch a x parsec FOO",
        "GEORADIUSBYMEMBER nosuch a x parsec WITHDIST STORE d",
        "GEORADIUSBYMEMBER_RO cities Rome 1000 km WITHDIST ASC",
        "GEORADIUSBYMEMBER_RO cities Rome 1000 km STORE d",
    ],
    "geosearch": [
        _CITIES, "GEOSEARCH cities FROMMEMBER Palermo BYRADIUS 200 km",
        "GEOSEARCH cities FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHDIST WITHCOORD WITHHASH",
        "GEOSEARCH cities FROMLONLAT 15 37 BYBOX 400 400 km WITHDIST",
        "GEOSEARCH cities FROMLONLAT 15 37 BYBOX 100 1000 km WITHDIST",
        "GEOSEARCH cities FROMLONLAT 15 37 BYBOX 1000 100 km WITHDIST",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 3000 3000 km DESC COUNT 3",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 3000 3000 km COUNT 3 ANY",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 0 0 m WITHDIST",
        "GEOSEARCH cities FROMLONLAT 0 0 BYBOX inf inf km", "GEOSEARCH cities BYBOX 1 1 km "
        "FROMLONLAT 10 50 WITHDIST", "GEOSEARCH cities FROMLONLAT 180 0 BYBOX 6000 6000 km",
        "GEOSEARCH cities FROMLONLAT 1 1 FROMMEMBER Paris BYRADIUS 1 km",
        "GEOSEARCH cities FROMMEMBER Paris FROMLONLAT 1 1 BYRADIUS 1 km",
        "GEOSEARCH cities FROMMEMBER Paris BYRADIUS 1 km BYBOX 1 1 km",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 1 1 km BYRADIUS 1 km",
        "GEOSEARCH cities FROMMEMBER nosuch BYRADIUS 1 km",
        "GEOSEARCH cities FROMLONLAT 1 100 BYRADIUS 1 km",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX -1 1 km",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 1 x km",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX x 1 km",
        "GEOSEARCH cities FROMMEMBER Paris BYBOX 1 1 parsec",
        "GEOSEARCH cities FROMMEMBER Paris BYRADIUS 1 km STORE x",
        "GEOSEARCH cities FROMMEMBER Paris BYRADIUS 1 km STOREDIST",
        "GEOSEARCH cities FROMMEMBER Paris BYRADIUS 1 km ANY",
        "GEOSEARCH cities FROMMEMBER Paris BYRADIUS 1 km COUNT 0",
        "GEOSEARCH nosuch FROMMEMBER a BYRADIUS 1 km",
        "GEOSEARCH nosuch FROMLONLAT 1 1 BYBOX 1 1 km",
        "GEOSEARCH nosuch FROMMEMBER a BYRADIUS x km",
    ],
    "store": [
        _CITIES, "SET str v", "EXPIRE str 1000", "GEORADIUS cities 15 37 200 km STORE str",
        "TYPE str", "TTL str", "ZRANGE str 0 -1 WITHSCORES",
        "GEORADIUS cities 15 37 2000 km STOREDIST str COUNT 3 DESC",
        "ZRANGE str 0 -1 WITHSCORES", "SADD set a", "GEORADIUSBYMEMBER cities Paris 500 km "
        "STORE set", "TYPE set", "ZRANGE set 0 -1 WITHSCORES",
        "GEOSEARCHSTORE h cities FROMMEMBER Rome BYRADIUS 2000 km",
        "ZRANGE h 0 -1 WITHSCORES", "GEOSEARCHSTORE h cities FROMMEMBER Rome BYBOX 3000 3000 km "
        "STOREDIST ASC COUNT 2", "ZRANGE h 0 -1 WITHSCORES", "GEOPOS h Rome Paris",
        "GEOSEARCHSTORE h cities FROMLONLAT 0 0 BYRADIUS 1 m", "EXISTS h",
        "LPUSH list a", "GEORADIUS cities 0 0 1 m STORE list", "EXISTS list",
        "GEORADIUS nosuch 0 0 1 m STORE set", "EXISTS set",
        "GEORADIUS cities 15 37 200 km STORE x WITHDIST",
        "GEORADIUS cities 15 37 200 km STOREDIST x WITHCOORD",
        "GEOSEARCHSTORE x cities FROMMEMBER Rome BYRADIUS 1 km WITHHASH",
        "GEOSEARCHSTORE x cities FROMMEMBER Rome BYRADIUS 1 km STORE y",
        "GEORADIUS cities 15 37 200 km STORE", "GEORADIUS cities 15 37 200 km STORE a STOREDIST b",
        "ZRANGE b 0 -1 WITHSCORES", "EXISTS a",
        "GEOSEARCHSTORE cities cities FROMMEMBER Rome BYRADIUS 1000 km STOREDIST",
        "ZRANGE cities 0 -1 WITHSCORES",
    ],
    "wrongtype": [
        "SET s x", "GEOADD s 1 1 a", "GEOPOS s a", "GEOHASH s a", "GEODIST s a b",
        "GEODIST s a b parsec", "GEORADIUS s 1 1 1 km", "GEORADIUS s 200 1 1 km",
        "GEORADIUS_RO s 1 1 1 km", "GEORADIUSBYMEMBER s a 1 km", "GEORADIUSBYMEMBER_RO s a x km",
        "GEOSEARCH s FROMMEMBER a BYRADIUS 1 km", "GEOSEARCH s FROMLONLAT 1 1 BYRADIUS x km",
        "GEOSEARCHSTORE d s FROMMEMBER a BYRADIUS 1 km", "GEOADD g 1 1 a",
        "GEOSEARCHSTORE d g s FROMMEMBER a BYRADIUS 1 km", "GEOSEARCHSTORE s g FROMMEMBER a "
        "BYRADIUS 1 km", "TYPE s", "ZRANGE s 0 -1 WITHSCORES", "HSET h f v",
        "GEORADIUS g 1 1 1 km STORE h", "TYPE h",
    ],
    "sorted-set interplay": [
        "ZADD w -1 neg 1e30 big inf inf 5e15 huge 4503599627370496 b52 -1e19 m19 1e19 p19 "
        "1 one 1.5 half -inf ninf 0 zero 3377699720527872 mid",
        "GEOPOS w neg big inf huge b52 m19 p19 one half ninf zero mid",
        "GEOHASH w neg big inf huge b52 m19 p19 one half ninf zero mid",
        "GEODIST w neg huge km", "GEODIST w one half", "GEODIST w m19 p19",
        "GEORADIUS_RO w 0 0 inf km WITHCOORD WITHHASH WITHDIST",
        "GEORADIUS_RO w -180 -85 100 km WITHCOORD WITHHASH WITHDIST",
        "GEORADIUSBYMEMBER_RO w neg 100 km WITHCOORD WITHHASH WITHDIST",
        "GEORADIUSBYMEMBER_RO w m19 100 km WITHCOORD WITHDIST",
        "GEOSEARCH w FROMMEMBER huge BYBOX 100 100 km WITHCOORD",
        "GEOADD w 1 1 one", "ZSCORE w one", "ZREM w one", "GEOPOS w one", "ZINCRBY w 1 zero",
        "GEOPOS w zero", "ZRANGE w 0 3",
    ],
    "ties and counts": [
        "GEOADD t 10 10 a 10 10 b 10 10 c 10 10 d 10 10 e 10 10 f 10 10 g 10 10 h "
        "10.001 10 i 10.001 10 j 10 10.001 k 10 10.001 l 9.999 10 m 10 10 n 10 10 o",
        "GEORADIUS_RO t 10 10 1 km COUNT 3", "GEORADIUS_RO t 10 10 1 km COUNT 3 DESC",
        "GEORADIUS_RO t 10 10 1 km COUNT 5 DESC WITHDIST", "GEORADIUS_RO t 10 10 1 km COUNT 8",
        "GEORADIUS_RO t 10 10 1 km COUNT 9 DESC", "GEORADIUS_RO t 10 10 1 km COUNT 14 DESC",
        "GEORADIUS_RO t 10 10 1 km COUNT 15", "GEORADIUS_RO t 10 10 1 km COUNT 100 DESC",
        "GEORADIUS_RO t 10 10 1 km ASC", "GEORADIUS_RO t 10 10 1 km DESC",
        "GEORADIUS_RO t 10 10 1 km", "GEORADIUS_RO t 10 10 1 km COUNT 3 ANY",
        "GEORADIUS_RO t 10 10 1 km COUNT 3 ANY DESC", "GEORADIUS_RO t 10.001 10 50 m",
        "GEOSEARCH t FROMMEMBER a BYBOX 300 300 m COUNT 4 DESC WITHDIST",
    ],
}  # fmt: skip


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_replies_as_redis(
    oracle: dict[int, redis.Redis],
    ours: dict[int, dict[int, redis.Redis]],
    case: str,
    protocol: int,
) -> None:
    both = Both(oracle, ours, protocol)
    for line in CASES[case]:
        both.same(line)


def test_arity_errors(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    both = Both(oracle, ours, 2)
    for name, n in [("GEOADD", 4), ("GEOPOS", 1), ("GEOHASH", 1), ("GEODIST", 3),
                    ("GEORADIUS", 5), ("GEORADIUS_RO", 5), ("GEORADIUSBYMEMBER", 4),
                    ("GEORADIUSBYMEMBER_RO", 4), ("GEOSEARCH", 6),
                    ("GEOSEARCHSTORE", 7)]:  # fmt: skip
        both.same(" ".join([name] + ["k"] * (n - 1)))
    both.same("GEOADD k 1 1 a")
    for line in ["GEOPOS k", "GEOHASH k", "GEODIST k a k", "GEOSEARCH k FROMMEMBER a BYRADIUS 1",
                 "GEOSEARCHSTORE d k FROMMEMBER a BYRADIUS 1"]:  # fmt: skip
        both.same(line)


def test_large_sets(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """Past Redis's listpack limits (128 entries, 64-byte members): the same searches."""
    both = Both(oracle, ours, 2)
    coords = " ".join(
        f"{-180 + (i * 7.3) % 360:.5f} {-85 + (i * 3.1) % 170:.5f} m{i:04d}" for i in range(400)
    )
    both.same(f"GEOADD big {coords}")
    both.same(f"GEOADD big 1 2 {'x' * 100} 1 2.0001 {'y' * 100}")
    for line in ["GEORADIUS_RO big 0 0 3000 km", "GEORADIUS_RO big 0 0 3000 km WITHDIST DESC",
                 "GEORADIUS_RO big 100 40 8000 km COUNT 10", "GEOSEARCH big FROMMEMBER m0100 "
                 "BYBOX 4000 2000 km WITHCOORD", "GEORADIUSBYMEMBER big m0007 1500 km COUNT 5 ANY",
                 "GEORADIUS big 1 2 1 km WITHDIST", "GEOSEARCHSTORE s big FROMLONLAT 10 10 "
                 "BYRADIUS 5000 km STOREDIST", "ZRANGE s 0 -1 WITHSCORES",
                 "GEOHASH big m0000 m0399", "GEOPOS big m0123 m0321"]:  # fmt: skip
        both.same(line)


# --- coordinates' text in RESP3: a raw socket (redis-py reads a double as a float) ------------


def _exchange(port: int, *commands: list[bytes]) -> bytes:
    """The raw replies to ``commands`` in RESP3, between two ECHOs' markers."""
    start, marker = b"$9\r\n--start--\r\n", b"$11\r\n--the-end--\r\n"
    payload = b""
    for words in [[b"HELLO", b"3"], [b"ECHO", b"--start--"], *commands, [b"ECHO", b"--the-end--"]]:
        payload += b"*%d\r\n" % len(words)
        payload += b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        data = b""
        while not data.endswith(marker):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    return data[data.index(start) + len(start) :]


def test_resp3_coordinates_are_redis_text(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]], svc: Service
) -> None:
    for r in (oracle[2], ours[2][0]):
        r.execute_command("FLUSHALL")
    commands = [
        b"GEOADD c 13.361389 38.115556 Palermo 180 85.05112878 pole 0 0 zero".split(),
        b"GEOPOS c Palermo pole zero nosuch".split(),
        b"GEORADIUS_RO c 15 37 200 km WITHCOORD WITHDIST".split(),
        b"GEOSEARCH c FROMLONLAT 0 0 BYRADIUS 1 km WITHCOORD WITHHASH".split(),
    ]
    theirs = _exchange(_port(oracle[2]), *commands)
    assert b",13.36138933897018433\r\n,38.11555639549629859\r\n" in theirs
    assert _exchange(svc.port, *commands) == theirs


# --- WATCH -----------------------------------------------------------------------------------

WATCHED = [
    ("g", "GEOADD g 1 1 a"), ("g", "GEOADD g 0 0 origin"), ("g", "GEOADD g NX 5 5 origin"),
    ("g", "GEOADD g XX 9 9 nosuch"), ("g", "GEOADD g CH 0 0 origin"),
    ("d", "GEORADIUS g 0 0 100 km STORE d"), ("d", "GEORADIUS g 50 50 1 km STORE d"),
    ("e", "GEORADIUS g 0 0 100 km STORE d"), ("d", "GEOSEARCHSTORE d g FROMMEMBER origin "
     "BYRADIUS 10 km"), ("d", "GEOSEARCHSTORE d nosuch FROMMEMBER origin BYRADIUS 10 km"),
    ("g", "GEORADIUS g 0 0 100 km"), ("g", "GEOPOS g origin"), ("d", "GEOADD d 1 1 x"),
]  # fmt: skip


def _exec_after(watcher: redis.Redis, writer: redis.Redis, key: str, line: str) -> Any:
    watcher.execute_command("FLUSHALL")
    watcher.execute_command("GEOADD", "g", "0", "0", "origin", "0.1", "0.1", "near")
    watcher.execute_command("WATCH", key)
    _call(writer, tuple(shlex.split(line)))
    watcher.execute_command("MULTI")
    watcher.execute_command("PING")
    return watcher.execute_command("EXEC")


def test_writes_touch_watched_keys_as_redis_does(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """The write runs on the other replica; EXEC aborts exactly when Redis's would."""
    theirs_writer = _raw(client(_port(oracle[2]), protocol=2))
    aborted = []
    try:
        for key, line in WATCHED:
            theirs = _exec_after(oracle[2], theirs_writer, key, line)
            mine = _exec_after(ours[2][0], ours[2][1], key, line)
            assert (mine is None) == (theirs is None), (key, line, theirs, mine)
            aborted.append(theirs is None)
        assert 3 < sum(aborted) < len(aborted) - 3  # both outcomes are exercised
    finally:
        theirs_writer.close()


# --- a hypothesis property: random points, random searches ------------------------------------


def _lon(draw: st.DrawFn, cluster: tuple[float, float]) -> str:
    return draw(st.sampled_from([
        f"{cluster[0] + draw(st.floats(-0.5, 0.5)):.6f}", "180", "-180", "0", "179.99999",
        f"{draw(st.floats(-180, 180)):.7f}", f"{cluster[0]:.6f}",
    ]))  # fmt: skip


def _lat(draw: st.DrawFn, cluster: tuple[float, float]) -> str:
    return draw(st.sampled_from([
        f"{cluster[1] + draw(st.floats(-0.5, 0.5)):.6f}", "85.05112878", "-85.05112878", "0",
        f"{draw(st.floats(-85.05112878, 85.05112878)):.7f}", f"{cluster[1]:.6f}", "84.9",
    ]))  # fmt: skip


_CLUSTERS = [(13.36, 38.11), (-179.9, 0.0), (0.0, 84.8), (151.2, -33.8), (0.0, 0.0)]
_RADII = ["0", "1", "250", "5000", "60000", "500000", "3000000", "20000000", "inf", "0.5"]
_UNITS = ["m", "km", "ft", "mi"]


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    cluster = draw(st.sampled_from(_CLUSTERS))
    n = draw(st.integers(1, 40))
    add = ["GEOADD", "k"]
    for i in range(n):
        add += [_lon(draw, cluster), _lat(draw, cluster), f"m{i % draw(st.sampled_from([n, 7]))}"]
    queries: list[list[str]] = []
    for _ in range(draw(st.integers(1, 8))):
        lon, lat = _lon(draw, cluster), _lat(draw, cluster)
        radius, unit = draw(st.sampled_from(_RADII)), draw(st.sampled_from(_UNITS))
        opts = draw(st.lists(st.sampled_from(["WITHDIST", "WITHCOORD", "WITHHASH", "ASC",
                                              "DESC"]), max_size=3, unique=True))  # fmt: skip
        count = draw(st.sampled_from([[], [], ["COUNT", "1"], ["COUNT", "3"], ["COUNT", "10"],
                                      ["COUNT", "2", "ANY"], ["COUNT", "5", "ANY"]]))  # fmt: skip
        member = f"m{draw(st.integers(0, n))}"
        shape = draw(st.sampled_from([
            ["BYRADIUS", radius, unit],
            ["BYBOX", radius, draw(st.sampled_from(_RADII)), unit],
        ]))  # fmt: skip
        store = [x for x in opts if not x.startswith("WITH")]
        queries.append(draw(st.sampled_from([
            ["GEORADIUS_RO", "k", lon, lat, radius, unit, *opts, *count],
            ["GEORADIUSBYMEMBER_RO", "k", member, radius, unit, *opts, *count],
            ["GEOSEARCH", "k", "FROMLONLAT", lon, lat, *shape, *opts, *count],
            ["GEOSEARCH", "k", "FROMMEMBER", member, *shape, *opts, *count],
            ["GEORADIUS", "k", lon, lat, radius, unit, "STOREDIST", "d", *store, *count],
            ["GEOSEARCHSTORE", "d", "k", "FROMLONLAT", lon, lat, *shape, *store, *count],
        ])))  # fmt: skip
        if queries[-1][0] in ("GEORADIUS", "GEOSEARCHSTORE"):
            queries.append(["ZRANGE", "d", "0", "-1", "WITHSCORES"])
    return add, queries


@pytest.mark.parametrize("protocol", [2, 3])
def test_random_searches_match_redis(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]], protocol: int
) -> None:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=_scenario())
    def check(scenario: tuple[list[str], list[list[str]]]) -> None:
        add, queries = scenario
        both = Both(oracle, ours, protocol)
        theirs, mine = both.run(*add)
        assert mine == theirs, add
        for query in queries:
            theirs, mine = both.run(*query)
            assert mine == theirs, query

    check()
