"""``dominoes run`` at its edges: stopping under load, failing to bind, leftovers, what it says.

Each test starts its own ``dominoes run`` in a new session (so a Ctrl-C can be
sent to its process group, as a terminal would, without reaching pytest),
waits for lines with bounded waits, and kills what is left at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dominoes import Component, Context, Service, update
from dominoes._runtime._shm import SharedLog
from dominoes._runtime._wakeups import EventfdWakeups

from .harness import ROOT, alive, free_port, wait_until

pytestmark = pytest.mark.integration

COUNTER = "examples.counter:service"
KV = "dominoes.components.kv:service"
#: The replicas' event loops (``--loop``), for the tests whose path runs
#: through the loop's own servers and transports; the rest use uvloop, the
#: default in production.
LOOPS = ["uvloop", "asyncio"]


class Run:
    """``dominoes ARGS`` in its own session, its stderr collected line by line."""

    def __init__(
        self,
        *args: str,
        cwd: Path = ROOT,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dominoes", *args],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line holding ``text``; fails if the process ends or time runs out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r}:\n{self.output}")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit in {timeout}s:\n{self.output}") from None
        self._reader.join(5)
        return code

    def signal_group(self, sig: int) -> None:
        """What a terminal does on Ctrl-C: the signal to every process of the group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@contextlib.contextmanager
def started(*args: str, **kwargs: Any) -> Iterator[Run]:
    run = Run(*args, **kwargs)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.kill()
        # Replicas whose supervisor was killed exit on their own; make sure.
        run.signal_group(signal.SIGKILL)
        if run.proc.stderr is not None:
            run._reader.join(5)
            run.proc.stderr.close()


def serve(
    target: str, run_dir: Path, *extra: str, port: int | None = None, loop: str = "uvloop"
) -> list[str]:
    """The arguments of ``dominoes run`` for a test service, its replicas on ``loop``."""
    port = free_port() if port is None else port
    return ["run", target, "--replicas", "2", "--port", str(port),
            "--run-dir", str(run_dir), "--loop", loop, *extra]  # fmt: skip


def sockets_in(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.sock"))


def control(run_dir: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(run_dir / "control.sock"))
        s.sendall(request + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf


# --- stopping under load (issue item 8) ----------------------------------------------------


class PipelinedWriter(threading.Thread):
    """A client that keeps 64 SETs in flight on one connection until the service goes away."""

    def __init__(self, port: int, name: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        block = b"".join(
            b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$5\r\nvalue\r\n" % (len(k), k)
            for k in (f"{name}:{i}".encode() for i in range(64))
        )
        self.block = block
        self.received = 0

    def run(self) -> None:
        try:
            while True:
                self.sock.sendall(self.block)
                got = self.sock.recv(1 << 16)
                if not got:
                    return
                self.received += len(got)
        except OSError:
            return
        finally:
            self.sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_while_clients_pipeline_writes_stops_quietly(tmp_path: Path, loop: str) -> None:
    run_dir = tmp_path / "run"
    port = free_port()
    with started(*serve(KV, run_dir, port=port, loop=loop)) as svc:
        svc.wait_for("serving on")
        writers = [PipelinedWriter(port, f"w{i}") for i in range(6)]
        for w in writers:
            w.start()
        # Under load: every writer has had replies (so each replica has work).
        wait_until(lambda: all(w.received > 20_000 for w in writers), timeout=30)
        svc.signal_group(signal.SIGINT)
        code = svc.wait(60)
        for w in writers:
            w.join(10)
    assert code == 0, svc.output
    assert "Traceback" not in svc.output
    assert "buffer released" not in svc.output
    assert "exported buffer" not in svc.output
    assert sockets_in(run_dir) == []  # replica-N.sock and control.sock are gone


# --- a replica that cannot bind (issue item 9) ----------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_replica_that_cannot_bind_its_host_exits_with_one_line(tmp_path: Path, loop: str) -> None:
    # 192.0.2.1 (TEST-NET-1) is no local address: binding fails, nothing is sent.
    # Port 0 is not claimed by the supervisor's port guard, so the replicas bind
    # (through the loop's own server code: each loop fails in its own way).
    run_dir = tmp_path / "run"
    with started(*serve(COUNTER, run_dir, "--host", "192.0.2.1", port=0, loop=loop)) as svc:
        code = svc.wait(60)
    assert code == 1, svc.output
    assert "cannot serve on 192.0.2.1:0" in svc.output
    assert "exited with 3 before it was ready" in svc.output
    for bad in ("Traceback", "BufferError", "exported buffer", "-11"):
        assert bad not in svc.output, svc.output
    assert sockets_in(run_dir) == []


def test_a_supervisor_refusing_its_arguments_after_mapping_the_log_exits_cleanly(
    tmp_path: Path,
) -> None:
    # The log is mapped before the replica count is checked against it; the
    # error path used to leave it to the final garbage collection: SIGSEGV.
    args = serve(COUNTER, tmp_path / "run")
    args[args.index("--replicas") + 1] = "2000"
    with started(*args) as svc:
        code = svc.wait(60)
    assert code == 2, svc.output
    assert svc.lines[-1] == "dominoes: error: at most 64 replicas", svc.output
    assert "BufferError" not in svc.output


def test_the_port_guard_refuses_an_unassignable_host_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    with started(*serve(COUNTER, tmp_path / "run", "--host", "192.0.2.1", port=port)) as svc:
        code = svc.wait(60)
    assert code == 2
    assert svc.lines == [f"dominoes: error: cannot bind TCP on 192.0.2.1:{port}: "
                         "Cannot assign requested address"]  # fmt: skip


# --- leftovers (issue item 13) --------------------------------------------------------------


def test_a_killed_supervisor_leaves_a_stale_socket_that_stats_names_and_run_clears(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    with started(*serve(COUNTER, run_dir)) as svc:
        svc.wait_for("serving on")
        assert sockets_in(run_dir) == ["control.sock", "replica-0.sock", "replica-1.sock"]
        pids = [r["pid"] for r in json.loads(control(run_dir, b'{"op": "status"}'))["replicas"]]
        svc.proc.send_signal(signal.SIGKILL)  # the supervisor only
        svc.wait(30)
        # Its replicas die with it (the kernel's parent-death signal).
        wait_until(lambda: all(not alive(pid) for pid in pids), timeout=30)
    # A SIGKILLed process removes nothing: its socket stays, nobody listens.
    assert "control.sock" in sockets_in(run_dir)

    for command in (["stats"], ["top", "--once"]):
        done = subprocess.run(
            [sys.executable, "-m", "dominoes", *command, "--run-dir", str(run_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.startswith("dominoes: run: not running (stale socket "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr

    # The next start finds the socket stale, removes it and serves; a clean
    # stop then leaves no socket at all.
    with started(*serve(COUNTER, run_dir)) as svc:
        svc.wait_for("serving on")
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    assert sockets_in(run_dir) == []


# --- what start-up says (issue items 11 and 12) -----------------------------------------------


def test_routine_start_and_stop_lines_are_info(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with started(*serve(COUNTER, run_dir)) as svc:  # the default --log-level WARNING
        line = svc.wait_for("serving on")
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    assert svc.lines == [line], svc.output
    assert line.startswith("dominoes: counter serving on 127.0.0.1:")


QUIET = """
from dominoes import Component, Context, Service, update


class Tally(Component):
    def __init__(self) -> None:
        self.n = 0

    @update
    def add(self, ctx: Context) -> int:
        self.n += 1
        return self.n


service = Service("quiet", [Tally()])
"""


def test_a_service_without_ingress_says_it_serves_no_network(tmp_path: Path) -> None:
    (tmp_path / "quiet_service.py").write_text(QUIET)
    run_dir = tmp_path / "run"
    with started(*serve("quiet_service:service", run_dir, port=free_port()), cwd=tmp_path) as svc:
        line = svc.wait_for("dominoes: quiet serving")
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    assert line.startswith("dominoes: quiet serving no network ingress with 2 replicas")
    assert "127.0.0.1" not in line


OPTIONED = """
from dominoes import Component, Context, Option, Service, update


class Seen(Component):
    def __init__(self) -> None:
        self.options: list[str] = []

    @update
    def note(self, ctx: Context, text: str) -> None:
        self.options.append(text)


async def start(replica):
    o = replica.options
    line = f"replica {replica.index} options tun={o['tun']} mtu={o['mtu']!r} fast={o['fast']}"
    # one write: the two replicas share stderr, and print() writes the line and
    # its newline apart (unbuffered stderr), so their lines could interleave
    __import__("os").write(2, (line + "\\n").encode())


service = Service(
    "optioned",
    [Seen()],
    on_start=start,
    options=[
        Option("tun", required=True, help="a device"),
        Option("mtu", type=int, default=1500),
        Option("fast", flag=True),
    ],
)
"""


def test_a_service_gets_its_own_options(tmp_path: Path) -> None:
    (tmp_path / "optioned_service.py").write_text(OPTIONED)
    args = serve("optioned_service:service", tmp_path / "run", port=free_port())
    with started(*args, "--tun", "dn0", "--mtu=9000", "--fast", cwd=tmp_path) as svc:
        lines = [svc.wait_for(f"replica {i} options") for i in (0, 1)]
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    for i, line in enumerate(lines):
        assert line.endswith(f"replica {i} options tun=dn0 mtu=9000 fast=True"), line


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ((), "dominoes: error: service 'optioned' needs --tun: a device"),
        (
            ("--tun", "a", "--nope", "1"),
            "dominoes: error: unknown option --nope for service "
            "'optioned' (its options: --tun, --mtu, --fast)",
        ),
        (
            ("--tun", "a", "--mtu", "big"),
            "dominoes: error: --mtu big: invalid literal for int() with base 10: 'big'",
        ),
        (("--tun", "a", "--fast=yes"), "dominoes: error: --fast takes no value"),
        (("--tun", "a", "stray"), "dominoes: error: unexpected argument 'stray'"),
        (("--tun", "a", "--tun", "b"), "dominoes: error: --tun is given twice"),
    ],
    ids=["missing", "unknown", "type", "flag-value", "stray", "twice"],
)
def test_bad_service_options_are_refused_before_any_replica_starts(
    tmp_path: Path, extra: tuple[str, ...], error: str
) -> None:
    (tmp_path / "optioned_service.py").write_text(OPTIONED)
    args = serve("optioned_service:service", tmp_path / "run", port=free_port())
    with started(*args, *extra, cwd=tmp_path) as svc:
        code = svc.wait(60)
    assert code == 2
    assert svc.lines == [error], svc.output


def test_more_replicas_than_cores_warns_why(tmp_path: Path) -> None:
    one_core = min(os.sched_getaffinity(0))
    with started(
        *serve(COUNTER, tmp_path / "run"), preexec=lambda: os.sched_setaffinity(0, {one_core})
    ) as svc:
        warning = svc.wait_for("dominoes: warning:")
        svc.wait_for("serving on")
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    assert warning.startswith("dominoes: warning: 2 replicas on 1 core ")
    assert "replicas will share cores" in warning
    assert "use --replicas 1 or fewer" in warning


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\ndef broken(:\n", ":2: SyntaxError: "),
        ("import os\n\nvalue = int('seven')\n", ":3: ValueError: invalid literal for int()"),
    ],
    ids=["syntax", "raises"],
)
def test_an_error_in_the_service_is_one_line_with_its_file_and_line(
    tmp_path: Path, source: str, expected: str
) -> None:
    (tmp_path / "broken_service.py").write_text(source)
    with started(*serve("broken_service:service", tmp_path / "run"), cwd=tmp_path) as svc:
        code = svc.wait(60)
    assert code == 2
    assert len(svc.lines) == 1, svc.output
    assert svc.lines[0].startswith(
        "dominoes: error: cannot import broken_service: broken_service.py"
    )
    assert expected in svc.lines[0]


def test_an_unknown_loop_is_refused_before_any_replica_starts(tmp_path: Path) -> None:
    args = serve(COUNTER, tmp_path / "run")
    args[args.index("--loop") + 1] = "nosuch"
    with started(*args) as svc:
        code = svc.wait(60)
    assert code == 2
    assert svc.lines == [
        "dominoes: error: --loop nosuch: no loop policy named 'nosuch'; available: "
        + ", ".join(__import__("dominoes.loops", fromlist=["available"]).available())
    ]


# --- a closed replica's late callbacks (issue item 8, without processes) ----------------------


class Trail(Component):
    def __init__(self) -> None:
        self.seen: list[str] = []

    @update
    def mark(self, ctx: Context, what: str) -> int:
        self.seen.append(what)
        return len(self.seen)


async def test_callbacks_left_after_close_do_not_touch_the_released_log(tmp_path: Path) -> None:
    from dominoes import Replica

    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    shared = SharedLog.create("trail", capacity=16, slot_size=128, max_replicas=2)
    log = shared.log()
    log.join(0, cursor=1)
    log.set_live(0)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    wakeups = EventfdWakeups([efd])
    replica = Replica(Service("trail", [Trail()]), 0, log, wakeups, replicas=1, run_dir=tmp_path)
    try:
        replica.attach(loop)
        replica.start_fresh()
        queued = replica.submit_soon(Trail.mark, "queued")  # a group commit is scheduled
        replica._schedule()  # and a drain
        replica.close()
        shared.close()  # what used to happen before the loop closed
        for _ in range(5):
            await asyncio.sleep(0)  # the scheduled callbacks run now
        assert queued.cancelled()
        assert replica.submit_nowait(Trail.mark, "late").cancelled()
        assert replica.submit_soon(Trail.mark, "late").cancelled()
        with pytest.raises(asyncio.CancelledError):
            await replica.submit(Trail.mark, "late")
        assert replica.append_payload(b"x") == 0
        replica.sync()  # no catch-up, no error
        await replica.drain()
        replica.close()  # idempotent
    finally:
        loop.set_exception_handler(None)
        os.close(efd)
    assert errors == []


# --- KV reads in the statistics (issue item 11) ---------------------------------------------


def test_kv_gets_count_as_queries(tmp_path: Path) -> None:
    import redis

    run_dir = tmp_path / "run"
    port = free_port()
    with started(*serve(KV, run_dir, port=port)) as svc:
        svc.wait_for("serving on")
        with redis.Redis(port=port, socket_timeout=10, single_connection_client=True) as r:
            r.set("k", "v")
            pipe = r.pipeline(transaction=False)
            for _ in range(500):
                pipe.get("k")
            assert pipe.execute() == [b"v"] * 500
            assert r.get("k") == b"v"
        docs: list[dict[str, Any]] = []

        def every_replica_reported() -> bool:
            # A replica busy past the supervisor's 2 s ask gets "error", not
            # "report": ask again rather than read a missing figure.
            docs[:] = [json.loads(control(run_dir, b'{"op": "stats"}'))]
            return all("report" in entry for entry in docs[0]["replicas"])

        wait_until(every_replica_reported, timeout=30)
        doc = docs[0]
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.wait(60) == 0, svc.output
    queries = sum(entry["report"]["replica"]["queries"] for entry in doc["replicas"])
    assert queries >= 501


# --- stall warnings under load (issue item 11) -----------------------------------------------


class Slow(Component):
    """Applies that take wall time three ways: computing, blocking, or not running at all."""

    clock: ClassVar[list[float]] = [0.0]

    def __init__(self) -> None:
        self.n = 0

    @update
    def compute(self, ctx: Context, seconds: float) -> int:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            self.n += 1
        return self.n

    @update
    def block(self, ctx: Context, seconds: float) -> int:
        time.sleep(seconds)  # blocking I/O, a lock, a sleep: the replica stalls
        return self.n

    @update
    def preempted(self, ctx: Context, seconds: float) -> int:
        # What the apply looks like when another process takes the core for
        # ``seconds``: the wall clock moves, this thread neither runs nor waits.
        Slow.clock[0] += seconds
        return self.n


async def test_only_applies_that_compute_or_block_count_as_stalls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dominoes import Replica

    def clock() -> float:
        return time.perf_counter() + Slow.clock[0]

    shared = SharedLog.create("slow", capacity=16, slot_size=128, max_replicas=2)
    log = shared.log()
    log.join(0, cursor=1)
    log.set_live(0)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    replica = Replica(
        Service("slow", [Slow()]),
        0,
        log,
        EventfdWakeups([efd]),
        replicas=1,
        run_dir=tmp_path,
        stall_threshold=0.05,
        apply_timeout=None,
    )
    replica.core._clock = clock
    try:
        replica.attach(asyncio.get_running_loop())
        replica.start_fresh()
        with caplog.at_level("INFO", logger="dominoes.replica"):
            await asyncio.wait_for(replica.submit(Slow.preempted, 0.3), 10)
            assert (replica.core.stalls, replica.preempted) == (0, 1)
            await asyncio.wait_for(replica.submit(Slow.compute, 0.08), 10)
            assert (replica.core.stalls, replica.preempted) == (1, 1)
            await asyncio.wait_for(replica.submit(Slow.block, 0.08), 10)
            assert (replica.core.stalls, replica.preempted) == (2, 1)
    finally:
        replica.close()
        shared.close()
        os.close(efd)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [m.split()[3] for m in warned] == ["event=Slow.compute", "event=Slow.block"]
    told = [r.getMessage() for r in caplog.records if "not a stall" in r.getMessage()]
    assert len(told) == 1
    assert "Slow.preempted" in told[0]
