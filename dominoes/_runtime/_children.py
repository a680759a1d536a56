"""Work a replica hands to forked children: recovery points, joiners' snapshots, digests.

Each costs time proportional to the whole state (encoding or hashing it).
A child forked at the right log position holds a copy-on-write image of the
state exactly there, does the work, and exits, while the replica goes on
applying entries (``_fork``).  A child that cannot be forked (no memory, no
pids) is no failure: the work is done inline instead, on the replica's time.
``close`` kills the children still running: their work is moot then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ._fork import fork_pipe, fork_write, read_all, watch_child
from ._joining import snapshot_path

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("Children",)

log = logging.getLogger("dominoes.replica")


class Children:
    """The forked children of one replica, and what they write."""

    def __init__(self, replica: Replica) -> None:
        self._r = replica
        #: children still running (their pids)
        self.pids: set[int] = set()
        #: children started (recovery points, snapshots, digests)
        self.background_snapshots = 0
        #: digest points skipped because the previous digest was still running
        self.digests_skipped = 0
        self._digesting = False
        #: the file of the current background recovery point
        self._recovery_path: Path | None = None

    def install(self) -> None:
        """Make the core and the machine hand snapshots and digests to children."""
        core = self._r.core
        core.snapshotter = self.start_checkpoint
        core.machine.snapshot_writer = self.join_snapshot
        core.machine.digest_writer = self.digest

    def close(self) -> None:
        """Remove the recovery point's file and kill the children still running."""
        if self._recovery_path is not None:
            self._recovery_path.unlink(missing_ok=True)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def start_checkpoint(self, cursor: int) -> bool:
        """``ReplicaCore.snapshotter``: write the recovery point at ``cursor`` from a child."""
        if self._r.loop is None or self._r.closed:
            return False
        path = self._r.run_dir / f"recovery-{self._r.index}-{cursor}.bin"
        try:
            pid = fork_write(self._r.core.machine.snapshot, path)
        except OSError as exc:  # no memory for a child (strict overcommit), no pids
            log.warning("replica %d: cannot fork for a recovery point: %s", self._r.index, exc)
            return False
        self.background_snapshots += 1
        self.watch(pid, lambda ok: self._checkpoint_written(cursor, path, ok))
        return True

    def _checkpoint_written(self, cursor: int, path: Path, ok: bool) -> None:
        if not ok or self._r.closed:
            if not self._r.closed:  # a child that outlived a clean stop is no failure
                log.warning("replica %d: recovery point at %d not written", self._r.index, cursor)
            self._r.core.checkpoint_failed(cursor)
            path.unlink(missing_ok=True)
            return
        old, self._recovery_path = self._recovery_path, path
        self._r.core.checkpoint_done(cursor, path.read_bytes)
        if old is not None and old != path:
            old.unlink(missing_ok=True)

    def watch(self, pid: int, done: Callable[[bool], None]) -> None:
        """Reap a forked child on this loop; ``close`` kills those still running."""
        assert self._r.loop is not None
        self.pids.add(pid)

        def exited(ok: bool) -> None:
            self.pids.discard(pid)
            done(ok)

        watch_child(self._r.loop, pid, exited)

    def join_snapshot(self, seq: int, joiner: int) -> bool:
        """``StateMachine.snapshot_writer``: a joiner's snapshot, written by a child.

        Called while the snapshot request (entry ``seq``) is being applied, so
        the child holds the state at exactly that log position.  The child
        wakes the joiner once the file is in place.
        """
        if self._r.loop is None:
            return False
        path = snapshot_path(self._r.run_dir, joiner, seq, self._r.index)
        # Tells the joiner that its snapshot is on its way, so it does not ask
        # again (and start another child) while a large state is encoded.
        marker = path.with_name(f".{path.name}.writing")
        marker.touch(mode=0o600)

        def wake() -> None:  # in the child, once the file is in place
            self._r.wakeups.signal(joiner)

        try:
            pid = fork_write(self._r.core.machine.snapshot, path, wake)
        except OSError as exc:
            marker.unlink(missing_ok=True)
            log.warning(
                "replica %d: cannot fork for a snapshot (%s); writing it inline", self._r.index, exc
            )
            return False
        self.background_snapshots += 1

        def written(ok: bool) -> None:
            marker.unlink(missing_ok=True)
            if ok:
                log.info(
                    "replica %d: wrote a snapshot at seq %d for replica %d",
                    self._r.index,
                    seq,
                    joiner,
                )
            else:
                log.error(
                    "replica %d: the snapshot at seq %d for replica %d failed",
                    self._r.index,
                    seq,
                    joiner,
                )

        self.watch(pid, written)
        return True

    def digest(self, seq: int) -> bool:
        """``StateMachine.digest_writer``: digest the state at ``seq`` in a child.

        Hashing the whole state takes time proportional to its size; a child
        holding the state as it was at ``seq`` does it while the replica goes
        on.  The result comes back through a pipe; the report is appended then.
        """
        loop = self._r.loop
        if loop is None or self._r.closed:
            return False
        if self._digesting:
            # The previous digest is still being computed (a large state, a
            # short period): skip this point rather than pile up children.
            # Reports of it from other replicas are then not compared here.
            self.digests_skipped += 1
            loop.call_soon(self._r.digest_done, seq, None)
            return True
        machine = self._r.core.machine
        try:
            pid, fd = fork_pipe(lambda: msgspec.json.encode(machine.digest()))
        except OSError as exc:
            log.warning(
                "replica %d: cannot fork for a digest (%s); digesting inline", self._r.index, exc
            )
            return False
        self.background_snapshots += 1

        self._digesting = True

        def done(ok: bool) -> None:
            self._digesting = False
            data = read_all(fd)
            digest = msgspec.json.decode(data, type=dict[str, str]) if ok and data else None
            if digest is None:
                log.warning("replica %d: the digest at seq %d failed", self._r.index, seq)
            self._r.digest_done(seq, digest)

        self.watch(pid, done)
        return True
