"""A partitioned counter (``examples.partitioned``) through ``dominoes run``, seen from clients.

Each key lives on one of the 2 replicas.  A write acknowledged through a
connection on one replica is seen by the next read through a connection on
the other, whichever replica holds the key, and every partition is held
where the placement says, and only there.
"""

from __future__ import annotations

import threading
from pathlib import Path

from examples.partitioned import Counter

from .harness import LineClient, ask, clients_on_every_replica, running, wait_until

TARGET = "examples.partitioned:service"


def digests(run_dir: Path, replicas: int = 2) -> list[tuple[int, dict[str, str]]]:
    out = []
    for i in range(replicas):
        got = ask(run_dir, i, "digest")
        out.append((int(got["seq"]), dict(got["digest"])))
    return out


def settled(run_dir: Path) -> list[dict[str, str]]:
    """Wait until both replicas applied the same position; the copies they share agree."""
    seen: list[tuple[int, dict[str, str]]] = []

    def same_seq() -> bool:
        seen[:] = digests(run_dir)
        return len({seq for seq, _ in seen}) == 1

    wait_until(same_seq, timeout=20, interval=0.05)
    (_, a), (_, b) = seen
    for name in a.keys() & b.keys():
        assert a[name] == b[name], f"replicas differ in {name}"
    return [a, b]


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
            parts = sorted(int(n.split("#")[1]) for n in digest if n.startswith("Counter#"))
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
