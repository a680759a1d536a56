"""The conformance suite against the ``memory`` backend (the ring in a bytearray)."""

from __future__ import annotations

import pytest

from dominoes._core._memory import MemoryLogFactory

from .suite import LogBackendSuite, Opened


class MemoryBackend:
    """Opens logs through ``MemoryLogFactory``, the ``memory`` entry of ``dominoes.logs``."""

    name = "memory"

    def __init__(self) -> None:
        self.factory = MemoryLogFactory()

    def open(self, *, capacity: int, slot_size: int, replicas: int) -> Opened:
        host = self.factory.create(
            capacity=capacity, slot_size=slot_size, replicas=replicas, max_entry_slots=None
        )
        assert host.handles() == []  # nothing to hand to another process
        return Opened(host=host.log, handle=host.handle, close=host.close)


class TestMemory(LogBackendSuite):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()
