"""Redis's glob patterns for KEYS, SCAN MATCH and PSUBSCRIBE: ``*``, ``?``, ``[a-z]``, ``[^x]``."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

__all__ = ("glob_matcher",)


def _always(_: bytes) -> bool:
    return True


@lru_cache(maxsize=256)
def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A predicate telling whether a key (or channel) matches ``pattern``."""
    if pattern == b"*":
        return _always
    regex = re.compile(_translate(pattern), re.DOTALL)
    return lambda s: regex.fullmatch(s) is not None


def _translate(p: bytes) -> bytes:
    out: list[bytes] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i : i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(p[i : i + 1]))
        elif c == b"[":
            j = p.find(b"]", i + 1)
            if j < 0:  # an unclosed bracket is a literal '['
                out.append(re.escape(c))
            else:
                out.append(_bracket(p[i + 1 : j]))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def _bracket(body: bytes) -> bytes:
    negate = body.startswith(b"^")
    if negate:
        body = body[1:]
    parts: list[bytes] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i : i + 1]
        if c == b"\\" and i + 1 < n:
            i += 1
            c = body[i : i + 1]
        if i + 2 < n and body[i + 1 : i + 2] == b"-":
            lo, hi = c, body[i + 2 : i + 3]
            if lo > hi:
                lo, hi = hi, lo
            parts.append(re.escape(lo) + b"-" + re.escape(hi))
            i += 3
            continue
        parts.append(re.escape(c))
        i += 1
    if not parts:
        return b"[^\\s\\S]" if not negate else b"[\\s\\S]"
    return b"[" + (b"^" if negate else b"") + b"".join(parts) + b"]"
