"""Run the VMM service on a guest built from the repository's sources, and read its state."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from dominoes.components.vmm import available

from .harness import ask, wait_until

TARGET = "dominoes.components.vmm:service"
SECTOR = 512


def skip_without_kvm() -> None:
    """Skip, saying why, where KVM or the guest's toolchain is missing."""
    if why := available():
        pytest.skip(f"KVM is not usable here: {why}")
    for tool in ("gcc", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: the test guest is built with gcc and binutils")


def vmm(run_dir: Path, index: int) -> dict[str, Any]:
    """Replica ``index``'s ``vmm`` report section."""
    report: dict[str, Any] = ask(run_dir, index, "stats")["reports"]["vmm"]
    return report


def wait_phase(run_dir: Path, phases: tuple[str, ...], timeout: float, replicas: int = 2) -> None:
    """Wait until every replica's machine is in one of ``phases``."""

    def there() -> bool:
        return all(vmm(run_dir, i)["phase"] in phases for i in range(replicas))

    wait_until(there, timeout=timeout, interval=0.1)


def expected_disk(size: int, vcpus: int) -> bytes:
    """The disk the normal guest leaves: vCPU i's sectors [8i, 8i+8) hold its pattern."""
    disk = bytearray(size)
    for cpu in range(vcpus):
        for s in range(cpu * 8, cpu * 8 + 8):
            disk[s * SECTOR : (s + 1) * SECTOR] = bytes(
                (s * 31 + k + 7) & 0xFF for k in range(SECTOR)
            )
    return bytes(disk)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
