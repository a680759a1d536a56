"""The freestanding x86 test guest the VMM runs, and its build tool (see README.md).

``build_guest``, ``SCENARIOS`` and ``ARCHES`` are re-exported lazily, so that
``python -m dominoes.components.vmm.guest.build`` does not import the module
twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .build import ARCHES, SCENARIOS, build_guest

__all__ = ("ARCHES", "SCENARIOS", "build_guest")


def __getattr__(name: str) -> object:
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
