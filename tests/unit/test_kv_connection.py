"""The KV front end in process: real connections over fake transports, real replicas.

A :class:`~tests.unit.kv_world.World` runs production ``Replica`` objects of
the KV service on the test's event loop over an in-memory log, so pipelining,
batching, group commit, transactions, WATCH across replicas, pub/sub across
replicas and backpressure (a log that is really full) are checked in
milliseconds, without processes or sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import hiredis
import pytest
from dominoes.components.kv import TABLE, Commands, PubSub
from dominoes.components.kv._connection import MAX_IN_FLIGHT

from .kv_world import Worlds, pack


@pytest.fixture
async def worlds() -> AsyncIterator[Worlds]:
    async with Worlds() as made:
        yield made


# --- pipelining ----------------------------------------------------------------------------


async def test_a_pipeline_of_writes_and_reads_is_one_entry_with_replies_in_order(
    worlds: Worlds,
) -> None:
    w = worlds()
    c = w.client(0)
    await w.settle()
    before = w.entries()
    replies = await c.ask(
        ("GET", "k"),  # nothing in flight: answered locally
        ("SET", "k", "1"),
        ("GET", "k"),  # behind a write: in the entry, sees it
        ("INCR", "k"),
        ("GET", "k"),
        ("SET", "k", "x"),
        ("INCR", "k"),  # an error in the middle
        ("GET", "k"),
    )
    assert replies[:6] == [None, b"OK", b"1", 2, b"2", b"OK"]
    assert isinstance(replies[6], hiredis.ReplyError)
    assert replies[7] == b"x"
    assert w.entries() - before == 1


async def test_one_iterations_batches_from_every_connection_are_one_entry(worlds: Worlds) -> None:
    w = worlds()
    clients = [w.client(0) for _ in range(5)]
    await w.settle()
    before = w.applied(1)
    for i, c in enumerate(clients):  # one loop iteration: no settle in between
        c.send(("SET", f"k{i}", "a"), ("APPEND", f"k{i}", str(i)), ("GET", f"k{i}"))
    await w.settle()
    assert w.applied(1) - before == 1  # one entry, one Commands.run
    for i, c in enumerate(clients):
        assert c.replies() == [b"OK", 2, f"a{i}".encode()]
    assert w.replicas[1].component("keyspace").values[b"k3"] == b"a3"


async def test_an_exec_or_publish_lands_after_the_batches_gathered_before_it(
    worlds: Worlds,
) -> None:
    w = worlds()
    a, b, sub = w.client(0), w.client(0), w.client(1)
    assert await sub.ask(("SUBSCRIBE", "ch")) == [[b"subscribe", b"ch", 1]]
    # b's batch joins the group first; a's EXEC and PUBLISH must not overtake
    # either connection's earlier writes.
    b.send(("SET", "n", "10"))
    a.send(("SET", "k", "1"), ("MULTI",), ("INCR", "k"), ("EXEC",), ("PUBLISH", "ch", "m"))
    b.send(("INCR", "n"))
    await w.settle()
    assert a.replies() == [b"OK", b"OK", b"QUEUED", [2], 1]
    assert b.replies() == [b"OK", 11]
    assert sub.replies() == [[b"message", b"ch", b"m"]]
    await w.assert_converged()


async def test_a_client_closing_with_a_batched_watch_leaves_no_watch_behind(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    await w.settle()
    c.send(("WATCH", "k"))  # batched, not yet appended
    c.conn.connection_lost(None)  # its UNWATCH must land after the WATCH
    await w.settle()
    for r in w.replicas:
        assert r.component("keyspace").watched == {}
        assert r.component("transactions").watches == {}


async def test_reads_after_a_pipeline_in_a_later_read_see_the_writes(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    c.send(("SET", "a", "1"))
    c.send(("GET", "a"), ("PING",), ("GET", "a"))  # while the SET is in flight
    await w.settle()
    assert c.replies() == [b"OK", b"1", b"PONG", b"1"]


async def test_a_read_is_answered_locally_on_the_other_replica(worlds: Worlds) -> None:
    w = worlds()
    a, b = w.client(0), w.client(1)
    assert await a.ask(("SET", "shared", "v")) == [b"OK"]
    before = w.entries()
    assert await b.ask(("GET", "shared"), ("EXISTS", "shared")) == [b"v", 1]
    assert w.entries() == before


async def test_a_read_on_a_replica_behind_the_log_sees_a_write_acknowledged_on_the_other(
    worlds: Worlds,
) -> None:
    """Invariant 8: replica 1 has not applied the SET when the GET reaches it.

    Replica 1's own apply loop is held (its scheduled drains do nothing), so
    only the catch-up before the read (``Replica.sync``) can make it see the
    write that replica 0 acknowledged.
    """
    w = worlds()
    a, b = w.client(0), w.client(1)
    await w.settle()
    with w.holding(1) as r1:
        a.send(("SET", "k", "v"), ("SADD", "s", "m"))
        await w.run_until(lambda: bool(a.transport.data), "replica 0 acknowledged")
        assert a.replies() == [b"OK", 1]
        assert r1.core.machine.cursor < w.log.tail  # behind: the read must catch up
        b.send(("GET", "k"), ("PING",), ("SISMEMBER", "s", "m"), ("DBSIZE",))
        assert b.replies() == [b"v", b"PONG", 1, 2]  # answered in the callback, locally
    await w.assert_converged()


async def test_connection_commands_keep_their_place(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("SET", "a", "1"), ("ECHO", "hi"), ("SET", "a", "2"), ("PING",))
    assert replies == [b"OK", b"hi", b"OK", b"PONG"]


async def test_unknown_command_and_arity_errors(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("FOO", "bar", "baz"), ("GET",), ("get", "a", "b"), ("SeT", "a", "b"))
    assert [str(r) for r in replies[:3]] == [
        "ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' ",
        "ERR wrong number of arguments for 'get' command",
        "ERR wrong number of arguments for 'get' command",
    ]
    assert replies[3] == b"OK"


async def test_resp3_after_hello_3(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    hello = (await c.ask(("HELLO", "3")))[0]
    assert hello[b"proto"] == 3
    c.send(("HSET", "h", "f", "v"), ("HGETALL", "h"), ("GET", "none"))
    await w.settle()
    raw = bytes(c.transport.data)
    assert raw == b":1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n"
    c.transport.data.clear()
    assert (await c.ask(("HELLO", "4")))[0].args[0].startswith("NOPROTO")


# --- bad input -----------------------------------------------------------------------------


async def test_a_protocol_error_answers_after_the_good_commands_and_closes(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    c.send(pack("SET", "a", "1") + pack("GET", "a") + b"*1\r\n$999999999999\r\n")
    await w.settle()
    replies = c.replies()
    assert replies[:2] == [b"OK", b"1"]
    assert str(replies[2]) == "ERR Protocol error: invalid bulk length"
    assert c.transport.closed


async def test_quit_closes_after_pending_replies(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    c.send(("SET", "a", "1"), ("QUIT",), ("SET", "a", "2"))
    # is_closing(), not .closed: mypy would keep `not closed` narrowed across the await
    assert not c.transport.is_closing()  # the SET's reply is not out yet
    await w.settle()
    assert c.replies() == [b"OK", b"OK"]
    assert c.transport.is_closing()
    assert w.replicas[0].component("keyspace").values[b"a"] == b"1"


# --- transactions --------------------------------------------------------------------------


async def test_multi_exec_is_one_atomic_entry(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    await w.settle()
    before = w.entries()
    replies = await c.ask(
        ("MULTI",), ("SET", "a", "1"), ("INCR", "a"), ("GET", "a"), ("PING",), ("EXEC",)
    )
    assert replies == [b"OK", b"QUEUED", b"QUEUED", b"QUEUED", b"QUEUED", [b"OK", 2, b"2", b"PONG"]]
    assert w.entries() - before == 1


async def test_queue_time_errors_abort_the_transaction(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("MULTI",), ("SET", "a", "1"), ("NOPE",), ("EXEC",), ("GET", "a"))
    assert str(replies[3]).startswith("EXECABORT")
    assert replies[4] is None
    replies = await c.ask(("MULTI",), ("SUBSCRIBE", "x"), ("EXEC",))
    assert str(replies[1]) == "ERR Command not allowed inside a transaction"
    replies = await c.ask(("EXEC",), ("DISCARD",), ("MULTI",), ("MULTI",), ("DISCARD",))
    assert [r if isinstance(r, bytes) else str(r) for r in replies] == [
        "ERR EXEC without MULTI",
        "ERR DISCARD without MULTI",
        b"OK",
        "ERR MULTI calls can not be nested",
        b"OK",
    ]


async def test_watch_conflict_between_replicas(worlds: Worlds) -> None:
    w = worlds()
    a, b = w.client(0), w.client(1)
    await a.ask(("SET", "k", "1"))
    assert await a.ask(("WATCH", "k")) == [b"OK"]
    assert await b.ask(("SET", "k", "2")) == [b"OK"]
    assert await a.ask(("MULTI",), ("SET", "k", "3"), ("EXEC",)) == [b"OK", b"QUEUED", None]
    assert await a.ask(("GET", "k")) == [b"2"]
    # watched again, nobody else writes: it commits
    assert await a.ask(("WATCH", "k"), ("MULTI",), ("INCR", "k"), ("EXEC",)) == [
        b"OK",
        b"OK",
        b"QUEUED",
        [3],
    ]
    # UNWATCH forgets
    await a.ask(("WATCH", "k"))
    await b.ask(("SET", "k", "9"))
    assert await a.ask(("UNWATCH",), ("MULTI",), ("GET", "k"), ("EXEC",)) == [
        b"OK",
        b"OK",
        b"QUEUED",
        [b"9"],
    ]


async def test_watch_pipelined_behind_own_writes(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(
        ("SET", "k", "1"), ("WATCH", "k"), ("MULTI",), ("INCR", "k"), ("EXEC",), ("GET", "k")
    )
    assert replies == [b"OK", b"OK", b"OK", b"QUEUED", [2], b"2"]
    replies = await c.ask(("WATCH", "k"), ("SET", "k", "9"), ("MULTI",), ("GET", "k"), ("EXEC",))
    assert replies == [b"OK", b"OK", b"OK", b"QUEUED", None]  # its own write after WATCH


async def test_discard_reset_and_closing_unwatch(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    await c.ask(("WATCH", "a", "b"), ("MULTI",), ("UNWATCH",), ("DISCARD",))
    assert w.replicas[0].component("keyspace").watched == {}
    await c.ask(("WATCH", "a"), ("RESET",))
    assert w.replicas[0].component("keyspace").watched == {}
    await c.ask(("WATCH", "a"))
    assert w.replicas[0].component("keyspace").watched == {b"a": 1}
    c.conn.connection_lost(None)
    await w.settle()
    assert w.replicas[1].component("keyspace").watched == {}


async def test_reset_answers_only_reset(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    assert await c.ask(("SUBSCRIBE", "x"), ("RESET",), ("GET", "x")) == [
        [b"subscribe", b"x", 1],
        b"RESET",
        None,
    ]


# --- pub/sub -------------------------------------------------------------------------------


async def test_publish_reaches_subscribers_on_every_replica_and_counts_them(worlds: Worlds) -> None:
    w = worlds()
    sub0, sub1, pat1, pub = w.client(0), w.client(1), w.client(1), w.client(0)
    assert await sub0.ask(("SUBSCRIBE", "news")) == [[b"subscribe", b"news", 1]]
    assert await sub1.ask(("SUBSCRIBE", "news", "other")) == [
        [b"subscribe", b"news", 1],
        [b"subscribe", b"other", 2],
    ]
    assert await pat1.ask(("PSUBSCRIBE", "n*")) == [[b"psubscribe", b"n*", 1]]
    assert await pub.ask(("PUBLISH", "news", "hello")) == [3]
    assert sub0.replies() == [[b"message", b"news", b"hello"]]
    assert sub1.replies() == [[b"message", b"news", b"hello"]]
    assert pat1.replies() == [[b"pmessage", b"n*", b"news", b"hello"]]
    # subscribed (RESP2): only pub/sub commands
    reply = (await sub0.ask(("GET", "x")))[0]
    assert "only (P|S)SUBSCRIBE" in str(reply)
    assert await sub0.ask(("PING",)) == [[b"pong", b""]]
    # a closed subscriber stops counting
    sub1.conn.connection_lost(None)
    await w.settle()
    assert await pub.ask(("PUBLISH", "news", "again")) == [2]
    assert sub0.replies() == [[b"message", b"news", b"again"]]
    assert await sub0.ask(("UNSUBSCRIBE",)) == [[b"unsubscribe", b"news", 0]]
    assert await pub.ask(("PUBLISH", "news", "x")) == [1]


async def test_resp3_subscriber_gets_push_frames_and_may_run_commands(worlds: Worlds) -> None:
    w = worlds()
    sub, pub = w.client(1), w.client(0)
    await sub.ask(("HELLO", "3"))
    sub.transport.data.clear()
    sub.send(("SUBSCRIBE", "c"))
    await w.settle()
    assert bytes(sub.transport.data) == b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    sub.transport.data.clear()
    await pub.ask(("PUBLISH", "c", "m"))
    assert bytes(sub.transport.data) == b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"
    sub.transport.data.clear()
    assert await sub.ask(("GET", "nothing")) == [None]


async def test_a_new_server_drops_its_replicas_stale_subscriptions(worlds: Worlds) -> None:
    w = worlds(start=False)  # no KV server yet: the state is a previous incarnation's
    stale = (5 << 10) | 1  # a client id a previous incarnation of replica 1 held
    r0, r1 = w.replicas
    await r1.submit(Commands.run, [[b"SUBSCRIBE", b"%d" % stale, b"ch"]])
    await r1.submit(Commands.run, [[b"WATCH", b"%d" % stale, b"k"]])
    assert await r0.submit(Commands.run, [[b"PUBLISH", b"ch", b"x"]]) == [1]
    w.start()  # the service's start hook makes each replica's server, as serve() does
    c = w.client(1)
    await w.settle()
    assert r0.component(PubSub).by_client == {}
    assert r0.component("transactions").watches == {}
    assert c.conn.id == (6 << 10) | 1  # numbered past the previous incarnation's clients


# --- flow control --------------------------------------------------------------------------


async def test_a_full_log_delays_appends_in_order_and_pauses_reading(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    await w.fill()  # a spare log line holds the log, no-ops fill it
    core = w.replicas[0].core
    refused = core.append_refusals
    c.send(("SET", "a", "1"), ("GET", "a"))
    c.send(("PING",), ("INCR", "a"))
    for i in range(MAX_IN_FLIGHT):  # the log stays full: entries pile up, bounded
        c.send(("SET", "b", i))
    assert not c.transport.reading
    # The group commit tries again after each back-off, and the log refuses it.
    await w.run_until(lambda: core.append_refusals >= refused + 5, "refused 5 times")
    assert core.group  # still queued, in order
    assert c.replies() == []
    w.unfill()  # room again: the next back-off try appends the group
    await w.settle()
    assert not c.conn.delayed
    assert not c.conn.pending
    replies = c.replies()
    assert replies[:4] == [b"OK", b"1", b"PONG", 2]
    assert replies[4:] == [b"OK"] * MAX_IN_FLIGHT
    assert c.transport.reading


async def test_many_entries_in_flight_pause_reading(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    for i in range(MAX_IN_FLIGHT + 2):
        c.send(("SET", "k", i), ("ECHO", "x"))
    # is_reading(), not .reading: mypy would keep `not reading` narrowed across the await
    assert not c.transport.is_reading()
    await w.settle()
    assert c.transport.is_reading()
    assert len(c.replies()) == 2 * (MAX_IN_FLIGHT + 2)


async def test_a_full_write_buffer_pauses_reading(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    c.conn.pause_writing()
    assert not c.transport.reading
    c.conn.resume_writing()
    assert c.transport.reading


async def test_a_batch_too_big_for_one_entry_is_split_and_a_huge_command_refused(
    worlds: Worlds,
) -> None:
    # About 900 bytes per entry in the ring; entries up to 2 KB go to blob
    # files (the runtime's limit is 1 GiB): a 40-command batch is split twice.
    w = worlds(slot_size=256, max_entry_slots=4, blob_max_bytes=2048)
    c = w.client(0)
    value = "v" * 100
    replies = await c.ask(*[("SET", f"k{i}", value) for i in range(40)], ("DBSIZE",))
    assert replies == [b"OK"] * 40 + [40]
    assert w.replicas[0].core.blobs_appended > 0  # parts over the ring's limit
    replies = await c.ask(("SET", "big", "x" * 5000), ("GET", "k1"))
    assert str(replies[0]).startswith("ERR request too large for the log")
    assert replies[1] == value.encode()


@pytest.mark.parametrize("chunk", [1, 7, 64])
async def test_replies_are_identical_however_the_bytes_are_chunked(
    chunk: int, worlds: Worlds
) -> None:
    w = worlds()
    c = w.client(0)
    data = (
        b"".join(
            pack(*cmd)
            for cmd in [("SET", "a", "1"), ("GET", "a"), ("RPUSH", "l", "x" * 200), ("LLEN", "l")]
        )
        + b"PING\r\n"
    )
    for i in range(0, len(data), chunk):
        c.send(data[i : i + chunk])
    await w.settle()
    assert c.replies() == [b"OK", b"1", 1, 1, b"PONG"]


async def test_info_has_a_dominoes_section(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(1)
    info = (await c.ask(("INFO", "dominoes")))[0].decode()
    assert info.startswith("# Dominoes\r\n")
    assert "replica_index:1\r\n" in info
    assert "applied_seq:" in info
    assert "lag:" in info
    full = (await c.ask(("INFO",)))[0].decode()
    assert "# Server" in full
    assert "# Keyspace" in full


async def test_client_and_command_and_config(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(
        ("CLIENT", "SETNAME", "worker-1"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "ID"),
        ("CLIENT", "SETINFO", "LIB-NAME", "redis-py"),
        ("CLIENT", "SETNAME", "bad name"),
        ("CLIENT", "NOPE"),
        ("COMMAND", "COUNT"),
        ("COMMAND", "DOCS"),
        ("COMMAND", "INFO", "get"),
        ("SELECT", "0"),
        ("SELECT", "1"),
        ("CONFIG", "GET", "save"),
    )
    assert replies[:2] == [b"OK", b"worker-1"]
    assert replies[2] == c.conn.id
    assert replies[3] == b"OK"
    assert str(replies[4]).startswith("ERR Client names cannot contain spaces")
    assert str(replies[5]) == "ERR unknown subcommand 'NOPE'. Try CLIENT HELP."
    assert replies[6] == len(TABLE)
    assert replies[7] == []
    assert replies[8][0][:2] == [b"get", 2]
    assert replies[9] == b"OK"
    assert str(replies[10]) == "ERR DB index is out of range"
    assert replies[11] == [b"save", b""]
