"""Statistics structs: what the monitor, ``dominoes stats`` and ``dominoes top`` read.

Every long-lived runtime object has a ``statistics()`` method returning one of
these frozen structs.  They are built on demand from the objects' own
counters: there is no second bookkeeping to keep in step.
"""

from __future__ import annotations

import msgspec

from .._core._log import LogStatistics
from .._core._replica import ReplicaStatistics

__all__ = (
    "ComponentSummary",
    "IngressStatistics",
    "LogStatistics",
    "RegistryStatistics",
    "ReplicaStatistics",
    "RuntimeStatistics",
)


class IngressStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One replica's ingress counters."""

    tcp_connections: int
    tcp_accepted: int
    udp_received: int
    udp_dropped_full: int
    udp_refused: int
    replies_sent: int


class ComponentSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A component and the size of its state (items per attribute)."""

    name: str
    cls: str
    sizes: dict[str, int]


class RegistryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The Cactus registry of one replica."""

    events: int
    bindings: int
    queries: int
    components: tuple[ComponentSummary, ...]


class RuntimeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One live replica, as ``dominoes stats`` and the monitor's ``replica`` show it."""

    index: int
    pid: int
    cpu: int | None
    loop: str
    state: str
    applied_seq: int
    tail: int
    lag: int
    entries_per_s: float
    queries: int
    queries_per_s: float
    effects_run: int
    effect_errors: int
    effect_stalls: int
    loop_lag_ms: float
    loop_lag_max_ms: float
    wakeups_sent: int
    group_commits: int
    #: the cyclic collector: thresholds, objects frozen at start-up, collections per generation
    gc_threshold: tuple[int, int, int]
    gc_frozen: int
    gc_collections: tuple[int, int, int]
    core: ReplicaStatistics
    ingress: IngressStatistics
