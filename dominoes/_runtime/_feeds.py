"""Feeds: pub/sub across cores with no broker.

An update handler calls ``ctx.publish(topic, message)``.  Every replica applies
the entry, and each delivers the message to the subscribers connected to *it*
(an ``every``-mode effect): a WebSocket or server-sent-event stream on any
replica gets every message once, in log order, right after its replica
applied the write that published it.  No replica forwards anything to
another: the log already carries the entry to all of them.

Subscriptions are local to a replica (transient, never replicated): a
subscriber lives as long as its connection.  Each has a bounded buffer; one
that falls ``maxsize`` messages behind is dropped with
:class:`SlowSubscriberError`, as Redis disconnects a pub/sub client past its
output buffer limit, so a stalled client never holds a replica's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Final

from .._core._errors import DominoesError

__all__ = ("DEFAULT_MAXSIZE", "Feeds", "SlowSubscriberError", "Subscription")

#: Messages a subscriber may fall behind before it is dropped.
DEFAULT_MAXSIZE: Final = 1024


class SlowSubscriberError(DominoesError):
    """A subscriber fell too far behind its topic and was dropped (messages were lost)."""


class Subscription(AsyncIterator[Any]):
    """This replica's subscription to some topics: ``async for message in sub``.

    Iteration ends when the subscription is closed (``close()``, leaving its
    ``with`` block, or the replica stopping); it raises
    :class:`SlowSubscriberError` if the subscriber fell more than ``maxsize``
    messages behind.
    """

    __slots__ = ("_buffer", "_closed", "_feeds", "_overflowed", "_waiter", "maxsize", "topics")

    def __init__(self, feeds: Feeds, topics: tuple[str, ...], maxsize: int) -> None:
        self._feeds = feeds
        self.topics = topics
        self.maxsize = maxsize
        self._buffer: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """Messages delivered and not read yet."""
        return len(self._buffer)

    def get_nowait(self) -> Any:
        """The next message if one is buffered; raises ``LookupError`` otherwise."""
        if self._buffer:
            return self._buffer.popleft()
        self._raise_if_over()
        raise LookupError("no message is buffered")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        buffer = self._buffer
        while not buffer:
            self._raise_if_over()
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return buffer.popleft()

    def _raise_if_over(self) -> None:
        if self._overflowed:
            raise SlowSubscriberError(
                f"the subscriber to {', '.join(self.topics)} fell more than "
                f"{self.maxsize} messages behind and was dropped"
            )

    def _put(self, message: Any) -> None:
        if len(self._buffer) >= self.maxsize:
            self._buffer.clear()
            self._overflowed = True
            self.close()
            return
        self._buffer.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Unsubscribe; a pending ``async for`` ends after the buffered messages."""
        if self._closed:
            return
        self._closed = True
        self._feeds._remove(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._buffer)} pending"
        return f"<Subscription {', '.join(self.topics)} ({state})>"


class Feeds:
    """One replica's subscribers by topic, and the delivery of what entries published."""

    def __init__(self) -> None:
        self._topics: dict[str, list[Subscription]] = {}
        self.delivered = 0
        self.dropped = 0
        self.closed = False

    def subscribe(self, topics: Iterable[str], maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        names = tuple(dict.fromkeys(topics))
        if not names:
            raise ValueError("subscribe to at least one topic")
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"a topic is a str, not {type(name).__name__}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        sub = Subscription(self, names, maxsize)
        if self.closed:  # the replica is stopping: an iteration that ends at once
            sub._closed = True
            return sub
        for name in names:
            self._topics.setdefault(name, []).append(sub)
        return sub

    def subscribers(self, topic: str) -> int:
        """How many subscribers ``topic`` has on this replica."""
        return len(self._topics.get(topic, ()))

    def deliver(self, published: list[tuple[str, Any]]) -> None:
        """Give each ``(topic, message)`` an entry published to this replica's subscribers."""
        topics = self._topics
        for topic, message in published:
            subs = topics.get(topic)
            if subs:
                for sub in tuple(subs):
                    sub._put(message)
                    if sub._overflowed:
                        self.dropped += 1
                    else:
                        self.delivered += 1

    def _remove(self, sub: Subscription) -> None:
        for name in sub.topics:
            subs = self._topics.get(name)
            if subs is not None:
                with contextlib.suppress(ValueError):
                    subs.remove(sub)
                if not subs:
                    del self._topics[name]

    def close(self) -> None:
        """End every subscription (the replica is stopping): their streams finish."""
        self.closed = True
        for subs in list(self._topics.values()):
            for sub in tuple(subs):
                sub.close()
        self._topics.clear()

    def statistics(self) -> dict[str, int]:
        return {
            "topics": len(self._topics),
            "subscriptions": len({id(s) for subs in self._topics.values() for s in subs}),
            "delivered": self.delivered,
            "dropped": self.dropped,
        }
