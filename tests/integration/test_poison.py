"""Poison entries (invariant 9): a request whose apply hangs on every replica.

Each replica interrupts the apply after ``--apply-timeout``, rolls back to
the state before the entry and waits; once every live replica gave up on the
same entry, the supervisor declares it poison and each applies it as an
error.  The service keeps its state and goes on serving.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import ROOT, LineClient, clients_on_every_replica, free_port, running, wait_until

TARGET = "tests.integration.services:poison"
ARGS = ("--apply-timeout", "0.5")


@pytest.mark.parametrize("request_line", ["SPIN k", "BACKTRACK k", "STUBBORN k"])
def test_a_request_that_hangs_every_replica_fails_alone(tmp_path: Path, request_line: str) -> None:
    with running(TARGET, tmp_path / "run", args=ARGS) as svc:
        every = clients_on_every_replica(svc.port, 2)
        try:
            assert every[0].ask("PUT k before") == "OK"
            reply = every[1].ask(request_line)  # hangs on both replicas, then fails
            assert reply.startswith("ERR PoisonedEntryError: entry ")
            assert "state is as it was before it" in reply
            # The half-done write was rolled back on both replicas.
            assert every[0].ask("GET k") == "before"
            assert every[1].ask("GET k") == "before"
            # And the service goes on, writes and reads, across replicas.
            assert every[1].ask("PUT k after") == "OK"
            assert every[0].ask("GET k") == "after"
            assert "POISON seq=" in svc.wait_for_line("POISON seq=")
            record = (tmp_path / "run" / "poisoned.log").read_text()
            assert "Poison." in record
            assert all(r["restarts"] == 0 for r in svc.status()["replicas"])
        finally:
            for c in every.values():
                c.close()
        assert svc.stop() == 0


def test_a_single_replica_survives_a_poison_entry(tmp_path: Path) -> None:
    with running(TARGET, tmp_path / "run", replicas=1, args=ARGS) as svc:
        with LineClient(svc.port) as c:
            assert c.ask("PUT a 1") == "OK"
            assert c.ask("SPIN a").startswith("ERR PoisonedEntryError")
            assert c.ask("GET a") == "1"
            assert c.ask("SPIN b").startswith("ERR PoisonedEntryError")
            assert c.ask("PUT b 2") == "OK"
            assert c.ask("GET b") == "2"
        assert svc.stop() == 0


def test_sys_exit_in_a_handler_is_that_requests_error(tmp_path: Path) -> None:
    with running(TARGET, tmp_path / "run", args=ARGS) as svc:
        every = clients_on_every_replica(svc.port, 2)
        try:
            reply = every[0].ask("QUIT")
            assert reply == "ERR RuntimeError: a handler of 'Poison.quit' called sys.exit(3)"
            assert every[1].ask("PUT x 1") == "OK"
            assert every[0].ask("GET x") == "1"
            assert all(r["restarts"] == 0 for r in svc.status()["replicas"])
        finally:
            for c in every.values():
                c.close()


def test_losing_every_replica_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "dominoes", "run", TARGET, "--replicas", "2",
        "--port", str(port), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving on" in line:
                break
        with LineClient(port) as c:
            c.sock.sendall(b"CRASH\n")  # every replica exits applying it
            assert c.file.readline() == b""  # the connection's replica died
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "every replica of 'poison' died" in err


def test_the_kv_matches_an_exponential_glob_and_keeps_serving(tmp_path: Path) -> None:
    """KEYS a*a*...*b (20 stars) against a 40-character key, alone and pipelined
    behind a write (then every replica applies it), and PSUBSCRIBE with the same
    pattern plus a PUBLISH to a 40-character channel: each answers at once."""
    import redis

    from .kv_helpers import clients_on_every_replica, kv_service

    evil = b"a*" * 20 + b"b"
    long = b"a" * 40
    with kv_service(tmp_path / "run") as svc:
        on = clients_on_every_replica(svc.port)
        sub = redis.Redis(port=svc.port, socket_timeout=10).pubsub()
        try:
            on[0].set(long, "v")
            assert on[1].keys(evil) == []
            pipe = on[0].pipeline(transaction=False)
            # redis-py types a pipeline's commands as the client's: they return the pipeline
            pipe.set("k", "1").keys(evil).keys(b"a*")  # type: ignore[union-attr]
            assert pipe.execute() == [True, [], [long]]
            sub.psubscribe(evil)
            assert sub.get_message(timeout=10)["type"] == "psubscribe"
            assert on[1].publish(long, "m") == 0
            assert on[0].publish(b"a" * 39 + b"b", "m") == 1
            assert on[1].get(long) == b"v"
            assert on[0].get("k") == b"1"
            assert all(r["restarts"] == 0 for r in svc.status()["replicas"])
        finally:
            sub.close()
            for r in on.values():
                r.close()


def test_recovery_points_are_written_by_a_child_and_rolled_back_to(tmp_path: Path) -> None:
    """With a recovery point every 8 entries, each replica's forked child writes
    it (0600) while the replica serves; a poison entry later rolls back to the
    newest one plus the journal since, and every earlier write is still there."""
    run_dir = tmp_path / "run"
    args = (*ARGS, "--checkpoint-every", "8")
    with running(TARGET, run_dir, args=args) as svc:
        every = clients_on_every_replica(svc.port, 2)
        try:
            for i in range(60):
                assert every[i % 2].ask(f"PUT k{i} v{i}") == "OK"

            def both_written() -> bool:
                names = [p.name for p in run_dir.glob("recovery-*.bin")]
                return {n.split("-")[1] for n in names} == {"0", "1"}

            wait_until(both_written, timeout=20)
            modes: set[int] = set()

            def some_mode_read() -> bool:
                for path in run_dir.glob("recovery-*.bin"):
                    with contextlib.suppress(FileNotFoundError):  # a newer point replaced it
                        modes.add(path.stat().st_mode & 0o777)
                return bool(modes)

            wait_until(some_mode_read, timeout=20)
            assert modes == {0o600}
            assert every[1].ask("SPIN k7").startswith("ERR PoisonedEntryError")
            for i in range(60):
                assert every[i % 2].ask(f"GET k{i}") == f"v{i}"
            assert every[0].ask("PUT k7 again") == "OK"
            assert every[1].ask("GET k7") == "again"
        finally:
            for c in every.values():
                c.close()
        assert svc.stop() == 0
    assert not list(run_dir.glob("recovery-*")), "recovery points outlived a clean stop"
    assert not list(run_dir.glob(".recovery-*"))


def test_a_durable_service_restarts_past_its_poison_entry(tmp_path: Path) -> None:
    """The log writer marks the verdict in the segments: a restart, and a replay,
    apply the entry as the same error instead of hanging in its handler again."""
    data = tmp_path / "data"
    args = (*ARGS, "--durable", str(data), "--fsync", "always")
    with running(TARGET, tmp_path / "run", replicas=1, args=args) as svc:
        with LineClient(svc.port) as c:
            assert c.ask("PUT a 1") == "OK"
            assert c.ask("SPIN a").startswith("ERR PoisonedEntryError")
            assert c.ask("PUT b 2") == "OK"
        assert svc.stop() == 0
    with running(TARGET, tmp_path / "run", replicas=1, args=args) as svc:
        assert "replayed 3 entries" in svc.output
        with LineClient(svc.port) as c:
            assert c.ask("GET a") == "1"  # the poison entry's partial write stays undone
            assert c.ask("GET b") == "2"
        assert svc.stop() == 0
    replay = subprocess.run(
        [sys.executable, "-m", "dominoes", "replay", str(data), "--service", TARGET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
