"""A lossy, duplicating link between the root namespace and a fresh one.

``lossy_link(loss=0.10, dup=0.05)`` creates a network namespace
``dc-<pid>-<n>`` joined to the root namespace by a veth pair: the root end has
``server_addr`` (a server in the root namespace binds there), the end in the
namespace ``client_addr`` (clients run inside it with ``.run``/``.popen``, or
``tftp_clients``' ``netns=link.ns``).  nftables rules inside the namespace, on
its end of the pair, drop ``loss`` of the IPv4 packets and duplicate ``dup`` of
them, in both directions; every rule counts what it did (``.counters()``):

- drops: a netdev ``ingress`` and a netdev ``egress`` chain on the device
  (``numgen random mod 10000 < N drop``).  Dropping there, after the socket
  layer, is silent for the sender: a drop in the ip ``output`` hook would fail
  its ``sendto`` with EPERM instead of losing the datagram.
- duplicates going out: ``dup to <server_addr> device <dev>`` in the ip
  ``output`` hook (the copy then meets the egress drop like any packet).
- duplicates coming in: ``dup to <client_addr> device "lo"`` in the ip
  ``prerouting`` hook for packets that came in on the device: the copy is
  routed locally, through ``lo``, and delivered a second time (it comes back
  through ``prerouting`` on ``lo``, which the rule does not match).
- ``undup_ops``: UDP datagrams whose payload starts with one of these 16-bit
  values (TFTP opcodes) are never duplicated, either way (``undup_in``,
  ``undup_out`` count them); they are lost like any other.
- ``dup_every_out=N``: besides the random duplicates, exactly every Nth UDP
  datagram going out whose payload starts with ``dup_every_op`` (TFTP's DATA,
  3) is duplicated *after* the loss (``dup to <device>`` in the netdev
  ``egress`` chain, behind the drop; the copy skips that hook): both copies
  reach the far end, a duplicate a test can count on.

Everything is deleted in ``finally`` (deleting the namespace deletes the veth
pair); nothing named ``dc-<pid>-*`` is left.  Root only: ``why_not()`` says why
it cannot run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

_names = itertools.count(1)


def why_not() -> str | None:
    """Why a lossy link cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, nftables)"
    if shutil.which("ip") is None:
        return "no ip (iproute2)"
    if shutil.which("nft") is None:
        return "no nft (nftables)"
    return None


def skip_unless_possible() -> None:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)


def leftovers() -> list[str]:
    """This process's namespaces (``dc-<pid>-*``) and root-namespace link ends
    (``dc<pid>-*``) that still exist."""
    pid = os.getpid()
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split()
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.splitlines()
    names += [line.split(":")[1].strip().split("@")[0] for line in links if ":" in line]
    return [n for n in names if n.startswith((f"dc-{pid}-", f"dc{pid}-"))]


class LossyLink:
    """The namespace ``ns`` behind the lossy link, and the addresses at both ends."""

    def __init__(
        self, ns: str, device: str, root_device: str, server_addr: str, client_addr: str
    ) -> None:
        self.ns = ns
        self.device = device  # the link's end inside the namespace
        self.root_device = root_device  # its end in the root namespace
        self.server_addr = server_addr
        self.client_addr = client_addr
        self.wrap = ("ip", "netns", "exec", ns)

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
        """Start ``cmd`` inside the namespace (the caller waits for it or kills it)."""
        return subprocess.Popen([*self.wrap, *cmd], **kwargs)

    def counters(self) -> dict[str, int]:
        """Packets each rule acted on so far, by rule: ``drop_in`` (toward the
        namespace), ``drop_out``, ``dup_in``, ``dup_out``, ``dup_every_out``,
        ``undup_in``, ``undup_out`` (spared); and the sums
        ``dropped`` and ``duplicated``."""
        ruleset = json.loads(self.run("nft", "-j", "list", "ruleset"))
        counts: dict[str, int] = {}
        for item in ruleset.get("nftables", []):
            rule = item.get("rule")
            if not isinstance(rule, dict) or "comment" not in rule:
                continue
            for expr in rule.get("expr", []):
                if isinstance(expr, dict) and "counter" in expr:
                    counts[str(rule["comment"])] = int(expr["counter"]["packets"])
        counts["dropped"] = counts.get("drop_in", 0) + counts.get("drop_out", 0)
        counts["duplicated"] = (
            counts.get("dup_in", 0) + counts.get("dup_out", 0) + counts.get("dup_every_out", 0)
        )
        return counts


def _ruleset(
    device: str,
    server_addr: str,
    client_addr: str,
    loss: float,
    dup: float,
    every_out: int,
    undup_ops: tuple[int, ...] = (),
    dup_every_out: int = 0,
    dup_every_op: int = 3,
) -> str:
    # Out of 10000: probabilities to 0.01 %.
    drop_n, dup_n = round(loss * 10000), round(dup * 10000)
    out = (
        f"numgen inc mod {every_out} == {every_out - 1}"
        if every_out
        else f"numgen random mod 10000 < {drop_n}"
    )
    # the first 16 bits of a UDP payload: 64 bits into the transport header
    ops = ", ".join(str(op) for op in undup_ops)
    undup_in = (
        f'iifname "{device}" meta l4proto udp @th,64,16 {{ {ops} }} counter accept '
        'comment "undup_in"'
        if undup_ops
        else ""
    )
    undup_out = (
        f'oifname "{device}" meta l4proto udp @th,64,16 {{ {ops} }} counter accept '
        'comment "undup_out"'
        if undup_ops
        else ""
    )
    every_dup = (
        f"meta protocol ip meta l4proto udp @th,64,16 {dup_every_op} "
        f"numgen inc mod {dup_every_out} == {dup_every_out - 1} "
        f'counter dup to "{device}" comment "dup_every_out"'
        if dup_every_out
        else ""
    )
    return f"""
table netdev lossy {{
  chain ingress {{
    type filter hook ingress device "{device}" priority 0; policy accept;
    meta protocol ip numgen random mod 10000 < {drop_n} counter drop comment "drop_in"
  }}
  chain egress {{
    type filter hook egress device "{device}" priority 0; policy accept;
    meta protocol ip {out} counter drop comment "drop_out"
    {every_dup}
  }}
}}
table ip lossy {{
  chain prerouting {{
    type filter hook prerouting priority 0; policy accept;
    {undup_in}
    iifname "{device}" numgen random mod 10000 < {dup_n} counter dup to {client_addr} device "lo" comment "dup_in"
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    {undup_out}
    oifname "{device}" numgen random mod 10000 < {dup_n} counter dup to {server_addr} device "{device}" comment "dup_out"
  }}
}}
"""  # noqa: E501


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {done.returncode}: {done.stderr}")


def _sysctl(ns: str | None, setting: str) -> None:
    wrap = ["ip", "netns", "exec", ns] if ns is not None else []
    subprocess.run([*wrap, "sysctl", "-qw", setting], check=False, timeout=30, capture_output=True)


@contextlib.contextmanager
def lossy_link(
    loss: float = 0.10,
    dup: float = 0.05,
    *,
    mtu: int = 1500,
    every_out: int = 0,
    undup_ops: tuple[int, ...] = (),
    dup_every_out: int = 0,
    dup_every_op: int = 3,
) -> Iterator[LossyLink]:
    """A fresh namespace behind a veth pair that drops ``loss`` and duplicates
    ``dup`` of the packets each way (fractions, to 0.0001); ``mtu`` for both
    ends (a larger one lets a TFTP transfer use fewer, larger blocks).
    ``every_out=N``: instead of ``loss`` on the way out of the namespace, drop
    exactly every Nth IPv4 packet (the Nth, the 2Nth, ...), a loss a test can
    count on.  ``undup_ops``, ``dup_every_out``, ``dup_every_op``: see the
    module doc.  Always deleted afterwards."""
    skip_unless_possible()
    if not (0 <= loss <= 1 and 0 <= dup <= 1):
        raise ValueError(f"loss and dup are fractions: {loss}, {dup}")
    pid, n = os.getpid(), next(_names)
    ns = f"dc-{pid}-{n}"
    # Interface names: 15 characters at most; a pid has 7 digits at most.
    root_end, ns_end = f"dc{pid}-{n}r", f"dc{pid}-{n}n"
    # 10.<200-249>.<0-255>.0/24: by pid and counter, unlikely to meet a route.
    subnet = f"10.{200 + pid % 50}.{n % 256}"
    server_addr, client_addr = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", root_end, "mtu", str(mtu), "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", ns)
        _sysctl(None, f"net.ipv6.conf.{root_end}.disable_ipv6=1")
        _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1")
        _ip("addr", "add", f"{server_addr}/24", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", ns_end, "mtu", str(mtu))
        _ip("-n", ns, "addr", "add", f"{client_addr}/24", "dev", ns_end)
        _ip("-n", ns, "link", "set", ns_end, "up")
        link = LossyLink(ns, ns_end, root_end, server_addr, client_addr)
        done = subprocess.run(
            [*link.wrap, "nft", "-f", "-"],
            input=_ruleset(
                ns_end,
                server_addr,
                client_addr,
                loss,
                dup,
                every_out,
                undup_ops,
                dup_every_out,
                dup_every_op,
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the lossy ruleset: {done.stderr}")
        yield link
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30, capture_output=True)
        # The pair goes with the namespace; the root end too if the move failed.
        subprocess.run(
            ["ip", "link", "del", root_end], check=False, timeout=30, capture_output=True
        )
