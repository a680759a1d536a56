"""The blob store: entries too large for the ring, as files in the run directory.

Why
---
A ring slot holds at most ``max_entry_bytes`` (1,441,792 bytes with the
default log).  Growing the ring for rare large values would cost memory and
cache misses on every small entry.  So an entry over that limit is written
once, by its appender, to a 0600 file in the 0700 run directory, and the
ring carries a small ``KIND_BLOB`` entry naming it.  Every replica reads the
file when it applies the entry.  Small entries pay one length comparison.

Names are ``blob-<replica>-<pid>-<n>``.  The appender knows the seq of each
of its blobs and deletes a blob once every holding replica's cursor is past
it (``collect``, on the replica's sampling tick).  If the appender dies, the
supervisor deletes its ``blob-<replica>-<pid>-*`` files once every replica
is past the tail at its death.  A replica that stops deletes those every
replica is past (others may still be draining); the supervisor deletes
what is left as for a death, or when it exits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from ._fork import write_all

__all__ = ("FileBlobs",)

_NAME: Final = re.compile(rb"blob-\d+-\d+-\d+")


class FileBlobs:
    """``ReplicaCore.blobs`` for one replica process."""

    def __init__(self, run_dir: Path, index: int) -> None:
        self.run_dir = run_dir
        self._prefix = f"blob-{index}-{os.getpid()}-"
        self._next = 0
        #: (seq, path) of this replica's blobs still in the log, oldest first
        self._live: list[tuple[int, Path]] = []
        self.written = 0
        self.bytes_written = 0

    def put(self, data: bytes) -> bytes:
        name = f"{self._prefix}{self._next}"
        self._next += 1
        fd = os.open(self.run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        self.written += 1
        self.bytes_written += len(data)
        return name.encode()

    def get(self, ref: bytes) -> bytes:
        return self._path(ref).read_bytes()

    def _path(self, ref: bytes) -> Path:
        if not _NAME.fullmatch(ref):  # a reference is a bare name, never a path
            raise ValueError(f"not a blob reference: {ref[:64]!r}")
        return self.run_dir / ref.decode()

    def appended(self, ref: bytes, seq: int) -> None:
        self._live.append((seq, self.run_dir / ref.decode()))

    def discard(self, ref: bytes) -> None:
        self._path(ref).unlink(missing_ok=True)

    def collect(self, low: int) -> int:
        """Delete this replica's blobs below ``low`` (every holding cursor is past them)."""
        live = self._live
        n = 0
        while live and live[0][0] < low:
            live.pop(0)[1].unlink(missing_ok=True)
            n += 1
        return n
