"""A small virtual machine monitor on KVM whose device models are dominoes components.

``dominoes run dominoes.components.vmm:service --guest kernel.bin --vcpus 2
--disk disk.img``: one replica per vCPU, each on its own core, one guest RAM
shared by all; every port-I/O or MMIO exit is a log entry that the vCPU's
replica owns and completes, while the others update their copy of the
device registers.  See ``docs/howto/vmm.md`` and ``docs/design/vmm.md``.
"""

from __future__ import annotations

from ._devices import CONSOLE, Counter, Disk, Mailbox, Rtc, Timer, Uart
from ._kvm import available
from ._machine import IO_IN, IO_OUT, MMIO_READ, MMIO_WRITE, Device, DeviceError, Machine
from ._service import IMAGE_BASE, compose, service

__all__ = (
    "CONSOLE",
    "IMAGE_BASE",
    "IO_IN",
    "IO_OUT",
    "MMIO_READ",
    "MMIO_WRITE",
    "Counter",
    "Device",
    "DeviceError",
    "Disk",
    "Machine",
    "Mailbox",
    "Rtc",
    "Timer",
    "Uart",
    "available",
    "compose",
    "service",
)
