"""Pub/sub: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH across replicas.

Who is subscribed to what is *replicated* state, so every replica knows every
subscriber and PUBLISH can answer the total number of receivers, computed in
the entry's apply, identically everywhere.  A subscriber is named by its
client id, ``(counter << 10) | replica``: the low bits say which replica holds
the connection.  The connections themselves are local: ``local`` (transient)
maps this replica's client ids to their connections.

PUBLISH is appended with ``every`` ownership: every replica applies it as the
owner, and its effect delivers the message to *that replica's own*
subscribers.  The receivers are chosen in the apply, so a client that
subscribes after the PUBLISH's position never gets the message.

A replica that dies takes its connections with it, but their subscriptions
stay in the replicated state.  So a replica, as soon as it is live (the
service's ``on_start`` hook, after a restart's catch-up too), numbers its
clients past every id its previous incarnations left
(``Commands.first_counter``) and appends ``Commands.clients_gone``, which
drops those older ids' subscriptions.  Between the death and the restarted
replica going live, PUBLISH still counts the dead replica's subscribers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from dominoes import Component, Context, on, update

from ._commands import REPLICA_BITS, ClientState, Commands, replica_of
from ._glob import stringmatch
from ._resp import Frames, Push
from ._table import command

__all__ = ("PubSub", "Subscriber")


class Subscriber(Protocol):
    def push(self, value: Any) -> None:
        """Send a message (a :class:`Push` frame) in order with the connection's replies."""


class PubSub(Component, ClientState):
    """Subscriptions (replicated) and message delivery (an effect on every replica)."""

    name = "pubsub"
    transient: ClassVar[tuple[str, ...]] = ("local",)

    def __init__(self) -> None:
        #: channel -> subscribed client ids; pattern -> client ids
        self.channels: dict[bytes, set[int]] = {}
        self.patterns: dict[bytes, set[int]] = {}
        #: client id -> its channels; client id -> its patterns
        self.by_client: dict[int, set[bytes]] = {}
        self.pby_client: dict[int, set[bytes]] = {}
        #: this replica's subscribers by client id (set by the server)
        self.local: dict[int, Subscriber] = {}

    def _count(self, cid: int) -> int:
        return len(self.by_client.get(cid, ())) + len(self.pby_client.get(cid, ()))

    def _add(self, index: dict[bytes, set[int]], mine: dict[int, set[bytes]], cid: int,
             name: bytes) -> None:  # fmt: skip
        index.setdefault(name, set()).add(cid)
        mine.setdefault(cid, set()).add(name)

    def _drop(self, index: dict[bytes, set[int]], mine: dict[int, set[bytes]], cid: int,
              name: bytes) -> bool:  # fmt: skip
        names = mine.get(cid)
        if names is None or name not in names:
            return False
        names.discard(name)
        if not names:
            del mine[cid]
        ids = index[name]
        ids.discard(cid)
        if not ids:
            del index[name]
        return True

    def _tables(self, pattern: bool) -> tuple[dict[bytes, set[int]], dict[int, set[bytes]]]:
        """The name -> clients index and the client -> names map, for patterns or channels."""
        if pattern:
            return self.patterns, self.pby_client
        return self.channels, self.by_client

    # --- commands (the connection puts its client id in args[1]) ---------------------------

    @command("SUBSCRIBE", -2, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("PSUBSCRIBE", -2, write=True, flags=("pubsub", "client-id", "no-multi"))
    def subscribe(self, ctx: Context, args: list[bytes]) -> Frames:
        cid = int(args[1])
        pattern = args[0] == b"PSUBSCRIBE"
        index, mine = self._tables(pattern)
        kind = b"psubscribe" if pattern else b"subscribe"
        out = Frames()
        for name in args[2:]:
            self._add(index, mine, cid, name)
            out.append(Push([kind, name, self._count(cid)]))
        return out

    @command("UNSUBSCRIBE", -1, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("PUNSUBSCRIBE", -1, write=True, flags=("pubsub", "client-id", "no-multi"))
    def unsubscribe(self, ctx: Context, args: list[bytes]) -> Frames:
        cid = int(args[1])
        pattern = args[0] == b"PUNSUBSCRIBE"
        index, mine = self._tables(pattern)
        kind = b"punsubscribe" if pattern else b"unsubscribe"
        names = args[2:] or sorted(mine.get(cid, ()))
        out = Frames()
        for name in names:
            self._drop(index, mine, cid, name)
            out.append(Push([kind, name, self._count(cid)]))
        if not out:
            out.append(Push([kind, None, self._count(cid)]))
        return out

    @command("PUBLISH", 3, write=True, flags=("pubsub-publish", "broadcast", "fast"))
    def publish(self, ctx: Context, args: list[bytes]) -> int:
        channel, message = args[1], args[2]
        here = ctx.replica  # only to pick this replica's own receivers for its effect
        receivers = 0
        targets: list[Any] = []
        ids = self.channels.get(channel)
        if ids:
            receivers += len(ids)
            targets += [(cid, None) for cid in ids if replica_of(cid) == here]
        for pattern, pids in self.patterns.items():
            if stringmatch(pattern, channel):
                receivers += len(pids)
                targets += [(cid, pattern) for cid in pids if replica_of(cid) == here]
        if targets:
            ctx.effect(self._deliver, channel, message, targets)
        return receivers

    def _deliver(self, channel: bytes, message: bytes, targets: list[Any]) -> None:
        local = self.local
        for cid, pattern in targets:
            conn = local.get(cid)
            if conn is None:
                continue
            if pattern is None:
                conn.push(Push([b"message", channel, message]))
            else:
                conn.push(Push([b"pmessage", pattern, channel, message]))

    # --- membership ------------------------------------------------------------------------

    @update
    def disconnect(self, ctx: Context, cid: int) -> None:
        """A subscribed connection closed: drop its subscriptions."""
        for name in list(self.by_client.get(cid, ())):
            self._drop(self.channels, self.by_client, cid, name)
        for name in list(self.pby_client.get(cid, ())):
            self._drop(self.patterns, self.pby_client, cid, name)

    def highest_client(self, replica: int) -> int:
        ids = (*self.by_client, *self.pby_client)
        return max((c >> REPLICA_BITS for c in ids if replica_of(c) == replica), default=0)

    @on(Commands.clients_gone)
    def _gone(self, ctx: Context, replica: int, below: int) -> None:
        ids = {*self.by_client, *self.pby_client}
        for cid in sorted(ids):
            if replica_of(cid) == replica and cid >> REPLICA_BITS < below:
                self.disconnect(ctx, cid)

    # --- snapshots -------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.channels = {k: set(v) for k, v in state["channels"].items()}
        self.patterns = {k: set(v) for k, v in state["patterns"].items()}
        self.by_client = {int(k): set(v) for k, v in state["by_client"].items()}
        self.pby_client = {int(k): set(v) for k, v in state["pby_client"].items()}
