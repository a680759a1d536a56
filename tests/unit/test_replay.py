"""``dominoes replay`` (dominoes._runtime._replay) on data directories built by hand.

The directories hold what a durable service writes (segments of records,
snapshots), made here with the formats' own encoders, for a small service
of this module; the integration test (tests/integration/test_replay.py)
replays what a running KV service recorded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dominoes import Component, Context, Service, update
from dominoes._core._codec import Batch, Call, Control, Entry, Fire, encode
from dominoes._core._layout import KIND_ENTRY, KIND_NOOP
from dominoes._core._segment import (
    decode_snapshot,
    encode_record,
    encode_snapshot,
    segment_header,
    segment_name,
    snapshot_name,
)
from dominoes._runtime._replay import (
    EXIT_DIFFERS,
    LogReader,
    ReplayError,
    ReplayOptions,
    choose_start,
    replay_main,
)

TARGET = f"{__name__}:service"


class Tally(Component):
    name = "tally"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.rang: list[str] = []

    @update
    def add(self, ctx: Context, key: str, by: int = 1) -> int:
        if by < 0:
            raise ValueError("negative")
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]

    @update
    def later(self, ctx: Context, delay: float, what: str) -> int:
        return ctx.raise_later(delay, Tally.ring, what)

    @update
    def ring(self, ctx: Context, what: str) -> None:
        self.rang.append(what)


service = Service("tally", [Tally()])


def call(event: str, *args: object, ts: float = 1.0) -> Call:
    return Call(event, list(args), {}, ts, 0)


def entries_example() -> list[tuple[int, Entry | None]]:
    """(nslots, entry or None for a no-op), in log order from seq 1."""
    return [
        (1, call("tally.add", "a")),
        (1, call("tally.add", "b", 5)),
        (1, None),  # a position a dead producer left
        (3, call("tally.add", "a", 10)),  # an entry over three slots
        (1, call("tally.add", "x", -1)),  # fails: an error outcome, replicated
        (1, call("tally.later", 1.0, "bell")),
        (1, Fire(1, 5.0, 0)),
        (1, Batch([call("tally.add", "a"), call("tally.add", "c", 2)], 6.0, 0)),
        (1, call("tally.add", "b")),
    ]


def records(first: int, items: list[tuple[int, Entry | None]]) -> tuple[list[bytes], int]:
    out, seq = [], first
    for nslots, entry in items:
        if entry is None:
            out.append(encode_record(seq, nslots, KIND_NOOP, b""))
        else:
            out.append(encode_record(seq, nslots, KIND_ENTRY, encode(entry)))
        seq += nslots
    return out, seq


def write_segment(data_dir: Path, first: int, items: list[tuple[int, Entry | None]]) -> int:
    """Write one segment from ``first``; the seq after it."""
    recs, nxt = records(first, items)
    (data_dir / segment_name(first)).write_bytes(segment_header(first) + b"".join(recs))
    return nxt


def applied(items: list[tuple[int, Entry | None]], until: int | None = None) -> bytes:
    """The state after applying ``items`` from seq 1 directly (what a replica would hold)."""
    m = service.new_machine(1)
    seq = 1
    for nslots, entry in items:
        if until is not None and seq + nslots > until:
            break
        if entry is None:
            m.skip(seq, nslots)
        else:
            entry.seq = seq
            m.apply(entry, False, nslots)
        seq += nslots
    return m.snapshot()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def run(data_dir: Path, **kw: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = ReplayOptions(data_dir=data_dir, **kw)  # type: ignore[arg-type]
    code = replay_main(TARGET, options, out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_full_replay_saves_what_the_replicas_would_hold(data_dir: Path, tmp_path: Path) -> None:
    items = entries_example()
    end = write_segment(data_dir, 1, items)
    save = tmp_path / "state.snap"
    code, out, err = run(data_dir, save=save)
    assert (code, err) == (0, "")
    assert f"replayed 8 entries and 1 no-op, seq 1 to {end - 1}, from seq 1" in out
    assert "1 of them ended in an error" in out
    assert f"state at seq {end}" in out
    cursor, state = decode_snapshot(save.read_bytes())
    assert cursor == end
    assert state == applied(items)
    m = service.new_machine(0)
    m.restore(state)
    assert m.component("tally").counts == {"a": 12, "b": 6, "c": 2}  # type: ignore[attr-defined]
    assert m.component("tally").rang == ["bell"]  # type: ignore[attr-defined]
    for name, digest in m.digest().items():
        assert f"  {name}" in out
        assert digest in out


def test_until_stops_before_the_seq_and_before_an_entry_spanning_it(
    data_dir: Path, tmp_path: Path
) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items)
    save = tmp_path / "s"
    code, out, _ = run(data_dir, until=4, save=save)
    assert code == 0
    assert "stopped before seq 4 (--until)" in out
    assert decode_snapshot(save.read_bytes()) == (4, applied(items, until=4))
    # seq 4 to 6 is one entry: --until 5 stops at 4
    code, out, _ = run(data_dir, until=5, save=save)
    assert code == 0
    assert "stopped at seq 4: the entry there spans past --until 5" in out
    assert decode_snapshot(save.read_bytes())[0] == 4
    code, out, _ = run(data_dir, until=1000)
    assert code == 0
    assert "the log ends at seq 12, before --until 1000" in out


def test_step_prints_each_entry_decoded_with_its_outcome(data_dir: Path) -> None:
    write_segment(data_dir, 1, entries_example())
    code, out, _ = run(data_dir, step=True, until=11)
    assert code == 0
    lines = out.splitlines()
    assert lines[:10] == [
        "seq 1 call tally.add('a') origin 0",
        "  -> 1",
        "seq 2 call tally.add('b', 5) origin 0",
        "  -> 5",
        "seq 3 noop",
        "seq 4 call tally.add('a', 10) origin 0 (3 slots)",
        "  -> 11",
        "seq 7 call tally.add('x', -1) origin 0",
        "  -> error ValueError: negative",
        "seq 8 call tally.later(1.0, 'bell') origin 0",
    ]
    assert lines[11:15] == [
        "seq 9 fire timer 1 tally.ring('bell')",
        "  -> None",
        "seq 10 batch of 2 calls origin 0",
        "  [0] tally.add('a') -> 12",
    ]


def test_step_json_is_one_object_a_line_and_the_summary_last(data_dir: Path) -> None:
    write_segment(data_dir, 1, entries_example())
    code, out, _ = run(data_dir, step=True, as_json=True)
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == ["entry"] * 9 + ["summary"]
    assert docs[0] | {"ts": 0} == {
        "type": "entry",
        "seq": 1,
        "nslots": 1,
        "kind": "call",
        "event": "tally.add",
        "args": ["a"],
        "kwargs": {},
        "origin": 0,
        "mode": "affinity",
        "ts": 0,
        "outcome": {"result": 1},
    }
    assert docs[-1]["entries"] == 8
    assert docs[-1]["noops"] == 1
    assert docs[-1]["cursor"] == 12


def test_a_torn_tail_is_left_as_it_is_and_not_replayed(data_dir: Path, tmp_path: Path) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items[:2])
    nxt = write_segment(data_dir, 3, items[2:])
    seg = data_dir / segment_name(3)
    whole = seg.read_bytes()
    seg.write_bytes(whole[:-3])  # the last record cut short, as by a crash mid-write
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    save = tmp_path / "s"
    code, out, _ = run(data_dir, save=save)
    assert code == 0
    last_record = records(nxt - 1, items[-1:])[0][0]
    offset = len(whole) - len(last_record)
    assert (
        f"torn last record in {seg} at offset {offset} (seq {nxt - 1}): "
        f"{len(last_record) - 3} bytes not replayed"
    ) in out
    assert decode_snapshot(save.read_bytes()) == (nxt - 1, applied(items[:-1]))
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before  # read only


def test_a_corrupt_record_is_an_error_naming_the_file_and_offset(data_dir: Path) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items)
    seg = data_dir / segment_name(1)
    data = bytearray(seg.read_bytes())
    recs, _ = records(1, items)
    offset = len(segment_header(1)) + len(recs[0])  # the second record
    data[offset + 30] ^= 0x40
    seg.write_bytes(bytes(data))
    code, out, err = run(data_dir)
    assert code == 1
    assert out == ""
    assert err == f"dominoes: error: corrupt log record in {seg} at offset {offset}: " + (
        "checksum or sequence mismatch\n"
    )


def test_a_missing_segment_is_an_error(data_dir: Path) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items[:2])
    write_segment(data_dir, 4, items[3:])  # seq 3 (the no-op's segment) is missing
    with pytest.raises(ReplayError, match=r"segment missing: seg-0+4\.log starts at seq 4"):
        list(LogReader(data_dir).read(1))


def snapshot_at(data_dir: Path, items: list[tuple[int, Entry | None]], cursor: int) -> None:
    (data_dir / snapshot_name(cursor)).write_bytes(
        encode_snapshot(cursor, applied(items, until=cursor))
    )


def test_where_a_replay_starts(data_dir: Path) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items[:3])
    write_segment(data_dir, 4, items[3:])
    snapshot_at(data_dir, items, 4)
    snapshot_at(data_dir, items, 9)
    assert choose_start(data_dir).snapshot is None  # the log starts at 1
    assert choose_start(data_dir, "oldest").seq == 4
    assert choose_start(data_dir, "newest").seq == 9
    assert choose_start(data_dir, "newest", until=8).seq == 4
    # the first segment gone (deleted once a snapshot covered it)
    (data_dir / segment_name(1)).unlink()
    assert choose_start(data_dir).seq == 4
    with pytest.raises(ReplayError, match="starts at seq 4, not 1"):
        choose_start(data_dir, "none")
    # a snapshot that does not check out is passed over, with a warning
    bad = data_dir / snapshot_name(4)
    bad.write_bytes(bad.read_bytes()[:-1])
    warnings: list[str] = []
    assert choose_start(data_dir, warn=warnings.append).seq == 9
    assert len(warnings) == 1
    assert str(bad) in warnings[0]
    with pytest.raises(ReplayError, match="no usable snapshot at or before seq 8"):
        choose_start(data_dir, until=8)


def test_a_replay_from_a_snapshot_ends_in_the_same_state(data_dir: Path, tmp_path: Path) -> None:
    items = entries_example()
    write_segment(data_dir, 1, items[:3])
    end = write_segment(data_dir, 4, items[3:])
    snapshot_at(data_dir, items, 9)
    save = tmp_path / "s"
    code, out, _ = run(data_dir, from_snapshot="newest", save=save)
    assert code == 0
    assert f"from snapshot {data_dir / snapshot_name(9)} (seq 9)" in out
    assert "replayed 3 entries, seq 9 to 11" in out
    assert decode_snapshot(save.read_bytes()) == (end, applied(items))


def test_digests_are_compared_with_the_live_reports(data_dir: Path) -> None:
    items = entries_example()
    m = service.new_machine(0)
    seq = 1
    for nslots, entry in items[:2]:
        assert entry is not None
        entry.seq = seq
        m.apply(entry, False, nslots)
        seq += nslots
    good = m.digest()
    bad = dict(good, tally="0" * 32)
    reports: list[tuple[int, Entry | None]] = [
        (1, Control("digest", [0, 2, good], 1.0, 0)),
        (1, Control("digest", [1, 2, good], 1.0, 1)),
    ]
    write_segment(data_dir, 1, items[:2] + reports)
    code, out, _ = run(data_dir, digest=True)
    assert code == 0
    ok = f"seq 2 component tally: replay {good['tally']} live {good['tally']} OK (replicas 0, 1)"
    assert ok in out.splitlines()
    assert "compared 2 component digests with the live replicas': all equal" in out
    # one replica recorded another digest: the replay says where, and exits non-zero
    (data_dir / segment_name(1)).unlink()
    reports[1] = (1, Control("digest", [1, 2, bad], 1.0, 1))
    write_segment(data_dir, 1, items[:2] + reports)
    code, out, err = run(data_dir, digest=True)
    assert code == EXIT_DIFFERS
    assert f"seq 2 component tally: replay {good['tally']} live {good['tally']} OK (replica 0)" in (
        out
    )
    assert f"seq 2 component tally: replay {good['tally']} live {'0' * 32} DIFFERS (replica 1)" in (
        out
    )
    assert "1 DIFFER" in out
    assert "differ from the live replicas'" in err


def test_digest_every_prints_the_replays_own_digest_points(data_dir: Path) -> None:
    write_segment(data_dir, 1, entries_example())
    code, out, _ = run(data_dir, digest=True, digest_every=4)
    assert code == 0
    seqs = [line.split()[1] for line in out.splitlines() if " digest tally " in line]
    assert seqs == ["4", "8"]  # the first entry at or past each multiple of 4
    assert "no digests recorded by the live replicas" in out


def test_save_refuses_the_data_directory(data_dir: Path) -> None:
    write_segment(data_dir, 1, entries_example())
    code, _, err = run(data_dir, save=data_dir / snapshot_name(14))
    assert code == 1
    assert "not into the data directory" in err
    assert not (data_dir / snapshot_name(14)).exists()


def test_a_service_that_does_not_load_exits_2(data_dir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert replay_main("no_such_module_x:service", ReplayOptions(data_dir), out, err) == 2
    assert err.getvalue().startswith("dominoes: error: cannot import no_such_module_x")
