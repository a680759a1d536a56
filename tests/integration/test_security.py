"""Another local user attacks a service; every attack fails.

The attacker is a throwaway uid (65534), reached with ``setpriv`` from the
root the suite runs as, running stdlib-only scripts.  The attacks:

* the monitor: reach a replica's console (a Python REPL) or its web UI;
* ``replica-<i>.sock`` and ``control.sock``: ask a service for its state;
* a planted run directory (the default lives in the shared ``/tmp``): a
  symlink to a directory of the victim, or a directory of the attacker's own
  holding their own ``control.sock``, which clients would believe and the
  service would write its snapshots into.

The planted directories go under a fresh sticky, world-writable directory
standing in for ``/tmp``, named by ``$XDG_RUNTIME_DIR`` (the documented way to
move the per-uid base), so no real run directory is touched.  Sockets of the
running service are hard-linked into a directory the attacker can enter and
made 0666 for the test, so that what refuses the attacker is the service's
``SO_PEERCRED`` check, not the file system alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dominoes

from .harness import ROOT, Service, free_port, running
from .monitor_helpers import MonitorSession, tcp_listeners

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
AS_NOBODY = [str(SETPRIV), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
COUNTER = "examples.counter:service"  # the service named "counter"
STEP_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run attacks as another uid"),
    pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux) to act as another uid"),
]

# --- the attacker ---------------------------------------------------------------------------

#: What the attacker's fake server answers on every socket it plants.
FAKE_DOC = {
    "service": "counter",
    "supervisor": {"pid": 1, "replicas": 0, "run_dir": "ATTACKER"},
    "deaths": 0,
    "poisoned": 0,
    "replicas": [],
    "log": {"tail": 1, "capacity": 1, "free_slots": 1, "slowest_replica": 0,
            "slowest_cursor": 1, "live": [], "joining": [], "dead": []},
}  # fmt: skip

TELNET_CLIENT = """
import socket, sys
IAC, WILL, SB, SE, TTYPE, NAWS = 255, 251, 250, 240, 24, 31
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
hello = bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE])
hello += bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 200, 0, 50, IAC, SE])
try:
    s.sendall(hello + b"console\\r")
except OSError:
    pass
got = b""
try:
    while chunk := s.recv(65536):
        got += chunk
except OSError as exc:
    got += ("<%s>" % exc).encode()
sys.stdout.write(got.decode("latin-1"))
"""

REQUEST_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode().decode("unicode_escape").encode("latin-1"))
got = b""
try:
    while chunk := s.recv(65536):
        got += chunk
except OSError as exc:
    got += ("<%s>" % exc).encode()
sys.stdout.write(got.decode("latin-1"))
"""

#: Plants ``BASE`` (0777) and ``BASE/counter`` (0777) and serves a made-up
#: answer on each socket path given; on stdin's end, prints what it received.
FAKE_SERVER = """
import json, os, select, socket, sys
base, doc, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
os.umask(0)
os.makedirs(os.path.join(base, "counter"), 0o777)
listeners = []
for path in paths:
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    listeners.append(s)
print("ready", flush=True)
received = []
while True:
    ready, _, _ = select.select(listeners + [sys.stdin], [], [])
    if sys.stdin in ready:
        break
    for s in ready:
        conn, _ = s.accept()
        conn.settimeout(2)
        data = b""
        try:
            data = conn.recv(65536)
            conn.sendall(doc.encode() + b"\\n")
        except OSError:
            pass
        received.append(data.decode("latin-1"))
        conn.close()
print(json.dumps(received), flush=True)
"""


@pytest.fixture(scope="module")
def attacker_python() -> str:
    """An interpreter the attacker's uid may run (the suite's may sit in root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if candidate is None:
            continue
        probe = subprocess.run(
            [*AS_NOBODY, candidate, "-I", "-S", "-c", "import json, select, socket"],
            cwd="/", capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python interpreter that uid {NOBODY} may run")


def attack(python: str, script: str, *args: str) -> str:
    """Run ``script`` as the attacker (bounded); what it printed."""
    done = subprocess.run(
        [*AS_NOBODY, python, "-I", "-S", "-c", script, *args],
        cwd="/", capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A fresh directory under /tmp that every uid may enter (sticky, like /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="dominoes-security-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def area(public: Path) -> Iterator[Path]:
    """A stand-in for /tmp for one test (sticky, world-writable): the attacker plants here."""
    path = Path(tempfile.mkdtemp(dir=public))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def victim_env(area: Path) -> dict[str, str]:
    """The victim's environment: its run dirs default to ``area/dominoes/NAME``."""
    home = area / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    return dict(os.environ, XDG_RUNTIME_DIR=str(area), HOME=str(home))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dominoes", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip


# --- the service under attack -----------------------------------------------------------------


@pytest.fixture(scope="module")
def svc(public: Path) -> Iterator[Service]:
    """A counter with ``--monitor``, its run dir on the same file system as ``public``."""
    private = public / "private"
    private.mkdir(mode=0o700)
    with running(COUNTER, private / "run", args=("--monitor",)) as s:
        yield s


@contextlib.contextmanager
def exposed(sock: Path, public: Path) -> Iterator[Path]:
    """``sock`` hard-linked into ``public`` and made 0666: the file system lets anyone in."""
    link = public / f"exposed-{sock.name}"
    os.link(sock, link)
    mode = stat.S_IMODE(sock.stat().st_mode)
    try:
        link.chmod(0o666)
        yield link
    finally:
        sock.chmod(mode)
        link.unlink()


def test_the_monitor_listens_on_no_tcp_port(svc: Service) -> None:
    pids = [svc.proc.pid, *svc.replica_pids()]
    assert tcp_listeners(pids) == {svc.port}  # no console, no web UI on TCP
    session = MonitorSession("--run-dir", str(svc.run_dir))
    try:
        session.type("console\r")
        session.read_until("This console is running in an asyncio event loop")
        session.command('print("index", replica.index)', expect="index 0", prompt=">>> ")
        # the REPL has no socket of its own either (aiomonitor's opens a TCP port)
        assert tcp_listeners(pids) == {svc.port}
        session.type("\x04")
        session.read_until("The console session is closed.")
        session.read_until("monitor >>>")
    finally:
        code = session.exit()
    assert code == 0


def test_another_uid_cannot_reach_the_monitor_console(
    svc: Service, public: Path, attacker_python: str
) -> None:
    for index in (0, 1):
        with exposed(svc.run_dir / f"monitor-{index}.sock", public) as link:
            got = attack(attacker_python, TELNET_CLIENT, str(link))
            assert f"a process of uid {NOBODY} may not attach" in got, got
            assert "monitor >>>" not in got
            assert "Python" not in got
            # The same link lets the service's own uid in: the uid is what refuses.
            assert "monitor >>>" in console_prompt(link)
    line = svc.wait_for_line("monitor: refused pid")
    assert f"of uid {NOBODY}" in line


def console_prompt(path: Path) -> str:
    """What the console at ``path`` says to this process, up to its first prompt."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        hello = bytes([255, 251, 24, 255, 250, 24, 0]) + b"xterm" + bytes([255, 240])
        s.sendall(hello + bytes([255, 251, 31, 255, 250, 31, 0, 200, 0, 50, 255, 240]))
        got = b""
        end = time.monotonic() + STEP_TIMEOUT
        while b"monitor >>>" not in got and time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.sendall(b"exit\r")
    return got.decode("latin-1")


def test_another_uid_cannot_reach_the_monitor_web_ui(
    svc: Service, public: Path, attacker_python: str
) -> None:
    request = r"GET / HTTP/1.0\r\nHost: monitor\r\n\r\n"
    with exposed(svc.run_dir / "monitor-0-web.sock", public) as link:
        got = attack(attacker_python, REQUEST_CLIENT, str(link), request)
        assert got.split(None, 2)[1] == "403", got
        assert f"a process of uid {NOBODY} may not attach" in got
        assert "<html" not in got
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(link))
            s.sendall(b"GET / HTTP/1.0\r\nHost: monitor\r\n\r\n")
            status = b""
            while b"\r\n" not in status and (chunk := s.recv(4096)):
                status += chunk  # the status line may come in pieces
            assert status.split()[1] == b"200"


@pytest.mark.parametrize("name", ["replica-0.sock", "replica-1.sock", "control.sock"])
def test_another_uid_cannot_ask_the_service(
    svc: Service, public: Path, attacker_python: str, name: str
) -> None:
    with exposed(svc.run_dir / name, public) as link:
        got = attack(attacker_python, REQUEST_CLIENT, str(link), r'{"op": "stats"}\n')
        reply = json.loads(got.splitlines()[0])
        assert set(reply) == {"error"}, reply
        assert reply["error"].startswith("PermissionError:")
        assert f"a process of uid {NOBODY} may not attach" in reply["error"]
        with socket.socket(socket.AF_UNIX) as s:  # the service's own uid is answered
            s.settimeout(10)
            s.connect(str(link))
            s.sendall(b'{"op": "stats"}\n')
            assert b'"error"' not in s.recv(64)


# --- planted run directories ----------------------------------------------------------------


def refused_run(env: dict[str, str]) -> str:
    """``dominoes run`` as the victim, which must refuse: its one line of error."""
    done = cli(env, "run", COUNTER, "--replicas", "1", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dominoes: error: ")
    assert "serving on" not in done.stderr
    return lines[0]


@pytest.mark.parametrize("level", ["per-uid", "service"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(
    area: Path, tmp_path: Path, attacker_python: str, level: str
) -> None:
    victim = tmp_path / "victim"  # one of the victim's own directories
    victim.mkdir(mode=0o750)
    (victim / "snapshot-0-1.bin").write_bytes(b"precious")
    base = area / "dominoes"
    if level == "per-uid":
        plant = f"import os; os.symlink({str(victim)!r}, {str(base)!r})"
        why = f"{base} is a symlink"
    else:
        plant = (
            f"import os; os.umask(0); os.mkdir({str(base)!r}, 0o777); "
            f"os.symlink({str(victim)!r}, {str(base / 'counter')!r})"
        )
        why = f"{base} belongs to uid {NOBODY}, not to this user (uid 0)"
    attack(attacker_python, plant)
    assert why in refused_run(victim_env(area))
    assert stat.S_IMODE(victim.stat().st_mode) == 0o750
    assert [p.name for p in victim.iterdir()] == ["snapshot-0-1.bin"]


def test_a_swapped_run_dir_is_refused_by_the_service_and_every_client(
    area: Path, attacker_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = area / "dominoes"
    run_dir = base / "counter"
    sockets = [run_dir / "control.sock", run_dir / "monitor-0.sock"]
    fake = subprocess.Popen(
        [*AS_NOBODY, attacker_python, "-I", "-S", "-c", FAKE_SERVER, str(base),
         json.dumps(FAKE_DOC), *map(str, sockets)],
        cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert fake.stdout is not None
        ready, _, _ = select.select([fake.stdout], [], [], STEP_TIMEOUT)
        assert ready, "the attacker's server did not start"
        assert fake.stdout.readline() == "ready\n"
        env = victim_env(area)
        foreign = f"is served by uid {NOBODY}"

        stats = cli(env, "stats", "counter", "--json")
        assert stats.returncode == 1
        assert foreign in stats.stderr
        assert "ATTACKER" not in stats.stdout + stats.stderr
        top = cli(env, "top", "counter", "--once")
        assert top.returncode == 1
        assert foreign in top.stderr
        monitor = cli(env, "monitor", "counter")
        assert monitor.returncode == 1
        assert foreign in monitor.stderr

        monkeypatch.setenv("XDG_RUNTIME_DIR", str(area))

        with pytest.raises(PermissionError, match=foreign):
            asyncio.run(attach("counter"))

        # Nor does the service run there (it would write its snapshots into it).
        assert f"{base} belongs to uid {NOBODY}" in refused_run(env)
        assert sorted(p.name for p in run_dir.iterdir()) == ["control.sock", "monitor-0.sock"]
    finally:
        try:  # the end of its stdin: it reports what it received, and exits
            out, err = fake.communicate(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            fake.kill()
            out, err = fake.communicate()
    received = json.loads(out.splitlines()[-1])
    # stats, top, monitor and connect each connected, and hung up before saying
    # anything: nothing reached the attacker.
    assert received == ["", "", "", ""], (received, err)


async def attach(name: str) -> None:
    """``dominoes.connect(name)``, bounded; closes the client if it ever attaches."""
    async with asyncio.timeout(STEP_TIMEOUT):
        client = await dominoes.connect(name)
    await client.close()
