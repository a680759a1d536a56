"""``dominoes snapshot`` and ``dominoes replay`` against what a real durable KV recorded.

One module-scoped session: ``dominoes run dominoes.components.kv:service
--replicas 2 --durable DIR --digest-every 50``, a few hundred commands from
clients on both replicas, ``dominoes snapshot`` mid-way and again right
before a clean stop (SIGINT).  The tests then replay DIR.

The session writes no sets (SADD): a set is encoded in its iteration order,
which depends on the process's string hash seed (PYTHONHASHSEED), so two
processes holding equal sets may encode them differently, and the byte
comparison below would fail for that reason alone.  Every other value (bytes,
dicts, deques as lists) encodes in an order the entries decide.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from dominoes._core._segment import RECORD, SEGMENT_HEADER, decode_snapshot, scan
from dominoes._runtime._durable import segments

from .harness import ROOT, Service
from .kv_helpers import KV, clients_on_every_replica, kv_service

pytestmark = pytest.mark.integration

SNAPSHOT_LINE = re.compile(r"^snapshot at seq (\d+): (\S+) \(fork took [0-9.]+ ms\)$")


def dominoes(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dominoes", *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,  # not a terminal: --step prints without waiting
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def replay(data: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return dominoes("replay", data, "--service", KV, *args)


@dataclass(frozen=True)
class Recorded:
    data: Path
    #: ``dominoes snapshot``'s lines: mid-way, and right before the stop
    mid_line: str
    last_line: str
    #: ``dominoes replay`` run while the service was serving
    live_replay: subprocess.CompletedProcess[str]
    #: the segment files' sizes right before that replay, and right after
    sizes_before: dict[str, int]
    sizes_after: dict[str, int]
    exit_code: int


def snapshot_of(line: str) -> tuple[int, Path]:
    m = SNAPSHOT_LINE.match(line)
    assert m is not None, line
    return int(m.group(1)), Path(m.group(2))


def drive(clients: dict[int, redis.Redis], start: int, stop: int) -> None:
    """Writes of every kind but sets, alternating between the replicas."""
    for i in range(start, stop):
        r = clients[i % 2]
        r.set(f"replay:k{i}", i)
        r.incr("replay:n")
        r.hset("replay:h", f"f{i % 7}", i)
        r.lpush(f"replay:l{i % 3}", i)
        if i % 5 == 0:
            r.expire(f"replay:k{i}", 1000)
        if i % 7 == 0:
            r.delete(f"replay:k{i - 3}")
        if i % 11 == 0:
            r.rpop(f"replay:l{i % 3}")
            r.hdel("replay:h", f"f{i % 5}")


def segment_sizes(data: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for _, path in segments(data)}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    base = tmp_path_factory.mktemp("replay")
    data, run_dir = base / "data", base / "run"
    args = ("--durable", str(data), "--digest-every", "50")
    with kv_service(run_dir, args=args) as svc:
        clients = clients_on_every_replica(svc.port)
        try:
            drive(clients, 0, 60)
            mid = dominoes("snapshot", "--run-dir", run_dir)
            assert mid.returncode == 0, mid.stderr
            drive(clients, 60, 120)
            # a replay of the directory the service is writing: read only
            sizes_before = segment_sizes(data)
            live_replay = replay(data)
            sizes_after = segment_sizes(data)
            last = dominoes("snapshot", "--run-dir", run_dir)
            assert last.returncode == 0, last.stderr
        finally:
            for c in clients.values():
                c.close()
        svc.proc.send_signal(signal.SIGINT)
        code = svc.proc.wait(30)
    return Recorded(
        data,
        mid.stdout.strip(),
        last.stdout.strip(),
        live_replay,
        sizes_before,
        sizes_after,
        code,
    )


def test_dominoes_snapshot_says_where_it_wrote_the_snapshot(recorded: Recorded) -> None:
    assert recorded.exit_code == 0
    for line in (recorded.mid_line, recorded.last_line):
        seq, path = snapshot_of(line)
        assert path.parent == recorded.data
        assert path.name == f"snapshot-{seq:020d}.snap"
        assert decode_snapshot(path.read_bytes())[0] == seq
    assert snapshot_of(recorded.mid_line)[0] < snapshot_of(recorded.last_line)[0]


def test_dominoes_snapshot_without_a_service_fails_in_one_line(tmp_path: Path) -> None:
    done = dominoes("snapshot", "--run-dir", tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"dominoes: error: no service is running at {tmp_path}/control.sock\n"


def test_dominoes_snapshot_of_a_service_that_is_not_durable_fails_in_one_line(
    svc: Service,
) -> None:
    done = dominoes("snapshot", "--run-dir", svc.run_dir)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "dominoes: error: this service is not durable (run it with --durable)\n"


def test_the_replay_digests_equal_the_live_ones_and_the_final_state_is_saved(
    recorded: Recorded, tmp_path: Path
) -> None:
    out = tmp_path / "final.snap"
    done = replay(recorded.data, "--save", out, "--digest")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    compared = [line for line in lines if line.startswith("seq ") and " component " in line]
    assert compared, done.stdout  # the live replicas recorded digests, and they were compared
    oks = ("OK (replica 0)", "OK (replica 1)", "OK (replicas 0, 1)")
    assert all(line.endswith(oks) for line in compared), compared
    assert "DIFFERS" not in done.stdout
    assert f"compared {len(compared)} component digests with the live replicas': all equal" in (
        done.stdout
    )
    # digest points every 50 positions (the first entry at or past each multiple of 50),
    # each with every component compared
    seqs = {int(line.split()[1]) for line in compared}
    assert len(seqs) >= 2
    assert {line.split()[3].rstrip(":") for line in compared} >= {"keyspace", "_dominoes"}
    cursor, _ = decode_snapshot(out.read_bytes())
    assert f"saved the state at seq {cursor} to {out}" in done.stdout
    # the same state from the mid-way snapshot on, and from the newest one
    for how in ("oldest", "newest"):
        again = tmp_path / f"{how}.snap"
        done = replay(recorded.data, "--from-snapshot", how, "--save", again)
        assert done.returncode == 0, done.stderr
        assert again.read_bytes() == out.read_bytes()


def test_a_replay_until_a_live_snapshot_holds_the_same_bytes(
    recorded: Recorded, tmp_path: Path
) -> None:
    for line in (recorded.mid_line, recorded.last_line):
        seq, path = snapshot_of(line)
        out = tmp_path / f"until-{seq}.snap"
        done = replay(recorded.data, "--until", str(seq), "--save", out, "--from-snapshot", "none")
        assert done.returncode == 0, done.stderr
        assert f"stopped before seq {seq} (--until)" in done.stdout
        mine, live = decode_snapshot(out.read_bytes()), decode_snapshot(path.read_bytes())
        assert mine[0] == live[0] == seq
        assert mine[1] == live[1]  # the encoded state, byte for byte
        assert out.read_bytes() == path.read_bytes()  # and so the whole file


def test_step_prints_the_commands_as_they_are_applied(recorded: Recorded) -> None:
    seq, _ = snapshot_of(recorded.mid_line)
    done = replay(recorded.data, "--until", str(seq), "--step", "--json")
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    summary = docs.pop()
    assert summary["type"] == "summary"
    assert summary["cursor"] == seq
    assert len(docs) == summary["entries"] + summary["noops"]
    assert [d["seq"] for d in docs] == sorted(d["seq"] for d in docs)
    assert docs[-1]["seq"] + docs[-1]["nslots"] == seq
    # the first SET, decoded, and its reply; in text, the same entry
    first = next(
        d
        for d in docs
        if d["kind"] == "call"
        and d["event"] == "commands.run"
        and d["args"][0][0][:2] == ["SET", "replay:k0"]
    )
    assert first["event"] == "commands.run"
    assert first["outcome"] == {"result": ["OK"]}
    text = replay(recorded.data, "--until", str(first["seq"] + 1), "--step")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = lines.index(
        f"seq {first['seq']} call commands.run([[b'SET', b'replay:k0', b'0']]) "
        f"origin {first['origin']}"
    )
    assert lines[at + 1] == "  -> [b'OK']"


def test_the_replay_of_the_live_directory_only_read_it(recorded: Recorded) -> None:
    done = recorded.live_replay
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed ")
    # the service only appends: nothing was cut (a torn tail is left as it is)
    for name, size in recorded.sizes_before.items():
        assert recorded.sizes_after[name] >= size


def test_a_torn_tail_is_not_replayed_and_left_as_it_is(recorded: Recorded, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(recorded.data, data)
    _, last = segments(data)[-1]
    whole = last.read_bytes()
    last.write_bytes(whole[:-5])
    done = replay(data, "--json")
    assert done.returncode == 0, done.stderr
    torn = json.loads(done.stdout.splitlines()[-1])["torn"]
    end = scan(whole).records[-1]
    assert torn["path"] == str(last)
    assert torn["seq"] == end.seq
    assert torn["offset"] == len(whole) - RECORD.size - len(end.payload)
    assert last.read_bytes() == whole[:-5]


def test_a_corrupt_record_is_an_error_naming_the_file_and_offset(
    recorded: Recorded, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(recorded.data, data)
    _, seg = segments(data)[0]
    raw = bytearray(seg.read_bytes())
    records = scan(bytes(raw)).records
    offset = SEGMENT_HEADER.size
    for record in records[: len(records) // 2]:
        offset += RECORD.size + len(record.payload)
    raw[offset + RECORD.size] ^= 0x01  # a bit of the payload of a record mid-log
    seg.write_bytes(bytes(raw))
    done = replay(data)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"dominoes: error: corrupt log record in {seg} at offset {offset}: "
        f"checksum or sequence mismatch\n"
    )
