"""Finding log backends by name: the ``dominoes.logs`` entry-point group.

``dominoes run --log NAME`` picks the backend the supervisor creates its log
with, as ``--loop NAME`` picks an event-loop policy (``dominoes.loops``).  An
entry point names a :class:`~dominoes._core._backend.LogFactory` class::

    [project.entry-points."dominoes.logs"]
    shm = "dominoes._runtime._shm:ShmLogFactory"

As with loop policies, the built-in names (``shm``, ``memory``) resolve to
the built-in classes directly, without reading metadata (an entry point
claiming one of them for another class is ignored), and a third-party entry
point is loaded only when it is asked for by name.  Nothing is cached.

``memory`` is registered, but ``dominoes run`` refuses it: its log lives in
one process's memory, and ``dominoes run`` runs the supervisor and every
replica as processes of their own (:func:`for_processes`).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Final

from .._core._backend import LogFactory
from .._core._memory import MemoryLogFactory
from ._shm import ShmLogFactory

__all__ = ("DEFAULT", "GROUP", "for_processes", "get", "names")

#: The entry-point group log backends register under.
GROUP: Final = "dominoes.logs"
#: The backend of ``dominoes run`` without ``--log``.
DEFAULT: Final = "shm"

_BUILTINS: Final = frozenset({"memory", "shm"})
#: Backends whose log lives in the memory of the one process that created it.
_ONE_PROCESS: Final = frozenset({"memory"})


def names() -> list[str]:
    """Every registered backend name, sorted (the built-ins and the entry points)."""
    return sorted({*_BUILTINS, *(ep.name for ep in entry_points(group=GROUP))})


def get(name: str, *, service: str = "log") -> LogFactory:
    """A new factory for the backend called ``name``.

    ``service`` names what the backend creates where it can (``shm``: the
    memfd).  Raises ``LookupError`` for a name nothing registers, listing the
    registered ones, and ``RuntimeError`` for an entry point that does not
    load or does not give a factory.
    """
    if name == "shm":
        return ShmLogFactory(service)
    if name == "memory":
        return MemoryLogFactory()
    if name.startswith("nats://"):
        from ._jetstream import JetStreamLogFactory

        return JetStreamLogFactory(name, service)
    candidates = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not candidates:
        raise LookupError(f"no log backend named {name!r}; available: {', '.join(names())}")
    return _load(candidates[0])


def for_processes(name: str, *, service: str = "log") -> LogFactory:
    """:func:`get`, for a service whose replicas are processes (``dominoes run``).

    Also raises ``ValueError`` for a backend whose log one process holds alone.
    """
    factory = get(name, service=service)
    if name in _ONE_PROCESS:
        raise ValueError(
            f"the {name} log works in one process only (dominoes.testing.Cluster, replicas "
            f"sharing one event loop), and dominoes run runs the supervisor and each replica "
            f"as a process of its own: use --log shm"
        )
    return factory


def _load(entry_point: EntryPoint) -> LogFactory:
    where = f" (from {entry_point.dist.name})" if entry_point.dist is not None else ""
    what = f"log backend entry point {entry_point.name} = {entry_point.value!r}{where}"
    try:
        obj = entry_point.load()
        factory = obj() if isinstance(obj, type) else obj
    except Exception as error:  # a plugin's import may raise anything at all
        raise RuntimeError(f"{what} failed to load: {error!r}") from error
    if not callable(getattr(factory, "create", None)):
        raise RuntimeError(f"{what} gives {factory!r}, not a LogFactory (no create method)")
    result: LogFactory = factory
    return result
