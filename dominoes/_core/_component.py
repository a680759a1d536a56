"""Components: classes with replicated state and handlers (Cactus micro-protocols).

A component's state is its instance attributes.  Methods marked

* ``@update`` define an event named ``"<Component.name>.<method>"``; the method
  is bound to it (order 0 unless given) and runs on every replica, in log
  order, as ``method(ctx, *args, **kwargs)``;
* ``@query`` are local reads, called as ``method(*args, **kwargs)`` on the
  replica that received the request, without the log;
* ``@on(event, order=...)`` bind the method to another event, e.g. an
  expiry check at a low order ahead of a command's ``@update``.

Snapshots encode ``vars(component)`` (minus the names in ``transient``) with
msgspec.  Declare state attributes as class annotations to get them back with
their exact types (``set``, ``tuple``, Structs); otherwise a restored value
keeps the container type of the fresh instance's attribute.  Override
``snapshot()`` / ``restore()`` for anything else.
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Callable
from types import MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    overload,
)

import msgspec

from ._partition import Partition

if TYPE_CHECKING:
    from ._context import Context

__all__ = ("Component", "EventRef", "on", "query", "update")

P = ParamSpec("P")
R = TypeVar("R")


class _Marked(Generic[P, R]):
    """A method marked by a decorator: a descriptor that knows its class and name.

    On the class it is the marker itself (``Counter.incr`` names an event);
    on an instance it is the plain bound method.
    """

    __slots__ = ("__wrapped__", "fn", "name", "owner")
    kind = "marked"

    def __init__(self, fn: Callable[..., R]) -> None:
        self.fn = fn
        self.name: str = fn.__name__
        self.owner: type[Component] | None = None
        self.__wrapped__ = fn

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.owner = owner

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> Callable[..., R]: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return MethodType(self.fn, obj)

    @property
    def event(self) -> str:
        """``"<Component.name>.<method>"``, for the class that defined the method."""
        if self.owner is None:
            raise TypeError(f"@{self.kind} {self.name} is not defined in a Component class")
        return f"{self.owner.name}.{self.name}"

    def __repr__(self) -> str:
        return f"<{self.kind} {self.event if self.owner else self.name}>"


class update(_Marked[P, R]):  # noqa: N801 - used as a decorator
    """Mark a method as a replicated update, bound to its own event at order 0.

    ``update[P, R]`` carries the method's parameters after ``self`` and
    ``ctx`` (``P``) and its result (``R``), so a type checker checks
    ``await state.call(Cart.add, user, item)`` against ``Cart.add``.
    """

    __slots__ = ()
    kind = "update"

    def __init__(self, fn: Callable[Concatenate[Any, Context, P], R]) -> None:
        super().__init__(fn)


#: How a query reads: ``"linearizable"`` catches the replica up to the
#: completed tail first (it sees every write acknowledged anywhere before it
#: arrived); ``"local"`` reads the replica's state as it is (possibly stale).
CONSISTENCIES: Final = ("linearizable", "local")


class query(_Marked[P, R]):  # noqa: N801 - used as a decorator
    """Mark a method as a read-only query, answered from the local replica.

    By default a query is linearizable: the replica first applies whatever
    any replica has already applied (the completed tail), so the answer
    reflects every write acknowledged before the query arrived.  Mark it
    ``@query.local`` to read the local state as it is, which skips that
    catch-up and may be stale (see ``Service(reads=...)`` for the default).
    """

    __slots__ = ("consistency",)
    kind = "query"

    def __init__(
        self, fn: Callable[Concatenate[Any, P], R], consistency: str | None = None
    ) -> None:
        super().__init__(fn)
        if consistency is not None and consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {CONSISTENCIES}, not {consistency!r}")
        #: None: the service's ``reads`` setting
        self.consistency = consistency

    @staticmethod
    def local(fn: Callable[Concatenate[Any, P], R]) -> query[P, R]:
        """A query that reads the local state as it is (may miss recent writes)."""
        return query(fn, "local")

    @staticmethod
    def linearizable(fn: Callable[Concatenate[Any, P], R]) -> query[P, R]:
        """A query that is linearizable even when the service reads locally by default."""
        return query(fn, "linearizable")


#: What names an event: its string, or the ``@update`` that defines it.
EventRef = str | update[..., Any]

_ON_ATTR = "__dominoes_on__"


def on(
    event: EventRef, *, order: float = 0, **static: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Bind the decorated method to ``event`` with ``order`` and static arguments.

    May be stacked to bind one method to several events.
    """

    def mark(fn: Callable[P, R]) -> Callable[P, R]:
        # Over an @update, mark the function inside it: the update is then bound
        # to its own event and to ``event``.
        target = fn.fn if isinstance(fn, update) else fn
        marks: list[tuple[EventRef, float, dict[str, Any]]] = list(on_marks(target))
        marks.append((event, order, static))
        setattr(target, _ON_ATTR, tuple(marks))
        return fn

    return mark


def on_marks(fn: object) -> tuple[tuple[EventRef, float, dict[str, Any]], ...]:
    if isinstance(fn, update):
        fn = fn.fn
    return getattr(fn, _ON_ATTR, ())


_AMBIGUOUS = "\x00ambiguous"


def resolve(names: dict[object, str], ref: EventRef | query[..., Any]) -> str:
    """The event name ``ref`` stands for, given a service's descriptor names."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, update | query):
        name = names.get(ref)
        if name is None:
            return ref.event
        if name is _AMBIGUOUS:
            raise LookupError(
                f"{ref.name} belongs to several components of this service; "
                "name the event as '<component>.<method>'"
            )
        return name
    raise TypeError(f"not an event: {ref!r} (pass an @update/@query method or an event name)")


class Component:
    """Base class of replicated components.

    Subclasses set ``name`` (default: the class name), keep their state in
    instance attributes and mark methods with :func:`update`, :func:`query` and
    :func:`on`.  Attributes listed in ``transient`` are local to one replica
    (sockets, subscriber lists, caches): they are neither snapshotted nor
    compared.
    """

    name: ClassVar[str] = "Component"
    transient: ClassVar[tuple[str, ...]] = ()
    #: how the state is split across replicas (None: every replica holds it all)
    partition: ClassVar[Partition | None] = None

    def __init_subclass__(cls, partition: Partition | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if partition is not None:
            if not isinstance(partition, Partition):
                raise TypeError(f"partition= takes a Partition, not {partition!r}")
            cls.partition = partition

    # --- snapshots -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The component's replicated state as msgpack-encodable values."""
        skip = self.transient
        return {k: v for k, v in vars(self).items() if k not in skip}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`snapshot` returned (after a msgpack round trip)."""
        hints = _state_hints(type(self))
        for key, value in state.items():
            hint = hints.get(key)
            if hint is not None:
                value = msgspec.convert(value, hint)
            else:
                current = getattr(self, key, None)
                if isinstance(current, set | frozenset | tuple) and isinstance(value, list):
                    value = type(current)(value)
            setattr(self, key, value)


#: each component class's state hints, worked out once (``get_type_hints`` compiles
#: every string annotation each time: a restore of many partitions paid it per instance)
_HINTS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _state_hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        try:
            every = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to shapes
            every = {}
        hints = _HINTS[cls] = {
            k: v for k, v in every.items() if typing.get_origin(v) is not ClassVar
        }
    return hints
