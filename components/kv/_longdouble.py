"""Redis's ``long double`` arithmetic for INCRBYFLOAT and HINCRBYFLOAT, exactly.

Redis 7.0 reads both numbers with ``strtold``, adds them in an x86-64
``long double`` (the x87 80-bit format: a 64-bit significand, exponents from
-16382, subnormals down to 2**-16445) and prints the sum with ``%.17Lf``,
trailing zeros removed.  Python has no such type, so this module does the
same in integers and fractions: every value is an exact :class:`Fraction`
that a ``long double`` can hold, rounded to nearest, ties to even, as the
hardware and glibc's ``strtold`` and ``printf`` round.  The replies are then
Redis's to the last digit (``0.1`` plus ``1e3`` is ``1000.09999999999999998``
in both), and every replica computes the same bytes.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

__all__ = ("LongDouble", "add", "format_human", "parse")

#: A value a ``long double`` holds: an exact fraction, or an infinity (``math.inf``).
LongDouble = Fraction | float

_DIGITS: Final = 64  # the significand's bits, the integer bit included
_EMIN: Final = -16382  # the smallest normal exponent
_EMAX: Final = 16383  # the largest exponent: values below 2**16384
_LOG2_10: Final = math.log2(10)
#: Redis's MAX_LONG_DOUBLE_CHARS: a longer string is not a number to it.
_MAX_CHARS: Final = 5 * 1024

_DECIMAL: Final = re.compile(rb"([+-]?)(?:([0-9]+)\.?([0-9]*)|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?")
_HEX: Final = re.compile(
    rb"([+-]?)0[xX](?:([0-9a-fA-F]+)\.?([0-9a-fA-F]*)|\.([0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?"
)
_INFINITY: Final = re.compile(rb"([+-]?)(?:inf|infinity)", re.IGNORECASE)


_CHUNK: Final = 4000  # decimal digits per int/str conversion (Python limits one to 4300)
_SCALE: Final[int] = 10**_CHUNK


def _int(digits: bytes) -> int:
    """``int(digits)`` for any length (up to 5 KiB here)."""
    if len(digits) <= _CHUNK:
        return int(digits)
    return _int(digits[:-_CHUNK]) * _SCALE + int(digits[-_CHUNK:])


def _str(n: int) -> str:
    """``str(n)`` of a non-negative integer of any length."""
    if n < _SCALE:
        return str(n)
    high, low = divmod(n, _SCALE)
    return _str(high) + str(low).rjust(_CHUNK, "0")


def _round(value: Fraction) -> LongDouble:
    """``value`` rounded to the nearest ``long double`` (ties to even); an infinity past
    the largest."""
    if value == 0:
        return Fraction(0)
    sign = -1 if value < 0 else 1
    num, den = abs(value.numerator), value.denominator
    # e = floor(log2(|value|))
    e = num.bit_length() - den.bit_length()
    if (num << -e if e < 0 else num) < (den << e if e > 0 else den):
        e -= 1
    if e > _EMAX:
        return sign * math.inf
    shift = _DIGITS - 1 - max(e, _EMIN)  # the significand is |value| * 2**shift
    if shift >= 0:
        q, r = divmod(num << shift, den)
        twice, whole = 2 * r, den
    else:
        q, r = divmod(num, den << -shift)
        twice, whole = 2 * r, den << -shift
    if twice > whole or (twice == whole and q & 1):
        q += 1
    if q >> _DIGITS and max(e, _EMIN) + 1 > _EMAX:  # rounded up past the largest
        return sign * math.inf
    return sign * Fraction(q) / (Fraction(2) ** shift)


def _scaled(sign: bytes, mantissa: int, exponent: int, base: int, magnitude: int) -> Fraction:
    """``mantissa * base**exponent`` with its sign, or ValueError where it is surely out of
    range (strtold's ERANGE): ``magnitude`` is log2 of the value, or up to 4 above it.
    Near the edges the exact value is computed and :func:`_round` decides."""
    if mantissa == 0:
        return Fraction(0)
    if magnitude > _EMAX + 8:
        raise ValueError("overflow")
    if magnitude < _EMIN - _DIGITS - 8:
        raise ValueError("underflow")
    value = Fraction(mantissa) * Fraction(base) ** exponent
    return -value if sign == b"-" else value


def parse(text: bytes) -> LongDouble | None:
    """Redis's ``string2ld``: the ``long double`` ``strtold`` reads from all of ``text``, or
    None where Redis refuses it (empty, longer than 5 KiB, leading space, trailing bytes,
    NaN, or out of range: ERANGE's 0 or infinity)."""
    if not text or len(text) >= _MAX_CHARS:
        return None
    m = _DECIMAL.fullmatch(text)
    try:
        if m is not None:
            sign, whole, frac, only, exp = m.groups()
            digits = (whole or b"") + (frac or only or b"")
            scale = len(frac or only or b"")
            exponent = int(exp or b"0") - scale
            mantissa = _int(digits)
            magnitude = (len(digits.lstrip(b"0")) + exponent) * _LOG2_10 if mantissa else 0
            value = _scaled(sign, mantissa, exponent, 10, math.floor(magnitude))
        else:
            m = _HEX.fullmatch(text)
            if m is not None:
                sign, whole, frac, only, exp = m.groups()
                digits = (whole or b"") + (frac or only or b"")
                exponent = int(exp or b"0") - 4 * len(frac or only or b"")
                mantissa = int(digits, 16)
                value = _scaled(sign, mantissa, exponent, 2, mantissa.bit_length() + exponent)
            else:
                m = _INFINITY.fullmatch(text)
                if m is None:
                    return None
                return -math.inf if m.group(1) == b"-" else math.inf
    except ValueError:
        return None
    rounded = _round(value)
    if isinstance(rounded, float) or (rounded == 0 and value != 0):
        return None  # ERANGE
    return rounded


def add(a: LongDouble, b: LongDouble) -> LongDouble:
    """``a + b`` in ``long double``: an infinity if either is one or the sum overflows (NaN
    for inf - inf is an infinity here too: Redis refuses both alike)."""
    if isinstance(a, float) or isinstance(b, float):
        return math.inf
    return _round(a + b)


def format_human(value: Fraction) -> bytes:
    """Redis's ``ld2string(..., LD_STR_HUMAN)``: ``%.17Lf``, then trailing zeros and a
    trailing point removed, and ``-0`` written ``0``."""
    n = round(abs(value) * 10**17)  # Fraction rounds ties to even, as glibc's printf does
    digits = _str(n).rjust(18, "0")
    whole, frac = digits[:-17], digits[-17:].rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    if value < 0 and text != "0":
        text = "-" + text
    return text.encode()
