"""Log entries and their wire form (``dominoes.lowlevel.encode`` / ``decode``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dominoes import Component, Context, Mode, Service, update
from dominoes.lowlevel import Call, Control, Entry, Fire, decode, encode
from dominoes.testing import Cluster

ENTRIES: list[Entry] = [
    Call("Counter.incr", ["k"], {"by": 2}, 1_800_000_000.25, 3),
    Call("e", [], {}, 0.0, 0, Mode.RACE),
    Call("e", [1, 2.5, None, True], {"nested": {"a": [1, {"b": b"\x00\xff"}]}}, 1.0, 1, Mode.EVERY),
    Call("e", ["x"], {}, 2.0, 7, Mode.AFFINITY, "request-42"),
    Fire(17, 1_800_000_010.0, 2),
    Control("snapshot", [0, 2], 3.0, 2),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: type(e).__name__)
def test_entries_round_trip(entry: Entry) -> None:
    got = decode(encode(entry), 99)

    assert type(got) is type(entry)
    assert got == msgspec.structs.replace(entry, seq=99)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: type(e).__name__)
def test_decode_sets_seq_from_its_argument(entry: Entry) -> None:
    payload = encode(entry)
    assert decode(payload, 1).seq == 1
    assert decode(payload, 2**40).seq == 2**40
    # Whatever seq the encoded struct held, the reader's seq wins.
    stale = encode(msgspec.structs.replace(entry, seq=7))
    assert decode(stale, 12).seq == 12


def test_the_encoded_seq_is_ignored_and_costs_one_byte() -> None:
    # msgspec ignores omit_defaults for array_like structs, so seq is encoded:
    # as 0 by an appender (one byte), and decode overrides whatever it says.
    for entry in ENTRIES:
        fresh = msgspec.structs.replace(entry, seq=0)
        assert msgspec.msgpack.decode(encode(fresh))[-1] == 0
        assert decode(encode(msgspec.structs.replace(entry, seq=99)), 5).seq == 5


def test_one_decoder_reads_every_kind_of_entry() -> None:
    kinds = [type(decode(encode(e), 1)) for e in ENTRIES]
    assert kinds == [Call, Call, Call, Call, Fire, Control]


def test_the_tag_is_the_first_array_item() -> None:
    tags = [msgspec.msgpack.decode(encode(e))[0] for e in ENTRIES]
    assert tags == ["c", "c", "c", "c", "f", "k"]


def test_the_fields_follow_the_tag_in_declaration_order() -> None:
    raw = msgspec.msgpack.decode(encode(Call("e", ["a"], {"k": 1}, 1.5, 4, Mode.RACE, "r")))
    assert raw[:8] == ["c", "e", ["a"], {"k": 1}, 1.5, 4, int(Mode.RACE), "r"]


def test_modes_decode_as_the_enum() -> None:
    got = decode(encode(Call("e", [], {}, 1.0, 0, Mode.EVERY)), 1)
    assert isinstance(got, Call)
    assert got.mode is Mode.EVERY


def test_unknown_tags_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.msgpack.encode(["z", 1, 2]), 1)


def test_decoded_entries_hold_no_view_into_the_source_buffer() -> None:
    entry = Call(
        "event", ["text", b"bytes", [b"nested"]], {"k": b"value"}, 1.0, 0, Mode.RACE, "rid"
    )
    buf = bytearray(encode(entry))

    got = decode(buf, 5)  # type: ignore[arg-type]  # typed for bytes; takes any buffer
    for i in range(len(buf)):
        buf[i] = 0xFF - buf[i]  # scribble over every byte

    assert got == msgspec.structs.replace(entry, seq=5)
    assert isinstance(got, Call)
    assert type(got.args[1]) is bytes
    assert type(got.kwargs["k"]) is bytes


def test_decode_accepts_a_memoryview_and_copies_out() -> None:
    entry = Call("event", [b"abc"], {}, 1.0, 0)
    buf = bytearray(encode(entry))
    view = memoryview(buf)

    got = decode(view, 1)  # type: ignore[arg-type]  # typed for bytes; takes any buffer
    view.release()
    buf[:] = bytes(len(buf))

    assert got == msgspec.structs.replace(entry, seq=1)


# --- through a cluster ----------------------------------------------------------------------


class Echo(Component):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @update
    def echo(self, ctx: Context, *args: Any, **kwargs: Any) -> list[Any]:
        self.seen.append([args, kwargs])
        return [args, kwargs]


def test_every_replica_including_the_origin_sees_decoded_arguments() -> None:
    cluster = Cluster(Service("echo", [Echo()]), replicas=2)

    got = cluster.call(0, Echo.echo, (1, 2), [3], key=(4, 5))

    # Tuples travel as msgpack arrays: lists on every replica, the origin too.
    assert got == [([1, 2], [3]), {"key": [4, 5]}]
    assert [r.component(Echo).seen for r in cluster] == [[got], [got]]


def test_unencodable_arguments_raise_type_error_at_submit_and_append_nothing() -> None:
    cluster = Cluster(Service("echo", [Echo()]), replicas=2)
    tail = cluster.log.tail

    with pytest.raises(TypeError):
        cluster.submit_nowait(0, Echo.echo, object())
    with pytest.raises(TypeError):
        cluster.submit_nowait(1, Echo.echo, ok=1, bad=object())
    with pytest.raises(TypeError):
        cluster.call(0, Echo.echo, {1: object()})

    assert cluster.log.tail == tail
    assert [s.appended for s in cluster.statistics()] == [0, 0]
    assert cluster.run_until_quiet() == 0
    assert [r.component(Echo).seen for r in cluster] == [[], []]


def test_a_mode_is_parsed_from_itself_or_its_name() -> None:
    assert Mode.parse(Mode.RACE) is Mode.RACE
    assert Mode.parse("every") is Mode.EVERY
    assert Mode.parse("AFFINITY") is Mode.AFFINITY
    with pytest.raises(ValueError, match="race, affinity, every"):
        Mode.parse("sometimes")
