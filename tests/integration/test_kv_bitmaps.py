"""Bitmaps and HyperLogLogs against a real ``redis-server`` 7.0, side by side.

The 2-replica KV service and a throwaway ``redis-server`` get the same commands and every
reply is compared exactly, error texts included, in RESP2 and RESP3; on the KV side the
commands alternate between the replicas, so what one writes the other reads (a write on the
replica about to read first, ``DEL {barrier}``, orders it after the other's last write).

HyperLogLogs are compared by PFCOUNT, which is exact (the KV runs Redis's own hash and
estimator); their bytes are not (the KV keeps every HLL in Redis's dense encoding, where
Redis starts sparse: a documented difference), but each side reads the other's bytes.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dominoes.components.kv._service import TABLE
from dominoes.components.kv._table import WRITE

from .harness import Service
from .kv_helpers import client, clients_on_every_replica, redis_oracle

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

BARRIER = ("DEL", "{barrier}")
INVALID = "INVALIDOBJ Corrupted HLL object detected"


def _raw(r: redis.Redis) -> redis.Redis:
    r.response_callbacks.clear()  # compare what the server said, not redis-py's reading of it
    return r


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, redis.Redis]]:
    """The oracle in RESP2 (key 2) and RESP3 (key 3)."""
    with redis_oracle(tmp_path_factory.mktemp("bitmap-oracle")) as r:
        version = str(r.info("server")["redis_version"])
        if not version.startswith("7.0"):
            pytest.skip(f"the oracle is Redis 7.0, this is {version}")
        port = r.connection_pool.connection_kwargs["port"]
        clients = {2: _raw(client(port, protocol=2)), 3: _raw(client(port, protocol=3))}
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
        self.dirty = False
        self.theirs.execute_command("FLUSHALL")
        self.ours[0].execute_command("FLUSHALL")
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

    def same(self, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], str):
            args = tuple(shlex.split(args[0]))
        theirs, mine = self.run(*args)
        assert mine == theirs, f"{args}: redis {theirs!r}, dominoes {mine!r}"
        return theirs


# --- scripted cases: each runs from an empty database, in RESP2 and RESP3 -------------------

_RANGES = ["0 0", "0 -1", "1 1", "1 -2", "-1 -1", "-2 -1", "-100 100", "5 2", "-1 -5", "2 100",
           "-3 -2", "100 200", "-100 -50", "0 4", "3 3"]  # fmt: skip
_BIT_RANGES = ["0 0", "0 -1", "1 5", "5 1", "7 8", "-1 -1", "-9 -2", "3 20", "12 12", "-100 5",
               "0 23", "0 24", "9 15", "17 100", "-5 -9"]  # fmt: skip

CASES: dict[str, list[Any]] = {
    "setbit getbit": [
        "SETBIT k 7 1",
        "SETBIT k 7 1",
        "SETBIT k 7 0",
        "SETBIT k 100 1",
        "GET k",
        "STRLEN k",
        "GETBIT k 100",
        "GETBIT k 99",
        "GETBIT k 1000",
        "GETBIT nokey 3",
        "SETBIT k 0 1",
        "GET k",
        "SETBIT k -1 1",
        "SETBIT k x 1",
        "SETBIT k 4294967296 1",
        "SETBIT k 1.5 1",
        "SETBIT k 4294967296 x",
        "SETBIT k 0 2",
        "SETBIT k 0 -1",
        "SETBIT k 0 01",
        "SETBIT k 0 x",
        "SETBIT k 01 1",
        "SETBIT k '' 1",
        "GETBIT k 4294967296",
        "GETBIT k 4294967295",
        "GETBIT k -1",
        "GETBIT nokey x",
        "GETBIT k ' 1'",
        "SETBIT new 0 0",
        "GET new",
        "SETBIT new2 13 1",
        "GET new2",
        "RPUSH list a",
        "SETBIT list 0 1",
        "GETBIT list 0",
        "SETBIT list x 1",
        "GETBIT list x",
        "SET n 12345",
        "GETBIT n 2",
        "SETBIT n 2 0",
        "GET n",
        "SETBIT n 3 1",
        "GET n",
        "SET t abc EX 1000",
        "SETBIT t 1 1",
        "TTL t",
        "SETBIT k 0",
        "GETBIT k",
        "GETBIT k 1 2",
        "SETBIT k 1 1 1",
    ],
    "bitcount": [
        "SET s foobar",
        "BITCOUNT s",
        "BITCOUNT nokey",
        "BITCOUNT nokey x y",
        "BITCOUNT nokey 1",
        *[f"BITCOUNT s {r}" for r in _RANGES],
        *[f"BITCOUNT s {r} BYTE" for r in _RANGES[:5]],
        *[f"BITCOUNT s {r} BIT" for r in _BIT_RANGES],
        *[f"BITCOUNT s {r} bit" for r in _BIT_RANGES[:3]],
        "BITCOUNT s 1",
        "BITCOUNT s x y",
        "BITCOUNT s 0 y",
        "BITCOUNT s 0 1 WORD",
        "BITCOUNT s 0 1 BIT x",
        "BITCOUNT s -1 -5 FOO",
        "BITCOUNT s 5 2 FOO",
        "BITCOUNT s -9223372036854775808 9223372036854775807",
        "BITCOUNT s -9223372036854775808 9223372036854775807 BIT",
        "BITCOUNT s 9223372036854775808 1",
        "SET e ''",
        "BITCOUNT e",
        "BITCOUNT e 0 -1",
        "BITCOUNT e 0 -1 BIT",
        "RPUSH list a",
        "BITCOUNT list",
        "BITCOUNT list x y",
        "BITCOUNT list 0 1 FOO",
        "BITCOUNT",
    ],
    "bitpos": [
        ("SET", "s", b"\xff\xf0\x00"),
        "BITPOS s 0",
        "BITPOS s 1",
        "BITPOS nokey 0",
        "BITPOS nokey 1",
        "BITPOS nokey 1 x",
        "BITPOS nokey 2",
        "BITPOS nokey x",
        *[f"BITPOS s {b} {r}" for b in (0, 1) for r in _RANGES],
        *[f"BITPOS s {b} {r} BIT" for b in (0, 1) for r in _BIT_RANGES],
        *[f"BITPOS s {b} {s}" for b in (0, 1) for s in (0, 1, 2, 3, -1, -2, -100, 100)],
        "BITPOS s 0 0 -1 BYTE",
        "BITPOS s 1 2 -1 byte",
        "BITPOS s 0 0 -1 WORD",
        "BITPOS s 2 0",
        "BITPOS s -1",
        "BITPOS s x",
        "BITPOS s 1 x",
        "BITPOS s 1 0 x",
        "BITPOS s 1 0 1 BIT x",
        "BITPOS s 1 0 x BIT",
        ("SET", "ones", b"\xff\xff"),
        "BITPOS ones 0",
        "BITPOS ones 0 1",
        "BITPOS ones 0 0 -1",
        "BITPOS ones 0 0 -1 BIT",
        "BITPOS ones 0 3 8 BIT",
        "BITPOS ones 1 1",
        ("SET", "zeros", b"\x00\x00"),
        "BITPOS zeros 1",
        "BITPOS zeros 0",
        "BITPOS zeros 1 1",
        "BITPOS zeros 1 0 -1 BIT",
        "BITPOS zeros 0 9 -1 BIT",
        "SET e ''",
        "BITPOS e 0",
        "BITPOS e 1",
        "BITPOS e 0 0",
        "BITPOS e 0 0 -1",
        "RPUSH list a",
        "BITPOS list 1",
        "BITPOS list 2",
        "BITPOS list 1 x",
        "BITPOS s",
    ],
    "bitop": [
        ("SET", "a", b"\xff\x0f\x33"),
        ("SET", "b", b"\xf0\xff"),
        "SET c x",
        "BITOP AND d a b",
        "GET d",
        "BITOP OR d a b c",
        "GET d",
        "BITOP XOR d a b c",
        "GET d",
        "BITOP NOT d a",
        "GET d",
        "BITOP not d b",
        "GET d",
        "BITOP and d a nokey",
        "GET d",
        "BITOP Or d nokey a",
        "GET d",
        "BITOP XOR d a",
        "GET d",
        "BITOP AND d a a b b",
        "GET d",
        "BITOP AND d nokey nokey2",
        "EXISTS d",
        "BITOP OR d nokey",
        "EXISTS d",
        "BITOP NOT d nokey",
        "BITOP NOT d a b",
        "BITOP NOT d",
        "BITOP NAND d a b",
        "BITOP AND d",
        "BITOP",
        "RPUSH list x",
        "BITOP AND d a list",
        "BITOP NOT d list",
        "BITOP OR list a",
        "TYPE list",
        "GET list",
        "SET t v EX 1000",
        "BITOP OR t a",
        "TTL t",
        "BITOP AND a a b",
        "GET a",
        "SET e ''",
        "BITOP OR d e",
        "EXISTS d",
        "BITOP OR d e c",
        "GET d",
    ],
    "bitfield": [
        "BITFIELD k SET u8 0 255",
        "BITFIELD k GET u8 0",
        "BITFIELD k GET i8 0",
        "BITFIELD k GET u4 4",
        "BITFIELD k GET i4 4",
        "BITFIELD k GET u1 0 GET i1 0",
        "BITFIELD k INCRBY u8 0 1",
        "BITFIELD k INCRBY u8 0 -1",
        "BITFIELD k INCRBY i8 0 -200",
        "BITFIELD k SET i8 0 -128",
        "BITFIELD k INCRBY i8 0 -1",
        "GET k",
        "BITFIELD k OVERFLOW SAT INCRBY i8 0 -100 INCRBY u8 8 300 INCRBY u8 8 -1",
        "BITFIELD k OVERFLOW FAIL INCRBY u8 8 10 INCRBY i8 0 -1 GET u8 8",
        "BITFIELD k OVERFLOW WRAP INCRBY u8 8 300 OVERFLOW sat INCRBY u8 8 300 GET u8 8",
        "BITFIELD k SET u8 #3 7 GET u8 #3 GET u8 24 SET i5 #10 -3 GET i5 50 GET u16 #0",
        "GET k",
        "BITFIELD k OVERFLOW SAT SET u8 0 -1 SET i8 8 200 SET i8 16 -200 GET u8 0",
        "BITFIELD k OVERFLOW WRAP SET u8 0 -1 SET i8 8 200 SET u3 16 9 GET u8 0",
        "BITFIELD k OVERFLOW FAIL SET u8 0 -1 SET i8 8 200 SET u8 16 255 GET u8 16",
        "BITFIELD k SET i64 0 -9223372036854775808 GET i64 0 GET u63 0 GET u63 1",
        "BITFIELD k INCRBY i64 0 -1",
        "BITFIELD k OVERFLOW SAT INCRBY i64 0 -1",
        "BITFIELD k OVERFLOW FAIL INCRBY i64 0 -1 INCRBY i64 0 1",
        "BITFIELD k SET i64 0 9223372036854775807 INCRBY i64 0 1 GET i64 0",
        "BITFIELD k OVERFLOW SAT INCRBY i64 0 9223372036854775807",
        "BITFIELD k SET u63 3 9223372036854775807 INCRBY u63 3 1 GET u63 3",
        "BITFIELD k OVERFLOW SAT INCRBY u63 3 -9223372036854775808 GET u63 3",
        "BITFIELD k SET u63 0 -1 OVERFLOW SAT SET u63 0 -1",
        # Redis's 64-bit arithmetic: far below i19's range counts as above it (SAT: the max)
        "BITFIELD k OVERFLOW SAT SET i19 43 -9223372036854775808 GET i19 43",
        "BITFIELD k OVERFLOW SAT SET i8 0 -9223372036854775807 SET i8 0 -129 GET i8 0",
        "BITFIELD k OVERFLOW SAT SET i64 0 -9223372036854775808 INCRBY i64 0 -1 GET i64 0",
        "BITFIELD k OVERFLOW SAT SET i63 0 -9223372036854775808 GET i63 0",
        "BITFIELD k OVERFLOW FAIL SET i19 43 -9223372036854775808 GET i19 43",
        "GET k",
        "STRLEN k",
        "BITFIELD k SET i3 5 3 SET i3 5 4 SET i3 5 -4 SET i3 5 -5 GET i3 5 GET u2 6",
        "BITFIELD k INCRBY u2 100 5 INCRBY i2 100 1",
        "STRLEN k",
        "BITFIELD k GET u8 100000 GET i64 799999",
        "STRLEN k",
        "BITFIELD k",
        "BITFIELD nokey GET u8 0 GET i16 3",
        "EXISTS nokey",
        "BITFIELD_RO nokey GET u8 0",
        "BITFIELD nokey OVERFLOW FAIL INCRBY u8 0 300",
        "GET nokey",
        "BITFIELD new SET u8 16 0",
        "GET new",
        "BITFIELD_RO k GET u8 0 GET i4 #2",
        "BITFIELD_RO k SET u8 0 1",
        "BITFIELD_RO k INCRBY u8 0 x",
        "BITFIELD_RO k",
        "BITFIELD_RO k OVERFLOW SAT",
        "BITFIELD_RO k OVERFLOW SAT GET u8 0",
        # errors: the subcommands, types, offsets, values, in Redis's order
        "BITFIELD k GET u64 0",
        "BITFIELD k GET i65 0",
        "BITFIELD k GET i0 0",
        "BITFIELD k GET u0 0",
        "BITFIELD k GET x8 0",
        "BITFIELD k GET U8 0",
        "BITFIELD k GET u 0",
        "BITFIELD k GET '' 0",
        "BITFIELD k GET u08 0",
        "BITFIELD k GET u-8 0",
        "BITFIELD k GET u8 -1",
        "BITFIELD k GET u8 x",
        "BITFIELD k GET u8 4294967296",
        "BITFIELD k GET u8 4294967295",
        "BITFIELD k GET u8 #536870912",
        "BITFIELD k GET u1 #x",
        "BITFIELD k GET u8 #536870911",
        "BITFIELD k GET u8 #-1",
        "BITFIELD k GET u8 ##1",
        "BITFIELD k GET u8 #2305843009213693952",
        "BITFIELD k GET i64 #144115188075855872",
        "BITFIELD k GET u8",
        "BITFIELD k SET u8 0",
        "BITFIELD k INCRBY u8 0",
        "BITFIELD k SET u8 0 x",
        "BITFIELD k SET u8 0 1.5",
        "BITFIELD k INCRBY u8 0 ''",
        "BITFIELD k OVERFLOW",
        "BITFIELD k OVERFLOW FOO GET u8 0",
        "BITFIELD k FOO u8 0",
        "BITFIELD k get u8 0 set u8 0 1 incrby u8 0 1 overflow fail",
        "BITFIELD k GET u8 0 SET u64 0 1",
        "BITFIELD k SET u8 0 1 GET x 0",
        "RPUSH list a",
        "BITFIELD list GET u8 0",
        "BITFIELD list SET u8 0 1",
        "BITFIELD_RO list GET u8 0",
        "BITFIELD list GET x 0",
        "BITFIELD_RO list SET u8 0 1",
        "BITFIELD",
        "BITFIELD_RO",
    ],
    "pfadd pfcount pfmerge": [
        "PFADD h a b c",
        "PFADD h a",
        "PFADD h a b c d",
        "PFCOUNT h",
        "PFADD h",
        "PFCOUNT h",
        "PFADD new",
        "EXISTS new",
        "PFCOUNT new",
        "TYPE h",
        "PFCOUNT nokey",
        "PFCOUNT nokey nokey2",
        "PFADD h2 c d e f g",
        "PFCOUNT h h2",
        "PFCOUNT h2 h nokey h",
        "PFMERGE d h h2",
        "PFCOUNT d",
        "PFMERGE d",
        "PFCOUNT d",
        "PFMERGE d2",
        "PFCOUNT d2",
        "PFMERGE h h2",
        "PFCOUNT h",
        "PFMERGE d3 nokey",
        "PFCOUNT d3",
        "SET s notanhll",
        "PFADD s a",
        "PFCOUNT s",
        "PFCOUNT h s",
        "PFMERGE s h",
        "PFMERGE d s",
        "SET short HYLL",
        "PFADD short a",
        "PFCOUNT short",
        "RPUSH list a",
        "PFADD list a",
        "PFCOUNT list",
        "PFCOUNT h list",
        "PFMERGE list h",
        "PFMERGE d list",
        "PFCOUNT nokey list",
        "SET t x EX 1000",
        "DEL t",
        "PFADD t a",
        "EXPIRE t 1000",
        "PFADD t b",
        "TTL t",
        "PFMERGE t h",
        "TTL t",
        ("PFADD", "bin", b"", b"\x00", b"\xff" * 9, b"x" * 100, "1", 1),
        "PFCOUNT bin",
        "PFADD",
        "PFCOUNT",
        "PFMERGE",
    ],
}

for _n in (1, 7, 15, 16, 17, 40, 100, 300, 1000):  # growing sets: counts match exactly
    CASES["pfadd pfcount pfmerge"] += [
        "PFADD g" + "".join(f" e{_n}-{i}" for i in range(_n)),
        "PFCOUNT g",
        "PFCOUNT g h",
    ]


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
        both.same(*(line if isinstance(line, tuple) else (line,)))


#: A write, and the key watched while another client runs it: does EXEC abort?
WATCHED = [
    ("k", "SETBIT k 0 0"), ("k", "SETBIT k 1 1"), ("k", "SETBIT k 0 1"), ("k", "SETBIT k 80 0"),
    ("w", "SETBIT w 0 0"), ("k", "BITFIELD k GET u8 0"), ("k", "BITFIELD k SET u8 0 97"),
    ("k", "BITFIELD k SET u8 0 98"), ("k", "BITFIELD k INCRBY u8 0 0"),
    ("k", "BITFIELD k OVERFLOW FAIL INCRBY u8 0 300"), ("k", "BITFIELD k SET u8 40 0"),
    ("w", "BITFIELD w OVERFLOW FAIL SET u8 0 300"), ("w", "BITFIELD w SET u8 0 0"),
    ("k", "BITOP AND k nokey"), ("w", "BITOP AND w nokey"), ("k", "BITOP OR k k"),
    ("k", "BITOP NOT x k"), ("h", "PFADD h a"), ("h", "PFADD h zz"), ("h", "PFADD h"),
    ("n", "PFADD n"), ("h", "PFMERGE h"), ("h", "PFMERGE x h"), ("h", "PFMERGE h k"),
]  # fmt: skip


def _exec_after(watcher: redis.Redis, writer: redis.Redis, key: str, line: str) -> Any:
    watcher.execute_command("FLUSHALL")
    watcher.execute_command("SET", "k", "a")
    watcher.execute_command("PFADD", "h", "a", "b")
    watcher.execute_command("WATCH", key)
    _call(writer, tuple(shlex.split(line)))
    watcher.execute_command("MULTI")
    watcher.execute_command("PING")
    return watcher.execute_command("EXEC")


def test_writes_touch_watched_keys_as_redis_does(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """The write runs on the other replica; EXEC aborts exactly when Redis's would (a write
    that changes nothing touches nothing)."""
    theirs_writer = _raw(client(oracle[2].connection_pool.connection_kwargs["port"], protocol=2))
    aborted = []
    try:
        for key, line in WATCHED:
            theirs = _exec_after(oracle[2], theirs_writer, key, line)
            mine = _exec_after(ours[2][0], ours[2][1], key, line)
            assert (mine is None) == (theirs is None), (key, line, theirs, mine)
            aborted.append(theirs is None)
        assert 5 < sum(aborted) < len(aborted) - 5  # both outcomes are exercised
    finally:
        theirs_writer.close()


def test_pfcount_is_a_read(ours: dict[int, dict[int, redis.Redis]]) -> None:
    """Unlike Redis's (which caches the count in the value, a write), the KV's PFCOUNT
    changes nothing: a transaction watching the key still runs (a documented difference)."""
    assert _exec_after(ours[2][0], ours[2][1], "h", "PFCOUNT h") == [b"PONG"]
    assert TABLE[b"PFCOUNT"].kind is not WRITE


def test_hll_bytes_are_redis_dense_hlls_and_each_side_reads_the_others(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """The KV's HLL is Redis's dense encoding (12304 bytes, "HYLL"); Redis counts it as the
    KV does, and the KV reads Redis's sparse and dense HLLs (cached count or not)."""
    theirs, mine, other = oracle[2], ours[2][0], ours[2][1]
    for r in (theirs, mine):
        r.execute_command("FLUSHALL")
    few = [f"f{i}" for i in range(50)]
    many = [f"m{i}" for i in range(5000)]
    for r in (theirs, mine):
        r.execute_command("PFADD", "few", *few)
        r.execute_command("PFADD", "many", *many)
    dense = mine.execute_command("GET", "few")
    assert len(dense) == 12304
    assert dense[:5] == b"HYLL\x00"
    assert other.execute_command("STRLEN", "few") == 12304
    # the KV's bytes in Redis
    theirs.execute_command("SET", "from-kv", dense)
    assert theirs.execute_command("PFCOUNT", "from-kv") == theirs.execute_command("PFCOUNT", "few")
    # Redis's bytes in the KV: sparse, dense without a cached count, and with one
    sparse = theirs.execute_command("GET", "few")
    assert sparse[4] == 1
    stale = theirs.execute_command("GET", "many")
    theirs.execute_command("PFCOUNT", "many")
    cached = theirs.execute_command("GET", "many")
    assert stale[4] == 0
    assert stale[15] & 0x80
    assert not cached[15] & 0x80
    for name, value, source in (("s", sparse, "few"), ("d", stale, "many"), ("c", cached, "many")):
        mine.execute_command("SET", name, value)
        want = theirs.execute_command("PFCOUNT", source)
        assert other.execute_command("PFCOUNT", name) == want
        assert other.execute_command("PFCOUNT", name, "nokey") == want
        theirs.execute_command("SET", name, value)
        for r in (theirs, mine):
            r.execute_command("PFADD", name, "extra1", "extra2", *many[:10])
        assert mine.execute_command("PFCOUNT", name) == theirs.execute_command("PFCOUNT", name)
    # corrupt sparse HLLs: too few registers (XZERO 17), too many (XZERO 16384, VAL 1)
    for r in (theirs, mine):
        r.execute_command("SET", "short", sparse[:16] + b"\x40\x10")
        r.execute_command("SET", "long", sparse[:16] + b"\x7f\xff\x80")
    for line in ("PFCOUNT short", "PFCOUNT short few", "PFMERGE d short", "PFADD short",
                 "PFCOUNT long", "PFCOUNT few long", "PFMERGE long"):  # fmt: skip
        want = _call(theirs, tuple(line.split()))
        assert _call(other, tuple(line.split())) == want, line
    # Redis decodes a sparse HLL lazily on PFADD, and may update one whose corruption lies
    # past the register it sets; the KV decodes it whole first, and refuses it
    assert _call(other, ("PFADD", "long", "y")) == ("error", "ResponseError", INVALID)


def test_hll_accuracy_and_redis_equality_at_100k(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """100,000 distinct elements: within 3 standard errors (0.81 % each) of the truth, and
    exactly Redis's estimate; the union of two halves (PFCOUNT of both, PFMERGE) as well."""
    theirs, mine, other = oracle[2], ours[2][0], ours[2][1]
    for r in (theirs, mine):
        r.execute_command("FLUSHALL")
    n = 100_000
    for r in (theirs, mine):
        with r.pipeline(transaction=False) as pipe:
            for start in range(0, n, 2000):
                key = "lo" if start < n // 2 else "hi"
                pipe.execute_command(
                    "PFADD", key, *(f"element:{i}" for i in range(start, start + 2000))
                )
            pipe.execute()
        r.execute_command("PFMERGE", "all", "lo", "hi")
    for keys in (["lo"], ["hi"], ["lo", "hi"], ["all"], ["all", "lo"]):
        want = theirs.execute_command("PFCOUNT", *keys)
        got = other.execute_command("PFCOUNT", *keys)
        assert got == want, keys
        truth = n if len(keys) > 1 or keys == ["all"] else n // 2
        assert abs(got - truth) <= 3 * 0.0081 * truth, (keys, got)
