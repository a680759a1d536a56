"""RESP, sans-IO: request bytes in, commands out; reply values in, bytes out.

Parsing requests
----------------
``hiredis.Reader`` (C) parses, but it trusts every length it reads: a ``*<n>``
header allocates a list of n slots as soon as it is read, nested arrays are
accepted at any depth, and a ``$<len>`` header just waits for the bytes.  A
client could make a replica allocate gigabytes with a few bytes.  So every byte
is **validated before hiredis sees it**, by one of two paths:

* the fast path: the C scanner ``dominoes.components.kv._scan`` (built on
  install) finds the run of complete commands at a position, each an array of
  bulk strings spelled canonically, within MAX_ARGS arguments and MAX_BULK
  bytes per argument, and the run goes to hiredis in one ``feed``; hiredis is
  therefore always at a command boundary and never holds a partial command.
  Without the extension, :data:`_FAST` does the scanner's job for small
  commands: one compiled regex matching a run of commands of 1..8 arguments of
  at most 255 bytes each, with bulk lengths spelled out as a digit trie so
  that each payload has exactly its announced length.
* the slow path, :meth:`RequestParser._slow`: a small state machine in Python
  for one command at a time: more or longer arguments, a command split across
  reads, inline commands (``PING\\r\\n``, as telnet sends them), and errors.
  It enforces Redis's limits with Redis's messages (``invalid bulk length``,
  ``invalid multibulk length``, ``expected '$', got 'x'``, ``unbalanced quotes
  in request``) before buffering anything for the announced length.

Encoding replies
----------------
Handlers return plain values; the connection encodes them in the client's
protocol version (RESP2, or RESP3 after ``HELLO 3``):

=====================  =======================  ======================
value                  RESP2                    RESP3
=====================  =======================  ======================
``bytes`` / ``str``    bulk string              bulk string
``int``                integer                  integer
``None``               null bulk ``$-1``        null ``_``
:data:`NULL_ARRAY`     null array ``*-1``       null ``_``
``list`` / ``tuple``   array                    array
``dict``               flat array               map ``%``
``set``                array                    set ``~``
:class:`SetOf`         array                    set ``~``, in its order
``float``              bulk ``%.17g``           double ``,%.17g``
``bool``               integer                  boolean ``#``
:class:`Status`        simple string ``+``      simple string
:class:`Push`          array                    push ``>``
:class:`Pairs`         flat array               array of 2-arrays
:class:`MapOfArrays`   array of 2-arrays        map ``%``
:class:`Verbatim`      bulk string              verbatim ``=``
:class:`Double`        bulk string (its text)   double ``,`` (its text)
:class:`Frames`        its frames, one after another
:class:`KvError`       error ``-``              error
=====================  =======================  ======================

A reply never aliases replicated state (it is encoded after later entries may
have been applied), so handlers return copies of containers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import hiredis
import msgspec
from msgspec.msgpack import Ext

from ._errors import KvError

__all__ = (
    "MAX_ARGS",
    "OK_PACKED",
    "PLAIN",
    "pack",
    "pack_replies",
    "unpack",
    "MAX_BULK",
    "MAX_INLINE",
    "NULL_ARRAY",
    "OK",
    "PONG",
    "QUEUED",
    "Double",
    "SetOf",
    "Frames",
    "MapOfArrays",
    "ProtocolError",
    "Push",
    "RequestParser",
    "Status",
    "Verbatim",
    "encode",
    "split_args",
)

#: Most arguments one command may have.  Redis allows 2**31; a ``*<n>`` header
#: costs a list of n slots as soon as hiredis reads it, so keep it modest.
MAX_ARGS: Final = 1024 * 1024
#: Longest bulk string accepted (bytes): Redis's default ``proto-max-bulk-len``,
#: 512 MiB.  A value over the ring's entry limit (1,441,792 bytes with the
#: default log) travels through the run dir's blob store instead of the ring
#: (up to 1 GiB per entry), so large values work as in Redis; each replica
#: holds its own copy of every value.
MAX_BULK: Final = 512 * 1024 * 1024
#: Longest inline command (``PING\r\n`` typed into telnet), as in Redis.
MAX_INLINE: Final = 64 * 1024
#: Longest ``*<n>`` / ``$<len>`` header line; any valid count fits in 20 bytes.
_MAX_HEADER: Final = 32

assert MAX_BULK < 2**31
assert MAX_ARGS < 2**31


# --- reply types ---------------------------------------------------------------------------


class Status(bytes):
    """A simple string reply (``+OK``)."""

    __slots__ = ()


class Push(list[Any]):
    """A RESP3 push frame (pub/sub); an array in RESP2."""

    __slots__ = ()


class Pairs(list[Any]):
    """``a1, b1, a2, b2, ...``: a flat array in RESP2, an array of ``[a, b]`` pairs in RESP3
    (WITHSCORES, HRANDFIELD ... WITHVALUES)."""

    __slots__ = ()


class MapOfArrays(list[tuple[Any, Any]]):
    """``[(key, value), ...]``: a map in RESP3, an array of ``[key, value]`` 2-arrays in RESP2
    (XREAD's reply; a key may come twice, as in Redis)."""

    __slots__ = ()


class SetOf(list[Any]):
    """A set in a fixed order (FUNCTION LIST's flags): an array in RESP2, a set in RESP3."""

    __slots__ = ()


class Frames(list[Any]):
    """Several replies to one command (``SUBSCRIBE a b`` answers once per channel)."""

    __slots__ = ()


class Double(bytes):
    """A double given by its text: a RESP3 double ``,<text>``, a RESP2 bulk string (GEOPOS's
    coordinates, which Redis writes as ``%.17Lf`` without trailing zeros, not ``%.17g``)."""

    __slots__ = ()


class Verbatim(bytes):
    """A RESP3 verbatim text (``INFO``); a bulk string in RESP2."""

    __slots__ = ()


class _NullArray:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


#: The null array: ``*-1`` in RESP2 (EXEC aborted by WATCH, LPOP key count on a
#: missing key), ``_`` in RESP3.
NULL_ARRAY: Final = _NullArray()
OK: Final = Status(b"OK")
PONG: Final = Status(b"PONG")
QUEUED: Final = Status(b"QUEUED")

_OK_FRAME: Final = b"+OK\r\n"
_NIL2: Final = b"$-1\r\n"
_NIL3: Final = b"_\r\n"


def encode(value: Any, resp3: bool = False) -> bytes:
    """The RESP frame of one reply value (see the table in the module doc)."""
    if value is OK:
        return _OK_FRAME
    t = type(value)
    if t is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if t is int:
        return b":%d\r\n" % value
    if value is None:
        return _NIL3 if resp3 else _NIL2
    if t is Ext and value.code == 1:  # a partitioned KV's status reply (OK), packed
        return b"+%s\r\n" % value.data
    parts: list[bytes] = []
    _encode_into(value, resp3, parts)
    return b"".join(parts)


def _encode_into(value: Any, resp3: bool, out: list[bytes]) -> None:
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif value is None:
        out.append(_NIL3 if resp3 else _NIL2)
    elif t is Status:
        out.append(b"+%s\r\n" % value)
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is str:
        data = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, KvError):
        out.append(b"-%s\r\n" % _one_line(str(value)).encode())
    elif t is dict:
        out.append(b"%%%d\r\n" % len(value) if resp3 else b"*%d\r\n" % (2 * len(value)))
        for k, v in value.items():
            _encode_into(k, resp3, out)
            _encode_into(v, resp3, out)
    elif t is set or t is frozenset:
        out.append(b"~%d\r\n" % len(value) if resp3 else b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif value is NULL_ARRAY:
        out.append(_NIL3 if resp3 else b"*-1\r\n")
    elif t is bool:
        out.append((b"#t\r\n" if value else b"#f\r\n") if resp3 else b":%d\r\n" % value)
    elif t is float:
        text = _double(value)
        out.append(b",%s\r\n" % text if resp3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif t is Push:
        out.append(b">%d\r\n" % len(value) if resp3 else b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is Pairs:
        if resp3:
            out.append(b"*%d\r\n" % (len(value) // 2))
            for i in range(0, len(value) - 1, 2):
                out.append(b"*2\r\n")
                _encode_into(value[i], resp3, out)
                _encode_into(value[i + 1], resp3, out)
        else:
            out.append(b"*%d\r\n" % len(value))
            for item in value:
                _encode_into(item, resp3, out)
    elif t is MapOfArrays:
        if resp3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % len(value))
        for k, v in value:
            if not resp3:
                out.append(b"*2\r\n")
            _encode_into(k, resp3, out)
            _encode_into(v, resp3, out)
    elif t is SetOf:
        out.append(b"~%d\r\n" % len(value) if resp3 else b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is Frames:
        for item in value:
            _encode_into(item, resp3, out)
    elif t is Double:
        out.append(b",%s\r\n" % value if resp3 else b"$%d\r\n%s\r\n" % (len(value), value))
    elif t is Verbatim:
        if resp3:
            out.append(b"=%d\r\ntxt:%s\r\n" % (len(value) + 4, value))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif isinstance(value, BaseException):
        out.append(b"-ERR %s\r\n" % _one_line(f"{type(value).__name__}: {value}").encode())
    elif t is Ext:  # a reply of the partitioned KV, packed to cross replicas
        _encode_into(unpack(value), resp3, out)
    else:  # a bug in a handler: say so instead of breaking the stream
        out.append(b"-ERR cannot encode a reply of type %s\r\n" % t.__name__.encode())


# --- packed replies: what crosses replicas as msgpack (the partitioned KV) -----------------
# A partitioned KV's partition returns its replies packed: the RESP types msgpack would
# flatten (statuses, errors, sets, the null array, RESP3 maps and pushes) become Ext
# values, and ``encode`` writes an Ext as what it stands for.

PLAIN: Final = frozenset({bytes, int, type(None), str, float, bool})
_BYTES_TAGS: Final[dict[type, int]] = {Status: 1, Double: 4, Verbatim: 5}
_LIST_TAGS: Final[dict[type, int]] = {
    SetOf: 6,
    Push: 7,
    Pairs: 8,
    MapOfArrays: 9,
    Frames: 10,
    set: 11,
    frozenset: 11,
}
#: OK, packed (the commonest reply of a write)
OK_PACKED: Final = Ext(1, b"OK")
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder()


def pack(value: Any) -> Any:
    """``value`` as msgpack keeps it: RESP types msgpack would flatten become ``Ext``."""
    t = type(value)
    if t in PLAIN:
        return value
    if t is list or t is tuple:
        return [v if type(v) in PLAIN else pack(v) for v in value]
    tag = _BYTES_TAGS.get(t)
    if tag is not None:
        return Ext(tag, bytes(value))
    if t is dict:
        return {pack(k): pack(v) for k, v in value.items()}
    if value is NULL_ARRAY:
        return Ext(12, b"")
    tag = _LIST_TAGS.get(t)
    if tag is not None:
        items = [list(v) for v in value] if t is MapOfArrays else list(value)
        return Ext(tag, _encoder.encode(pack(items)))
    if isinstance(value, KvError):
        return Ext(2, str(value).encode())
    if isinstance(value, BaseException):
        return Ext(2, f"ERR {type(value).__name__}: {value}".encode())
    if t is Ext:
        return value
    return Ext(2, f"ERR cannot encode a reply of type {t.__name__}".encode())


def pack_replies(replies: list[Any]) -> list[Any]:
    plain = PLAIN
    return [OK_PACKED if v is OK else v if type(v) in plain else pack(v) for v in replies]


_LIST_TYPES: Final[dict[int, Callable[[list[Any]], Any]]] = {
    6: SetOf,
    7: Push,
    8: Pairs,
    9: lambda items: MapOfArrays([(k, v) for k, v in items]),
    10: Frames,
    11: set,
}


def unpack(value: Any) -> Any:
    """What :func:`pack` packed, as the RESP encoder writes it."""
    if type(value) is list:
        return [unpack(v) if type(v) is Ext or type(v) is list else v for v in value]
    if type(value) is dict:
        return {unpack(k): unpack(v) for k, v in value.items()}
    if type(value) is not Ext:
        return value
    code, data = value.code, value.data
    if code == 1:
        return Status(data)
    if code == 2:
        return KvError(bytes(data).decode("utf-8", "replace"))
    if code == 4:
        return Double(data)
    if code == 5:
        return Verbatim(data)
    if code == 12 or code == 3:
        return NULL_ARRAY
    make = _LIST_TYPES.get(code)
    if make is None:
        return KvError(f"ERR a reply of unknown kind {code}")
    items = unpack(_decoder.decode(data))
    if code == 11:
        return {tuple(i) if type(i) is list else i for i in items}
    return make(items)


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _double(x: float) -> bytes:
    """Redis 7.0's ``addReplyDouble`` text, RESP2 and RESP3 alike: ``%.17g``
    (``3``, ``0.10000000000000001``, ``inf``, ``-inf``, ``nan``)."""
    return b"%.17g" % x


# --- requests: the fast path ---------------------------------------------------------------

_FAST_MAX_ARGS: Final = 8
_FAST_MAX_LEN: Final = 255


def _bulk_trie(max_len: int) -> bytes:
    """A regex for ``$<len>\\r\\n<len bytes>\\r\\n`` with ``len`` in 0..max_len.

    The length's digits are matched as a trie, and each leaf demands exactly
    that many payload bytes, so a matching bulk string is well framed.
    """

    def node(prefix: str) -> bytes:
        alts: list[bytes] = []
        if prefix:
            n = int(prefix)
            alts.append(rb"\r\n" + (rb".{%d}" % n if n else b"") + rb"\r\n")
            if prefix == "0":
                return alts[0]
        for d in "0123456789":
            if not prefix and d == "0":
                alts.append(rb"0" + node("0"))
            elif int(prefix + d) <= max_len:
                alts.append(d.encode() + rb"(?:" + node(prefix + d) + rb")")
        return b"|".join(alts)

    return rb"\$(?:" + node("") + rb")"


def _fast_pattern() -> re.Pattern[bytes]:
    arg = _bulk_trie(_FAST_MAX_LEN)
    one = b"|".join(rb"%d\r\n(?:%s){%d}" % (n, arg, n) for n in range(1, _FAST_MAX_ARGS + 1))
    return re.compile(rb"(?:\*(?:" + one + rb"))*", re.DOTALL)


#: Matches the longest run of complete, small, well-formed commands at a position.
_FAST: Final = _fast_pattern()


def _regex_run_end(data: bytes, pos: int) -> int:
    """Where the run of complete, well-formed commands at ``pos`` ends (the regex)."""
    return _FAST.match(data, pos).end()  # type: ignore[union-attr]  # `(...)*` always matches


#: The C scanner (any command within Redis's limits); None: the regex does its job.
_scan: Callable[[bytes, int, int, int], int] | None
try:
    from ._scan import scan as _scan
except ImportError:  # pragma: no cover - the extension is built on install
    _scan = None
_INT: Final = re.compile(rb"-?(?:0|[1-9][0-9]{0,18})")

# slow-path phases
_START, _HEADER, _PAYLOAD, _INLINE = range(4)


class ProtocolError(Exception):
    """Malformed input: reply ``-ERR Protocol error: <message>`` and close.

    ``commands`` holds the well-formed commands that came before the error,
    which are still executed, in order, as Redis does.
    """

    def __init__(self, message: str, commands: list[list[bytes]]) -> None:
        super().__init__(message)
        self.message = message
        self.commands = commands


class RequestParser:
    """Incremental request parser: :meth:`feed` bytes, get complete commands."""

    __slots__ = ("_argc", "_args", "_chunks", "_line", "_need", "_phase", "_reader")

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._phase = _START
        self._line = b""  # a header or inline line split across reads
        self._argc = 0
        self._args: list[bytes] = []
        self._need = 0  # payload bytes (plus CRLF) still to come
        self._chunks: list[bytes] = []

    @property
    def idle(self) -> bool:
        """True at a command boundary (nothing partial is buffered)."""
        return self._phase == _START and not self._line

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The commands ``data`` completes, in order; raises :class:`ProtocolError`."""
        out: list[list[bytes]] = []
        n = len(data)
        pos = 0
        if self._phase != _START or self._line:
            pos = self._slow(data, 0, out)
        reader = self._reader
        while pos < n:
            if _scan is not None:
                end = _scan(data, pos, MAX_ARGS, MAX_BULK)
            else:
                end = _regex_run_end(data, pos)
            if end > pos:
                reader.feed(data, pos, end - pos)
                while (cmd := reader.gets()) is not False:
                    out.append(cmd)
                pos = end
                if pos == n:
                    break
            pos = self._slow(data, pos, out)
        return out

    # --- the slow path ---------------------------------------------------------------------

    def _fail(self, message: str, out: list[list[bytes]]) -> ProtocolError:
        self._phase = _START
        self._line = b""
        self._args = []
        self._chunks = []
        return ProtocolError(message, out)

    def _slow(self, data: bytes, pos: int, out: list[list[bytes]]) -> int:
        """Consume at most one command from ``data[pos:]``; the position after it."""
        n = len(data)
        while pos < n:
            phase = self._phase
            if phase == _PAYLOAD:
                need = self._need
                take = min(need, n - pos)
                if need > 2:  # the last two bytes are the CRLF, which (like Redis) we skip
                    self._chunks.append(data[pos : pos + min(take, need - 2)])
                pos += take
                self._need = need - take
                if self._need:
                    return n
                chunks = self._chunks
                self._args.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                self._chunks = []
                if len(self._args) == self._argc:
                    out.append(self._args)
                    self._args = []
                    self._phase = _START
                    return pos
                self._phase = _HEADER
                continue
            if phase == _INLINE or (phase == _START and not self._line and data[pos] != 42):
                return self._inline(data, pos, out)
            if not self._line:
                first = data[pos]
                if phase == _HEADER and first != 36:  # '$'
                    shown = chr(first) if 32 < first < 127 else "?"
                    raise self._fail(f"expected '$', got '{shown}'", out)
            line, pos = self._header(data, pos, out)
            if line is None:
                return n
            value = int(line[1:]) if _INT.fullmatch(line, 1) else None
            if phase == _START:
                if value is None or value > MAX_ARGS:
                    raise self._fail("invalid multibulk length", out)
                if value <= 0:  # "*0" and "*-1" are ignored, as Redis does
                    continue
                self._argc = value
                self._args = []
                self._phase = _HEADER
            else:
                if value is None or not 0 <= value <= MAX_BULK:
                    raise self._fail("invalid bulk length", out)
                self._need = value + 2
                self._chunks = []
                self._phase = _PAYLOAD
        return pos

    def _header(self, data: bytes, pos: int, out: list[list[bytes]]) -> tuple[bytes | None, int]:
        """A ``*<n>`` or ``$<len>`` line (without CRLF) and the position after it."""
        what = "multibulk" if self._phase == _START else "bulk"
        if self._line:
            buf = self._line + data[pos : pos + _MAX_HEADER + 2]
            idx = buf.find(b"\r\n")
            if idx < 0:
                if len(buf) > _MAX_HEADER:
                    raise self._fail(f"invalid {what} length", out)
                self._line = buf
                return None, len(data)
            consumed = idx + 2 - len(self._line)
            self._line = b""
            return buf[:idx], pos + consumed
        idx = data.find(b"\r\n", pos, pos + _MAX_HEADER + 2)
        if idx < 0:
            if len(data) - pos > _MAX_HEADER:
                raise self._fail(f"invalid {what} length", out)
            self._line = data[pos:]
            return None, len(data)
        return data[pos:idx], idx + 2

    def _inline(self, data: bytes, pos: int, out: list[list[bytes]]) -> int:
        """An inline command: one line of space-separated (optionally quoted) words."""
        idx = data.find(b"\n", pos)
        if idx < 0:
            self._line += data[pos:]
            self._phase = _INLINE
            if len(self._line) > MAX_INLINE:
                raise self._fail("too big inline request", out)
            return len(data)
        line = self._line + data[pos:idx]
        self._line = b""
        self._phase = _START
        if len(line) > MAX_INLINE:
            raise self._fail("too big inline request", out)
        if line.endswith(b"\r"):
            line = line[:-1]
        args = split_args(line)
        if args is None:
            raise self._fail("unbalanced quotes in request", out)
        if args:
            out.append(args)
        return idx + 1


_ESCAPES: Final = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("a"): b"\a",
}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SPACE: Final = frozenset(b" \n\r\t\v\f")


def split_args(line: bytes) -> list[bytes] | None:
    """Split an inline command like Redis's ``sdssplitargs``; None on unbalanced quotes.

    Words are separated by whitespace; ``"..."`` understands ``\\n \\r \\t \\b
    \\a \\xHH`` and backslash-escaped characters, ``'...'`` only ``\\'``; a
    closing quote must be followed by whitespace or the end of the line.
    """
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        word = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    return None
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if (
                    c == 92
                    and i + 3 < n
                    and line[i + 1] == 120
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    word += _ESCAPES.get(line[i], bytes((line[i],)))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    word.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    word.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    word.append(c)
            elif c in _SPACE:
                break
            elif c == 34 or c == 39:
                quote = c
            else:
                word.append(c)
            i += 1
        args.append(bytes(word))
