"""Malformed RESP thrown at a running KV service over raw sockets (hypothesis).

Whatever one connection sends, the replica answers with well-formed RESP (an
``-ERR Protocol error`` closes that connection), keeps serving its other
connections, and never dies.  Bounded: 100 examples, short socket timeouts and
a hard time budget for the whole property.
"""

from __future__ import annotations

import time

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Service
from .kv_helpers import raw_exchange

pytestmark = pytest.mark.integration

#: The whole property stops generating work after this many seconds.
BUDGET_S = 30.0


_NUMBERS = st.sampled_from(
    [b"-5", b"-1", b"0", b"1", b"2", b"3", b"01", b" 1", b"x", b"", b"1048577", b"2147483648",
     b"999999999999", b"9223372036854775808", b"18446744073709551616"]
)  # fmt: skip
_TYPES = st.sampled_from([b"*", b"$", b"%", b"~", b">", b"|", b"=", b"!", b"+", b"-", b":", b"_"])
_TOKENS = st.one_of(
    st.builds(lambda t, n: t + n + b"\r\n", _TYPES, _NUMBERS),
    st.builds(lambda n: b"$" + n + b"\r\n", _NUMBERS),
    st.builds(lambda n: b"*" + n + b"\r\n", _NUMBERS),
    st.binary(max_size=40),
    st.sampled_from([b"\r\n", b"\n", b"\r", b'"', b"'", b"\\x4", b"PING", b"SET k v", b"\x00"]),
    st.builds(
        lambda args: (
            b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        ),
        st.lists(
            st.sampled_from([b"SET", b"GET", b"k", b"v", b"INCR", b"MULTI", b"EXEC"]), max_size=4
        ),
    ),
)
_MALFORMED = st.one_of(
    st.binary(min_size=1, max_size=300), st.lists(_TOKENS, min_size=1, max_size=12).map(b"".join)
)


def well_formed(data: bytes) -> bool:
    """Whether the server's output parses as RESP replies (ignoring a partial tail)."""
    reader = hiredis.Reader()
    reader.feed(data)
    try:
        while reader.gets() is not False:
            pass
    except hiredis.ProtocolError:
        return False
    return True


def test_the_documented_oversized_bulk_case(svc: Service) -> None:
    out, closed = raw_exchange(svc.port, b"*1\r\n$999999999999\r\n", timeout=2)
    assert out == b"-ERR Protocol error: invalid bulk length\r\n"
    assert closed


def test_valid_commands_before_garbage_still_run(svc: Service, on: dict[int, redis.Redis]) -> None:
    out, closed = raw_exchange(
        svc.port, b"*3\r\n$3\r\nSET\r\n$4\r\nfuzz\r\n$2\r\nok\r\n*1\r\n*1\r\n", timeout=2
    )
    assert out == b"+OK\r\n-ERR Protocol error: expected '$', got '*'\r\n"
    assert closed
    assert on[0].get("fuzz") == b"ok"


_started: list[float] = []


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=_MALFORMED)
def test_malformed_input_never_disturbs_the_replica(
    svc: Service, on: dict[int, redis.Redis], data: bytes
) -> None:
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > BUDGET_S:
        return  # the hard budget is spent: stop sending
    out, closed = raw_exchange(svc.port, data, timeout=0.05)
    assert well_formed(out), out
    if b"-ERR Protocol error" in out:  # the last reply, then the server hangs up
        assert out.endswith(b"\r\n")
        assert closed
    for r in on.values():  # the other connections on both replicas still work
        assert r.ping() is True


def test_no_replica_died_under_the_fuzzing(svc: Service, on: dict[int, redis.Redis]) -> None:
    status = svc.status()
    assert [r["restarts"] for r in status["replicas"]] == [0, 0]
    on[1].set("after-fuzz", "fine")
    assert on[1].get("after-fuzz") == b"fine"
