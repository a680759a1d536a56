"""Statistics structs: what the monitor, ``dominoes stats`` and ``dominoes top`` read.

Every long-lived runtime object has a ``statistics()`` method returning one of
these frozen structs.  They are built on demand from the objects' own
counters: there is no second bookkeeping to keep in step.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .._core._log import LogStatistics
from .._core._partition import Held
from .._core._replica import ReplicaStatistics

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = (
    "ComponentSummary",
    "IngressCounters",
    "Rates",
    "component_sizes",
    "runtime_statistics",
    "thread_usage",
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
    #: reads of partitions held by other replicas, sent through the log
    forwarded_reads: int
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


class IngressCounters:
    """Mutable counters the ingress adapters bump (read through ``statistics()``)."""

    __slots__ = (
        "replies_sent",
        "tcp_accepted",
        "tcp_connections",
        "udp_dropped_full",
        "udp_received",
        "udp_refused",
    )

    def __init__(self) -> None:
        self.tcp_connections = 0
        self.tcp_accepted = 0
        self.udp_received = 0
        self.udp_dropped_full = 0
        self.udp_refused = 0
        self.replies_sent = 0


class Rates:
    """Entries and queries per second, from counters sampled once a second or so."""

    __slots__ = ("_at", "_entries", "_queries", "entries_per_s", "queries_per_s")

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._entries = 0
        self._queries = 0
        self.entries_per_s = 0.0
        self.queries_per_s = 0.0

    def update(self, entries: int, queries: int, now: float) -> None:
        span = now - self._at
        if span < 1.0:
            return
        self.entries_per_s = (entries - self._entries) / span
        self.queries_per_s = (queries - self._queries) / span
        self._at, self._entries, self._queries = now, entries, queries


def thread_usage() -> resource.struct_rusage:
    """This thread's CPU time and context switches (one system call, ~0.5 us)."""
    return resource.getrusage(resource.RUSAGE_THREAD)


def component_sizes(component: Any) -> dict[str, int]:
    """Items per sized attribute of a component's replicated state."""
    out: dict[str, int] = {}
    if isinstance(component, Held):  # a partitioned component: the held parts' sum
        for part in component.parts.values():
            for key, n in component_sizes(part).items():
                out[key] = out.get(key, 0) + n
        return out
    for key, value in component.snapshot().items():
        if hasattr(value, "__len__") and not isinstance(value, str | bytes):
            out[key] = len(value)
    return out


def runtime_statistics(replica: Replica) -> RuntimeStatistics:
    """A replica's counters, as one frozen struct (``Replica.statistics``)."""
    core = replica.core.statistics()
    tail = replica.log.tail
    i = replica.ingress
    return RuntimeStatistics(
        index=replica.index,
        pid=os.getpid(),
        cpu=replica.cpu,
        loop=replica.loop_name,
        state="joining" if replica.joining.active else "live",
        applied_seq=core.cursor - 1,
        tail=tail,
        lag=max(0, tail - core.cursor),
        entries_per_s=replica.rates.entries_per_s,
        queries=replica.queries,
        queries_per_s=replica.rates.queries_per_s,
        forwarded_reads=replica.forwarded_reads,
        effects_run=replica.effects_run,
        effect_errors=replica.effect_errors,
        effect_stalls=replica.effect_stalls,
        loop_lag_ms=replica.loop_lag * 1000,
        loop_lag_max_ms=replica.loop_lag_max * 1000,
        wakeups_sent=replica.wakeups_sent,
        group_commits=replica.core.group_commits,
        gc_threshold=gc.get_threshold(),
        gc_frozen=gc.get_freeze_count(),
        gc_collections=tuple(s["collections"] for s in gc.get_stats()),
        core=core,
        ingress=IngressStatistics(
            tcp_connections=i.tcp_connections,
            tcp_accepted=i.tcp_accepted,
            udp_received=i.udp_received,
            udp_dropped_full=i.udp_dropped_full,
            udp_refused=i.udp_refused,
            replies_sent=i.replies_sent,
        ),
    )
