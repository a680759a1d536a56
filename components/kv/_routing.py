"""The connection's side of the partitioned KV: which partition a command needs.

With ``--partition copies=K`` (``_shard``), each connection checks a command
before it runs or joins a batch:

* a command naming keys of two partitions is refused with ``CROSSSLOT``, as
  Redis Cluster refuses keys of two slots (``{tag}`` keys share a partition);
* a blocking command (BLPOP, XREAD ... BLOCK, ...) is refused: a waiter would
  live in its key's partition, on replicas that may not hold the client;
* a read of a key this replica holds runs here at once, on the partition's
  state (after the usual catch-up, so it sees every acknowledged write); a
  read of a key held elsewhere, or of every key (DBSIZE, KEYS, SCAN), joins
  the batch and goes through the log to the holders (:class:`Forward`);
* pub/sub commands go to the replicated ``Commands.run``, data commands to
  ``Shard.run``: a batch holds one kind, so the connection appends its batch
  when the kind changes (its entries stay in order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from dominoes import Replica

from ._errors import KvError
from ._shard import _COUNTED, _EVERYWHERE, WATCHED, command_keys, locate, partition_of
from ._table import Spec

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = (
    "BLOCKING_REFUSED",
    "CROSSSLOT",
    "FRONT",
    "Forward",
    "checker",
    "queued_error",
    "reader",
    "transaction",
)

CROSSSLOT: Final = "CROSSSLOT Keys in request don't hash to the same slot"
BLOCKING_REFUSED: Final = (
    "ERR blocking commands are not available on a partitioned KV "
    "(run it without --partition to use them)"
)

#: Components whose commands the replicated ``Commands.run`` applies.
FRONT: Final = frozenset({"pubsub"})


class Forward(Exception):  # noqa: N818 - a signal, not an error
    """The read needs partitions held elsewhere: it goes through the log."""


def keys_of(spec: Spec, args: list[bytes]) -> list[bytes]:
    """The keys of ``args`` as the client sent them (no client id inserted yet)."""
    return command_keys(spec, [args[0], b"", *args[1:]] if spec.client_id else args)


def same_partition(keys: list[bytes]) -> int | None:
    """The partition every key is in; None if they span several."""
    pid = partition_of(keys[0])
    for key in keys[1:]:
        if partition_of(key) != pid:
            return None
    return pid


def crossslot(spec: Spec, args: list[bytes]) -> KvError | None:
    """CROSSSLOT if ``args`` (as the client sent them) names keys of two partitions."""
    keys = keys_of(spec, args)
    if len(keys) > 1 and same_partition(keys) is None:
        return KvError(CROSSSLOT)
    return None


def _multi(spec: Spec) -> bool:
    """Whether a command may name several keys (so needs the CROSSSLOT check)."""
    return (
        spec.name in _COUNTED
        or spec.last != spec.first
        or spec.name in (b"SORT", b"GEORADIUS", b"GEORADIUSBYMEMBER")
    )


def checker(spec: Spec) -> Callable[[Connection, list[bytes]], KvError | None]:
    """The check a command passes before it joins a batch (None: it may)."""
    front = spec.component in FRONT
    multi = _multi(spec)
    blocking = spec.blocking
    may_block = spec.may_block

    def check(conn: Connection, args: list[bytes]) -> KvError | None:
        if blocking or (may_block and any(a.upper() == b"BLOCK" for a in args[1:])):
            return KvError(BLOCKING_REFUSED)
        if multi and (refused := crossslot(spec, args)) is not None:
            return refused
        if front != conn.batch_front:
            if conn.batch:
                conn._flush_batch()
            conn.batch_front = front
        return None

    return check


def reader(
    spec: Spec, replica: Replica, local: Callable[[int, list[bytes]], Any] | None
) -> Callable[[int, list[bytes]], Any]:
    """A read command's local implementation on a partitioned KV.

    It runs on the partition's state if this replica holds the partition,
    and raises :class:`Forward` otherwise.
    """
    name = spec.name
    if spec.component in FRONT or name == b"TIME":
        if local is None:
            raise TypeError(f"{name.decode()} has no local implementation")
        return local
    if name in _EVERYWHERE:

        def everywhere(now: int, args: list[bytes]) -> Any:
            raise Forward

        return everywhere
    multi = _multi(spec)

    def read(now: int, args: list[bytes]) -> Any:
        if multi and (refused := crossslot(spec, args)) is not None:
            raise refused
        pid = locate(args)  # where Shard.run would send it: its first key's partition
        shard: Any = replica.partition("shard", pid)
        if shard is None:
            raise Forward
        shard._pid = pid  # its partition (SCAN's cursor, a script's keys)
        live: Any = replica.component("serverconfig")
        if shard.settings.config is not live.config:  # the replicated CONFIG SET values
            shard.settings.config = live.config
        return shard.commands.bound[name][0](now, args)

    return read


def queued_error(spec: Spec, args: list[bytes]) -> KvError | None:
    """Why a command cannot be queued in a partitioned KV's MULTI (None: it can).

    Blocking commands answer at once inside a transaction, as in Redis, so
    they may be queued; pub/sub commands may not (they are replicated state,
    applied by another event than the transaction's).
    """
    if spec.component in FRONT:
        return KvError(f"ERR {spec.name.decode()} cannot be in a transaction on a partitioned KV")
    return crossslot(spec, args) if _multi(spec) else None


#: commands a watched transaction may hold wherever they run: they change no key
_HARMLESS: Final = frozenset({b"UNWATCH", b"PING", b"ECHO"})


def transaction(commands: list[list[bytes]], watched: list[bytes]) -> list[list[bytes]] | KvError:
    """A partitioned KV's EXEC: its commands as ``Shard.exec`` takes them, or the error.

    Without WATCH a transaction may span partitions (it is one log entry).
    With WATCH, its keys and the watched ones must share one partition, whose
    part runs WATCH's check: the commands then start with ``[WATCHED, key]``.
    """
    if not watched:
        return commands
    from ._service import TABLE

    pid = same_partition(watched)
    for args in commands:
        if pid is None:
            break
        if args[0] in _HARMLESS:
            continue
        # where the command runs: its first key's partition, partition 0 for a
        # script without keys, every partition for DBSIZE, FLUSHALL, ...
        if locate(args) != pid or (
            len(keys := command_keys(TABLE[args[0]], args)) > 1 and same_partition(keys) != pid
        ):
            pid = None
    if pid is None:
        return KvError(
            "CROSSSLOT Keys in request don't hash to the same slot (a transaction that "
            "WATCHes keys keeps them and its own keys in one partition: use a {hash tag})"
        )
    return [[WATCHED, watched[0]], *commands]
