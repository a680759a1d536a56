"""Lua scripting (EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, SCRIPT) against a real ``redis-server`` 7.

The same scripts go to the 2-replica KV service and to a throwaway
``redis-server``; every reply is compared exactly (error texts, with their
``script: <sha>, on @user_script:N.`` tail, included), in RESP2 and in RESP3,
read off the wire by a small RESP reader that keeps each reply's type.  On
the KV side the commands alternate between the two replicas, so what a script
writes on one replica is read on the other.

Beyond the oracle: the script cache is replicated (SCRIPT LOAD on one
replica, EVALSHA on the other), a script using TIME and math.random leaves
the same state on both replicas, and a runaway script is stopped by the
instruction limit on both, keeping the writes it made before (as Redis does).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
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


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The 2-replica KV with a small busy-script limit (so the runaway test is quick)."""
    run_dir = tmp_path_factory.mktemp("scripting") / "run"
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


@pytest.fixture(scope="module")
def on(svc: Service) -> Iterator[dict[int, Wire]]:
    wires = wires_on_every_replica(svc.port, 2)
    yield wires
    for w in wires.values():
        w.close()


def _fresh(pair: Pair) -> None:
    for w in (pair.oracle, pair.ours[0]):
        w.call("FLUSHALL")
        w.call("SCRIPT", "FLUSH")


PROTOS = pytest.mark.parametrize("proto", [2, 3])

# --- scripted cases --------------------------------------------------------------------------


def ev(body: str, *rest: str | int) -> tuple[Any, ...]:
    return ("EVAL", body, *rest) if rest else ("EVAL", body, 0)


CONVERSIONS: list[tuple[Any, ...]] = [
    ev("return 1"), ev("return 3.99"), ev("return -3.99"), ev("return 1e20"), ev("return 0/0"),
    ev("return 'x'"), ev("return ''"), ev("return true"), ev("return false"), ev("return nil"),
    ev("return {1, 2, {3, 'x'}, nil, 3}"), ev("return {}"), ev("return 'x', 'y'"),
    ev("return {1, {ok='x'}, {err='E y'}, false, true, 2.7}"), ev("return {'a', b='c'}"),
    ev("return {ok='fine'}"), ev("return {err='boom'}"), ev("return {err=''}"),
    ev("return {ok='a', err='b'}"), ev("return {err=1}"), ev("return {ok=1}"),
    ev("return {double=3.5}"), ev("return {double='3.5'}"), ev("return {double=1/0}"),
    ev("return {map={a=1}}"), ev("return {set={a=true}}"), ev("return {map={a=1}, set={b=true}}"),
    ev("return {set={b=true}, ok='x'}"),
    ev("redis.setresp(3); return {double=3.5}"), ev("redis.setresp(3); return true"),
    ev("redis.setresp(3); return false"), ev("redis.setresp(3); return {map={a={1, 'x'}}}"),
    ev("return {KEYS[1], ARGV[1], #KEYS, #ARGV}", 1, "k", "a", "b"),
    ev("return {KEYS[1], KEYS[2], ARGV[1]}", 2, "k1", "k2"),
    ev("return 1", "abc"), ev("return 1", -1), ev("return 1", 2, "a"), ("EVAL", "return 1"),
    ev("return redis.sha1hex('')"), ev("return redis.sha1hex(1)"), ev("return redis.sha1hex({})"),
    ev("return redis.sha1hex()"),
    ev("return redis.error_reply('boom')"), ev("return redis.error_reply('-X boom')"),
    ev("return redis.error_reply('')"), ev("return redis.error_reply(1)"),
    ev("return redis.status_reply('fine')"), ev("return redis.status_reply()"),
    ev("return redis.log(redis.LOG_WARNING, 'x')"), ev("return redis.log()"),
    ev("return {redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING}"),
    ev("redis.setresp(4)"), ev("redis.setresp()"),
    ev("error('boom')"), ev("error({err='MY boom'})"), ev("error(nil)"), ev("error(12)"),
    ev("error('a\\nb')"), ev("error('x', 0)"), ev("return 1 +"),
    ev("local x = 0\nfor i = 1, 10 do x = x + i end\nreturn x"),
    ev("local t = {}\nt.x = 1\nerror('line three')"),
]  # fmt: skip

CALLS: list[tuple[Any, ...]] = [
    ("SET", "s", "abc"),
    ev("return {1, 2, redis.call('set', 'a', 'b'), redis.call('get', 'a')}"),
    ev("return redis.call('incr', 's')"), ev("return redis.pcall('incr', 's')"),
    ev("local r = redis.pcall('incr', 's'); return type(r) .. r.err"),
    ev("local ok, e = pcall(redis.call, 'incr', 's'); return e"),
    ev("local ok, e = pcall(function() return redis.call('incr', 's') end); return {type(e), e}"),
    ev("local call = redis.call\nlocal ok = pcall(call, 'incr', 's')\nreturn call('get', 's')"),
    ev("return redis.call('nosuch')"), ev("return redis.call()"), ev("return redis.call('get')"),
    ev("return redis.pcall()"), ev("return redis.pcall('nosuch')"), ev("return redis.pcall('get')"),
    ev("return redis.call('set', 'n', {})"), ev("return redis.call('set', 'n', nil)"),
    ev("return redis.call('set', 'n', true)"), ev("return redis.pcall('set', {})"),
    ev("return redis.call('get', 1.5)"), ev("return redis.call('set', 'n', 0.1)"), ("GET", "n"),
    ev("return redis.call('set', 'n', 1e20)"), ("GET", "n"),
    ev("return redis.call('set', 'n', 123456789012345)"), ("GET", "n"),
    ev("return redis.call('GeT', 'n')"),
    ev("return redis.call('eval', 'return 1', 0)"), ev("return redis.call('multi')"),
    ev("return redis.call('watch', 'l')"), ev("return redis.call('subscribe', 'c')"),
    ev("return redis.call('script', 'load', 'return 1')"), ev("return redis.pcall('exec')"),
    ev("return redis.call('fcall', 'f', 0)"), ev("return redis.call('blpop', 'l', 0)"),
    ev("return redis.call('ping')"), ev("return redis.call('echo', 'x')"),
    ev("return type(redis.call('get', 'nokey'))"),
    ev("redis.setresp(3); return type(redis.call('get', 'nokey'))"),
    ev("redis.setresp(3); return redis.call('get', 'nokey')"),
    ev("return redis.call('hset', 'h', 'f', 'v')"), ev("return redis.call('hgetall', 'h')"),
    ev("redis.setresp(3); return redis.call('hgetall', 'h')"),
    ev("redis.setresp(3); local r = redis.call('hgetall', 'h'); return {type(r.map), r.map.f}"),
    ev("local r = redis.call('set', 'st', 'v'); return {type(r), r.ok}"),
    ev("return redis.call('type', 'st')"), ev("return redis.call('exists', 'a', 'n', 'zz')"),
    ev("return redis.call('zadd', 'z', 1.5, 'a', 2, 'b')"),
    ev("return redis.call('zrange', 'z', 0, -1, 'withscores')"),
    ev("redis.setresp(3); return redis.call('zrange', 'z', 0, -1, 'withscores')"),
    ev("redis.setresp(3); local r = redis.call('zscore', 'z', 'a'); return {type(r), r.double}"),
    ev("return redis.call('zscore', 'z', 'a')"),
    ev("redis.setresp(3); return redis.call('smembers', 'nokey')"),
    ev("return redis.call('lpop', 'nolist', 2)"),
    ev("redis.setresp(3); return redis.call('lpop', 'nolist', 2)"),
    ev("redis.call('rpush', KEYS[1], ARGV[1], ARGV[2])\nreturn redis.call('lrange', KEYS[1], 0, 9)",
       1, "list", "x", "y"),
    ev("return redis.call('get', KEYS[1])", 1, "list"), ("LRANGE", "list", 0, -1),
    ev("return redis.call('del', 'a', 's')"), ("EXISTS", "a", "s"),
    # a command's error table carries Redis's ignore_error_stats_update; the library's not
    ("HSET", "hh", "f", "v"),
    *[ev(f"return cjson.encode(redis.pcall({a}))") for a in (
        "'nosuch'", "'get'", "'get', {}", "", "'incr', 'hh'", "'set', 'k', 'v', 'bad'", "'multi'",
    )],
    ("EVAL_RO", "return cjson.encode(redis.pcall('set', 'a', 'b'))", 0),
]  # fmt: skip

SANDBOX: list[tuple[Any, ...]] = [
    ev("x = 1"), ev("return x"), ev("return _G.nope"), ev("return _G.redis ~= nil"),
    ev("local t = redis; t.x = 1"), ev("cjson.x = 1"), ev("string.x = 1"), ev("return string.x"),
    ev("rawset(_G, 'x', 1)"), ev("setmetatable(_G, nil)"), ev("getmetatable('').__index.x = 1"),
    ev("return ('abc'):upper()"), ev("return loadstring('return 1 + 1')()"),
    *[ev(f"return {name}") for name in (
        "os", "io", "require", "loadfile", "dofile", "print", "debug", "setfenv", "getfenv",
        "module", "newproxy", "python",
    )],
    *[ev(f"return type({name})") for name in (
        "bit", "cjson", "math", "string", "table", "coroutine", "loadstring", "pcall", "xpcall",
        "unpack", "select", "tostring", "tonumber", "rawget", "rawequal", "next", "gcinfo",
    )],
    ev("local ok, e = pcall(error, {err='boom'}); return e"),
    ev("return select('#', pcall(function() return 1, nil, 3 end))"),
    ev("return tostring(pcall(error))"), ev("return math.random(0)"),
    ev("local co = coroutine.wrap(function(a) coroutine.yield(a + 1) end); return co(1)"),
]  # fmt: skip

LIBRARIES: list[tuple[Any, ...]] = [
    ev("return cjson.encode({1, 2, 'a', {x=1}})"),
    ev("return cjson.encode({x=1.5, y=true, z=cjson.null})"),
    ev("return cjson.decode('[1,2,{\"a\":null}]')[3].a == cjson.null"),
    ev("return cjson.encode({})"), ev("return cjson.encode(0.1)"), ev("return cjson.encode(1e20)"),
    ev("return cjson.encode(12345678901234567)"),
    ev("return cjson.encode('a/b\"\\1\\127')"),
    ev("return cjson.decode('{\"a\":[1,2.5,\"x\",true,false]}').a[2]"),
    ev("return cjson.decode('bad')"), ev("return cjson.encode(function() end)"),
    ev("return cjson.encode({[1]=1, [3]=3})"), ev("return cjson.encode({[1]=1, [2]=2, x=3})"),
    ev("return cjson.encode(cjson.decode('{\"a\":{\"b\":[1,2,3]}}'))"),
    ev("local t = cjson.decode('{\"k\":\"v\",\"n\":[1,null]}'); return {t.k, #t.n}"),
    ev("return bit.band(12, 10)"), ev("return bit.bor(1, 2, 4)"), ev("return bit.bxor(7, 2)"),
    ev("return bit.tohex(255)"), ev("return bit.tohex(-1, -4)"), ev("return bit.tobit(2^32 + 5)"),
    ev("return bit.bnot(0)"), ev("return bit.lshift(1, 40)"), ev("return bit.rshift(-1, 28)"),
    ev("return bit.arshift(-256, 4)"), ev("return bit.rol(0x12345678, 8)"),
    ev("return bit.ror(0x12345678, 8)"), ev("return bit.bswap(0x12345678)"),
]  # fmt: skip

CACHE: list[tuple[Any, ...]] = [
    ("EVALSHA", "0000000000000000000000000000000000000000", 0), ("EVALSHA", "abc", 0),
    ("EVALSHA", "E0E1F9FABFC9D4800C877A703B823AC0578FF8DB", 0),
    ev("return 1"), ("EVALSHA", "E0E1F9FABFC9D4800C877A703B823AC0578FF8DB", 0),
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", 0),
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "x"),
    ("SCRIPT", "LOAD", "return 2"),
    ("SCRIPT", "EXISTS", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
     "7f923f79fe76194c868d7e1d0820de36700eb649", "nope"),
    ("EVALSHA", "7f923f79fe76194c868d7e1d0820de36700eb649", 0),
    ("EVALSHA_RO", "7f923f79fe76194c868d7e1d0820de36700eb649", 0),
    ("SCRIPT", "LOAD", "return 1 +"), ("SCRIPT", "LOAD"), ("SCRIPT", "EXISTS"),
    ("SCRIPT", "FLUSH", "BAD"), ("SCRIPT", "FLUSH", "SYNC", "ASYNC"), ("SCRIPT", "FLUSH", "ASYNC"),
    ("SCRIPT", "EXISTS", "7f923f79fe76194c868d7e1d0820de36700eb649"),
    ("EVALSHA", "7f923f79fe76194c868d7e1d0820de36700eb649", 0),
    ("SCRIPT", "KILL"), ("SCRIPT", "DEBUG", "BAD"), ("SCRIPT", "DEBUG", "NO"), ("SCRIPT", "HELP"),
    ("SCRIPT", "NOPE"), ("SCRIPT",), ("SCRIPT", "FLUSH"),
    ("EVAL_RO", "return redis.call('set', 'a', '1')", 0),
    ("EVAL_RO", "return redis.pcall('set', 'a', '1')", 0),
    ("SET", "a", "v"), ("EVAL_RO", "return redis.call('get', KEYS[1])", 1, "a"),
    ("EVALSHA", "x", "abc"), ("EVALSHA", "x", -1), ("EVALSHA", "f" * 40, -1),
    ("EVALSHA", "f" * 40, 5), ("EVALSHA_RO", "x", -1), ("EVALSHA_RO", "f" * 40, "x"),
    ("EVAL_RO", "return 1", "x"), ("EVAL_RO", "return 1 +", 0),
]  # fmt: skip

SHEBANGS: list[tuple[Any, ...]] = [
    ("SET", "a", "b"),
    *[ev(body) for body in (
        "#!lua\nreturn 1",
        "#!lua\nerror('x')",
        "#!lua flags=no-writes\nreturn redis.call('set','a','b')",
        "#!lua flags=no-writes,allow-stale\nreturn redis.call('get','a')",
        "#!lua flags=bad\nreturn 1",
        "#!lua flags=\nreturn 1",
        "#!lua x=1\nreturn 1",
        "#!py\nreturn 1",
        "#!lua",
        "#!lua\n",
        "#!lua name=x\nreturn 1",
        "#!lua flags=no-writes flags=allow-oom\nreturn 1",
        "#!lua  flags=no-writes\nreturn 1",
        "#!lua\nreturn 1 +",
        "#!lua\r\nreturn 1",
        "#!\nreturn 1",
        "#!lua flags=no-writes\nreturn redis.pcall('set','a','b')",
        "#!lua flags=a,,b\nreturn 1",
        "#!lua flags=no-cluster,allow-cross-slot-keys,allow-oom\nreturn 1",
        "#!lua flags=,\nreturn 1",
    )],
    ("EVAL_RO", "#!lua\nreturn 1", 0), ("EVAL_RO", "#!lua flags=no-writes\nreturn 1", 0),
    ("SCRIPT", "LOAD", "#!lua flags=bad\nreturn 1"), ("SCRIPT", "LOAD", "#!lua\nreturn 7"),
]  # fmt: skip

GROUPS = {
    "shebangs": SHEBANGS,
    "conversions": CONVERSIONS,
    "calls": CALLS,
    "sandbox": SANDBOX,
    "libraries": LIBRARIES,
    "cache": CACHE,
}


@PROTOS
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_scripts_like_redis(pairs: dict[int, Pair], proto: int, group: str) -> None:
    pair = pairs[proto]
    _fresh(pair)
    for args in GROUPS[group]:
        pair.same(*args)


@PROTOS
def test_multi_line_errors_name_their_line(pairs: dict[int, Pair], proto: int) -> None:
    pair = pairs[proto]
    _fresh(pair)
    pair.same("SET", "s", "x")
    pair.same("EVAL", "local a = 1\n\nreturn redis.call('incr', 's')", 0)
    pair.same("EVAL", "local a = 1\nlocal b = redis.call('incr', 's')\nreturn b", 0)
    pair.same("EVAL", "local function f()\n  error('deep')\nend\nf()", 0)
    pair.same("EVAL", "local a = 1\nreturn nope", 0)
    pair.same("EVAL", "local a = 1\nglobal_write = 2", 0)


# --- replication ----------------------------------------------------------------------------


def test_script_cache_is_replicated(on: dict[int, Wire]) -> None:
    on[0].call("SCRIPT", "FLUSH")
    sha = on[0].call("SCRIPT", "LOAD", "return ARGV[1] .. '!'")
    assert on[1].call("SCRIPT", "EXISTS", sha) == [1]
    assert on[1].call("EVALSHA", sha, 0, "hi") == b"hi!"
    assert on[1].call("EVALSHA_RO", sha, 0, "ro") == b"ro!"
    # EVAL caches its script on every replica
    on[1].call("EVAL", "return 7", 0)
    seven = on[0].call("EVAL", "return redis.sha1hex('return 7')", 0).decode()
    assert on[0].call("EVALSHA", seven, 0) == 7
    assert on[0].call("SCRIPT", "FLUSH") == ("+", "OK")
    assert on[1].call("EVALSHA", sha, 0, "x") == (
        "-",
        "NOSCRIPT No matching script. Please use EVAL.",
    )


def test_a_script_writes_on_one_replica_and_reads_on_the_other(on: dict[int, Wire]) -> None:
    on[0].call("FLUSHALL")
    script = """
    for i = 1, 20 do redis.call('rpush', KEYS[1], i * 2) end
    redis.call('hset', KEYS[2], 'n', redis.call('llen', KEYS[1]))
    return redis.call('lrange', KEYS[1], 0, 2)
    """
    assert on[0].call("EVAL", script, 2, "l", "h") == [b"2", b"4", b"6"]
    assert on[1].call("LLEN", "l") == 20
    assert on[1].call("HGET", "h", "n") == b"20"
    assert on[1].call("EVAL_RO", "return redis.call('lindex', KEYS[1], -1)", 1, "l") == b"40"


def test_time_and_random_are_the_same_on_every_replica(on: dict[int, Wire]) -> None:
    on[0].call("FLUSHALL")
    script = """
    local t = redis.call('TIME')
    redis.call('set', 'time', t[1] .. '.' .. t[2])
    for i = 1, 30 do redis.call('rpush', 'rand', math.random(1000000)) end
    redis.call('set', 'float', tostring(math.random()))
    math.randomseed(42)
    redis.call('set', 'seeded', math.random(1, 1000000))
    redis.call('sadd', 'set', 'a', 'b', 'c', 'd', 'e', 'f')
    redis.call('rpush', 'popped', redis.call('spop', 'set'), redis.call('srandmember', 'set'))
    return t
    """
    for _ in range(3):
        t = on[1].call("EVAL", script, 0)
        assert isinstance(t, list)
        assert len(t) == 2
        assert int(t[0]) > 1_600_000_000
    for key in ("time", "float", "seeded"):
        assert on[0].call("GET", key) == on[1].call("GET", key)
    for key in ("rand", "popped"):
        assert on[0].call("LRANGE", key, 0, -1) == on[1].call("LRANGE", key, 0, -1)
    assert on[0].call("SMEMBERS", "set") == on[1].call("SMEMBERS", "set")
    assert len(on[0].call("LRANGE", "rand", 0, -1)) == 90
    # the same seed gives the same draws, every time, on every replica
    seeded = "math.randomseed(7); return {math.random(100), math.random(100), math.random(100)}"
    assert on[0].call("EVAL", seeded, 0) == on[1].call("EVAL", seeded, 0)


def test_a_runaway_script_is_stopped_on_every_replica(on: dict[int, Wire]) -> None:
    on[0].call("FLUSHALL")
    script = "redis.call('set', 'before', '1')\nwhile true do end"
    reply = on[0].call("EVAL", script, 0)
    sha = on[0].call("EVAL", "return redis.sha1hex(ARGV[1])", 0, script).decode()
    assert reply == (
        "-",
        f"ERR Script killed: it ran more than {LIMIT} Lua instructions (the replicas' "
        f"busy-script limit) script: {sha}, on @user_script:2.",
    )
    # its writes before the limit stay (Redis never rolls a script back), on both replicas
    assert on[0].call("GET", "before") == on[1].call("GET", "before") == b"1"
    # catching the error does not keep a script alive, nor does a coroutine
    stubborn = """
    local n = 0
    while true do
      pcall(function() while true do n = n + 1 end end)
      redis.call('incr', 'tries')
    end
    """
    reply = on[1].call("EVAL", stubborn, 0)
    assert isinstance(reply, tuple)
    assert reply[0] == "-"
    assert "Script killed" in reply[1]
    assert on[0].call("GET", "tries") == on[1].call("GET", "tries")
    hidden = "local co = coroutine.wrap(function() while true do end end); co()"
    reply = on[0].call("EVAL", hidden, 0)
    assert isinstance(reply, tuple)
    assert "Script killed" in reply[1]
    reply = on[0].call("EVAL_RO", "while true do end", 0)
    assert isinstance(reply, tuple)
    assert "Script killed" in reply[1]
    # the replicas are fine afterwards
    assert on[0].call("EVAL", "return redis.call('incr', 'after')", 0) == 1
    assert on[1].call("GET", "after") == b"1"


def test_scripts_inside_a_transaction(on: dict[int, Wire]) -> None:
    on[0].call("FLUSHALL")
    w = on[1]
    assert w.call("MULTI") == ("+", "OK")
    assert w.call("EVAL", "return redis.call('incr', KEYS[1])", 1, "c") == ("+", "QUEUED")
    assert w.call("EVAL", "return redis.call('incr', KEYS[1])", 1, "c") == ("+", "QUEUED")
    assert w.call("EXEC") == [1, 2]
    assert on[0].call("GET", "c") == b"2"


def test_publish_from_a_script_reaches_every_replica(svc: Service, on: dict[int, Wire]) -> None:
    sub = wires_on_every_replica(svc.port, 2)
    try:
        for w in sub.values():
            assert w.call("SUBSCRIBE", "news") == [b"subscribe", b"news", 1]
        assert on[0].call("EVAL", "return redis.call('publish', 'news', 'hi')", 0) == 2
        for w in sub.values():
            assert w.read() == [b"message", b"news", b"hi"]
    finally:
        for w in sub.values():
            w.close()


def test_redis_py_scripts(svc: Service) -> None:
    with redis.Redis(port=svc.port, socket_timeout=20) as r:
        r.flushall()
        incr = r.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
        assert incr(keys=["k"], args=[5]) == 5
        assert incr(keys=["k"], args=[2]) == 7
        assert r.eval("return {KEYS[1], ARGV[1]}", 1, "a", "b") == [b"a", b"b"]
        r.rpush("l", "x")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            r.eval("return redis.call('get', KEYS[1])", 1, "l")


# --- the script cache in snapshots ------------------------------------------------------------


def test_the_script_cache_survives_a_snapshot() -> None:
    one = Scripting(TABLE, [])
    one.scripts = {b"a" * 40: b"return 1", b"b" * 40: b"return 2"}
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(one.snapshot()))
    two = Scripting(TABLE, [])
    two.restore(state)
    assert two.scripts == one.scripts
