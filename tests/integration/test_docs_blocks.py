"""The README's and the how-tos' code blocks run as written, in a fresh checkout.

A reader pastes the shell blocks into a terminal at the root of a checkout
and the Python blocks into a file anywhere, so that is what this module does,
for README.md and every docs/howto/*.md, document by document, block by
block, in order:

* It copies the working tree (tracked and untracked files, not ignored ones:
  no ``.venv``, no built extension) to a temporary directory, and makes
  ``.venv`` there with the README's first command, ``scripts/serve`` (a real
  ``python3 -m venv`` and ``pip install .``, from the package index or pip's
  cache), once for the module.
* ``sh`` blocks run line by line at the checkout's root, each line in bash
  with the environment and directory the lines before it left, as in one
  terminal (so ``. .venv/bin/activate`` carries over).  A line that starts a
  service (``scripts/serve``, ``dominoes run``, with or without ``&``) runs
  in the background until it prints ``serving on``; the document's next
  service line stops it first, as Ctrl-C would, and so does the document's
  end; either way it must exit 0.  ``dominoes top NAME`` (live) and
  ``dominoes monitor NAME`` (a console) run on a pseudo-terminal and are left
  with Ctrl-C and Ctrl-D, as a reader would.
* ``python`` blocks run with the venv's python from an empty directory, so
  only the installed package is importable; a document's python blocks
  continue each other, as in one session.
* ``text`` blocks are output and are not run, except the ``$ command`` lines
  of a transcript, which run like ``sh`` lines (their output is not
  compared).

What is not run says why: ``SKIP`` for lines, ``FRAGMENTS`` for python
excerpts (checked to be verbatim in the file they come from).  A line that
needs a tool this machine lacks (``jq``, ``curl``, ``nc``, redis-tools) is
skipped and reported.

What differs from a reader's run, so that nothing collides with whatever
else runs on the machine: the documented ports (6380, 7000, and 7000 where
``dominoes run`` has no ``--port``) become free ones, XDG_RUNTIME_DIR is a
private directory (the services' run dirs), and PATH has no ``dominoes``
but the venv's, so a block that forgets the venv fails.  Every wait is
bounded; every service and process is stopped, and the copy removed.  The
whole module takes about a minute, most of it installing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import ROOT, free_port

pytestmark = pytest.mark.integration

#: The documents, in the order a reader meets them, each with what its prose
#: says to do before its first block (checked to be in its text).
DOCUMENTS: dict[str, tuple[str, ...]] = {
    "README.md": (),
    "docs/howto/kv.md": (),
    "docs/howto/across-machines.md": (),
    "docs/howto/durable.md": (". .venv/bin/activate",),
    "docs/howto/local-clients.md": (". .venv/bin/activate",),
    "docs/howto/operate.md": (". .venv/bin/activate",),
    "docs/howto/run-a-service.md": (),
    "docs/howto/web.md": (),
    "docs/howto/netstack.md": (". .venv/bin/activate",),
    "docs/howto/ctp.md": (". .venv/bin/activate",),
    "docs/howto/vmm.md": (". .venv/bin/activate",),
    "docs/howto/partition.md": (". .venv/bin/activate",),
}
#: Lines not run, and why.
SKIP: dict[str, str] = {
    r"^scripts/test\b": "the whole test suite, this module included (.ci/run runs it)",
    r"^ssh ": "needs another host",
}
#: Lines that need root (network namespaces, TUN devices): skipped, and reported, when
#: the suite does not run as root (CI does).
ROOT_ONLY = re.compile(r"^ip (netns|-n)\b")
#: Python blocks that are excerpts of a file (by their first line), not programs.
FRAGMENTS: dict[tuple[str, str], str] = {
    ("docs/howto/run-a-service.md", 'service = Service("counter"'): "examples/counter.py",
    ("README.md", '@app.post("/stock/{sku}/take")'): "examples/stock.py",
    ("docs/howto/web.md", "class Stock(Component):"): "examples/stock.py",
    ("docs/howto/web.md", '@app.post("/stock/{sku}/take")'): "examples/stock.py",
    ("docs/howto/web.md", 'service = Service("stock"'): "examples/stock.py",
    ("docs/howto/web.md", "StateDep = Annotated"): "examples/stock.py",
    ("docs/howto/web.md", '@app.websocket("/ws/stock")'): "examples/stock.py",
    ("docs/howto/web.md", '@app.get("/events")'): "examples/stock.py",
    ("docs/howto/web.md", "from dominoes.testing import LoopCluster"): (
        "tests/integration/test_loopcluster.py"
    ),
    ("docs/howto/netstack.md", "class Echo(Component):"): "examples/tcp_echo.py",
}
#: Packages a document's prose installs for its python blocks (``pip install X``).
PROSE_INSTALLS: dict[str, tuple[str, ...]] = {"docs/howto/kv.md": ("redis",)}
#: What a document's python blocks print, by block number (0-based).
PRINTS: dict[tuple[str, int], tuple[str, ...]] = {
    ("docs/howto/kv.md", 0): ("[1, 2]\n", "subscribe 1\n", "message b'hello'\n"),
    ("docs/howto/local-clients.md", 0): ("2\n",),
}
#: Tools a line may need that a machine may lack (Debian: jq, curl, netcat, redis-tools).
OPTIONAL_TOOLS = ("jq", "curl", "nc", "ping", "redis-cli", "redis-benchmark")
DOC_PORTS = (6380, 7000)

#: Bounds, in seconds.  Installing is the slow part: minutes on a cold cache.
INSTALL_TIMEOUT = 600.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LINE_TIMEOUT = 120.0

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SERVICE = re.compile(r"^(ip netns exec \S+ )?(scripts/serve|dominoes run)\b")
_BACKGROUND = re.compile(r"^(?P<cmd>[^#]*?)\s*(?<!&)&?\s*(#.*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
_OFFLINE = ("Could not find a version", "NewConnectionError", "Temporary failure in name")


def run_bounded(
    argv: list[str], cwd: Path, env: dict[str, str], what: str
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end, its output captured; over ``LINE_TIMEOUT`` fails the test."""
    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what} ran over {LINE_TIMEOUT:g} s") from exc


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    body: str

    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang or 'no language'})"


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    return [
        Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in _FENCE.finditer(text)
    ]


def command(line: str) -> str:
    """LINE without its comment and a trailing ``&``."""
    match = _BACKGROUND.match(line)
    assert match is not None, line
    return match.group("cmd")


# --- the checkout and its terminal ----------------------------------------------------


@dataclass
class Terminal:
    """A shell's state at the checkout's root: its environment and directory."""

    env: dict[str, str]
    cwd: Path
    scratch: Path
    ports: dict[int, int]
    skipped: list[str] = field(default_factory=list)

    def adapt(self, text: str) -> str:
        """TEXT with the documented ports replaced by this run's."""
        for doc_port, port in self.ports.items():
            text = re.sub(rf"(?<!\d){doc_port}(?!\d)", str(port), text)
        return text

    def missing_tool(self, line: str) -> str | None:
        for tool in OPTIONAL_TOOLS:
            in_line = re.search(rf"(?<![\w./-]){re.escape(tool)}(?![\w.-])", line)
            if in_line and shutil.which(tool, path=self.env["PATH"]) is None:
                return tool
        return None

    def run(self, line: str, where: str) -> str:
        """Run one line in bash; keep the environment and directory it leaves."""
        state = self.scratch / "state"
        state.mkdir(exist_ok=True)
        # The line's own status (not set -e, which a failure inside `a && b` escapes).
        script = (
            f"set -o pipefail\n{line}\nstatus=$?\n"
            f"env -0 > {shlex.quote(str(state / 'env'))}\n"
            f"pwd > {shlex.quote(str(state / 'pwd'))}\n"
            "exit $status\n"
        )
        done = run_bounded(["bash", "-c", script], self.cwd, self.env, f"{where}: `{line}`")
        assert done.returncode == 0, (
            f"{where}: `{line}` exited {done.returncode}:\n{done.stdout[-2000:]}"
            f"\n{done.stderr[-3000:]}"
        )
        pairs = (state / "env").read_bytes().decode().split("\0")
        self.env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        self.cwd = Path((state / "pwd").read_text().strip())
        return done.stdout

    def argv(self, cmd: str, where: str) -> list[str]:
        """A simple command's argv, its program found on this terminal's PATH."""
        argv = shlex.split(cmd)
        found = shutil.which(argv[0], path=self.env["PATH"])
        assert found is not None, f"{where}: `{cmd}`: {argv[0]} is not on PATH"
        return [found, *argv[1:]]


class Service:
    """A service line running in the background, its output collected."""

    def __init__(self, terminal: Terminal, cmd: str, where: str) -> None:
        self.where = f"{where}: `{cmd}`"
        # bash runs a lone command with exec, so the pid is the supervisor's
        # (scripts/serve execs it too): SIGTERM reaches it as Ctrl-C would.
        self.proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=terminal.cwd,
            env=terminal.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "serving on" in line:
                self._ready.set()
        self._ready.set()  # ended: wait_ready stops waiting and reports it

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_ready(self, timeout: float) -> None:
        ready = self._ready.wait(timeout)
        if not ready or not any("serving on" in line for line in self.lines):
            self.kill()
            raise AssertionError(
                f"{self.where} is not serving after {timeout:g} s:\n{self.output()}"
            )

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C would; SIGKILL the whole group if that does not stop it."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.where} ignored SIGTERM for {STOP_TIMEOUT:g} s:\n{self.output()}"
            ) from None
        finally:
            self._finish()

    def kill(self) -> None:
        self._kill_group()
        self.proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        """Kill what is left of its process group (nothing, normally); close its output."""
        self._kill_group()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def on_terminal(
    terminal: Terminal,
    cmd: str,
    where: str,
    *,
    wait_for: str,
    times: int = 1,
    then: list[tuple[bytes, str]],
) -> int:
    """Run CMD on a pseudo-terminal, as a reader would: once it has shown
    WAIT_FOR TIMES times, type each input and wait for what it should show;
    its exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        terminal.argv(cmd, where),
        cwd=terminal.cwd,
        env={**terminal.env, "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()

    def expect(text: str, times: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while _ANSI.sub("", seen.decode(errors="replace")).count(text) < times:
            left = deadline - time.monotonic()
            ready = select.select([master], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = b""
            if ready:
                with contextlib.suppress(OSError):  # EIO: the program closed the terminal
                    chunk = os.read(master, 65536)
            if not chunk:
                raise AssertionError(
                    f"{where}: `{cmd}` did not show {text!r}; it showed:\n"
                    + _ANSI.sub("", seen.decode(errors="replace"))[-2000:]
                )
            seen.extend(chunk)

    try:
        expect(wait_for, times)
        for keys, shows in then:
            if keys == b"SIGINT":
                proc.send_signal(signal.SIGINT)  # Ctrl-C (no controlling terminal here)
            else:
                os.write(master, keys)
            if shows:
                expect(shows)
        deadline = time.monotonic() + STOP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:  # keep draining its output
                with contextlib.suppress(OSError):
                    seen.extend(os.read(master, 65536))
        assert proc.poll() is not None, f"{where}: `{cmd}` did not leave"
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(master)


# --- running a document ---------------------------------------------------------------


@dataclass
class Run:
    """One document's run: its terminal, its running service, its python so far."""

    terminal: Terminal
    venv_python: Path
    service: Service | None = None
    python: list[str] = field(default_factory=list)

    def stop_service(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            code = service.stop()
            assert code == 0, f"{service.where} exited {code} on SIGTERM:\n{service.output()}"

    def shell_line(self, raw: str, where: str) -> None:
        line = raw.strip()
        if not line or line.startswith("#"):
            return
        for pattern, reason in SKIP.items():
            if re.search(pattern, line):
                self.terminal.skipped.append(f"{where}: `{line}`: {reason}")
                return
        if os.geteuid() != 0 and ROOT_ONLY.search(line):
            self.terminal.skipped.append(f"{where}: `{line}`: needs root")
            return
        tool = self.terminal.missing_tool(line)
        if tool is not None:
            self.terminal.skipped.append(f"{where}: `{line}`: {tool} is not installed")
            return
        cmd = command(line)
        if _SERVICE.match(cmd):
            self.start(cmd, where)
        elif re.match(r"^dominoes top\b", cmd) and "--once" not in cmd:
            # Ctrl-C once it has drawn a frame and redrawn it: it is in its loop by then.
            code = on_terminal(
                self.terminal, self.terminal.adapt(cmd), where,
                wait_for="log: tail", times=2, then=[(b"SIGINT", "")],
            )  # fmt: skip
            assert code == 0, f"{where}: `{cmd}` exited {code} on Ctrl-C"
        elif re.match(r"^dominoes monitor\b", cmd):  # the console, at a terminal
            code = on_terminal(
                self.terminal, self.terminal.adapt(cmd), where,
                wait_for="monitor >>>", then=[(b"replica\r", "divergences"), (b"\x04", "")],
            )  # fmt: skip
            assert code == 0, f"{where}: `{cmd}` exited {code} on Ctrl-D"
        else:
            self.terminal.run(self.terminal.adapt(line), where)

    def start(self, cmd: str, where: str) -> None:
        """Start a service line in the background, on this run's ports."""
        self.stop_service()  # the document's previous one: Ctrl-C, then this line
        if "--port" not in cmd:  # scripts/serve's own 6380, dominoes run's default 7000
            cmd += f" --port {DOC_PORTS[0] if cmd.startswith('scripts/serve') else DOC_PORTS[1]}"
        self.service = Service(self.terminal, self.terminal.adapt(cmd), where)
        self.service.wait_ready(INSTALL_TIMEOUT if cmd.startswith("scripts/") else START_TIMEOUT)

    def python_block(self, block: Block, number: int) -> None:
        for (doc, first), source in FRAGMENTS.items():
            if doc == block.doc and block.body.startswith(first):
                lines = (ROOT / source).read_text().splitlines()
                for line in block.body.splitlines():
                    assert line in lines, f"{block.where()}: {line!r} is not in {source}"
                return
        self.python.append(self.terminal.adapt(block.body))
        here = Path(tempfile.mkdtemp(dir=self.terminal.scratch))
        (here / "blocks.py").write_text("\n\n".join(self.python))
        env = {k: v for k, v in self.terminal.env.items() if k != "PYTHONPATH"}
        done = run_bounded([str(self.venv_python), "blocks.py"], here, env, block.where())
        assert done.returncode == 0, f"{block.where()} failed:\n{done.stderr[-3000:]}"
        for text in PRINTS.get((block.doc, number), ()):
            assert text in done.stdout, f"{block.where()} printed {done.stdout!r}, not {text!r}"

    def block(self, block: Block, python_number: int) -> None:
        if block.lang == "sh":
            for i, line in enumerate(block.body.splitlines()):
                self.shell_line(line, f"{block.doc}:{block.line + 1 + i}")
        elif block.lang == "python":
            self.python_block(block, python_number)
        elif block.lang == "text":
            for i, line in enumerate(block.body.splitlines()):
                if line.startswith("$ "):
                    self.shell_line(line[2:], f"{block.doc}:{block.line + 1 + i}")
        else:
            raise AssertionError(f"{block.where()}: a block needs a language (sh, python, text)")


# --- fixtures -------------------------------------------------------------------------


def copy_checkout(dest: Path) -> None:
    """The working tree's files that git would commit (tracked or new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)


def clean_path(scratch: Path) -> str:
    """PATH with no ``dominoes`` on it, and ``python3`` this test's interpreter.

    The interpreter running the tests has dominoes installed (editable), so a
    directory holding a ``dominoes`` (its own, pyenv's shims) stays out; a
    small ``python3`` first on PATH stands for it, so ``python3 -m venv``
    makes a venv of the same Python.
    """
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", "/usr/bin", "/bin"]
    keep = [d for d in dict.fromkeys(dirs) if d and not (Path(d) / "dominoes").exists()]
    return os.pathsep.join([str(bin_dir), *keep])


@dataclass
class Checkout:
    root: Path
    scratch: Path
    env: dict[str, str]
    venv_python: Path


@pytest.fixture(scope="module")
def checkout() -> Iterator[Checkout]:
    """A copy of the working tree with ``.venv`` made by ``scripts/serve``."""
    scratch = Path(tempfile.mkdtemp(prefix="dominoes-docs-"))
    try:
        root = scratch / "dominoes"
        copy_checkout(root)
        (scratch / "xdg").mkdir(mode=0o700)
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION", "XDG_RUNTIME_DIR")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(PATH=clean_path(scratch), XDG_RUNTIME_DIR=str(scratch / "xdg"))
        # `dominoes run --help` once installed: the script's whole install path, no service.
        try:
            done = subprocess.run(
                ["scripts/serve", "--help"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/serve did not install in {INSTALL_TIMEOUT:g} s")
        if done.returncode != 0 and any(s in done.stderr for s in _OFFLINE):
            pytest.skip(f"no package index to install from: {done.stderr[-300:]}")
        assert done.returncode == 0, f"scripts/serve --help failed:\n{done.stderr[-3000:]}"
        assert "--replicas" in done.stdout
        yield Checkout(root, scratch, env, root / ".venv" / "bin" / "python")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the tests ------------------------------------------------------------------------


def test_every_how_to_is_run() -> None:
    howtos = {f"docs/howto/{p.name}" for p in (ROOT / "docs" / "howto").glob("*.md")}
    assert howtos | {"README.md"} == set(DOCUMENTS)


@pytest.mark.parametrize("doc", list(DOCUMENTS))
def test_the_blocks_run_as_written(doc: str, checkout: Checkout) -> None:
    text = (ROOT / doc).read_text()
    for step in DOCUMENTS[doc]:
        assert step in text, f"{doc} does not tell the reader to {step!r}"
    for package in PROSE_INSTALLS.get(doc, ()):
        assert f"pip install {package}" in text, f"{doc} does not say `pip install {package}`"
    scratch = Path(tempfile.mkdtemp(dir=checkout.scratch))
    terminal = Terminal(
        dict(checkout.env), checkout.root, scratch, {p: free_port() for p in DOC_PORTS}
    )
    run = Run(terminal, checkout.venv_python)
    try:
        for step in DOCUMENTS[doc]:
            terminal.run(step, f"{doc} (its prose)")
        if PROSE_INSTALLS.get(doc):
            subprocess.run(
                [str(checkout.venv_python), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", *PROSE_INSTALLS[doc]],
                env=checkout.env, capture_output=True, timeout=INSTALL_TIMEOUT, check=True,
            )  # fmt: skip
        python_number = 0
        for block in blocks(doc):
            run.block(block, python_number)
            python_number += block.lang == "python"
        run.stop_service()
    finally:
        if run.service is not None:
            run.service.kill()
    for skipped in terminal.skipped:
        print("not run:", skipped)


def test_fragments_are_found() -> None:
    """Each FRAGMENTS entry still names a python block of its document."""
    for doc, first in FRAGMENTS:
        assert any(b.lang == "python" and b.body.startswith(first) for b in blocks(doc)), (
            f"no python block of {doc} starts with {first!r}"
        )


def test_the_line_helpers() -> None:
    assert command("dominoes run x:y --port 7000 &   # wait") == "dominoes run x:y --port 7000"
    assert command("a && b") == "a && b"
    assert command("redis-cli -p 6380 GET k   # a read") == "redis-cli -p 6380 GET k"
    terminal = Terminal({"PATH": "/nonexistent"}, ROOT, ROOT, {6380: 1, 7000: 2})
    assert terminal.adapt("redis-cli -p 6380; Redis(port=6380); 16380 7000") == (
        "redis-cli -p 1; Redis(port=1); 16380 2"
    )
    assert terminal.missing_tool("dominoes stats counter --json | jq .x") == "jq"
    assert terminal.missing_tool("printf 'INCR a 5' | nc -q1 127.0.0.1 7000") == "nc"
    assert terminal.missing_tool("dominoes run examples.counter:service") is None
