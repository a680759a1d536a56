"""The native CTP profiles end to end: two ``dominoes run`` services of 2 replicas
each (``examples/ctp_files.py``), one sending a file to the other over UDP.

* over loopback, every profile delivers the file intact;
* over a veth pair whose nftables rules lose 10 % and duplicate 5 % of the
  packets each way, both reliable profiles still deliver it intact, and the
  counters show the losses were repaired (retransmissions, NAKs, duplicates
  dropped);
* ``unreliable-fec`` with exactly every 10th packet lost (at most one block of
  any group of 8 data + 2 parity): the file arrives whole, and the receiver
  rebuilt exactly the data segments the link dropped;
* ``kill -9`` of a sending replica mid-transfer: the other replica's
  replicated retransmission timer carries it through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import lossy
from tests.integration.harness import ROOT, Service, running, wait_until

PROFILES = ("reliable_ordered", "reliable_unordered", "unreliable_fec")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stats(run_dir: Path) -> list[dict[str, Any]]:
    """Each replica's ``ctp`` report, from ``dominoes stats --json``."""
    done = subprocess.run(
        [sys.executable, "-m", "dominoes", "stats", "--run-dir", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    )
    report = json.loads(done.stdout)
    # a replica still starting (or restarting) has no ctp section yet: {}
    return [(r.get("report") or {}).get("reports", {}).get("ctp", {}) for r in report["replicas"]]


def settled(run_dir: Path) -> list[dict[str, Any]]:
    """The replicas' reports once they agree (they applied the same log)."""
    seen: list[list[dict[str, Any]]] = []

    def same() -> bool:
        reports = stats(run_dir)
        seen.append(reports)
        return all(reports) and all(r == reports[0] for r in reports)

    wait_until(same, timeout=20)
    return seen[-1]


@contextlib.contextmanager
def transfer(
    tmp_path: Path,
    profile: str,
    size: int,
    *,
    link: lossy.LossyLink | None = None,
    seed: int = 1,
) -> Iterator[tuple[Service, Service, Path, Path]]:
    """A receiver and a sender service of ``profile``; the sender sends a file of
    ``size`` random bytes.  Yields (receiver, sender, the file, where it lands)."""
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    source = tmp_path / f"file-{seed}.bin"
    source.write_bytes(os.urandom(size))
    target = f"examples.ctp_files:{profile}"
    host = link.server_addr if link is not None else "127.0.0.1"
    with running(
        target, tmp_path / "run-in", args=("--host", host, "--root", str(inbox))
    ) as receiver:
        wrap = ("ip", "netns", "exec", link.ns) if link is not None else ()
        sender_host = link.client_addr if link is not None else "127.0.0.1"
        with running(
            target,
            tmp_path / "run-out",
            args=(
                "--host",
                sender_host,
                "--root",
                str(outbox),
                "--send",
                str(source),
                "--to",
                f"{host}:{receiver.port}",
            ),
            wrap=wrap,
        ) as sender:
            yield receiver, sender, source, inbox / source.name


def arrived(path: Path, size: int, timeout: float = 60) -> None:
    wait_until(lambda: path.exists() and path.stat().st_size == size, timeout=timeout)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_delivers_a_file_over_loopback(tmp_path: Path, profile: str) -> None:
    # unreliable-fec sends nothing again: 60 KB (~55 datagrams) fits in the receiver's
    # socket buffer whole, so a busy machine cannot make it lose more than FEC covers
    size = 60_000 if profile == "unreliable_fec" else 2_000_000
    with transfer(tmp_path, profile, size) as (receiver, sender, source, landed):
        arrived(landed, size)
        assert digest(landed) == digest(source)
        in_reports = settled(receiver.run_dir)
        settled(sender.run_dir)
        assert in_reports[0]["sessions_opened"] == 1


@pytest.mark.parametrize("profile", ["reliable_ordered", "reliable_unordered"])
def test_reliable_profiles_repair_loss_and_duplication(tmp_path: Path, profile: str) -> None:
    lossy.skip_unless_possible()
    with (
        lossy.lossy_link(loss=0.10, dup=0.05) as link,
        transfer(tmp_path, profile, 2_000_000, link=link) as (receiver, sender, source, landed),
    ):
        arrived(landed, 2_000_000, timeout=120)
        assert digest(landed) == digest(source)
        faults = link.counters()
        for rule in ("drop_in", "drop_out", "dup_in", "dup_out"):
            assert faults[rule] > 0, faults
        sent = settled(sender.run_dir)[0]
        got = settled(receiver.run_dir)[0]
        assert sent["retransmitted"] > 0
        assert got["duplicates_dropped"] > 0
    assert lossy.leftovers() == []


def test_unreliable_fec_rebuilds_exactly_what_the_link_dropped(tmp_path: Path) -> None:
    """Every 10th packet out of the sender is lost: at most one block of any group
    of 8 data + 2 parity, so every loss is within the redundancy.  60 KB is ~55
    datagrams: they all fit in the receiver's socket buffer, so the link's drops
    are the only losses, and the count must match exactly."""
    lossy.skip_unless_possible()
    size = 60_000
    with (
        lossy.lossy_link(loss=0.0, dup=0.0, every_out=10) as link,
        transfer(tmp_path, "unreliable_fec", size, link=link) as (receiver, sender, source, landed),
    ):
        arrived(landed, size)
        assert digest(landed) == digest(source)
        dropped = link.counters()["drop_out"]
        sent = settled(sender.run_dir)[0]
        got = settled(receiver.run_dir)[0]
        parity_lost = sent["fec_parity_sent"] - got["fec_parity_received"]
        assert dropped > 0
        # a rebuilt segment may still arrive (the parity overtook it: the two sending
        # replicas interleave); those are counted apart, as late
        assert got["fec_recovered"] - got["fec_late"] == dropped - parity_lost > 0


def test_unreliable_fec_under_random_loss_never_duplicates(tmp_path: Path) -> None:
    """Random loss may exceed a group's redundancy: then part of the file is
    missing, which this profile allows; but nothing is delivered twice and the
    replicas agree."""
    lossy.skip_unless_possible()
    size = 200_000
    with (
        lossy.lossy_link(loss=0.10, dup=0.05) as link,
        transfer(tmp_path, "unreliable_fec", size, link=link) as (receiver, _, _, _),
    ):
        segments = -(-size // 1400) + 1  # the file's and the header's
        reports: list[dict[str, Any]] = []

        def rebuilt_some() -> bool:
            reports.append(settled(receiver.run_dir)[0])
            return bool(reports[-1]["fec_recovered"] > 0)

        wait_until(rebuilt_some, timeout=60)
        got = reports[-1]
        # every data segment handed on came from the link (first copy) or was rebuilt;
        # duplicates (the link's, and rebuilt ones arriving late) went no further
        data_in = got["datagrams_in"] - got["fec_parity_received"] - got["duplicates_dropped"]
        assert data_in + got["fec_recovered"] <= segments


def test_a_killed_sending_replica_does_not_stop_the_transfer(tmp_path: Path) -> None:
    size = 8_000_000
    with transfer(tmp_path, "reliable_ordered", size) as (receiver, sender, source, landed):
        wait_until(
            lambda: (
                bool(part := list((tmp_path / "in").glob(".ctp.*.part")))
                and part[0].stat().st_size > 1_000_000
            ),
            timeout=30,
        )
        # freeze the receiver, so that the kill lands mid-transfer however fast it goes
        frozen = [receiver.proc.pid, *receiver.replica_pids()]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert not landed.exists()
            os.kill(sender.replica_pids()[1], signal.SIGKILL)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        arrived(landed, size, timeout=120)
        assert digest(landed) == digest(source)
