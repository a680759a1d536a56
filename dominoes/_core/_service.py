"""A service: a named set of components, plus service-level bindings.

A ``Service`` is a *template*.  Each replica gets its own deep copy of the
components (``new_machine``), so N replicas can live in one process
(``testing.Cluster``) as easily as in N processes.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from types import MethodType
from typing import Any

from . import _reconfigure as reconfigure
from ._component import (
    _AMBIGUOUS,
    CONSISTENCIES,
    Component,
    EventRef,
    on_marks,
    query,
    resolve,
    update,
)
from ._context import Context
from ._machine import DEFAULT_DEDUP_WINDOW, StateMachine
from ._partition import Router
from ._registry import Handler, Registry

__all__ = ("PUBLISH_EVENT", "Option", "Service")

#: The built-in event ``State.publish`` raises (in ``every`` mode): it changes
#: no state and publishes its message on every replica.
PUBLISH_EVENT = "dominoes.publish"
#: the built-in event of a reconfiguration (see ``_reconfigure``)
RECONFIGURE_EVENT = reconfigure.EVENT


def _publish(ctx: Context, topic: str, message: Any) -> None:
    ctx.publish(topic, message)


def _reconfigure(ctx: Context, spec: Any) -> Any:
    result = ctx._machine.reconfigure(spec)
    follow = {"add": reconfigure.ADDED, "remove": reconfigure.REMOVED}.get(spec["do"])
    if follow is not None and follow in ctx._machine.registry:
        ctx.raise_event(follow, result)
    return result


class Option:
    """A command-line option of a service: ``dominoes run mod:service --NAME VALUE``.

    ``dominoes run`` takes the options it does not know itself as the
    service's, checks them against the service's ``options`` (an unknown name,
    a missing required one, or a value ``type`` refuses is an error before any
    replica starts) and gives every replica the converted values as
    ``replica.options[name]`` (the name as declared: ``tun``, ``addr``).  A
    ``flag`` takes no value (``True`` when given, else ``False``).
    """

    __slots__ = ("default", "flag", "help", "name", "required", "type")

    def __init__(
        self,
        name: str,
        *,
        help: str = "",
        default: Any = None,
        required: bool = False,
        type: Callable[[str], Any] = str,
        flag: bool = False,
    ) -> None:
        if not name.replace("-", "_").isidentifier():
            raise ValueError(f"an option name is identifier-like (tun, listen-port), not {name!r}")
        self.name = name
        self.help = help
        self.default = False if flag and default is None else default
        self.required = required
        self.type = type
        self.flag = flag

    def __repr__(self) -> str:
        return f"Option({self.name!r})"


def parse_options(
    declared: Iterable[Option], given: dict[str, str | None], *, service: str = ""
) -> dict[str, Any]:
    """The values of ``declared`` from what the command line ``given`` (name -> text, or
    None for a flag); ValueError naming the problem for an unknown or missing option or
    a value its ``type`` refuses."""
    options = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(options))
    if unknown:
        known = ", ".join(f"--{n}" for n in options) or "none"
        raise ValueError(
            f"unknown option --{unknown[0]} for service {service!r} (its options: {known})"
        )
    values: dict[str, Any] = {}
    for name, option in options.items():
        if name not in given:
            if option.required:
                raise ValueError(f"service {service!r} needs --{name}: {option.help}".rstrip(": "))
            values[name] = option.default
            continue
        text = given[name]
        if option.flag:
            if text is not None:
                raise ValueError(f"--{name} takes no value")
            values[name] = True
            continue
        if text is None:
            raise ValueError(f"--{name} needs a value")
        try:
            values[name] = option.type(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--{name} {text}: {exc}") from None
    return values


class Service:
    """A named composition of components, run as N identical replicas.

    ``bind``/``unbind`` add free-function handlers (called as
    ``handler(ctx, *args, **kwargs, **static)``) to any event; they apply to
    every replica created afterwards.
    """

    def __init__(
        self,
        name: str,
        components: Iterable[Component] = (),
        *,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
        debug: bool = False,
        digest_every: int = 0,
        tcp: Callable[..., Any] | None = None,
        udp: EventRef | None = None,
        on_start: Callable[..., Any] | None = None,
        reads: str = "linearizable",
        asgi: Callable[..., Any] | None = None,
        options: Iterable[Option] = (),
        serves: str | Callable[[dict[str, Any], str, int], str] | None = None,
        configure: Callable[[dict[str, Any]], Service] | None = None,
    ) -> None:
        if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"service name must be an identifier-like string, not {name!r}")
        self.name = name
        self.dedup_window = dedup_window
        #: debug mode: queries are checked for writes (costs two digests each)
        self.debug = debug
        #: compare state digests every this many log positions (0: never);
        #: ``dominoes run --digest-every`` overrides it
        self.digest_every = digest_every
        #: TCP ingress: ``async def handler(replica, reader, writer)`` (asyncio
        #: streams) or ``factory(replica) -> asyncio.Protocol``; run by every
        #: replica on a SO_REUSEPORT socket
        self.tcp = tcp
        #: UDP ingress: the ``@update`` event each datagram raises, as
        #: ``(ctx, data: bytes, host: str, port: int)``; the owner sends a bytes
        #: result back from its own socket
        self.udp = udp
        if asgi is not None and tcp is not None:
            raise ValueError("a service serves either an ASGI app or a TCP handler, not both")
        if asgi is not None and not callable(asgi):
            raise TypeError(f"asgi must be an ASGI application (a callable), not {asgi!r}")
        #: an ASGI application (Starlette, FastAPI, ...) every replica serves over
        #: HTTP/1.1 and WebSocket on the service's port (``dominoes run --port``)
        self.asgi = asgi
        #: ``on_start(replica)``, sync or async: called on every replica once it
        #: is live (after a restart's catch-up too) and before its ingress opens
        self.on_start = on_start
        if reads not in CONSISTENCIES:
            raise ValueError(f"reads must be one of {CONSISTENCIES}, not {reads!r}")
        #: how queries read by default: ``"linearizable"`` (catch up to the
        #: completed tail first) or ``"local"`` (possibly stale, no catch-up);
        #: ``dominoes run --reads`` overrides it, ``@query.local`` per query
        self.reads = reads
        #: the service's own command-line options (``dominoes run ... --NAME VALUE``);
        #: each replica gets their values as ``replica.options``
        self.options: tuple[Option, ...] = tuple(options)
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"service {name!r} declares an option twice: {names}")
        #: where a service that brings its own ingress (``on_start``) serves, for the
        #: line ``dominoes run`` prints when every replica is up: a string, or
        #: ``serves(options, host, port) -> str`` from the service's option values and
        #: ``--host``/``--port`` (None: say what the tcp/udp/asgi ingress serves)
        self.serves = serves
        #: ``configure(options) -> Service``: the composition to run for these option
        #: values (for example the same service partitioned), or None: this one
        self.configure = configure
        self._components: list[Component] = []
        self._extra: dict[int, tuple[EventRef, Handler, float, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        for c in components:
            self.add(c)

    def configured(self, options: dict[str, Any]) -> Service:
        """The service to run with these option values (``configure``'s, or this one).

        ``dominoes run`` calls it in the supervisor and in every replica, with
        the values of the service's own options, before any state is built.
        """
        if self.configure is None:
            return self
        service = self.configure(options)
        if not isinstance(service, Service):
            raise TypeError(f"{self.name}: configure() returned {service!r}, not a Service")
        return service

    def add(self, component: Component) -> None:
        """Add a component (before any replica is created)."""
        if isinstance(component, type):
            raise TypeError(f"pass an instance of {component.__name__}, not the class")
        if not isinstance(component, Component):
            raise TypeError(f"{component!r} is not a dominoes Component")
        if any(c.name == component.name for c in self._components):
            raise ValueError(f"two components are named {component.name!r}")
        self._components.append(component)

    @property
    def components(self) -> tuple[Component, ...]:
        """The template instances (each replica works on its own copies)."""
        return tuple(self._components)

    def bind(self, event: EventRef, handler: Handler, order: float = 0, **static: Any) -> int:
        """Bind a free function to ``event`` in every replica; returns a binding id."""
        if not callable(handler):
            raise TypeError(f"handler is not callable: {handler!r}")
        bid = next(self._ids)
        self._extra[bid] = (event, handler, order, static)
        return bid

    def unbind(self, binding_id: int) -> None:
        del self._extra[binding_id]

    def events(self) -> list[str]:
        """Every event some handler is bound to (the built-in ``dominoes.publish`` aside)."""
        names = self._build(self._components)[0].events()  # names only: no copy needed
        return [name for name in names if name not in (PUBLISH_EVENT, RECONFIGURE_EVENT)]

    def new_machine(self, index: int, replicas: int = 1) -> StateMachine:
        """A fresh state machine for replica ``index`` of ``replicas``, with its own components.

        ``replicas`` places the partitions of partitioned components (with the
        default 1, the machine holds every partition).
        """
        comps = copy.deepcopy(self._components)
        registry, queries, names, consistency = self._build(comps)
        local = frozenset(
            name for name, how in consistency.items() if (how or self.reads) == "local"
        )
        machine = StateMachine(
            self.name,
            index,
            comps,
            registry,
            queries,
            names,
            local_queries=local,
            dedup_window=self.dedup_window,
            debug=self.debug,
            digest_every=self.digest_every,
        )
        if replicas != 1:
            machine.replicas = replicas
        return machine

    def _build(
        self, comps: list[Component]
    ) -> tuple[Registry, dict[str, Callable[..., Any]], dict[object, str], dict[str, str | None]]:
        """Bind every handler of ``comps`` into a new registry.

        Binding happens in a fixed order, so binding ids, and therefore the
        order of handlers with equal ``order``, are the same on every replica:
        first every ``@update`` (components in service order, then each class's
        attributes in MRO and definition order), then every ``@on`` in the same
        order, then the service-level ``bind`` calls in call order.  So at equal
        ``order`` an update runs before the ``@on`` handlers bound to it.
        """
        registry = Registry()
        queries: dict[str, Callable[..., Any]] = {}
        consistency: dict[str, str | None] = {}
        # An @update/@query descriptor names "<component name>.<attr>" of the
        # component that has it; a descriptor shared by two components (a class
        # and its subclass) is ambiguous and must be named by string.
        names: dict[object, str] = {}
        members: list[tuple[Component, str, object]] = []
        for comp in comps:
            seen: set[str] = set()
            for klass in type(comp).__mro__:
                for attr, value in vars(klass).items():
                    if attr not in seen:
                        seen.add(attr)
                        members.append((comp, attr, value))
        for comp, attr, value in members:
            if isinstance(value, update | query):
                full = f"{comp.name}.{attr}"
                names[value] = _AMBIGUOUS if value in names else full
                spec = type(comp).partition
                if spec is not None:  # routed to this replica's partitions' instances
                    router = Router(comp.name, spec, value.fn, query=isinstance(value, query))
                    registry.bind(full, router)  # a query too: a forwarded read is a call
                    if isinstance(value, query):
                        queries[full] = router
                        consistency[full] = value.consistency
                elif isinstance(value, update):
                    registry.bind(full, MethodType(value.fn, comp))
                else:
                    queries[full] = MethodType(value.fn, comp)
                    consistency[full] = value.consistency
        for comp, attr, value in members:
            fn = value.fn if isinstance(value, update) else value
            if on_marks(fn) and type(comp).partition is not None:
                raise TypeError(
                    f"{comp.name}.{attr}: @on handlers are not supported on a partitioned "
                    "component; bind them on a replicated one"
                )
            for ref, order, static in on_marks(fn):
                registry.bind(resolve(names, ref), MethodType(fn, comp), order, **static)  # type: ignore[arg-type]
        for event, handler, order, static in self._extra.values():
            registry.bind(resolve(names, event), handler, order, **static)
        registry.bind(PUBLISH_EVENT, _publish)
        registry.bind(RECONFIGURE_EVENT, _reconfigure)
        return registry, queries, names, consistency

    def resolve(self, ref: EventRef) -> str:
        """The event name ``ref`` stands for in this service."""
        return resolve(self._build(self._components)[2], ref)

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self._components)
        return f"<Service {self.name!r} [{names}]>"
