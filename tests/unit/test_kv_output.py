"""The KV front end's output: flow control and ``client-output-buffer-limit``, in process.

A :class:`StuckTransport` plays a client that does not read: what the server
writes stays in its buffer, and past asyncio's high-water mark it calls
``pause_writing`` as a real transport would.  ``read()`` is the client catching
up.  Everything runs on real replicas in this process (``kv_world``), so
each check takes milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dominoes.components.kv import _connection
from dominoes.components.kv._connection import Connection
from dominoes.components.kv._limits import OUTPUT_WATERMARK, Limits

from .kv_world import Client, World, Worlds, pack

VALUE = b"v" * 80_000  # under the test log's entry limit


class StuckTransport:
    """A transport whose peer reads only when the test says so."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.paused = False
        self.high = 64 * 1024  # asyncio's default, until the connection sets its own

    @property
    def buffered(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data
        if not self.paused and len(self.data) > self.high:
            self.paused = True
            self.conn.pause_writing()

    def read(self) -> bytes:
        """The client reads everything: the buffer empties, writing resumes."""
        data = bytes(self.data)
        self.data.clear()
        if self.paused:
            self.paused = False
            self.conn.resume_writing()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return len(self.data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None
        self.high = high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 12345) if name == "peername" else default


@pytest.fixture
async def worlds() -> AsyncIterator[Worlds]:
    async with Worlds() as made:
        yield made


def stuck(world: World, replica: int = 0) -> tuple[Client, StuckTransport]:
    c = world.client(replica)
    t = StuckTransport(c.conn)
    c.transport = t  # type: ignore[assignment]
    c.conn.connection_made(t)  # type: ignore[arg-type]
    return c, t


def decode(c: Client, data: bytes) -> list[Any]:
    c.reader.feed(data)
    out = []
    while (r := c.reader.gets()) is not False:
        out.append(r)
    return out


async def read_all(world: World, c: Client, t: StuckTransport, want: int) -> list[Any]:
    """The client reads until it has ``want`` replies (bounded: a stall fails)."""
    replies: list[Any] = []
    for _ in range(2000):
        await world.settle()
        replies += decode(c, t.read())
        if len(replies) >= want:
            break
    return replies


async def config(world: World, value: str) -> None:
    admin = world.client(1)  # set on the other replica: it goes through the log
    assert await admin.ask(("CONFIG", "SET", "client-output-buffer-limit", value)) == [b"OK"]
    await world.settle()


# --- flow control --------------------------------------------------------------------------


async def test_a_pipeline_of_large_gets_runs_a_watermark_at_a_time(worlds: Worlds) -> None:
    w = worlds()
    c, t = stuck(w)
    assert await c.ask(("SET", "big", VALUE)) == [b"OK"]
    t.read()
    n = 200  # 20 MB of replies from 4 KB of requests
    c.send(*[("GET", "big")] * n)
    await w.settle()
    # The client reads nothing: the server holds about a watermark, not 20 MB.
    assert t.buffered <= OUTPUT_WATERMARK + len(VALUE) + 64
    assert c.conn.backlog
    assert not t.reading
    assert not t.closed
    # It catches up: every reply, in order, and reading resumes.
    replies = await read_all(w, c, t, n)
    assert replies == [VALUE] * n
    assert not c.conn.backlog
    assert t.reading


async def test_held_back_commands_keep_their_order_with_writes_and_errors(worlds: Worlds) -> None:
    w = worlds()
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    cmds: list[tuple[str, ...]] = []
    for _ in range(40):
        cmds += [("GET", "big"), ("INCR", "n"), ("GET", "n"), ("NOPE",), ("PING",)]
    c.send(*cmds)
    replies = await read_all(w, c, t, len(cmds))
    assert len(replies) == len(cmds)
    for i in range(40):
        got = replies[5 * i : 5 * i + 5]
        assert got[0] == VALUE
        assert got[1:3] == [i + 1, b"%d" % (i + 1)]
        assert str(got[3]).startswith("ERR unknown command 'NOPE'")
        assert got[4] == b"PONG"


async def test_a_protocol_error_is_answered_after_the_held_back_commands(worlds: Worlds) -> None:
    w = worlds()
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    c.send(b"".join(pack("GET", "big") for _ in range(30)) + b"*1\r\n$999999999999\r\n")
    await w.settle()
    assert c.conn.backlog
    assert not t.closed
    replies = await read_all(w, c, t, 31)
    assert replies[:30] == [VALUE] * 30
    assert str(replies[30]) == "ERR Protocol error: invalid bulk length"
    assert t.closed


async def test_done_entries_are_encoded_a_watermark_at_a_time(
    monkeypatch: Any, worlds: Worlds
) -> None:
    monkeypatch.setattr(_connection, "MAX_BATCH", 2)  # one SET + GET per entry
    w = worlds()
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    n = 40
    c.send(*[cmd for i in range(n) for cmd in (("SET", f"k{i}", "x"), ("GET", "big"))])
    await w.settle()
    assert t.buffered <= OUTPUT_WATERMARK + 2 * len(VALUE) + 64
    assert c.conn.more
    replies = await read_all(w, c, t, 2 * n)
    assert replies == [b"OK", VALUE] * n


async def test_entries_in_flight_hold_back_the_rest_of_a_read(
    monkeypatch: Any, worlds: Worlds
) -> None:
    monkeypatch.setattr(_connection, "MAX_BATCH", 4)
    w = worlds()
    c = w.client(0)
    n = 4 * (_connection.MAX_IN_FLIGHT + 10)
    c.send(*[("SET", "k", i) for i in range(n)])
    assert len(c.conn.pending) == _connection.MAX_IN_FLIGHT + 1  # not one entry per 4 commands
    assert c.conn.backlog
    assert not c.transport.reading
    await w.settle()
    assert c.replies() == [b"OK"] * n
    assert c.transport.reading
    assert w.replicas[1].component("keyspace").values[b"k"] == b"%d" % (n - 1)


async def test_a_read_held_back_behind_unread_output_sees_writes_acknowledged_before_it(
    worlds: Worlds,
) -> None:
    """Invariant 8 on the held-back path: the GET arrives after replica 0 acknowledged
    the SET, waits in ``backlog`` on replica 1 (whose apply loop is held), and runs
    when the client reads: the catch-up before running held-back commands serves it."""
    w = worlds()
    a = w.client(0)
    c, t = stuck(w, 1)
    assert await a.ask(("SET", "big", VALUE), ("SET", "k", "old")) == [b"OK", b"OK"]
    n = OUTPUT_WATERMARK // len(VALUE) + 2  # the last ones wait for the client to read
    c.send(*[("GET", "big")] * n)
    await w.settle()
    assert c.conn.backlog
    with w.holding(1) as r1:
        a.send(("SET", "k", "new"))
        await w.run_until(lambda: bool(a.transport.data), "replica 0 acknowledged")
        assert a.replies() == [b"OK"]
        assert r1.core.machine.cursor < w.log.tail
        c.send(("GET", "k"))  # behind the held-back GETs
        assert c.conn.backlog[-1] == [b"GET", b"k"]
        replies = decode(c, t.read())  # the client reads: the held-back commands run
        await w.run_until(lambda: not c.conn.backlog, "the held-back commands ran")
        replies += decode(c, t.read())
    assert replies == [VALUE] * n + [b"new"]
    await w.settle()


# --- the limits ----------------------------------------------------------------------------


async def test_a_reply_over_the_hard_limit_cuts_the_client_off_at_once(
    caplog: pytest.LogCaptureFixture,
    worlds: Worlds,
) -> None:
    w = worlds()
    await config(w, "normal 200kb 0 0")
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    # Flow control keeps a pipeline of GETs under it (the watermark is half of it) ...
    c.send(*[("GET", "big")] * 100)
    await w.settle()
    assert not t.aborted
    assert t.buffered < 200 * 1024
    # ... but one reply larger than the hard limit is over it at once, as in Redis.
    m, tm = stuck(w)
    with caplog.at_level(logging.WARNING, logger="dominoes.kv"):
        m.send(("MGET", "big", "big", "big"))
    assert tm.aborted
    assert m.conn.closing
    assert not m.conn.pending
    assert tm.buffered == 0  # dropped, not sent
    [record] = [r for r in caplog.records if "output buffer" in r.getMessage()]
    message = record.getMessage()
    assert "addr=127.0.0.1:12345" in message
    assert "hard limit of 204800 bytes" in message
    assert "client-output-buffer-limit normal" in message
    other = w.client(0)
    info = (await other.ask(("INFO", "stats")))[0].decode()
    assert "client_output_buffer_limit_disconnections:1\r\n" in info
    assert await other.ask(("GET", "missing")) == [None]  # the others are served


async def test_above_the_soft_limit_for_its_seconds_the_client_is_cut_off(worlds: Worlds) -> None:
    w = worlds()
    await config(w, "normal 0 300kb 10")
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    c.send(*[("GET", "big")] * 50)
    await w.settle()
    conn = c.conn
    assert not t.aborted  # above it, but not for 10 s yet
    assert conn.soft_since is not None
    timer = conn._soft_timer
    assert timer is not None
    assert 0 < timer.when() - asyncio.get_running_loop().time() <= 10.001  # due within 10 s
    timer.cancel()
    conn._soft_due()  # the timer, early: it looks again later
    assert not t.aborted
    assert conn._soft_timer is not None
    conn._soft_timer.cancel()
    conn.soft_since -= 10  # 10 s on, still above: cut off, though it made no callback
    conn._soft_due()
    assert t.aborted
    assert conn.server.output_limit_disconnections == 1


async def test_a_client_that_reads_in_time_is_not_cut_off_by_the_soft_limit(worlds: Worlds) -> None:
    w = worlds()
    await config(w, "normal 0 300kb 3600")
    c, t = stuck(w)
    await c.ask(("SET", "big", VALUE))
    t.read()
    c.send(*[("GET", "big")] * 50)
    await w.settle()
    assert c.conn.soft_since is not None  # over the soft limit, its clock runs
    replies = await read_all(w, c, t, 50)
    assert replies == [VALUE] * 50
    assert c.conn.soft_since is None  # below it again: the clock starts over
    c.conn._soft_due()  # the timer, early: nothing to do
    assert not t.aborted
    if c.conn._soft_timer is not None:
        c.conn._soft_timer.cancel()


async def test_subscribers_keep_the_pubsub_limit(worlds: Worlds) -> None:
    w = worlds()
    await config(w, "normal 1kb 0 0 pubsub 300kb 0 0")
    sub, t = stuck(w, 0)
    sub.send(("SUBSCRIBE", "ch"))
    await w.settle()
    t.read()
    pub = w.client(1)
    big = "m" * 80_000
    await pub.ask(("PUBLISH", "ch", big))  # over the normal limit: a subscriber is not normal
    assert not t.aborted
    for _ in range(3):
        await pub.ask(("PUBLISH", "ch", big))
    assert t.aborted
    assert sub.conn.server.output_limit_disconnections == 1


@pytest.mark.parametrize(
    ("hard", "soft"),
    [(0, 0), (1, 0), (3, 0), (0, 1), (100, 50), (1 << 28, 1 << 26), (1 << 21, 0)],
)
def test_first_is_next_check_below_it(hard: int, soft: int) -> None:
    """``Limits.first`` stands for ``next_check(held)`` at the start of every read."""
    limits = Limits(hard, soft, 1)
    for held in {0, limits.first // 2, limits.first - 1}:
        assert limits.next_check(held) == limits.first
    assert limits.next_check(limits.first) > limits.first


async def test_the_default_limits_are_redis_like_but_finite(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    assert await c.ask(("CONFIG", "GET", "client-output-buffer-limit")) == [
        [b"client-output-buffer-limit", b"normal 268435456 67108864 60 pubsub 33554432 0 0"]
    ]


async def test_config_set_output_limits_reaches_every_replica_and_checks_its_value(
    worlds: Worlds,
) -> None:
    w = worlds()
    a, b = w.client(0), w.client(1)
    replies = await a.ask(
        ("CONFIG", "SET", "client-output-buffer-limit", "NORMAL 1mb 2K 3 slave 1 2 3"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1 2"),
        ("CONFIG", "SET", "client-output-buffer-limit", "master 1 2 3"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal -1 2 3"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1 2 3kb"),
        ("CONFIG", "SET", "client-output-buffer-limit", "normal 1 2 3", "nosuch", "1"),
        ("CONFIG", "SET", "client-output-buffer-limit"),
    )
    failed = "ERR CONFIG SET failed (possibly related to argument 'client-output-buffer-limit') - "
    assert replies[0] == b"OK"
    assert str(replies[1]) == failed + "Wrong number of arguments in buffer limit configuration."
    assert (
        str(replies[2]) == failed + "Invalid client class specified in buffer limit configuration."
    )
    bad_number = (
        failed + "Error in hard, soft or soft_seconds setting in buffer limit configuration."
    )
    assert str(replies[3]) == bad_number
    assert str(replies[4]) == bad_number
    assert str(replies[5]) == (
        "ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"
    )
    assert str(replies[6]) == "ERR wrong number of arguments for 'config|set' command"
    await a.ask(("CONFIG", "SET", "client-output-buffer-limit", "normal 1mb 2k 3"))
    await w.settle()
    for c in (a, b):
        assert await c.ask(("CONFIG", "GET", "client-output*")) == [
            [b"client-output-buffer-limit", b"normal 1048576 2000 3 pubsub 33554432 0 0"]
        ]
    assert await b.ask(("CONFIG", "SET", "client-output-buffer-limit", "pubsub 1gb 0 0")) == [b"OK"]
    assert w.replicas[0].component("commands").output_limits == [
        1048576, 2000, 3, 1024**3, 0, 0
    ]  # fmt: skip
    await w.assert_converged()


async def test_the_transport_pauses_at_the_watermark_of_the_clients_limits(worlds: Worlds) -> None:
    w = worlds()
    c, t = stuck(w)
    assert t.high == OUTPUT_WATERMARK
    await config(w, "normal 0 256kb 10")  # a soft limit under the watermark lowers it
    await c.ask(("PING",))
    assert t.high == 256 * 1024
    await config(w, "normal 300kb 0 0 pubsub 0 0 0")  # so does half a hard limit
    await c.ask(("PING",))
    assert t.high == 150 * 1024
    await c.ask(("SUBSCRIBE", "ch"))  # a subscriber: the pubsub class's (none: the default)
    assert t.high == OUTPUT_WATERMARK
