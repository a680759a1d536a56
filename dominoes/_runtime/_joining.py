"""Joining a running service: a snapshot through the log, then the backlog.

A joiner (a restarted replica) holds the log from the tail and appends a
request for a snapshot (``ReplicaCore.ask_snapshot`` picks the source).  The
source writes its state when it applies the request, so the snapshot is the
state at exactly that log position; it lands in the run directory as
``snapshot-<joiner>-<seq>-<writer>.bin`` and the source wakes the joiner.
A joiner that holds partitions of a partitioned component the source does not
hold names other live replicas in its request (``SnapshotAsk.extras``); each
writes its own snapshot at the same position, and the joiner restores the
source's with theirs (``StateMachine.restore``).  Meanwhile
the joiner copies what the log publishes (its *backlog*) so that it does not
hold the ring for the seconds a large snapshot takes.  Once the snapshot is
restored, the backlog is applied a batch at a time, between which ingress
and timers run, and the replica goes live.

A snapshot that does not come (its source died, or restarted past the
request) is asked for again after ``SNAPSHOT_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._core._codec import Control
from .._core._errors import LogFullError
from .._core._log import ReplicaState
from .._core._machine import Applied
from ._backoff import FULL_BACKOFF_MAX
from ._durable import DurableLogError
from ._fork import BacklogCopier

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("SNAPSHOT_TIMEOUT", "Joining", "snapshot_path", "write_snapshot")

log = logging.getLogger("dominoes.replica")

#: How long a joining replica waits for its snapshot before asking again.
SNAPSHOT_TIMEOUT: Final = 2.0


def snapshot_path(run_dir: Path, joiner: int, seq: int, writer: int) -> Path:
    """Where ``writer``'s snapshot asked by ``joiner`` at entry ``seq`` is written."""
    return run_dir / f"snapshot-{joiner}-{seq}-{writer}.bin"


def write_snapshot(replica: Replica, applied: Applied) -> None:
    """The source's side, inline: write the snapshot ``applied`` carries, wake the joiner."""
    entry = applied.entry
    assert isinstance(entry, Control)
    assert applied.snapshot is not None
    joiner = int(entry.arg[1])
    path = snapshot_path(replica.run_dir, joiner, entry.seq, replica.index)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(applied.snapshot)
    os.replace(tmp, path)
    replica.wakeups.signal(joiner)
    log.info(
        "replica %d: wrote a snapshot at seq %d for replica %d", replica.index, entry.seq, joiner
    )


class Joining:
    """One replica's join: waiting for its snapshot, then catching up."""

    def __init__(self, replica: Replica) -> None:
        self._r = replica
        #: (source, request seq) while waiting for the snapshot, else None
        self.wait: tuple[int, int] | None = None
        #: the other replicas writing snapshots for this one's partitions
        self.extras: tuple[int, ...] = ()
        #: the snapshot is restored; the backlog is being applied
        self.catching_up = False
        #: entries copied out of the ring: (seq, kind, nslots, payload)
        self.backlog: list[tuple[int, int, int, bytes]] = []
        #: how many at its head are applied already (catching up)
        self._done = 0
        #: the next seq to copy
        self.copied = 0
        self._asked = 0.0
        #: set once the replica is live
        self.joined = asyncio.Event()

    @property
    def waiting(self) -> bool:
        """Waiting for the snapshot (nothing is applied yet)."""
        return self.wait is not None

    @property
    def active(self) -> bool:
        """Joining: waiting for the snapshot or catching up."""
        return self.wait is not None or self.catching_up

    def ask(self) -> None:
        """Append a request for a snapshot (the log being full, retry a while)."""
        r = self._r
        source, payload, self.copied, self.extras = r.core.ask_snapshot(now=time.time())
        self.backlog = []
        seq = 0
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT
        while not seq:
            seq = r.append_payload(payload)
            if not seq and time.monotonic() > deadline:
                raise LogFullError("log full while asking for a snapshot")
            if not seq:
                time.sleep(FULL_BACKOFF_MAX)
        self.wait = (source, seq)
        self._asked = time.monotonic()
        log.info(
            "replica %d: asked replica %d for a snapshot at seq %d%s",
            r.index,
            source,
            seq,
            f" (and replicas {list(self.extras)} for partitions)" if self.extras else "",
        )

    def copy(self) -> None:
        """Copy what the log published since the last copy into the backlog."""
        self.copied = self._r.core.copy_backlog(self.backlog, self.copied)

    def check(self) -> bool:
        """Restore the snapshot if it arrived (True); ask again if it is overdue."""
        r = self._r
        assert self.wait is not None
        source, seq = self.wait
        got: list[bytes] = []
        paths = [snapshot_path(r.run_dir, r.index, seq, w) for w in (source, *self.extras)]
        for writer, path in zip((source, *self.extras), paths, strict=True):
            try:
                got.append(path.read_bytes())
            except FileNotFoundError:
                writing = path.with_name(f".{path.name}.writing").exists()
                if writing and r.log.state(writer) == ReplicaState.LIVE:
                    return False  # a child of the writer is at it: a large state takes time
                if time.monotonic() - self._asked > SNAPSHOT_TIMEOUT:
                    log.warning(
                        "replica %d: no snapshot from replica %d after %.1fs, asking again",
                        r.index,
                        writer,
                        SNAPSHOT_TIMEOUT,
                    )
                    for done in paths:
                        done.unlink(missing_ok=True)
                    self.ask()
                return False
        for path in paths:
            path.unlink(missing_ok=True)
        self.copy()
        self._restore_while_copying(got[0], got[1:])
        for name, pid in r.core.machine.lost:
            log.error(
                "replica %d: partition %d of %s starts EMPTY: no live replica held a copy "
                "(copies=1 keeps one copy in memory; its data died with its holder; "
                "--durable keeps one on disk)",
                r.index,
                pid,
                name,
            )
        self.wait = None
        self.catching_up = True  # the drain applies the backlog, a batch at a time
        log.info("replica %d: restored the snapshot at seq %d", r.index, seq)
        return True

    def _restore_while_copying(self, data: bytes, more: list[bytes]) -> None:
        """Restore a joiner's snapshot while a forked child keeps copying the ring."""
        r = self._r
        copier = None
        if r.fork_snapshots:
            path = r.run_dir / f".backlog-{r.index}-{os.getpid()}"
            try:
                copier = BacklogCopier(r.core.copy_backlog, self.copied, path)
            except OSError as exc:
                log.warning("replica %d: no backlog copier (%s)", r.index, exc)
        try:
            r.core.restore_snapshot(data, recovery=True, more=more)
            if r.core.machine.lost and r.persist.partitioned:
                self._recover_lost()
        finally:
            if copier is not None:
                copied, self.copied = copier.finish()
                self.backlog.extend(copied)

    def _recover_lost(self) -> None:
        """``--durable``: rebuild the partitions no live replica held from the durable log."""
        r = self._r
        try:
            if r.persist.recover_lost(r.core.machine):
                r.core.enable_recovery()  # the recovery point holds them too
        except (DurableLogError, OSError, RuntimeError, ValueError) as exc:
            log.error(
                "replica %d: cannot rebuild its lost partitions from the durable log: %s",
                r.index,
                exc,
            )

    def catch_up(self, deliver: Callable[[Applied], None]) -> bool:
        """Apply a batch of the backlog (``deliver`` each outcome); True once live."""
        core = self._r.core
        self.copy()
        backlog = self.backlog
        end = self._done + core.batch
        for applied in core.apply_backlog(backlog[self._done : end]):
            deliver(applied)
        if end < len(backlog):
            # Drop the applied head once it is half the list, not every batch:
            # ``del backlog[:batch]`` moved the rest of a backlog of millions
            # of entries for each batch (quadratic).
            if end > len(backlog) // 2:
                del backlog[:end]
                end = 0
            self._done = end
            return False
        self.backlog = []
        self._done = 0
        core.go_live(self.copied)
        self.catching_up = False
        self.joined.set()
        log.info("replica %d: joined at seq %d", self._r.index, core.machine.cursor - 1)
        return True
