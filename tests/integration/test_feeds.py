"""``ctx.publish`` and ``State``: one runtime replica in-process, over a shared-memory log.

The multi-replica, multi-process behaviour (every subscriber on every replica
gets each event once) is in test_asgi.py; here: what a subscription yields,
when it ends, a slow subscriber, and the ``State`` handle's own rules.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import dominoes
from dominoes import Component, Context, Replica, Service, SlowSubscriberError, query, update
from dominoes._runtime._shm import SharedLog
from dominoes._runtime._state import State, bind_process, current_var
from dominoes._runtime._wakeups import EventfdWakeups

pytestmark = pytest.mark.integration


class Board(Component):
    def __init__(self) -> None:
        self.posts: list[str] = []

    @update
    def post(self, ctx: Context, text: str) -> int:
        self.posts.append(text)
        ctx.publish("board", {"text": text, "n": len(self.posts)})
        if text == "boom":
            raise ValueError("boom is not a post")
        return len(self.posts)

    @update
    def twice(self, ctx: Context, text: str) -> None:
        ctx.publish("board", text)
        ctx.publish("other", text.upper())

    @query
    def count(self) -> int:
        return len(self.posts)


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[State]:
    shared = SharedLog.create("board", capacity=64, slot_size=256, max_replicas=2)
    log = shared.log()
    log.join(0, cursor=1)
    log.set_live(0)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    r = Replica(
        Service("board", [Board()]), 0, log, EventfdWakeups([efd]), replicas=1, run_dir=tmp_path
    )
    r.attach(asyncio.get_running_loop())
    r.start_fresh()
    try:
        yield State(r)
    finally:
        r.close()
        shared.close()
        os.close(efd)


async def test_subscribers_get_what_entries_publish_in_log_order(state: State) -> None:
    with state.subscribe("board") as a, state.subscribe("board", "other") as b:
        assert await state.call(Board.post, "hello") == 1
        await state.call(Board.twice, "x")
        assert await state.call(Board.post, "bye") == 2
        assert [await anext(a) for _ in range(3)] == [
            {"text": "hello", "n": 1},
            "x",
            {"text": "bye", "n": 2},
        ]
        got = [await anext(b) for _ in range(4)]
        assert got == [{"text": "hello", "n": 1}, "x", "X", {"text": "bye", "n": 2}]
        assert a.pending() == b.pending() == 0


async def test_a_message_arrives_after_its_write_is_applied(state: State) -> None:
    with state.subscribe("board") as sub:
        waiter = asyncio.ensure_future(anext(sub))
        await state.call(Board.post, "one")
        message = await waiter
        # the subscriber reads the state the write produced
        assert state.query(Board.count) == message["n"] == 1


async def test_an_entry_whose_handler_raised_publishes_nothing(state: State) -> None:
    with state.subscribe("board") as sub:
        with pytest.raises(ValueError, match="boom"):
            await state.call(Board.post, "boom")
        await state.call(Board.post, "fine")
        assert (await anext(sub))["text"] == "fine"
        assert sub.pending() == 0


async def test_publish_goes_through_the_log_without_a_state_change(state: State) -> None:
    with state.subscribe("news") as sub:
        await state.publish("news", ["a", 1])
        await state.publish("news", ["b", 2])
        assert [await anext(sub), await anext(sub)] == [["a", 1], ["b", 2]]
    assert state.query(Board.count) == 0
    assert "dominoes.publish" not in state.replica.service.events()


async def test_a_closed_subscription_ends_after_its_buffered_messages(state: State) -> None:
    sub = state.subscribe("board")
    await state.call(Board.post, "kept")
    sub.close()
    await state.call(Board.post, "after close")
    assert [m["text"] async for m in sub] == ["kept"]
    assert state.replica.feeds.subscribers("board") == 0


async def test_stopping_the_feeds_ends_every_stream(state: State) -> None:
    sub = state.subscribe("board")
    reader = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    state.replica.feeds.close()
    with pytest.raises(StopAsyncIteration):
        await reader
    late = state.subscribe("board")  # the replica is stopping: an empty stream
    assert [m async for m in late] == []


async def test_a_slow_subscriber_is_dropped_and_told(state: State) -> None:
    slow = state.subscribe("board", maxsize=3)
    fast = state.subscribe("board")
    for i in range(5):
        await state.call(Board.post, f"p{i}")
    with pytest.raises(SlowSubscriberError, match="more than 3 messages behind"):
        await anext(slow)
    assert [(await anext(fast))["text"] for _ in range(5)] == [f"p{i}" for i in range(5)]
    assert state.replica.feeds.subscribers("board") == 1
    fast.close()


async def test_subscribe_rejects_bad_arguments(state: State) -> None:
    with pytest.raises(ValueError, match="at least one topic"):
        state.subscribe()
    with pytest.raises(TypeError, match="a topic is a str"):
        state.subscribe(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        state.subscribe("t", maxsize=0)


async def test_query_from_another_thread_is_refused(state: State) -> None:
    errors: list[BaseException] = []

    def from_thread() -> None:
        try:
            state.query(Board.count)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "another thread" in str(errors[0])


async def test_current_is_the_request_state_then_the_process_one(state: State) -> None:
    bind_process(None)
    with pytest.raises(RuntimeError, match="outside a dominoes replica"):
        dominoes.current()
    bind_process(state)
    try:
        assert dominoes.current() is state
        other = state.using(mode="every")
        token = current_var.set(other)
        assert dominoes.current() is other
        current_var.reset(token)
    finally:
        bind_process(None)


async def test_using_sets_mode_and_idempotency_key(state: State) -> None:
    keyed = state.using(request_id="order-1")
    assert await keyed.call(Board.post, "once") == 1
    assert await keyed.call(Board.post, "once") == 1  # the same key: applied once
    assert state.query(Board.count) == 1
    every = state.using(mode="every")
    assert await every.call(Board.post, "everywhere") == 2
    with pytest.raises(ValueError, match="mode must be"):
        state.using(mode="sometimes")
