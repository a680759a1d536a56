"""The data directory (dominoes._runtime._durable) and the log writer (._writer), in process."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dominoes._core._layout import D_ACKED, D_ERROR, D_SYNCED, D_WRITER, KIND_BLOB, KIND_ENTRY
from dominoes._core._segment import encode_record, scan, segment_header, segment_name
from dominoes._runtime import _writer
from dominoes._runtime._durable import (
    DurableLogError,
    Layout,
    LogReader,
    check_layout,
    lock,
    prune,
    recover,
    segments,
    snapshots,
    write_snapshot,
)
from dominoes._runtime._shm import SharedLog
from dominoes._runtime._wakeups import EventfdWakeups


def write_segment(d: Path, first: int, payloads: list[bytes]) -> Path:
    path = d / segment_name(first)
    recs = [encode_record(first + k, 1, KIND_ENTRY, p) for k, p in enumerate(payloads)]
    path.write_bytes(segment_header(first) + b"".join(recs))
    return path


def test_an_empty_directory_starts_at_seq_1(tmp_path: Path) -> None:
    r = recover(tmp_path)
    assert (r.snapshot, r.start, r.next_seq, r.entries, r.truncated) == (None, 1, 1, 0, 0)


def test_segments_continue_each_other(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [b"a", b"b"])
    write_segment(tmp_path, 3, [b"c"])
    r = recover(tmp_path)
    assert (r.next_seq, r.entries) == (4, 3)
    assert [x.payload for x in LogReader(tmp_path).read(1)] == [b"a", b"b", b"c"]
    assert [x.payload for x in LogReader(tmp_path).read(2, until=3)] == [b"b"]


def test_a_torn_tail_is_truncated_with_a_warning_saying_how_many_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_segment(tmp_path, 1, [b"a" * 10, b"b" * 10])
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(encode_record(3, 1, KIND_ENTRY, b"c" * 40)[:25])
    with caplog.at_level(logging.WARNING, "dominoes.durable"):
        r = recover(tmp_path)
    assert r.truncated == 25
    assert r.next_seq == 3
    assert path.stat().st_size == whole
    assert "truncating 25 bytes" in caplog.text
    assert str(path) in caplog.text


def test_a_flipped_bit_mid_segment_is_an_error_naming_file_and_offset(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 1, [b"a" * 10, b"b" * 10, b"c" * 10])
    data = bytearray(path.read_bytes())
    offset = 16 + 30  # the second record
    data[offset + 22] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(DurableLogError, match=rf"{path.name} at offset {offset}"):
        recover(tmp_path)
    assert path.stat().st_size == len(data)  # never cut back


def test_a_torn_record_in_a_segment_that_is_not_the_last_is_corrupt(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 1, [b"a", b"b"])
    path.write_bytes(path.read_bytes()[:-1])
    write_segment(tmp_path, 3, [b"c"])
    with pytest.raises(DurableLogError, match="corrupt log record"):
        recover(tmp_path)


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [b"a", b"b"])
    write_segment(tmp_path, 5, [b"e"])
    with pytest.raises(DurableLogError, match=r"segment missing: .* starts at seq 5.* ends at 3"):
        recover(tmp_path)


def test_a_log_that_starts_after_1_needs_a_snapshot(tmp_path: Path) -> None:
    write_segment(tmp_path, 10, [b"j"])
    with pytest.raises(DurableLogError, match="no usable snapshot"):
        recover(tmp_path)
    write_snapshot(tmp_path, 10, b"state")
    r = recover(tmp_path)
    assert (r.snapshot, r.start, r.next_seq, r.entries) == (
        tmp_path / "snapshot-00000000000000000010.snap",
        10,
        11,
        1,
    )


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_segment(tmp_path, 1, [b"a", b"b", b"c", b"d"])
    write_snapshot(tmp_path, 2, b"two")
    newest = write_snapshot(tmp_path, 4, b"four")
    newest.write_bytes(newest.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, "dominoes.durable"):
        r = recover(tmp_path)
    assert (r.start, r.entries) == (2, 3)
    assert "cannot be used" in caplog.text


def test_prune_keeps_two_snapshots_and_the_segments_after_the_older(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [b"x"] * 14)
    write_segment(tmp_path, 15, [b"y"] * 10)
    write_segment(tmp_path, 25, [b"z"] * 10)
    for cursor in (10, 20, 30):
        write_snapshot(tmp_path, cursor, b"s")
    assert prune(tmp_path) == (1, 1)
    assert [c for c, _ in snapshots(tmp_path)] == [20, 30]
    assert [f for f, _ in segments(tmp_path)] == [15, 25]
    assert recover(tmp_path).next_seq == 35


def test_a_partitioned_directory_keeps_each_replica_s_snapshots_and_the_log_they_need(
    tmp_path: Path,
) -> None:
    """Each replica snapshots its own partitions on its own schedule: a restart
    puts each back from its own newest, and a segment goes only once every
    replica's oldest kept snapshot is past it."""
    write_segment(tmp_path, 1, [b"x"] * 14)
    write_segment(tmp_path, 15, [b"y"] * 10)
    write_segment(tmp_path, 25, [b"z"] * 10)
    write_snapshot(tmp_path, 10, b"r0", replica=0)
    # replica 1 has none yet: it replays from seq 1, so nothing is deleted
    assert prune(tmp_path, replicas=2, replica=0) == (0, 0)
    r = recover(tmp_path, replicas=2)
    assert (r.start, r.snapshot, r.next_seq, r.entries) == (1, None, 35, 34)
    assert [(p.name if p else None, s) for p, s in r.own] == [
        ("snapshot-00000000000000000010.r0.snap", 10),
        (None, 1),
    ]
    for cursor in (20, 30):
        write_snapshot(tmp_path, cursor, b"r0", replica=0)
    write_snapshot(tmp_path, 16, b"r1", replica=1)
    assert prune(tmp_path, replicas=2, replica=0) == (1, 1)  # r0's 10; segment 1 (< 16)
    assert [c for c, _ in snapshots(tmp_path, 0)] == [20, 30]
    assert [c for c, _ in snapshots(tmp_path, 1)] == [16]
    assert [f for f, _ in segments(tmp_path)] == [15, 25]
    assert snapshots(tmp_path) == []  # a replicated service's names: none
    r = recover(tmp_path, replicas=2)
    assert [s for _, s in r.own] == [30, 16]
    assert (r.start, r.of(1)[1]) == (16, 16)


def test_a_directory_serves_one_layout(tmp_path: Path) -> None:
    """``LAYOUT`` is written at the first start; another one is refused, naming it."""
    check_layout(tmp_path, Layout(2))
    assert (tmp_path / "LAYOUT").read_text() == "partitioned 2\n"
    check_layout(tmp_path, Layout(2))
    with pytest.raises(DurableLogError, match="--replicas 2, not 3"):
        check_layout(tmp_path, Layout(3))
    with pytest.raises(DurableLogError, match="a partitioned service, and this one is replicated"):
        check_layout(tmp_path, Layout(None))
    old = tmp_path / "old"  # a directory of a version before LAYOUT, with snapshots
    old.mkdir()
    write_snapshot(old, 5, b"s")
    with pytest.raises(DurableLogError, match="snapshots of a replicated service"):
        check_layout(old, Layout(2))
    check_layout(old, Layout(None))
    assert (old / "LAYOUT").read_text() == "replicated\n"


def test_a_snapshot_is_written_atomically_with_no_temporary_left(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 7, b"state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-00000000000000000007.snap"]


def test_the_directory_is_locked_while_served(tmp_path: Path) -> None:
    fd = lock(tmp_path / "data")
    try:
        with pytest.raises(DurableLogError, match="in use by another running service"):
            lock(tmp_path / "data")
    finally:
        os.close(fd)
    os.close(lock(tmp_path / "data"))


# --- the log writer over a real shared log ---------------------------------------------------


@pytest.fixture
def ring() -> Iterator[SharedLog]:
    shared = SharedLog.create("test-writer", capacity=64, slot_size=128, max_replicas=4)
    log = shared.log()
    for line in (0, 1):  # replica 0, and the writer on line 1
        log.join(line, cursor=1)
        log.set_live(line)
    log.set_durability_word(D_WRITER, 2)
    try:
        yield shared
    finally:
        shared.close()


def make_writer(shared: SharedLog, tmp_path: Path, policy: str) -> _writer.LogWriter:
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    w = _writer.LogWriter(
        shared.log(),
        line=1,
        replicas=1,
        wakeups=EventfdWakeups(fds[:1]),
        data_dir=tmp_path,
        run_dir=tmp_path,
        policy=policy,
    )
    w.open()
    return w


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_the_writer_copies_the_ring_in_order_and_acknowledges_per_policy(
    ring: SharedLog, tmp_path: Path, policy: str
) -> None:
    log = ring.log()
    w = make_writer(ring, tmp_path, policy)
    try:
        for k in range(10):
            assert log.try_append(0, f"entry {k}".encode())
        big = b"B" * 500  # spans several 48-byte slots
        assert log.try_append(0, big)
        assert w.round() == 11
        assert log.cursor(1) == log.tail  # the writer no longer holds these slots
        assert log.acked == log.tail
        if policy == "always":
            assert log.durability_word(D_SYNCED) == log.tail
        got = scan((tmp_path / segment_name(1)).read_bytes(), first=1)
        assert got.problem is None
        assert [r.payload for r in got.records] == [f"entry {k}".encode() for k in range(10)] + [
            big
        ]
    finally:
        w.close()


def test_the_writer_holds_the_ring_until_it_has_written(ring: SharedLog, tmp_path: Path) -> None:
    log = ring.log()
    w = make_writer(ring, tmp_path, "no")
    try:
        log.advance(0, 1)
        n = 0
        while log.try_append(0, b"x" * 40):
            n += 1
            log.applied(0, log.tail)  # replica 0 keeps up; only the writer lags
        assert n == log.capacity  # full: the writer's line holds every slot
        assert w.round() == n
        assert log.try_append(0, b"room again")
    finally:
        w.close()


def test_a_blob_entry_is_written_as_its_bytes(ring: SharedLog, tmp_path: Path) -> None:
    log = ring.log()
    (tmp_path / "blob-0-1-0").write_bytes(b"large value")
    w = make_writer(ring, tmp_path, "no")
    try:
        assert log.try_append(0, b"blob-0-1-0", KIND_BLOB)
        assert w.round() == 1
        (record,) = scan((tmp_path / segment_name(1)).read_bytes()).records
        assert (record.kind, record.payload) == (KIND_ENTRY, b"large value")
    finally:
        w.close()


def test_a_full_disk_sets_the_error_loses_nothing_and_recovers(
    ring: SharedLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ring.log()
    w = make_writer(ring, tmp_path, "always")
    path = tmp_path / segment_name(1)
    try:
        assert log.try_append(0, b"before")
        assert w.round() == 1
        size = path.stat().st_size

        def full(fd: int, data: bytes) -> None:
            os.write(fd, data[: len(data) // 2])  # part of it went, as with ENOSPC
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("dominoes._runtime._writer.write_all", full)
        assert log.try_append(0, b"during")
        assert w.round() == 0
        assert log.write_error == errno.ENOSPC
        assert log.durability_word(D_ERROR) == errno.ENOSPC
        assert path.stat().st_size == size  # cut back to the last whole record
        acked = log.acked
        assert acked == log.cursor(1) == log.tail - 1  # "during" is neither written nor acked
        monkeypatch.undo()
        assert w.round() == 1
        assert log.write_error == 0
        assert log.durability_word(D_ACKED) == log.tail
        got = scan(path.read_bytes(), first=1)
        assert got.problem is None
        assert [r.payload for r in got.records] == [b"before", b"during"]
    finally:
        w.close()


def test_a_writer_restarted_after_a_torn_round_cuts_it_and_goes_on(
    ring: SharedLog, tmp_path: Path
) -> None:
    log = ring.log()
    w = make_writer(ring, tmp_path, "no")
    assert log.try_append(0, b"one")
    assert w.round() == 1
    w.close()
    path = tmp_path / segment_name(1)
    with open(path, "ab") as f:  # a round cut short when the writer was killed
        f.write(encode_record(2, 1, KIND_ENTRY, b"two")[:9])
    w = make_writer(ring, tmp_path, "no")
    try:
        assert log.try_append(0, b"two")
        assert w.round() == 1
        assert [r.payload for r in scan(path.read_bytes(), first=1).records] == [b"one", b"two"]
    finally:
        w.close()


def test_a_failed_fsync_under_everysec_clears_only_once_an_fsync_succeeds(
    ring: SharedLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ring.log()
    w = make_writer(ring, tmp_path, "everysec")
    try:
        assert log.try_append(0, b"entry")
        assert w.round() == 1

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr("dominoes._runtime._writer.os.fdatasync", broken)
        assert not w._sync()
        assert log.write_error == errno.EIO
        assert w.round() == 0  # nothing new, and the fsync still fails: the error stays
        assert log.write_error == errno.EIO
        monkeypatch.undo()
        assert w.round() == 0
        assert log.write_error == 0
        assert log.durability_word(D_SYNCED) == log.tail
    finally:
        w.close()
