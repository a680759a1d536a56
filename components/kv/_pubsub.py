"""Pub/sub: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH across replicas.

Shard channels (SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH) are Redis 7's cluster
pub/sub; the service is one shard, so they behave as a standalone Redis's do:
a namespace of their own, counted apart (an ``ssubscribe`` reply counts the
client's shard channels only), delivered as ``smessage``.  PUBSUB CHANNELS,
NUMSUB, NUMPAT, SHARDCHANNELS and SHARDNUMSUB read the replicated tables, so
they count the subscribers of every replica.

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
from ._errors import KvError, arity_error
from ._glob import stringmatch
from ._resp import Frames, Push, Status
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
        #: shard channel -> client ids; client id -> its shard channels
        self.shards: dict[bytes, set[int]] = {}
        self.sby_client: dict[int, set[bytes]] = {}
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

    def _tables(
        self, pattern: bool, shard: bool = False
    ) -> tuple[dict[bytes, set[int]], dict[int, set[bytes]]]:
        """The name -> clients index and the client -> names map: patterns, shard
        channels or channels."""
        if shard:
            return self.shards, self.sby_client
        if pattern:
            return self.patterns, self.pby_client
        return self.channels, self.by_client

    # --- commands (the connection puts its client id in args[1]) ---------------------------

    @command("SUBSCRIBE", -2, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("PSUBSCRIBE", -2, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("SSUBSCRIBE", -2, write=True, flags=("pubsub", "client-id", "no-multi"))
    def subscribe(self, ctx: Context, args: list[bytes]) -> Frames:
        cid = int(args[1])
        shard = args[0] == b"SSUBSCRIBE"
        index, mine = self._tables(args[0] == b"PSUBSCRIBE", shard)
        kind = args[0].lower()
        out = Frames()
        for name in args[2:]:
            self._add(index, mine, cid, name)
            count = len(mine[cid]) if shard else self._count(cid)
            out.append(Push([kind, name, count]))
        return out

    @command("UNSUBSCRIBE", -1, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("PUNSUBSCRIBE", -1, write=True, flags=("pubsub", "client-id", "no-multi"))
    @command("SUNSUBSCRIBE", -1, write=True, flags=("pubsub", "client-id", "no-multi"))
    def unsubscribe(self, ctx: Context, args: list[bytes]) -> Frames:
        cid = int(args[1])
        shard = args[0] == b"SUNSUBSCRIBE"
        index, mine = self._tables(args[0] == b"PUNSUBSCRIBE", shard)
        kind = args[0].lower()
        names = args[2:] or sorted(mine.get(cid, ()))
        out = Frames()
        for name in names:
            self._drop(index, mine, cid, name)
            count = len(mine.get(cid, ())) if shard else self._count(cid)
            out.append(Push([kind, name, count]))
        if not out:
            count = len(mine.get(cid, ())) if shard else self._count(cid)
            out.append(Push([kind, None, count]))
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

    @command("SPUBLISH", 3, write=True, flags=("pubsub-publish", "broadcast", "fast"))
    def spublish(self, ctx: Context, args: list[bytes]) -> int:
        channel, message = args[1], args[2]
        ids = self.shards.get(channel)
        if not ids:
            return 0
        here = ctx.replica
        targets: list[Any] = [(cid, True) for cid in ids if replica_of(cid) == here]
        if targets:
            ctx.effect(self._deliver, channel, message, targets)
        return len(ids)

    def _deliver(self, channel: bytes, message: bytes, targets: list[Any]) -> None:
        local = self.local
        for cid, pattern in targets:
            conn = local.get(cid)
            if conn is None:
                continue
            if pattern is True:  # a shard channel's message
                conn.push(Push([b"smessage", channel, message]))
            elif pattern is None:
                conn.push(Push([b"message", channel, message]))
            else:
                conn.push(Push([b"pmessage", pattern, channel, message]))

    # --- PUBSUB: introspection of the replicated tables ------------------------------------

    @command("PUBSUB", -2, flags=("pubsub",))
    def pubsub(self, now: int, args: list[bytes]) -> Any:
        sub = args[1].upper()
        n = len(args)
        if sub in (b"CHANNELS", b"SHARDCHANNELS"):
            if n > 3:
                text = args[1].decode("utf-8", "replace")
                raise KvError(
                    f"ERR unknown subcommand or wrong number of arguments for '{text}'. "
                    "Try PUBSUB HELP."
                )
            index = self.channels if sub == b"CHANNELS" else self.shards
            if n == 2:
                return list(index)
            pattern = args[2]
            return [name for name in index if stringmatch(pattern, name)]
        if sub in (b"NUMSUB", b"SHARDNUMSUB"):
            index = self.channels if sub == b"NUMSUB" else self.shards
            out: list[Any] = []
            for name in args[2:]:
                out += [name, len(index.get(name, ()))]
            return out
        if sub == b"NUMPAT":
            if n != 2:
                raise arity_error(b"pubsub|numpat")
            return len(self.patterns)
        if sub == b"HELP":
            if n != 2:
                raise arity_error(b"pubsub|help")
            return [Status(line.encode()) for line in _PUBSUB_HELP]
        text = args[1].decode("utf-8", "replace")
        raise KvError(f"ERR unknown subcommand '{text}'. Try PUBSUB HELP.")

    # --- membership ------------------------------------------------------------------------

    @update
    def disconnect(self, ctx: Context, cid: int) -> None:
        """A subscribed connection closed: drop its subscriptions."""
        for name in list(self.by_client.get(cid, ())):
            self._drop(self.channels, self.by_client, cid, name)
        for name in list(self.pby_client.get(cid, ())):
            self._drop(self.patterns, self.pby_client, cid, name)
        for name in list(self.sby_client.get(cid, ())):
            self._drop(self.shards, self.sby_client, cid, name)

    def highest_client(self, replica: int) -> int:
        ids = (*self.by_client, *self.pby_client, *self.sby_client)
        return max((c >> REPLICA_BITS for c in ids if replica_of(c) == replica), default=0)

    @on(Commands.clients_gone)
    def _gone(self, ctx: Context, replica: int, below: int) -> None:
        ids = {*self.by_client, *self.pby_client, *self.sby_client}
        for cid in sorted(ids):
            if replica_of(cid) == replica and cid >> REPLICA_BITS < below:
                self.disconnect(ctx, cid)

    # --- snapshots -------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        self.channels = {k: set(v) for k, v in state["channels"].items()}
        self.patterns = {k: set(v) for k, v in state["patterns"].items()}
        self.by_client = {int(k): set(v) for k, v in state["by_client"].items()}
        self.pby_client = {int(k): set(v) for k, v in state["pby_client"].items()}
        self.shards = {k: set(v) for k, v in state.get("shards", {}).items()}
        self.sby_client = {int(k): set(v) for k, v in state.get("sby_client", {}).items()}


_PUBSUB_HELP = (
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
)
