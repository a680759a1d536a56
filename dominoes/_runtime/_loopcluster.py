"""``LoopCluster``: N runtime replicas on the test's own event loop, for app tests.

``testing.Cluster`` steps replicas by hand and has no event loop; a web app
needs one.  ``LoopCluster`` runs the real runtime ``Replica`` (group commit,
wake-ups, timers, feeds) N times on the running loop, over the in-memory log
backend, so an async test can drive a service's ASGI app per replica with
``httpx.ASGITransport`` (no sockets, no processes) and read each replica's
state::

    async with LoopCluster(service, replicas=2) as cluster:
        async with cluster.client(0) as a, cluster.client(1) as b:
            await a.post("/stock/pen/restock/3")
            assert (await b.get("/stock/pen")).json()["units"] == 3

Each replica runs the app's lifespan (startup on enter, shutdown on exit),
and ``dominoes.current()`` is that replica's ``State`` in its requests and
its lifespan.  What it does not have: HTTP parsing, limits and process
isolation; test those against ``dominoes run``.
"""

from __future__ import annotations

import asyncio
import contextvars
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core._memory import MemoryLogHost
from .._core._service import Service
from ._replica import Replica
from ._state import State, current_var
from ._wakeups import LoopWakeups

if TYPE_CHECKING:
    import httpx

__all__ = ("LoopCluster",)

Message = MutableMapping[str, Any]
App = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


class _Lifespan:
    """The ASGI lifespan protocol for one replica (what uvicorn's ``LifespanOn`` does)."""

    def __init__(self, app: App, state: State) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._shutdown: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._context = contextvars.copy_context()
        self._context.run(current_var.set, state)
        self.supported = True

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._startup.set_exception(
                RuntimeError(
                    f"the ASGI app's lifespan startup failed: {message.get('message', '')}"
                )
            )
        elif kind == "lifespan.shutdown.complete":
            self._shutdown.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self._shutdown.set_exception(
                RuntimeError(
                    f"the ASGI app's lifespan shutdown failed: {message.get('message', '')}"
                )
            )

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:  # noqa: BLE001 - the app's own: it becomes the outcome
            if not self._startup.done():  # an app without lifespan support raises at once
                self.supported = False
                self._startup.set_result(None)
            elif not self._shutdown.done():
                self._shutdown.set_exception(exc)

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), context=self._context)
        await self._inbox.put({"type": "lifespan.startup"})
        await self._startup

    async def shutdown(self) -> None:
        if self._task is None or not self.supported or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._shutdown


class LoopCluster:
    """``replicas`` runtime replicas of ``service`` on the running event loop."""

    def __init__(
        self,
        service: Service,
        replicas: int = 2,
        *,
        capacity: int = 1024,
        slot_size: int = 256,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.service = service
        self.n = replicas
        self.capacity = capacity
        self.slot_size = slot_size
        self.replicas: list[Replica] = []
        self._states: list[State] = []
        self._lifespans: list[_Lifespan] = []
        self._host: MemoryLogHost | None = None
        self._run_dir: Path | None = None

    async def __aenter__(self) -> LoopCluster:
        loop = asyncio.get_running_loop()
        self._run_dir = Path(tempfile.mkdtemp(prefix=f"dominoes-{self.service.name}-"))
        host = self._host = MemoryLogHost(
            capacity=self.capacity, slot_size=self.slot_size, replicas=self.n
        )
        wakeups = LoopWakeups()
        try:
            for i in range(self.n):
                host.log.join(i, cursor=1)
                host.log.set_live(i)
                replica = Replica(
                    self.service,
                    i,
                    host.handle(),
                    wakeups,
                    replicas=self.n,
                    run_dir=self._run_dir,
                    apply_timeout=None,
                    fork_snapshots=False,
                )
                replica.attach(loop)
                replica.start_fresh()
                self.replicas.append(replica)
                self._states.append(State(replica))
            app = self.service.asgi
            if app is not None:
                for state in self._states:
                    lifespan = _Lifespan(app, state)
                    await lifespan.startup()
                    self._lifespans.append(lifespan)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for replica in self.replicas:
            replica.feeds.close()
        try:
            for lifespan in self._lifespans:
                await lifespan.shutdown()
        finally:
            for replica in self.replicas:
                replica.close()
            if self._host is not None:
                self._host.close()
                self._host = None
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None

    def state(self, index: int) -> State:
        """Replica ``index``'s ``State`` (what ``dominoes.current()`` is on it)."""
        return self._states[index]

    def app(self, index: int) -> App:
        """The service's ASGI app as replica ``index`` serves it."""
        app = self.service.asgi
        if app is None:
            raise TypeError(f"{self.service!r} carries no ASGI app (Service(asgi=app))")
        state = self._states[index]
        lifespan_state = self._lifespans[index].state if self._lifespans else {}

        async def served(
            scope: MutableMapping[str, Any],
            receive: Callable[[], Awaitable[Message]],
            send: Callable[[Message], Awaitable[None]],
        ) -> None:
            if scope["type"] in ("http", "websocket"):
                scope = {**scope, "state": dict(lifespan_state)}
            # httpx's ASGITransport runs the app in the caller's task: reset after
            token = current_var.set(state)
            try:
                await app(scope, receive, send)
            finally:
                current_var.reset(token)

        return served

    def client(self, index: int, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose requests replica ``index`` serves."""
        import httpx

        kwargs.setdefault("base_url", "http://dominoes.test")
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app(index)), **kwargs)

    def __repr__(self) -> str:
        return f"<LoopCluster {self.service.name!r} with {self.n} replicas>"
