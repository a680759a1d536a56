"""Type stub for the ``dominoes._runtime._atomics`` C extension."""

from types import TracebackType
from typing import Final, Literal, Self, final

from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

#: Bytes per word; every offset is a multiple of it.
WORD: Final = 8
#: The log layout version ``AtomicWords.ring`` knows (``dominoes._core._log.LAYOUT_VERSION``).
RING_LAYOUT: Final = 2

@final
class Ring:
    """The log's hot operations over an ``AtomicWords`` buffer (see ``AtomicWords.ring``).

    Each method does, in one C call, the word operations of the pure-Python
    ``Log`` method it replaces, in the same order with the same orderings.
    """

    @property
    def released(self) -> bool: ...
    def append(self, replica: int, limit: int, payload: Buffer, kind: int, /) -> int:
        """Reserve, write and publish ``payload`` as ``replica`` (``Log.try_append``).

        Returns its seq, or 0 if the entry would end past ``limit`` (nothing
        reserved; refresh the limit from the cursors and call again).  Raises
        ``IndexError`` for a replica out of range and ``ValueError`` for an
        entry larger than ``max_entry_slots`` slots.
        """
    def read(self, seq: int, /) -> tuple[int, int, bytes] | None:
        """``(kind, nslots, payload copy)`` of the entry at ``seq``, or None if unpublished."""
    def published(self, seq: int, /) -> bool: ...
    def claim(self, seq: int, replica: int, /) -> bool:
        """Strong seq_cst CAS of ``seq``'s claim word from 0 to ``replica + 1``."""
    def sleepers(self, count: int, /) -> list[int]:
        """A full fence, then the replicas among the first ``count`` whose asleep flag is set."""

@final
class AtomicWords:
    """Cross-process atomic access to aligned u64 words at byte offsets of a buffer."""

    def __new__(cls, buffer: Buffer) -> Self: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def released(self) -> bool: ...
    def load_acquire(self, offset: int, /) -> int: ...
    def store_release(self, offset: int, value: int, /) -> None: ...
    def store_seqcst(self, offset: int, value: int, /) -> None: ...
    def cas(self, offset: int, expected: int, new: int, /) -> bool: ...
    def fetch_add(self, offset: int, delta: int, /) -> int: ...
    def fence(self) -> None: ...
    def ring(
        self,
        layout: int,
        slots_offset: int,
        capacity: int,
        slot_size: int,
        max_entry_slots: int,
        tail_offset: int,
        lines_offset: int,
        max_replicas: int,
        /,
    ) -> Ring:
        """A :class:`Ring` for a log of this shape in the buffer; ValueError if it does not fit."""
    def release(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Literal[False]: ...
