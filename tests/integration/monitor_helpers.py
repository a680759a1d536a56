"""Drive ``dominoes monitor`` on a pseudo-terminal, and see which TCP ports processes listen on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable

from .harness import ROOT

PROMPT = "monitor >>>"
#: prompt_toolkit asks the terminal where its cursor is; a terminal answers.
CPR_REQUEST, CPR_ANSWER = b"\x1b[6n", b"\x1b[1;1R"


def plain(data: bytes) -> str:
    """The text of terminal output: no escape sequences, no carriage returns."""
    data = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", data)
    return data.replace(b"\r", b"").decode(errors="replace")


class MonitorSession:
    """``dominoes monitor ARGS`` on a pseudo-terminal (200x50), typed at like a person would."""

    def __init__(self, *args: str, timeout: float = 15.0) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dominoes", "monitor", *args],
                cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        self.out = b""
        try:
            self.read_until(PROMPT, timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _read(self, found: Callable[[str], str | None], what: str, timeout: float) -> str:
        """Read until ``found(text since the call)`` returns something; that is the result."""
        end = time.monotonic() + timeout
        start = len(self.out)
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the client exited
                chunk = b""
            if not chunk:
                break
            if CPR_REQUEST in chunk:
                os.write(self.master, CPR_ANSWER * chunk.count(CPR_REQUEST))
            self.out += chunk
            result = found(plain(self.out[start:]))
            if result is not None:
                return result
        raise AssertionError(f"no {what} from dominoes monitor; got {plain(self.out)[-800:]!r}")

    def read_until(self, marker: str, timeout: float = 10.0) -> str:
        return self._read(lambda text: text if marker in text else None, repr(marker), timeout)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def command(self, line: str, expect: str, prompt: str = PROMPT) -> str:
        """Type a command and Enter; its output, up to the prompt after ``expect``."""
        self.type(line + "\r")

        def found(text: str) -> str | None:
            at = text.find(expect, max(0, text.find(line)) + len(line))
            if at >= 0 and prompt in text[at:]:
                return text[: text.index(prompt, at)]
            return None

        return self._read(found, f"{expect!r} after {line!r}", 10.0)

    def exit(self, timeout: float = 10.0) -> int:
        """Leave with Ctrl-D, as a person would; the client's exit code."""
        self.type("\x04")
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)


def tcp_listeners(pids: Iterable[int]) -> set[int]:
    """The TCP ports any of ``pids`` listens on (any thread of them, any address)."""
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for row in f:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
