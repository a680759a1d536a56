"""The two built-in policies: uvloop (the default) and the stdlib loop."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from ._policy import LoopPolicy


class UvloopPolicy(LoopPolicy):
    """libuv's loop through uvloop: the default, for its lower per-wakeup cost.

    uvloop is a hard dependency of dominoes, but it is imported lazily so that
    a missing or broken build (an unsupported platform, a source checkout
    without the wheel) shows up as an explained ``RuntimeError`` from
    ``get("uvloop")`` and lets ``get()`` fall back to the stdlib loop, rather
    than making ``import dominoes.loops`` fail.
    """

    name: ClassVar[str] = "uvloop"

    @classmethod
    def available(cls) -> bool:
        return _import_error() is None

    @classmethod
    def unavailable_reason(cls) -> str:
        error = _import_error()
        if error is None:
            return "uvloop is available"
        return f"uvloop cannot be imported ({error!r}); install it with 'pip install uvloop'"

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()


class AsyncioPolicy(LoopPolicy):
    """The stdlib loop: always available, and the reference for debugging.

    Running a suspect service on it tells a uvloop problem from our own.
    """

    name: ClassVar[str] = "asyncio"

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


def _import_error() -> ImportError | None:
    """The error importing uvloop raises, or ``None`` if it imports.

    Not cached: a successful import is cached by ``sys.modules`` anyway, and a
    failed one is cheap to retry and may succeed after an install.
    """
    try:
        import uvloop  # noqa: F401
    except ImportError as error:
        return error
    return None
