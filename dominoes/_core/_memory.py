"""The ``memory`` log backend: the ring in a ``bytearray``, for one thread.

The same :class:`~._log.Log` the ``shm`` backend maps from a memfd, laid out
in ordinary memory with plain loads and stores (:class:`~._words.PlainWords`).
Every participant must run in one thread: ``testing.Cluster`` steps its
replicas explicitly, and runtime ``Replica`` objects sharing one event loop
(with ``LoopWakeups``) take turns.  Nothing here is atomic across threads.
"""

from __future__ import annotations

from ._log import DEFAULT_CAPACITY, DEFAULT_SLOT_SIZE, Log
from ._words import PlainWords

__all__ = ("MemoryLogFactory", "MemoryLogHost")


class MemoryLogHost:
    """One in-memory log; ``handle()`` gives each replica its own handle."""

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        slot_size: int = DEFAULT_SLOT_SIZE,
        replicas: int = 1,
        max_entry_slots: int | None = None,
        first: int = 1,
    ) -> None:
        self._buf = bytearray(Log.size_for(capacity, slot_size, replicas))
        self._words = PlainWords(self._buf)
        #: the host's own handle (membership, statistics)
        self.log = Log.create(
            self._buf,
            self._words,
            capacity=capacity,
            slot_size=slot_size,
            max_replicas=replicas,
            max_entry_slots=max_entry_slots,
            first=first,
        )

    def attach(self, handles: list[int]) -> MemoryLogHost:
        raise ValueError("the memory log lives in one process: no other process can attach")

    def handle(self) -> Log:
        """A new participant's handle (each keeps its own cached reserve limit)."""
        return Log(self._buf, self._words)

    def handles(self) -> list[int]:
        return []  # nothing to pass to another process: there is none

    def close(self) -> None:
        self.log.release()


class MemoryLogFactory:
    """The ``memory`` entry of the ``dominoes.logs`` group (one process only)."""

    @property
    def name(self) -> str:
        return "memory"

    def create(
        self,
        *,
        capacity: int,
        slot_size: int,
        replicas: int,
        max_entry_slots: int | None,
        first: int = 1,
    ) -> MemoryLogHost:
        return MemoryLogHost(
            capacity=capacity,
            slot_size=slot_size,
            replicas=replicas,
            max_entry_slots=max_entry_slots,
            first=first,
        )

    def attach(self, handles: list[int]) -> MemoryLogHost:
        raise ValueError("the memory log lives in one process: no other process can attach")
