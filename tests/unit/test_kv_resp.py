"""The KV service's RESP layer, sans-IO: parsing requests, encoding replies, globs."""

from __future__ import annotations

import hiredis
import pytest
from dominoes.components.kv import _resp
from dominoes.components.kv._errors import KvError
from dominoes.components.kv._glob import glob_matcher
from dominoes.components.kv._resp import (
    MAX_ARGS,
    MAX_BULK,
    NULL_ARRAY,
    OK,
    Frames,
    ProtocolError,
    Push,
    RequestParser,
    Status,
    Verbatim,
    encode,
    split_args,
)
from dominoes.components.kv._scan import scan
from hypothesis import given
from hypothesis import strategies as st


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def parse_all(chunks: list[bytes]) -> list[list[bytes]]:
    parser = RequestParser()
    out: list[list[bytes]] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    assert parser.idle
    return out


def failure(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        RequestParser().feed(data)
    return info.value


# --- parsing -------------------------------------------------------------------------------


def test_small_pipelined_commands_parse_in_one_feed() -> None:
    data = pack(b"SET", b"k", b"v") + pack(b"GET", b"k") + pack(b"PING")
    assert parse_all([data]) == [[b"SET", b"k", b"v"], [b"GET", b"k"], [b"PING"]]


def test_every_split_point_gives_the_same_commands() -> None:
    data = (
        pack(b"SET", b"key", b"x" * 300)  # an argument past the fast path (255 bytes)
        + pack(*[b"a%d" % i for i in range(12)])  # more arguments than the fast path
        + b"PING\r\n"  # inline
        + pack(b"ECHO", b"")
    )
    want = parse_all([data])
    assert len(want) == 4
    for cut in range(1, len(data)):
        assert parse_all([data[:cut], data[cut:]]) == want, cut


def test_byte_by_byte_feeding() -> None:
    data = pack(b"HSET", b"h", b"f", b"v" * 300) + b'ECHO "a b"\r\n' + pack(b"GET", b"h")
    assert parse_all([bytes([b]) for b in data]) == [
        [b"HSET", b"h", b"f", b"v" * 300],
        [b"ECHO", b"a b"],
        [b"GET", b"h"],
    ]


@given(
    st.lists(
        st.lists(st.binary(max_size=300), min_size=1, max_size=12),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_commands_split_anywhere_round_trip(
    commands: list[list[bytes]], data: st.DataObject
) -> None:
    raw = b"".join(pack(*c) for c in commands)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert parse_all([c for c in chunks if c]) == commands


def test_empty_and_null_multibulks_are_skipped() -> None:
    assert parse_all([b"*0\r\n*-1\r\n" + pack(b"PING")]) == [[b"PING"]]


def test_blank_inline_lines_are_skipped() -> None:
    assert parse_all([b"\r\n\r\nPING\r\n\n"]) == [[b"PING"]]


def test_trailing_bytes_after_a_bulk_are_skipped_like_redis() -> None:
    assert parse_all([b"*1\r\n$4\r\nPINGxx" + pack(b"PING")]) == [[b"PING"], [b"PING"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
        (b"*1\r\n$%d\r\n" % (MAX_BULK + 1), "invalid bulk length"),
        (b"*2\r\n$4\r\nPING\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*1 \r\n", "invalid multibulk length"),
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", "expected '$', got '*'"),
        (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
        (b'ECHO "unbalanced\r\n', "unbalanced quotes in request"),
        (b"*" + b"9" * 40, "invalid multibulk length"),
        (b"*1\r\n$" + b"9" * 40, "invalid bulk length"),
        (b"X" * (70 * 1024), "too big inline request"),
    ],
)
def test_malformed_requests_get_redis_messages(data: bytes, message: str) -> None:
    assert failure(data).message == message


def test_commands_before_an_error_are_kept() -> None:
    err = failure(pack(b"SET", b"a", b"1") + b"*1\r\n$x\r\n")
    assert err.commands == [[b"SET", b"a", b"1"]]


def test_an_oversized_bulk_is_refused_at_its_header_before_any_payload() -> None:
    parser = RequestParser()
    assert parser.feed(b"*2\r\n$3\r\nGET\r\n") == []
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.feed(b"$99999999999\r\n")


def test_hiredis_never_sees_a_huge_multibulk_header() -> None:
    # hiredis would allocate the list for *<n> at once; the parser refuses first.
    with pytest.raises(ProtocolError):
        RequestParser().feed(b"*4294967295\r\n")


def test_a_header_split_across_reads() -> None:
    assert parse_all([b"*", b"2\r", b"\n$", b"3\r\nG", b"ET\r\n$1\r\nk\r", b"\n"]) == [
        [b"GET", b"k"]
    ]


# --- the C framing scanner ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (pack(b"GET", b"k"), None),  # one whole command
        (pack(b"GET", b"k") + pack(b"SET", b"k", b"v" * 1000), None),  # long arguments too
        (pack(b"GET", b"k") + b"*2\r\n$3\r\nGET\r\n$1\r\n", 20),  # a partial command
        (pack(b"GET", b"k") + b"*2\r\n$3\r\nGET\r\n$1\r\nkX\r\n", 20),  # wrong framing
        (b"*0\r\n", 0),  # left to the slow path (it skips it)
        (b"*01\r\n$1\r\nk\r\n", 0),  # not canonical
        (b"*1\r\n$01\r\nk\r\n", 0),
        (b"*1\r\n:1\r\n", 0),  # not a bulk string
        (b"*1\r\n*1\r\n$1\r\nk\r\n", 0),  # nested
        (b"*4294967295\r\n", 0),  # over MAX_ARGS: hiredis must never see it
        (b"*1\r\n$%d\r\n" % (MAX_BULK + 1), 0),
        (b"*1\r\n$" + b"9" * 40 + b"\r\n", 0),  # more digits than fit a long long
        (b"PING\r\n", 0),  # inline
        (b"", 0),
    ],
)
def test_the_scanner_stops_at_the_first_command_hiredis_must_not_see(
    data: bytes, end: int | None
) -> None:
    assert scan(data, 0, MAX_ARGS, MAX_BULK) == (len(data) if end is None else end)


def test_the_scanner_starts_at_pos_and_keeps_its_limits() -> None:
    data = b"junk" + pack(b"GET", b"k") + pack(*[b"a"] * 9)
    assert scan(data, 4, 8, 255) == 4 + len(pack(b"GET", b"k"))  # 9 arguments > 8
    assert scan(data, 4, 9, 255) == len(data)
    assert scan(pack(b"SET", b"k", b"v" * 256), 0, 8, 255) == 0
    with pytest.raises(ValueError, match="out of the buffer"):
        scan(data, len(data) + 1, 8, 255)


@given(st.binary(max_size=200), st.data())
def test_the_scanner_hands_hiredis_only_whole_commands(noise: bytes, data: st.DataObject) -> None:
    """Whatever the bytes, the run the scanner accepts parses into whole commands of bulk
    strings, with nothing left over in hiredis."""
    raw = data.draw(st.sampled_from([noise, pack(b"SET", noise, b"v") + noise]))
    pos = data.draw(st.integers(0, len(raw)))
    end = scan(raw, pos, 8, 64)
    assert pos <= end <= len(raw)
    reader = hiredis.Reader()
    reader.feed(raw[pos:end] + pack(b"SENTINEL"))
    got = []
    while (reply := reader.gets()) is not False:
        got.append(reply)
    assert got[-1] == [b"SENTINEL"]  # the run ended exactly at a command boundary
    for command in got[:-1]:
        assert 1 <= len(command) <= 8
        assert all(type(arg) is bytes and len(arg) <= 64 for arg in command)


_fragments = st.one_of(
    st.lists(st.binary(max_size=40), min_size=1, max_size=10).map(lambda c: pack(*c)),
    st.sampled_from(
        [
            b"*0\r\n",
            b"*-1\r\n",
            b"*1\r\n:1\r\n",
            b"*1\r\n$04\r\nPING\r\n",
            b"PING\r\n",
            b"*2\r\n$1\r\n",
            b"$3\r\nabc\r\n",
            b"\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*9\r\n",
        ]
    ),
    st.binary(max_size=12),
)


@given(st.lists(_fragments, min_size=1, max_size=8), st.data())
def test_scanner_and_regex_paths_parse_every_input_alike(
    fragments: list[bytes], data: st.DataObject
) -> None:
    """Differential: the parser on the C scanner and on the regex gives the same result."""
    raw = b"".join(fragments)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    bounds = zip([0, *cuts], [*cuts, len(raw)], strict=True)
    chunks = [raw[a:b] for a, b in bounds if b > a]

    def run(scanner: object) -> tuple[list[list[bytes]], str | None]:
        saved = _resp._scan
        _resp._scan = scanner  # type: ignore[assignment]
        parser, out = RequestParser(), []
        try:
            for chunk in chunks:
                out += parser.feed(chunk)
        except ProtocolError as exc:
            return out + exc.commands, exc.message
        finally:
            _resp._scan = saved
        return out, None

    assert run(scan) == run(None)  # the C scanner, the regex


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"SET a b", [b"SET", b"a", b"b"]),
        (b"  SET   a\tb  ", [b"SET", b"a", b"b"]),
        (b'SET "a b" c', [b"SET", b"a b", b"c"]),
        (b'SET "a\\nb\\x41" c', [b"SET", b"a\nbA", b"c"]),
        (b"SET 'it\\'s' x", [b"SET", b"it's", b"x"]),
        (b'SET ""', [b"SET", b""]),
        (b"", []),
    ],
)
def test_split_args(line: bytes, args: list[bytes]) -> None:
    assert split_args(line) == args


@pytest.mark.parametrize("line", [b'SET "a', b"SET 'a", b'SET "a"b', b"SET 'a'b"])
def test_split_args_unbalanced(line: bytes) -> None:
    assert split_args(line) is None


# --- encoding ------------------------------------------------------------------------------


def decode(frame: bytes, resp3: bool = False) -> object:
    reader = hiredis.Reader()
    reader.feed(frame)
    out = reader.gets()
    assert reader.gets() is False
    return out


@pytest.mark.parametrize(
    ("value", "resp2", "resp3"),
    [
        (OK, b"+OK\r\n", b"+OK\r\n"),
        (b"v", b"$1\r\nv\r\n", b"$1\r\nv\r\n"),
        (b"", b"$0\r\n\r\n", b"$0\r\n\r\n"),
        (42, b":42\r\n", b":42\r\n"),
        (None, b"$-1\r\n", b"_\r\n"),
        (NULL_ARRAY, b"*-1\r\n", b"_\r\n"),
        ([b"a", 1, None], b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", b"*3\r\n$1\r\na\r\n:1\r\n_\r\n"),
        ({b"f": b"v"}, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n", b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        ({b"m"}, b"*1\r\n$1\r\nm\r\n", b"~1\r\n$1\r\nm\r\n"),
        (True, b":1\r\n", b"#t\r\n"),
        (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
        (
            Push([b"message", b"c"]),
            b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n",
            b">2\r\n$7\r\nmessage\r\n$1\r\nc\r\n",
        ),
        (Verbatim(b"x:1"), b"$3\r\nx:1\r\n", b"=7\r\ntxt:x:1\r\n"),
        (Frames([1, 2]), b":1\r\n:2\r\n", b":1\r\n:2\r\n"),
        (Status(b"QUEUED"), b"+QUEUED\r\n", b"+QUEUED\r\n"),
        (KvError("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
        ([], b"*0\r\n", b"*0\r\n"),
    ],
)
def test_encode(value: object, resp2: bytes, resp3: bytes) -> None:
    assert encode(value) == resp2
    assert encode(value, resp3=True) == resp3


def test_an_unencodable_value_becomes_an_error_not_a_broken_stream() -> None:
    assert encode(object()).startswith(b"-ERR cannot encode")


# --- globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (b"*", [b"", b"anything"], []),
        (b"h?llo", [b"hello", b"hallo"], [b"hllo", b"heello"]),
        (b"h*llo", [b"hllo", b"heeeello"], [b"hell"]),
        (b"h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
        (b"h[^e]llo", [b"hallo"], [b"hello"]),
        (b"h[a-b]llo", [b"hallo", b"hbllo"], [b"hcllo"]),
        (b"a\\*b", [b"a*b"], [b"axb"]),
        (b"user:[0-9]*", [b"user:1", b"user:42x"], [b"user:x"]),
        (b"a[b", [b"ab"], [b"a[b"]),  # Redis: an unclosed [ takes the rest as a set
        (b"a.b", [b"a.b"], [b"axb"]),
    ],
)
def test_glob(pattern: bytes, yes: list[bytes], no: list[bytes]) -> None:
    match = glob_matcher(pattern)
    assert [s for s in yes if match(s)] == yes
    assert [s for s in no if match(s)] == []
