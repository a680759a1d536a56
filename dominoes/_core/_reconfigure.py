"""Reconfiguration through the log: add or remove a component, bind or unbind a handler.

A change of configuration is an update of the built-in event
``dominoes.reconfigure`` whose one argument is a *spec*, a plain dict (so it
travels in the log like any argument):

* ``{"do": "add", "component": "pkg.mod:Class", "kwargs": {...}}`` makes
  ``Class(**kwargs)`` and binds its handlers (updates, then ``@on``), as if it
  had been the service's last component from the start.  Its state starts as
  its constructor leaves it, at that log position, on every replica.
* ``{"do": "remove", "component": NAME}`` unbinds every handler of component
  ``NAME``, drops its queries, and drops it with its state.
* ``{"do": "bind", "event": EVENT, "handler": "pkg.mod:function", "order": 0,
  "static": {...}}`` binds a free function, as ``Service.bind`` does; the
  result is the binding id.
* ``{"do": "unbind", "binding": ID}`` removes a binding.
* ``{"do": "copies", "component": NAME, "copies": K}`` changes how many
  replicas hold each partition of the partitioned component ``NAME``: a
  replica that drops a partition forgets it there; one that gains a partition
  loads its state from a holder (``StateMachine.set_copies``).  The result is
  how many partition copies the replicas gained in all (0 when it shrank).
* ``{"do": "mode", "event": EVENT, "mode": "race" | "affinity" | "every" | None}``
  sets the ownership mode of every later call of ``EVENT``, whatever mode its
  caller asked for (None: the caller's again).  The result is the mode's name.

Every replica applies the entry at the same log position, in log order, so
the registries stay identical: binding ids come from one counter that every
replica advances alike, and handlers of equal ``order`` keep bind order.

A spec that cannot be applied (an import that fails, a name already taken,
an unknown id) raises before anything changes, so the entry is an error on
every replica and the configuration is as it was.  The specs applied so far
are part of the replicated state (``StateMachine.config``): a snapshot
carries them, and restoring one replays them on the fresh machine before its
components' state is loaded, so a joiner or a restarted replica ends with the
same components and the same bindings.

After an ``add`` or a ``remove``, the built-in handler raises :data:`ADDED`
or :data:`REMOVED` with the component's name, in the same entry, for the
components that keep a list of others (a bus that routes to its devices).
They are not raised when a snapshot's specs are replayed: what those
handlers changed is in the snapshot already.
"""

from __future__ import annotations

import importlib
from types import MethodType
from typing import TYPE_CHECKING, Any, Final

from ._codec import Mode
from ._component import Component, on_marks, query, resolve, update

if TYPE_CHECKING:
    from ._machine import StateMachine

__all__ = (
    "ADDED",
    "EVENT",
    "REMOVED",
    "add",
    "apply",
    "bind",
    "copies",
    "mode",
    "remove",
    "unbind",
)

#: the built-in event a reconfiguration is an update of
EVENT: Final = "dominoes.reconfigure"
#: raised, in the same entry, after ``add`` added a component: ``(ctx, name)``
ADDED: Final = "dominoes.added"
#: raised, in the same entry, after ``remove`` removed a component: ``(ctx, name)``
REMOVED: Final = "dominoes.removed"


def add(component: str, **kwargs: Any) -> dict[str, Any]:
    """A spec that adds ``component`` (``"module:Class"``), made as ``Class(**kwargs)``."""
    return {"do": "add", "component": component, "kwargs": kwargs}


def remove(name: str) -> dict[str, Any]:
    """A spec that removes the component named ``name``, its handlers and its state."""
    return {"do": "remove", "component": name}


def bind(event: str, handler: str, order: float = 0, **static: Any) -> dict[str, Any]:
    """A spec that binds ``handler`` (``"module:function"``) to ``event``."""
    return {"do": "bind", "event": event, "handler": handler, "order": order, "static": static}


def unbind(binding: int) -> dict[str, Any]:
    """A spec that removes binding ``binding`` (an id a ``bind`` returned)."""
    return {"do": "unbind", "binding": binding}


def mode(event: str, mode: str | None) -> dict[str, Any]:
    """A spec that sets the ownership mode of ``event``'s calls (None: the caller's)."""
    return {"do": "mode", "event": event, "mode": mode}


def copies(component: str, copies: int) -> dict[str, Any]:
    """A spec that keeps each partition of ``component`` on ``copies`` replicas."""
    return {"do": "copies", "component": component, "copies": copies}


def _import(target: str) -> Any:
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {target}: {exc}") from None
    return obj


def apply(machine: StateMachine, spec: Any) -> Any:
    """Apply one spec to ``machine``; see the module doc.  Raises ``ValueError``."""
    if not isinstance(spec, dict) or spec.get("do") not in _APPLY:
        raise ValueError(
            "a reconfiguration is a dict whose 'do' is add, remove, bind, unbind, copies or mode; "
            f"not {spec!r}"
        )
    result = _APPLY[spec["do"]](machine, spec)
    machine.config.append(spec)
    return result


def _add(machine: StateMachine, spec: dict[str, Any]) -> str:
    cls = _import(spec.get("component", ""))
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise ValueError(f"{spec.get('component')} is not a Component class")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError("'kwargs' must be a dict")
    try:
        comp = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the same on every replica, reported
        raise ValueError(f"{cls.__name__}(**{kwargs!r}) failed: {exc!r}") from None
    if comp.name in machine.components:
        raise ValueError(f"a component named {comp.name!r} is already in the service")
    if type(comp).partition is not None:
        raise ValueError(
            f"{comp.name} is partitioned: a partitioned component cannot be added to a "
            "running service yet"
        )
    # everything is resolved before anything is bound, so a failure changes nothing
    names = dict(machine._names)
    members: list[tuple[str, object]] = []
    seen: set[str] = set()
    for klass in type(comp).__mro__:
        for attr, value in vars(klass).items():
            if attr not in seen:
                seen.add(attr)
                members.append((attr, value))
    updates: list[tuple[str, Any]] = []
    queries: dict[str, Any] = {}
    local: set[str] = set()
    for attr, value in members:
        if isinstance(value, update | query):
            full = f"{comp.name}.{attr}"
            names.setdefault(value, full)
            if isinstance(value, update):
                updates.append((full, MethodType(value.fn, comp)))
            else:
                queries[full] = MethodType(value.fn, comp)
                if value.consistency == "local":
                    local.add(full)
    ons: list[tuple[str, Any, float, dict[str, Any]]] = []
    for _, value in members:
        fn = value.fn if isinstance(value, update) else value
        for ref, order, static in on_marks(fn):
            ons.append((resolve(names, ref), MethodType(fn, comp), order, static))  # type: ignore[arg-type]
    registry = machine.registry
    for full, method in updates:
        registry.bind(full, method)
    for event, method, order, static in ons:
        registry.bind(event, method, order, **static)
    machine.components[comp.name] = comp
    machine._queries.update(queries)
    machine._names = names
    if local:
        machine.local_queries = machine.local_queries | local
    return comp.name


def _remove(machine: StateMachine, spec: dict[str, Any]) -> str:
    name = spec.get("component")
    if not isinstance(name, str) or name not in machine.components:
        raise ValueError(f"no component named {name!r} in this service")
    comp = machine.components[name]
    registry = machine.registry
    for binding in list(registry.bindings()):
        if getattr(binding.handler, "__self__", None) is comp:
            registry.unbind(binding.id)
    for full in [q for q, fn in machine._queries.items() if getattr(fn, "__self__", None) is comp]:
        del machine._queries[full]
    del machine.components[comp.name]
    return comp.name


def _bind(machine: StateMachine, spec: dict[str, Any]) -> int:
    handler = _import(spec.get("handler", ""))
    if not callable(handler):
        raise ValueError(f"{spec.get('handler')} is not callable")
    event = spec.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("'event' must be an event name")
    static = spec.get("static") or {}
    if not isinstance(static, dict):
        raise ValueError("'static' must be a dict")
    order = spec.get("order", 0)
    if not isinstance(order, int | float):
        raise ValueError("'order' must be a number")
    return machine.registry.bind(event, handler, order, **static)


def _unbind(machine: StateMachine, spec: dict[str, Any]) -> int:
    binding = spec.get("binding")
    if not isinstance(binding, int) or binding not in machine.registry.ids():
        raise ValueError(f"no binding {binding!r}")
    if machine.registry.binding(binding).event == EVENT:
        raise ValueError("the built-in reconfiguration binding cannot be removed")
    machine.registry.unbind(binding)
    return binding


def _copies(machine: StateMachine, spec: dict[str, Any]) -> int:
    name, k = spec.get("component"), spec.get("copies")
    if not isinstance(name, str) or name not in machine.partitioned:
        raise ValueError(f"no partitioned component named {name!r} in this service")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"copies must be an int >= 1, not {k!r}")
    return machine.set_copies(name, k)


def _mode(machine: StateMachine, spec: dict[str, Any]) -> str:
    event, name = spec.get("event"), spec.get("mode")
    if not isinstance(event, str) or not event:
        raise ValueError("'event' must be an event name")
    if name is None:
        machine.modes.pop(event, None)
        return "the caller's"
    chosen = Mode.parse(name) if isinstance(name, str) else None
    if chosen is None:
        raise ValueError(f"mode must be race, affinity, every or None, not {name!r}")
    machine.modes[event] = chosen
    return chosen.name.lower()


_APPLY: Final[dict[str, Any]] = {
    "add": _add,
    "remove": _remove,
    "bind": _bind,
    "unbind": _unbind,
    "copies": _copies,
    "mode": _mode,
}
