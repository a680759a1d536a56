"""The :class:`LoopPolicy` interface.

A dominoes replica is one process running one event loop, so the choice of
loop is a per-process decision made once, when the replica starts.  A policy
is therefore just a named *loop factory*: it never touches asyncio's global
policy machinery (``asyncio.set_event_loop_policy`` is deprecated from Python
3.14), and it hands the factory to :class:`asyncio.Runner`, which is what
``asyncio.run`` and ``uvloop.run`` do internally as well.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


class LoopPolicy(abc.ABC):
    """How to build the event loop a replica runs on.

    Subclasses set :attr:`name` and implement :meth:`new_event_loop`; they
    override :meth:`available` (and :meth:`unavailable_reason`) when they
    depend on something that may be missing, so that ``dominoes.loops.get``
    can explain the failure instead of raising an ``ImportError`` from deep
    inside a replica.  Third parties register subclasses under the
    ``dominoes.loops`` entry-point group, keyed by :attr:`name`.

    Policies are stateless; ``get`` returns a fresh instance each time.
    """

    #: The name the policy is selected by, and its entry-point name.
    name: ClassVar[str]

    @classmethod
    def available(cls) -> bool:
        """Whether this policy can run in this interpreter.

        A classmethod, so the registry can ask before instantiating.  The
        default is ``True``: a policy that only needs the stdlib always can.
        """
        return True

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why :meth:`available` is ``False``, for the error ``get`` raises."""
        return f"{cls.__qualname__}.available() returned False"

    @abc.abstractmethod
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Return a new, not yet running, event loop owned by the caller."""

    def run(self, main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
        """Run ``main`` to completion on a fresh loop from :meth:`new_event_loop`.

        Like ``asyncio.run``: the loop is closed afterwards, after remaining
        tasks are cancelled and async generators and the default executor are
        shut down.  ``debug`` is passed to :class:`asyncio.Runner`.
        """
        with asyncio.Runner(debug=debug, loop_factory=self.new_event_loop) as runner:
            return runner.run(main)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r}>"
