"""Four real TFTP clients behind one API, for testing TFTP servers.

``download(client, ...)`` and ``upload(client, ...)`` run one of ``CLIENTS``
as a subprocess (tftpy too, through ``python -c``, so that a hang can be
killed): curl, tftpy, tftp-hpa's ``tftp`` and ``atftp``.  Each call is bounded
by ``timeout`` seconds; on a failure or a timeout it raises ``ClientError``
with the command, the exit status and the tail of the client's output, and the
client (its whole process group) is killed.  ``netns`` runs the client inside
``ip netns exec NAME`` (see ``lossy.py``).

What each client does with the options (checked against tftpy's server):

- curl: ``blksize`` is sent as ``--tftp-blksize``; it also always asks for
  ``tsize`` (``--tftp-no-options`` would turn both off).  Its retransmission
  interval is derived from the total time limit (``--max-time``): about 5 s,
  so a lost request costs 5 s.  curl 7.88 fails a download whose OACK says
  ``tsize 0`` (a 0-byte file, answered as RFC 2349 says) with exit status 71,
  "invalid tsize": the helper then asks once more with ``--tftp-no-options``
  (no tsize, no blksize).  A 0-byte download does not always create the
  output file (curl opens it on the first byte): the helper creates it, so
  every client leaves a file behind on success.
- tftpy: ``blksize`` is sent as the ``blksize`` option; it retransmits after
  1 s here (its default is 5 s), up to 20 times per packet.  Its download
  aborts on a repeated OACK (a duplicate, or the server's answer to a
  repeated RRQ): the helper patches it to acknowledge it again instead.
- tftp-hpa (Debian's ``tftp-hpa`` 5.2): no options at all (no ``blksize``,
  no ``tsize``): ``blksize`` is ignored, transfers use 512-byte blocks.  It
  always exits 0, so failures are read from its output ("Error code ...",
  "Transfer timed out").  It is driven through stdin, to set ``binary`` mode
  and a 1 s retransmission (``rexmt``; the default is 5 s).  A failed ``get``
  leaves an empty or partial local file.
- atftp (0.8): ``blksize`` is sent with ``--option "blksize N"``; it sends no
  options otherwise.  Retransmission after 1 s (``--tftp-timeout 1``).

All four accept a server that answers from its listening port instead of a
new one per transfer (``test_tftp_tools.py`` checks it with a server that
does), as well as one that answers from a new port (tftpy's server).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

CLIENTS = ("curl", "tftpy", "tftp-hpa", "atftp")

_BINARIES = {"curl": "curl", "tftp-hpa": "tftp", "atftp": "atftp"}

# How much of a failed client's output goes into the error.
_TAIL = 2000

# tftpy as a child process: argv is get|put, host, port, remote, local, blksize
# (0: none).  Its retransmission interval is 1 s, 20 tries per packet.
# tftpy 0.8's download gives up on an OACK once it has acknowledged one (a
# duplicate, or the server's resend when the ACK 0 was lost, as RFC 2347 has
# it): here it answers with ACK 0 again while no data came, else ignores it.
_TFTPY = """
import sys
import tftpy
from tftpy.TftpPacketTypes import TftpPacketOACK
from tftpy.TftpStates import TftpStateExpectDAT

_handle = TftpStateExpectDAT.handle


def _tolerant(self, pkt, raddress, rport):
    if isinstance(pkt, TftpPacketOACK):
        if self.context.next_block == 1:
            self.sendACK(0)
        return self
    return _handle(self, pkt, raddress, rport)


TftpStateExpectDAT.handle = _tolerant

op, host, port, remote, local, blksize = sys.argv[1:7]
options = {"blksize": int(blksize)} if int(blksize) else {}
client = tftpy.TftpClient(host, int(port), options)
if op == "get":
    client.download(remote, local, timeout=1, retries=20)
else:
    client.upload(remote, local, timeout=1, retries=20)
"""

# tftp-hpa prints these (and exits 0) when a transfer fails.
_HPA_FAILURES = ("Error code", "Transfer timed out", "tftp:", "unknown host")


class ClientError(Exception):
    """A TFTP client failed or timed out; the message has its command and output."""

    def __init__(
        self, client: str, cmd: Sequence[str], returncode: int | None, output: str, why: str
    ) -> None:
        self.client = client
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        status = "timed out (killed)" if returncode is None else f"exit status {returncode}"
        super().__init__(
            f"{client}: {why}: {' '.join(self.cmd)}: {status}\n--- output (tail) ---\n"
            f"{output[-_TAIL:]}"
        )


def available(name: str) -> str | None:
    """Why ``name`` cannot be used here (None: it can)."""
    if name not in CLIENTS:
        return f"unknown TFTP client {name!r} (one of {', '.join(CLIENTS)})"
    if name == "tftpy":
        if importlib.util.find_spec("tftpy") is None:
            return "tftpy is not installed (pip install tftpy)"
        return None
    binary = _BINARIES[name]
    if shutil.which(binary) is None:
        package = {"curl": "curl", "tftp-hpa": "tftp-hpa", "atftp": "atftp"}[name]
        return f"no {binary} on PATH (apt-get install {package})"
    if name == "tftp-hpa":
        # Other packages (Debian's tftp, BSD's) install a tftp too.
        done = subprocess.run(
            ["tftp", "-V"], capture_output=True, text=True, timeout=30, check=False
        )
        if "tftp-hpa" not in done.stdout + done.stderr:
            return "the tftp on PATH is not tftp-hpa's (apt-get install tftp-hpa)"
    return None


def download(
    client: str,
    host: str,
    port: int,
    remote_name: str,
    local_path: str | os.PathLike[str],
    *,
    blksize: int | None = None,
    timeout: float = 60,
    netns: str | None = None,
) -> None:
    """Fetch ``remote_name`` from ``host:port`` into ``local_path`` with ``client``."""
    _transfer(client, "get", host, port, remote_name, Path(local_path), blksize, timeout, netns)
    if client == "curl" and not Path(local_path).exists():
        # curl creates its output file on the first byte: a 0-byte file is
        # a success that leaves nothing.
        Path(local_path).touch()


def upload(
    client: str,
    host: str,
    port: int,
    local_path: str | os.PathLike[str],
    remote_name: str,
    *,
    blksize: int | None = None,
    timeout: float = 60,
    netns: str | None = None,
) -> None:
    """Send ``local_path`` to ``host:port`` as ``remote_name`` with ``client``."""
    if not Path(local_path).is_file():
        raise FileNotFoundError(local_path)
    _transfer(client, "put", host, port, remote_name, Path(local_path), blksize, timeout, netns)


def _command(
    client: str,
    op: str,
    host: str,
    port: int,
    remote: str,
    local: Path,
    blksize: int | None,
    timeout: float,
) -> tuple[list[str], str | None]:
    """The argv for one transfer and what to feed its stdin (None: nothing)."""
    if client == "curl":
        url = f"tftp://{host}:{port}/{urllib.parse.quote(remote)}"
        # -v: its reasons ("invalid tsize ...") are only told verbosely.
        cmd = ["curl", "-v", "-s", "-S", "--max-time", str(max(1, int(timeout)))]
        if blksize is not None:
            cmd += ["--tftp-blksize", str(blksize)]
        if op == "get":
            return [*cmd, "-o", str(local), url], None
        return [*cmd, "-T", str(local), url], None
    if client == "tftpy":
        argv = [op, host, str(port), remote, str(local), str(blksize or 0)]
        return [sys.executable, "-c", _TFTPY, *argv], None
    if client == "tftp-hpa":
        # Commands on stdin: -c allows one command only, and we also need
        # binary mode and a short retransmission interval.  Literal mode
        # (-l): a ':' in a name is not a host.
        script = (
            f"binary\nrexmt 1\ntimeout {max(1, int(timeout))}\n"
            f"{op} {_hpa_quote(remote if op == 'get' else str(local))} "
            f"{_hpa_quote(str(local) if op == 'get' else remote)}\nquit\n"
        )
        return ["tftp", "-4", "-l", host, str(port)], script
    if client == "atftp":
        cmd = ["atftp", "--tftp-timeout", "1"]
        if blksize is not None:
            cmd += ["--option", f"blksize {blksize}"]
        flag = "--get" if op == "get" else "--put"
        return [*cmd, flag, "-r", remote, "-l", str(local), host, str(port)], None
    raise ValueError(f"unknown TFTP client {client!r} (one of {', '.join(CLIENTS)})")


def _hpa_quote(word: str) -> str:
    # tftp-hpa splits its command lines on blanks and has no quoting.
    if not word or any(c.isspace() for c in word):
        raise ValueError(f"tftp-hpa cannot name {word!r} (empty or with blanks)")
    return word


def _transfer(
    client: str,
    op: str,
    host: str,
    port: int,
    remote: str,
    local: Path,
    blksize: int | None,
    timeout: float,
    netns: str | None,
    *,
    retried: bool = False,
) -> None:
    reason = available(client)
    if reason is not None:
        raise ClientError(client, [client], None, "", f"not usable: {reason}")
    cmd, stdin = _command(client, op, host, port, remote, local, blksize, timeout)
    if retried:
        cmd.insert(1, "--tftp-no-options")
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    with subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(stdin, timeout=timeout)
        except BaseException as e:
            # Killed before it is reaped: its pid (and group) cannot be reused.
            _kill(proc)
            output, _ = proc.communicate()
            if isinstance(e, subprocess.TimeoutExpired):
                why = f"no result in {timeout} s"
                raise ClientError(client, cmd, None, output or "", why) from None
            raise
    if proc.returncode != 0:
        if client == "curl" and op == "get" and "invalid tsize -:0:-" in output and not retried:
            # curl refuses an OACK whose tsize is 0 (a 0-byte file, which
            # is what RFC 2349 says to answer): ask again without options.
            return _transfer(
                client, op, host, port, remote, local, blksize, timeout, netns, retried=True
            )
        raise ClientError(client, cmd, proc.returncode, output, f"{op} {remote!r} failed")
    if client == "tftp-hpa" and any(m in output for m in _HPA_FAILURES):
        raise ClientError(client, cmd, proc.returncode, output, f"{op} {remote!r} failed")


def _kill(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc``'s process group (it leads one) unless it was reaped."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
