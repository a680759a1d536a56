"""The partitioned KV with a durable log (``--partition copies=K --durable DIR``),
through redis-py against a real ``dominoes run``.

With ``copies=1`` a partition lives on one replica.  ``--durable`` keeps a
copy that outlives the process: each replica writes snapshots of its own
partitions (``snapshot-<seq>.r<i>.snap``), and the log writer keeps every
entry.  The tests show, from clients:

* a replica killed with SIGKILL under MULTI/EXEC transfers across its
  partitions and the other's comes back with its partitions, rebuilt from its
  snapshot and the log (no ``starts EMPTY``); no acknowledged transaction is
  lost, none is applied twice, and no reader ever sees half of one;
* the whole service, killed with SIGKILL and started again on the same
  directory, has every partition, including across changes of ``copies``;
* the directory refuses another number of replicas, or a service that is
  not partitioned, in one line.

No client retries: a send cut by a broken connection, or refused while its
partition had no live holder, is counted (it may or may not have been
applied), never re-sent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from .harness import Service, reconfigured, running, settled
from .kv_helpers import Transfers, pinned, wait_for
from .test_kv_partitioned import held_by, held_partitions

KV = "dominoes.components.kv:service"


def durable(
    run_dir: Path, data_dir: Path, replicas: int = 2, copies: int = 1, session: bool = False
) -> contextlib.AbstractContextManager[Service]:
    """The partitioned KV on ``data_dir``; ``session``: it leads a process group of
    its own, which the test may kill whole."""
    args = ("--partition", f"copies={copies}", "--durable", str(data_dir))
    return running(KV, run_dir, replicas=replicas, args=args, session=session)


def unavailable(exc: BaseException) -> bool:
    """A call that needed a partition with no live holder (redis-py: ClusterDownError)."""
    return isinstance(exc, redis.ResponseError) and "no live holder" in str(exc)


def snapshot_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("snapshot-*.snap"))


def test_kill_9_with_one_copy_brings_the_dead_replica_s_partitions_back_from_disk(
    tmp_path: Path,
) -> None:
    """2 replicas, copies=1, ``--durable``.  Writers on each replica move 1 from
    x (replica 0's partition) to y (replica 1's) and count n, in one MULTI/EXEC;
    readers read x and y in one.  Halfway, every replica writes its snapshot
    (``dominoes snapshot``), so the rebuild uses a snapshot and the log after it.
    Replica 1 is killed with SIGKILL.

    While it is down, a call needing its partitions answers ``no live holder``
    at once (counted as cut: the entry is in the log, so it may yet apply).
    Once it is back its partitions are: x + y == 0 in every read, y == n, and n
    counts every acknowledged transaction once and at most the cut ones more.
    """
    x = held_by(0, "x", 1)[0]
    y = held_by(1, "y", 1)[0]
    n = held_by(1, "n", 1)[0]
    data = tmp_path / "data"
    plain = held_by(1, "p:", 50) + held_by(0, "p:", 50)
    with durable(tmp_path / "run", data) as svc:
        setup = pinned(svc.port, 0)
        for k in plain:
            assert setup.set(k, f"v {k}")
        transfers = Transfers(
            svc.port, x, y, n, writers=[0, 1], readers=[0], reconnect=0, cut_error=unavailable
        )
        with transfers:
            transfers.progress(200)
            snap = subprocess.run(
                [sys.executable, "-m", "dominoes", "snapshot", "kv", "--run-dir", str(svc.run_dir)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert snap.returncode == 0, snap.stderr
            assert snap.stdout.count("snapshot at seq") == 2, snap.stdout
            assert sorted(name.split(".")[1] for name in snapshot_files(data)) == ["r0", "r1"]
            transfers.progress(200)
            pid = svc.replica_pids()[1]
            os.kill(pid, signal.SIGKILL)
            svc.wait_restarted(1)
            transfers.progress(200)
        acked, cut = transfers.acked, transfers.cut
        assert transfers.errors == []
        assert transfers.reads
        assert all(int(a or 0) + int(b or 0) == 0 for a, b in transfers.reads)
        svc.wait_for_line("rebuilt 32 partition(s)")
        assert "starts EMPTY" not in svc.output
        on = {0: setup, 1: pinned(svc.port, 1)}
        finals = {(r.get(x), r.get(y), r.get(n)) for r in on.values()}
        assert len(finals) == 1, finals
        ((fx, fy, fn),) = finals
        assert fx is not None
        assert fy is not None
        assert fn is not None
        assert int(fx) + int(fy) == 0
        assert fy == fn
        assert sum(acked) <= int(fn) <= sum(acked) + sum(cut), (acked, cut, fn)
        for r in on.values():
            assert [r.get(k) for k in plain] == [f"v {k}".encode() for k in plain]
            assert r.dbsize() == len(plain) + 3
            r.close()
        settled(svc.run_dir)


def test_the_whole_service_killed_restarts_with_every_partition_across_copies_changes(
    tmp_path: Path,
) -> None:
    """Writes at copies=1, a snapshot, copies 1 -> 2 -> 1 with writes between,
    then SIGKILL of every process.  Started again on the same directory, each
    replica restores its own snapshot and replays the log after it as itself
    (the partitions it gained came in the log): every acknowledged write is
    there, through both replicas, and the digests agree."""
    data = tmp_path / "data"
    keys = held_by(0, "a:", 40) + held_by(1, "a:", 40)
    expected: dict[str, bytes] = {}
    with durable(tmp_path / "run", data, session=True) as svc:
        on = {i: pinned(svc.port, i) for i in (0, 1)}

        def write(stage: str) -> None:
            for j, k in enumerate(keys):
                value = f"{stage} {k}".encode()
                assert on[j % 2].set(k, value)
                assert on[j % 2].incr(f"{{{k}}}count") == len(stage)
                expected[k] = value
                expected[f"{{{k}}}count"] = str(len(stage)).encode()

        write("a")
        assert on[0].save()  # SAVE: this replica's partitions (as in Redis Cluster)
        assert [name.split(".")[1] for name in snapshot_files(data)] == ["r0"]
        write("bb")
        assert reconfigured(svc, "kv", "copies", "shard", "2") == "64"
        wait_for(lambda: held_partitions(svc) == [64, 64], timeout=30)
        write("ccc")
        assert on[1].save()
        assert reconfigured(svc, "kv", "copies", "shard", "1") == "0"
        wait_for(lambda: held_partitions(svc) == [32, 32], timeout=30)
        write("dddd")
        for r in on.values():
            r.close()
        os.killpg(svc.proc.pid, signal.SIGKILL)
    with durable(tmp_path / "run2", data) as svc:
        svc.wait_for_line("replayed")
        assert "each replica's own snapshot" in svc.output
        for i in (0, 1):
            r = pinned(svc.port, i)
            assert {k: r.get(k) for k in expected} == expected
            assert r.dbsize() == len(expected)
            r.close()
        assert held_partitions(svc) == [32, 32]
        settled(svc.run_dir)


def test_a_partitioned_data_dir_refuses_another_replica_count_or_layout(
    tmp_path: Path,
) -> None:
    """The partitions on disk are placed by the number of replicas: the directory
    restarts with that number only, and only as a partitioned service; a
    replicated service's directory is not served partitioned.  One line each."""
    data = tmp_path / "data"
    with durable(tmp_path / "run", data) as svc:
        r = pinned(svc.port, 0)
        assert r.set("k", "v")
        r.close()
    other = tmp_path / "other"
    with running(KV, tmp_path / "run3", args=("--durable", str(other))) as svc:
        r = pinned(svc.port, 0)
        assert r.set("k", "v")
        r.close()
    base = [sys.executable, "-m", "dominoes", "run", KV, "--run-dir", str(tmp_path / "run2")]
    cases = [
        (["--replicas", "3", "--partition", "copies=1", "--durable", str(data)], "--replicas 2"),
        (["--replicas", "2", "--durable", str(data)], "holds the log of a partitioned service"),
        (
            ["--replicas", "2", "--partition", "copies=1", "--durable", str(other)],
            "holds the log of a replicated service",
        ),
    ]
    for extra, said in cases:
        done = subprocess.run(
            [*base, *extra], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0, extra
        assert said in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
