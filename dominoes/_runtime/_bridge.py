"""The bridge: one process per machine between its rings and a JetStream stream.

Started by the supervisor with ``--log nats://...`` (``_jetstream``), before
the replicas.  Three tasks on one event loop:

**egress**
    reads what this machine's replicas published in the outbox, from the
    bridge's cursor, and sends it to the stream as one message per batch
    (everything published since the last send, up to ``MAX_MESSAGE_BYTES``).
    One message is in flight at a time, so this machine's entries reach the
    stream in the order they were appended.  A message's ``Nats-Msg-Id`` is
    ``<origin>.<counter>``: a publish retried after a timeout, or during a
    leader change, is stored once: the stream remembers ids for
    ``DUPLICATE_WINDOW`` seconds, and a publish that has not gone through
    after half of it stops the machine instead of retrying on.  The outbox
    slots are released once the stream acknowledged the message.
**ingest**
    reads the stream with an ordered consumer, from the start or from just
    after the snapshot the machine started from, and appends each message's
    entries to the ring, in order, stamped with their origin machine, outbox
    seq, message and index (``KIND_STAMPED``), then wakes the replicas that
    sleep.  A consumer that stalls (its server died) is made again.
**fences**
    serves linearizable reads across machines.  A replica about to answer
    reads raises ``B_ASKED`` and wakes the bridge; the bridge then appends
    an empty batch to the stream (a fence), waits until ingest has copied
    the stream up to it, and stores the generation it served in
    ``B_SERVED``.  One fence serves every read asked before it was
    appended, on every replica of the machine.

The message format: ``HEAD`` (magic, origin, counter, count) then per entry
``RECORD`` (outbox seq, length) and the entry's bytes.

If the bridge dies, the supervisor stops the machine (exit 1): its ring may
hold part of a message, and a restarted machine rebuilds from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, Final

import msgspec

from .._core._layout import (
    B_ASKED,
    B_SERVED,
    D_ERROR,
    D_SNAP_SEQ,
    KIND_NOOP,
    KIND_STAMPED,
    STAMP,
)
from .._core._log import Log
from ._jetstream import MAX_MESSAGE_BYTES
from ._pdeath import die_with_parent
from ._shm import SharedLog

__all__ = ("BridgeConfig", "HEAD", "RECORD", "decode_message", "encode_message", "main")

log = logging.getLogger("dominoes.bridge")

HEAD: Final = struct.Struct("<4sQQI")
RECORD: Final = struct.Struct("<QI")
MAGIC: Final = b"DOM1"
#: Seconds a publish waits for the stream's acknowledgment before it is retried.
PUBLISH_TIMEOUT: Final = 2.0
#: Seconds between retries of a publish or a stream-info request that failed.
RETRY_DELAY: Final = 0.1
#: Seconds between looks at a full ring (the replicas free it as they apply).
RING_FULL_DELAY: Final = 0.0005
#: Seconds of nothing but failed requests to the stream before the replicas
#: refuse updates and linearizable reads (``LogUnavailableError``): longer than
#: a Raft election (a stream leader's death pauses writes 5-10 s), so that a
#: dead node is a pause and a partition an error (``--unreachable-after``).
UNREACHABLE_AFTER: Final = 15.0
#: Seconds the tasks get to end on a clean stop, after the outbox was sent.
STOP_GRACE: Final = 3.0
#: Seconds between the stream consumer's heartbeats.
HEARTBEAT: Final = 0.5
#: Seconds between the watch task's looks at a quiet consumer.
WATCH_EVERY: Final = 1.0
#: Seconds a consumer may deliver nothing while the stream holds more.
STALL: Final = 1.5
#: Seconds between looks for a new snapshot to upload.
SNAPSHOT_POLL: Final = 0.2
#: Seconds a machine's progress stays in ``<stream>-machines`` unrefreshed: a
#: machine silent that long is taken for stopped, and retention may trim past it.
PROGRESS_TTL: Final = 60.0
#: Seconds between trims of the stream besides those after an upload.
RETAIN_EVERY: Final = 2.0
#: Snapshots kept in the Object Store; the stream keeps what the oldest needs.
KEEP_SNAPSHOTS: Final = 2
#: The stream keeps message ids this many seconds to spot a retried publish.
DUPLICATE_WINDOW: Final = 600.0


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[str]
    stream: str
    #: copies of the stream the servers keep when the bridge creates it
    stream_replicas: int
    subject: str
    #: the outbox line the bridge holds, and its eventfd's index in ``wake_fds``
    line: int
    replicas: int
    ring_fd: int
    outbox_fd: int
    wake_fds: list[int]
    ready_fd: int
    supervisor_pid: int
    slot_size: int
    log_level: str = "WARNING"
    #: the first stream message to copy into the ring (after a snapshot: the
    #: message that carried the snapshot's last entry)
    start_seq: int = 1
    #: entries of that first message the snapshot holds already
    skip: int = 0
    #: where replicas write snapshots for the bridge to upload ("": none)
    snapshot_dir: str = ""
    #: the machine's run dir: the bridge writes ``bridge.json`` there ("": not)
    run_dir: str = ""
    #: seconds of failed requests before updates and fenced reads are refused
    unreachable_after: float = UNREACHABLE_AFTER
    #: the snapshot the machine started from (its ring seq; 0: none)
    snapshot_seq: int = 0


class StreamUnavailableError(RuntimeError):
    """The stream stayed out of reach too long: the machine stops (exit 1)."""


class FellBehindError(RuntimeError):
    """The stream dropped messages this machine had not copied yet (retention)."""


def encode_message(origin: int, counter: int, entries: list[tuple[int, bytes]]) -> bytes:
    """One stream message holding ``entries`` (outbox seq, bytes) from ``origin``."""
    parts = [HEAD.pack(MAGIC, origin, counter, len(entries))]
    for seq, payload in entries:
        parts.append(RECORD.pack(seq, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_message(data: bytes) -> tuple[int, int, list[tuple[int, memoryview]]]:
    """``(origin, counter, [(outbox seq, bytes)...])``; ``ValueError`` for a foreign message."""
    if len(data) < HEAD.size:
        raise ValueError("message too short for a dominoes batch")
    magic, origin, counter, count = HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not a dominoes batch (magic {magic!r})")
    view = memoryview(data)
    pos = HEAD.size
    out = []
    for _ in range(count):
        seq, n = RECORD.unpack_from(data, pos)
        pos += RECORD.size
        if pos + n > len(data):
            raise ValueError("truncated dominoes batch")
        out.append((seq, view[pos : pos + n]))
        pos += n
    return origin, counter, out


def _signal(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.eventfd_write(fd, 1)


class Bridge:
    def __init__(self, cfg: BridgeConfig, ring: Log, outbox: Log, js: Any) -> None:
        self.cfg = cfg
        self.ring = ring
        self.outbox = outbox
        self.js = js
        self.origin = ring.origin
        #: set by a wake-up: the outbox has entries, or a replica asked for a fence
        self.woken = asyncio.Event()
        self.fence_asked = asyncio.Event()
        #: set each time the egress releases outbox slots
        self.advanced = asyncio.Event()
        #: the highest fence generation the fences task has begun serving
        self.fence_taken = 0
        #: the last stream sequence whose entries are all in the ring
        self.copied = 0
        self.copied_moved = asyncio.Event()
        #: when ingest last copied a message (monotonic)
        self.last_copy = time.monotonic()
        #: set to make ingest drop its consumer and subscribe again
        self.resubscribe = asyncio.Event()
        self.resubscribes = 0
        self.counter = 0
        self.messages_out = 0
        self.messages_in = 0
        self.retries = 0
        self.fences_appended = 0
        self.snapshots_uploaded = 0
        #: the stream's first message kept after this bridge's last trim
        self.trimmed = 0
        self._bucket: Any = None
        #: a clean stop began: loops end (nats-py may swallow a cancellation)
        self.stopping = False
        #: since when every request to the stream failed (None: the last went through)
        self.failing_since: float | None = None
        #: D_ERROR is set: the replicas refuse updates and fenced reads
        self.unreachable = False
        #: the first message to read, and how many of its entries the snapshot holds
        self.start = cfg.start_seq
        self.skip = cfg.skip

    # --- waking -----------------------------------------------------------------------

    def on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.cfg.wake_fds[self.cfg.line])
        self.woken.set()
        self.fence_asked.set()

    async def sleep(self, ready: Any) -> None:
        """Sleep until woken, unless ``ready()`` finds work after the asleep flag is set."""
        self.woken.clear()
        outbox, line = self.outbox, self.cfg.line
        outbox.set_asleep(line, True)
        if ready():
            outbox.set_asleep(line, False)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):  # safety: a producer died before signalling
                await self.woken.wait()
        outbox.set_asleep(line, False)

    # --- egress: outbox -> stream -------------------------------------------------------

    async def egress(self) -> None:
        outbox, line = self.outbox, self.cfg.line
        cursor = outbox.cursor(line)
        limit = MAX_MESSAGE_BYTES - HEAD.size
        while not self.stopping:
            entries: list[tuple[int, bytes]] = []
            size = 0
            seq, tail = cursor, outbox.tail
            while seq < tail:
                got = outbox.read(seq)
                if got is None:
                    break
                kind, nslots, payload = got
                if kind != KIND_NOOP:
                    if entries and size + RECORD.size + len(payload) > limit:
                        break
                    entries.append((seq, payload))
                    size += RECORD.size + len(payload)
                seq += nslots
            if seq == cursor:
                await self.sleep(self._work)
                continue
            if self._fence_pending():
                self.fence_asked.set()
            if entries:
                self.counter += 1
                await self.publish(encode_message(self.origin, self.counter, entries))
            cursor = seq
            outbox.advance(line, cursor)
            self.advanced.set()

    def _work(self) -> bool:
        if self._fence_pending():  # a replica's wake-up found the egress awake: pass it on
            self.fence_asked.set()
        return self.outbox.published(self.outbox.cursor(self.cfg.line))

    async def publish(self, data: bytes) -> None:
        import nats.errors
        import nats.js.errors

        msg_id = f"{self.origin:x}.{self.counter}"
        give_up = time.monotonic() + DUPLICATE_WINDOW / 2
        while True:
            if self.stopping:  # a cancellation nats-py swallowed
                raise asyncio.CancelledError
            if time.monotonic() > give_up:
                raise StreamUnavailableError(
                    f"could not append to stream {self.cfg.stream!r} for "
                    f"{DUPLICATE_WINDOW / 2:.0f}s; this machine stops, so that a retry can "
                    f"never be stored twice (the stream remembers message ids for "
                    f"{DUPLICATE_WINDOW:.0f}s)"
                )
            try:
                await self.js.publish(
                    self.cfg.subject,
                    data,
                    timeout=PUBLISH_TIMEOUT,
                    stream=self.cfg.stream,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except (TimeoutError, nats.errors.Error) as exc:
                # a leader change, a dead node, a reconnect: "temporarily
                # unavailable" in its many forms.  Retried under the same id.
                self._unavailable(exc)
            else:
                self.messages_out += 1
                self._reachable()
                return
            await asyncio.sleep(RETRY_DELAY)

    def _unavailable(self, exc: BaseException) -> None:
        """A request to the stream failed: retried; after ``UNREACHABLE_AFTER`` seconds
        of nothing but failures, the replicas refuse updates and fenced reads."""
        self.retries += 1
        if self.retries == 1 or self.retries % 50 == 0:
            log.warning("bridge: the stream is not available (%s); retrying", exc or type(exc))
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since >= self.cfg.unreachable_after and not self.unreachable:
            self.unreachable = True
            self.ring.set_durability_word(D_ERROR, errno.EHOSTUNREACH)
            log.error(
                "bridge: stream %r unreachable for %.0fs: updates and linearizable reads are "
                "refused until it is back (local reads go on)",
                self.cfg.stream,
                now - self.failing_since,
            )
            self._wake_all()

    def _reachable(self) -> None:
        """A request to the stream went through."""
        self.failing_since = None
        if self.unreachable:
            self.unreachable = False
            self.ring.set_durability_word(D_ERROR, 0)
            log.warning("bridge: stream %r reachable again", self.cfg.stream)
            self._wake_all()

    def _wake_all(self) -> None:
        for fd in self.cfg.wake_fds[: self.cfg.replicas]:
            _signal(fd)

    # --- ingest: stream -> ring ---------------------------------------------------------

    async def ingest(self, start: int) -> None:
        """Copy the stream into the ring from ``start``, subscribing again when told to."""
        self.copied = start - 1
        while not self.stopping:
            self.resubscribe.clear()
            sub = await self._subscribe(self.copied + 1)
            reading = asyncio.create_task(self._read(sub))
            told = asyncio.create_task(self.resubscribe.wait())
            try:
                await asyncio.wait([reading, told], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reading, told):
                    task.cancel()
                await asyncio.gather(reading, told, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if reading.done() and not reading.cancelled() and reading.exception() is not None:
                exc = reading.exception()
                if isinstance(exc, FellBehindError):
                    raise exc
                log.warning("bridge: reading the stream failed (%s); again", exc)
            self.resubscribes += 1

    async def _subscribe(self, start: int) -> Any:
        import nats.errors
        from nats.js.api import ConsumerConfig, DeliverPolicy

        while True:
            if self.stopping:  # a cancellation nats-py swallowed
                raise asyncio.CancelledError
            try:
                return await self.js.subscribe(
                    self.cfg.subject,
                    stream=self.cfg.stream,
                    ordered_consumer=True,
                    # missed heartbeats reset the consumer: a dead server is noticed
                    # in about two of them (the watch task covers what they miss)
                    idle_heartbeat=HEARTBEAT,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                    ),
                )
            except (TimeoutError, nats.errors.Error) as exc:
                self._unavailable(exc)
            await asyncio.sleep(RETRY_DELAY)

    async def _read(self, sub: Any) -> None:
        async for msg in sub.messages:
            seq = msg.metadata.sequence.stream
            if seq <= self.copied:
                continue  # delivered again after the consumer was reset
            if seq != self.copied + 1:
                first = await self.first_sequence()
                if first > self.copied + 1:
                    raise FellBehindError(
                        f"stream {self.cfg.stream!r} dropped messages {self.copied + 1} to "
                        f"{first - 1} before this machine copied them (the stream keeps what "
                        f"the newest snapshots need); restart the machine: it starts from the "
                        f"newest snapshot"
                    )
                log.error(
                    "bridge: the stream skipped from %d to %d; reading again", self.copied, seq
                )
                return
            await self.copy(msg.data, seq, self.skip if seq == self.start else 0)
            self.copied = seq
            self.last_copy = time.monotonic()
            self.messages_in += 1
            self.copied_moved.set()
            self._wake_replicas()

    async def watch(self) -> None:
        """Subscribe again when the stream has entries the consumer stopped delivering.

        The ordered consumer lives on one server; if that server dies, the
        client notices only through missed heartbeats.  Once a second with no
        message, this asks the stream for its last sequence: entries there
        that ingest has not copied for ``STALL`` seconds mean a stalled consumer.
        """
        while not self.stopping:
            await asyncio.sleep(WATCH_EVERY)
            if time.monotonic() - self.last_copy < WATCH_EVERY:
                continue
            last = await self.last_sequence()
            if last <= self.copied:
                continue
            behind_since = time.monotonic()
            while self.copied < last and time.monotonic() - behind_since < STALL:
                self.copied_moved.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STALL):
                        await self.copied_moved.wait()
            if self.copied < last and time.monotonic() - self.last_copy >= STALL:
                log.warning(
                    "bridge: the stream holds up to %d, the consumer stopped at %d; "
                    "subscribing again",
                    last,
                    self.copied,
                )
                self.resubscribe.set()

    def counters(self) -> dict[str, Any]:
        """What ``dominoes stats --json`` shows of the bridge."""
        ring = self.ring
        return {
            "stream": self.cfg.stream,
            "origin": f"{self.origin:x}",
            "messages_out": self.messages_out,
            "messages_in": self.messages_in,
            "copied": self.copied,
            "retries": self.retries,
            "resubscribes": self.resubscribes,
            "unreachable": self.unreachable,
            # seconds every request to the stream has failed (0: the last went through)
            "failing_for": (
                0.0
                if self.failing_since is None
                else round(time.monotonic() - self.failing_since, 1)
            ),
            "fences_asked": ring.durability_word(B_ASKED),
            "fences_served": ring.durability_word(B_SERVED),
            "fences_appended": self.fences_appended,
            "snapshots_uploaded": self.snapshots_uploaded,
        }

    async def publish_counters(self) -> None:
        """Rewrite ``bridge.json`` in the run dir (atomically) every second, for the
        supervisor's stats: a task of its own, so that it goes on while requests to the
        stream wait (an outage is when it matters)."""
        path = Path(self.cfg.run_dir) / "bridge.json"
        tmp = path.with_suffix(".tmp")
        while not self.stopping:
            with contextlib.suppress(OSError):
                tmp.write_bytes(msgspec.json.encode(self.counters()))
                os.replace(tmp, path)
            await asyncio.sleep(WATCH_EVERY)

    async def copy(self, data: bytes, seq: int, skip: int = 0) -> None:
        try:
            origin, _, entries = decode_message(data)
        except ValueError as exc:
            log.error("bridge: skipped a message that is not a dominoes batch: %s", exc)
            return
        ring, line = self.ring, self.cfg.line
        for index, (oseq, payload) in enumerate(entries):
            if index < skip:
                continue  # in the snapshot this machine started from
            stamped = STAMP.pack(origin, oseq, seq, index) + payload
            while not ring.try_append(line, stamped, KIND_STAMPED):
                self._wake_replicas()
                await asyncio.sleep(RING_FULL_DELAY)

    def _wake_replicas(self) -> None:
        fds = self.cfg.wake_fds
        for i in self.ring.take_sleepers(self.cfg.replicas):
            _signal(fds[i])

    # --- fences -------------------------------------------------------------------------

    def _fence_pending(self) -> bool:
        """A replica asked for a fence the fences task has not begun serving."""
        return self.ring.durability_word(B_ASKED) > self.fence_taken

    async def fences(self) -> None:
        ring = self.ring
        while not self.stopping:
            self.fence_asked.clear()
            asked = ring.durability_word(B_ASKED)
            if asked <= self.fence_taken:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):  # safety, as for the egress
                        await self.fence_asked.wait()
                continue
            # Every ask up to `asked` was raised before this fence is appended: the
            # stream orders it after every write acknowledged before those reads.
            self.fence_taken = asked
            last = await self.append_fence()
            while self.copied < last:
                self.copied_moved.clear()
                if self.copied < last:
                    await self.copied_moved.wait()
            ring.raise_durability_word(B_SERVED, asked)
            for fd in self.cfg.wake_fds[: self.cfg.replicas]:
                _signal(fd)

    # --- snapshots: to the Object Store, and the stream's retention -----------------------

    async def snapshots(self) -> None:
        """Upload each snapshot a replica writes, keep the newest two, trim the stream.

        A replica writes ``snapshot-<S>.snap`` and ``.pos`` (the stream message
        and index of its last entry) in ``snapshot_dir``, then raises the
        ring's ``D_SNAP_SEQ`` to ``S``.  The object's name carries all three,
        so a machine that starts later finds where to read from without
        reading the state.  Then only the two newest snapshots are kept, and
        the stream drops the messages before the older one's message: no
        machine that starts from a kept snapshot needs them.
        """
        import nats.errors

        directory = Path(self.cfg.snapshot_dir)
        uploaded = self.cfg.snapshot_seq
        while not self.stopping:
            await asyncio.sleep(SNAPSHOT_POLL)
            seq = self.ring.durability_word(D_SNAP_SEQ)
            if seq <= uploaded:
                continue
            snap = directory / f"snapshot-{seq:020d}.snap"
            pos = directory / f"snapshot-{seq:020d}.pos"
            try:
                message, index = map(int, pos.read_text().split())
                data = snap.read_bytes()
            except (OSError, ValueError) as exc:
                log.warning("bridge: snapshot at %d is not readable (%s); skipped", seq, exc)
                uploaded = seq
                continue
            try:
                store = await object_store(self.js, self.cfg, create=True)
                await store.put(snapshot_object(seq, message, index), data)
            except (TimeoutError, nats.errors.Error) as exc:  # a node died: next time
                log.warning("bridge: uploading the snapshot at %d failed (%s); again", seq, exc)
                continue
            uploaded = seq
            self.snapshots_uploaded += 1
            log.info("bridge: snapshot at %d (stream %d.%d) uploaded", seq, message, index)
            _remove_up_to(directory, seq)
            try:
                await self.retain(store)
            except (TimeoutError, nats.errors.Error) as exc:  # the next upload trims
                log.warning("bridge: trimming the stream failed (%s)", exc)

    async def retention(self) -> None:
        """Trim again every ``RETAIN_EVERY`` seconds, not only after an upload: a trim
        that was skipped (the machines' progress unknown) or held back by a slow
        machine happens once it can."""
        import nats.errors

        while not self.stopping:
            await asyncio.sleep(RETAIN_EVERY)
            try:
                store = await object_store(self.js, self.cfg, create=False)
                if store is not None:
                    await self.retain(store)
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("bridge: trimming the stream failed (%s)", exc)

    async def retain(self, store: Any) -> None:
        """Keep the newest snapshots, and the stream from what the oldest needs, or
        from what the slowest live machine has not copied yet, whichever is older."""
        import nats.js.errors

        kept = await list_snapshots(store)
        for *_, name in kept[:-KEEP_SNAPSHOTS]:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await store.delete(name)
        kept = kept[-KEEP_SNAPSHOTS:]
        if len(kept) < KEEP_SNAPSHOTS:
            return
        oldest_needed = kept[0][1]
        slowest = await self.slowest_machine()
        if slowest is None:
            return  # the machines' progress is unknown: trim next time
        oldest_needed = min(oldest_needed, slowest + 1)
        if oldest_needed > self.trimmed:
            await self.js.purge_stream(self.cfg.stream, seq=oldest_needed)
            self.trimmed = oldest_needed
            log.info("bridge: the stream keeps messages from %d on", oldest_needed)

    # --- machines' progress: what retention must keep ---------------------------------------

    async def progress(self) -> None:
        """Tell the other machines, every second, how far this one has copied the stream.

        Each machine's bridge puts ``copied`` under its origin in the KV bucket
        ``<stream>-machines``, whose entries expire after ``PROGRESS_TTL``
        seconds: a machine that stopped is forgotten then.  Retention never
        drops a message a live machine has not copied (:meth:`retain`).
        """
        import nats.errors

        key = f"{self.origin:x}"
        while not self.stopping:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    bucket = await self._progress_bucket()
                    await bucket.put(key, str(self.copied).encode())
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("bridge: reporting progress failed (%s)", exc)
            await asyncio.sleep(WATCH_EVERY)

    async def slowest_machine(self) -> int | None:
        """The least ``copied`` among live machines (None: unknown now)."""
        import nats.errors
        import nats.js.errors

        try:
            bucket = await self._progress_bucket()
            keys = await bucket.keys()
            values = [int((await bucket.get(k)).value or b"0") for k in keys]
        except nats.js.errors.NoKeysError:
            return self.copied
        except (TimeoutError, nats.errors.Error, ValueError) as exc:
            log.warning("bridge: the machines' progress is unknown (%s)", exc)
            return None
        return min([*values, self.copied])

    async def _progress_bucket(self) -> Any:
        import nats.js.errors
        from nats.js.api import KeyValueConfig, StorageType

        if self._bucket is not None:
            return self._bucket
        name = f"{self.cfg.stream}-machines"
        try:
            self._bucket = await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):  # made meanwhile
                self._bucket = await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=name,
                        description=f"dominoes machines reading stream {self.cfg.stream}",
                        ttl=PROGRESS_TTL,
                        storage=StorageType.FILE,
                        replicas=self.cfg.stream_replicas,
                    )
                )
            if self._bucket is None:
                self._bucket = await self.js.key_value(name)
        return self._bucket

    async def append_fence(self) -> int:
        """Append an empty batch to the stream; its sequence.

        A write's reply leaves once its replica applied it, which is after the
        stream committed it; this append is made after the reads it serves
        arrived, so the stream orders it after every write acknowledged before
        them.  Once ingest has copied up to it, those writes are in the ring.
        (The stream's ``last_seq`` from a stream-info request is not enough: on
        a cluster it was seen behind a message a consumer had already delivered.)
        A retried fence may be stored twice: an empty batch changes nothing.
        """
        import nats.errors

        data = encode_message(self.origin, 0, [])
        while True:
            if self.stopping:  # a cancellation nats-py swallowed
                raise asyncio.CancelledError
            try:
                ack = await self.js.publish(
                    self.cfg.subject, data, timeout=PUBLISH_TIMEOUT, stream=self.cfg.stream
                )
            except (TimeoutError, nats.errors.Error) as exc:
                self._unavailable(exc)
            else:
                self._reachable()
                self.fences_appended += 1
                return int(ack.seq)
            await asyncio.sleep(RETRY_DELAY)

    async def first_sequence(self) -> int:
        """The stream's first message held."""
        return int((await self._stream_info()).state.first_seq)

    async def last_sequence(self) -> int:
        """The stream's last message (for the watch task: not a fence, see ``append_fence``)."""
        return int((await self._stream_info()).state.last_seq)

    async def _stream_info(self) -> Any:
        """A stream-info request, retried while the stream is unavailable (a leader
        change, a dead node, a reconnect: "temporarily unavailable" in its forms)."""
        import nats.errors

        while True:
            if self.stopping:  # a cancellation nats-py swallowed
                raise asyncio.CancelledError
            try:
                info = await self.js.stream_info(self.cfg.stream)
            except (TimeoutError, nats.errors.Error) as exc:
                self._unavailable(exc)
            else:
                self._reachable()
                return info
            await asyncio.sleep(RETRY_DELAY)


def _remove_up_to(directory: Path, seq: int) -> None:
    """Remove the snapshot files at or before ``seq`` (uploaded, or older)."""
    for old in directory.glob("snapshot-*"):
        with contextlib.suppress(ValueError, OSError):
            if int(old.name.split("-")[1].split(".")[0]) <= seq:
                old.unlink()


def snapshot_object(seq: int, message: int, index: int) -> str:
    """The Object Store name of the snapshot at ring seq ``seq`` (``message.index``: its
    last entry's place in the stream)."""
    return f"snapshot-{seq:020d}-{message}-{index}"


def bucket_name(stream: str) -> str:
    return f"{stream}-snapshots"


async def object_store(js: Any, cfg: Any, *, create: bool) -> Any:
    """The stream's snapshot bucket (None if it does not exist and ``create`` is false)."""
    import nats.js.errors
    from nats.js.api import ObjectStoreConfig, StorageType

    try:
        return await js.object_store(bucket_name(cfg.stream))
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
    with contextlib.suppress(nats.js.errors.BadRequestError):  # made meanwhile
        return await js.create_object_store(
            bucket_name(cfg.stream),
            config=ObjectStoreConfig(
                bucket=bucket_name(cfg.stream),
                description=f"dominoes snapshots of stream {cfg.stream}",
                storage=StorageType.FILE,
                replicas=cfg.stream_replicas,
            ),
        )
    return await js.object_store(bucket_name(cfg.stream))


async def list_snapshots(store: Any) -> list[tuple[int, int, int, str]]:
    """``(ring seq, message, index, name)`` of every snapshot in the bucket, oldest first."""
    import nats.js.errors

    try:
        # nats-py's listing of an empty bucket waits out the JetStream timeout
        # before it says so (its watcher never sees a last message): look at
        # the bucket's stream first (nats-py keeps it as ``_js``/``_stream``)
        js, stream = getattr(store, "_js", None), getattr(store, "_stream", None)
        if js is not None and stream is not None:
            held = await js.stream_info(stream)
            if not held.state.messages:
                return []
        infos = await store.list(ignore_deletes=True)
    except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):  # empty
        return []
    out = []
    for info in infos:
        name = info.name
        if getattr(info, "deleted", False) or not name.startswith("snapshot-"):
            continue
        with contextlib.suppress(ValueError):
            _, seq, message, index = name.split("-")
            out.append((int(seq), int(message), int(index), name))
    return sorted(out)


async def ensure_stream(js: Any, cfg: BridgeConfig, capacity: int) -> None:
    """Create the stream if it does not exist; refuse one made for another ring shape.

    Every machine's ring must give each entry the same seq (``ctx.random``
    and timers are seeded from it), and take every entry another machine
    took: the slot size and the capacity must agree.
    """
    import nats.js.errors
    from nats.js.api import StorageType, StreamConfig

    want = f"dominoes log, slot size {cfg.slot_size}, capacity {capacity}"
    try:
        info = await js.stream_info(cfg.stream)
    except nats.js.errors.NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # another machine made it
            await js.add_stream(
                StreamConfig(
                    name=cfg.stream,
                    description=want,
                    subjects=[cfg.subject],
                    storage=StorageType.FILE,
                    num_replicas=cfg.stream_replicas,
                    duplicate_window=DUPLICATE_WINDOW,
                )
            )
        info = await js.stream_info(cfg.stream)
    got = info.config.description or ""
    if got != want:
        raise SystemExit(
            f"dominoes: stream {cfg.stream!r} is not this service's log: its description is "
            f"{got!r}, not {want!r} (every machine must run with the same --slot-size and "
            f"--capacity)"
        )
    if info.config.num_replicas != cfg.stream_replicas:
        log.warning(
            "bridge: stream %r keeps %s copies, not the %d of --stream-replicas (it was made "
            "so; the option counts only when a machine creates the stream)",
            cfg.stream,
            info.config.num_replicas,
            cfg.stream_replicas,
        )


async def serve(cfg: BridgeConfig) -> int:
    import nats

    ring_shared = SharedLog.attach(cfg.ring_fd)
    outbox_shared = SharedLog.attach(cfg.outbox_fd)
    ring, outbox = ring_shared.log(), outbox_shared.log()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def on_error(exc: Exception) -> None:
        log.warning("bridge: NATS: %s", exc)

    nc = await nats.connect(
        cfg.servers,
        name=f"dominoes-bridge-{cfg.stream}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        error_cb=on_error,
    )
    try:
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        await ensure_stream(js, cfg, ring.capacity)
        bridge = Bridge(cfg, ring, outbox, js)
        loop.add_reader(cfg.wake_fds[cfg.line], bridge.on_wake)
        tasks = [
            asyncio.create_task(bridge.ingest(cfg.start_seq), name="ingest"),
            asyncio.create_task(bridge.egress(), name="egress"),
            asyncio.create_task(bridge.fences(), name="fences"),
            asyncio.create_task(bridge.watch(), name="watch"),
        ]
        if cfg.snapshot_dir:
            tasks.append(asyncio.create_task(bridge.snapshots(), name="snapshots"))
            tasks.append(asyncio.create_task(bridge.retention(), name="retention"))
        if cfg.run_dir:
            tasks.append(asyncio.create_task(bridge.publish_counters(), name="counters"))
        tasks.append(asyncio.create_task(bridge.progress(), name="progress"))
        os.write(cfg.ready_fd, b"R")
        os.close(cfg.ready_fd)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            if task in done:  # every task loops until cancelled: none may end early
                raise RuntimeError(f"bridge: the {task.get_name()} task ended")
        # a clean stop: send what the replicas left in the outbox
        deadline = time.monotonic() + 5.0
        while outbox.published(outbox.cursor(cfg.line)) and time.monotonic() < deadline:
            bridge.advanced.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await bridge.advanced.wait()
        # Every loop ends at its next turn once `stopping` is set, even if nats-py
        # swallowed its cancellation (asyncio.wait_for in a request can).
        bridge.stopping = True
        bridge.resubscribe.set()
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        if pending:  # still stuck in a request: nothing left to do but exit
            log.warning(
                "bridge: %s did not stop; exiting", ", ".join(t.get_name() for t in pending)
            )
            os._exit(0)
        return 0
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        ring_shared.close()
        outbox_shared.close()


class FetchConfig(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[str]
    stream: str
    stream_replicas: int = 1
    #: where to write the snapshot
    directory: str


class Fetched(msgspec.Struct, frozen=True, kw_only=True):
    """Where a starting machine begins: the newest snapshot (seq 0: none) and the stream."""

    #: the snapshot's ring seq (the machine's ring starts there), 0: no snapshot
    seq: int = 0
    #: the stream message holding the snapshot's last entry, and its index there
    message: int = 0
    index: int = 0
    path: str = ""
    #: the stream's first message still held (0: no stream yet)
    first: int = 0


async def fetch(cfg: FetchConfig) -> Fetched:
    """The newest snapshot of the stream's bucket, written to ``cfg.directory``."""
    import nats
    import nats.js.errors

    nc = await nats.connect(cfg.servers, connect_timeout=2, max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        try:
            info = await js.stream_info(cfg.stream)
        except nats.js.errors.NotFoundError:
            return Fetched()
        first = int(info.state.first_seq) if info.state.messages else int(info.state.last_seq) + 1
        store = await object_store(js, cfg, create=False)
        kept = [] if store is None else await list_snapshots(store)
        if not kept:
            if first > 1:
                raise FellBehindError(
                    f"stream {cfg.stream!r} starts at message {first} and no snapshot "
                    f"holds what came before: this machine cannot rebuild the state"
                )
            return Fetched(first=first)
        seq, message, index, name = kept[-1]
        result = await store.get(name)
        path = Path(cfg.directory) / f"snapshot-{seq:020d}.snap"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.data or b"")
        return Fetched(seq=seq, message=message, index=index, path=str(path), first=first)
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "fetch":
        fcfg = msgspec.json.decode(argv[2].encode(), type=FetchConfig)
        try:
            got = asyncio.run(fetch(fcfg))
        except FellBehindError as exc:
            print(exc, file=sys.stderr, flush=True)
            return 1
        except Exception as exc:  # noqa: BLE001 - one line for the supervisor to print
            print(
                f"cannot read stream {fcfg.stream!r} from {', '.join(fcfg.servers)}: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        sys.stdout.write(msgspec.json.encode(got).decode() + "\n")
        return 0
    cfg = msgspec.json.decode(argv[1].encode(), type=BridgeConfig)
    die_with_parent(cfg.supervisor_pid)  # never outlive the machine's supervisor
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.WARNING),
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        return uvloop.run(serve(cfg))
    except KeyboardInterrupt:
        return 0
    except (StreamUnavailableError, FellBehindError) as exc:
        print(f"dominoes: bridge: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
