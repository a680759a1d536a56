"""The KVM VMM under ``dominoes run``: a real guest on real vCPUs, one per replica.

The guest is built here, with gcc and binutils, from the sources in
``components/vmm/guest``.  Every test skips, saying why, where ``/dev/kvm`` or
the toolchain is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dominoes.components.vmm.guest import build_guest

from .harness import ROOT, converged, running, wait_until
from .vmm_helpers import (
    TARGET,
    expected_disk,
    skip_without_kvm,
    vmm,
    wait_phase,
)

DISK_BYTES = 1 << 20


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    skip_without_kvm()
    out = tmp_path_factory.mktemp("guests")
    built = {
        "normal": build_guest(out / "normal.bin"),
        "short": build_guest(out / "short.bin", iterations=1000),
        "spin": build_guest(out / "spin.bin", scenario="spin"),
        "bad_port": build_guest(out / "bad_port.bin", scenario="bad_port"),
        "bad_mmio": build_guest(out / "bad_mmio.bin", scenario="bad_mmio"),
        "triple_fault": build_guest(out / "triple_fault.bin", scenario="triple_fault"),
        "long": build_guest(out / "long.bin", iterations=20_000, arch="x86_64"),
        "long_triple_fault": build_guest(
            out / "long_triple_fault.bin", scenario="triple_fault", arch="x86_64"
        ),
    }
    return built


def _disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xee" * DISK_BYTES)
    return disk


def _console(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_two_vcpus_run_the_guest_to_the_end(guests: dict[str, Path], tmp_path: Path) -> None:
    """Every vCPU greets, takes its timer ticks, counts 100,000 times, uses the disk and halts."""
    disk, console = _disk(tmp_path), tmp_path / "console.txt"
    args = ("--guest", str(guests["normal"]), "--vcpus", "2", "--disk", str(disk))
    with running(TARGET, tmp_path / "run", args=(*args, "--console", f"file:{console}")) as svc:
        wait_phase(svc.run_dir, ("halted", "stopped"), timeout=300)
        digest = converged(svc.run_dir)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
        lines = _console(console)
    for report in reports:
        assert report["phase"] == "halted", report["stop_reason"]
        assert report["vcpu_state"] == ["halted", "halted"]
        assert report["counter"]["value"] == 2 * 100_000
        assert sorted(report["mailbox"]["words"]) == [0xC0DE0000, 0xC0DE0001]
        assert report["timer"]["acked"] == [3, 3] or min(report["timer"]["acked"]) >= 3
        assert report["refused"] == 0
        assert report["faults"] == 0
        assert report["disk"]["writes"] == 2
        assert report["disk"]["reads"] == 2
    assert reports[0]["local"]["vcpu"] == 0
    assert reports[1]["local"]["vcpu"] == 1
    for cpu in range(2):
        assert f"hello from vCPU {cpu} of 2" in lines
        assert f"vCPU {cpu}: 3 ticks" in lines
        assert f"vCPU {cpu}: disk ok" in lines
        assert f"vCPU {cpu}: halt" in lines
    assert "counter 200000" in lines
    assert "all 2 vCPUs done" in lines
    assert disk.read_bytes() == _expected_on(b"\xee" * DISK_BYTES, 2)
    assert "machine" in digest
    assert "disk" in digest


def _expected_on(initial: bytes, vcpus: int) -> bytes:
    written = expected_disk(len(initial), vcpus)
    end = vcpus * 8 * 512
    return written[:end] + initial[end:]


def test_the_console_goes_to_stdout_by_default(guests: dict[str, Path], tmp_path: Path) -> None:
    """``dominoes run`` prints the guest's lines, each once, from one replica."""
    out = tmp_path / "stdout.txt"
    args = ("--guest", str(guests["short"]), "--disk", str(_disk(tmp_path)))
    with running(TARGET, tmp_path / "run", args=args, stdout=out) as svc:
        wait_phase(svc.run_dir, ("halted", "stopped"), timeout=120)
        wait_until(lambda: "all 2 vCPUs done" in out.read_text(), timeout=20)
    lines = out.read_text().splitlines()
    assert lines.count("hello from vCPU 0 of 2") == 1
    assert lines.count("hello from vCPU 1 of 2") == 1
    assert "counter 2000" in lines


def test_one_vcpu_on_two_replicas(guests: dict[str, Path], tmp_path: Path) -> None:
    """With --vcpus 1 the second replica runs no vCPU but keeps the device state."""
    console = tmp_path / "console.txt"
    args = ("--guest", str(guests["short"]), "--vcpus", "1", "--disk", str(_disk(tmp_path)))
    with running(TARGET, tmp_path / "run", args=(*args, "--console", f"file:{console}")) as svc:
        wait_phase(svc.run_dir, ("halted", "stopped"), timeout=120)
        converged(svc.run_dir)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
    assert [r["phase"] for r in reports] == ["halted", "halted"]
    assert reports[1]["local"]["vcpu"] is None
    assert reports[1]["counter"]["value"] == 1000
    assert "all 1 vCPUs done" in _console(console)


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        ("bad_port", "write to port 0x1234, where no device is"),
        ("bad_mmio", "write to MMIO address 0xe0000000, where no device is"),
        ("triple_fault", "triple fault"),
    ],
)
def test_a_bad_guest_stops_the_vm_cleanly(
    guests: dict[str, Path], tmp_path: Path, scenario: str, reason: str
) -> None:
    """An access no device decodes, or a triple fault: a counted exit, a clean stop, no crash."""
    console = tmp_path / "console.txt"
    args = ("--guest", str(guests[scenario]), "--console", f"file:{console}")
    with running(TARGET, tmp_path / "run", args=args) as svc:
        pids = svc.replica_pids()
        wait_phase(svc.run_dir, ("stopped",), timeout=60)
        converged(svc.run_dir)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
        wait_until(lambda: not any(vmm(svc.run_dir, i)["local"]["running"] for i in range(2)))
        status = svc.status()
        assert svc.replica_pids() == pids
    assert [r["restarts"] for r in status["replicas"]] == [0, 0]
    for report in reports:
        assert reason in report["stop_reason"], report["stop_reason"]
        if scenario == "triple_fault":
            assert report["faults"] >= 1
        else:
            assert report["refused"] >= 1
    assert any(line.startswith("hello from vCPU") for line in _console(console))
    assert "the VM stopped: vCPU" in svc.output


def test_kill_9_of_a_replica_stops_the_vm_with_a_clear_error(
    guests: dict[str, Path], tmp_path: Path
) -> None:
    """A vCPU's registers die with its replica: the VM stops, saying why; no silent corruption."""
    args = ("--guest", str(guests["spin"]))
    with running(TARGET, tmp_path / "run", args=args) as svc:
        wait_until(lambda: vmm(svc.run_dir, 0)["counter"]["value"] > 2000, timeout=60)
        victim = svc.replica_pids()[1]
        os.kill(victim, signal.SIGKILL)
        svc.wait_restarted(1)
        wait_phase(svc.run_dir, ("stopped",), timeout=60)
        digest = converged(svc.run_dir)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
        wait_until(lambda: not vmm(svc.run_dir, 0)["local"]["running"])
    for report in reports:
        assert "vCPU 1: its replica restarted" in report["stop_reason"]
        assert report["vcpu_state"][1] == "faulted"
        assert report["counter"]["value"] == reports[0]["counter"]["value"]
    assert "counter" in digest


def test_the_console_socket_carries_lines_and_feeds_the_uart(
    guests: dict[str, Path], tmp_path: Path
) -> None:
    """--console tcp:PORT: a client (what socat would be) reads the lines; what it sends
    reaches the UART's receive queue on every replica."""
    from .harness import free_port

    port = free_port()
    args = ("--guest", str(guests["short"]), "--console", f"tcp:{port}")
    with running(TARGET, tmp_path / "run", args=args) as svc:
        wait_phase(svc.run_dir, ("halted", "stopped"), timeout=120)
        wait_until(lambda: _connects(port), timeout=20)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            received = b""
            while b"all 2 vCPUs done" not in received:
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
            sock.sendall(b"typed\n")
            wait_until(
                lambda: all(vmm(svc.run_dir, i)["uart"]["rx_bytes"] == 6 for i in range(2)),
                timeout=20,
            )
        converged(svc.run_dir)
    assert b"hello from vCPU 0 of 2\n" in received
    assert b"hello from vCPU 1 of 2\n" in received


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--vcpus", "3"), "--vcpus 3 needs as many replicas (there are 2)"),
        (("--guest", "/nonexistent/kernel.bin"), "cannot read the guest image"),
        (("--memory", "2"), "does not fit in 2 MiB"),
        (("--disk", "/nonexistent/disk.img"), "cannot open the disk /nonexistent/disk.img"),
    ],
)
def test_a_machine_that_cannot_boot_says_why(
    guests: dict[str, Path], tmp_path: Path, args: tuple[str, ...], reason: str
) -> None:
    """The service stays up and reports the reason; no replica crashes."""
    big = tmp_path / "big.bin"
    big.write_bytes(guests["short"].read_bytes() + bytes(2 << 20))
    guest = str(big if "--memory" in args else guests["short"])
    given = args if "--guest" in args else ("--guest", guest, *args)
    with running(TARGET, tmp_path / "run", args=given) as svc:
        wait_phase(svc.run_dir, ("stopped",), timeout=30)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
        assert [r["restarts"] for r in svc.status()["replicas"]] == [0, 0]
    for report in reports:
        assert reason in report["stop_reason"]


def test_a_64_bit_guest_runs_in_long_mode(guests: dict[str, Path], tmp_path: Path) -> None:
    """--mode long: paging on, 0-4 GiB identity-mapped, the same devices (no timer here)."""
    disk, console = _disk(tmp_path), tmp_path / "console.txt"
    args = ("--guest", str(guests["long"]), "--mode", "long", "--disk", str(disk))
    with running(TARGET, tmp_path / "run", args=(*args, "--console", f"file:{console}")) as svc:
        wait_phase(svc.run_dir, ("halted", "stopped"), timeout=120)
        converged(svc.run_dir)
        reports = [vmm(svc.run_dir, i) for i in range(2)]
        lines = _console(console)
    for report in reports:
        assert report["phase"] == "halted", report["stop_reason"]
        assert report["mode"] == "long"
        assert report["counter"]["value"] == 2 * 20_000
        assert sorted(report["mailbox"]["words"]) == [0xC0DE0000, 0xC0DE0001]
    for cpu in range(2):
        assert f"vCPU {cpu}: long mode" in lines
        assert f"vCPU {cpu}: disk ok" in lines
    assert "counter 40000" in lines
    assert disk.read_bytes() == _expected_on(b"\xee" * DISK_BYTES, 2)


def test_a_64_bit_triple_fault_stops_the_vm(guests: dict[str, Path], tmp_path: Path) -> None:
    args = ("--guest", str(guests["long_triple_fault"]), "--mode", "long")
    with running(TARGET, tmp_path / "run", args=args) as svc:
        wait_phase(svc.run_dir, ("stopped",), timeout=60)
        converged(svc.run_dir)
        report = vmm(svc.run_dir, 0)
    assert "triple fault" in report["stop_reason"]
    assert report["faults"] >= 1


def test_a_device_hot_plugged_into_a_running_vm(guests: dict[str, Path], tmp_path: Path) -> None:
    """``dominoes reconfigure vmm add dominoes.components.vmm:Rtc`` while the guest runs:
    both replicas put it on their bus at one log position; the VM runs on."""
    with running(TARGET, tmp_path / "run", args=("--guest", str(guests["spin"]))) as svc:
        wait_until(lambda: vmm(svc.run_dir, 0)["counter"]["value"] > 1000, timeout=60)
        done = subprocess.run(
            [sys.executable, "-m", "dominoes", "reconfigure", "vmm", "--run-dir", str(svc.run_dir),
             "add", "dominoes.components.vmm:Rtc"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "rtc"
        wait_until(lambda: all("rtc" in vmm(svc.run_dir, i)["devices"] for i in range(2)))
        reports = [vmm(svc.run_dir, i) for i in range(2)]
    for report in reports:
        assert report["phase"] == "running"
        assert report["rtc"] == {"reads": 0}
