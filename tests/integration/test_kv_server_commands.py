"""The connection and server commands against a real ``redis-server`` 7, side by side.

CLIENT, CONFIG, COMMAND, ACL, LATENCY, SLOWLOG, MEMORY, WAIT, TIME, DEBUG,
AUTH with ``requirepass``, PUBSUB's introspection and the shard channels
(SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH).  The KV service (``dominoes run ...
--replicas 2``) and a throwaway ``redis-server`` get the same commands and
their replies are compared exactly, error texts included, in RESP2 and RESP3,
where Redis's reply is not about its own process (its memory, its clients'
addresses, its clock).  Replies are read off the wire with their types kept.

What is the dominoes KV's own is checked against what it documents: CLIENT
KILL closes a client connected to the *other* replica (through the log),
WAIT answers the number of other replicas at once, a password from
``DOMINOES_KV_REQUIREPASS`` is enforced on every replica, and one set with
CONFIG SET on one replica is enforced on the other's new connections.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import resp_wire
from .harness import Service
from .kv_helpers import redis_oracle, wait_for
from .resp_wire import Wire, wires_on_every_replica

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


# --- a RESP client that keeps every reply's type ---------------------------------------------


#: Every Wire a test opened (closed after the test: see ``_close_wires``)
_OPEN: list[Wire] = []


@pytest.fixture(autouse=True)
def _close_wires() -> Iterator[None]:
    start = len(_OPEN)
    yield
    for w in _OPEN[start:]:
        w.close()
    del _OPEN[start:]


def _wire(port: int, proto: int = 2, password: str | None = None) -> Wire:
    """A Wire closed after the test."""
    w = Wire(port, proto, password)
    _OPEN.append(w)
    return w


def _wires(port: int, proto: int = 2, password: str | None = None) -> dict[int, Wire]:
    """A connection to each replica, closed after the test."""
    found = wires_on_every_replica(port, proto, password=password)
    _OPEN.extend(found.values())
    return found


def canonical(args: tuple[Any, ...], reply: Any) -> Any:
    """What Redis leaves unordered, sorted: CONFIG GET's pairs, PUBSUB CHANNELS."""
    words = [str(a).upper() for a in args[:2]]
    if words == ["CONFIG", "GET"]:
        if isinstance(reply, list):
            return sorted(zip(reply[::2], reply[1::2], strict=True))
        if isinstance(reply, tuple) and reply[0] == "%":
            return sorted(reply[1])
    if words in (["PUBSUB", "CHANNELS"], ["PUBSUB", "SHARDCHANNELS"]) and isinstance(reply, list):
        return sorted(reply)
    return reply


class Pair(resp_wire.Pair):
    """The same commands to the oracle and to the KV service, in one protocol; replies
    compared with every type kept (verbatim strings, pushes), Redis's unordered sorted."""

    def normal(self, args: tuple[str | bytes | int, ...], reply: Any) -> Any:
        return canonical(args, reply)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with redis_oracle(tmp_path_factory.mktemp("redis-oracle")) as r:
        version = r.info("server")["redis_version"]
        if not str(version).startswith("7.0"):
            pytest.skip(f"the oracle is Redis 7.0, this is {version}")
        r.config_set("slowlog-log-slower-than", -1)  # a busy machine would fill it: no slow log
        yield int(r.connection_pool.connection_kwargs["port"])


@pytest.fixture(scope="module")
def pairs(svc: Service, oracle_port: int) -> Iterator[dict[int, Pair]]:
    out = {
        proto: Pair(Wire(oracle_port, proto), wires_on_every_replica(svc.port, proto))
        for proto in (2, 3)
    }
    yield out
    for pair in out.values():
        pair.oracle.close()
        for w in pair.ours.values():
            w.close()


PROTOS = pytest.mark.parametrize("proto", [2, 3])

# --- scripted cases ---------------------------------------------------------------------------

SCRIPT: list[tuple[Any, ...]] = [
    # CONFIG
    ("CONFIG",), ("CONFIG", "NOSUCH"), ("CONFIG", "nosuch", "x"), ("CONFIG", "HELP"),
    ("CONFIG", "HELP", "x"), ("CONFIG", "GET"), ("CONFIG", "REWRITE"), ("CONFIG", "REWRITE", "x"),
    ("CONFIG", "RESETSTAT"), ("CONFIG", "RESETSTAT", "x"),
    ("CONFIG", "GET", "maxmemory"), ("CONFIG", "GET", "MAXMEMORY"),
    ("CONFIG", "GET", "maxmemory-policy", "appendonly", "save", "requirepass", "timeout",
     "notify-keyspace-events"),
    ("CONFIG", "GET", "nosuch"), ("CONFIG", "GET", "nosuch*"), ("CONFIG", "GET", "appendonl?"),
    ("CONFIG", "SET", "maxmemory"), ("CONFIG", "SET", "nosuch", "1"),
    ("CONFIG", "SET", "maxmemory", "x"), ("CONFIG", "SET", "maxmemory", "-1"),
    ("CONFIG", "SET", "maxmemory", "10mb"), ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "1K"), ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "0"),
    ("CONFIG", "SET", "maxmemory-policy", "foo"),
    ("CONFIG", "SET", "maxmemory-policy", "ALLKEYS-LRU"), ("CONFIG", "GET", "maxmemory-policy"),
    ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
    ("CONFIG", "SET", "timeout", "x"), ("CONFIG", "SET", "timeout", "1.5"),
    ("CONFIG", "SET", "timeout", "-1"), ("CONFIG", "SET", "timeout", "2147483648"),
    ("CONFIG", "SET", "timeout", "0", "timeout", "1"),
    ("CONFIG", "SET", "timeout", "x", "maxmemory", "y"),
    ("CONFIG", "SET", "timeout", "0", "nosuch", "1"),
    ("CONFIG", "SET", "timeout", "5", "maxmemory", "0"), ("CONFIG", "GET", "timeout"),
    ("CONFIG", "SET", "timeout", "0"),
    ("CONFIG", "SET", "notify-keyspace-events", "Q"),
    ("CONFIG", "SET", "notify-keyspace-events", ""),
    ("CONFIG", "SET", "databases", "4"),
    ("CONFIG", "SET", "client-output-buffer-limit", "normal 256mb 64mb 60", "timeout", "0"),
    ("CONFIG", "SET", "client-output-buffer-limit", "normal 1", "timeout", "0"),
    # COMMAND
    ("COMMAND", "NOSUCH"), ("COMMAND", "HELP", "x"), ("COMMAND", "COUNT", "x"),
    ("COMMAND", "GETKEYS"), ("COMMAND", "GETKEYS", "get"), ("COMMAND", "GETKEYS", "nosuch", "a"),
    ("COMMAND", "GETKEYS", "get", "a"), ("COMMAND", "GETKEYS", "get", "a", "b"),
    ("COMMAND", "GETKEYS", "set", "a"), ("COMMAND", "GETKEYS", "ping", "a"),
    ("COMMAND", "GETKEYS", "mset", "a", "1", "b", "2"), ("COMMAND", "LIST", "x"),
    ("COMMAND", "LIST", "FILTERBY"), ("COMMAND", "LIST", "FILTERBY", "module", "x"),
    ("COMMAND", "LIST", "FILTERBY", "foo", "x"), ("COMMAND", "LIST", "FILTERBY", "pattern", "zzz*"),
    ("COMMAND", "INFO", "nosuch"), ("COMMAND", "DOCS", "nosuch"),
    # CLIENT
    ("CLIENT",), ("CLIENT", "NOSUCH"), ("CLIENT", "HELP"), ("CLIENT", "HELP", "x"),
    ("CLIENT", "GETREDIR"), ("CLIENT", "TRACKINGINFO"), ("CLIENT", "NO-EVICT", "on"),
    ("CLIENT", "NO-EVICT", "OFF"), ("CLIENT", "NO-EVICT", "x"), ("CLIENT", "NO-EVICT"),
    ("CLIENT", "NO-TOUCH", "on"), ("CLIENT", "UNPAUSE"), ("CLIENT", "PAUSE", "x"),
    ("CLIENT", "PAUSE", "-1"), ("CLIENT", "PAUSE", "0", "foo"), ("CLIENT", "PAUSE", "0"),
    ("CLIENT", "PAUSE"),
    ("CLIENT", "TRACKING", "off"), ("CLIENT", "TRACKING", "x"), ("CLIENT", "CACHING", "yes"),
    ("CLIENT", "REPLY"), ("CLIENT", "REPLY", "foo"), ("CLIENT", "REPLY", "ON"),
    ("CLIENT", "KILL"), ("CLIENT", "KILL", "1.2.3.4:5"), ("CLIENT", "KILL", "ID", "x"),
    ("CLIENT", "KILL", "ID", "0"), ("CLIENT", "KILL", "ID", "-5"), ("CLIENT", "KILL", "FOO", "x"),
    ("CLIENT", "KILL", "ADDR"), ("CLIENT", "KILL", "ADDR", "1.2.3.4:5"),
    ("CLIENT", "KILL", "LADDR", "1.2.3.4:5"), ("CLIENT", "KILL", "TYPE", "foo"),
    ("CLIENT", "KILL", "TYPE", "master"), ("CLIENT", "KILL", "TYPE", "pubsub"),
    ("CLIENT", "KILL", "SKIPME", "x"), ("CLIENT", "KILL", "USER", "bob"),
    ("CLIENT", "KILL", "ADDR", "1.2.3.4:5", "SKIPME", "no"),
    ("CLIENT", "LIST", "TYPE", "foo"), ("CLIENT", "LIST", "TYPE", "replica"),
    ("CLIENT", "LIST", "ID", "x"), ("CLIENT", "LIST", "ID", "1", "2"), ("CLIENT", "LIST", "foo"),
    ("CLIENT", "LIST", "TYPE"), ("CLIENT", "SETNAME", "a b"), ("CLIENT", "SETNAME", "n"),
    ("CLIENT", "SETNAME", ""),
    # the rest
    ("TIME", "x"), ("LASTSAVE", "x"), ("WAIT",), ("WAIT", "x", "0"), ("WAIT", "1", "x"),
    ("WAIT", "x", "y"), ("WAIT", "1", "-1"), ("WAITAOF", "0", "0", "0"),
    ("LATENCY",), ("LATENCY", "HELP"), ("LATENCY", "FOO"), ("LATENCY", "LATEST"),
    ("LATENCY", "LATEST", "x"), ("LATENCY", "DOCTOR"), ("LATENCY", "HISTORY"),
    ("LATENCY", "HISTORY", "command"), ("LATENCY", "RESET"), ("LATENCY", "RESET", "a", "b"),
    ("LATENCY", "GRAPH", "command"),
    ("SLOWLOG",), ("SLOWLOG", "HELP"), ("SLOWLOG", "FOO"), ("SLOWLOG", "GET"),
    ("SLOWLOG", "GET", "5"), ("SLOWLOG", "GET", "-1"), ("SLOWLOG", "GET", "-2"),
    ("SLOWLOG", "GET", "x"), ("SLOWLOG", "GET", "1", "2"), ("SLOWLOG", "LEN"),
    ("SLOWLOG", "LEN", "x"), ("SLOWLOG", "RESET"),
    ("ACL",), ("ACL", "FOO"), ("ACL", "WHOAMI"), ("ACL", "WHOAMI", "x"), ("ACL", "USERS"),
    ("ACL", "LIST"), ("ACL", "CAT"), ("ACL", "CAT", "nosuch"), ("ACL", "GETUSER", "default"),
    ("ACL", "GETUSER", "bob"), ("ACL", "GETUSER"), ("ACL", "SETUSER"),
    ("MEMORY",), ("MEMORY", "FOO"), ("MEMORY", "HELP"), ("MEMORY", "USAGE"),
    ("MEMORY", "USAGE", "nokey"), ("MEMORY", "USAGE", "nokey", "SAMPLES"),
    ("MEMORY", "PURGE"), ("MEMORY", "DOCTOR", "x"),
    ("AUTH", "x"), ("AUTH", "default", "x"), ("AUTH", "bob", "x"), ("AUTH", "a", "b", "c"),
    ("AUTH",),
    # PUBSUB (nobody subscribed here)
    ("PUBSUB",), ("PUBSUB", "FOO"), ("PUBSUB", "HELP"), ("PUBSUB", "HELP", "x"),
    ("PUBSUB", "CHANNELS"), ("PUBSUB", "CHANNELS", "*"), ("PUBSUB", "channels", "a", "b"),
    ("PUBSUB", "NUMSUB"), ("PUBSUB", "NUMSUB", "a", "b"), ("PUBSUB", "NUMPAT"),
    ("PUBSUB", "NUMPAT", "x"), ("PUBSUB", "SHARDCHANNELS"), ("PUBSUB", "SHARDCHANNELS", "a*"),
    ("PUBSUB", "SHARDNUMSUB", "a"), ("PUBSUB", "shardchannels", "a", "b"),
    ("SPUBLISH", "a", "b"), ("SPUBLISH", "a"),
]  # fmt: skip


@PROTOS
def test_scripted_like_redis(pairs: dict[int, Pair], proto: int) -> None:
    pair = pairs[proto]
    for args in SCRIPT:
        pair.same(*args)


@PROTOS
def test_client_info_has_redis_fields_in_redis_order(
    svc: Service, oracle_port: int, proto: int
) -> None:
    ours, theirs = _wire(svc.port, proto), _wire(oracle_port, proto)
    try:
        ours.call("CLIENT", "SETNAME", "me")
        theirs.call("CLIENT", "SETNAME", "me")
        mine = ours.call("CLIENT", "INFO")
        redis_info = theirs.call("CLIENT", "INFO")
        if proto == 3:  # verbatim strings, as Redis 7.0's
            assert mine[0] == redis_info[0] == "="
            mine, redis_info = mine[1], redis_info[1]
        keys = [w.split(b"=")[0] for w in mine.split()]
        redis_keys = [w.split(b"=")[0] for w in redis_info.split()]
        assert keys[: len(redis_keys)] == redis_keys
        assert keys[len(redis_keys) :] == [b"lib-name", b"lib-ver", b"replica"]
        fields = dict(w.split(b"=", 1) for w in mine.split())
        assert fields[b"name"] == b"me"
        assert fields[b"user"] == b"default"
        assert fields[b"resp"] == str(proto).encode()
        assert fields[b"flags"] == b"N"
        assert fields[b"laddr"] == b"127.0.0.1:%d" % svc.port
        listed = ours.call("CLIENT", "LIST", "ID", ours.field("id"))
        text = listed[1] if proto == 3 else listed
        assert text.split()[0] == mine.split()[0]  # the same client
        normal = ours.call("CLIENT", "LIST", "TYPE", "normal")
        assert b"id=" + ours.field("id").encode() + b" " in (normal[1] if proto == 3 else normal)
    finally:
        ours.close()
        theirs.close()


def test_wait_and_time(svc: Service) -> None:
    w = _wire(svc.port)
    try:
        w.call("SET", "k", "v")
        assert w.call("WAIT", "1", "0") == 1  # the other replica, at once
        assert w.call("WAIT", "5", "100000") == 1  # never waits for more than there are
        assert w.call("WAIT", "0", "0") == 1
        before = time.time()
        seconds, micros = w.call("TIME")
        after = time.time()
        assert before - 1 <= int(seconds) + int(micros) / 1e6 <= after + 1
        assert 0 <= int(micros) < 1_000_000
        assert w.call("DEBUG", "SLEEP", "0") == ("+", "OK")
        assert w.call("DEBUG", "SLEEP", "0.01") == ("+", "OK")
        assert w.call("DEBUG", "RELOAD")[0] == "-"
        assert w.call("CLIENT", "PAUSE", "10")[1].startswith("ERR CLIENT PAUSE is not supported")
        assert w.call("CLIENT", "TRACKING", "on")[1].startswith("ERR CLIENT TRACKING is not")
        assert w.call("ACL", "SETUSER", "bob")[1].startswith("ERR ACL SETUSER is not supported")
        assert w.call("CONFIG", "SET", "port", "1")[1].endswith("dominoes run ... --port")
        w.call("SET", "big", "x" * 1000)
        assert w.call("MEMORY", "USAGE", "big") > 1000
        assert w.call("MEMORY", "USAGE", "big", "SAMPLES", "0") > 1000
        assert isinstance(w.call("MEMORY", "STATS"), list)
    finally:
        w.close()


# --- CLIENT KILL across replicas -------------------------------------------------------------


def test_client_kill_reaches_the_other_replica(svc: Service) -> None:
    ours = _wires(svc.port, 2)
    victim = ours[1]
    assert ours[0].call("CLIENT", "KILL", "ID", victim.field("id")) == 1
    assert victim.closed()
    assert ours[0].call("CLIENT", "KILL", "ID", str((10**9 << 10) | 1)) == 0  # nobody

    victim = _wire(svc.port)
    victim_replica = int(victim.field("replica"))
    killer = ours[0] if victim_replica == 1 else _wires(svc.port, 2)[1 - victim_replica]
    assert killer.call("CLIENT", "KILL", "ADDR", victim.field("addr")) == 1
    assert victim.closed()

    victim = _wires(svc.port, 2)[1]
    assert ours[0].call("CLIENT", "KILL", victim.field("addr")) == ("+", "OK")  # the old form
    assert victim.closed()
    no_such = ("-", "ERR No such client")
    assert ours[0].call("CLIENT", "KILL", "1.2.3.4:5") == no_such

    # TYPE pubsub: a subscriber on each replica; the killer itself is skipped
    subscribers = _wires(svc.port, 2)
    for w in subscribers.values():
        w.call("SUBSCRIBE", "news")
    assert ours[0].call("CLIENT", "KILL", "TYPE", "pubsub") == 2
    assert all(w.closed() for w in subscribers.values())
    assert ours[0].call("PUBSUB", "NUMSUB", "news") == [b"news", 0]

    # filters combine (LADDR and ID); SKIPME no: the client that asks is closed too, after
    # its reply
    victim = _wires(svc.port, 2)[1]
    assert ours[0].call("CLIENT", "KILL", "LADDR", "1.2.3.4:5", "ID", victim.field("id")) == 0
    laddr = victim.field("laddr")
    assert ours[0].call("CLIENT", "KILL", "LADDR", laddr, "ID", victim.field("id")) == 1
    assert victim.closed()
    me = ours[0]
    assert me.call("CLIENT", "KILL", "ADDR", me.field("addr"), "SKIPME", "no") == 1
    assert me.closed()


# --- CLIENT REPLY -----------------------------------------------------------------------------


@PROTOS
def test_client_reply_off_and_skip_like_redis(svc: Service, oracle_port: int, proto: int) -> None:
    script = (
        ("CLIENT", "REPLY", "SKIP"), ("SET", "rk", "1"), ("GET", "rk"),
        ("CLIENT", "REPLY", "OFF"), ("SET", "rk", "2"), ("GET", "rk"), ("PING",),
        ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "ON"), ("GET", "rk"),
        ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "ID"), ("ECHO", "last"),
    )  # fmt: skip
    replies = []
    for port in (oracle_port, svc.port):
        w = _wire(port, proto)
        try:
            for args in script:
                w.send(*args)
            replies.append([w.read() for _ in range(4)])
        finally:
            w.close()
    assert replies[0] == replies[1] == [b"1", ("+", "OK"), b"2", b"last"]


# --- pub/sub: introspection and shard channels -------------------------------------------------


@PROTOS
def test_pubsub_counts_every_replica_like_redis(svc: Service, oracle_port: int, proto: int) -> None:
    ours = _wires(svc.port, proto)
    theirs = [_wire(oracle_port, proto), _wire(oracle_port, proto)]
    try:
        args: tuple[str, ...]
        for subscriber in (ours[1], theirs[1]):
            for args in (
                ("SUBSCRIBE", "ch1", "ch2"), ("PSUBSCRIBE", "ch*"), ("SSUBSCRIBE", "s1", "s2"),
                ("SSUBSCRIBE", "s1"), ("SUBSCRIBE", "s1"),
            ):  # fmt: skip
                subscriber.send(*args)
        replies = [[w.read() for _ in range(7)] for w in (ours[1], theirs[1])]
        assert replies[0] == replies[1]
        for args in (
            ("PUBSUB", "CHANNELS"), ("PUBSUB", "CHANNELS", "ch?"), ("PUBSUB", "NUMSUB", "ch1", "s1",
            "x"), ("PUBSUB", "NUMPAT"), ("PUBSUB", "SHARDCHANNELS"), ("PUBSUB", "SHARDCHANNELS",
            "*2"), ("PUBSUB", "SHARDNUMSUB", "s1", "ch1"), ("SPUBLISH", "s1", "hi"),
            ("PUBLISH", "s1", "plain"), ("PUBLISH", "ch1", "both"),
        ):  # fmt: skip
            want = canonical(args, theirs[0].call(*args))
            assert canonical(args, ours[0].call(*args)) == want, args
        pushes = [[w.read() for _ in range(4)] for w in (ours[1], theirs[1])]
        assert pushes[0] == pushes[1]
        assert pushes[0][0] in ([b"smessage", b"s1", b"hi"], (">", [b"smessage", b"s1", b"hi"]))
        for subscriber in (ours[1], theirs[1]):
            subscriber.send("SUNSUBSCRIBE", "s2")
            subscriber.send("SUNSUBSCRIBE", "s1")
            subscriber.send("SUNSUBSCRIBE")
            subscriber.send("PING")
        assert [ours[1].read() for _ in range(4)] == [theirs[1].read() for _ in range(4)]
        assert ours[0].call("PUBSUB", "SHARDCHANNELS") == []
    finally:
        for w in (*ours.values(), *theirs):
            w.close()


# --- AUTH and requirepass ----------------------------------------------------------------------

AUTH_SCRIPT: list[tuple[Any, ...]] = [
    ("PING",), ("GET", "a"), ("NOSUCH",), ("GET",), ("AUTH",), ("AUTH", "x"),
    ("AUTH", "default", "x"), ("AUTH", "bob", "pw"), ("AUTH", "a", "b", "c"),
    ("HELLO", "3", "AUTH", "default", "x"), ("HELLO", "2"), ("HELLO",), ("HELLO", "4"),
    ("MULTI",), ("EXEC",), ("CLIENT", "ID"), ("SUBSCRIBE", "x"), ("RESET",), ("PING",),
    ("AUTH", "pw"), ("PING",), ("RESET",), ("PING",), ("AUTH", "default", "pw"), ("ACL", "WHOAMI"),
]  # fmt: skip


def _auth_script(port: int) -> list[Any]:
    w = _wire(port)
    try:
        out = [w.call(*args) for args in AUTH_SCRIPT]
        hello = w.call("HELLO", "3", "AUTH", "default", "pw")  # its map has the server's id
        out.append(sorted(k for k, _ in hello[1]))
        out.append(w.call("PING"))
        return out
    finally:
        w.close()


def test_config_set_requirepass_goes_to_every_replica(svc: Service, oracle_port: int) -> None:
    admin, theirs = _wires(svc.port, 2), _wire(oracle_port)
    try:
        assert admin[0].call("CONFIG", "SET", "requirepass", "pw") == ("+", "OK")
        assert theirs.call("CONFIG", "SET", "requirepass", "pw") == ("+", "OK")
        # connections made before stay authenticated, as in Redis
        assert admin[1].call("PING") == ("+", "PONG")
        assert admin[1].call("CONFIG", "GET", "requirepass") == [b"requirepass", b"pw"]
        redis_replies = _auth_script(oracle_port)
        for _ in range(2):  # new connections, whichever replica they reach
            assert _auth_script(svc.port) == redis_replies
        assert admin[1].call("CONFIG", "SET", "requirepass", "") == ("+", "OK")
        assert theirs.call("CONFIG", "SET", "requirepass", "") == ("+", "OK")
        assert _wire(svc.port).call("PING") == ("+", "PONG")
    finally:
        theirs.close()
        for w in admin.values():
            w.close()


def test_requirepass_from_the_environment(tmp_path: Path) -> None:
    svc = Service(
        "dominoes.components.kv:service",
        tmp_path / "run",
        replicas=2,
        env={"DOMINOES_KV_REQUIREPASS": "s3cret"},
    )
    try:
        svc.wait_ready()

        def ready() -> bool:
            try:
                return bool(
                    _wire(svc.port).call("PING") == ("-", "NOAUTH Authentication required.")
                )
            except OSError:
                return False

        wait_for(ready, timeout=20)
        for index, w in _wires(svc.port, password="s3cret").items():
            assert w.call("SET", f"k{index}", "v") == ("+", "OK")
            assert w.call("ACL", "LIST")[0].startswith(b"user default on #")
            w.close()
        w = _wire(svc.port)
        assert w.call("GET", "k0") == ("-", "NOAUTH Authentication required.")
        assert w.call("AUTH", "wrong") == (
            "-",
            "WRONGPASS invalid username-password pair or user is disabled.",
        )
        hello = w.call("HELLO", "3", "AUTH", "default", "s3cret")
        assert hello[0] == "%"
        assert w.call("GET", "k1") == b"v"
        w.close()
    finally:
        svc.stop()


@PROTOS
def test_subcommand_errors_abort_a_transaction_like_redis(
    svc: Service, oracle_port: int, proto: int
) -> None:
    script = (
        [("MULTI",), ("PUBSUB", "HELP", "x"), ("EXEC",)],
        [("MULTI",), ("MEMORY", "FOO"), ("EXEC",)],
        [("MULTI",), ("MEMORY", "USAGE"), ("EXEC",)],
        [("MULTI",), ("PUBSUB", "NUMPAT"), ("PUBSUB", "NUMSUB", "a"), ("EXEC",)],
    )
    for commands in script:
        replies = []
        for port in (oracle_port, svc.port):
            w = _wire(port, proto)
            replies.append([w.call(*args) for args in commands])
        assert replies[0] == replies[1], commands
