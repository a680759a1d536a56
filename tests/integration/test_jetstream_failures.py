"""``--log nats://`` on a 3-node JetStream cluster (R3) while things die.

Two machines of two replicas each serve the KV service on one R3 stream.
Four redis-py clients (one per replica) run INCRs the whole time.  An INCR's
reply is the counter it produced, so an entry applied twice would skip a
number, and a lost one would leave the final value short: each client's own
counter must answer exactly 1, 2, 3, ... and end at the count of replies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.natsserver import NatsCluster, NatsServer

from .jetstream_helpers import Machine, machine, snapshot_names, stream_state, wait_converged
from .kv_helpers import client, wait_for

pytestmark = pytest.mark.integration

#: refuse after 3 s of an unreachable stream, not the default 15 s
FAST = ("--unreachable-after", "3")


class Load:
    """One thread per client: INCR its own key and a shared one until stopped."""

    def __init__(self, ports: list[int], name: str = "own") -> None:
        self.name = name
        self.clients = [client(p, socket_timeout=90) for p in ports]
        self.own: list[list[int]] = [[] for _ in ports]
        self.shared: list[int] = []
        self.errors: list[BaseException] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(len(ports))]

    def _run(self, k: int) -> None:
        c = self.clients[k]
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                self.own[k].append(int(c.incr(f"{self.name}:{k}")))
                shared = int(c.incr(f"{self.name}:shared"))
                took = time.monotonic() - t0
                with self._lock:
                    self.shared.append(shared)
                    self.slowest = max(self.slowest, took)
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.errors.append(
                RuntimeError(f"{type(exc).__name__}: {exc} at {time.time():.3f} client {k}")
            )

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def progress(self, more: int, timeout: float = 60) -> None:
        """Wait until every client got ``more`` further replies."""
        marks = [len(o) + more for o in self.own]
        wait_for(
            lambda: self.errors or all(len(o) >= m for o, m in zip(self.own, marks, strict=True)),
            timeout=timeout,
        )
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def check(self, machines: list[Machine]) -> int:
        """Exactly once: every reply sequence is 1..n, and every replica holds n."""
        assert not self.errors, self.errors
        for k, replies in enumerate(self.own):
            assert replies == list(range(1, len(replies) + 1)), f"client {k}: {replies}"
        assert sorted(self.shared) == list(range(1, len(self.shared) + 1))
        for m in machines:
            for c in m.on.values():
                for k, replies in enumerate(self.own):
                    assert int(c.get(f"{self.name}:{k}") or 0) == len(replies)
                assert int(c.get(f"{self.name}:shared") or 0) == len(self.shared)
        return sum(map(len, self.own)) + len(self.shared)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _cluster_machines(cluster: NatsCluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    # snapshots every 200 entries: a restarted machine starts from one
    args = ("--stream-replicas", "3", "--snapshot-every", "200")
    return (
        machine(tmp_path / "a", cluster.urls, args=args),
        machine(tmp_path / "b", cluster.urls, args=args),
    )


def test_killing_a_nats_node_then_the_stream_leader_loses_nothing_and_applies_nothing_twice(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    ma, mb = _cluster_machines(nats_cluster, tmp_path)
    with ma as a, mb as b:
        load = Load([a.port, a.port, b.port, b.port])
        try:
            load.start()
            load.progress(20)
            leader = wait_for(lambda: nats_cluster.stream_leader("KV"), timeout=30)
            # 1. a node that does not lead the stream
            follower = next(n for n in nats_cluster.nodes if n.name != leader)
            i = nats_cluster.nodes.index(follower)
            nats_cluster.kill(i)
            load.progress(20)
            nats_cluster.restart(i)
            nats_cluster.nodes[i].wait_ready()
            load.progress(20)
            # 2. the stream's leader itself: writes wait for the election
            leader = wait_for(lambda: nats_cluster.stream_leader("KV"), timeout=30)
            assert leader is not None
            j = nats_cluster.index_of(leader)
            before = load.slowest
            nats_cluster.kill(j)
            load.progress(20, timeout=90)
            pause = load.slowest
            nats_cluster.restart(j)
            nats_cluster.nodes[j].wait_ready()
            load.progress(20)
        finally:
            load.stop()
        try:
            total = load.check([a, b])
        finally:
            load.close()
        print(
            f"\n{total} acknowledged INCRs, 0 lost, 0 applied twice; the longest reply took "
            f"{pause:.2f}s across the leader's death ({before:.2f}s before it)"
        )
        wait_converged([a, b], timeout=60)


def test_a_machine_killed_under_load_restarts_from_the_stream_and_converges(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    ma, mb = _cluster_machines(nats_cluster, tmp_path)
    with ma as a:
        with mb as b:
            load = Load([a.port, a.port])
            other = Load([b.port], name="b")
            try:
                load.start()
                other.start()
                load.progress(20)
                other.progress(20)
                # snapshots on both sides of a trimmed stream before the kill
                wait_for(lambda: len(snapshot_names(nats_cluster.urls, "KV")) == 2, timeout=60)
                b.crash()  # the whole of machine b at once
                load.progress(30)  # machine a goes on alone
            finally:
                load.stop()
                other.stop()
            other.close()
        # machine b again, same run dir: it rebuilds its state from the newest
        # snapshot in the Object Store, then the stream after it
        first, _, names = stream_state(nats_cluster.urls, "KV")
        assert len(names) == 2
        # trimmed, but never past what the killed machine had copied (its progress
        # stays in <stream>-machines for a minute)
        assert 1 < first <= int(names[0].split("-")[2])
        with _cluster_machines(nats_cluster, tmp_path)[1] as b2:
            try:
                load.check([a, b2])
            finally:
                load.close()
            # b's acknowledged INCRs are there too (and one more may have been
            # applied whose reply the kill cut off)
            for c in [*a.on.values(), *b2.on.values()]:
                assert int(c.get("b:0") or 0) in (len(other.own[0]), len(other.own[0]) + 1)
            wait_converged([a, b2], timeout=60)


def test_while_the_stream_is_unreachable_writes_and_fenced_reads_get_tryagain_local_reads_answer(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The NATS server frozen (SIGSTOP): to both machines, the stream is out of reach."""
    with (
        machine(tmp_path / "a", nats_server.url, args=FAST) as a,
        machine(tmp_path / "b", nats_server.url, args=("--reads", "local", *FAST)) as b,
    ):
        a.on[0].set("k", "before")
        # b reads locally: each of its replicas may lag, so wait for both
        wait_for(lambda: all(c.get("k") == b"before" for c in b.on.values()))
        pid = nats_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # linearizable reads on a, and then writes, are refused with TRYAGAIN
            wait_for(lambda: _refused(lambda: a.on[1].get("k")), timeout=60)
            wait_for(lambda: _refused(lambda: a.on[0].set("k", "during")), timeout=60)
            # local reads on b answer from the state as it is
            assert b.on[1].get("k") == b"before"
            assert b.on[0].dbsize() == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        # healed: writes go through again, and both machines see them
        wait_for(lambda: _written(a.on[0], "k", "after"), timeout=60)
        assert a.on[1].get("k") == b"after"
        wait_for(lambda: b.on[1].get("k") == b"after", timeout=30)
        wait_converged([a, b], timeout=60)


def _refused(command: Callable[[], object]) -> bool:
    """True if the KV answered TRYAGAIN (redis-py's TryAgainError); any other error raises."""
    try:
        command()
    except redis.exceptions.TryAgainError:
        return True
    return False


def _written(c: redis.Redis, key: str, value: str) -> bool:
    try:
        return bool(c.set(key, value))
    except redis.exceptions.TryAgainError:
        return False
