"""Event-loop policies (installed as ``dominoes.loops``).

Each replica is one process running one event loop; a policy is the named
factory for that loop.  ``get()`` gives the default (uvloop, or the stdlib
loop where uvloop cannot be imported), ``get("asyncio")`` the stdlib loop, and
third-party packages add more under the ``dominoes.loops`` entry-point group::

    from dominoes import loops

    result = loops.get().run(main())

Like ``components/``, this package is built on the public API only.
"""

from __future__ import annotations

from ._builtin import AsyncioPolicy as AsyncioPolicy
from ._builtin import UvloopPolicy as UvloopPolicy
from ._policy import LoopPolicy as LoopPolicy
from ._registry import available as available
from ._registry import get as get

__all__ = (
    "AsyncioPolicy",
    "LoopPolicy",
    "UvloopPolicy",
    "available",
    "get",
)
