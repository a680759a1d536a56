"""The memory-ordering interface: every shared word the log touches goes through here.

Theory of operation
-------------------
The log is a handful of 64-bit words and byte ranges in one buffer.  Readers and
writers in different processes agree on it only through five operations, and
the log code uses nothing else on a shared word:

===============  ============================================================
``load_acquire``  read a word; later reads cannot move before it
``store_release`` write a word; earlier writes cannot move after it
``store_seqcst``  write a word with a full barrier (the asleep-flag protocol)
``cas``           compare-and-swap, sequentially consistent; True if it won
``fetch_add``     atomic add, returning the previous value
``fence``         a full barrier
===============  ============================================================

Payload bytes are written with plain slice stores *before* the release store
that publishes them, and read *after* the acquire load that observed the
publication, so they need no atomics of their own.

:class:`PlainWords` implements the interface with ordinary ``struct`` access.
That is correct when a single thread drives every replica (``testing.Cluster``),
because then program order is the only order.  It is **not** correct across
processes: a probe measured plain stores reordered in 0.1-0.3 % of rounds of a
store->load litmus test.  The shared-memory runtime supplies an implementation
over the ``__atomic_*`` builtins with the same methods.
"""

from __future__ import annotations

import struct
from typing import Protocol

__all__ = ("PlainWords", "Words")

_U64 = struct.Struct("<Q")


class Words(Protocol):
    """Atomic access to aligned unsigned 64-bit words at byte offsets of one buffer."""

    def load_acquire(self, offset: int, /) -> int: ...
    def store_release(self, offset: int, value: int, /) -> None: ...
    def store_seqcst(self, offset: int, value: int, /) -> None: ...
    def cas(self, offset: int, expected: int, new: int, /) -> bool: ...
    def fetch_add(self, offset: int, delta: int, /) -> int: ...
    def fence(self) -> None: ...


class PlainWords:
    """Single-threaded :class:`Words` over any writable buffer (no real atomics)."""

    __slots__ = ("_buf", "_pack", "_unpack")

    def __init__(self, buf: bytearray | memoryview) -> None:
        view = memoryview(buf)
        if view.readonly:
            raise ValueError("the log needs a writable buffer")
        self._buf = view
        self._unpack = _U64.unpack_from
        self._pack = _U64.pack_into

    def load_acquire(self, offset: int, /) -> int:
        return self._unpack(self._buf, offset)[0]  # type: ignore[no-any-return]

    def store_release(self, offset: int, value: int, /) -> None:
        self._pack(self._buf, offset, value)

    store_seqcst = store_release

    def cas(self, offset: int, expected: int, new: int, /) -> bool:
        if self._unpack(self._buf, offset)[0] != expected:
            return False
        self._pack(self._buf, offset, new)
        return True

    def fetch_add(self, offset: int, delta: int, /) -> int:
        old: int = self._unpack(self._buf, offset)[0]
        self._pack(self._buf, offset, (old + delta) & 0xFFFF_FFFF_FFFF_FFFF)
        return old

    def fence(self) -> None:
        return None
