"""Streams against a real ``redis-server`` 7, side by side, and across the two replicas.

The KV service (``dominoes run ... --replicas 2``) and a throwaway
``redis-server`` get the same commands, in RESP2 and in RESP3; every reply is
compared exactly (types included: a null bulk is not a null array, a RESP3 map
is not an array), error texts too.  On the KV side the commands alternate
between the two replicas, so what one writes (XADD, XREADGROUP, XCLAIM) the
other reads (XRANGE, XPENDING, XINFO).

IDs are explicit in the comparisons (the two servers' clocks differ); ``*``
IDs are checked on their own: increasing, and the same on both replicas.
Only what depends on the clock or on Redis's memory layout is masked:
idle times and delivery times (XPENDING, XINFO CONSUMERS, XINFO STREAM FULL),
and XINFO STREAM's ``radix-tree-keys``/``radix-tree-nodes``.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from . import resp_wire
from .harness import Service
from .resp_wire import Wire, plain, wires_on_every_replica

pytestmark = pytest.mark.integration

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)


# --- masking what the clock decides ----------------------------------------------------------

TIMES = "<time>"
#: map fields whose value is a time, or Redis's memory layout
MASKED_FIELDS = {b"idle", b"seen-time", b"radix-tree-keys", b"radix-tree-nodes"}


def _mask_map(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    out = []
    for k, v in items:
        if k in MASKED_FIELDS:
            v = TIMES
        elif k == b"pending" and isinstance(v, list):  # XINFO FULL's PELs: [id, (owner,) t, n]
            v = [[*p[:-2], TIMES, p[-1]] if isinstance(p, list) else p for p in v]
        else:
            v = masked(v)
        out.append((k, v))
    return out


def masked(reply: Any) -> Any:
    """``reply`` with the clock's values replaced (maps in either protocol's shape)."""
    if isinstance(reply, tuple) and reply and reply[0] == "%":
        return ("%", _mask_map(reply[1]))
    if isinstance(reply, list):
        if len(reply) % 2 == 0 and reply and all(isinstance(k, bytes) for k in reply[::2]):
            keys = set(reply[::2])
            if keys & (MASKED_FIELDS | {b"pending", b"groups", b"consumers"}):
                flat = _mask_map(list(zip(reply[::2], reply[1::2], strict=True)))
                return [x for kv in flat for x in kv]
        return [masked(x) for x in reply]
    return reply


def masked_pending(reply: Any) -> Any:
    """XPENDING's extended form: [id, consumer, idle, deliveries]: idle masked."""
    if isinstance(reply, list) and all(isinstance(p, list) and len(p) == 4 for p in reply):
        return [[p[0], p[1], TIMES, p[3]] for p in reply]
    return reply


class Pair(resp_wire.Pair):
    """The same commands to the oracle and to the KV service (replicas taking turns,
    but a transaction stays on its connection); replies compared as :func:`plain`
    ones, with what the clock decides masked."""

    def __init__(self, oracle: Wire, ours: dict[int, Wire]) -> None:
        super().__init__(oracle, ours)
        self.pinned = False

    def both(self, *args: str | bytes | int) -> tuple[Any, Any]:
        expected = self.oracle.call(*args)
        got = self.ours[self.turn].call(*args)
        name = str(args[0]).upper()
        if name == "MULTI":  # a transaction stays on its connection
            self.pinned = True
        elif name in ("EXEC", "DISCARD"):
            self.pinned = False
        if not self.pinned:
            self.turn ^= 1
        return expected, got

    def normal(self, args: tuple[str | bytes | int, ...], reply: Any) -> Any:
        if str(args[0]).upper() == "XPENDING" and len(args) > 3:
            return masked_pending(plain(reply))
        return masked(plain(reply))

    def fresh(self) -> None:
        self.oracle.call("FLUSHALL")
        self.ours[0].call("FLUSHALL")


@pytest.fixture(scope="module")
def pairs(svc: Service, oracle_port: int) -> Iterator[dict[int, Pair]]:
    out = {proto: Pair(Wire(oracle_port, proto), wires_on_every_replica(svc.port, proto))
           for proto in (2, 3)}  # fmt: skip
    yield out
    for pair in out.values():
        pair.oracle.close()
        for w in pair.ours.values():
            w.close()


PROTOS = pytest.mark.parametrize("proto", [2, 3])


def run_script(pair: Pair, script: str) -> None:
    pair.fresh()
    for line in script.strip().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pair.same(*shlex.split(line))


# --- scripted cases ----------------------------------------------------------------------------

ADD_AND_RANGE = """
XADD s 1-1 a 1
XADD s 1-1 a 1
XADD s 0-0 a 1
XADD s 1 a
XADD s 2-x a 1
XADD s MAXLEN x 5-1 a 1
XADD s MAXLEN -1 5-1 a 1
XADD s LIMIT 10 5-1 a 1
XADD s LIMIT 0 5-1 a 1
XADD s LIMIT -1 5-1 a 1
XADD s MAXLEN = 1 LIMIT 10 5-1 a 1
XADD s MAXLEN 1 MINID 2 5-1 a 1
XADD s MINID x 5-1 a 1
XADD s NOMKSTREAM
XADD s2 NOMKSTREAM 1-1 a 1
EXISTS s2
XADD s 5-* a 1
XADD s 5-* b 2
XADD s 4-* b 2
XADD s 18446744073709551615-18446744073709551615 a 1
XADD s 18446744073709551615-* a 1
XADD s 18446744073709551616-1 a 1
XADD s2 0-* a 1
XADD s3 0-0 a 1
XADD s4 x a 1
XADD s4 " 7" a 1
XADD s4 "+8" a 1
XADD s4 "08-01" a 1
XADD s4 "-9" a 1
XADD s4 "-0" a 1
XADD s4 "10-" a 1
XADD s4 "" a 1
XADD s4 MAXLEN 0 11-1 a 1
XLEN s4
TYPE s4
EXISTS s4
XRANGE s4 - +
XINFO STREAM s4
XADD s5 10-1 a 1
XADD s5 10-2 b 2 c 3
XADD s5 11-0 d 4
XADD s5 12-5 e 5
XADD s5 13 f 6
XADD s5 14-1 f
XADD s5 14-1 f 1 g
XRANGE s5 - +
XRANGE s5 - + COUNT 2
XRANGE s5 - + COUNT 0
XRANGE s5 - + COUNT -3
XRANGE s5 - + COUNT
XRANGE s5 - + FOO 1
XRANGE s5 - + COUNT x
XRANGE s5 (10-1 +
XRANGE s5 (10 (12-5
XRANGE s5 10 12
XRANGE s5 12 10
XRANGE s5 (- +
XRANGE s5 - (+
XRANGE s5 ( +
XRANGE s5 (18446744073709551615-18446744073709551615 +
XRANGE s5 - (0-0
XRANGE s5 - (0
XRANGE s5 x +
XRANGE s5 -
XREVRANGE s5 + -
XREVRANGE s5 + - COUNT 2
XREVRANGE s5 (13 (10-1
XREVRANGE s5 12 10
XREVRANGE s5 (0-0 -
XRANGE nokey - +
XRANGE nokey - + COUNT 0
XREVRANGE nokey + - COUNT 0
XLEN nokey
SET str x
XLEN str
XRANGE str - +
XREVRANGE str + -
XADD str 1-1 a 1
XADD str NOMKSTREAM 1-1 a 1
XDEL s5 10-2 x
XDEL s5 10-2 11 99
XDEL s5
XDEL nokey 1
XDEL str 1
XRANGE s5 - +
XINFO STREAM s5
XTRIM s5 MAXLEN 2
XTRIM s5
XTRIM s5 FOO
XTRIM s5 MAXLEN
XTRIM s5 MAXLEN = 1 LIMIT 0
XTRIM s5 LIMIT 5
XTRIM s5 MAXLEN 1 MAXLEN 1
XTRIM s5 MINID 13 x
XTRIM s5 MINID = 13
XTRIM nokey MAXLEN 1
XTRIM str MAXLEN 1
XTRIM s5 MAXLEN x
XTRIM s5 MAXLEN -1
XTRIM s5 MAXLEN ~ 1 LIMIT -1
XINFO STREAM s5
XSETID s5 1-1
XSETID s5 20-1
XSETID s5 20-1 ENTRIESADDED 0
XSETID s5 20-1 ENTRIESADDED -1
XSETID s5 20-1 ENTRIESADDED x
XSETID s5 20-1 MAXDELETEDID 30-0
XSETID s5 20-1 MAXDELETEDID 15-0 ENTRIESADDED 100
XSETID s5 20-1 FOO
XSETID s5 20-1 ENTRIESADDED
XSETID s5 x
XSETID nokey 1-1
XSETID str 1-1
XINFO STREAM s5
XADD s5 20-1 a 1
XADD s5 20-2 a 1
XDEL s5 20-2
XSETID s5 20-1
XSETID s5 20-3 MAXDELETEDID 1-0
XINFO STREAM s5
XINFO STREAM s5 FULL
XINFO STREAM s5 FULL COUNT 1
XINFO STREAM s5 FULL COUNT 0
XINFO STREAM s5 FULL COUNT -1
XADD big 1-1 f v
XADD big MAXLEN = 3 2-1 f v
XADD big MAXLEN 3 3-1 f v
XADD big MAXLEN 3 4-1 f v
XADD big MINID 3 5-1 f v
XRANGE big - +
XADD big MINID = 9 6-1 f v
XRANGE big - +
XINFO STREAM big
"""

GROUPS = """
XADD s 1-1 a 1
XADD s 2-1 b 2
XADD s 3-1 c 3
XGROUP CREATE s g 0
XGROUP CREATE s g 0
XGROUP CREATE s g2 $
XGROUP CREATE s g3 1-1 ENTRIESREAD 1
XGROUP CREATE s g4 1-1 ENTRIESREAD -2
XGROUP CREATE s g4 1-1 ENTRIESREAD x
XGROUP CREATE s g4 1-1 FOO
XGROUP CREATE s g4 x
XGROUP CREATE s g4 -
XGROUP CREATE nokey g 0
XGROUP CREATE nokey g $ MKSTREAM
XGROUP CREATE nokey2 g x MKSTREAM
EXISTS nokey2
XINFO STREAM nokey
SET str x
XGROUP CREATE str g 0 MKSTREAM
XGROUP CREATE s
XGROUP FOO
XGROUP foo s g
XGROUP
XGROUP HELP
XGROUP HELP x
XINFO GROUPS s
XREADGROUP GROUP g alice STREAMS s >
XREADGROUP GROUP g alice STREAMS s >
XREADGROUP GROUP g alice STREAMS s 0
XREADGROUP GROUP g bob COUNT 1 STREAMS s 0
XREADGROUP GROUP g alice COUNT 1 STREAMS s 0
XREADGROUP GROUP g alice COUNT 1 STREAMS s (1-1
XREADGROUP GROUP g alice STREAMS s $
XREADGROUP GROUP g alice STREAMS s
XREADGROUP GROUP g alice STREAMS s t > >
XREADGROUP GROUP nog alice STREAMS s >
XREADGROUP GROUP g alice STREAMS nokey3 >
XREADGROUP GROUP g alice STREAMS str >
XREADGROUP STREAMS s >
XREADGROUP GROUP g alice BLOCK x STREAMS s >
XREADGROUP GROUP g alice BLOCK -1 STREAMS s >
XREADGROUP GROUP g alice NOACK FOO STREAMS s >
XINFO GROUPS s
XPENDING s g
XPENDING s g - + 10
XPENDING s g - + 10 alice
XPENDING s g - + 10 nobody
XPENDING s g IDLE 0 - + 10
XPENDING s g IDLE 100000 - + 10
XPENDING s g IDLE x - + 10
XPENDING s g IDLE 0 - +
XPENDING s g - +
XPENDING s g - + x
XPENDING s g x + 10
XPENDING s g (1-1 + 10
XPENDING s g - (3-1 10
XPENDING s g - + -1
XPENDING s g + - 10
XPENDING s g - + 10 alice extra
XPENDING s nog
XPENDING nokey9 g
XPENDING str g
XPENDING s g2
XPENDING s g2 - + 10
XACK s g 1-1 x
XACK s g 1-1 1-1 9-9
XACK s nog 1-1
XACK nokey 1-1 1-1
XACK str g 1-1
XPENDING s g
XGROUP CREATECONSUMER s g carol
XGROUP CREATECONSUMER s g carol
XGROUP CREATECONSUMER s nog carol
XINFO CONSUMERS s nog
XINFO CONSUMERS s g
XGROUP DELCONSUMER s g bob
XGROUP DELCONSUMER s g nobody
XPENDING s g
XGROUP SETID s g 0
XGROUP SETID s g 0 ENTRIESREAD 0
XGROUP SETID s g $ ENTRIESREAD 5
XGROUP SETID s g x
XGROUP SETID s g -
XGROUP SETID s nog 0
XGROUP SETID s g 0 ENTRIESREAD
XGROUP SETID s g 0 ENTRIESREAD -3
XINFO GROUPS s
XGROUP SETID s g 0 ENTRIESREAD -1
XINFO GROUPS s
XGROUP SETID nokey g 1 ENTRIESREAX 5
XGROUP SETID nokey g 1 ENTRIESREAD -2
XGROUP SETID nokey g 1 ENTRIESREAD 5 x
XGROUP SETID nokey g 1 x
XGROUP SETID s nog 1 ENTRIESREAD -2
XGROUP SETID s g 1 MKSTREAM
XGROUP SETID nokey g 1 ENTRIESREAD 1 ENTRIESREAD 2
XGROUP SETID s g 1 ENTRIESREAD 1 ENTRIESREAD 2
XGROUP CREATE s g9 1 ENTRIESREAD 1 ENTRIESREAD 2
XGROUP CREATE s g9 1 MKSTREAM MKSTREAM MKSTREAM
XGROUP CREATE s g10 1 MKSTREAM MKSTREAM MKSTREAM MKSTREAM
XGROUP CREATE nokey g 1 ENTRIESREAD -2
XINFO GROUPS s
XREADGROUP GROUP g dave STREAMS s >
XINFO GROUPS s
XPENDING s g - + 10
XGROUP DESTROY s g2
XGROUP DESTROY s g2
XGROUP DESTROY nokey5 g2
XGROUP DESTROY str g2
XINFO GROUPS s
XINFO GROUPS nokey
XINFO GROUPS str
XINFO STREAM str
XINFO FOO s
XINFO
XINFO HELP
XINFO STREAM s FOO
XINFO STREAM s FULL COUNT
XINFO STREAM s FULL COUNT x
XINFO STREAM s FULL FOO 1
XINFO STREAM s FULL
XREAD STREAMS s 0
XREAD COUNT 1 STREAMS s 0
XREAD STREAMS s $
XREAD STREAMS s nokey 0 0
XREAD STREAMS nokey 0
XREAD STREAMS str 0
XREAD STREAMS s >
XREAD GROUP g a STREAMS s 0
XREAD NOACK STREAMS s 0
XREAD STREAMS s
XREAD COUNT 1
XREAD COUNT x STREAMS s 0
XREAD COUNT -1 STREAMS s 0
XREAD BLOCK 0 STREAMS s 0
XREAD BLOCK x STREAMS s 0
XREAD BLOCK -1 STREAMS s 0
XREAD STREAMS s 1-1
XREAD STREAMS s x
XREAD STREAMS s 3-1
XREAD STREAMS s 99999999999999999999
XREAD FOO STREAMS s 0
XREAD STREAMS s s 0 (1
XADD e 1-1 a 1
XDEL e 1-1
XREAD STREAMS e 0
XGROUP CREATE e g 0
XREADGROUP GROUP g c STREAMS e >
XREADGROUP GROUP g c STREAMS e 0
XINFO GROUPS e
XINFO CONSUMERS e g
XADD n 1-1 a 1
XADD n 2-1 b 2
XGROUP CREATE n g 0
XREADGROUP GROUP g c STREAMS n >
XDEL n 1-1
XREADGROUP GROUP g c STREAMS n 0
XPENDING n g - + 10
XREADGROUP GROUP g c NOACK STREAMS n 0
XGROUP SETID n g 0
XREADGROUP GROUP g d NOACK STREAMS n >
XPENDING n g - + 10
XGROUP SETID n g 0
XREADGROUP GROUP g d STREAMS n >
XPENDING n g - + 10
XINFO STREAM n FULL
"""

CLAIMS = """
XADD s 1-1 a 1
XADD s 2-1 b 2
XADD s 3-1 c 3
XADD s 4-1 d 4
XGROUP CREATE s g 0
XREADGROUP GROUP g alice COUNT 2 STREAMS s >
XREADGROUP GROUP g bob STREAMS s >
XCLAIM s g carol 0 1-1 2-1 JUSTID
XCLAIM s g carol 0 1-1
XCLAIM s g carol 0 3-1 RETRYCOUNT 7 IDLE 0
XPENDING s g - + 10
XCLAIM s g carol 0 1-1 FOO
XCLAIM s g carol x 1-1
XCLAIM s g carol 0 1-1 IDLE x
XCLAIM s g carol 0 1-1 TIME x
XCLAIM s g carol 0 1-1 RETRYCOUNT x
XCLAIM s g carol 0 1-1 LASTID x
XCLAIM s g carol 0 1-1 IDLE
XCLAIM s g carol 0 x
XCLAIM s nog carol 0 1-1
XCLAIM nokey g carol 0 1-1
SET str x
XCLAIM str g carol 0 1-1
XCLAIM s g carol 100000 1-1
XCLAIM s g carol -5 1-1 JUSTID
XCLAIM s g dave 0 9-9 FORCE
XCLAIM s g dave 0 4-1 FORCE JUSTID
XPENDING s g - + 10
XCLAIM s g dave 0 2-1 FORCE
XPENDING s g
XDEL s 2-1
XCLAIM s g erin 0 2-1 3-1 JUSTID
XPENDING s g
XCLAIM s g erin 0 1-1 LASTID 10-0 JUSTID RETRYCOUNT 0
XINFO GROUPS s
XPENDING s g - + 10
XCLAIM s g erin 0 1-1 TIME 1 JUSTID
XCLAIM s g erin 0 1-1 TIME 99999999999999 JUSTID
XAUTOCLAIM s g frank 0 0
XAUTOCLAIM s g frank 0 0 COUNT 1
XAUTOCLAIM s g frank 0 0 COUNT 1 JUSTID
XAUTOCLAIM s g frank 0 (3-1 COUNT 1 JUSTID
XAUTOCLAIM s g frank 0 0 COUNT 0
XAUTOCLAIM s g frank 0 0 COUNT x
XAUTOCLAIM s g frank 0 0 COUNT
XAUTOCLAIM s g frank 0 0 FOO
XAUTOCLAIM s g frank x 0
XAUTOCLAIM s g frank 0 x
XAUTOCLAIM s g frank 0 (18446744073709551615-18446744073709551615
XAUTOCLAIM s nog frank 0 0
XAUTOCLAIM nokey g frank 0 0
XAUTOCLAIM str g frank 0 0
XAUTOCLAIM s g frank 100000 0
XAUTOCLAIM s g frank 0 0 COUNT 576460752303423488
XDEL s 3-1
XAUTOCLAIM s g gina 0 0
XPENDING s g
XGROUP DELCONSUMER s g frank
XINFO GROUPS s
XINFO CONSUMERS s g
XINFO STREAM s FULL
"""

LAG = """
XADD s 1-1 a 1
XADD s 2-1 a 1
XADD s 3-1 a 1
XADD s 4-1 a 1
XGROUP CREATE s g 0
XGROUP CREATE s g5 0
XINFO GROUPS s
XREADGROUP GROUP g5 h COUNT 1 STREAMS s >
XINFO GROUPS s
XDEL s 3-1
XINFO GROUPS s
XREADGROUP GROUP g5 h COUNT 1 STREAMS s >
XINFO GROUPS s
XREADGROUP GROUP g5 h COUNT 1 STREAMS s >
XINFO GROUPS s
XADD s 5-1 a 1
XREADGROUP GROUP g5 h NOACK STREAMS s >
XINFO GROUPS s
XTRIM s MAXLEN 1
XINFO GROUPS s
XGROUP CREATE s g6 0
XGROUP CREATE s g7 (5
XGROUP CREATE s g8 4-1
XGROUP CREATE s g9 5-1
XGROUP CREATE s g10 5-2
XINFO GROUPS s
XADD t 1-1 a 1
XADD t 2-1 a 1
XADD t 3-1 a 1
XGROUP CREATE t g 0
XGROUP CREATE t g1 1-1
XGROUP CREATE t g2 1-0
XINFO GROUPS t
XREADGROUP GROUP g c COUNT 1 STREAMS t >
XINFO GROUPS t
XDEL t 1-1
XINFO GROUPS t
XGROUP CREATE t g3 0
XGROUP CREATE t g4 2-1
XGROUP CREATE t g5 1-5
XINFO GROUPS t
XREADGROUP GROUP g3 c COUNT 1 STREAMS t >
XINFO GROUPS t
XDEL t 3-1
XINFO GROUPS t
XGROUP SETID t g3 0
XINFO GROUPS t
XTRIM t MAXLEN 0
XINFO GROUPS t
XGROUP CREATE t g9 0
XGROUP CREATE t g10 $ ENTRIESREAD 3
XINFO GROUPS t
XINFO STREAM t FULL
"""

EDGES = """
XADD s MINID 10 5-1 a 1
XLEN s
XINFO STREAM s
XADD s MINID = 10 LIMIT 0 6-1 a 1
XADD s MAXLEN 0 LIMIT 0 7-1 a 1
XADD s MINID 10 LIMIT 5 8-1 a 1
XADD s2 1-1 a 1
XADD s2 2-1 a 1
XADD s3 1-1 a 1
XREAD COUNT 1 STREAMS s2 s3 nokey 0 0 0
XREAD STREAMS s2 s3 1-1 1-1
XREAD STREAMS s2 s3 1-1 0
XREAD STREAMS s2 +
XREAD STREAMS s2 -
XREAD STREAMS s2 1-18446744073709551615
XRANGE s2 (1-18446744073709551615 +
XRANGE s2 1-18446744073709551615 (2-0
XRANGE s2 - 1-18446744073709551615
XRANGE s2 (1 (2
XGROUP CREATE s2 g 0
XGROUP CREATE s3 g 0
XREADGROUP GROUP g c COUNT 1 STREAMS s2 s3 > >
XREADGROUP GROUP g c STREAMS s2 s3 > >
XREADGROUP GROUP g c STREAMS s2 s3 > >
XREADGROUP GROUP g c COUNT 0 STREAMS s2 s3 0 0
XREADGROUP GROUP g c STREAMS s2 s3 0 >
XDEL s2 1-1
XINFO STREAM s2 FULL
XCLAIM s2 g d 0 1-1 5-5
XPENDING s2 g
XCLAIM s2 g d 0 2-1 IDLE -5 JUSTID
XPENDING s2 g IDLE 0 - + 10 d
XPENDING s2 g IDLE 100000 - + 10 d
XGROUP SETID s2 g +
XINFO GROUPS s2
XGROUP SETID s2 g -
XINFO GROUPS s2
XADD q 1-1 a 1
XADD q 2-1 a 1
XADD q 3-1 a 1
XADD q 4-1 a 1
XADD q 5-1 a 1
XGROUP CREATE q g 0
XREADGROUP GROUP g c STREAMS q >
XAUTOCLAIM q g d 0 0 COUNT 2
XAUTOCLAIM q g d 0 3-1 COUNT 2
XAUTOCLAIM q g d 0 5-1 COUNT 2
XAUTOCLAIM q g d 0 5-1 COUNT 1
XAUTOCLAIM q g d 0 4-1 COUNT 1
XDEL q 2-1 3-1 4-1
XAUTOCLAIM q g e 0 0 COUNT 1
XAUTOCLAIM q g e 0 0 COUNT 1
XPENDING q g
XAUTOCLAIM q g e 100000 0 COUNT 1
XINFO STREAM q FULL COUNT 1
XADD empty 1-1 a 1
XDEL empty 1-1
XINFO STREAM empty
XINFO STREAM empty FULL
XRANGE empty - +
XREVRANGE empty + -
XREAD STREAMS empty 0
XGROUP CREATE empty g 0
XREADGROUP GROUP g c STREAMS empty 0
XINFO CONSUMERS empty g
XADD dup 1-1 a 1
XADD dup 2-1 b 2
XREAD STREAMS dup dup 0 1-1
XGROUP CREATE dup g 0
XREADGROUP GROUP g c COUNT 1 STREAMS dup dup > >
XREADGROUP GROUP g c STREAMS dup dup 0 >
XREADGROUP GROUP g c STREAMS dup dup > 0
"""

IN_TRANSACTIONS = """
XADD s 1-1 a 1
MULTI
XADD s 2-1 b 2
XREAD BLOCK 0 STREAMS s $
XREAD BLOCK 100 STREAMS s 1-1
XGROUP CREATE s g $
XREADGROUP GROUP g c BLOCK 0 STREAMS s >
XADD s 3-1 c 3
XREADGROUP GROUP g c BLOCK 0 STREAMS s >
XLEN s
EXEC
XPENDING s g
"""


@PROTOS
@pytest.mark.parametrize(
    "script",
    [ADD_AND_RANGE, GROUPS, CLAIMS, LAG, EDGES, IN_TRANSACTIONS],
    ids=["add-range-trim", "groups", "claims", "lag", "edges", "transactions"],
)
def test_streams_answer_as_redis(pairs: dict[int, Pair], proto: int, script: str) -> None:
    run_script(pairs[proto], script)


# --- what the oracle cannot compare -------------------------------------------------------------


def _id(reply: bytes) -> tuple[int, int]:
    ms, seq = reply.split(b"-")
    return int(ms), int(seq)


def test_auto_ids_increase_and_are_the_same_on_every_replica(pairs: dict[int, Pair]) -> None:
    pair = pairs[2]
    pair.fresh()
    ours = pair.ours
    ids = [ours[n % 2].call("XADD", "auto", "*", "n", n) for n in range(40)]
    parsed = [_id(i) for i in ids]
    assert parsed == sorted(set(parsed)), ids
    # ms-* continues the last ms's sequence, or starts a later ms at 0
    last_ms = parsed[-1][0]
    assert ours[0].call("XADD", "auto", f"{last_ms}-*", "n", "x") == b"%d-%d" % (
        last_ms,
        parsed[-1][1] + 1,
    )
    assert ours[1].call("XADD", "auto", f"{last_ms + 5}-*", "n", "y") == b"%d-0" % (last_ms + 5)
    # a last ID in the future: * keeps its ms and counts on
    future = last_ms + 10**9
    assert ours[0].call("XSETID", "auto", f"{future}-7") == ("+", "OK")
    assert ours[1].call("XADD", "auto", "*", "n", "z") == b"%d-8" % future
    assert ours[0].call("XADD", "auto", "*", "n", "z") == b"%d-9" % future
    everything = [w.call("XRANGE", "auto", "-", "+") for w in ours.values()]
    assert everything[0] == everything[1]
    assert [e[0] for e in everything[0]][:40] == ids
    infos = [masked(w.call("XINFO", "STREAM", "auto", "FULL")) for w in ours.values()]
    assert infos[0] == infos[1]


def test_groups_read_on_one_replica_and_ack_on_the_other(pairs: dict[int, Pair]) -> None:
    pair = pairs[3]
    pair.fresh()
    a, b = pair.ours[0], pair.ours[1]
    for n in range(5):
        a.call("XADD", "q", f"{n + 1}-0", "job", n)
    assert a.call("XGROUP", "CREATE", "q", "workers", "0") == ("+", "OK")
    got = b.call("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "3", "STREAMS", "q", ">")
    assert got == ("%", [(b"q", [[b"%d-0" % n, [b"job", b"%d" % (n - 1)]] for n in (1, 2, 3)])])
    pending = a.call("XPENDING", "q", "workers")
    assert pending == [3, b"1-0", b"3-0", [[b"w1", b"3"]]]
    assert a.call("XACK", "q", "workers", "1-0", "2-0") == 2
    assert b.call("XPENDING", "q", "workers", "-", "+", "10")[0][:2] == [b"3-0", b"w1"]
    claimed = a.call("XCLAIM", "q", "workers", "w2", "0", "3-0", "JUSTID")
    assert claimed == [b"3-0"]
    assert b.call("XPENDING", "q", "workers", "-", "+", "10", "w2")[0][:2] == [b"3-0", b"w2"]
    auto = b.call("XAUTOCLAIM", "q", "workers", "w3", "0", "0", "JUSTID")
    assert auto == [b"0-0", [b"3-0"], []]
    consumers = [masked(w.call("XINFO", "CONSUMERS", "q", "workers")) for w in (a, b)]
    assert consumers[0] == consumers[1]
    assert [dict(c[1])[b"pending"] for c in consumers[0]] == [0, 0, 1]
    # the replicas hold the same PEL, delivery times and counts included
    full = [w.call("XINFO", "STREAM", "q", "FULL") for w in (a, b)]
    assert full[0] == full[1]


def test_read_without_block_or_data_is_a_null_array(pairs: dict[int, Pair]) -> None:
    for proto in (2, 3):
        pair = pairs[proto]
        pair.fresh()
        pair.same("XADD", "s", "1-1", "a", "1")
        pair.same("XREAD", "STREAMS", "s", "$")
        pair.same("XREAD", "BLOCK", "50", "STREAMS", "s", "0")  # data: served at once
        pair.same("XGROUP", "CREATE", "s", "g", "$")
        pair.same("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">")


WATCHED = [
    ("XADD", "s", "9-9", "f", "v"),
    ("XDEL", "s", "1-1"),
    ("XDEL", "s", "7-7"),
    ("XTRIM", "s", "MAXLEN", "0"),
    ("XTRIM", "s", "MAXLEN", "5"),
    ("XSETID", "s", "5-5"),
    ("XGROUP", "CREATE", "s", "g2", "0"),
    ("XGROUP", "CREATE", "t", "g", "0", "MKSTREAM"),
    ("XGROUP", "SETID", "s", "g", "1-1"),
    ("XGROUP", "CREATECONSUMER", "s", "g", "e"),
    ("XGROUP", "DESTROY", "s", "g"),
    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"),
    ("XACK", "s", "g", "1-1"),
    ("XCLAIM", "s", "g", "d", "0", "1-1"),
    ("XAUTOCLAIM", "s", "g", "d", "0", "0"),
]


@pytest.mark.parametrize("cmd", WATCHED, ids=[" ".join(c[:2]) for c in WATCHED])
def test_which_commands_touch_a_watched_stream(
    svc: Service, oracle_port: int, cmd: tuple[str, ...]
) -> None:
    ours = wires_on_every_replica(svc.port, 2)
    theirs = {0: Wire(oracle_port, 2), 1: Wire(oracle_port, 2)}
    try:
        outcomes = []
        for side in (theirs, ours):
            watcher, writer = side[0], side[1]
            writer.call("FLUSHALL")
            writer.call("XADD", "s", "1-1", "f", "v")
            writer.call("XGROUP", "CREATE", "s", "g", "0")
            if cmd[0] in ("XACK", "XCLAIM", "XAUTOCLAIM"):
                writer.call("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">")
            watcher.call("WATCH", "s", "t")
            writer.call(*cmd)
            watcher.call("MULTI")
            watcher.call("PING")
            outcomes.append(watcher.call("EXEC"))
        assert outcomes[1] == outcomes[0], f"{cmd}: redis {outcomes[0]}, dominoes {outcomes[1]}"
    finally:
        for w in (*ours.values(), *theirs.values()):
            w.close()


def test_streams_survive_a_snapshot() -> None:
    from dominoes.components.kv._keyspace import _plain, _typed
    from dominoes.components.kv._streams import Group, Nack, Stream

    s = Stream()
    for n in range(1, 6):
        s.entries[(n, 0)] = [b"f", b"%d" % n]
    s.last, s.max_deleted, s.added = (2**64 - 1, 1), (3, 5), 7
    g = s.groups[b"g"] = Group((2, 0), 2)
    c = g.consumer(b"c", 1000)
    g.consumer(b"idle", 1001)
    for i in ((1, 0), (2, 0)):
        g.pel[i] = c.pel[i] = Nack(1234, 2, c)
    g.pel[(3, 0)] = Nack(1, 1, None)
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(_plain(s)))
    back = _typed("x", wire)
    assert isinstance(back, Stream)
    assert back.plain() == s.plain()
    bg = back.groups[b"g"]
    assert bg.pel[(1, 0)] is bg.consumers[b"c"].pel[(1, 0)]
    assert bg.pel[(3, 0)].consumer is None
