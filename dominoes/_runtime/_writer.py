"""The log writer: ``python -m dominoes._runtime._writer CONFIG_JSON``.

One process per durable service copies the shared ring, in seq order, into
segment files (``_durable``, format in ``dominoes._core._segment``), off the
replicas' hot path.  It holds the ring like a replica does: it joins a line
of its own (the one after the replicas), and its cursor is the next seq it
has not written, so the ring never reuses a slot before the writer has taken
it (invariant 4 holds for the file too).  It never applies an entry.

What it publishes on the log's durability line (``D_*`` in ``_layout``):

``D_ACKED``
    every seq below it may be acknowledged.  Under ``always`` that is what
    an fsync covers; under ``everysec`` and ``no`` what ``write`` has handed
    to the kernel (a process crash loses none of it, a power failure at most
    the last second under ``everysec``).  Replicas hold the replies (and the
    owner's effects) of entries at or above it, and the writer wakes them
    when it moves.
``D_SYNCED``
    every seq below it is fsynced.
``D_ERROR``
    the errno of a failed write or fsync.  Nothing is skipped: the writer
    cuts the file back to its last whole record and tries again every
    ``RETRY_EVERY`` seconds, holding the ring; replicas refuse new updates
    with a clear error meanwhile, and what was in flight is acknowledged once
    the disk takes it.

Group commit comes for free: each round writes every entry published since
the last one with one ``write`` and, under ``always``, one ``fdatasync``.
Under ``everysec`` a thread of its own fsyncs once a second, so a slow disk
never holds up a round.

It sleeps like a replica (the asleep flag, then a last look), woken by
producers after they publish (its eventfd is one of theirs) and by a replica
that holds replies for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Final

import msgspec

from .._core._layout import (
    D_ACKED,
    D_ERROR,
    D_SYNCED,
    FSYNC_POLICIES,
    KIND_BLOB,
    KIND_ENTRY,
)
from .._core._log import Log
from .._core._segment import KIND_POISON, encode_record, scan, segment_name
from ._durable import DEFAULT_SEGMENT_BYTES, fsync_dir, new_segment, segments
from ._fork import write_all
from ._pdeath import die_with_parent
from ._shm import SharedLog
from ._wakeups import EventfdWakeups

__all__ = ("LogWriter", "WriterConfig")

log = logging.getLogger("dominoes.writer")

#: Bytes of records gathered into one ``write`` (a round may make several).
WRITE_MAX: Final = 1 << 20
#: Seconds between retries after a failed write (a full disk).
RETRY_EVERY: Final = 0.1
#: Seconds an idle writer sleeps before looking at the ring on its own.
IDLE_TICK: Final = 0.05
#: ``everysec``: the most seconds between fsyncs of written data.
FSYNC_EVERY: Final = 1.0


class WriterConfig(msgspec.Struct, kw_only=True):
    data_dir: str
    run_dir: str
    policy: str
    line: int
    replicas: int
    log_fd: int
    wake_fds: list[int]
    ready_fd: int
    supervisor_pid: int
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    log_level: str = "WARNING"
    #: a file to append ``path size`` to after every fsync (the power-loss
    #: tests cut each segment back to its last fsynced size); empty: none
    fsync_trace: str = ""


class LogWriter:
    """Copies the ring to segment files; see the module doc."""

    def __init__(
        self,
        log: Log,
        *,
        line: int,
        replicas: int,
        wakeups: EventfdWakeups,
        data_dir: Path,
        run_dir: Path,
        policy: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync_trace: str = "",
    ) -> None:
        if policy not in FSYNC_POLICIES:
            raise ValueError(f"unknown fsync policy {policy!r}")
        self.log = log
        self.line = line
        self.replicas = replicas
        self.wakeups = wakeups
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.policy = policy
        self.segment_bytes = segment_bytes
        self._trace = fsync_trace
        self.fd = -1
        self.first = 0  # the current segment's first seq
        self.offset = 0  # bytes of whole records in it
        self.written = 0  # the seq after the last record written
        self.synced = 0  # the seq after the last record fsynced
        self.acked = 0  # what D_ACKED says
        self.poisoned = 0  # the last poison verdict marked in the file (a repeat is harmless)
        self.error = 0
        self.stopping = False
        self._sync_lock = threading.Lock()
        self._sync_wanted = threading.Event()
        self._sync_thread: threading.Thread | None = None

    # --- start ---------------------------------------------------------------------------

    def open(self) -> None:
        """Continue the newest segment (cut back to its last whole record), or begin one."""
        cursor = self.log.cursor(self.line)
        segs = segments(self.data_dir)
        if segs:
            first, path = segs[-1]
            data = path.read_bytes()
            got = scan(data, first=first, keep=False)
            if got.problem is not None:  # a round cut short by a crash of the writer alone
                log.warning(
                    "log writer: cutting %s back to offset %d (%d bytes of a torn record)",
                    path,
                    got.end,
                    len(data) - got.end,
                )
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            os.ftruncate(self.fd, got.end)
            os.lseek(self.fd, got.end, os.SEEK_SET)
            # What an earlier writer wrote may not be on disk yet (it died before
            # its fsync): make it so before calling it synced.
            os.fdatasync(self.fd)
            self.first, self.offset, self.written = first, got.end, got.next_seq
            if self.written < cursor:
                raise RuntimeError(
                    f"the log file ends at seq {self.written} but the ring was written up "
                    f"to {cursor}: {self.data_dir} changed under the service"
                )
            if self.written > cursor:  # written, but the cursor had not moved yet
                self.log.advance(self.line, self.written)
        else:
            self.written = cursor
            self.fd, self.offset = new_segment(self.data_dir, cursor)
            self.first = cursor
        self.synced = self.written
        self.log.set_durability_word(D_SYNCED, self.written)
        self.log.set_durability_word(D_ACKED, self.written)
        self.acked = self.written
        if self.policy == "everysec":
            self._sync_thread = threading.Thread(
                target=self._sync_loop, name="dominoes-fsync", daemon=True
            )
            self._sync_thread.start()

    # --- one round ---------------------------------------------------------------------------

    def round(self) -> int:
        """Write every entry published since the last round; how many records (0: idle,
        or the disk refused them and :attr:`error` is set)."""
        n = self._write()
        if n < 0:
            return 0
        # Under always every round fsyncs; under everysec an error (perhaps a
        # failed fsync) clears only once an fsync succeeds.
        must_sync = self.policy == "always" or (self.error and self.policy == "everysec")
        if must_sync and self.synced < self.written and not self._sync():
            return 0
        acked = self.synced if self.policy == "always" else self.written
        if self.error:
            self._healthy()
        if acked > self.acked:
            self.acked = acked
            self.log.set_durability_word(D_ACKED, acked)
            # only the sleepers that hold a reply this releases
            for i in self.log.take_waiting(self.replicas, acked):
                self.wakeups.signal(i)
        if n and self.offset >= self.segment_bytes:
            self._roll()
        return n

    def _write(self) -> int:
        """Append the published entries as records (one ``write``); how many, -1 if it failed."""
        log, seq, parts, size, n = self.log, self.written, [], 0, 0
        read = log.read
        poisoned = log.poisoned
        if poisoned != self.poisoned:  # a poison verdict: mark it (see _segment)
            parts.append(encode_record(poisoned, 0, KIND_POISON, b""))
            size += len(parts[-1])
        while size < WRITE_MAX:
            got = read(seq)
            if got is None:
                break
            kind, nslots, payload = got
            if kind == KIND_BLOB:  # the file keeps the bytes, not the reference
                payload = (self.run_dir / payload.decode()).read_bytes()
                kind = KIND_ENTRY
            record = encode_record(seq, nslots, kind, payload)
            parts.append(record)
            size += len(record)
            seq += nslots
            n += 1
        if not parts:
            return 0
        data = b"".join(parts)
        try:
            write_all(self.fd, data)
        except OSError as exc:
            self._failed("write", exc)
            # cut back to the last whole record: the next round writes them again
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.offset)
                os.lseek(self.fd, self.offset, os.SEEK_SET)
            return -1
        self.offset += len(data)
        self.written = seq
        self.poisoned = poisoned
        log.advance(self.line, seq)  # the ring may reuse these slots now
        return n or 1

    def _sync(self) -> bool:
        """fdatasync what is written; False (and the error set) if it failed."""
        with self._sync_lock:
            upto, fd, offset, first = self.written, self.fd, self.offset, self.first
            try:
                os.fdatasync(fd)
            except OSError as exc:
                self._failed("fsync", exc)
                return False
            if upto > self.synced:
                self.synced = upto
                self.log.set_durability_word(D_SYNCED, upto)
            if self._trace:
                with open(self._trace, "a") as f:
                    f.write(f"{self.data_dir / segment_name(first)} {offset}\n")
        return True

    def _sync_loop(self) -> None:
        """``everysec``: fsync at least once a second while there is unsynced data."""
        while not self.stopping:
            self._sync_wanted.wait(FSYNC_EVERY)
            self._sync_wanted.clear()
            if self.written > self.synced and self.fd >= 0:
                self._sync()

    def _roll(self) -> None:
        """Close the full segment (fsynced unless the policy is ``no``) and begin the next."""
        if self.policy != "no":
            self._sync()
        with self._sync_lock:
            old = self.fd
            try:
                self.fd, self.offset = new_segment(self.data_dir, self.written)
            except OSError as exc:
                self.fd = old
                self._failed("a new segment", exc)
                return
            self.first = self.written
            os.close(old)

    def _failed(self, what: str, exc: OSError) -> None:
        """A write, an fsync or a new segment failed: say so (once), refuse updates
        until a round succeeds.  Called from the fsync thread too: it never
        touches the file (the main thread may be writing it)."""
        code = exc.errno or 1
        if code != self.error:
            log.error(
                "log writer: %s to %s failed: %s; updates are refused until it succeeds",
                what,
                self.data_dir,
                exc.strerror or exc,
            )
        self.error = code
        self.log.set_durability_word(D_ERROR, code)

    def _healthy(self) -> None:
        if self.error:
            log.warning("log writer: writing to %s again", self.data_dir)
            self.error = 0
            self.log.set_durability_word(D_ERROR, 0)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, wake_fd: int) -> None:
        """Write rounds until :meth:`stop`, sleeping on ``wake_fd`` when idle."""
        log = self.log
        poller = select.poll()
        poller.register(wake_fd, select.POLLIN)
        while not self.stopping:
            if self.round():
                continue
            if self.error:
                time.sleep(RETRY_EVERY)
                continue
            # Sleep: flag first (seq_cst), then look once more (as replicas do).
            log.set_asleep(self.line, True)
            if log.published(self.written):
                log.set_asleep(self.line, False)
                continue
            if poller.poll(IDLE_TICK * 1000):
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(wake_fd)
            log.set_asleep(self.line, False)

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        """Write what is left, fsync (every policy: a clean stop loses nothing), close."""
        self.stopping = True
        while self.round():
            pass
        if self._sync_thread is not None:
            self._sync_wanted.set()
            self._sync_thread.join()
            self._sync_thread = None
        if self.fd >= 0:
            self._sync()
            os.close(self.fd)
            self.fd = -1
            fsync_dir(self.data_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config = msgspec.json.decode(args[0].encode(), type=WriterConfig)
    die_with_parent(config.supervisor_pid)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(name)s[writer] %(levelname)s %(message)s"
    )
    shared = SharedLog.attach(config.log_fd)
    writer = LogWriter(
        shared.log(),
        line=config.line,
        replicas=config.replicas,
        wakeups=EventfdWakeups(config.wake_fds[: config.replicas]),
        data_dir=Path(config.data_dir),
        run_dir=Path(config.run_dir),
        policy=config.policy,
        segment_bytes=config.segment_bytes,
        fsync_trace=config.fsync_trace,
    )
    signal.signal(signal.SIGTERM, lambda *_: writer.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor orders the stop
    writer.open()
    os.write(config.ready_fd, b"R")
    os.close(config.ready_fd)
    try:
        writer.run(config.wake_fds[config.line])
    finally:
        writer.close()
        shared.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
