"""Test helpers: run N replicas in one process and step them explicitly.

``Cluster(service, replicas=3)`` is the in-process counterpart of ``dominoes
run``: the same log, state machine and replica driver (``ReplicaCore``), over a
``bytearray`` instead of shared memory, stepped by the test instead of event
loops.  ``LoopCluster(service, replicas=2)`` runs the runtime replicas on the
test's own event loop instead, to test a service's ASGI app per replica with
``httpx.ASGITransport``.
"""

from __future__ import annotations

from ._cluster import Cluster as Cluster
from ._cluster import ClusterReplica as ClusterReplica
from ._cluster import DivergenceError as DivergenceError
from ._cluster import Pending as Pending
from ._cluster import ReplicaDeadError as ReplicaDeadError
from ._runtime._loopcluster import LoopCluster as LoopCluster

__all__ = (
    "Cluster",
    "ClusterReplica",
    "DivergenceError",
    "LoopCluster",
    "Pending",
    "ReplicaDeadError",
)
