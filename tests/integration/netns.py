"""A network namespace with a multi-queue TUN device, for the netstack's tests.

The kernel inside the namespace is the netstack's peer: the TUN device ``dn0``
has the kernel's address (``192.0.2.1/24``); the stack answers as
``192.0.2.2``.  Everything is created per test, named ``dn-<pid>-<n>``, and
deleted in ``finally`` (deleting the namespace deletes the device in it), so
a failing test leaves nothing behind.  Tests that need it skip, with the
reason, where it cannot work: not root, no ``/dev/net/tun``, no ``ip``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

KERNEL_ADDR = "192.0.2.1"
STACK_ADDR = "192.0.2.2"
PREFIX = 24
DEVICE = "dn0"

_names = itertools.count(1)


def why_not() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no ip (iproute2)"
    return None


def skip_unless_possible() -> None:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)


class Namespace:
    """A namespace ``name`` with ``dn0`` (multi-queue TUN) at ``192.0.2.1/24``, up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.wrap = ("ip", "netns", "exec", name)

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> str:
        """Run ``cmd`` inside the namespace; its stdout."""
        done = subprocess.run(
            [*self.wrap, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([*self.wrap, *cmd], **kwargs)

    def nstat(self) -> dict[str, int]:
        """The kernel's SNMP counters in the namespace (absolute values)."""
        counters: dict[str, int] = {}
        for path in ("/proc/net/snmp", "/proc/net/netstat"):
            lines = self.run("cat", path).splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                prefix, names = head.split(":", 1)
                _, numbers = values.split(":", 1)
                for n, v in zip(names.split(), numbers.split(), strict=False):
                    counters[prefix + n] = int(v)
        return counters


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


@contextlib.contextmanager
def namespace(*, tun: bool = True) -> Iterator[Namespace]:
    """A fresh namespace (with ``dn0`` when ``tun``), always deleted afterwards."""
    skip_unless_possible()
    name = f"dn-{os.getpid()}-{next(_names)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
            check=False,
            timeout=30,
            capture_output=True,
        )
        if tun:
            _ip("-n", name, "tuntap", "add", "dev", DEVICE, "mode", "tun", "multi_queue")
            _ip("-n", name, "addr", "add", f"{KERNEL_ADDR}/{PREFIX}", "dev", DEVICE)
            _ip("-n", name, "link", "set", DEVICE, "up")
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30, capture_output=True)
