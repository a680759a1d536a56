"""``dominoes.current()``: the replicated state, from a web handler (or any task).

A request handler runs on one replica, inside that replica's event loop.
``current()`` gives it a :class:`State` bound to that replica:

* ``await state.call(Cart.add, user, item)`` appends an update to the log
  (group commit: the calls of one loop iteration share an entry) and returns
  its result once this replica applied it, so the next read on *any* replica
  sees it;
* ``state.query(Cart.items, user)`` reads this replica's copy, linearizable
  by default (it first catches up with what any replica applied), or as it is
  for ``@query.local``;
* ``await state.read(...)`` is the query that stays linearizable with a log
  shared across machines (``--log nats://``);
* ``state.subscribe(topic)`` receives what update handlers ``ctx.publish``,
  on this replica, once this replica applied each entry; ``await
  state.publish(topic, message)`` publishes without changing any state.

The handle is typed: ``call`` and ``query`` take exactly the parameters of the
``@update`` (after ``self, ctx``) or ``@query`` (after ``self``) they name, and
return what it returns (``typing.ParamSpec``), so mypy checks them.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._core._codec import Mode
from .._core._component import Component, update
from .._core._component import query as query_marker
from .._core._service import PUBLISH_EVENT
from ._feeds import DEFAULT_MAXSIZE, Subscription

if TYPE_CHECKING:
    from ._replica import Replica

__all__ = ("State", "bind_process", "current", "current_var")

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=Component)

#: the State of the replica serving the current request (set by the ASGI shell)
current_var: contextvars.ContextVar[State] = contextvars.ContextVar("dominoes.current")
_process_state: State | None = None


def current() -> State:
    """The replicated state, as seen by the replica running the caller.

    Inside a request (HTTP or WebSocket) of a service's ASGI app, or in any
    task of a replica process (``on_start``, a TCP handler).  Raises
    ``RuntimeError`` elsewhere, e.g. in a plain ``uvicorn`` process.
    """
    state = current_var.get(None)
    if state is None:
        state = _process_state
        if state is None:
            raise RuntimeError(
                "dominoes.current() is called outside a dominoes replica: run the app "
                "with `dominoes run module:service` (the Service carries it as asgi=app)"
            )
    return state


def bind_process(state: State | None) -> None:
    """Make ``state`` what :func:`current` returns in this process by default."""
    global _process_state
    _process_state = state


class State:
    """One replica's handle on the replicated state (see :func:`current`).

    Options given to :meth:`using` (ownership mode, idempotency key) apply to
    the updates of the handle it returns.
    """

    __slots__ = ("_mode", "_request_id", "_thread", "replica")

    def __init__(
        self,
        replica: Replica,
        *,
        mode: Mode | str = Mode.AFFINITY,
        request_id: str = "",
    ) -> None:
        #: the runtime replica behind this handle
        self.replica = replica
        self._mode = Mode.parse(mode)
        self._request_id = request_id
        self._thread = threading.get_ident()

    @property
    def index(self) -> int:
        """This replica's index (0 ... replicas-1): say which core answered, never
        let it decide replicated state."""
        return self.replica.index

    @property
    def replicas(self) -> int:
        """How many replicas serve the service."""
        return self.replica.replicas

    def using(self, *, mode: Mode | str | None = None, request_id: str | None = None) -> State:
        """A handle whose updates use ``mode`` (``"race"``, ``"affinity"``,
        ``"every"``) and/or the idempotency key ``request_id``."""
        return State(
            self.replica,
            mode=self._mode if mode is None else mode,
            request_id=self._request_id if request_id is None else request_id,
        )

    async def call(self, event: update[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Apply the update ``event`` everywhere; its result once this replica applied it.

        The handler's exception is raised here.  A full log waits (backpressure);
        a log that cannot take writes raises ``DurabilityError``.
        """
        replica = self.replica
        if self._request_id:
            result = await replica.submit(
                event, *args, _mode=self._mode, _request_id=self._request_id, **kwargs
            )
        else:
            result = await replica.submit_soon(event, *args, _mode=self._mode, **kwargs)
        return result  # type: ignore[no-any-return]

    def query(self, ref: query_marker[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a ``@query`` on this replica's state (linearizable unless it is ``local``).

        Call it from the replica's event loop (an ``async def`` endpoint), never
        from a thread: the loop applies entries between your awaits.
        """
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "State.query() was called from another thread (a sync endpoint in a "
                "thread pool?): call it from the replica's event loop, in an async def"
            )
        return self.replica.query(ref, *args, **kwargs)  # type: ignore[no-any-return]

    async def read(self, ref: query_marker[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`query`, linearizable across machines too (``--log nats://``)."""
        return await self.replica.read(ref, *args, **kwargs)  # type: ignore[no-any-return]

    def component(self, which: type[C] | str) -> C:
        """This replica's instance of a component: read it, never change it here."""
        return self.replica.component(which)

    def subscribe(self, *topics: str, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """Messages published to ``topics`` from now on, as this replica applies them.

        ``async for message in state.subscribe("room:1"): ...``; close it (or
        use it as a ``with`` block) when the client leaves.
        """
        return self.replica.feeds.subscribe(topics, maxsize)

    async def publish(self, topic: str, message: Any) -> None:
        """Publish ``message`` to ``topic``'s subscribers on every replica.

        It goes through the log as an ``every`` entry that changes no state,
        so subscribers see it in order with the writes around it.  Returns
        once this replica delivered it.
        """
        await self.replica.submit(PUBLISH_EVENT, topic, message, _mode=Mode.EVERY)

    def __repr__(self) -> str:
        return f"<dominoes.State replica {self.replica.index} of {self.replica.replicas}>"
