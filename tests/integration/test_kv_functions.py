"""Redis functions (FUNCTION, FCALL, FCALL_RO) against a real ``redis-server`` 7.

The same commands go to the 2-replica KV service and to a throwaway
``redis-server``; every reply is compared exactly, error texts included, in
RESP2 and RESP3.  On the KV side the commands alternate between the two
replicas, so a library loaded on one replica is called on the other.  Where
Redis leaves an order to its hash tables (FUNCTION LIST's libraries and
functions), both replies are sorted first.

Beyond the oracle: FUNCTION DUMP's payload is the service's own, so each side
restores its own dump; a runaway function is stopped by the instruction limit
on both replicas; a replica killed with SIGKILL comes back with the libraries;
redis-py's function API works.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
from dominoes.components.kv._errors import KvError
from dominoes.components.kv._functions import Functions
from dominoes.components.kv._lua import Engine
from dominoes.components.kv._scripting import Scripting
from dominoes.components.kv._service import TABLE

from .harness import Service
from .kv_helpers import kv_service
from .resp_wire import Pair, Wire, wires_on_every_replica

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

#: The busy-script limit the service runs with here (about 0.1 s of plain Lua).
LIMIT = 20_000_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The 2-replica KV with a small busy-script limit (so the runaway test is quick)."""
    run_dir = tmp_path_factory.mktemp("functions") / "run"
    with kv_service(run_dir, env={"DOMINOES_KV_LUA_INSTRUCTIONS": str(LIMIT)}) as s:
        yield s


@pytest.fixture(scope="module")
def pairs(svc: Service, oracle_port: int) -> Iterator[dict[int, Pair]]:
    out = {p: Pair(Wire(oracle_port, p), wires_on_every_replica(svc.port, p)) for p in (2, 3)}
    yield out
    for pair in out.values():
        pair.oracle.close()
        for w in pair.ours.values():
            w.close()


@pytest.fixture
def on(svc: Service) -> Iterator[dict[int, Wire]]:
    wires = wires_on_every_replica(svc.port, 2)
    wires[0].call("FUNCTION", "FLUSH")
    wires[0].call("FLUSHALL")
    yield wires
    for w in wires.values():
        w.close()


def _fresh(pair: Pair) -> None:
    for w in (pair.oracle, pair.ours[0]):
        w.call("FLUSHALL")
        w.call("FUNCTION", "FLUSH")


def lib(name: str, body: str) -> str:
    return f"#!lua name={name}\n{body}"


def load(name: str, body: str) -> tuple[str, ...]:
    return ("FUNCTION", "LOAD", lib(name, body))


FLUSH = ("FUNCTION", "FLUSH")

LOADING: list[tuple[Any, ...]] = [
    load("a", "redis.call('set','a','b')"),
    load("a", "return 1"),
    load("a", "x = 1"),
    load("a", "redis.setresp(3)"),
    load("a", "local v = string"),
    load("a", "local v = math.random()"),
    load("a", "local v = redis.sha1hex('')"),
    load("a", "local v = redis.REDIS_VERSION .. redis.REDIS_VERSION_NUM .. redis.LOG_WARNING"),
    load("a", "redis.log(redis.LOG_WARNING, 'x')"),
    load("a", "redis.log(1)"),
    load("a", "redis.log('x', 'y')"),
    load("a", "redis.register_function()"),
    load("a", "redis.register_function('f')"),
    load("a", "redis.register_function(1)"),
    load("a", "redis.register_function({})"),
    load("a", "redis.register_function('f', 1)"),
    load("a", "redis.register_function('f', function() end, 3)"),
    load("a", "redis.register_function('f-x', function() end)"),
    load("a", "redis.register_function('', function() end)"),
    load("a", "redis.register_function{function_name='f'}"),
    load("a", "redis.register_function{callback=function() end}"),
    load("a", "redis.register_function{function_name={}, callback=function() end}"),
    load("a", "redis.register_function{function_name='f', callback=1}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, "
              "description={}}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, flags=1}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, "
              "flags={'bad'}}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, flags={1}}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, x=1}"),
    load("a", "redis.register_function{function_name='f', callback=function() end, [1]=1}"),
    load("a", "redis.register_function('f', function() end)\n"
              "redis.register_function('f', function() end)"),
    load("a", "redis.register_function('f', function() end)\n"
              "redis.register_function('g', function() end)\nredis.call('x')"),
    load("a", "return 1 +"),
    load("a", "local x = 1\nerror('boom')"),
    ("FUNCTION", "LOAD", "#!lua"), ("FUNCTION", "LOAD", "#!lua name=a"),
    ("FUNCTION", "LOAD", "#!py name=d\nx"), ("FUNCTION", "LOAD", "#!lua Name=d\nx"),
    ("FUNCTION", "LOAD", "#!lua name=d name=e\nx"), ("FUNCTION", "LOAD", "#!lua nam=d\nx"),
    ("FUNCTION", "LOAD", "no shebang"), ("FUNCTION", "LOAD", "#!lua name=\nx"),
    ("FUNCTION", "LOAD", "#!lua name=a-b\nx"), ("FUNCTION", "LOAD", "#!\nx"),
    ("FUNCTION", "LOAD", "#!lua name=a x\nx"), ("FUNCTION", "LOAD", "#!lua name=\"q\"\nx"),
    ("FUNCTION", "LOAD"), ("FUNCTION", "LOAD", "x", "y", "z"), ("FUNCTION", "LOAD", "REPLACE"),
    # ones that load, then collide
    load("n1", "redis.register_function(1, function() return 1 end)"),
    ("FCALL", "1", 0),
    load("n2", "redis.register_function{function_name=2, callback=function() return 2 end, "
               "description=3}"),
    ("FCALL", "2", 0),
    load("n3", "redis.register_function{function_name='f3', callback=function() end, "
               "flags={x='no-writes'}}"),
    load("n3", "redis.register_function('g', function() end)"),
    ("FUNCTION", "LOAD", "REPLACE", lib("n3", "redis.register_function('1', function() end)")),
    ("FUNCTION", "LOAD", "replace", lib("n3", "redis.register_function('g3', function() end)")),
    ("FCALL", "f3", 0), ("FCALL", "g3", 0),
    ("FUNCTION", "LOAD", "#!LUA name=c\nredis.register_function('cf', function() return 'c' end)"),
    ("FCALL", "cf", 0),
    ("FUNCTION", "DELETE", "c"), ("FUNCTION", "DELETE", "c"), ("FCALL", "cf", 0),
    FLUSH,
]  # fmt: skip

CALLING: list[tuple[Any, ...]] = [
    load("calls", """
redis.register_function('set', function(keys, args) return redis.call('set', keys[1], args[1]) end)
redis.register_function{function_name='get', description='reads',
  callback=function(keys, args) return redis.call('get', keys[1]) end, flags={'no-writes'}}
redis.register_function('both', function(keys, args) return {keys, args, #keys, #args} end)
redis.register_function('globals', function(keys, args) return KEYS end)
redis.register_function('argv', function(keys, args) return ARGV end)
redis.register_function('assign', function(keys, args) x = 1 end)
redis.register_function('fail', function(keys, args)
  local a = 1
  error('boom')
end)
redis.register_function('bad', function(keys, args) return redis.call('nosuch') end)
redis.register_function('wrongtype', function(keys, args) return redis.call('incr', keys[1]) end)
redis.register_function('perr', function(k, a) return redis.pcall('incr', k[1]).err end)
redis.register_function('resp3', function(k, a)
  redis.setresp(3); return redis.call('hgetall', k[1])
end)
redis.register_function{function_name='rowrite', flags={'no-writes'},
  callback=function(keys, args) return redis.call('set', keys[1], 'x') end}
redis.register_function('reg', function(k, a)
  return redis.register_function('x', function() end)
end)
redis.register_function('kinds', function(k, a)
  return {type(redis.breakpoint), type(redis.debug), type(redis.call), type(cjson), type(bit),
          type(math.random), type(string.format), redis.nosuch == nil}
end)
redis.register_function('conv', function(k, a) return {1, 2.5, 'x', true, false, {ok='fine'}} end)
redis.register_function('status', function(k, a) return redis.status_reply('FINE') end)
redis.register_function('errorreply', function(k, a) return redis.error_reply('MY err') end)
redis.register_function('time', function(k, a) return #redis.call('time') end)
redis.register_function('eval', function(k, a) return redis.call('eval', 'return 1', 0) end)
redis.register_function('fcall', function(k, a) return redis.call('fcall', 'set', 0) end)
"""),
    ("FCALL", "set", 1, "k", "v1"), ("FCALL", "get", 1, "k"), ("FCALL_RO", "get", 1, "k"),
    ("FCALL_RO", "set", 1, "k", "v2"), ("GET", "k"),
    ("FCALL", "both", 2, "a", "b", "c", "d"), ("FCALL", "both", 0),
    ("FCALL", "both", 4, 1, 2, 3, 4),
    ("FCALL", "globals", 0), ("FCALL", "argv", 0), ("FCALL", "assign", 0), ("FCALL", "fail", 0),
    ("FCALL", "bad", 0), ("HSET", "h", "f", "v"), ("FCALL", "wrongtype", 1, "h"),
    ("FCALL", "perr", 1, "h"), ("FCALL", "resp3", 1, "h"), ("FCALL", "rowrite", 1, "k"),
    ("FCALL_RO", "rowrite", 1, "k"), ("FCALL", "reg", 0), ("FCALL", "kinds", 0),
    ("FCALL", "conv", 0), ("FCALL", "status", 0), ("FCALL", "errorreply", 0),
    ("FCALL", "time", 0), ("FCALL", "eval", 0), ("FCALL", "fcall", 0),
    ("FCALL", "nosuch", 0), ("FCALL", "nosuch", "x"), ("FCALL", "set", "x"),
    ("FCALL", "set", -1), ("FCALL", "set", 3, "k"), ("FCALL_RO", "get", "x"),
    ("FCALL_RO", "nosuch", 0), ("FCALL",), ("FCALL", "set"), ("FCALL_RO", "get"),
    ("EVAL", "return redis.call('fcall', 'set', 1, 'k', 'v')", 0),
]  # fmt: skip

ADMIN: list[tuple[Any, ...]] = [
    ("FUNCTION", "STATS"),
    load("one", "redis.register_function('f1', function() end)"),
    load("two", "redis.register_function{function_name='f2', callback=function() end, "
                "flags={'allow-stale', 'no-writes', 'allow-oom', 'no-cluster', "
                "'allow-cross-slot-keys'}, description='two'}\n"
                "redis.register_function('g2', function() end)"),
    load("three", "redis.register_function('f1', function() end)"),
    ("FUNCTION", "LOAD", "REPLACE", lib("one", "redis.register_function('g2', function() end)")),
    ("FUNCTION", "STATS"),
    ("FUNCTION", "LIST"), ("FUNCTION", "LIST", "WITHCODE"), ("FUNCTION", "list", "withcode"),
    ("FUNCTION", "LIST", "LIBRARYNAME", "T*"), ("FUNCTION", "LIST", "libraryname", "o?e"),
    ("FUNCTION", "LIST", "LIBRARYNAME", "nomatch"), ("FUNCTION", "LIST", "LIBRARYNAME", "*",
                                                     "WITHCODE"),
    ("FUNCTION", "LIST", "WITHCODE", "LIBRARYNAME", "one"), ("FUNCTION", "LIST", "LIBRARYNAME"),
    ("FUNCTION", "LIST", "bad"), ("FUNCTION", "LIST", "WITHCODE", "WITHCODE"),
    ("FUNCTION", "LIST", "LIBRARYNAME", "a", "LIBRARYNAME", "b"),
    ("FUNCTION", "DELETE", "nosuch"), ("FUNCTION", "DELETE"), ("FUNCTION", "DELETE", "a", "b"),
    ("FUNCTION", "KILL"), ("FUNCTION", "KILL", "x"), ("FUNCTION", "HELP"),
    ("FUNCTION", "HELP", "x"),
    ("FUNCTION", "STATS", "x"), ("FUNCTION", "DUMP", "x"), ("FUNCTION",), ("FUNCTION", "nosuch"),
    ("FUNCTION", "RESTORE"), ("FUNCTION", "RESTORE", "x", "y", "z"),
    ("FUNCTION", "RESTORE", "x", "bad"), ("FUNCTION", "RESTORE", "x"),
    ("FUNCTION", "RESTORE", "x", "FLUSH"),
    ("FUNCTION", "FLUSH", "bad"), ("FUNCTION", "FLUSH", "SYNC", "x"),
    ("FUNCTION", "FLUSH", "ASYNC"),
    ("FUNCTION", "LIST"), ("FUNCTION", "STATS"),
    load("four", "redis.register_function('f4', function() end)"), ("FUNCTION", "FLUSH", "sync"),
    ("FUNCTION", "LIST"),
]  # fmt: skip

GROUPS = {"loading": LOADING, "calling": CALLING, "admin": ADMIN}


def _sorted_maps(value: Any) -> Any:
    """FUNCTION LIST's reply with its libraries and their functions in name order (Redis
    lists them in its hash tables' order)."""

    def fields(item: Any) -> list[tuple[Any, Any]]:
        if isinstance(item, tuple) and item[0] == "%":  # a RESP3 map
            pairs = list(item[1])
        else:
            pairs = list(zip(item[::2], item[1::2], strict=True))
        return [(k, by_name(v) if k == b"functions" else v) for k, v in pairs]

    def by_name(items: list[Any]) -> list[Any]:
        named = [fields(i) for i in items]
        return sorted(named, key=lambda p: repr([v for k, v in p if k in NAMES]))

    return by_name(value) if isinstance(value, list) else value


NAMES = (b"library_name", b"name")


PROTOS = pytest.mark.parametrize("proto", [2, 3])


@PROTOS
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_functions_like_redis(pairs: dict[int, Pair], proto: int, group: str) -> None:
    pair = pairs[proto]
    _fresh(pair)
    for args in GROUPS[group]:
        if args[:2] == ("FUNCTION", "LIST") or args[:2] == ("FUNCTION", "list"):
            expected = _sorted_maps(pair.oracle.call(*args))
            got = _sorted_maps(pair.ours[pair.turn].call(*args))
            pair.turn ^= 1
            assert got == expected, f"{args}: redis {expected!r}, dominoes {got!r}"
        else:
            pair.same(*args)


@PROTOS
def test_dump_and_restore_like_redis(pairs: dict[int, Pair], proto: int) -> None:
    """Each side restores its own payload: the same replies, the same libraries after."""
    pair = pairs[proto]
    _fresh(pair)
    pair.same(*load("d1", "redis.register_function('x1', function() return 1 end)"))
    pair.same(*load("d2", "redis.register_function('x2', function() return 2 end)"))
    dumps = {
        "redis": pair.oracle.call("FUNCTION", "DUMP"),
        "ours": pair.ours[0].call("FUNCTION", "DUMP"),
    }
    assert all(isinstance(d, bytes) for d in dumps.values())
    sides = {"redis": pair.oracle, "ours": pair.ours[1]}

    def both(*args: Any, payload: bool = False) -> None:
        replies = {}
        for side, w in sides.items():
            words = (args[0], args[1], dumps[side], *args[2:]) if payload else args
            replies[side] = w.call(*words)
        assert replies["ours"] == replies["redis"], f"{args}: {replies}"

    both("FUNCTION", "DELETE", "d2")
    both("FUNCTION", "RESTORE", payload=True)  # APPEND: d1 exists (only d1: names its error)
    both("FCALL", "x2", 0)
    both("FUNCTION", "RESTORE", "REPLACE", payload=True)
    both("FCALL", "x2", 0)
    both("FUNCTION", "FLUSH")
    both("FUNCTION", "RESTORE", payload=True)
    both("FCALL", "x1", 0)
    both("FUNCTION", "DELETE", "d1")
    both(*load("other", "redis.register_function('x1', function() return 'other' end)"))
    both("FUNCTION", "RESTORE", "REPLACE", payload=True)  # x1 is now another library's
    both("FCALL", "x1", 0)
    both("FUNCTION", "RESTORE", "FLUSH", payload=True)
    both("FCALL", "x1", 0)
    both("FUNCTION", "STATS")
    both("FUNCTION", "RESTORE", "x" * 40)
    corrupt = dumps["ours"][:-1] + bytes([dumps["ours"][-1] ^ 1])
    assert pair.ours[0].call("FUNCTION", "RESTORE", corrupt) == (
        "-",
        "ERR DUMP payload version or checksum are wrong",
    )


@PROTOS
def test_functions_inside_a_transaction(pairs: dict[int, Pair], proto: int) -> None:
    pair = pairs[proto]
    _fresh(pair)
    code = lib(
        "tx",
        "redis.register_function('incr', function(keys) return redis.call('incr', keys[1]) end)\n"
        "redis.register_function{function_name='get', flags={'no-writes'},\n"
        "  callback=function(keys) return redis.call('get', keys[1]) end}",
    )
    pair.same("FUNCTION", "LOAD", code)
    script = [
        ("MULTI",), ("FCALL", "incr", 1, "c"), ("FCALL_RO", "get", 1, "c"),
        ("FCALL", "nosuch", 0), ("FCALL", "incr", 1, "c"), ("EXEC",),
        ("MULTI",), ("FUNCTION", "DELETE", "tx"), ("FCALL", "incr", 1, "c"), ("EXEC",),
        # refused when queued, so EXEC aborts (as for XGROUP, XINFO, OBJECT, SCRIPT)
        ("MULTI",), ("FUNCTION", "NOPE"), ("FUNCTION", "LOAD"), ("XGROUP", "CREATE", "s"),
        ("XINFO", "NOPE"), ("OBJECT", "ENCODING"), ("SCRIPT", "LOAD"), ("INCR", "c"), ("EXEC",),
        ("GET", "c"),
    ]  # fmt: skip
    for args in script:  # one connection each side: a transaction is per connection
        expected = pair.oracle.call(*args)
        assert pair.ours[1].call(*args) == expected, args
    assert pair.ours[0].call("GET", "c") == pair.oracle.call("GET", "c") == b"2"


# --- replication ----------------------------------------------------------------------------


def test_a_library_loaded_on_one_replica_runs_on_the_other(on: dict[int, Wire]) -> None:
    code = lib(
        "counter",
        "redis.register_function('bump', function(keys, args)\n"
        "  redis.call('incrby', keys[1], args[1])\n"
        "  return redis.call('lrange', keys[2], 0, -1)\n"
        "end)\n"
        "redis.register_function{function_name='peek', flags={'no-writes'},\n"
        "  callback=function(keys) return redis.call('get', keys[1]) end}",
    )
    assert on[0].call("FUNCTION", "LOAD", code) == b"counter"
    assert on[1].call("FCALL", "bump", 2, "n", "l", 5) == []
    assert on[0].call("FCALL_RO", "peek", 1, "n") == b"5"
    assert on[0].call("FCALL", "bump", 2, "n", "l", 2) == []
    assert on[1].call("FCALL_RO", "peek", 1, "n") == b"7"
    assert on[1].call("GET", "n") == on[0].call("GET", "n") == b"7"
    assert on[0].call("FUNCTION", "DELETE", "counter") == ("+", "OK")
    assert on[1].call("FCALL", "bump", 2, "n", "l", 1) == ("-", "ERR Function not found")


def test_random_in_a_function_is_the_same_on_every_replica(on: dict[int, Wire]) -> None:
    code = lib(
        "dice",
        "redis.register_function('roll', function(keys)\n"
        "  for i = 1, 20 do redis.call('rpush', keys[1], math.random(1000000)) end\n"
        "  redis.call('sadd', keys[2], 'a', 'b', 'c', 'd', 'e')\n"
        "  return redis.call('spop', keys[2])\n"
        "end)",
    )
    on[1].call("FUNCTION", "LOAD", code)
    for _ in range(3):
        assert isinstance(on[0].call("FCALL", "roll", 2, "rolls", "s"), bytes)
    assert on[0].call("LRANGE", "rolls", 0, -1) == on[1].call("LRANGE", "rolls", 0, -1)
    assert on[0].call("SMEMBERS", "s") == on[1].call("SMEMBERS", "s")
    assert on[0].call("LLEN", "rolls") == 60


def test_a_runaway_function_is_stopped_on_every_replica(on: dict[int, Wire]) -> None:
    code = lib(
        "spin",
        "redis.register_function('spin', function(keys)\n"
        "  redis.call('set', keys[1], '1')\n"
        "  while true do end\n"
        "end)",
    )
    on[0].call("FUNCTION", "LOAD", code)
    assert on[1].call("FCALL", "spin", 1, "before") == (
        "-",
        f"ERR Script killed: it ran more than {LIMIT} Lua instructions (the replicas' "
        "busy-script limit) script: spin, on @user_function:4.",
    )
    assert on[0].call("GET", "before") == on[1].call("GET", "before") == b"1"
    # a library that spins while it loads is refused, on every replica
    assert on[1].call("FUNCTION", "LOAD", lib("busy", "while true do end")) == (
        "-",
        "ERR Error registering functions: ERR FUNCTION LOAD timeout",
    )
    assert on[0].call("FUNCTION", "LIST", "LIBRARYNAME", "busy") == []
    assert on[0].call("INCR", "after") == 1
    assert on[1].call("GET", "after") == b"1"


def test_a_restarted_replica_has_the_libraries(svc: Service, on: dict[int, Wire]) -> None:
    on[0].call(
        "FUNCTION",
        "LOAD",
        lib("kept", "redis.register_function('hello', function(k, a) return 'hi ' .. a[1] end)"),
    )
    assert on[1].call("FCALL", "hello", 0, "one") == b"hi one"
    on[1].close()
    os.kill(svc.replica_pids()[1], signal.SIGKILL)
    svc.wait_restarted(1)
    fresh = wires_on_every_replica(svc.port, 2)
    try:
        assert fresh[1].call("FCALL", "hello", 0, "two") == b"hi two"
        listed = fresh[1].call("FUNCTION", "LIST", "LIBRARYNAME", "kept")
        assert isinstance(listed, list)
        assert len(listed) == 1
    finally:
        for w in fresh.values():
            w.close()


def test_redis_py_functions(svc: Service) -> None:
    with redis.Redis(port=svc.port, socket_timeout=20, protocol=2) as r:
        r.function_flush()
        r.flushall()
        code = lib(
            "mylib",
            "redis.register_function('myset', function(keys, args) "
            "return redis.call('set', keys[1], args[1]) end)\n"
            "redis.register_function{function_name='myget', flags={'no-writes'}, "
            "callback=function(keys) return redis.call('get', keys[1]) end}",
        )
        assert r.function_load(code) == b"mylib"
        assert r.fcall("myset", 1, "k", "v") == b"OK"
        assert r.fcall_ro("myget", 1, "k") == b"v"
        listed = r.function_list(library="mylib", withcode=True)
        assert len(listed) == 1
        fields = dict(zip(listed[0][::2], listed[0][1::2], strict=True))
        assert fields[b"library_name"] == b"mylib"
        assert fields[b"engine"] == b"LUA"
        assert fields[b"library_code"] == code.encode()
        functions = sorted(
            dict(zip(f[::2], f[1::2], strict=True))[b"name"] for f in fields[b"functions"]
        )
        assert functions == [b"myget", b"myset"]
        payload = r.function_dump()
        assert r.function_flush() is True
        with pytest.raises(redis.ResponseError, match="Function not found"):
            r.fcall("myset", 1, "k", "v")
        assert r.function_restore(payload) is True
        assert r.fcall("myget", 1, "k") == b"v"
        with pytest.raises(redis.ResponseError, match="already exists"):
            r.function_load(code)
        assert r.function_load(code, replace=True) == b"mylib"


# --- snapshots --------------------------------------------------------------------------------


def test_the_libraries_survive_a_snapshot() -> None:
    one = Functions(Scripting(TABLE, []))
    code = (
        b"#!lua name=snap\nredis.register_function{function_name='echo', "
        b"flags={'no-writes'}, callback=function(k, a) return a[1] end}"
    )
    assert one.function(None, [b"FUNCTION", b"LOAD", code]) == b"snap"  # type: ignore[arg-type]
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(one.snapshot()))
    two = Functions(Scripting(TABLE, []))
    two.restore(state)
    assert two.libraries == {b"snap": code}
    assert two.fcall_ro(0, [b"FCALL_RO", b"echo", b"0", b"back"]) == b"back"


def test_a_library_that_no_longer_loads_stays_in_the_replicated_state() -> None:
    """A replica whose busy-script limit refuses a library when it rebuilds its compiled
    functions after a snapshot answers that the function is missing; the libraries (the
    replicated state) stay what every other replica has."""
    one = Functions(Scripting(TABLE, []))
    code = (
        b"#!lua name=slow\nfor i = 1, 100000 do end\n"
        b"redis.register_function{function_name='f', flags={'no-writes'}, callback=function() "
        b"return 1 end}"
    )
    assert one.function(None, [b"FUNCTION", b"LOAD", code]) == b"slow"  # type: ignore[arg-type]
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(one.snapshot()))
    scripting = Scripting(TABLE, [])
    scripting._engine = Engine(scripting._dispatch, instruction_limit=1000)
    two = Functions(scripting)
    two.restore(state)
    with pytest.raises(KvError, match="Function not found"):
        two.fcall_ro(0, [b"FCALL_RO", b"f", b"0"])
    assert two.libraries == {b"slow": code}
    assert two.snapshot()["libraries"] == one.snapshot()["libraries"]
