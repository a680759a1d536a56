"""Micro-protocols, and profiles that compose them into a service.

A micro-protocol is a :class:`~dominoes.Component` that lists the events it
binds (``binds``: event, method, order).  A :class:`Profile` is data: the
micro-protocols of a transport, each with its static arguments.  Composing
it builds a :class:`~dominoes.Service` whose registry binds every listed
method to its event, through ``Service.bind``, with the static arguments the
method takes.  So two profiles differ only in their bindings: the same
classes, the same events.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from dominoes import Component, Context, Service

__all__ = ("MicroProtocol", "Profile", "handler_for", "register")

#: name -> micro-protocol class, for profiles (filled by :func:`register`)
MICRO_PROTOCOLS: dict[str, type[MicroProtocol]] = {}


class MicroProtocol(Component):
    """A component that binds its handlers through a profile (see the module doc).

    ``binds`` lists ``(event, method name, order)``.  A method takes the
    profile's static arguments it names as keyword-only parameters with
    defaults; the others are not passed to it.
    """

    binds: ClassVar[tuple[tuple[str, str, float], ...]] = ()
    #: what the micro-protocol needs in the same profile (names), checked at compose
    requires: ClassVar[tuple[str, ...]] = ()


def register(name: str) -> Callable[[type[MicroProtocol]], type[MicroProtocol]]:
    """Class decorator: make a micro-protocol available to profiles as ``name``."""

    def deco(cls: type[MicroProtocol]) -> type[MicroProtocol]:
        if name in MICRO_PROTOCOLS:
            raise ValueError(f"micro-protocol {name!r} is registered twice")
        cls.name = name
        MICRO_PROTOCOLS[name] = cls
        return cls

    return deco


def _static_names(method: Callable[..., Any]) -> set[str]:
    params = inspect.signature(method).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def handler_for(cls: type[MicroProtocol], method: str) -> Callable[..., Any]:
    """A free function for the registry that calls ``method`` on this replica's
    instance of ``cls`` (each replica has its own copy of every component)."""

    def handler(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        return getattr(ctx.component(cls), method)(ctx, *args, **kwargs)

    handler.__name__ = method
    handler.__qualname__ = f"{cls.__name__}.{method}"
    return handler


@dataclasses.dataclass(frozen=True)
class Profile:
    """A transport configuration: micro-protocol names with their static arguments,
    in the order they are composed (the order of equal-``order`` handlers)."""

    name: str
    protocols: tuple[tuple[str, Mapping[str, Any]], ...]

    @classmethod
    def of(cls, name: str, *protocols: str | tuple[str, Mapping[str, Any]]) -> Profile:
        """``Profile.of("mine", "transport", ("window", {"size": 8}), ...)``."""
        items = tuple((p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in protocols)
        return cls(name, items)

    def names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def with_args(self, protocol: str, **args: Any) -> Profile:
        """The same profile with more static arguments for ``protocol``."""
        if protocol not in self.names():
            raise ValueError(f"profile {self.name!r} has no micro-protocol {protocol!r}")
        items = tuple((n, {**a, **args}) if n == protocol else (n, a) for n, a in self.protocols)
        return Profile(self.name, items)

    def adding(self, protocol: str, after: str | None = None, **args: Any) -> Profile:
        """The same profile with ``protocol`` added (at the end, or after ``after``)."""
        items = list(self.protocols)
        at = len(items) if after is None else self.names().index(after) + 1
        items.insert(at, (protocol, args))
        return Profile(self.name, tuple(items))

    def without(self, *protocols: str) -> Profile:
        return Profile(self.name, tuple((n, a) for n, a in self.protocols if n not in protocols))

    def compose(
        self,
        service_name: str | None = None,
        extra: Iterable[Component] = (),
        **service_kwargs: Any,
    ) -> Service:
        """A service of this profile's micro-protocols (and ``extra`` components, such
        as the application), with every binding in place."""
        names = self.names()
        if len(set(names)) != len(names):
            raise ValueError(f"profile {self.name!r} lists a micro-protocol twice")
        instances: list[Component] = []
        for name, _ in self.protocols:
            cls = MICRO_PROTOCOLS.get(name)
            if cls is None:
                known = ", ".join(sorted(MICRO_PROTOCOLS))
                raise ValueError(f"unknown micro-protocol {name!r} (known: {known})")
            missing = [r for r in cls.requires if r not in names]
            if missing:
                raise ValueError(f"micro-protocol {name!r} needs {', '.join(missing)} too")
            instances.append(cls())
        service = Service(service_name or self.name, [*instances, *extra], **service_kwargs)
        for name, args in self.protocols:
            cls = MICRO_PROTOCOLS[name]
            used: set[str] = set()
            for event, method, order in cls.binds:
                takes = _static_names(getattr(cls, method))
                static = {k: v for k, v in args.items() if k in takes}
                used.update(static)
                service.bind(event, handler_for(cls, method), order, **static)
            unknown = set(args) - used
            if unknown:
                raise ValueError(
                    f"micro-protocol {name!r} takes no argument {', '.join(sorted(unknown))}"
                )
        return service

    def describe(self) -> str:
        parts = []
        for name, args in self.protocols:
            text = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
            parts.append(f"{name}({text})" if text else name)
        return f"{self.name}: " + " ".join(parts)
