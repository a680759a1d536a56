"""The data directory of a durable service: segments, snapshots, recovery at start.

``dominoes run --durable DIR`` keeps, in ``DIR``:

* ``seg-<first seq>.log``: the log's entries, in order (format:
  ``dominoes._core._segment``), written by the log writer (``_writer``);
* ``snapshot-<cursor>.snap``: the replicated state at a log position, written
  atomically (a temporary file, fsync, rename, fsync of the directory);
* ``LOCK``: held (``flock``) by the supervisor that serves from ``DIR``, so
  that two services never append to one log.

:func:`recover` runs once, in the supervisor, before anything starts: it picks
the newest snapshot that checks out, checks every record after it, truncates a
torn tail (with a warning saying how many bytes) and refuses a corrupt record
or a missing segment with an error naming the file and the offset.  Replicas
then replay (:func:`replay`) what it found, each in its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
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
    "Recovery",
    "fsync_dir",
    "lock",
    "new_segment",
    "poison_marks",
    "prune",
    "recover",
    "replay",
    "segments",
    "snapshots",
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


def segments(data_dir: Path) -> list[tuple[int, Path]]:
    """``(first seq, path)`` of every segment, in order."""
    out = []
    for p in data_dir.glob("seg-*.log"):
        with contextlib.suppress(ValueError):
            out.append((int(p.name[4:-4]), p))
    return sorted(out)


def snapshots(data_dir: Path) -> list[tuple[int, Path]]:
    """``(cursor, path)`` of every snapshot, oldest first."""
    out = []
    for p in data_dir.glob("snapshot-*.snap"):
        with contextlib.suppress(ValueError):
            out.append((int(p.name[9:-5]), p))
    return sorted(out)


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


def _newest_snapshot(data_dir: Path, first_segment: int | None) -> tuple[Path | None, int]:
    """The newest snapshot that checks out and that the segments can continue from."""
    for cursor, path in reversed(snapshots(data_dir)):
        try:
            got, _ = decode_snapshot(path.read_bytes())
            if got != cursor:
                raise ValueError(f"it holds the state at {got}, its name says {cursor}")
        except (OSError, ValueError) as exc:
            log.warning("snapshot %s cannot be used (%s); trying an older one", path, exc)
            continue
        if first_segment is not None and first_segment > cursor:
            log.warning("snapshot %s is older than the oldest segment; not usable", path)
            continue
        return path, cursor
    return None, 1


def recover(data_dir: Path) -> Recovery:
    """Check ``data_dir`` before serving from it; truncate a torn tail (see the module doc)."""
    segs = segments(data_dir)
    # an empty segment file (a crash right after it was created) holds nothing
    while segs and segs[-1][1].stat().st_size < SEGMENT_HEADER.size:
        size = segs[-1][1].stat().st_size
        log.warning("removing %s: %d bytes, no complete header", segs[-1][1], size)
        segs.pop()[1].unlink()
    snap, start = _newest_snapshot(data_dir, segs[0][0] if segs else None)
    if not segs:
        return Recovery(snap, start, start, 0, 0)
    if segs[0][0] > start:
        raise DurableLogError(
            f"{segs[0][1]}: the log starts at seq {segs[0][0]}, but no usable snapshot holds "
            f"the state before it (is a segment or a snapshot missing?)"
        )
    expect: int | None = None
    entries = truncated = 0
    for k, (first, path) in enumerate(segs):
        last = k == len(segs) - 1
        if expect is not None and first != expect:
            raise DurableLogError(
                f"segment missing: {path.name} starts at seq {first}, the one before it "
                f"ends at {expect}"
            )
        data = path.read_bytes()
        got = scan(data, first=first, keep=False)
        problem = got.problem
        if problem is not None:
            where = f"{path} at offset {problem.offset}"
            if problem.kind == "corrupt" or not last:
                raise DurableLogError(
                    f"corrupt log record in {where}: {problem.reason}; the log is not "
                    f"replayed past it (restore the file, or truncate it there to drop "
                    f"everything after)"
                )
            truncated = len(data) - got.end
            log.warning(
                "torn last record in %s: truncating %d bytes (%s)", where, truncated, problem.reason
            )
            with open(path, "r+b") as f:
                f.truncate(got.end)
                f.flush()
                os.fsync(f.fileno())
        expect = got.next_seq
        if got.next_seq > start:
            entries += _count(data[: got.end], start)
    assert expect is not None
    return Recovery(snap, start, max(expect, start), entries, truncated)


def _count(data: bytes, start: int) -> int:
    return sum(1 for r in scan(data).records if r.seq >= start and r.kind != KIND_POISON)


def replay(data_dir: Path, start: int, until: int | None = None) -> Iterator[Record]:
    """The records from ``start`` (up to, not including, ``until``), in order, across segments.

    Run :func:`recover` first: a problem found here raises.
    """
    segs = segments(data_dir)
    for k, (first, path) in enumerate(segs):
        nxt = segs[k + 1][0] if k + 1 < len(segs) else None
        if nxt is not None and nxt <= start:
            continue
        if until is not None and first >= until:
            return
        got = scan(path.read_bytes(), first=first)
        if got.problem is not None and (got.problem.kind == "corrupt" or nxt is not None):
            raise DurableLogError(
                f"corrupt log record in {path} at offset {got.problem.offset}: {got.problem.reason}"
            )
        for record in got.records:
            if until is not None and record.seq >= until and record.kind != KIND_POISON:
                return
            if record.seq >= start or record.kind == KIND_POISON:
                yield record


def poison_marks(data_dir: Path, start: int = 1) -> set[int]:
    """The seqs (from ``start``) that poison marks name: apply those as poison entries."""
    return {r.seq for r in replay(data_dir, 1) if r.kind == KIND_POISON and r.seq >= start}


def write_snapshot(data_dir: Path, cursor: int, state: bytes) -> Path:
    """Write a snapshot atomically: a temporary file, fsync, rename, fsync of the directory."""
    path = data_dir / snapshot_name(cursor)
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


def prune(data_dir: Path, keep: int = KEEP_SNAPSHOTS) -> tuple[int, int]:
    """Delete all but the newest ``keep`` snapshots, and the segments wholly before
    the oldest kept one; ``(snapshots, segments)`` deleted."""
    snaps = snapshots(data_dir)
    gone_snaps = 0
    for _, path in snaps[:-keep] if len(snaps) > keep else []:
        path.unlink(missing_ok=True)
        gone_snaps += 1
    kept = snapshots(data_dir)
    if len(kept) < 1:
        return gone_snaps, 0
    covered = kept[0][0]
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
