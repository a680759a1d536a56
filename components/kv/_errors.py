"""Redis's error replies, and the strict number parsing its commands use.

A :class:`KvError` raised by a command is *its reply*: the batch that runs the
command catches it and answers ``-<message>``, on every replica alike (the
same state and the same command raise the same error), and the following
commands of the batch still run, as they would in Redis.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

__all__ = (
    "INT64_MAX",
    "INT64_MIN",
    "KvError",
    "arity_error",
    "misconf",
    "not_float",
    "not_integer",
    "overflow",
    "parse_float",
    "parse_int",
    "syntax_error",
    "unknown_command",
    "unreachable",
    "wrong_type",
)

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class KvError(Exception):
    """An error reply; ``str(error)`` is the whole message (``"ERR syntax error"``)."""


def wrong_type() -> KvError:
    return KvError("WRONGTYPE Operation against a key holding the wrong kind of value")


def syntax_error() -> KvError:
    return KvError("ERR syntax error")


def not_integer() -> KvError:
    return KvError("ERR value is not an integer or out of range")


def not_float() -> KvError:
    return KvError("ERR value is not a valid float")


def overflow() -> KvError:
    return KvError("ERR increment or decrement would overflow")


def misconf(reason: str) -> KvError:
    """Redis's refusal of a write while its append-only file cannot be written."""
    return KvError(f"MISCONF Errors writing to the AOF file: {reason}")


def unreachable(reason: str) -> KvError:
    """The refusal while the log's stream cannot be reached (``--log nats://``)."""
    return KvError(f"TRYAGAIN {reason}")


def arity_error(name: bytes) -> KvError:
    return KvError(f"ERR wrong number of arguments for '{_text(name).lower()}' command")


def unknown_command(args: list[bytes]) -> KvError:
    # Redis quotes the arguments while the list is shorter than 128 characters.
    shown = ""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += f"'{_text(arg)[: 128 - len(shown)]}' "
    return KvError(
        f"ERR unknown command '{_text(args[0])[:128]}', with args beginning with: {shown}"
    )


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")


# Redis's string2ll: optional '-', no '+', no spaces, no leading zeros, no "-0".
_INT: Final = re.compile(rb"-?[1-9][0-9]{0,18}|0")


def parse_int(value: bytes) -> int:
    """An int64 in Redis's strict syntax, or ``ERR value is not an integer``."""
    if _INT.fullmatch(value) is None:
        raise not_integer()
    n = int(value)
    if not INT64_MIN <= n <= INT64_MAX:
        raise not_integer()
    return n


# strtold's syntax without the leading spaces it would skip (Redis refuses them).
_FLOAT: Final = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: The largest finite ``long double`` (Redis computes INCRBYFLOAT in one).
_LONG_DOUBLE_MAX: Final = Decimal("1.18973149535723176502e+4932")


def parse_float(value: bytes) -> Decimal:
    """A finite decimal, or ``ERR value is not a valid float``.

    Exact decimal arithmetic stands in for Redis's ``long double``: it gives
    the same text for the sums people make (``0.1 + 0.2`` is ``0.3`` in both),
    and every replica computes the same result.
    """
    if _FLOAT.fullmatch(value) is None:
        raise not_float()
    try:
        d = Decimal(value.decode())
    except InvalidOperation:
        raise not_float() from None
    if abs(d) > _LONG_DOUBLE_MAX:
        raise not_float()
    return d
