"""Redis's error replies, and the strict number parsing its commands use.

A :class:`KvError` raised by a command is *its reply*: the batch that runs the
command catches it and answers ``-<message>``, on every replica alike (the
same state and the same command raise the same error), and the following
commands of the batch still run, as they would in Redis.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = (
    "INT64_MAX",
    "INT64_MIN",
    "LONG_MAX",
    "KvError",
    "arity_error",
    "misconf",
    "mpop_options",
    "not_float",
    "not_integer",
    "overflow",
    "parse_count",
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


#: Redis's ``LONG_MAX``: counts are C longs.
LONG_MAX: Final = 2**63 - 1


def parse_count(raw: bytes, lo: int, hi: int, message: str | None = None) -> int:
    """Redis's ``getRangeLongFromObjectOrReply``: an integer in ``lo..hi``, else its error."""
    try:
        n = parse_int(raw)
    except KvError:
        if message is None:
            raise
        raise KvError(f"ERR {message}") from None
    if not lo <= n <= hi:
        raise KvError(
            f"ERR {message}"
            if message is not None
            else f"ERR value is out of range, value must between {lo} and {hi}"
        )
    return n


def mpop_options(
    args: list[bytes], at: int, sides: tuple[bytes, bytes]
) -> tuple[list[bytes], bytes, int]:
    """``numkeys key ... SIDE [COUNT n]`` from ``args[at]`` on (LMPOP, BLMPOP, BZMPOP):
    the keys, the side (upper case) and the count (1 without COUNT), with Redis's errors."""
    numkeys = parse_count(args[at], 1, LONG_MAX, "numkeys should be greater than 0")
    where_at = at + 1 + numkeys
    if where_at >= len(args):
        raise syntax_error()
    where = args[where_at].upper()
    if where not in sides:
        raise syntax_error()
    count = -1
    i = where_at + 1
    while i < len(args):
        if count == -1 and args[i].upper() == b"COUNT" and i + 1 < len(args):
            count = parse_count(args[i + 1], 1, LONG_MAX, "count should be greater than 0")
            i += 2
        else:
            raise syntax_error()
    return args[at + 1 : where_at], where, max(count, 1)
