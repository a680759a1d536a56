"""dominoes: multi-core asyncio services whose state is replicated on every core.

Every replica holds the whole state and applies one totally ordered log; only
the owner of an entry performs its effects.  See ``docs/`` for the tutorial.
"""

from __future__ import annotations

from ._core._codec import Mode as Mode
from ._core._component import Component as Component
from ._core._component import EventRef as EventRef
from ._core._component import on as on
from ._core._component import query as query
from ._core._component import update as update
from ._core._context import Context as Context
from ._core._errors import ApplySuspendedError as ApplySuspendedError
from ._core._errors import DominoesError as DominoesError
from ._core._errors import DurabilityError as DurabilityError
from ._core._errors import EntryTooLargeError as EntryTooLargeError
from ._core._errors import LogFullError as LogFullError
from ._core._errors import LogUnavailableError as LogUnavailableError
from ._core._errors import PoisonedEntryError as PoisonedEntryError
from ._core._errors import QueryWroteStateError as QueryWroteStateError
from ._core._errors import UnknownEventError as UnknownEventError
from ._core._machine import RemoteError as RemoteError
from ._core._partition import EVERY as EVERY
from ._core._partition import KEY_ORDER as KEY_ORDER
from ._core._partition import Partition as Partition
from ._core._partition import PartitionError as PartitionError
from ._core._partition import PartitionUnavailableError as PartitionUnavailableError
from ._core._partition import combine as combine
from ._core._partition import hash_tag as hash_tag
from ._core._service import Option as Option
from ._core._service import Service as Service
from ._runtime._client import Client as Client
from ._runtime._client import connect as connect
from ._runtime._feeds import SlowSubscriberError as SlowSubscriberError
from ._runtime._feeds import Subscription as Subscription
from ._runtime._replica import Replica as Replica
from ._runtime._state import State as State
from ._runtime._state import current as current

__version__ = "0.1.0"

__all__ = (
    "ApplySuspendedError",
    "EVERY",
    "KEY_ORDER",
    "Client",
    "Component",
    "Context",
    "DominoesError",
    "DurabilityError",
    "LogUnavailableError",
    "EntryTooLargeError",
    "EventRef",
    "LogFullError",
    "Mode",
    "Option",
    "Partition",
    "PartitionError",
    "PartitionUnavailableError",
    "PoisonedEntryError",
    "QueryWroteStateError",
    "RemoteError",
    "Replica",
    "Service",
    "SlowSubscriberError",
    "State",
    "Subscription",
    "UnknownEventError",
    "combine",
    "connect",
    "hash_tag",
    "current",
    "on",
    "query",
    "update",
)
