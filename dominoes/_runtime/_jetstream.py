"""The ``nats://`` log backend: one machine's share of a log kept by NATS JetStream.

``dominoes run SERVICE --log nats://HOST:4222[,HOST2:4222] --stream NAME``
runs the service's replicas on this machine against a log that replicas on
other machines share.  The shape (``docs/design/jetstream.md``):

* the JetStream stream is the log: its order is the one total order;
* on each machine, two rings in shared memory, made here:

  - the **outbox**, where this machine's replicas append.  Only the bridge
    holds it: it sends what is published there to the stream, in batches;
  - the **ring**, this machine's copy of the stream.  Only the bridge
    appends to it (each entry ``KIND_STAMPED`` with its origin machine and
    outbox seq), and the replicas apply from it as from an ``shm`` log;

* the bridge (``_bridge``) is a process of its own, started by the supervisor.

:class:`BridgedLog` is a replica's handle: appends go to the outbox, every
other call to the ring.  So ``ReplicaCore`` and the runtime's ``Replica`` run
unchanged; ``submit`` returns the outbox seq, and the stamp carries it back.
"""

from __future__ import annotations

import secrets
from typing import Final

from .._core._errors import EntryTooLargeError
from .._core._layout import D_WRITER, STAMP
from .._core._log import KIND_ENTRY, Log, LogStatistics
from ._shm import SharedLog

__all__ = ("MAX_MESSAGE_BYTES", "BridgedLog", "JetStreamLogFactory", "JetStreamLogHost")

#: Bytes of one JetStream message the bridge fills at most (NATS refuses
#: messages above the server's ``max_payload``, 1 MiB by default).
MAX_MESSAGE_BYTES: Final = 960 * 1024
#: A message's header and a record's (see ``_bridge``)
MESSAGE_OVERHEAD: Final = 64


class BridgedLog:
    """A replica's (or the supervisor's) handle on a ``nats://`` log.

    Appending, and repairing a dead appender's positions, is the outbox's;
    reading, claiming, progress, membership and waiting are the ring's.
    Implements ``LogBackend`` and ``SupervisedLog``.
    """

    def __init__(self, ring: Log, outbox: Log) -> None:
        self.ring = ring
        self.outbox = outbox
        # the hot calls, bound once (no delegation per call)
        self.read = ring.read
        self.published = ring.published
        self.claim = ring.claim
        self.advance = ring.advance
        self.applied = ring.applied
        self.cursor = ring.cursor
        self.slowest_cursor = ring.slowest_cursor
        self.join = ring.join
        self.set_live = ring.set_live
        self.mark_dead = ring.mark_dead
        self.leave = ring.leave
        self.state = ring.state
        self.pid = ring.pid
        self.replicas_in = ring.replicas_in
        self.set_asleep = ring.set_asleep
        self.beat = ring.beat
        self.set_stuck = ring.set_stuck
        self.set_wants = ring.set_wants
        self.durability_word = ring.durability_word
        self.set_durability_word = ring.set_durability_word
        self.raise_durability_word = ring.raise_durability_word
        self.heartbeat = ring.heartbeat
        self.stuck = ring.stuck
        self.declare_poisoned = ring.declare_poisoned
        self.announcer = ring.announcer
        self.fill_abandoned = outbox.fill_abandoned
        self.recovery_pending = outbox.recovery_pending
        self._max_entry = min(
            outbox.max_entry_bytes,
            ring.max_entry_bytes - STAMP.size,
            MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD,
        )

    # --- shape ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.ring.capacity

    @property
    def max_entry_bytes(self) -> int:
        return self._max_entry

    @property
    def max_replicas(self) -> int:
        return self.ring.max_replicas

    # --- appending: to the outbox ---------------------------------------------------
    def try_append(self, replica: int, payload: bytes, kind: int = KIND_ENTRY, /) -> int:
        """Append to this machine's outbox; the outbox seq (the stamp brings it back), or 0.

        Raises :class:`EntryTooLargeError` above :attr:`max_entry_bytes`: the
        entry must fit a stream message, and the ring of every machine; and
        ``ValueError`` for a kind other than ``KIND_ENTRY``.
        """
        if len(payload) > self._max_entry:
            raise EntryTooLargeError(len(payload), self._max_entry)
        if kind != KIND_ENTRY:
            # a blob reference names a file on this machine, a no-op means
            # nothing: neither travels (the stream carries entries' bytes)
            raise ValueError(f"the nats log carries entries of kind {KIND_ENTRY} only, not {kind}")
        return self.outbox.try_append(replica, payload, kind)

    def take_sleepers(self, replicas: int | None = None, /) -> list[int]:
        """After an append: the bridge, if it sleeps (nothing new is in the ring)."""
        line = self.bridge_line
        if line is not None and self.outbox.wake_writer():
            return [line]
        return []

    @property
    def bridge_line(self) -> int | None:
        """The outbox line the bridge holds (its wake-up is the eventfd of that index)."""
        v = self.outbox.durability_word(D_WRITER)
        return v - 1 if v else None

    # --- the ring --------------------------------------------------------------------
    @property
    def tail(self) -> int:
        return self.ring.tail

    @property
    def completed(self) -> int:
        return self.ring.completed

    @property
    def poisoned(self) -> int:
        return self.ring.poisoned

    @property
    def origin(self) -> int:
        return self.ring.origin

    # --- durability: JetStream's, not a writer's ---------------------------------------
    @property
    def acked(self) -> int:
        return 0  # what the ring holds is committed in the stream already

    @property
    def writer_line(self) -> int | None:
        return None

    @property
    def write_error(self) -> int:
        return self.ring.write_error

    def wake_writer(self) -> bool:
        return False

    def statistics(self) -> LogStatistics:
        return self.ring.statistics()


class JetStreamLogHost:
    """One process's hold on a machine's two rings (the ``LogHost`` protocol)."""

    def __init__(self, ring: SharedLog, outbox: SharedLog) -> None:
        self.shared_ring = ring
        self.shared_outbox = outbox
        self.ring = ring.log()
        self.outbox = outbox.log()
        self.log = BridgedLog(self.ring, self.outbox)

    def handles(self) -> list[int]:
        """What a replica process inherits: the ring's memfd, then the outbox's."""
        return [self.shared_ring.fd, self.shared_outbox.fd]

    def prepare(self, bridge_line: int) -> int:
        """In the supervisor, before anything starts: name this machine (a new random
        origin for each start) and let the bridge hold the outbox; the origin."""
        origin = secrets.randbits(63) | 1
        self.ring.set_origin(origin)
        self.outbox.join(bridge_line, cursor=self.outbox.tail)
        self.outbox.set_live(bridge_line)
        self.outbox.set_durability_word(D_WRITER, bridge_line + 1)
        return origin

    def close(self) -> None:
        self.shared_ring.close()
        self.shared_outbox.close()


class JetStreamLogFactory:
    """``--log nats://HOST:PORT[,HOST2:PORT]``: the log is a JetStream stream."""

    name: Final = "nats"

    def __init__(self, url: str, service: str = "log") -> None:
        #: the servers, as ``nats://host:port`` strings
        self.servers = parse_servers(url)
        self.service = service

    def create(
        self,
        *,
        capacity: int,
        slot_size: int,
        replicas: int,
        max_entry_slots: int | None,
        first: int = 1,
    ) -> JetStreamLogHost:
        ring = SharedLog.create(
            self.service,
            capacity=capacity,
            slot_size=slot_size,
            max_replicas=replicas,
            max_entry_slots=max_entry_slots,
            first=first,
        )
        try:
            outbox = SharedLog.create(
                f"{self.service}-outbox",
                capacity=capacity,
                slot_size=slot_size,
                max_replicas=replicas,
                max_entry_slots=max_entry_slots,
            )
        except BaseException:
            ring.close()
            raise
        return JetStreamLogHost(ring, outbox)

    def attach(self, handles: list[int]) -> JetStreamLogHost:
        if len(handles) != 2:
            raise ValueError(f"a nats log is reached through two memfds, not {len(handles)} fds")
        ring = SharedLog.attach(handles[0])
        try:
            outbox = SharedLog.attach(handles[1])
        except BaseException:
            ring.close()
            raise
        return JetStreamLogHost(ring, outbox)


def parse_servers(url: str) -> list[str]:
    """``nats://a:4222,b:4222`` (or ``nats://a:4222,nats://b:4222``) as a list of URLs.

    Raises ``ValueError`` naming what is wrong.
    """
    if not url.startswith("nats://"):
        raise ValueError(f"a nats log is named nats://HOST:PORT[,HOST:PORT...], not {url!r}")
    out = []
    for part in url[len("nats://") :].split(","):
        part = part.strip()
        if part.startswith("nats://"):
            part = part[len("nats://") :]
        _, sep, port = part.rpartition(":")
        if not part or (sep and not port.isdigit()):
            raise ValueError(f"bad NATS server {part!r} in {url!r}: use HOST:PORT")
        out.append(f"nats://{part}" if sep else f"nats://{part}:4222")
    return out
