"""The raw log and the replica driver, for experts and for new runtimes.

Nothing here is needed to write a service.  It is what ``testing.Cluster`` and
the multi-process runtime are built from: a :class:`Log` laid out in any
writable buffer, the :class:`Words` interface its atomics go through, the
entry codec, and :class:`ReplicaCore`, which applies the log to a
:class:`StateMachine`.

The multi-process runtime's own pieces are here too, for benchmarks and for
runtimes built on it: :class:`SharedLog` (a log in a sealed memfd, created by a
supervisor and attached by fd in other processes), :class:`AtomicWords` (the C
extension's cross-process atomics over any buffer), and the defaults a replica
runs with: ``DEFAULT_CAPACITY`` (slots in the ring), ``DEFAULT_BATCH`` (entries
applied per poll) and ``SAFETY_TICK`` (seconds between re-checks of the log
while asleep).

The log-backend protocols are here as well (:class:`LogBackend`,
:class:`LogHost`, :class:`LogFactory`; docs/design/log-backend.md), with the
in-process ``memory`` backend (:class:`MemoryLogHost`) and the wake-ups a
runtime ``Replica`` needs (:class:`EventfdWakeups` across processes,
:class:`LoopWakeups` for replicas sharing one event loop), and the one
back-off for a full log (:func:`when_room`, :class:`Backoff`).
"""

from __future__ import annotations

from ._core._backend import LogBackend as LogBackend
from ._core._backend import LogFactory as LogFactory
from ._core._backend import LogHost as LogHost
from ._core._backend import SupervisedLog as SupervisedLog
from ._core._codec import Batch as Batch
from ._core._codec import Call as Call
from ._core._codec import Control as Control
from ._core._codec import Entry as Entry
from ._core._codec import Fire as Fire
from ._core._codec import decode as decode
from ._core._codec import encode as encode
from ._core._errors import ApplyTimeout as ApplyTimeout
from ._core._errors import LayoutError as LayoutError
from ._core._log import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._core._log import KIND_ENTRY as KIND_ENTRY
from ._core._log import KIND_NOOP as KIND_NOOP
from ._core._log import Log as Log
from ._core._log import LogStatistics as LogStatistics
from ._core._log import ReplicaState as ReplicaState
from ._core._machine import Applied as Applied
from ._core._machine import StateMachine as StateMachine
from ._core._memory import MemoryLogHost as MemoryLogHost
from ._core._registry import Binding as Binding
from ._core._registry import Registry as Registry
from ._core._registry import dispatch as dispatch
from ._core._replica import DEFAULT_BATCH as DEFAULT_BATCH
from ._core._replica import ReplicaCore as ReplicaCore
from ._core._replica import ReplicaStatistics as ReplicaStatistics
from ._core._words import PlainWords as PlainWords
from ._core._words import Words as Words
from ._runtime._atomics import AtomicWords as AtomicWords
from ._runtime._backoff import FULL_BACKOFF_MAX as FULL_BACKOFF_MAX
from ._runtime._backoff import FULL_BACKOFF_MIN as FULL_BACKOFF_MIN
from ._runtime._backoff import Backoff as Backoff
from ._runtime._backoff import when_room as when_room
from ._runtime._replica import SAFETY_TICK as SAFETY_TICK
from ._runtime._shm import SharedLog as SharedLog
from ._runtime._wakeups import EventfdWakeups as EventfdWakeups
from ._runtime._wakeups import LoopWakeups as LoopWakeups
from ._runtime._wakeups import Wakeups as Wakeups
from ._runtime._wakeups import wake_sleepers as wake_sleepers

__all__ = (
    "DEFAULT_BATCH",
    "DEFAULT_CAPACITY",
    "FULL_BACKOFF_MAX",
    "FULL_BACKOFF_MIN",
    "KIND_ENTRY",
    "KIND_NOOP",
    "SAFETY_TICK",
    "Applied",
    "ApplyTimeout",
    "AtomicWords",
    "Backoff",
    "Batch",
    "Binding",
    "Call",
    "Control",
    "Entry",
    "EventfdWakeups",
    "Fire",
    "LayoutError",
    "Log",
    "LogBackend",
    "LogFactory",
    "LogHost",
    "LogStatistics",
    "LoopWakeups",
    "MemoryLogHost",
    "PlainWords",
    "Registry",
    "ReplicaCore",
    "ReplicaState",
    "ReplicaStatistics",
    "SharedLog",
    "StateMachine",
    "SupervisedLog",
    "Wakeups",
    "Words",
    "decode",
    "dispatch",
    "encode",
    "wake_sleepers",
    "when_room",
)
