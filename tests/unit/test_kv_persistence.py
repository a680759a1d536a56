"""The KV's persistence commands in process: SAVE, BGSAVE, LASTSAVE, INFO, CONFIG, MISCONF.

The in-memory log is never durable, so these check the replies of a service
without ``--durable`` as they are, and the durable-only paths by putting a
replica in the state the runtime reports: a writer that cannot write (its
error word set, as the log writer sets it on a full disk), or a snapshot in
progress.  ``tests/integration/test_kv_persistence.py`` runs real snapshots.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hiredis
import pytest
from dominoes.components.kv._server import Server

from dominoes import DurabilityError
from dominoes._core._layout import D_ACKED, D_ERROR

from .kv_world import World, Worlds

NOT_DURABLE = (
    "ERR persistence is off: run the service with --durable DIR, or with --log nats://... "
    "(snapshots go to the stream's Object Store)"
)
FULL = "MISCONF Errors writing to the AOF file: No space left on device"


@pytest.fixture
async def worlds() -> AsyncIterator[Worlds]:
    async with Worlds() as made:
        yield made


def server(w: World, replica: int = 0) -> Server:
    return next(s for s in w.servers() if s.index == replica)


def error(reply: Any) -> str:
    assert isinstance(reply, hiredis.ReplyError), reply
    return str(reply)


def info(text: bytes) -> dict[str, str]:
    fields = {}
    for line in text.decode().split("\r\n"):
        if line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key] = value
    return fields


# --- a service that is not durable ----------------------------------------------------------


async def test_save_and_bgsave_say_persistence_is_off(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("SAVE",), ("BGSAVE",), ("BGSAVE", "SCHEDULE"), ("bgsave", "schedule"))
    assert [error(r) for r in replies] == [NOT_DURABLE] * 4


async def test_arity_and_syntax_errors_are_redis_7s(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(
        ("SAVE", "x"), ("LASTSAVE", "x"), ("BGSAVE", "x"), ("BGSAVE", "SCHEDULE", "x")
    )
    assert [error(r) for r in replies] == [
        "ERR wrong number of arguments for 'save' command",
        "ERR wrong number of arguments for 'lastsave' command",
        "ERR syntax error",
        "ERR syntax error",
    ]


async def test_persistence_commands_are_refused_inside_multi(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("MULTI",), ("SAVE",), ("LASTSAVE",), ("EXEC",))
    assert replies[0] == b"OK"
    assert error(replies[1]) == "ERR Command not allowed inside a transaction"
    assert error(replies[2]) == "ERR Command not allowed inside a transaction"
    assert error(replies[3]).startswith("EXECABORT")


async def test_lastsave_is_the_replicas_start_without_a_snapshot(worlds: Worlds) -> None:
    w = worlds()
    c0, c1 = w.client(0), w.client(1)
    assert await c0.ask(("LASTSAVE",)) == [int(server(w, 0).started)]
    assert await c1.ask(("LASTSAVE",)) == [int(server(w, 1).started)]


async def test_lastsave_keeps_its_place_behind_the_connections_writes(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    replies = await c.ask(("SET", "k", "v"), ("LASTSAVE",), ("GET", "k"), ("SAVE",))
    assert replies[:3] == [b"OK", int(server(w).started), b"v"]
    assert error(replies[3]) == NOT_DURABLE


async def test_info_persistence_without_durability(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    [text] = await c.ask(("INFO", "persistence"))
    assert text.startswith(b"# Persistence\r\n")
    fields = info(text)
    assert fields["loading"] == "0"
    assert fields["async_loading"] == "0"
    assert fields["aof_enabled"] == "0"
    assert fields["rdb_bgsave_in_progress"] == "0"
    assert fields["rdb_last_bgsave_status"] == "ok"
    assert fields["aof_last_write_status"] == "ok"
    assert fields["rdb_saves"] == "0"
    assert fields["rdb_last_save_time"] == str(int(server(w).started))
    assert fields["dominoes_fsync"] == ""
    assert "aof_current_size" not in fields  # Redis prints it only with the AOF on
    [default] = await c.ask(("INFO",))
    assert b"# Persistence\r\n" in default
    [other] = await c.ask(("INFO", "dominoes"))
    assert b"# Persistence" not in other


async def test_config_get_gives_redis_defaults_without_durability(worlds: Worlds) -> None:
    w = worlds()
    c = w.client(0)
    [found] = await c.ask(("CONFIG", "GET", "append*"))
    assert dict(zip(found[::2], found[1::2], strict=True)) == {
        b"appendonly": b"no",
        b"appendfsync": b"everysec",
    }
    [found] = await c.ask(("CONFIG", "GET", "dir", "save"))
    assert dict(zip(found[::2], found[1::2], strict=True)) == {
        b"dir": os.getcwd().encode(),
        b"save": b"",
    }


@pytest.mark.parametrize(
    ("name", "option"),
    [("appendfsync", "--fsync"), ("appendonly", "--durable DIR"), ("save", "--snapshot-every")],
)
async def test_config_set_of_persistence_says_it_is_a_command_line_option(
    worlds: Worlds, name: str, option: str
) -> None:
    w = worlds()
    c = w.client(0)
    [reply] = await c.ask(("CONFIG", "SET", name, "no"))
    assert error(reply) == (
        f"ERR CONFIG SET failed (possibly related to argument '{name}') - it is set on the "
        f"command line: dominoes run ... {option}"
    )


# --- a durable log that cannot write: MISCONF ---------------------------------------------


@pytest.fixture
def full_disk() -> Iterator[Any]:
    """``full_disk(world)``: its writer cannot write (ENOSPC) until ``world`` is ``healed``."""
    made: list[World] = []

    def fail(w: World) -> None:
        for r in w.replicas:
            r.persist.active = True  # as with --durable (no writer: replies are never held)
        w.log.set_durability_word(D_ACKED, 2**62)  # everything is acknowledged at once
        w.log.set_durability_word(D_ERROR, errno.ENOSPC)
        made.append(w)

    yield fail
    for w in made:
        heal(w)


def heal(w: World) -> None:
    w.log.set_durability_word(D_ERROR, 0)


async def test_writes_answer_misconf_and_reads_go_on(worlds: Worlds, full_disk: Any) -> None:
    w = worlds()
    c = w.client(0)
    assert await c.ask(("SET", "k", "before")) == [b"OK"]
    full_disk(w)
    replies = await c.ask(
        ("GET", "k"),  # alone: local
        ("SET", "k", "after"),
        ("GET", "k"),  # pipelined behind the refused write: runs here in its turn
        ("INCR", "n"),
        ("MGET", "k", "n"),
    )
    assert replies[0] == b"before"
    assert error(replies[1]) == FULL
    assert replies[2] == b"before"
    assert error(replies[3]) == FULL
    assert replies[4] == [b"before", None]
    # on the other replica too, and for a transaction as a whole
    other = w.client(1)
    replies = await other.ask(("GET", "k"), ("MULTI",), ("SET", "k", "x"), ("EXEC",))
    assert replies[:3] == [b"before", b"OK", b"QUEUED"]
    assert error(replies[3]) == FULL
    heal(w)
    assert await c.ask(("SET", "k", "after"), ("GET", "k")) == [b"OK", b"after"]
    assert await other.ask(("GET", "k")) == [b"after"]
    await w.assert_converged()


async def test_ping_answers_misconf_while_the_log_cannot_be_written(
    worlds: Worlds, full_disk: Any
) -> None:
    w = worlds()
    c = w.client(0)
    full_disk(w)
    [reply] = await c.ask(("PING",))
    assert error(reply) == FULL  # as Redis 7: a health check sees that writes fail
    heal(w)
    assert await c.ask(("PING",)) == [b"PONG"]


async def test_a_refused_batchs_read_sees_the_connections_earlier_write(
    worlds: Worlds, full_disk: Any
) -> None:
    w = worlds()
    c = w.client(0)
    await w.settle()
    srv = server(w)
    with w.holding(0):  # replica 0 applies nothing until the block ends
        c.send(("SET", "k", "mine"))
        await w.run_until(lambda: not srv._group and not srv._group_scheduled, "appended")
        full_disk(w)  # the SET is in the log; the next batch is refused
        c.send(("SET", "other", "1"), ("GET", "k"))
        assert c.replies() == []  # both wait for the SET's entry
    await w.settle()
    replies = c.replies()
    assert replies[0] == b"OK"
    assert error(replies[1]) == FULL
    assert replies[2] == b"mine"


async def test_a_refused_batchs_read_sees_a_write_acknowledged_on_the_other_replica(
    worlds: Worlds, full_disk: Any
) -> None:
    """Invariant 8 on the refused path: the read of a refused batch runs on the
    local state, which must first catch up to what the other replica acknowledged."""
    w = worlds()
    a, b = w.client(0), w.client(1)
    await w.settle()
    with w.holding(1) as r1:
        a.send(("SET", "k", "v"))
        await w.run_until(lambda: bool(a.transport.data), "replica 0 acknowledged")
        assert a.replies() == [b"OK"]
        assert r1.core.machine.cursor < w.log.tail  # behind: the read must catch up
        full_disk(w)
        b.send(("SET", "x", "1"), ("GET", "k"))
        await w.run_until(lambda: bool(b.transport.data), "replica 1 answered")
        replies = b.replies()
        assert error(replies[0]) == FULL
        assert replies[1] == b"v"
    await w.assert_converged()


async def test_info_persistence_shows_the_write_error(worlds: Worlds, full_disk: Any) -> None:
    w = worlds()
    c = w.client(0)
    full_disk(w)
    [text] = await c.ask(("INFO", "persistence"))
    fields = info(text)
    assert fields["aof_enabled"] == "1"
    assert fields["aof_last_write_status"] == "err"
    assert fields["dominoes_write_error"] == "No space left on device"
    heal(w)
    [text] = await c.ask(("INFO", "persistence"))
    assert info(text)["aof_last_write_status"] == "ok"


# --- SAVE and BGSAVE in their turn, and while a snapshot is being written ----------------


async def test_save_starts_after_the_connections_earlier_writes_are_applied(
    worlds: Worlds,
) -> None:
    w = worlds()
    c = w.client(0)
    await w.settle()
    srv = server(w)
    seen: list[object] = []
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def save() -> asyncio.Future[Any]:  # stands in for the snapshot: what would it hold?
        seen.append(srv.local_data("keyspace")[0].values.get(b"k"))
        return reply

    srv.saves.save = save  # type: ignore[method-assign]
    with w.holding(0):
        c.send(("SET", "k", "v"), ("SAVE",), ("GET", "k"))
        await w.run_until(lambda: not srv._group and not srv._group_scheduled, "appended")
        assert seen == []  # the SET is not applied here yet: the snapshot waits
    await w.settle()
    assert seen == [b"v"]
    assert c.replies() == [b"OK"]  # SAVE's reply waits for the snapshot, GET's behind it
    reply.set_result(b"OK")
    await w.settle()
    assert c.replies() == [b"OK", b"v"]


async def test_save_and_bgsave_while_a_snapshot_is_being_written(
    worlds: Worlds, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = worlds()
    c = w.client(0)
    persist = w.replicas[0].persist
    running: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    status = persist.status

    def in_progress() -> dict[str, Any]:  # a scheduled snapshot is being written
        return {**status(), "snapshot_in_progress": not running.done()}

    def snapshot() -> asyncio.Future[Any]:  # Persistence.snapshot: the running one's future
        assert not running.done(), "a snapshot was started while none was asked for"
        return running

    monkeypatch.setattr(persist, "active", True)
    monkeypatch.setattr(persist, "status", in_progress)
    monkeypatch.setattr(persist, "snapshot", snapshot)
    replies = await c.ask(("SAVE",), ("BGSAVE",), ("BGSAVE", "SCHEDULE"))
    assert [error(r) for r in replies] == ["ERR Background save already in progress"] * 3
    [text] = await c.ask(("INFO", "persistence"))
    assert info(text)["rdb_bgsave_in_progress"] == "1"
    running.set_exception(DurabilityError("the snapshot at seq 7 failed"))
    await w.settle()
    [text] = await c.ask(("INFO", "persistence"))
    fields = info(text)
    assert fields["rdb_bgsave_in_progress"] == "0"
    assert fields["rdb_last_bgsave_status"] == "err"  # learnt although no client asked for it
