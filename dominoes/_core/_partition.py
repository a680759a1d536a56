"""Partitioned components: state split by key, each partition held by some replicas.

A component declared ``class Counters(Component, partition=Partition("name"))``
is not replicated on every replica.  Its keys are hashed into
``Partition.partitions`` partitions, and each partition is held by ``copies``
replicas (placed from the partition's number, so every replica computes the
same placement).  Each replica keeps one instance of the component per
partition it holds, made from the service's template instance, so a
component author writes the class as if it held every key.

Every replica still reads and decodes every entry, in log order.  A call to a
partitioned update runs, on each replica, only for the partitions it holds
(the :class:`Router` bound in the update's place filters the call's keys);
the other replicas run the event's remaining handlers (those of replicated
components) and skip the partitioned part.  What each part returned is the
call's *partial* result for that partition: the replica that submitted the
call combines the partials of every partition the call touched, its own and
those the holders send it (``Applied.forward``, through the log), into the
call's result.

What this module holds is pure (no I/O): the placement rule, the key
functions, and the router that runs a call's parts and keeps their outcomes
in the context.  The machine (``_machine``) keeps the instances and the
per-partition de-duplication of retries; the replica core (``_replica``)
carries the partials between replicas.
"""

from __future__ import annotations

import copy
import inspect
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from ._codec import Mode
from ._errors import DominoesError
from ._timers import Timers

if TYPE_CHECKING:
    from ._component import Component
    from ._context import Context

__all__ = (
    "EVERY",
    "Held",
    "Outcomes",
    "Partition",
    "PartitionError",
    "PartitionUnavailableError",
    "KEY_ORDER",
    "Router",
    "combine",
    "hash_tag",
    "keyed_parameter",
)

#: Partitions a partitioned component has unless its ``Partition`` says otherwise.
DEFAULT_PARTITIONS: Final = 64
#: The most partitions a component may have (a partition's timer ids carry its number).
MAX_PARTITIONS: Final = 65536

_COMBINE_ATTR: Final = "__dominoes_combine__"


class _Every:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EVERY"


#: What ``Partition(keyof=...)`` returns for an item that has no key and goes to
#: every partition (a keyless command in a list of commands: DBSIZE, FLUSHALL).
#: Each partition's part gets the item; ``Partition(every=...)`` combines what
#: the parts made of it.
EVERY: Final[Any] = _Every()


class _Mixed(list):  # type: ignore[type-arg]
    """The partitions of a key argument's items, some of them ``(item,)``: sent to EVERY."""

    __slots__ = ()


class PartitionUnavailableError(DominoesError):
    """No live replica holds a partition the call needs (its holders died).

    A write may or may not have been applied on a holder before it died; a
    retry with the same request id is applied at most once by the holders
    that remember it.
    """


class PartitionError(DominoesError, LookupError):
    """A partitioned component was used in a way its partitions cannot serve.

    Raised, for example, by a synchronous ``State.query`` of a key whose
    partition this replica does not hold (``await state.read(...)`` forwards
    it to a holder instead), or by arming a timer inside a partition's part.
    """


def hash_tag(key: Any) -> Any:
    """Redis Cluster's hash tag: the part of ``key`` between the first ``{`` and the next ``}``.

    Keys with the same non-empty tag land in the same partition
    (``{user1}:cart`` and ``{user1}:profile``); a key without one is hashed whole.
    """
    if type(key) is bytes:  # the common case, without a copy
        start = key.find(b"{")
        if start < 0:
            return key
        end = key.find(b"}", start + 1)
        return key[start + 1 : end] if end > start + 1 else key
    if isinstance(key, str):
        start = key.find("{")
        if start >= 0:
            end = key.find("}", start + 1)
            if end > start + 1:
                return key[start + 1 : end]
        return key
    if isinstance(key, bytes | bytearray | memoryview):
        data = bytes(key)
        start = data.find(b"{")
        if start >= 0:
            end = data.find(b"}", start + 1)
            if end > start + 1:
                return data[start + 1 : end]
        return data
    return key


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise TypeError(f"a partition key must be str, bytes or int, not {type(key).__name__}")


class Partition:
    """How a component's state is split into partitions and placed on replicas.

    ``key`` names the parameter that carries the key in every ``@update`` and
    ``@query`` of the component.  Its value is one key, or a list (or dict)
    of keys for an operation on several: each partition's part then gets only
    its own keys (or items).  A method without that parameter touches every
    partition.

    ``copies`` replicas hold each partition (at most the number of replicas:
    ``copies`` of N or more means every replica holds everything).
    ``partitions`` is how many parts the keys are hashed into; ``tag`` maps a
    key to what is hashed (:func:`hash_tag` keeps Redis-style ``{tag}`` keys
    together).  ``keyof`` maps each item of the key argument (or the argument
    itself) to its key, for an argument whose items are not bare keys: a
    list of commands, each ``[name, key, ...]``, is split by
    ``keyof=lambda command: command[1]``; ``keyof`` returns :data:`EVERY`
    for an item that goes to every partition, and ``every(item, values)``
    makes that item's value from what each partition's part made of it (one
    value per partition, in partition order; by default the first).  The hash
    is CRC-32, so the placement is the same in every process and every run.
    ``locate(item)``, if given, is a faster equivalent of all that for a hot
    path: the partition of an item (-1 for EVERY); it must agree with
    ``of(keyof(item))``.
    """

    __slots__ = ("copies", "every", "key", "keyof", "locate", "partitions", "tag")

    def __init__(
        self,
        key: str,
        *,
        copies: int = 1,
        partitions: int = DEFAULT_PARTITIONS,
        tag: Callable[[Any], Any] | None = None,
        keyof: Callable[[Any], Any] | None = None,
        every: Callable[[Any, list[Any]], Any] | None = None,
        locate: Callable[[Any], int] | None = None,
    ) -> None:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"key must name a parameter, not {key!r}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be an int >= 1, not {copies!r}")
        if (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or not 1 <= partitions <= MAX_PARTITIONS
        ):
            raise ValueError(
                f"partitions must be an int from 1 to {MAX_PARTITIONS}, not {partitions!r}"
            )
        self.key = key
        self.copies = copies
        self.partitions = partitions
        self.tag = tag
        self.keyof = keyof
        self.every = every
        self.locate = locate

    def of(self, key: Any) -> int:
        """The partition ``key`` is in."""
        if self.tag is not None:
            key = self.tag(key)
        if type(key) is bytes:
            return zlib.crc32(key) % self.partitions
        return zlib.crc32(_key_bytes(key)) % self.partitions

    def of_item(self, item: Any) -> int:
        """The partition an item of the key argument is in (through ``keyof``; -1: EVERY)."""
        if self.keyof is None:
            return self.of(item)
        key = self.keyof(item)
        return -1 if key is EVERY else self.of(key)

    def holders(self, partition: int, replicas: int, copies: int | None = None) -> tuple[int, ...]:
        """The replicas that hold ``partition`` out of ``replicas``, the primary first.

        Partition ``p``'s primary is replica ``p mod N``; its other copies
        are the next replicas round the ring.
        """
        n = min(self.copies if copies is None else copies, replicas)
        return tuple((partition + j) % replicas for j in range(n))

    def held(self, replica: int, replicas: int, copies: int | None = None) -> frozenset[int]:
        """The partitions ``replica`` holds."""
        return frozenset(
            p for p in range(self.partitions) if replica in self.holders(p, replicas, copies)
        )

    def __repr__(self) -> str:
        return (
            f"Partition({self.key!r}, copies={self.copies}, partitions={self.partitions}"
            + (f", tag={getattr(self.tag, '__name__', self.tag)!s}" if self.tag else "")
            + ")"
        )


#: ``@combine(KEY_ORDER)``: each part returns a list aligned with its keys, and
#: the call's result is one list in the order of the call's keys
KEY_ORDER: Final = "key order"


def combine(fn: Callable[[list[Any]], Any] | str) -> Callable[[Any], Any]:
    """Say how the partial results of an operation on several partitions make its result.

    ``fn`` gets the partials in the order of the call's partitions (those of
    its keys, first seen first; or every partition, for a method without a
    key) and returns the result::

        @combine(sum)
        @update
        def delete(self, ctx, names: list[str]) -> int: ...

    ``@combine(KEY_ORDER)`` is for a method that returns one value per key
    (a list aligned with the keys it got): the parts' lists are put back in
    the order of the call's keys, duplicates included.  Without ``combine``,
    the result is the first partition's partial.
    """
    if fn != KEY_ORDER and not callable(fn):
        raise TypeError(f"combine takes a function or KEY_ORDER, not {fn!r}")

    def mark(method: Any) -> Any:
        target = getattr(method, "fn", method)
        setattr(target, _COMBINE_ATTR, fn)
        return method

    return mark


def combiner(fn: Callable[..., Any]) -> Callable[[list[Any]], Any] | str | None:
    return getattr(fn, _COMBINE_ATTR, None)


def keyed_parameter(fn: Callable[..., Any], key: str, skip: int) -> int | None:
    """Where ``fn``'s parameter ``key`` is, after its first ``skip`` (None: it has none)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    for i, p in enumerate(params):
        if p.name == key:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{fn.__qualname__}: the partition key {key!r} cannot be *{key}")
            return i if p.kind != p.KEYWORD_ONLY else -1
    return None


class Router:
    """Bound in place of a partitioned ``@update`` (or of a ``@query`` run through the log).

    Called like the method, on every replica.  It works out the partitions
    the call touches, runs the method on this replica's instance of each
    one it holds (with that partition's keys only), and records each part's
    outcome in the context; it never raises, so every replica runs the
    event's other handlers whatever a part did.
    """

    __slots__ = ("combine", "component", "fn", "index", "key", "query", "spec")

    def __init__(
        self,
        component: str,
        spec: Partition,
        fn: Callable[..., Any],
        *,
        query: bool = False,
    ) -> None:
        self.component = component
        self.spec = spec
        self.fn = fn
        self.query = query
        self.key = spec.key
        self.index = keyed_parameter(fn, spec.key, 1 if query else 2)
        self.combine = combiner(fn)

    def __repr__(self) -> str:
        return f"<Router {getattr(self.fn, '__qualname__', self.fn)!s}>"

    def split(self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> dict[int, Any]:
        """The call's partitions, in key order, each with its share of the key argument.

        The share is ``None`` for a method without a key (it gets the call
        unchanged); a single key maps to itself.
        """
        return self.split_items(args, kwargs)[0]

    def split_items(
        self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[int, Any], list[int] | None]:
        """:meth:`split`, and the partition of each item of a list or dict key argument."""
        spec = self.spec
        if self.index is None:
            return dict.fromkeys(range(spec.partitions)), None
        if self.index >= 0 and self.index < len(args):
            value = args[self.index]
        elif self.key in kwargs:
            value = kwargs[self.key]
        else:
            raise TypeError(f"{self.fn.__qualname__}() is missing its key argument {self.key!r}")
        of = spec.locate or (spec.of if spec.keyof is None else spec.of_item)
        if isinstance(value, list | tuple):
            items = [of(k) for k in value]
            shares: dict[int, Any] = {}
            every = False
            for pid, k in zip(items, value, strict=True):
                if pid < 0:  # EVERY: a share of every partition
                    every = True
                    for p in range(spec.partitions):
                        share = shares.get(p)
                        if share is None:
                            shares[p] = [k]
                        else:
                            share.append(k)
                    continue
                share = shares.get(pid)
                if share is None:
                    shares[pid] = [k]
                else:
                    share.append(k)
            if every:
                items = _Mixed(
                    pid if pid >= 0 else (k,) for pid, k in zip(items, value, strict=True)
                )
            return (shares, items) if shares else ({0: value}, None)  # no key: once, in 0
        if isinstance(value, dict):
            items = [of(k) for k in value]
            maps: dict[int, Any] = {}
            for pid, (k, v) in zip(items, value.items(), strict=True):
                maps.setdefault(pid, {})[k] = v
            return (maps, items) if maps else ({0: value}, None)
        return {of(value): value}, None

    def with_share(
        self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any], share: Any
    ) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any]]:
        if self.index is None:
            return args, kwargs
        if self.index >= 0 and self.index < len(args):
            args = list(args)
            args[self.index] = share
            return args, kwargs
        return args, {**kwargs, self.key: share}

    def merge(self, items: list[int] | None, partials: list[tuple[int, Any]]) -> Any:
        """The call's result from its parts' results, ``(partition, result)`` in call order.

        ``items``: the partition of each item of the key argument (:meth:`split_items`).
        """
        fn = self.combine
        if fn is None:
            return partials[0][1]
        if fn != KEY_ORDER:
            assert callable(fn)
            return fn([value for _, value in partials])
        if items is None:
            return partials[0][1]
        lists = {pid: iter(value) for pid, value in partials}
        try:
            if type(items) is _Mixed:
                every = self.spec.every
                out = []
                for pid in items:
                    if type(pid) is int:
                        out.append(next(lists[pid]))
                        continue
                    values = [next(lists[p]) for p in range(self.spec.partitions)]
                    out.append(values[0] if every is None else every(pid[0], values))
                return out
            return [next(lists[pid]) for pid in items]
        except (StopIteration, TypeError):
            raise ValueError(
                f"{self.fn.__qualname__} is combined in key order, so each part must return "
                "a list with one value per key it got"
            ) from None

    def __call__(self, ctx: Context, *args: Any, **kwargs: Any) -> None:
        ctx._machine._run_parts(self, ctx, args, kwargs)

    def owns(self, ctx: Context, holders: tuple[int, ...]) -> bool:
        """Whether this replica performs the effects of a part held by ``holders``."""
        if ctx.mode == Mode.EVERY:
            return True
        if ctx.origin in holders:
            return ctx.replica == ctx.origin
        return ctx.replica == holders[0]


def combined(
    order: Iterable[tuple[str, int]],
    outcomes: dict[tuple[str, int], tuple[bool, Any]],
    routers: dict[str, tuple[Router, Any]],
) -> Any:
    """A call's result from its parts' outcomes (raises the first part's error).

    With several partitioned components bound to one event, the last one's
    combined result is the call's (as the last handler's result is, otherwise).
    """
    by_component: dict[str, list[tuple[int, Any]]] = {}
    for part in order:
        ok, value = outcomes[part]
        if not ok:
            raise value
        by_component.setdefault(part[0], []).append((part[1], value))
    result = None
    for name, partials in by_component.items():
        router, keys = routers[name]
        result = router.merge(keys, partials)
    return result


class Held:
    """A partitioned component on one replica: its instance for each partition it holds.

    ``recent`` de-duplicates retried calls per partition (request id ->
    the part's encoded result, or its error's text), since only a
    partition's holders know what a call did to it.
    """

    __slots__ = (
        "_holders",
        "copies",
        "journal",
        "loading",
        "name",
        "parts",
        "recent",
        "replica",
        "spec",
        "template",
        "timers",
    )

    def __init__(self, template: Component, spec: Partition) -> None:
        self.name = template.name
        #: the service's fresh instance, copied for each partition gained
        self.template = copy.deepcopy(template)
        self.spec = spec
        self.copies = spec.copies
        self.parts: dict[int, Component] = {}
        self.recent: dict[int, dict[str, bytes | str]] = {}
        #: each held partition's replicated timers (armed by its handlers)
        self.timers: dict[int, Timers] = {}
        # (replicas, each partition's holders) of the last placement
        self._holders: tuple[int, list[tuple[int, ...]]] = (0, [])
        #: replicated: partitions being loaded by replicas that gained them when
        #: ``copies`` grew: partition -> {gainer: the seq of its fetch, 0 before}.
        #: A gainer is not a *ready* holder (:meth:`holders`) until it loaded.
        self.loading: dict[int, dict[int, int]] = {}
        #: local: what this replica applied of the partitions it is loading,
        #: replayed once their state arrives: partition -> [item]
        self.journal: dict[int, list[tuple[Any, ...]]] = {}
        #: this replica's index (set by :meth:`place`)
        self.replica = 0

    def place(self, replica: int, replicas: int) -> None:
        """Hold what the placement gives ``replica``: new partitions start empty."""
        self.replica = replica
        spec = self.spec
        self._holders = (
            replicas,
            [spec.holders(p, replicas, self.copies) for p in range(spec.partitions)],
        )
        want = spec.held(replica, replicas, self.copies) - set(self.loading_here(replica))
        for pid in [p for p in self.parts if p not in want]:
            del self.parts[pid]
            del self.recent[pid]
            del self.timers[pid]
        for pid in sorted(want - self.parts.keys()):
            self.reset(pid)
        self.parts = dict(sorted(self.parts.items()))

    def part_state(self, pid: int) -> dict[str, Any]:
        """One held partition's state, as a gainer loads it (:meth:`load_part`)."""
        timers = self.timers[pid]
        return {
            "part": self.parts[pid].snapshot(),
            "recent": list(self.recent[pid].items()),
            "timers": [timers.next_id, timers.dump()],
        }

    def load_part(self, pid: int, state: dict[str, Any]) -> None:
        """Hold partition ``pid`` as :meth:`part_state` gave it."""
        inst = copy.deepcopy(self.template)
        inst.restore(state["part"])
        self.parts[pid] = inst
        self.recent[pid] = dict(state["recent"])
        timers = self.timers[pid] = Timers()
        next_id, pending = state["timers"]
        timers.load(next_id, [tuple(t) for t in pending])

    def holders(self, pid: int, replicas: int) -> tuple[int, ...]:
        """The *ready* holders of ``pid``: placed there, and not loading it."""
        n, table = self._holders
        holders = table[pid] if n == replicas else self.spec.holders(pid, replicas, self.copies)
        if self.loading:
            busy = self.loading.get(pid)
            if busy:
                return tuple(h for h in holders if h not in busy)
        return holders

    def resize(self, replica: int, replicas: int, copies: int) -> tuple[list[int], int]:
        """``copies`` changes at this log position (every replica calls it alike).

        A replica that drops a partition forgets it; one that gains a
        partition is *loading* it until its state arrives (``loaded``), and
        journals the partition's calls meanwhile.  Returns the partitions
        this replica gained, and how many copies every replica gained in all.
        """
        spec = self.spec
        old = [spec.holders(p, replicas, self.copies) for p in range(spec.partitions)]
        self.copies = copies
        new = [spec.holders(p, replicas, copies) for p in range(spec.partitions)]
        gained, total = [], 0
        for pid in range(spec.partitions):
            busy = self.loading.get(pid, {})
            for h in set(new[pid]) - set(old[pid]):
                busy[h] = 0
                total += 1
                if h == replica:
                    gained.append(pid)
            for h in set(old[pid]) - set(new[pid]):
                busy.pop(h, None)
                if h == replica:
                    self.journal.pop(pid, None)
            if busy:
                self.loading[pid] = busy
            else:
                self.loading.pop(pid, None)
        self.place(replica, replicas)
        return gained, total

    def loading_here(self, replica: int) -> list[int]:
        return [pid for pid, busy in self.loading.items() if replica in busy]

    def snapshot(self) -> dict[str, Any]:
        return {
            "parts": {pid: self.part_state(pid) for pid in self.parts},
            "loading": {pid: list(busy.items()) for pid, busy in self.loading.items()},
        }

    def restore(self, state: dict[str, Any], only: Iterable[int] | None = None) -> list[int]:
        """Load the held partitions (or those of ``only``) a snapshot has; the others' numbers.

        A snapshot holds its writer's partitions only: a joiner gets the
        rest from the other snapshots written for it (``StateMachine.restore``).
        """
        parts = state["parts"]
        if only is None:  # the snapshot's replicated loading, and what it means here
            self.loading = {pid: dict(busy) for pid, busy in state.get("loading", {}).items()}
            self.journal = {}
            for pid in self.loading_here(self.replica):
                if pid in self.parts:
                    del self.parts[pid], self.recent[pid], self.timers[pid]
        missing = []
        for pid in self.parts if only is None else only:
            if pid in parts:
                self.load_part(pid, parts[pid])
            else:
                missing.append(pid)
        return missing

    def reset(self, pid: int) -> None:
        """Partition ``pid`` starts empty here (no live replica had a copy to give)."""
        self.parts[pid] = copy.deepcopy(self.template)
        self.recent[pid] = {}
        self.timers[pid] = Timers()

    def digest_items(self) -> dict[str, Any]:
        loading = sorted((pid, sorted(busy.items())) for pid, busy in self.loading.items())
        return {
            f"{self.name}#loading": loading,
            **self._part_digests(),
        }

    def _part_digests(self) -> dict[str, Any]:
        return {
            f"{self.name}#{pid}": [
                c.snapshot(),
                list(self.recent[pid].items()),
                self.timers[pid].next_id,
                self.timers[pid].digest_items(),
            ]
            for pid, c in self.parts.items()
        }


class Outcomes:
    """What one call's partitioned parts did on this replica (``ctx._parts``)."""

    __slots__ = ("forward", "holder_pids", "order", "outcomes", "routers", "sends", "waiting")

    def __init__(self) -> None:
        #: every part the call touches, in key order: (component, partition)
        self.order: list[tuple[str, int]] = []
        #: the parts run here (or answered from ``Held.recent``): (ok, value or error)
        self.outcomes: dict[tuple[str, int], tuple[bool, Any]] = {}
        #: the parts run here whose holders do not include the call's origin
        self.forward: list[tuple[str, int]] = []
        #: their partials, as sent: (component, partition, ok, msgpack or error text)
        self.sends: list[tuple[str, int, bool, bytes | str]] | None = None
        #: on the replica that collects the result: the parts still to come
        self.waiting: set[tuple[str, int]] | None = None
        #: when it started waiting: each holder's incarnation (``LogBackend.pid``)
        self.holder_pids: dict[int, int] = {}
        #: each partitioned component's router and its key items' partitions
        self.routers: dict[str, tuple[Router, Any]] = {}
