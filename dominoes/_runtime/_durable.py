"""The data directory of a durable service: segments, snapshots, recovery at start.

``dominoes run --durable DIR`` keeps, in ``DIR``:

* ``seg-<first seq>.log``: the log's entries, in order (format:
  ``dominoes._core._segment``), written by the log writer (``_writer``);
* ``snapshot-<cursor>.snap``: the replicated state at a log position, written
  atomically (a temporary file, fsync, rename, fsync of the directory);
* for a service with partitioned components, ``snapshot-<cursor>.r<i>.snap``
  instead: replica ``i``'s state, its partitions only, each replica on its
  own schedule; replica ``i`` restarts from its own newest one and replays
  the log after it (:func:`recover` with ``replicas``);
* ``LAYOUT``: ``replicated``, or ``partitioned <replicas>``: which of the two
  the directory holds, since a partitioned service's snapshots are only
  good for the same number of replicas (the placement follows it);
* ``LOCK``: held (``flock``) by the supervisor that serves from ``DIR``, so
  that two services never append to one log.

:class:`LogReader` is the one way to read the segments: in order, each
record checked, never changing a file; it stops before a torn last record
and says where it is.  :func:`recover` runs once, in the supervisor, before
anything starts: it picks the newest snapshot that checks out, reads every
record after it, truncates a torn tail (with a warning saying how many bytes)
and refuses a corrupt record or a missing segment with an error naming the
file and the offset.  Replicas then read (:class:`LogReader`) what it found,
each in its own process; ``dominoes replay`` reads the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .._core._errors import DominoesError
from .._core._segment import (
    KIND_POISON,
    SEGMENT_HEADER,
    Record,
    decode_snapshot,
    encode_snapshot,
    scan,
    segment_header,
    segment_name,
    snapshot_name,
)
from ._fork import write_all

__all__ = (
    "DEFAULT_SEGMENT_BYTES",
    "DurableLogError",
    "Layout",
    "LogReader",
    "Recovery",
    "Torn",
    "check_layout",
    "fsync_dir",
    "lock",
    "new_segment",
    "prune",
    "recover",
    "segments",
    "snapshots",
    "usable_snapshots",
    "write_snapshot",
)

log = logging.getLogger("dominoes.durable")

#: A segment is closed and the next one begun past this size.
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
#: Snapshots kept: the newest and the one before it (if the newest cannot be
#: read, the one before it and the segments after it still restore the state).
KEEP_SNAPSHOTS: Final = 2


class DurableLogError(DominoesError):
    """The data directory cannot be served from as it is (corrupt, incomplete, in use)."""


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` found in a data directory."""

    #: the snapshot to load, or None (replay from seq 1)
    snapshot: Path | None
    #: its cursor (1 without one): the first seq to replay
    start: int
    #: the seq after the last recorded entry: where the log goes on
    next_seq: int
    #: entries (records) to replay after the snapshot
    entries: int
    #: bytes cut from a torn last record (0: none)
    truncated: int
    #: entries from ``start`` on that poison marks name: apply them as poison entries
    poisoned: tuple[int, ...] = ()
    #: a partitioned service: each replica's own (snapshot or None, first seq
    #: to replay); ``start`` is the lowest of them and ``snapshot`` is None
    own: tuple[tuple[Path | None, int], ...] = ()

    def of(self, replica: int) -> tuple[Path | None, int]:
        """Where ``replica`` restarts: (its snapshot or None, the first seq to replay)."""
        return self.own[replica] if self.own else (self.snapshot, self.start)


def _numbered(data_dir: Path, prefix: str, suffix: str) -> list[tuple[int, Path]]:
    """``(number, path)`` of the files ``<prefix><number><suffix>``, in order."""
    out = []
    for p in data_dir.glob(f"{prefix}*{suffix}"):
        with contextlib.suppress(ValueError):
            out.append((int(p.name[len(prefix) : -len(suffix)]), p))
    return sorted(out)


def segments(data_dir: Path) -> list[tuple[int, Path]]:
    """``(first seq, path)`` of every segment, in order."""
    return _numbered(data_dir, "seg-", ".log")


def snapshots(data_dir: Path, replica: int | None = None) -> list[tuple[int, Path]]:
    """``(cursor, path)`` of every snapshot, oldest first (``replica``: that replica's
    own, in a partitioned service)."""
    return _numbered(data_dir, "snapshot-", ".snap" if replica is None else f".r{replica}.snap")


@dataclass(frozen=True)
class Layout:
    """What a data directory holds: one state, or each replica's partitions."""

    #: the number of replicas whose partitions it holds (None: replicated)
    replicas: int | None

    def __str__(self) -> str:
        return "replicated" if self.replicas is None else f"partitioned {self.replicas}"


def check_layout(data_dir: Path, layout: Layout) -> None:
    """Refuse to serve ``layout`` from a directory written for another one; else record it.

    A partitioned service's snapshots hold each replica's partitions, placed
    by the number of replicas: they cannot be restored by another number of
    replicas, nor by a service that replicates every component.
    """
    path = data_dir / "LAYOUT"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text:  # a new directory, or one of a version that did not write it
        partitioned = next(data_dir.glob("snapshot-*.r*.snap"), None) is not None
        if partitioned or (layout.replicas is not None and snapshots(data_dir)):
            were = "partitioned" if partitioned else "replicated"
            raise DurableLogError(
                f"{data_dir} holds the snapshots of a {were} service, which this one is not; "
                "give it another directory"
            )
        tmp = path.with_name(".LAYOUT.tmp")
        tmp.write_text(f"{layout}\n")
        os.replace(tmp, path)
        fsync_dir(data_dir)
        return
    if text != str(layout):
        if layout.replicas is not None and text.startswith("partitioned "):
            raise DurableLogError(
                f"{data_dir} holds the partitions of {text.split()[1]} replicas: a partitioned "
                f"service restarts with the same number (run it with --replicas "
                f"{text.split()[1]}, not {layout.replicas})"
            )
        raise DurableLogError(
            f"{data_dir} holds the log of a {text.split()[0]} service, and this one is "
            f"{str(layout).split()[0]}: run it as it was (--partition), or give it another "
            "directory"
        )


def lock(data_dir: Path) -> int:
    """Create ``data_dir`` if need be and hold its lock; the lock's fd (keep it open)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DurableLogError(f"{data_dir} is in use by another running service") from None
    return fd


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def usable_snapshots(
    data_dir: Path,
    *,
    newest: bool = True,
    until: int | None = None,
    warn: Callable[[str], None] | None = None,
    replica: int | None = None,
) -> Iterator[tuple[int, Path, bytes]]:
    """``(cursor, path, state)`` of each snapshot the log can go on from, newest
    (or oldest) first: it checks out, its name says its cursor, the segments
    reach back to it, and it is not past ``until``.  ``warn`` hears of those
    passed over.  ``replica``: that replica's own snapshots (partitioned)."""
    segs = segments(data_dir)
    first = segs[0][0] if segs else None
    found = snapshots(data_dir, replica)
    for cursor, path in reversed(found) if newest else found:
        if until is not None and cursor > until:
            continue
        try:
            got, state = decode_snapshot(path.read_bytes())
            if got != cursor:
                raise ValueError(f"it holds the state at seq {got}, its name says {cursor}")
        except (OSError, ValueError) as exc:
            if warn is not None:
                warn(f"snapshot {path} cannot be used ({exc}); trying another")
            continue
        if first is not None and first > cursor:
            if warn is not None:
                warn(f"snapshot {path} is older than the oldest segment; not usable")
            continue
        yield cursor, path, state


@dataclass(frozen=True)
class Torn:
    """A torn last record: a read stopped before it and left it as it is."""

    path: Path
    #: where the torn record starts in the file
    offset: int
    #: bytes from there to the end of the file (not read)
    size: int
    reason: str
    #: the seq the torn record would have had
    seq: int


class LogReader:
    """The records of a data directory, in order, each checked, without changing a file.

    It stops before a torn last record and keeps it in :attr:`torn` (whoever
    serves from the directory cuts it: :func:`recover`).  Poison marks are
    not given out: :attr:`poisoned` collects the seqs they name.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        #: the torn last record the last read stopped before (None: none)
        self.torn: Torn | None = None
        #: where the last read stopped: the seq after the last record it gave
        self.end: int | None = None
        #: the last read went to the end of the log (not stopped by ``until``)
        self.complete = False
        #: the seqs the poison marks read so far name
        self.poisoned: set[int] = set()

    def read(self, start: int, until: int | None = None) -> Iterator[Record]:
        """The records from ``start`` that end by ``until`` (their seqs, and every
        slot they span, are below it), in order.

        Raises :class:`DurableLogError` for a corrupt record, a torn record that
        is not the last one, a missing segment, or a log that starts after ``start``.
        """
        self.torn = None
        self.end = start
        self.complete = False
        segs = segments(self.data_dir)
        if not segs:
            self.complete = True
            return
        if segs[0][0] > start:
            raise DurableLogError(
                f"{segs[0][1]}: the log starts at seq {segs[0][0]}, after seq {start} where "
                f"the replay starts (a segment is missing, or a snapshot)"
            )
        expect: int | None = None
        for k, (first, path) in enumerate(segs):
            last = k == len(segs) - 1
            nxt = None if last else segs[k + 1][0]
            if expect is not None and first != expect:
                raise DurableLogError(
                    f"segment missing: {path.name} starts at seq {first}, the one before it "
                    f"ends at {expect}"
                )
            if nxt is not None and nxt <= start:  # wholly before the start: not read
                expect = nxt
                continue
            if until is not None and first >= until:
                return
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise DurableLogError(
                    f"{path} was deleted while the directory was read (a running service "
                    f"deletes segments a new snapshot covers); read it again"
                ) from None
            if last and len(data) < SEGMENT_HEADER.size:  # just created, header not written
                self.torn = Torn(path, 0, len(data), "no complete segment header", first)
                self.complete = True
                return
            got = scan(data, first=first)
            problem = got.problem
            if problem is not None and (problem.kind == "corrupt" or not last):
                raise DurableLogError(
                    f"corrupt log record in {path} at offset {problem.offset}: {problem.reason}"
                )
            for record in got.records:
                if record.kind == KIND_POISON:  # a mark, no position
                    self.poisoned.add(record.seq)
                    continue
                if until is not None and record.seq + record.nslots > until:
                    return
                if record.seq + record.nslots <= start:
                    continue
                if record.seq < start:
                    raise DurableLogError(
                        f"{path}: seq {start}, where the read starts, is inside the record "
                        f"at seq {record.seq} ({record.nslots} slots)"
                    )
                self.end = record.seq + record.nslots
                yield record
            if problem is not None:
                size = len(data) - got.end
                self.torn = Torn(path, problem.offset, size, problem.reason, got.next_seq)
            expect = got.next_seq
        self.complete = True


def recover(data_dir: Path, replicas: int | None = None) -> Recovery:
    """Check ``data_dir`` before serving from it; cut a torn tail (see the module doc).

    ``replicas``: a partitioned service's; each replica restarts from its own
    newest usable snapshot (:attr:`Recovery.own`).
    """
    own: list[tuple[Path | None, int]] = []
    segs = segments(data_dir)
    for replica in [None] if replicas is None else range(replicas):
        snap = next(usable_snapshots(data_dir, warn=log.warning, replica=replica), None)
        mine = (snap[1], snap[0]) if snap is not None else (None, 1)
        if segs and segs[0][0] > mine[1]:
            whose = "" if replica is None else f" of replica {replica}'s partitions"
            raise DurableLogError(
                f"{segs[0][1]}: the log starts at seq {segs[0][0]}, but no usable snapshot"
                f"{whose} holds the state before it (is a segment or a snapshot missing?)"
            )
        own.append(mine)
    path, start = own[0] if replicas is None else (None, min(s for _, s in own))
    reader = LogReader(data_dir)
    entries = sum(1 for _ in reader.read(start))
    truncated = 0
    torn = reader.torn
    if torn is not None:
        truncated = torn.size
        if torn.offset == 0:  # a segment created, its header never written: it holds nothing
            log.warning("removing %s: %d bytes, no complete header", torn.path, torn.size)
            torn.path.unlink()
        else:
            log.warning(
                "torn last record in %s at offset %d: truncating %d bytes (%s)",
                torn.path,
                torn.offset,
                torn.size,
                torn.reason,
            )
            with open(torn.path, "r+b") as f:
                f.truncate(torn.offset)
                f.flush()
                os.fsync(f.fileno())
    assert reader.end is not None
    poisoned = tuple(sorted(s for s in reader.poisoned if s >= start))
    each = () if replicas is None else tuple(own)
    return Recovery(path, start, reader.end, entries, truncated, poisoned, each)


def write_snapshot(data_dir: Path, cursor: int, state: bytes, replica: int | None = None) -> Path:
    """Write a snapshot atomically: a temporary file, fsync, rename, fsync of the directory.

    ``replica``: one replica's partitions (a partitioned service).
    """
    path = data_dir / snapshot_name(cursor, replica)
    tmp = data_dir / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, encode_snapshot(cursor, state))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(data_dir)
    return path


def prune(
    data_dir: Path, keep: int = KEEP_SNAPSHOTS, replicas: int | None = None, replica: int = 0
) -> tuple[int, int]:
    """Delete all but the newest ``keep`` snapshots, and the segments wholly before
    the oldest kept one; ``(snapshots, segments)`` deleted.

    ``replicas``: a partitioned service's.  ``replica``'s own snapshots are
    pruned, and a segment goes once every replica's oldest kept snapshot
    is past it (none while a replica has no snapshot: it replays from seq 1).
    """
    mine = None if replicas is None else replica
    snaps = snapshots(data_dir, mine)
    gone_snaps = 0
    for _, path in snaps[:-keep] if len(snaps) > keep else []:
        path.unlink(missing_ok=True)
        gone_snaps += 1
    kept = [snapshots(data_dir, r) for r in ([None] if replicas is None else range(replicas))]
    if not all(kept):
        if gone_snaps:
            fsync_dir(data_dir)
        return gone_snaps, 0
    covered = min(k[0][0] for k in kept)
    segs = segments(data_dir)
    gone_segs = 0
    # segment k holds [first_k, first_{k+1}): wholly covered when first_{k+1} <= covered
    for k in range(len(segs) - 1):
        if segs[k + 1][0] <= covered:
            segs[k][1].unlink(missing_ok=True)
            gone_segs += 1
    if gone_snaps or gone_segs:
        fsync_dir(data_dir)
    return gone_snaps, gone_segs


def new_segment(data_dir: Path, first: int) -> tuple[int, int]:
    """Create the segment starting at ``first`` (header written); ``(fd, size)``."""
    path = data_dir / segment_name(first)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, segment_header(first))
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    fsync_dir(data_dir)
    return fd, SEGMENT_HEADER.size
