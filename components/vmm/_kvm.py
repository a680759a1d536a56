"""The KVM API from Python: ``/dev/kvm``'s ioctls, through ``fcntl.ioctl`` and ``mmap``.

No maintained binding exists on PyPI (``pykvm`` is a single-module demo,
``kvm`` manages hosts, ``pyvmm`` is empty), so this module is the binding: the
ioctl numbers and structure layouts of ``<linux/kvm.h>`` for x86-64, as
``ctypes`` structures.  It knows nothing of dominoes.

A :class:`Vm` is one KVM virtual machine (one per process: KVM refuses vCPU
ioctls from another process's address space).  Guest memory is a shared file
mapping, so several VMs in several processes can share one guest's RAM.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from typing import Final

__all__ = (
    "EXIT_NAMES",
    "Kvm",
    "KvmRun",
    "Regs",
    "Segment",
    "Sregs",
    "Vcpu",
    "Vm",
    "available",
    "write_identity_map",
)

_KVMIO: Final = 0xAE


def _io(nr: int) -> int:
    return (_KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (_KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_KVMIO << 8) | nr


class Regs(ctypes.Structure):
    """``struct kvm_regs``."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"),
            *("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
            *("rip", "rflags"),
        )
    ]


class Segment(ctypes.Structure):
    """``struct kvm_segment``."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class Dtable(ctypes.Structure):
    """``struct kvm_dtable``."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


class Sregs(ctypes.Structure):
    """``struct kvm_sregs``."""

    _fields_ = [
        *((name, Segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", Dtable),
        ("idt", Dtable),
        *(
            (name, ctypes.c_uint64)
            for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
        ),
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    ]


class _Io(ctypes.Structure):
    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]


class _Mmio(ctypes.Structure):
    _fields_ = [
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


class _FailEntry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", ctypes.c_uint64), ("cpu", ctypes.c_uint32)]


class _Internal(ctypes.Structure):
    _fields_ = [
        ("suberror", ctypes.c_uint32),
        ("ndata", ctypes.c_uint32),
        ("data", ctypes.c_uint64 * 16),
    ]


class _Exit(ctypes.Union):
    _fields_ = [
        ("io", _Io),
        ("mmio", _Mmio),
        ("fail_entry", _FailEntry),
        ("internal", _Internal),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(ctypes.Structure):
    """The head of ``struct kvm_run``, the page KVM and the VMM share per vCPU."""

    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("exit", _Exit),
    ]


class _MemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


GET_API_VERSION: Final = _io(0x00)
CREATE_VM: Final = _io(0x01)
CHECK_EXTENSION: Final = _io(0x03)
GET_VCPU_MMAP_SIZE: Final = _io(0x04)
CREATE_VCPU: Final = _io(0x41)
SET_USER_MEMORY_REGION: Final = _iow(0x46, ctypes.sizeof(_MemoryRegion))
SET_TSS_ADDR: Final = _io(0x47)
SET_IDENTITY_MAP_ADDR: Final = _iow(0x48, 8)
RUN: Final = _io(0x80)
GET_REGS: Final = _ior(0x81, ctypes.sizeof(Regs))
SET_REGS: Final = _iow(0x82, ctypes.sizeof(Regs))
GET_SREGS: Final = _ior(0x83, ctypes.sizeof(Sregs))
SET_SREGS: Final = _iow(0x84, ctypes.sizeof(Sregs))
INTERRUPT: Final = _iow(0x86, 4)

EXIT_UNKNOWN: Final = 0
EXIT_EXCEPTION: Final = 1
EXIT_IO: Final = 2
EXIT_HYPERCALL: Final = 3
EXIT_DEBUG: Final = 4
EXIT_HLT: Final = 5
EXIT_MMIO: Final = 6
EXIT_IRQ_WINDOW_OPEN: Final = 7
EXIT_SHUTDOWN: Final = 8
EXIT_FAIL_ENTRY: Final = 9
EXIT_INTR: Final = 10
EXIT_INTERNAL_ERROR: Final = 17

#: exit reason -> name, for messages and counters
EXIT_NAMES: Final = {
    EXIT_UNKNOWN: "unknown",
    EXIT_EXCEPTION: "exception",
    EXIT_IO: "io",
    EXIT_HYPERCALL: "hypercall",
    EXIT_DEBUG: "debug",
    EXIT_HLT: "hlt",
    EXIT_MMIO: "mmio",
    EXIT_IRQ_WINDOW_OPEN: "irq_window_open",
    EXIT_SHUTDOWN: "shutdown",
    EXIT_FAIL_ENTRY: "fail_entry",
    EXIT_INTR: "intr",
    EXIT_INTERNAL_ERROR: "internal_error",
}

IO_IN: Final = 0
IO_OUT: Final = 1

DEVICE: Final = "/dev/kvm"

CR0_PE: Final = 1 << 0
CR0_ET: Final = 1 << 4
CR0_PG: Final = 1 << 31
CR4_PAE: Final = 1 << 5
EFER_LME: Final = 1 << 8
EFER_LMA: Final = 1 << 10

#: bytes :func:`write_identity_map` writes: a PML4, a PDPT and four page directories
IDENTITY_MAP_BYTES: Final = 6 * 4096


def write_identity_map(memory: mmap.mmap | bytearray, base: int) -> None:
    """Page tables at ``base`` that map guest-physical 0-4 GiB to itself, in 2 MiB pages.

    Long mode needs paging; identity mapping keeps every address the guest
    and the devices use (RAM, the MMIO window below 4 GiB) what it was.
    """
    pml4, pdpt = base, base + 0x1000
    tables = bytearray(IDENTITY_MAP_BYTES)
    struct.pack_into("<Q", tables, 0, pdpt | 0x3)  # present, writable
    for j in range(4):
        directory = base + 0x2000 + j * 0x1000
        struct.pack_into("<Q", tables, 0x1000 + 8 * j, directory | 0x3)
        for i in range(512):
            page = (j * 512 + i) << 21
            struct.pack_into("<Q", tables, 0x2000 + j * 0x1000 + 8 * i, page | 0x83)  # 2 MiB
    memory[pml4 : pml4 + IDENTITY_MAP_BYTES] = tables


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)


def _ioctl_ulong(fd: int, request: int, arg: int) -> int:
    """An ioctl whose argument is an unsigned long (``fcntl.ioctl`` takes a C int)."""
    result = int(_libc.ioctl(fd, request, arg))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def available() -> str:
    """``""`` if KVM can be used here, else why not (for skips and errors)."""
    try:
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{DEVICE}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, GET_API_VERSION, 0)
        if version != 12:
            return f"{DEVICE}: API version {version}, not 12"
    finally:
        os.close(fd)
    return ""


class Kvm:
    """An open ``/dev/kvm``."""

    def __init__(self) -> None:
        self.fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
        self.vcpu_mmap_size = fcntl.ioctl(self.fd, GET_VCPU_MMAP_SIZE, 0)

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    """One KVM virtual machine whose RAM is ``memory``, a shared mapping of a file."""

    def __init__(self, kvm: Kvm, memory: mmap.mmap, *, tss_addr: int = 0xFFFBD000) -> None:
        self.kvm = kvm
        self.memory = memory
        self.fd = fcntl.ioctl(kvm.fd, CREATE_VM, 0)
        _ioctl_ulong(self.fd, SET_TSS_ADDR, tss_addr)
        self._anchor = ctypes.c_char.from_buffer(memory)  # pins the mapping's address
        region = _MemoryRegion(
            slot=0,
            flags=0,
            guest_phys_addr=0,
            memory_size=len(memory),
            userspace_addr=ctypes.addressof(self._anchor),
        )
        fcntl.ioctl(self.fd, SET_USER_MEMORY_REGION, region)

    def vcpu(self, vcpu_id: int) -> Vcpu:
        return Vcpu(self, vcpu_id)

    def close(self) -> None:
        del self._anchor
        os.close(self.fd)


class Vcpu:
    """One virtual CPU: its fd and its ``kvm_run`` page."""

    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = fcntl.ioctl(vm.fd, CREATE_VCPU, vcpu_id)
        self.page = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size)
        self.run_struct = KvmRun.from_buffer(self.page)

    def run(self) -> int:
        """``KVM_RUN`` (the GIL is released meanwhile); the exit reason."""
        fcntl.ioctl(self.fd, RUN, 0)
        return int(self.run_struct.exit_reason)

    def get_regs(self) -> Regs:
        regs = Regs()
        fcntl.ioctl(self.fd, GET_REGS, regs)
        return regs

    def set_regs(self, regs: Regs) -> None:
        fcntl.ioctl(self.fd, SET_REGS, regs)

    def get_sregs(self) -> Sregs:
        sregs = Sregs()
        fcntl.ioctl(self.fd, GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Sregs) -> None:
        fcntl.ioctl(self.fd, SET_SREGS, sregs)

    def interrupt(self, vector: int) -> None:
        """``KVM_INTERRUPT``: queue an external interrupt (no in-kernel irqchip)."""
        fcntl.ioctl(self.fd, INTERRUPT, ctypes.c_uint32(vector))

    def io_data(self, size: int, count: int = 1) -> memoryview:
        """The bytes of a port-I/O exit's data, in the ``kvm_run`` page."""
        offset = int(self.run_struct.exit.io.data_offset)
        return memoryview(self.page)[offset : offset + size * count]

    def enter_protected_mode(self, *, entry: int, stack: int, args: tuple[int, ...] = ()) -> None:
        """Start in 32-bit protected mode, flat 4 GiB segments, paging off.

        ``args`` go to EDI, ESI, EDX and ECX, in that order.  The code segment
        is selector 0x08 and the data segments 0x10, as a guest's own flat GDT
        would make them, so the guest may load its GDT and keep going.
        """
        self._enter(entry, stack, args, page_tables=None)

    def enter_long_mode(
        self, *, entry: int, stack: int, page_tables: int, args: tuple[int, ...] = ()
    ) -> None:
        """Start in 64-bit long mode, paging on with the tables at ``page_tables``.

        The tables (see :func:`write_identity_map`) must be in guest memory
        already.  CS is selector 0x08, a 64-bit code segment, the data
        segments 0x10; ``args`` go to RDI, RSI, RDX and RCX (the System V
        calling convention's first arguments).
        """
        self._enter(entry, stack, args, page_tables=page_tables)

    def _enter(
        self, entry: int, stack: int, args: tuple[int, ...], *, page_tables: int | None
    ) -> None:
        long = page_tables is not None
        sregs = self.get_sregs()
        sregs.cs = Segment(
            base=0,
            limit=0xFFFFFFFF,
            selector=0x08,
            type=11,  # code: execute/read, accessed
            present=1,
            dpl=0,
            db=0 if long else 1,
            s=1,
            l=1 if long else 0,
            g=1,
        )
        data = Segment(
            base=0, limit=0xFFFFFFFF, selector=0x10, type=3, present=1, dpl=0, db=1, s=1, l=0, g=1
        )
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, data)
        if page_tables is not None:
            sregs.cr3 = page_tables
            sregs.cr4 |= CR4_PAE
            sregs.efer = EFER_LME | EFER_LMA
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
        else:
            sregs.cr0 = (sregs.cr0 | CR0_PE) & ~CR0_PG
        self.set_sregs(sregs)
        regs = Regs()
        regs.rip = entry
        regs.rsp = stack
        regs.rflags = 0x2
        for name, value in zip(("rdi", "rsi", "rdx", "rcx"), args, strict=False):
            setattr(regs, name, value)
        self.set_regs(regs)

    def close(self) -> None:
        del self.run_struct
        self.page.close()
        os.close(self.fd)
