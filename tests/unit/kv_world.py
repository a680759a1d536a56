"""Real KV replicas in one process, for the KV front end's tests.

A :class:`World` runs N production :class:`dominoes.Replica` objects of the KV
service on the test's event loop, over one in-memory log
(:class:`~dominoes.lowlevel.MemoryLogHost`, woken through
:class:`~dominoes.lowlevel.LoopWakeups`), as ``dominoes run`` would run them in
N processes.  Before serving, each replica runs the service's start hook, as
``_process.serve`` does, so its KV ``Server`` exists from the start.  Clients
are real :class:`~dominoes.components.kv.Connection` objects over a
:class:`FakeTransport` (the asyncio transport's surface, bytes kept in memory).

Nothing is simulated on the replica side: group commit, the full log's
back-off, wake-ups and safety ticks are the runtime's own.  So:

* :meth:`World.settle` runs the loop until every replica, server and
  connection is idle, by looking at their state (never by time);
* :meth:`World.fill` makes the log full for real: a spare log line (the host
  has one more line than there are replicas) joins at the tail, which holds
  the log from there, and appends no-ops until the log refuses one;
  :meth:`World.unfill` makes that line leave, and the replicas find room at
  their next back-off try.

Use the ``worlds`` fixture (a :class:`Worlds`): every world it makes is closed
at the end of the test, its temporary run directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import hiredis
from dominoes.components.kv import TABLE, Connection, make_service
from dominoes.components.kv._entries import ready
from dominoes.components.kv._server import Server, _servers, tcp_factory

from dominoes import Replica
from dominoes.lowlevel import (
    FULL_BACKOFF_MIN,
    KIND_NOOP,
    LoopWakeups,
    MemoryLogHost,
    wake_sleepers,
)

__all__ = ("Client", "FakeTransport", "World", "Worlds", "pack")

#: Loop iterations (``sleep(0)``) a wait may take before it fails.
MAX_SPINS: Final = 20_000
#: Waits for a timer (a back-off, a safety tick) a wait may take before it fails.
MAX_TIMER_WAITS: Final = 2_000
#: How long one wait for a timer sleeps: uvloop's timer resolution (it rounds
#: shorter delays down to nothing, so a shorter sleep would only spin).
TIMER_WAIT: Final = 0.001
#: Consecutive checks that must find the world quiet (a loop iteration apart).
QUIET_CHECKS: Final = 2


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 12345) if name == "peername" else default


class Client:
    """One connection to one replica; ``send`` raw bytes or commands, ``replies`` decoded."""

    def __init__(self, world: World, replica: int) -> None:
        self.world = world
        self.conn: Connection = world.factory(world.replicas[replica])
        self.transport = FakeTransport()
        # A stand-in for an asyncio transport: its surface, not the class.
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.reader = hiredis.Reader()

    def send(self, *commands: Any) -> None:
        data = b"".join(c if isinstance(c, bytes) else pack(*c) for c in commands)
        self.conn.data_received(data)

    def replies(self) -> list[Any]:
        self.reader.feed(bytes(self.transport.data))
        self.transport.data.clear()
        out = []
        while (r := self.reader.gets()) is not False:
            out.append(r)
        return out

    async def ask(self, *commands: Any) -> list[Any]:
        self.send(*commands)
        await self.world.settle()
        return self.replies()


def pack(*args: Any) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts)


class World:
    """``replicas`` real KV replicas on the running loop, over one in-memory log.

    ``capacity``, ``slot_size`` and ``max_entry_slots`` shape the log (as
    ``testing.Cluster`` takes them); ``blob_max_bytes`` lowers the replicas'
    limit for entries past the ring's (the runtime's is 1 GiB, kept in blob
    files in the run directory).  ``start=False`` leaves the service's start
    hook to :meth:`start` (a replica's KV server is then made by
    :meth:`start`, or by its first connection).
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        capacity: int = 1024,
        slot_size: int = 256,
        max_entry_slots: int | None = None,
        blob_max_bytes: int | None = None,
        start: bool = True,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.service = make_service()
        self.factory = tcp_factory(TABLE)
        #: the log line fill() appends through (no replica has it)
        self.spare = replicas
        self.host = MemoryLogHost(
            capacity=capacity,
            slot_size=slot_size,
            replicas=replicas + 1,
            max_entry_slots=max_entry_slots,
        )
        self.run_dir = Path(tempfile.mkdtemp(prefix="dominoes-kv-world-"))
        self.log = self.host.log
        self.wakeups = LoopWakeups()
        self.replicas: list[Replica] = []
        self.closed = False
        try:
            for i in range(replicas):
                self.log.join(i, cursor=1)
                self.log.set_live(i)
                r = Replica(
                    self.service,
                    i,
                    self.host.handle(),
                    self.wakeups,
                    replicas=replicas,
                    run_dir=self.run_dir,
                    apply_timeout=None,
                    fork_snapshots=False,
                )
                self.replicas.append(r)
                if blob_max_bytes is not None:
                    r.core.blob_max_bytes = blob_max_bytes
                r.attach(loop)
                r.start_fresh()
            if start:
                self.start()
        except BaseException:
            self._release()
            raise

    def start(self) -> None:
        """What ``_process.serve`` does once a replica is live: the service's start hook."""
        on_start = self.service.on_start
        for r in self.replicas:
            assert not r.joining.active  # start_fresh(): joined() returns at once
            if on_start is not None and inspect.isawaitable(on_start(r)):
                raise TypeError("World runs synchronous start hooks only")

    # --- what the tests read -------------------------------------------------------------

    def client(self, replica: int = 0) -> Client:
        return Client(self, replica)

    def entries(self) -> int:
        """The log's tail, the next seq: slots taken so far (one per small entry, no-ops too)."""
        return int(self.log.tail)

    def applied(self, replica: int) -> int:
        """Entries ``replica`` has applied (no-ops are skipped, not applied)."""
        return self.replicas[replica].statistics().core.applied_entries

    def servers(self) -> list[Server]:
        """The replicas' KV servers made so far (the start hook, or a first connection)."""
        return [s for r in self.replicas if (s := _servers.get(r)) is not None]

    async def assert_converged(self) -> None:
        """Settle, then check every replica is at the same position with the same state."""
        await self.settle()
        first, *others = [r.digest() for r in self.replicas]
        for i, got in enumerate(others, 1):
            assert got == first, f"replica {i} differs from replica 0: {got} != {first}"

    # --- running the loop ------------------------------------------------------------------

    def busy(self) -> str | None:
        """What is not idle yet (None: the world is quiet).

        Quiet: every replica applied everything published, has nothing queued
        for group commit or in its outbox, no drain or group commit scheduled
        and no effect running; no server has a group gathering or a task
        waiting for room; no live connection has a callback scheduled, an
        append waiting for room, or a ready reply it has not written (unless
        it holds it back for a client that does not read).
        """
        tail = self.log.tail
        for r in self.replicas:
            core = r.core
            if core.machine.cursor < tail:
                return f"replica {r.index} applied up to {core.machine.cursor} of {tail}"
            if core.group:
                return f"replica {r.index} has {len(core.group)} calls queued for group commit"
            if core.outbox:
                return f"replica {r.index} has reports in its outbox"
            if r._scheduled or r._group_scheduled:
                return f"replica {r.index} has a drain or a group commit scheduled"
            if r._tasks:
                return f"replica {r.index} runs {len(r._tasks)} effects"
        for server in self.servers():
            if server._group or server._group_scheduled:
                return f"replica {server.index}'s server gathers a group"
            if server._tasks:
                return f"replica {server.index}'s server has {len(server._tasks)} tasks"
            for conn in server.connections.values():
                if conn._continue_scheduled or conn._push_scheduled:
                    return f"connection {conn.id} has a callback scheduled"
                if conn.delayed:
                    return f"connection {conn.id} waits for room for {len(conn.delayed)} entries"
                if conn.pending and ready(conn.pending[0]) and not conn.more:
                    return f"connection {conn.id} has a ready reply not written yet"
        return None

    def _timer_due(self) -> bool:
        """Whether what is left waits for a timer rather than for a callback already queued.

        A group commit the log refused retries after its back-off
        (``call_later``); a server task waiting for room sleeps through the
        same back-off; a replica behind the log with no drain scheduled and no
        wake-up on its way (it was not asleep, so nobody signalled it) is found
        by its safety tick.  (A signalled replica's asleep flag in the log was
        cleared by the producer; its own is cleared by the wake-up callback.)
        """
        tail = self.log.tail
        for r in self.replicas:
            if r._group_backoff.delay > FULL_BACKOFF_MIN:
                return True
            signalled = r._asleep and not self.log.asleep(r.index)
            if r.core.machine.cursor < tail and not r._scheduled and not signalled:
                return True
        return any(server._tasks for server in self.servers())

    async def run_until(self, condition: Callable[[], bool], what: str, checks: int = 1) -> None:
        """Run the loop until ``condition()`` holds ``checks`` times in a row.

        Bounded: it raises after :data:`MAX_SPINS` loop iterations or
        :data:`MAX_TIMER_WAITS` waits for a timer.  It waits for a timer
        (``sleep(TIMER_WAIT)``) only while what is left is a back-off or a
        safety tick; otherwise it yields one loop iteration (``sleep(0)``).
        """
        spins = waits = held = 0
        while True:
            if condition():
                held += 1
                if held >= checks:
                    return
            else:
                held = 0
            if self._timer_due():
                waits += 1
                if waits > MAX_TIMER_WAITS:
                    raise AssertionError(f"never {what}: {self.busy() or 'quiet'}")
                await asyncio.sleep(TIMER_WAIT)
            else:
                spins += 1
                if spins > MAX_SPINS:
                    raise AssertionError(f"never {what}: {self.busy() or 'quiet'}")
                await asyncio.sleep(0)

    async def settle(self) -> None:
        """Run the loop until the world is quiet (:meth:`busy`) two checks in a row."""
        await self.run_until(lambda: self.busy() is None, "quiet", QUIET_CHECKS)

    # --- a replica behind the log ----------------------------------------------------------

    @contextlib.contextmanager
    def holding(self, replica: int) -> Iterator[Replica]:
        """While the block runs, ``replica`` applies nothing on its own.

        Its scheduled drains do nothing, so only a catch-up (``Replica.sync``,
        before a read) moves it: what a read there sees of the others' writes
        is the catch-up's doing.  :meth:`settle` cannot finish meanwhile.
        """
        r = self.replicas[replica]

        def held() -> None:
            r._scheduled = False

        r._drain = held  # type: ignore[method-assign]
        try:
            yield r
        finally:
            del r._drain
            r._schedule()

    # --- a full log ------------------------------------------------------------------------

    async def fill(self) -> int:
        """Make the log full; the no-ops appended.

        The spare line joins at the tail, so it holds the log from there (as
        a joining replica does), and appends no-ops until the log refuses
        one.  The replicas skip the no-ops; the log stays full until
        :meth:`unfill`.
        """
        await self.settle()
        log = self.log
        log.join(self.spare)
        n = 0
        while log.try_append(self.spare, b"", KIND_NOOP):
            n += 1
        assert n > 0
        wake_sleepers(log, self.wakeups, len(self.replicas))
        await self.settle()
        assert log.free_slots() == 0
        return n

    def unfill(self) -> None:
        """The spare line leaves: the log has room again.

        Sleeping replicas are woken, as after an append; producers waiting
        for room find it at their next back-off try.
        """
        self.log.leave(self.spare)
        wake_sleepers(self.log, self.wakeups, len(self.replicas))

    # --- the end -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the replicas, end the servers' waiting tasks, drop the log and the run dir."""
        if self.closed:
            return
        self.closed = True
        servers = self.servers()
        try:
            for r in self.replicas:
                r.close()
            tasks = [t for s in servers for t in s._tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Callbacks scheduled before close() run now and find the replicas closed.
            await asyncio.sleep(0)
        finally:
            self._release()

    def _release(self) -> None:
        for r in self.replicas:
            r.close()
        self.host.close()
        shutil.rmtree(self.run_dir)


class Worlds:
    """Makes the worlds of one test (``worlds(...)`` takes :class:`World`'s arguments).

    ``async with Worlds() as worlds:`` closes every world made when the block
    ends, whatever happened in it: the test modules' ``worlds`` fixture.
    """

    def __init__(self) -> None:
        self.made: list[World] = []

    def __call__(self, replicas: int = 2, **kwargs: Any) -> World:
        world = World(replicas, **kwargs)
        self.made.append(world)
        return world

    async def __aenter__(self) -> Worlds:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        errors: list[BaseException] = []
        for world in self.made:
            try:
                await world.close()
            except Exception as e:  # noqa: BLE001 - close the others, then raise
                errors.append(e)
        if errors:
            raise errors[0]
