"""Finding loop policies by name.

Policies are registered under the ``dominoes.loops`` entry-point group, the
built-ins included (see ``pyproject.toml``), so any tool reading installed
metadata sees the same list we do.  A third-party package adds one with::

    [project.entry-points."dominoes.loops"]
    trio-asyncio = "mypkg.loops:TrioAsyncioPolicy"

Three rules keep plugins from hurting anyone who did not ask for them:

- The built-in names resolve to the built-in classes directly, without reading
  metadata: ``get()`` and ``get("uvloop")`` never import third-party code, and
  keep working from a checkout whose installed metadata is stale.  An entry
  point claiming a built-in name for some other class is ignored.
- Third-party entry points are loaded only when requested by name
  (:func:`get`) or when everything is listed (:func:`available`), never at
  import.  A broken one is skipped with a ``RuntimeWarning`` there, so one bad
  plugin cannot take the rest down; requesting it by name raises
  ``RuntimeError`` with the cause chained.
- Nothing is cached: discovery runs once per replica start, and a plugin
  installed since then is found the next time.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from ._builtin import AsyncioPolicy, UvloopPolicy
from ._policy import LoopPolicy

#: The entry-point group policies register under.
GROUP = "dominoes.loops"

#: ``get()`` picks the first of these that is available; asyncio always is.
_DEFAULTS = (UvloopPolicy, AsyncioPolicy)

_BUILTINS: dict[str, type[LoopPolicy]] = {cls.name: cls for cls in _DEFAULTS}


class _BrokenPolicyError(RuntimeError):
    """An entry point in :data:`GROUP` that does not give a usable policy."""


def get(name: str | None = None) -> LoopPolicy:
    """Return a new instance of the policy called ``name``.

    ``None`` means the default: uvloop if it can be imported, else asyncio, so
    a service still starts (more slowly) where uvloop is missing.

    Raises ``LookupError`` for a name nothing registers, listing the available
    ones, and ``RuntimeError`` for one that is registered but cannot run here
    (its ``available()`` is false, or its entry point fails to load).
    """
    cls: type[LoopPolicy]
    if name is None:
        cls = next(c for c in _DEFAULTS if c.available())
    elif name in _BUILTINS:
        cls = _BUILTINS[name]
    else:
        candidates = _third_party(problems=[]).get(name)
        if not candidates:
            names = ", ".join(_discover(problems=[])) or "none"
            raise LookupError(f"no loop policy named {name!r}; available: {names}")
        problems: list[_BrokenPolicyError] = []
        found = _first_loadable(candidates, problems)
        if found is None:
            if len(problems) == 1:
                raise problems[0]
            detail = "; ".join(str(p) for p in problems)
            raise RuntimeError(f"loop policy {name!r} cannot be loaded: {detail}") from problems[-1]
        for problem in problems:
            warnings.warn(f"{problem}; skipped", RuntimeWarning, stacklevel=2)
        cls = found
    reason = _unavailable_reason(cls)
    if reason is not None:
        raise RuntimeError(f"loop policy {cls.name!r} is not available here: {reason}")
    return cls()


def available() -> dict[str, type[LoopPolicy]]:
    """Every policy that can run here, by name, in name order.

    Policies whose ``available()`` is false are left out silently (that is a
    fact about this machine, not a fault); broken entry points are left out
    with a ``RuntimeWarning`` each.
    """
    problems: list[_BrokenPolicyError] = []
    found = _discover(problems)
    for problem in problems:
        warnings.warn(f"{problem}; skipped", RuntimeWarning, stacklevel=2)
    return found


def _discover(problems: list[_BrokenPolicyError]) -> dict[str, type[LoopPolicy]]:
    """The runnable policies; what went wrong is appended to ``problems``."""
    found = {name: cls for name, cls in _BUILTINS.items() if cls.available()}
    for name, candidates in _third_party(problems).items():
        cls = _first_loadable(candidates, problems)
        if cls is None:
            continue
        try:
            if _unavailable_reason(cls) is None:
                found[name] = cls
        except _BrokenPolicyError as problem:
            problems.append(problem)
    return dict(sorted(found.items()))


def _third_party(problems: list[_BrokenPolicyError]) -> dict[str, list[EntryPoint]]:
    """Entry points in :data:`GROUP` other than the built-ins', by name.

    Several distributions may register one name; they are kept in discovery
    order, and the first that loads wins.
    """
    found: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=GROUP):
        if entry_point.name not in _BUILTINS:
            found.setdefault(entry_point.name, []).append(entry_point)
        elif not _is_ours(entry_point):
            problems.append(
                _BrokenPolicyError(
                    f"{_describe(entry_point)} claims the built-in loop policy name "
                    f"{entry_point.name!r}, which always means "
                    f"{_BUILTINS[entry_point.name].__qualname__}"
                )
            )
    return found


def _first_loadable(
    candidates: Iterable[EntryPoint], problems: list[_BrokenPolicyError]
) -> type[LoopPolicy] | None:
    for entry_point in candidates:
        try:
            return _load(entry_point)
        except _BrokenPolicyError as problem:
            problems.append(problem)
    return None


def _load(entry_point: EntryPoint) -> type[LoopPolicy]:
    """Import the policy class ``entry_point`` names, or raise ``_BrokenPolicyError``."""
    try:
        obj = entry_point.load()
    except Exception as error:  # a plugin's import may raise anything at all
        raise _BrokenPolicyError(f"{_describe(entry_point)} failed to load: {error!r}") from error
    if not (isinstance(obj, type) and issubclass(obj, LoopPolicy)):
        raise _BrokenPolicyError(f"{_describe(entry_point)} is {obj!r}, not a LoopPolicy subclass")
    if inspect.isabstract(obj):
        raise _BrokenPolicyError(f"{_describe(entry_point)} is an abstract class")
    declared = getattr(obj, "name", None)
    if declared != entry_point.name:
        raise _BrokenPolicyError(
            f"{_describe(entry_point)} is registered as {entry_point.name!r} "
            f"but {obj.__qualname__}.name is {declared!r}"
        )
    return obj


def _unavailable_reason(cls: type[LoopPolicy]) -> str | None:
    """``None`` if ``cls`` can run here, else why not.

    A third-party ``available()`` that raises is reported as broken rather
    than propagated, for the same reason a failing import is.
    """
    try:
        if cls.available():
            return None
        return cls.unavailable_reason()
    except Exception as error:  # third-party code; see above
        raise _BrokenPolicyError(
            f"loop policy {cls.name!r} ({cls.__module__}.{cls.__qualname__}) "
            f"cannot tell whether it is available: {error!r}"
        ) from error


def _is_ours(entry_point: EntryPoint) -> bool:
    """Whether an entry point with a built-in name points into this package."""
    return entry_point.module == __package__ or entry_point.module.startswith(f"{__package__}.")


def _describe(entry_point: EntryPoint) -> str:
    where = f" (from {entry_point.dist.name})" if entry_point.dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value!r}{where}"
