"""Start a real ``dominoes run`` for a test, talk to it, and always clean up."""

from __future__ import annotations

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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port: int = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Service:
    """A ``dominoes run`` process: its port, run dir, output and control socket.

    ``loop`` is its ``--loop``, the replicas' event loop: uvloop, the default
    in production, unless a test asks for another.
    """

    def __init__(
        self,
        target: str,
        run_dir: Path,
        *,
        replicas: int = 2,
        args: tuple[str, ...] = (),
        loop: str = "uvloop",
        session: bool = False,
        env: dict[str, str] | None = None,
        wrap: tuple[str, ...] = (),
        stdout: Path | None = None,
    ) -> None:
        """``session``: lead a process group of its own (its processes can be
        killed as one); ``env``: added to this process's environment; ``wrap``:
        a command that runs it (``ip netns exec NS``); ``stdout``: a file for
        its standard output (default: discarded)."""
        self.target = target
        self.run_dir = run_dir
        self.port = free_port()
        cmd = [
            *wrap, sys.executable, "-m", "dominoes", "run", target,
            "--replicas", str(replicas), "--port", str(self.port),
            "--run-dir", str(run_dir), "--log-level", "INFO",
            "--loop", loop, *args,
        ]  # fmt: skip
        out = open(stdout, "wb") if stdout is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=session,
            env={**os.environ, **env} if env else None,
        )
        if stdout is not None:
            out.close()  # type: ignore[union-attr]  # the child has its own copy
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "serving on" in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError(f"service did not start in {timeout}s:\n{self.output}")

    def wait_for_line(self, text: str, timeout: float = 20.0, start: int = 0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines[start:]:
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in {timeout}s:\n{self.output}")

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.run_dir / "control.sock"))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply

    def status(self) -> dict[str, Any]:
        return self.control({"op": "status"})

    def replica_pids(self) -> list[int]:
        return [r["pid"] for r in self.status()["replicas"]]

    def wait_restarted(self, replica: int, restarts: int = 1, timeout: float = 30.0) -> None:
        """Wait until every replica is ready and ``replica`` was restarted ``restarts`` times."""

        def back() -> bool:
            replicas = self.status()["replicas"]
            return all(r["ready"] for r in replicas) and replicas[replica]["restarts"] == restarts

        wait_until(back, timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL (and fail) if it does not stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"supervisor did not stop in {timeout}s:\n{self.output}") from None
        finally:
            self._finish()

    def _finish(self) -> None:
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def kill(self) -> None:
        """Kill the supervisor and every process of its process group it started."""
        pids: list[int] = []
        with contextlib.suppress(Exception):
            pids = self.replica_pids()
        self.proc.kill()
        self.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(pid, signal.SIGKILL)
        self._finish()


@contextlib.contextmanager
def running(
    target: str,
    run_dir: Path,
    *,
    replicas: int = 2,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wrap: tuple[str, ...] = (),
    stdout: Path | None = None,
    session: bool = False,
) -> Iterator[Service]:
    """A :class:`Service`, ready; stopped at the end if it still runs (``session``:
    it leads a process group of its own, which the test may kill whole)."""
    svc = Service(
        target, run_dir, replicas=replicas, args=args, env=env, wrap=wrap, stdout=stdout,
        session=session,
    )  # fmt: skip
    try:
        svc.wait_ready()
        yield svc
    finally:
        if svc.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                svc.stop()
        else:
            svc._finish()


class LineClient:
    """A blocking line-protocol client (what ``nc`` would be)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def ask(self, line: str | bytes) -> str:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data + b"\n")
        reply = self.file.readline()
        if not reply:
            raise ConnectionError("connection closed")
        return reply.decode().rstrip("\n")

    def replica(self) -> int:
        return int(self.ask("INFO").split()[1])

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clients_on_every_replica(port: int, replicas: int, tries: int = 200) -> dict[int, LineClient]:
    """Open connections until one has landed on each replica (SO_REUSEPORT spreads them)."""
    found: dict[int, LineClient] = {}
    extra: list[LineClient] = []
    for _ in range(tries):
        c = LineClient(port)
        r = c.replica()
        if r in found:
            extra.append(c)
        else:
            found[r] = c
        if len(found) == replicas:
            break
    for c in extra:
        c.close()
    assert len(found) == replicas, f"connections reached only replicas {sorted(found)}"
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie waiting for its
    reaper, or a pid already gone, counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


IAC, SB, SE, WILL = 255, 250, 240, 251
TTYPE, NAWS = 24, 31


class Telnet:
    """A raw-socket telnet client for aiomonitor's console.

    prompt_toolkit's telnet server processes no input until the client has
    negotiated a terminal type (TTYPE) and a window size (NAWS).
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        hello = bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE])
        hello += bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 200, 0, 50, IAC, SE])
        self.sock.sendall(hello)
        self.read_until("monitor >>>")

    def _read(self, found: Callable[[str], str | None], what: str, timeout: float = 10.0) -> str:
        """Read until ``found(text so far)`` returns something; that is the result."""
        end = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < end:
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            result = found(_plain(buf).decode(errors="replace"))
            if result is not None:
                return result
        raise AssertionError(f"no {what} from the monitor; got {_plain(buf)[-500:]!r}")

    def read_until(self, marker: str) -> str:
        return self._read(lambda text: text if marker in text else None, repr(marker))

    def command(self, line: str, expect: str) -> str:
        """Run a console command; its output, up to the prompt after ``expect``."""
        self._drain()
        self.sock.sendall(line.encode() + b"\r\n")

        def found(text: str) -> str | None:
            start = max(0, text.find(line))
            at = text.find(expect, start + len(line))
            if at >= 0 and "monitor >>>" in text[at:]:
                return text[start : text.index("monitor >>>", at)]
            return None

        return self._read(found, f"{expect!r} after {line!r}")

    def _drain(self) -> None:
        """Discard what the console still sends (redraws of the last output)."""
        self.sock.settimeout(0.1)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            pass

    def close(self) -> None:
        self.sock.close()


def _plain(data: bytes) -> bytes:
    """Strip telnet negotiation and ANSI escapes, leaving the text."""
    import re

    data = re.sub(rb"\xff[\xfb-\xfe].", b"", data)
    data = re.sub(rb"\xff\xfa.*?\xff\xf0", b"", data, flags=re.S)
    data = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", data)
    return data.replace(b"\r", b"")


def ask(run_dir: Path, index: int, op: str) -> Any:
    """Ask replica ``index`` over its control socket (``stats`` or ``digest``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(run_dir / f"replica-{index}.sock"))
        s.sendall(json.dumps({"op": op}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def converged(run_dir: Path, replicas: int = 2, timeout: float = 20.0) -> dict[str, str]:
    """Wait until every replica applied the same position; their digests must match."""
    seen: list[tuple[int, dict[str, str]]] = []

    def same_seq() -> bool:
        seen[:] = [_digest(run_dir, i) for i in range(replicas)]
        return len({seq for seq, _ in seen}) == 1

    wait_until(same_seq, timeout=timeout, interval=0.05)
    first = seen[0][1]
    for seq, digest in seen[1:]:
        assert digest == first, f"replicas diverged at {seq}: {first} vs {digest}"
    return first


def settled(run_dir: Path, replicas: int = 2, timeout: float = 20.0) -> list[dict[str, str]]:
    """Wait until every replica applied the same position; return their digests.

    For partitioned services, where each replica's digest names only the
    partitions it holds: every name two replicas both have (a partition both
    hold, a replicated component) must have one digest.
    """
    seen: list[tuple[int, dict[str, str]]] = []

    def same_seq() -> bool:
        seen[:] = [_digest(run_dir, i) for i in range(replicas)]
        return len({seq for seq, _ in seen}) == 1

    wait_until(same_seq, timeout=timeout, interval=0.05)
    first: dict[str, tuple[int, str]] = {}
    for index, (_, digest) in enumerate(seen):
        for name, value in digest.items():
            other = first.setdefault(name, (index, value))
            assert other[1] == value, f"replicas {other[0]} and {index} differ in {name}"
    return [digest for _, digest in seen]


def reconfigure(svc: Service, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``dominoes reconfigure NAME --run-dir RUN ARGS...`` against a running service."""
    return subprocess.run(
        [sys.executable, "-m", "dominoes", "reconfigure", name, "--run-dir",
         str(svc.run_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def reconfigured(svc: Service, name: str, *args: str) -> str:
    """:func:`reconfigure`, which must succeed; what it printed."""
    done = reconfigure(svc, name, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _digest(run_dir: Path, index: int) -> tuple[int, dict[str, str]]:
    got = ask(run_dir, index, "digest")
    return int(got["seq"]), dict(got["digest"])
