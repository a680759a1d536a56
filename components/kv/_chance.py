"""The one random source of the KV's random *reads* (SRANDMEMBER, HRANDFIELD, ZRANDMEMBER,
RANDOMKEY).

A read runs on one replica, so its draw may be local.  Inside a write script
the draw feeds the script's writes, which every replica must make alike, so
the script seeds this generator from the entry's ``ctx.random`` for that one
call (``_scripting._seeded``).  Writes never draw from it: they use
``ctx.random``.
"""

from __future__ import annotations

import random
from typing import Final

__all__ = ("READS",)

READS: Final = random.Random()
