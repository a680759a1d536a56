"""Sorted sets against a real ``redis-server`` 7.0: the same commands, the same replies.

The subject is a 2-replica KV service; every command goes to one replica or
the other (a write on one, the read that follows on the other, after a
barrier write there so that it has applied the first), in RESP2 and in RESP3.
The oracle is a throwaway ``redis-server`` (``kv_helpers.redis_oracle``).
Replies are compared as redis-py parses them without its response callbacks
(bulk strings stay bytes, RESP3 doubles are floats), errors by their text.
RESP2 is asked for explicitly: redis-py 8 speaks RESP3 unless told otherwise.

Replies are compared exactly: a score's text (Redis 7.0's ``%.17g``) and
RESP3's ``[member, score]`` pairs included.  ZRANDMEMBER's draws are random
on both sides: only their size and membership are compared (exactly when the
count covers the whole set, which Redis answers in reverse order).
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dominoes.components.kv._service import TABLE
from dominoes.components.kv._table import WRITE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Service
from .kv_helpers import client, clients_on_every_replica, kv_service, redis_oracle

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

BARRIER = ("DEL", "{barrier}")


def _raw(r: redis.Redis) -> redis.Redis:
    r.response_callbacks.clear()  # compare what the server said, not redis-py's reading of it
    return r


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, redis.Redis]]:
    """The oracle in RESP2 (key 2) and RESP3 (key 3)."""
    with redis_oracle(tmp_path_factory.mktemp("zset-oracle")) as r:
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


_NUMBER = re.compile(rb"[+-]?(?:inf|[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)", re.IGNORECASE)


def _norm(reply: Any) -> Any:
    """A ZRANDMEMBER reply as flat numbers and members, to check membership and scores."""
    if isinstance(reply, bytes) and _NUMBER.fullmatch(reply):
        return float(reply)
    if isinstance(reply, list):
        items = [_norm(x) for x in reply]
        if items and all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[1], float) for x in items
        ):
            return [y for x in items for y in x]
        return items
    return reply


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

CASES: dict[str, list[str]] = {
    "zadd options": [
        "ZADD z 1 a 2 b 3 c", "ZADD z 1 a 2 b 3 c", "ZADD z CH 1 a 5 b 9 d",
        "ZRANGE z 0 -1 WITHSCORES", "ZADD z NX 100 a 4 e", "ZADD z XX 7 a 8 nosuch",
        "ZADD z XX CH 7 a 8 nosuch", "ZADD z GT 6 a", "ZADD z GT CH 8 a", "ZADD z LT CH 9 a",
        "ZADD z LT CH 1 a", "ZADD z XX GT CH 0 a 10 b", "ZADD z INCR 5 a", "ZADD z INCR NX 5 a",
        "ZADD z INCR XX 5 nope", "ZADD z INCR GT -1 a", "ZADD z INCR LT -1 a",
        "ZADD missing XX 1 a", "ZADD missing XX INCR 1 a", "EXISTS missing", "ZADD z nx xx 1 a",
        "ZADD z gt lt 1 a", "ZADD z nx gt 1 a", "ZADD z nx lt 1 a", "ZADD z INCR 1 a 2 b",
        "ZADD z 1", "ZADD z 1 a 2", "ZADD z NX 1", "ZADD z abc a", "ZADD z nan a",
        "ZADD z 1 a nan b", "ZADD z 1e400 a", "ZADD z ' 1' a", "ZADD z '1 ' a", "ZADD z '' a",
        "ZADD z 0x10 hex", "ZADD z .5 dot", "ZADD z 5. dot2", "ZADD z +inf top -inf bottom",
        "ZADD z inf top", "ZADD z Infinity top2", "ZADD z -0 negzero", "ZRANGE z 0 -1 WITHSCORES",
        "ZCARD z", "ZADD", "ZADD z", "ZADD z 1",
    ],
    "zincrby": [
        "ZINCRBY z 1 a", "ZINCRBY z 2.5 a", "ZINCRBY z -10 a", "ZINCRBY z abc a",
        "ZINCRBY z nan a", "ZINCRBY z +inf a", "ZINCRBY z -inf a", "ZSCORE z a", "ZINCRBY z inf b",
        "ZINCRBY z 1 b", "ZINCRBY z nx a", "ZINCRBY z", "ZINCRBY z 1 a b",
        "ZRANGE z 0 -1 WITHSCORES",
    ],
    "wrongtype": [
        "SET s x", "SADD set m", "ZADD s 1 a", "ZINCRBY s 1 a", "ZREM s a", "ZSCORE s a",
        "ZMSCORE s a", "ZCARD s", "ZCOUNT s 0 1", "ZCOUNT s x 1", "ZLEXCOUNT s - +",
        "ZLEXCOUNT s x +", "ZRANGE s 0 -1", "ZRANGE s x y", "ZRANGEBYSCORE s 0 1",
        "ZRANGEBYLEX s - +", "ZREVRANGE s 0 -1", "ZRANGESTORE d s 0 -1", "ZRANK s a",
        "ZREVRANK s a", "ZREMRANGEBYRANK s 0 1", "ZREMRANGEBYSCORE s 0 1", "ZREMRANGEBYLEX s - +",
        "ZPOPMIN s", "ZPOPMAX s 2", "ZPOPMIN s -1", "ZMPOP 1 s MIN", "ZRANDMEMBER s",
        "ZRANDMEMBER s 2", "ZUNION 2 s set", "ZINTER 1 set", "ZUNION 1 s BADOPT", "ZDIFF 1 set",
        "ZUNIONSTORE d 1 s", "ZINTERCARD 1 s", "ZSCAN s 0", "ZSCAN s x", "ZADD z 1 a",
        "ZRANGESTORE s z 0 -1", "TYPE s", "ZUNIONSTORE set 1 z", "TYPE set", "TYPE z",
        "TYPE nosuch",
    ],
    "missing keys": [
        "ZREM z a", "ZSCORE z a", "ZMSCORE z a b", "ZCARD z", "ZCOUNT z -inf +inf",
        "ZLEXCOUNT z - +", "ZRANGE z 0 -1", "ZRANGE z 0 -1 WITHSCORES", "ZRANK z a",
        "ZREVRANK z a", "ZPOPMIN z", "ZPOPMAX z 3", "ZMPOP 2 z y MAX", "ZRANDMEMBER z",
        "ZRANDMEMBER z 3", "ZRANDMEMBER z -3 WITHSCORES", "ZREMRANGEBYRANK z 0 -1",
        "ZREMRANGEBYSCORE z -inf +inf", "ZREMRANGEBYLEX z - +", "ZSCAN z 0", "ZUNION 2 z y",
        "ZINTER 2 z y WITHSCORES", "ZDIFF 1 z", "ZINTERCARD 2 z y", "SET d x",
        "ZRANGESTORE d z 0 -1", "EXISTS d", "SET d x", "ZUNIONSTORE d 2 z y", "EXISTS d",
    ],
    "reads": [
        "ZADD z 1 a 1 b 2 c 3 d -1 e 0.5 f", "ZSCORE z f", "ZSCORE z nope", "ZMSCORE z a nope f",
        "ZMSCORE z", "ZRANK z a", "ZRANK z e", "ZREVRANK z a", "ZRANK z nope", "ZREVRANK z d",
        "ZCOUNT z 1 2", "ZCOUNT z (1 2", "ZCOUNT z 1 (2", "ZCOUNT z -inf +inf",
        "ZCOUNT z +inf -inf", "ZCOUNT z (1 (1", "ZCOUNT z 1 1", "ZCOUNT z a b", "ZCOUNT z 1 nan",
        "ZCOUNT z '' 5", "ZCOUNT z ' 1' 5", "ZCOUNT z ' ' 5", "ZCOUNT z ( 5", "ZCOUNT z 1e400 inf",
        "ZCOUNT z -1e400 0", "ZCOUNT z (-inf (inf", "ZCOUNT z [1 2", "ZCARD z", "ZSCORE z",
        "ZRANK z a b",
    ],
    "zrange by rank": [
        "ZADD z 1 a 2 b 3 c 4 d 5 e", "ZRANGE z 0 -1", "ZRANGE z 1 3 WITHSCORES", "ZRANGE z -2 -1",
        "ZRANGE z -100 100", "ZRANGE z 3 1", "ZRANGE z 5 10", "ZRANGE z 0 -1 REV",
        "ZRANGE z 0 1 REV WITHSCORES", "ZRANGE z 0 -1 LIMIT 0 1", "ZRANGE z x 1", "ZRANGE z 0 1.5",
        "ZRANGE z 0 -1 FOO", "ZRANGE z 0 -1 WITHSCORES WITHSCORES", "ZRANGE z 0 -1 REV REV",
        "ZREVRANGE z 0 -1", "ZREVRANGE z 0 1 WITHSCORES", "ZREVRANGE z 0 -1 REV",
        "ZREVRANGE z 0 -1 BYSCORE", "ZREVRANGE z 0 -1 LIMIT 0 1", "ZRANGE z 0 -1 LIMIT 0",
        "ZRANGE z 9223372036854775807 -9223372036854775808", "ZRANGE z 0 9223372036854775808",
    ],
    "zrange by score": [
        "ZADD z 1 a 2 b 2 bb 3 c 4 d -inf lo +inf hi", "ZRANGE z 2 3 BYSCORE",
        "ZRANGE z (2 3 BYSCORE", "ZRANGE z -inf +inf BYSCORE WITHSCORES",
        "ZRANGE z +inf -inf BYSCORE REV", "ZRANGE z 3 (1 BYSCORE REV WITHSCORES",
        "ZRANGE z 1 3 BYSCORE REV", "ZRANGE z -inf +inf BYSCORE LIMIT 1 2",
        "ZRANGE z -inf +inf BYSCORE LIMIT 2 -1", "ZRANGE z -inf +inf BYSCORE LIMIT -1 2",
        "ZRANGE z -inf +inf BYSCORE LIMIT 0 0", "ZRANGE z -inf +inf BYSCORE LIMIT 7 5",
        "ZRANGE z -inf +inf BYSCORE LIMIT 8 5",
        "ZRANGE z +inf -inf BYSCORE REV LIMIT 1 3 WITHSCORES", "ZRANGE z (inf +inf BYSCORE",
        "ZRANGE z -inf (-inf BYSCORE", "ZRANGE z inf inf BYSCORE", "ZRANGE z -inf -inf BYSCORE",
        "ZRANGE z x 1 BYSCORE", "ZRANGE z 1 2 BYSCORE BYLEX", "ZRANGE z 1 2 BYSCORE LIMIT x 1",
        "ZRANGE z 1 2 BYSCORE LIMIT 0 1 LIMIT 1 1", "ZRANGEBYSCORE z 1 3",
        "ZRANGEBYSCORE z (1 3 WITHSCORES", "ZRANGEBYSCORE z -inf +inf LIMIT 1 1",
        "ZRANGEBYSCORE z 1 3 REV", "ZRANGEBYSCORE z 1 3 BYSCORE", "ZREVRANGEBYSCORE z 3 1",
        "ZREVRANGEBYSCORE z +inf -inf WITHSCORES LIMIT 0 3", "ZREVRANGEBYSCORE z 1 3",
        "ZRANGEBYSCORE z 1", "ZRANGEBYSCORE z 1 2 LIMIT 0",
    ],
    "zrange by lex": [
        "ZADD z 0 a 0 b 0 c 0 d 0 e 0 ab", "ZRANGE z - + BYLEX", "ZRANGE z [b (d BYLEX",
        "ZRANGE z (a [c BYLEX", "ZRANGE z + - BYLEX REV", "ZRANGE z [d (a BYLEX REV LIMIT 1 2",
        "ZRANGE z - + BYLEX LIMIT 2 2", "ZRANGE z - + BYLEX LIMIT -1 2", "ZRANGE z - - BYLEX",
        "ZRANGE z + + BYLEX", "ZRANGE z + - BYLEX", "ZRANGE z [a [a BYLEX", "ZRANGE z (a (a BYLEX",
        "ZRANGE z [c [b BYLEX", "ZRANGE z a c BYLEX", "ZRANGE z - +x BYLEX", "ZRANGE z '' + BYLEX",
        "ZRANGE z - + BYLEX WITHSCORES", "ZRANGEBYLEX z [aa (c", "ZRANGEBYLEX z - + LIMIT 0 3",
        "ZREVRANGEBYLEX z + -", "ZREVRANGEBYLEX z [c - LIMIT 1 10", "ZREVRANGEBYLEX z - +",
        "ZRANGEBYLEX z - + WITHSCORES", "ZLEXCOUNT z - +", "ZLEXCOUNT z [b [d",
        "ZLEXCOUNT z (b (d", "ZLEXCOUNT z b d", "ZLEXCOUNT z + -", "ZADD m 1 a 2 c 3 b 4 d",
        "ZRANGEBYLEX m [b +", "ZRANGEBYLEX m - [b", "ZREVRANGEBYLEX m [c -", "ZLEXCOUNT m [b +",
        "ZREMRANGEBYLEX m [b [c", "ZRANGE m 0 -1",
    ],
    "zrangestore": [
        "ZADD z 1 a 2 b 3 c 4 d", "SET d x", "EXPIRE d 100", "ZRANGESTORE d z 0 1", "TTL d",
        "TYPE d", "ZRANGE d 0 -1 WITHSCORES", "ZRANGESTORE d z 2 3 BYSCORE",
        "ZRANGE d 0 -1 WITHSCORES", "ZRANGESTORE d z +inf -inf BYSCORE REV LIMIT 0 2",
        "ZRANGE d 0 -1 WITHSCORES", "ZRANGESTORE d z [b + BYLEX", "ZRANGESTORE d z 5 9",
        "EXISTS d", "ZRANGESTORE d z 0 -1 WITHSCORES", "ZRANGESTORE d z 0 -1 LIMIT 0 1",
        "ZRANGESTORE d z 0", "ZRANGESTORE z z 1 2", "ZRANGE z 0 -1 WITHSCORES",
    ],
    "removals": [
        "ZADD z 1 a 2 b 3 c 4 d 5 e 6 f", "ZREM z a nope b", "ZREM z", "ZREMRANGEBYRANK z 0 0",
        "ZREMRANGEBYRANK z -1 -1", "ZREMRANGEBYRANK z 5 1", "ZREMRANGEBYRANK z x 1",
        "ZRANGE z 0 -1 WITHSCORES", "ZREMRANGEBYSCORE z (3 4", "ZREMRANGEBYSCORE z x 1",
        "ZREMRANGEBYSCORE z 10 1", "ZRANGE z 0 -1", "ZREMRANGEBYRANK z 0 -1", "EXISTS z",
        "ZADD z 0 a 0 b 0 c", "ZREMRANGEBYLEX z [a (c", "ZREMRANGEBYLEX z a c", "ZRANGE z 0 -1",
        "ZREM z c", "EXISTS z", "ZADD z 1 x", "ZREMRANGEBYSCORE z -inf +inf", "EXISTS z",
    ],
    "pops": [
        "ZADD z 1 a 2 b 3 c 4 d 5 e", "ZPOPMIN z", "ZPOPMAX z", "ZPOPMIN z 2", "ZPOPMAX z 0",
        "ZPOPMIN z -1", "ZPOPMIN z x", "ZPOPMIN z 1 2", "ZPOPMAX z 10", "EXISTS z",
        "ZADD y 1 a 2 b 3 c", "ZMPOP 2 z y MIN", "ZMPOP 2 z y MAX COUNT 5", "ZMPOP 2 z y MIN",
        "ZADD y 1 a", "ZMPOP 0 y MIN", "ZMPOP -1 y MIN", "ZMPOP 1 y", "ZMPOP 2 y MIN",
        "ZMPOP 1 y FOO", "ZMPOP 1 y MIN COUNT 0", "ZMPOP 1 y MIN COUNT",
        "ZMPOP 1 y MIN COUNT 1 COUNT 1", "ZMPOP 1 y MIN BAR", "ZMPOP x y MIN",
        "ZMPOP 1 y max count 1", "ZMPOP 1 y",
    ],
    "zrandmember deterministic": [
        "ZADD z 1 a 2 b 3 c", "ZRANDMEMBER z 3", "ZRANDMEMBER z 10 WITHSCORES", "ZRANDMEMBER z 0",
        "ZRANDMEMBER z 0 WITHSCORES", "ZRANDMEMBER z x", "ZRANDMEMBER z 1 FOO",
        "ZRANDMEMBER z 1 WITHSCORES x", "ZRANDMEMBER z -9223372036854775808",
        "ZRANDMEMBER z 4611686018427387904 WITHSCORES",
        "ZRANDMEMBER z -4611686018427387905 WITHSCORES", "ZADD one 5 only", "ZRANDMEMBER one",
        "ZRANDMEMBER one -3", "ZRANDMEMBER one -2 WITHSCORES", "ZRANDMEMBER one 1 WITHSCORES",
    ],
    "combine": [
        "ZADD a 1 x 2 y 3 z", "ZADD b 4 y 5 z 6 w", "SADD s x w q", "ZUNION 2 a b",
        "ZUNION 2 a b WITHSCORES", "ZUNION 3 a b s WITHSCORES", "ZINTER 2 a b WITHSCORES",
        "ZINTER 3 a b s WITHSCORES", "ZINTER 2 a s WITHSCORES",
        "ZUNION 2 a b WEIGHTS 2 -1 WITHSCORES", "ZUNION 2 a b AGGREGATE MIN WITHSCORES",
        "ZUNION 2 a b AGGREGATE max WITHSCORES",
        "ZINTER 2 a b WEIGHTS 0.5 2 AGGREGATE MAX WITHSCORES", "ZUNION 2 a b WEIGHTS 1",
        "ZUNION 2 a b WEIGHTS 1 x", "ZUNION 2 a b WEIGHTS 1 nan", "ZUNION 2 a b AGGREGATE AVG",
        "ZUNION 2 a b AGGREGATE", "ZUNION 3 a b", "ZUNION 0 a", "ZUNION -1 a", "ZUNION x a",
        "ZUNION 1 a WITHSCORES WITHSCORES", "ZUNION 1 a FOO", "ZDIFF 2 a b",
        "ZDIFF 2 a b WITHSCORES", "ZDIFF 3 a s b WITHSCORES", "ZDIFF 2 a b WEIGHTS 1 1",
        "ZDIFF 2 a b AGGREGATE SUM", "ZDIFF 2 s a WITHSCORES", "ZINTERCARD 2 a b",
        "ZINTERCARD 2 a b LIMIT 1", "ZINTERCARD 2 a b LIMIT 0", "ZINTERCARD 2 a b LIMIT -1",
        "ZINTERCARD 2 a b LIMIT", "ZINTERCARD 2 a b WITHSCORES", "ZINTERCARD 0 a",
        "ZINTERCARD 3 a b s", "ZUNIONSTORE d 2 a b", "ZRANGE d 0 -1 WITHSCORES",
        "ZINTERSTORE d 2 a b WEIGHTS 1 2 AGGREGATE MIN", "ZRANGE d 0 -1 WITHSCORES",
        "ZDIFFSTORE d 2 a b", "ZRANGE d 0 -1 WITHSCORES", "ZINTERSTORE d 2 a nosuch", "EXISTS d",
        "ZUNIONSTORE d 2 a b WITHSCORES", "ZDIFFSTORE d 0 a", "ZUNIONSTORE d 1",
        "ZINTERSTORE a 2 a b", "ZRANGE a 0 -1 WITHSCORES", "ZADD i 1 p", "ZADD j -1 p",
        "ZADD k inf p", "ZADD l -inf p", "ZUNION 2 k l WITHSCORES", "ZINTER 2 k l WITHSCORES",
        "ZUNION 2 k i WEIGHTS 0 1 WITHSCORES", "ZUNION 2 i k WEIGHTS 1 0 WITHSCORES",
        "ZINTER 2 i j AGGREGATE MAX WITHSCORES", "ZUNION 2 i j WEIGHTS 0 0 WITHSCORES",
    ],
    "zscan and scan type": [
        "ZADD z 1 a 2 b 0.5 c 3 ab", "ZSCAN z 0", "ZSCAN z 0 MATCH a*",
        "ZSCAN z 0 MATCH * COUNT 1", "ZSCAN z 0 COUNT 0", "ZSCAN z 0 COUNT x",
        "ZSCAN z 0 TYPE zset", "ZSCAN z 0 MATCH", "ZSCAN z x", "ZSCAN z -1", "ZSCAN z ''",
        "ZSCAN z ' 1'", "ZSCAN z 18446744073709551616", "SET s v", "SCAN 0 TYPE zset",
        "SCAN 0 TYPE string", "ZADD f 0.1 tenth 1e20 big -0 zero", "ZSCAN f 0",
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
    for name, n in [("ZADD", 3), ("ZINCRBY", 3), ("ZREM", 2), ("ZSCORE", 2), ("ZMSCORE", 2),
                    ("ZCARD", 1), ("ZCOUNT", 3), ("ZLEXCOUNT", 3), ("ZRANGE", 3),
                    ("ZRANGEBYSCORE", 3), ("ZREVRANGE", 3), ("ZREVRANGEBYSCORE", 3),
                    ("ZRANGEBYLEX", 3), ("ZREVRANGEBYLEX", 3), ("ZRANGESTORE", 4), ("ZRANK", 2),
                    ("ZREVRANK", 2), ("ZREMRANGEBYSCORE", 3), ("ZREMRANGEBYRANK", 3),
                    ("ZREMRANGEBYLEX", 3), ("ZPOPMIN", 1), ("ZPOPMAX", 1), ("ZMPOP", 3),
                    ("ZRANDMEMBER", 1), ("ZUNION", 2), ("ZINTER", 2), ("ZDIFF", 2),
                    ("ZUNIONSTORE", 3), ("ZINTERSTORE", 3), ("ZDIFFSTORE", 3), ("ZINTERCARD", 2),
                    ("ZSCAN", 2)]:  # fmt: skip
        both.same(" ".join([name] + ["k"] * (n - 1)))
    for line in ["ZCARD k k", "ZSCORE k a b", "ZRANK k a b", "ZCOUNT k 1 2 3", "ZINCRBY k 1 a b"]:
        both.same(line)


@pytest.mark.parametrize("protocol", [2, 3])
def test_zscan_writes_scores_as_redis_does(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]], protocol: int
) -> None:
    """ZSCAN's scores are bulk strings in both protocols, in Redis's own text (no
    normalisation here)."""
    both = Both(oracle, ours, protocol)
    both.run("ZADD", "f", "0.1", "a", "1e20", "b", "-0", "c", "3", "d", "-inf", "e", "1.5e-7", "f")
    theirs, mine = both.run("ZSCAN", "f", "0")
    assert mine == theirs
    assert b"0.10000000000000001" in theirs[1]


#: A write, and the key watched while another client runs it: does EXEC abort?
WATCHED = [
    ("k", "ZADD k 1 a"), ("k", "ZADD k 5 a"), ("k", "ZADD k NX 5 a"), ("k", "ZADD k XX 1 zz"),
    ("k", "ZADD k GT 0 a"), ("k", "ZADD k CH 1 a 3 c"), ("k", "ZADD k abc a"),
    ("new", "ZADD new XX 1 a"), ("new", "ZADD new 1 a"), ("k", "ZINCRBY k 0 a"),
    ("k", "ZINCRBY k 1 a"), ("k", "ZREM k zz"), ("k", "ZREM k a"), ("k", "ZREM k a b"),
    ("k", "ZREMRANGEBYSCORE k 10 20"), ("k", "ZREMRANGEBYSCORE k 1 1"),
    ("k", "ZREMRANGEBYRANK k 5 9"), ("k", "ZREMRANGEBYRANK k 0 0"), ("k", "ZREMRANGEBYLEX k (b +"),
    ("k", "ZREMRANGEBYLEX k - +"), ("k", "ZPOPMIN k 0"), ("k", "ZPOPMIN k"), ("k", "ZPOPMAX k 9"),
    ("k", "ZMPOP 2 nosuch k MIN"), ("k", "ZMPOP 1 nosuch MIN"), ("k", "ZRANGESTORE k k 5 9"),
    ("k", "ZRANGESTORE k k 0 -1"), ("w", "ZRANGESTORE w nosuch 0 -1"), ("k", "ZUNIONSTORE k 1 k"),
    ("k", "ZINTERSTORE k 2 k nosuch"), ("k", "ZDIFFSTORE other 1 k"), ("w", "ZUNIONSTORE w 1 x"),
    ("k", "ZRANGE k 0 -1"), ("k", "ZSCAN k 0"),
]  # fmt: skip


def _exec_after(watcher: redis.Redis, writer: redis.Redis, key: str, line: str) -> Any:
    watcher.execute_command("FLUSHALL")
    watcher.execute_command("ZADD", "k", "1", "a", "2", "b")
    watcher.execute_command("WATCH", key)
    _call(writer, tuple(shlex.split(line)))
    watcher.execute_command("MULTI")
    watcher.execute_command("PING")
    return watcher.execute_command("EXEC")


def test_writes_touch_watched_keys_as_redis_does(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """The write runs on the other replica; EXEC aborts exactly when Redis's would."""
    theirs_writer = client(oracle[2].connection_pool.connection_kwargs["port"], protocol=2)
    aborted = []
    try:
        for key, line in WATCHED:
            theirs = _exec_after(oracle[2], _raw(theirs_writer), key, line)
            mine = _exec_after(ours[2][0], ours[2][1], key, line)
            assert (mine is None) == (theirs is None), (key, line, theirs, mine)
            aborted.append(theirs is None)
        assert 5 < sum(aborted) < len(aborted) - 5  # both outcomes are exercised
    finally:
        theirs_writer.close()


def test_zrandmember_refuses_too_many_repeated_picks(
    ours: dict[int, dict[int, redis.Redis]],
) -> None:
    """Redis would stream 2**24 + 1 picks; the KV builds a reply whole, so it refuses
    (as SRANDMEMBER and HRANDFIELD do)."""
    r = ours[2][0]
    r.execute_command("ZADD", "picks", "1", "a")
    with pytest.raises(redis.ResponseError, match="at most 16777216 picks with repetitions"):
        r.execute_command("ZRANDMEMBER", "picks", str(-(2**24) - 1))
    assert r.execute_command("ZRANDMEMBER", "picks", "-3") == [b"a", b"a", b"a"]
    r.execute_command("DEL", "picks")


def test_large_sets_and_long_members(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    """Past Redis's listpack limits (128 entries, 64-byte members): same answers, and
    ZSCAN's cursor walk returns every member once (the pages are Redis's own business)."""
    both = Both(oracle, ours, 2)
    pairs = " ".join(f"{i % 17} m{i:04d}" for i in range(300))
    both.same(f"ZADD big {pairs}")
    long = "x" * 100
    both.same(f"ZADD wide 1 {long}a 2 {long}b 0 short")
    for line in ["ZRANGE big 100 110 WITHSCORES", "ZRANGE big (3 5 BYSCORE LIMIT 5 7",
                 "ZRANGE big +inf -inf BYSCORE REV LIMIT 3 4 WITHSCORES", "ZRANK big m0150",
                 "ZREVRANK big m0150", "ZCOUNT big 2 (9", "ZREMRANGEBYRANK big 10 19",
                 "ZREMRANGEBYSCORE big 16 16", "ZPOPMAX big 3", "ZCARD big", "ZRANGE wide 0 -1",
                 "ZUNIONSTORE u 2 big wide WEIGHTS 2 3", "ZRANGE u 0 -1 WITHSCORES",
                 "ZINTERCARD 2 big u LIMIT 10", "ZRANDMEMBER big 1000 WITHSCORES"]:  # fmt: skip
        both.same(line)
    mine = both.ours[0]
    seen: list[bytes] = []
    cursor = b"0"
    for _ in range(1000):
        cursor, page = mine.execute_command("ZSCAN", "big", cursor, "COUNT", "20")
        seen += page[::2]
        if cursor == b"0":
            break
    expected = both.theirs.execute_command("ZRANGE", "big", "0", "-1")
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(expected)


# --- a hypothesis property: random command sequences on a few keys ----------------------------

_KEYS = ["a", "b", "c"]
_MEMBERS = ["m", "n", "o", "p", "q"]
# Exact in binary, so that sums do not depend on the order Redis adds them in.
_SCORES = ["0", "1", "-1", "2", "2.5", "-0.5", "3", "inf", "-inf", "+inf"]
_BOUNDS = [*_SCORES, "(0", "(1", "(2.5", "(-inf", "(+inf", "x", ""]
_LEX = ["-", "+", "[m", "(m", "[o", "(o", "[q", "[", "(", "x"]
_INTS = ["0", "1", "2", "-1", "-2", "5", "x"]

k = st.sampled_from(_KEYS)
m = st.sampled_from(_MEMBERS)
sc = st.sampled_from(_SCORES)
b = st.sampled_from(_BOUNDS)
lx = st.sampled_from(_LEX)
n = st.sampled_from(_INTS)


def _cmd(*parts: st.SearchStrategy[Any]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(
        lambda t: [x for p in t for x in (p if isinstance(p, list) else [p])]
    )


def _c(word: str) -> st.SearchStrategy[str]:
    return st.just(word)


_opts = st.lists(st.sampled_from(["NX", "XX", "GT", "LT", "CH", "INCR"]), max_size=2, unique=True)
_pairs = st.lists(st.tuples(sc, m).map(list), min_size=1, max_size=3).map(
    lambda ps: [x for p in ps for x in p]
)
_maybe_ws = st.sampled_from([[], ["WITHSCORES"]])
_maybe_rev = st.sampled_from([[], ["REV"]])
_side = st.sampled_from(["MIN", "MAX"])
_counts = st.sampled_from([[], ["1"], ["2"], ["0"], ["-1"]])
_maybe_limit = st.sampled_from(
    [[], ["LIMIT", "0", "2"], ["LIMIT", "1", "-1"], ["LIMIT", "-1", "1"]]
)
_weights = st.sampled_from(
    [[], ["WEIGHTS", "1", "2"], ["WEIGHTS", "0", "-1"], ["WEIGHTS", "0.5", "1"]]
)
_agg = st.sampled_from([[], ["AGGREGATE", "SUM"], ["AGGREGATE", "MIN"], ["AGGREGATE", "MAX"]])

COMMANDS = st.one_of(
    _cmd(_c("ZADD"), k, _opts, _pairs),
    _cmd(_c("ZINCRBY"), k, sc, m),
    _cmd(_c("ZREM"), k, st.lists(m, min_size=1, max_size=3)),
    _cmd(st.sampled_from(["ZSCORE", "ZRANK", "ZREVRANK"]), k, m),
    _cmd(_c("ZMSCORE"), k, st.lists(m, min_size=1, max_size=3)),
    _cmd(_c("ZCARD"), k),
    _cmd(_c("ZCOUNT"), k, b, b),
    _cmd(_c("ZLEXCOUNT"), k, lx, lx),
    _cmd(_c("ZRANGE"), k, n, n, _maybe_rev, _maybe_ws),
    _cmd(_c("ZRANGE"), k, b, b, _c("BYSCORE"), _maybe_rev, _maybe_limit, _maybe_ws),
    _cmd(_c("ZRANGE"), k, lx, lx, _c("BYLEX"), _maybe_rev, _maybe_limit),
    _cmd(st.sampled_from(["ZRANGEBYSCORE", "ZREVRANGEBYSCORE"]), k, b, b, _maybe_ws, _maybe_limit),
    _cmd(st.sampled_from(["ZRANGEBYLEX", "ZREVRANGEBYLEX"]), k, lx, lx, _maybe_limit),
    _cmd(_c("ZREVRANGE"), k, n, n, _maybe_ws),
    _cmd(_c("ZRANGESTORE"), k, k, b, b, _c("BYSCORE"), _maybe_limit),
    _cmd(_c("ZREMRANGEBYRANK"), k, n, n),
    _cmd(_c("ZREMRANGEBYSCORE"), k, b, b),
    _cmd(_c("ZREMRANGEBYLEX"), k, lx, lx),
    _cmd(st.sampled_from(["ZPOPMIN", "ZPOPMAX"]), k, _counts),
    _cmd(_c("ZMPOP"), _c("2"), k, k, _side, st.sampled_from([[], ["COUNT", "2"]])),
    _cmd(_c("ZRANDMEMBER"), k, st.sampled_from([[], ["0"], ["1"], ["2"], ["-3"], ["9"]])),
    _cmd(_c("ZRANDMEMBER"), k, st.sampled_from(["0", "1", "2", "-3", "9"]), _c("WITHSCORES")),
    _cmd(st.sampled_from(["ZUNION", "ZINTER"]), _c("2"), k, k, _weights, _agg, _maybe_ws),
    _cmd(_c("ZDIFF"), _c("2"), k, k, _maybe_ws),
    _cmd(st.sampled_from(["ZUNIONSTORE", "ZINTERSTORE"]), k, _c("2"), k, k, _weights, _agg),
    _cmd(_c("ZDIFFSTORE"), k, _c("2"), k, k),
    _cmd(_c("ZINTERCARD"), _c("2"), k, k, st.sampled_from([[], ["LIMIT", "1"]])),
    _cmd(_c("ZSCAN"), k, _c("0"), st.sampled_from([[], ["MATCH", "[mn]"]])),
    _cmd(_c("SET"), k, _c("v")),
    _cmd(_c("SADD"), k, m),
    _cmd(_c("DEL"), k),
)  # fmt: skip
SEQUENCES = st.lists(COMMANDS, min_size=1, max_size=12)
# Each key starts with a few members, often of one score (what lex ranges are for), or none.
_START_SCORES = st.sampled_from(["0", "0", "0", "1", "2", "-1", "2.5", "inf"])
STARTS = st.lists(
    st.lists(st.tuples(_START_SCORES, m), max_size=5), min_size=len(_KEYS), max_size=len(_KEYS)
)


def _random_reply(both: Both, args: list[str], theirs: Any, mine: Any) -> None:
    """ZRANDMEMBER: the same size, from the key's members (and their scores)."""
    if isinstance(theirs, tuple) or theirs is None or theirs == []:
        assert mine == theirs, args
        return
    if not isinstance(theirs, list):  # one member
        assert isinstance(mine, bytes)
        allowed = set(both.theirs.execute_command("ZRANGE", args[1], "0", "-1"))
        assert mine in allowed, args
        return
    flat_theirs, flat_mine = _norm(theirs), _norm(mine)
    assert len(flat_mine) == len(flat_theirs), args
    full = _norm(both.theirs.execute_command("ZRANGE", args[1], "0", "-1", "WITHSCORES"))
    pairs = dict(zip(full[::2], full[1::2], strict=True))
    withscores = len(args) == 4
    if withscores:
        for member, score in zip(flat_mine[::2], flat_mine[1::2], strict=True):
            assert pairs.get(member) == score, args
    else:
        assert set(flat_mine) <= set(pairs), args
    if int(args[2]) >= len(pairs):  # the whole set, highest first
        assert flat_mine == flat_theirs, args


@pytest.mark.parametrize("protocol", [2, 3])
def test_random_sequences_match_redis(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]], protocol: int
) -> None:
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(starts=STARTS, steps=SEQUENCES)
    def check(starts: list[list[tuple[str, str]]], steps: list[list[str]]) -> None:
        both = Both(oracle, ours, protocol)
        for key, pairs in zip(_KEYS, starts, strict=True):
            if pairs:
                both.same(" ".join(["ZADD", key, *(x for pair in pairs for x in pair)]))
        for args in steps:
            theirs, mine = both.run(*args)
            if args[0] == "ZRANDMEMBER":
                _random_reply(both, args, theirs, mine)
            else:
                assert mine == theirs, args
        for key in _KEYS:  # and the same state, read on the other replica
            both.same(f"TYPE {key}")
            both.same(f"ZRANGE {key} 0 -1 WITHSCORES")

    check()


# --- the known encoder gaps (see the module doc) -----------------------------------------------


def test_resp2_score_text_is_redis_70s(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    both = Both(oracle, ours, 2)
    both.run("ZADD", "z", "3", "a", "0.1", "b")
    theirs, mine = both.run("ZRANGE", "z", "0", "-1", "WITHSCORES")
    assert theirs == [b"b", b"0.10000000000000001", b"a", b"3"]
    assert mine == theirs


def test_resp3_withscores_are_member_score_pairs(
    oracle: dict[int, redis.Redis], ours: dict[int, dict[int, redis.Redis]]
) -> None:
    both = Both(oracle, ours, 3)
    both.run("ZADD", "z", "1", "a", "2", "b")
    theirs, mine = both.run("ZRANGE", "z", "0", "-1", "WITHSCORES")
    assert theirs == [[b"a", 1.0], [b"b", 2.0]]
    assert mine == theirs


# --- durability ------------------------------------------------------------------------------


def test_sorted_sets_survive_a_snapshot_and_a_restart(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    args = ("--durable", str(data), "--fsync", "everysec")
    expected: dict[str, list[Any]] = {}
    with kv_service(run, args=args) as svc:
        r = _raw(client(svc.port, protocol=2))
        try:
            r.execute_command("ZADD", "snap", "1", "a", "-inf", "lo", "inf", "hi", "0.1", "b")
            r.execute_command(
                "ZADD", "big", *[x for i in range(200) for x in (str(i % 7), f"m{i}")]
            )
            assert r.execute_command("SAVE")
            r.execute_command("ZADD", "log", "2", "x", "3", "y")  # in the log's segments only
            r.execute_command("ZINCRBY", "snap", "5", "a")
            r.execute_command("ZPOPMIN", "big", "3")
            for key in ("snap", "big", "log"):
                expected[key] = r.execute_command("ZRANGE", key, "0", "-1", "WITHSCORES")
        finally:
            r.close()
        svc.proc.send_signal(signal.SIGINT)
        assert svc.proc.wait(60) == 0, svc.output
    with kv_service(run, args=args) as svc:
        for r in clients_on_every_replica(svc.port, protocol=2).values():
            _raw(r)
            try:
                for key, value in expected.items():
                    assert r.execute_command("ZRANGE", key, "0", "-1", "WITHSCORES") == value
                    assert r.execute_command("TYPE", key) == b"zset"
                assert r.execute_command("ZRANK", "big", expected["big"][0]) == 0
                assert r.execute_command("ZSCORE", "snap", "hi") == b"inf"
            finally:
                r.close()
