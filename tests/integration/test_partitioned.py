"""A partitioned counter (``examples.partitioned``) through ``dominoes run``, seen from clients.

Each key lives on one of the 2 replicas.  A write acknowledged through a
connection on one replica is seen by the next read through a connection on
the other, whichever replica holds the key, and every partition is held
where the placement says, and only there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

from dominoes import connect
from examples.partitioned import Counter

from .harness import (
    LineClient,
    Service,
    ask,
    clients_on_every_replica,
    reconfigured,
    running,
    settled,
    wait_until,
)

TARGET = "examples.partitioned:service"


def test_a_write_on_one_replica_is_read_on_the_other_whoever_holds_the_key(
    tmp_path: Path,
) -> None:
    spec = Counter.partition
    assert spec is not None
    with running(TARGET, tmp_path / "run") as svc:
        on = clients_on_every_replica(svc.port, 2)
        keys = [f"k{i}" for i in range(40)]
        assert {spec.holders(spec.of(k), 2)[0] for k in keys} == {0, 1}
        for round_ in range(1, 4):
            for i, key in enumerate(keys):
                writer, reader = (on[0], on[1]) if (i + round_) % 2 else (on[1], on[0])
                assert writer.ask(f"INCR {key} {i}") == str(round_ * i)
                assert reader.ask(f"GET {key}") == str(round_ * i)
        assert on[0].ask("INCR k0 x") == "ERR increment is not an integer"
        assert on[1].ask(f"INCR k1 {2**63 - 1}") == "ERR increment would overflow"
        assert on[0].ask("GET k1") == "3"  # the refused increment changed nothing
        a, b = settled(svc.run_dir)
        # each replica digests only the partitions it holds: replica r the
        # partitions p with p mod 2 == r
        for index, digest in enumerate((a, b)):
            parts = sorted(
                int(n.split("#")[1])
                for n in digest
                if n.startswith("Counter#") and "loading" not in n
            )
            assert parts == [p for p in range(spec.partitions) if p % 2 == index]
        stats = [ask(svc.run_dir, i, "stats") for i in range(2)]
        assert sum(s["replica"]["forwarded_reads"] for s in stats) > 0
        for client in on.values():
            client.close()


def test_eight_writers_lose_and_double_nothing(tmp_path: Path) -> None:
    writers, rounds = 8, 150
    with running(TARGET, tmp_path / "run") as svc:
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                with LineClient(svc.port) as c:
                    for i in range(1, rounds + 1):
                        assert c.ask(f"INCR w{n}") == str(i)
                        assert c.ask("INCR total") != ""
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        on = clients_on_every_replica(svc.port, 2)
        for client in on.values():
            assert [client.ask(f"GET w{n}") for n in range(writers)] == [str(rounds)] * writers
            assert client.ask("GET total") == str(writers * rounds)
            client.close()
        settled(svc.run_dir)


def held_by(replica: int, replicas: int = 2, copies: int = 1) -> list[str]:
    spec = Counter.partition
    assert spec is not None
    return [
        k
        for k in (f"k{i}" for i in range(200))
        if replica in spec.holders(spec.of(k), replicas, copies)
    ]


def test_kill_9_with_one_copy_the_dead_replica_s_keys_fail_fast_then_start_empty(
    tmp_path: Path,
) -> None:
    with running(TARGET, tmp_path / "run") as svc:
        on = clients_on_every_replica(svc.port, 2)
        mine, theirs = held_by(0)[0], held_by(1)[0]
        assert on[0].ask(f"INCR {mine} 5") == "5"
        assert on[0].ask(f"INCR {theirs} 7") == "7"
        on[1].close()
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        # replica 0 keeps serving its own keys, and refuses the dead one's at
        # once, reads and writes, until it is back
        wait_until(lambda: "no live holder" in on[0].ask(f"GET {theirs}"), timeout=20)
        assert on[0].ask(f"INCR {mine} 1") == "6"
        svc.wait_restarted(1)
        # its only copy died with it: it starts empty, and the log says so
        assert on[0].ask(f"GET {theirs}") == "0"
        assert on[0].ask(f"GET {mine}") == "6"
        svc.wait_for_line("starts EMPTY")  # the output is read by a thread: wait for it
        on[0].close()
        settled(svc.run_dir)


def test_kill_9_with_two_copies_of_three_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rounds = 300
    with running("examples.partitioned:copies2", tmp_path / "run", replicas=3) as svc:
        on = clients_on_every_replica(svc.port, 3)
        on[1].close()
        errors: list[BaseException] = []
        done = [0, 0]

        def write(slot: int, client: LineClient) -> None:
            try:
                for i in range(1, rounds + 1):
                    assert client.ask(f"INCR w{slot}") == str(i)
                    done[slot] = i
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(slot, on[r])) for slot, r in enumerate((0, 2))
        ]
        for t in threads:
            t.start()
        wait_until(lambda: min(done) > rounds // 4, timeout=30)
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        for t in threads:
            t.join()
        assert errors == []
        svc.wait_restarted(1)
        back = clients_on_every_replica(svc.port, 3)
        for client in back.values():
            assert [client.ask(f"GET w{slot}") for slot in (0, 1)] == [str(rounds)] * 2
            client.close()
        for client in (on[0], on[2]):
            client.close()
        settled(svc.run_dir, 3)
        assert "starts EMPTY" not in svc.output


def held_partitions(svc: Service) -> list[int]:
    return [
        ask(svc.run_dir, i, "stats")["replica"]["core"]["partitions"]["Counter"] for i in (0, 1)
    ]


def test_copies_2_to_1_and_back_under_8_writers_lose_and_double_nothing(tmp_path: Path) -> None:
    writers = 8
    with running(TARGET, tmp_path / "run") as svc:
        errors: list[BaseException] = []
        done = [0] * writers
        stop = threading.Event()

        def write(n: int) -> None:
            try:
                with LineClient(svc.port) as c:
                    while not stop.is_set():
                        assert c.ask(f"INCR w{n}") == str(done[n] + 1)
                        done[n] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        assert held_partitions(svc) == [32, 32]
        for copies, held in (("2", [64, 64]), ("1", [32, 32]), ("2", [64, 64])):
            before = sum(done)
            wait_until(lambda before=before: sum(done) > before + 200, timeout=30)
            # 32 partitions gained by each of the 2 replicas; none when shrinking
            assert reconfigured(svc, "counter", "copies", "Counter", copies) == (
                "64" if copies == "2" else "0"
            )
            wait_until(lambda held=held: held_partitions(svc) == held, timeout=30)
        before = sum(done)
        wait_until(lambda: sum(done) > before + 200, timeout=30)
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        on = clients_on_every_replica(svc.port, 2)
        for client in on.values():
            assert [client.ask(f"GET w{n}") for n in range(writers)] == [str(d) for d in done]
            client.close()
        a, b = settled(svc.run_dir)
        # two copies again: every partition on both, and equal
        assert {n for n in a if n.startswith("Counter#") and "loading" not in n} == {
            f"Counter#{p}" for p in range(64)
        }
        assert a == b


async def _local_client_calls(run_dir: Path, keys: list[str]) -> list[Any]:
    async with await connect("counter", run_dir=run_dir) as client:
        return [await client.submit("Counter.incr", key, by=i) for i, key in enumerate(keys)]


def test_a_local_client_gets_the_result_of_a_partitioned_call(tmp_path: Path) -> None:
    """A local client's call is owned by the replica that claims it, which collects
    the partials of the partitions it does not hold before it answers."""
    with running(TARGET, tmp_path / "run") as svc:
        keys = held_by(0)[:5] + held_by(1)[:5]
        got = asyncio.run(_local_client_calls(svc.run_dir, keys))
        assert got == list(range(len(keys)))
        again = asyncio.run(_local_client_calls(svc.run_dir, keys))
        assert again == [2 * i for i in range(len(keys))]
        on = clients_on_every_replica(svc.port, 2)
        for client in on.values():
            assert [client.ask(f"GET {k}") for k in keys] == [str(2 * i) for i in range(10)]
            client.close()
        settled(svc.run_dir)
