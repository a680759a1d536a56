"""``dominoes run`` end to end: real processes, real sockets, hard timeouts, bounded counts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
from pathlib import Path

import pytest

from .harness import LineClient, clients_on_every_replica, running, wait_until

pytestmark = pytest.mark.integration

COUNTER = "examples.counter:service"


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def left_by_service(before: set[str]) -> list[str]:
    """Entries of ``/dev/shm`` made since ``before`` that a service could have named.

    Other tests, run at the same time by another worker, make and remove their
    own (``psm_*`` of ``SharedMemory``, ``sem.mp-*`` of multiprocessing's locks):
    a service's would carry its name or dominoes'.
    """
    return sorted(e for e in shm_entries() - before if "dominoes" in e or "counter" in e)


def shm_mapped(pids: list[int]) -> list[str]:
    """The ``/dev/shm`` files the processes ``pids`` map or hold open."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.append(line.split()[-1])
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith("/dev/shm/"):
                        found.append(os.readlink(fd))
    return found


def hammer(port: int, clients: int, per_client: int, key: str) -> tuple[int, int, list[str]]:
    """``clients`` threads each send ``per_client`` INCRs, reconnecting when a replica dies.

    Returns (acknowledged, in doubt, errors): an INCR whose connection broke
    before the reply may or may not have been applied.
    """
    acked = [0] * clients
    doubt = [0] * clients
    errors: list[str] = []

    def work(i: int) -> None:
        c: LineClient | None = None
        sent = 0
        while sent < per_client:
            try:
                if c is None:
                    c = LineClient(port)
                reply = c.ask(f"INCR {key}")
            except OSError:
                if c is not None:
                    doubt[i] += 1
                    sent += 1
                    c.close()
                c = None
                continue
            sent += 1
            if reply.lstrip("-").isdigit():
                acked[i] += 1
            else:
                errors.append(reply)
        if c is not None:
            c.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a client thread hung"
    return sum(acked), sum(doubt), errors


def test_10000_incrs_from_20_clients_reach_every_replica(tmp_path: Path) -> None:
    with running(COUNTER, tmp_path / "run") as svc:
        acked, doubt, errors = hammer(svc.port, clients=20, per_client=500, key="total")
        assert (acked, doubt, errors) == (10_000, 0, [])
        every = clients_on_every_replica(svc.port, 2)
        # At once, not eventually: a read reflects every acknowledged write (invariant 8).
        assert [c.ask("GET total") for c in every.values()] == ["10000"] * len(every)
        for c in every.values():
            c.close()
        assert svc.stop() == 0


def test_kill_9_of_a_replica_under_load_loses_no_acknowledged_incr(tmp_path: Path) -> None:
    with running(COUNTER, tmp_path / "run") as svc:
        victim = svc.replica_pids()[1]
        result: dict[str, tuple[int, int, list[str]]] = {}
        load = threading.Thread(
            target=lambda: result.setdefault("r", hammer(svc.port, 20, 300, "k"))
        )
        load.start()
        with LineClient(svc.port) as probe:
            wait_until(lambda: int(probe.ask("GET k")) >= 1500, timeout=60)
        os.kill(victim, signal.SIGKILL)
        load.join(180)
        assert not load.is_alive()
        acked, doubt, errors = result["r"]
        assert errors == []
        assert acked + doubt == 6000
        # The service kept answering, the killed replica came back and caught up.
        svc.wait_for_line("died with -9")
        svc.wait_restarted(1)
        every = clients_on_every_replica(svc.port, 2)
        values = {i: int(c.ask("GET k")) for i, c in every.items()}
        wait_until(lambda: len({int(c.ask("GET k")) for c in every.values()}) == 1)
        total = int(every[0].ask("GET k"))
        assert acked <= total <= acked + doubt, (acked, doubt, total, values)
        # and it still takes writes on both replicas
        assert int(every[1].ask("INCR k")) == total + 1
        wait_until(lambda: every[0].ask("GET k") == str(total + 1))
        for c in every.values():
            c.close()
        assert svc.stop() == 0


def test_a_tiny_log_with_a_slow_replica_blocks_writers_and_loses_nothing(tmp_path: Path) -> None:
    import json

    target = "tests.integration.services:slow"
    with running(target, tmp_path / "run", args=("--capacity", "64")) as svc:
        n_clients, per_client = 5, 200
        failures: list[str] = []
        every = clients_on_every_replica(svc.port, 2)

        def work(i: int, burst: int) -> None:
            with LineClient(svc.port) as c:
                for k in range(per_client):
                    reply = c.ask(f"ADD {burst * 1_000_000 + i * 10_000 + k}")
                    if not reply.isdigit():
                        failures.append(reply)

        def refusals() -> int:
            return sum(
                json.loads(c.ask("STATS"))["core"]["append_refusals"] for c in every.values()
            )

        # Bursts until the fast replica has hit the full log and waited
        # (backpressure): how many that takes depends on how busy the cores
        # are, not on anything the test asserts.
        bursts = 0
        while bursts == 0 or (refusals() == 0 and bursts < 20):
            threads = [threading.Thread(target=work, args=(i, bursts)) for i in range(n_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            bursts += 1
        assert failures == []
        assert refusals() > 0
        total = str(bursts * n_clients * per_client)
        wait_until(lambda: all(c.ask("LEN") == total for c in every.values()), timeout=30)
        prints = {c.ask("PRINT") for c in every.values()}
        assert len(prints) == 1, prints  # same items, same order, on both
        for c in every.values():
            c.close()
        assert svc.stop() == 0


def test_large_entries_and_malformed_input(tmp_path: Path) -> None:
    args = ("--capacity", "16", "--slot-size", "128")  # at most 8 x 48 bytes per entry
    with running(COUNTER, tmp_path / "run", args=args) as svc:
        with LineClient(svc.port) as bystander, LineClient(svc.port) as bad:
            assert bystander.ask("INCR x") == "1"
            # Over the ring's 384-byte entry limit: it goes through the blob store.
            assert bad.ask("INCR " + "k" * 1000) == "1"
            assert not list((tmp_path / "run").glob("blob-*.tmp"))
            assert bad.ask("FROB") == "ERR unknown command 'FROB'"
            assert bad.ask("INCR x nope") == "ERR increment is not an integer"
            assert bad.ask(b"\xff\xfe") == "ERR line is not UTF-8"
            assert bystander.ask("INCR x") == "2"
            # A line over the protocol's limit closes that connection only.
            bad.sock.sendall(b"GET " + b"y" * 70_000 + b"\n")
            assert bad.file.readline() == b"ERR line too long\n"
            assert bystander.ask("GET x") == "2"
        assert svc.stop() == 0


def test_sigterm_exits_0_and_leaves_no_shared_memory(tmp_path: Path) -> None:
    before = shm_entries()
    with running(COUNTER, tmp_path / "run") as svc:
        pids = svc.replica_pids()
        modes = []
        for pid in pids:
            fd_dir = Path(f"/proc/{pid}/fd")
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("/memfd:dominoes-counter"):
                    modes.append(stat.S_IMODE(os.stat(fd).st_mode))
        assert modes, "replicas must map the log's memfd"
        assert set(modes) == {0o600}
        # invariant 2: every replica runs with the same hash seed (set order).
        seeds = set()
        for pid in pids:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            seeds |= {e for e in env if e.startswith(b"PYTHONHASHSEED=")}
        assert len(seeds) == 1, seeds
        assert shm_mapped([svc.proc.pid, *pids]) == []  # nothing named, ever
        assert left_by_service(before) == []
        with LineClient(svc.port) as c:
            assert c.ask("INCR a 3") == "3"
        assert svc.stop() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert left_by_service(before) == []
    assert not (tmp_path / "run" / "control.sock").exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_udp_request_is_answered_exactly_once(tmp_path: Path) -> None:
    with running(COUNTER, tmp_path / "run") as svc:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            for i in range(1, 21):
                u.sendto(b"INCR udp\n", ("127.0.0.1", svc.port))
                data, addr = u.recvfrom(100)
                assert data == b"%d\n" % i
                assert addr == ("127.0.0.1", svc.port)
            u.settimeout(0.3)
            with pytest.raises(TimeoutError):
                u.recvfrom(100)  # no second answer to any of them
            u.settimeout(2)
            u.sendto(b"NOPE\n", ("127.0.0.1", svc.port))
            assert u.recvfrom(100)[0] == b"ERR unknown command 'NOPE'\n"
        every = clients_on_every_replica(svc.port, 2)
        # At once, not eventually: a read reflects every acknowledged write (invariant 8).
        assert [c.ask("GET udp") for c in every.values()] == ["20"] * len(every)
        for c in every.values():
            c.close()
        assert svc.stop() == 0


def test_a_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .harness import ROOT

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "dominoes", "run", COUNTER, "--port", str(port),
             "--run-dir", str(tmp_path / "run")],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"dominoes: port {port} on 127.0.0.1 is in use")
    assert len(done.stderr.splitlines()) == 1


def test_an_unknown_service_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .harness import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "dominoes", "run", "examples.nope:service"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "dominoes: error: cannot import examples.nope: "
        "ModuleNotFoundError: No module named 'examples.nope'"
    )


def test_replicas_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    before = shm_entries()
    with running(COUNTER, tmp_path / "run") as svc:
        pids = svc.replica_pids()
        svc.proc.kill()  # SIGKILL: no clean-up code runs in the supervisor
        svc.proc.wait(10)
        wait_until(lambda: all(_zombie(pid) or not _alive(pid) for pid in pids), timeout=10)
    assert left_by_service(before) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stuck_replica_is_restarted_and_never_stalls_the_service(tmp_path: Path) -> None:
    target = "tests.integration.services:grudge"
    args = ("--capacity", "64", "--stuck-after", "1")
    with running(target, tmp_path / "run", args=args) as svc:
        every = clients_on_every_replica(svc.port, 2)
        every[1].close()
        assert every[0].ask("CALL Grudge.snub 60") == "1"  # replica 1 blocks in it
        # Far more entries than the log holds: writers would wait forever on
        # replica 1 if the supervisor did not take it out.
        for k in range(2, 200):
            assert every[0].ask("CALL Grudge.snub 0") == str(k)
        # Its loop is blocked too, so the heartbeat watchdog (or the stuck or
        # ejection one, whichever looks first) kills it.
        line = svc.wait_for_line("killing it")
        assert "replica 1 " in line
        svc.wait_for_line("died with -9")
        svc.wait_restarted(1)
        again = clients_on_every_replica(svc.port, 2)
        assert again[1].ask("CALL Grudge.snub 0") == "200"
        wait_until(lambda: len({c.ask("INFO").split()[-1] for c in again.values()}) == 1)
        for c in (*again.values(), every[0]):
            c.close()
        assert svc.stop() == 0


def test_on_start_runs_on_every_replica_before_its_ingress_opens(tmp_path: Path) -> None:
    with running("tests.integration.services:roll", tmp_path / "run") as svc:
        with LineClient(svc.port) as c:
            # The replica answering already applied its own hello.
            wait_until(lambda: c.ask("WHO") == "0,1")
        assert svc.stop() == 0


def test_a_reservation_left_unpublished_by_a_live_replica_is_cleared(tmp_path: Path) -> None:
    target = "tests.integration.services:wedged"
    with running(target, tmp_path / "run", args=("--stuck-after", "1")) as svc:
        every = clients_on_every_replica(svc.port, 2, tries=400)
        every[1].close()
        # Appended behind replica 1's dangling reservation: no replica can
        # apply it until the supervisor kills replica 1 and fills the slot.
        assert every[0].ask("CALL Grudge.snub 0") == "1"
        line = svc.wait_for_line("has not published it")
        assert "replica 1 reserved seq=" in line
        svc.wait_for_line("died with -9")
        wait_until(lambda: all(r["ready"] for r in svc.status()["replicas"]), timeout=30)
        assert every[0].ask("CALL Grudge.snub 0") == "2"
        assert [r["restarts"] for r in svc.status()["replicas"]] == [0, 1]
        again = clients_on_every_replica(svc.port, 2, tries=400)
        wait_until(lambda: len({c.ask("INFO").split()[-1] for c in again.values()}) == 1)
        for c in again.values():
            c.close()
        every[0].close()
        assert svc.stop() == 0
