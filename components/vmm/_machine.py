"""The machine: its life cycle, the exit entry, the port and MMIO map, and interrupts.

An exit is one log entry, :meth:`Machine.exit`, appended by the replica whose
vCPU exited (an ``affinity`` entry, so that replica owns it).  Every replica
applies it: the machine routes the access to the device that decodes that
port or address, and the device changes its registers, which are replicated
state.  Only the owner completes the exit: an effect gives the vCPU what it
read and resumes it.  The other replicas have only updated their copy.

Sans-IO: nothing here touches KVM.  The vCPU's side (the thread that runs
``KVM_RUN``) is :mod:`._vcpu`; it reaches this component through the
transient ``runner``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Final, Protocol

from dominoes import Component, Context, on, reconfiguration, update

log = logging.getLogger("dominoes.vmm")

__all__ = (
    "HALTED",
    "IO_IN",
    "IO_OUT",
    "MMIO_READ",
    "MMIO_WRITE",
    "NEW",
    "RUNNING",
    "STOPPED",
    "Device",
    "DeviceError",
    "Machine",
)

#: the machine's phases
NEW: Final = "new"
RUNNING: Final = "running"
HALTED: Final = "halted"
STOPPED: Final = "stopped"

#: an exit's kind
IO_IN: Final = 0
IO_OUT: Final = 1
MMIO_READ: Final = 2
MMIO_WRITE: Final = 3
KIND_NAMES: Final = ("io_in", "io_out", "mmio_read", "mmio_write")

#: how a vCPU may start
MODES: Final = ("protected", "long")

#: the bytes one exit may move (KVM's string I/O stays within a page)
MAX_ACCESS_BYTES: Final = 4096

#: interrupts a vCPU may have raised and not yet acknowledged; more are dropped
PENDING_LIMIT: Final = 64

#: the topic a replica's runner follows: ("start", vcpus) / ("stop", reason) / ("irq", vcpu)
CONTROL: Final = "vmm.control"


class DeviceError(Exception):
    """What a device raises for an access it refuses: the VM stops with its text."""


class Runner(Protocol):
    """The vCPU thread's side, as the machine's effects see it (see ``_vcpu``)."""

    index: int

    def complete(self, data: bytes) -> None: ...

    def end_of_interrupt(self) -> None: ...


class Device(Component):
    """A device model.  Its attributes are its registers: replicated state.

    A subclass says where it is decoded, with ``ports = (first, count)``
    and/or ``mmio = (base, length)``, and implements :meth:`read` and
    :meth:`write`.  They run on every replica, in log order, like any update
    handler: deterministic, through ``ctx``.  ``offset`` is relative to the
    device's first port (or MMIO base).  What only the vCPU's own replica
    should do (touch guest memory, a file, a socket) goes in ``ctx.effect``:
    it runs on the owner, before the vCPU resumes.  ``memory`` is the guest's
    RAM on this replica (transient; None until the machine starts).
    """

    ports: ClassVar[tuple[int, int] | None] = None
    mmio: ClassVar[tuple[int, int] | None] = None
    transient: ClassVar[tuple[str, ...]] = ("memory",)

    memory: Any = None

    def reset(self, ctx: Context, vcpus: int) -> None:
        """At boot: size per-vCPU registers for ``vcpus`` vCPUs."""

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        raise DeviceError(f"{self.name} has no readable register at +0x{offset:x}")

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        raise DeviceError(f"{self.name} has no writable register at +0x{offset:x}")

    def describe(self) -> dict[str, Any]:
        """This device's line in the ``vmm`` report (JSON-ready)."""
        return {}

    def access(
        self, ctx: Context, vcpu: int, offset: int, size: int, count: int, data: bytes, write: bool
    ) -> bytes:
        """One exit's ``count`` accesses of ``size`` bytes: :meth:`write` each value of
        ``data`` (little-endian) and return ``b""``, or :meth:`read` ``count`` values
        and return their bytes.  The machine calls it; so may a VMM of another shape."""
        if write:
            for i in range(count):
                self.write(
                    ctx,
                    vcpu,
                    offset,
                    size,
                    int.from_bytes(data[i * size : (i + 1) * size], "little"),
                )
            return b""
        mask = (1 << (8 * size)) - 1
        return b"".join(
            (self.read(ctx, vcpu, offset, size) & mask).to_bytes(size, "little")
            for _ in range(count)
        )


class Machine(Component):
    """The VM: phase, vCPUs, the bus (ports and MMIO) and pending interrupts."""

    name: ClassVar[str] = "machine"
    transient: ClassVar[tuple[str, ...]] = ("runner", "memory", "_ports", "_mmio")

    devices: tuple[str, ...]
    refused_devices: dict[str, str]
    phase: str
    vcpus: int
    vcpu_state: list[str]
    stop_reason: str
    exits: dict[str, int]
    refused: int
    faults: int
    pending: list[list[int]]
    irq_raised: int
    irq_dropped: int
    memory_size: int
    memory_pid: int
    memory_fd: int
    boot_seq: int
    mode: str
    boot_time: float
    end_time: float

    def __init__(self, devices: tuple[str, ...] = ()) -> None:
        #: names of the device components on the bus
        self.devices = tuple(devices)
        #: devices added to the service that could not go on the bus, and why
        self.refused_devices = {}
        #: the guest's RAM on this replica (None until the machine starts here)
        self.memory: Any = None
        self.phase = NEW
        self.vcpus = 0
        #: per vCPU: "running", "halted" or "faulted"
        self.vcpu_state = []
        #: why the VM stopped ("" while it has not)
        self.stop_reason = ""
        #: exits applied, by kind
        self.exits = dict.fromkeys(KIND_NAMES, 0)
        #: accesses no device decodes, or a device refused
        self.refused = 0
        #: exits that end a vCPU (triple fault, failed entry, internal error)
        self.faults = 0
        #: per vCPU: vectors raised and not yet acknowledged (EOI), oldest first
        self.pending = []
        self.irq_raised = 0
        self.irq_dropped = 0
        #: the guest RAM: its size, and where the replicas open it (a memfd of
        #: the booting replica: /proc/PID/fd/FD)
        self.memory_size = 0
        self.memory_pid = 0
        self.memory_fd = 0
        self.boot_seq = 0
        #: how the vCPUs start: "protected" (32-bit) or "long" (64-bit)
        self.mode = ""
        #: replicated time (``ctx.now``) of the boot, and of the halt or stop
        self.boot_time = 0.0
        self.end_time = 0.0
        #: this replica's vCPU runner (None: no vCPU here, or not started)
        self.runner: Runner | None = None
        self._ports: dict[int, tuple[str, int]] | None = None
        self._mmio: list[tuple[int, int, str]] | None = None

    # --- life cycle ---------------------------------------------------------------------

    @update
    def boot(
        self, ctx: Context, vcpus: int, memory_size: int, pid: int, fd: int, mode: str = "protected"
    ) -> bool:
        """Start the VM, once: the booting replica has loaded the guest's image.

        ``mode`` is how every vCPU starts: ``"protected"`` (32-bit) or
        ``"long"`` (64-bit; the booting replica wrote the page tables).
        """
        if self.phase != NEW:
            return False
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.phase = RUNNING
        self.mode = mode
        self.vcpus = vcpus
        self.vcpu_state = ["running"] * vcpus
        self.pending = [[] for _ in range(vcpus)]
        self.memory_size = memory_size
        self.memory_pid = pid
        self.memory_fd = fd
        self.boot_seq = ctx.seq
        self.boot_time = ctx.now
        for name in self.devices:
            ctx.component(name).reset(ctx, vcpus)
        ctx.publish(CONTROL, ("start", vcpus))
        return True

    @update
    def halted(self, ctx: Context, vcpu: int) -> None:
        """A vCPU executed HLT with interrupts off: it is done."""
        if self.phase != RUNNING or not 0 <= vcpu < self.vcpus:
            return
        self.vcpu_state[vcpu] = "halted"
        if all(s == "halted" for s in self.vcpu_state):
            self.phase = HALTED
            self.end_time = ctx.now
            ctx.publish(CONTROL, ("halted", ""))

    @update
    def fault(self, ctx: Context, vcpu: int, reason: str) -> None:
        """A vCPU cannot go on (triple fault, failed entry, a lost replica)."""
        if self.phase != RUNNING or not 0 <= vcpu < self.vcpus:
            return
        self.faults += 1
        self.vcpu_state[vcpu] = "faulted"
        self.stop(ctx, f"vCPU {vcpu}: {reason}")

    @update
    def stop(self, ctx: Context, reason: str) -> None:
        """Stop every vCPU (an operator's request, or an error)."""
        if self.phase not in (NEW, RUNNING):
            return
        self.phase = STOPPED
        self.stop_reason = reason
        self.end_time = ctx.now
        ctx.effect(log.error, "vmm: the VM stopped: %s", reason)
        ctx.publish(CONTROL, ("stop", reason))

    # --- exits --------------------------------------------------------------------------

    @update
    def exit(
        self, ctx: Context, vcpu: int, kind: int, addr: int, size: int, count: int, data: bytes
    ) -> bytes | None:
        """One port-I/O or MMIO exit of ``vcpu``; what the guest reads (None: nothing).

        ``data`` holds the ``count`` values a write writes (``size`` bytes each,
        little-endian).  The owner resumes the vCPU with the result.
        """
        if (
            self.phase != RUNNING
            or not 0 <= vcpu < self.vcpus
            or self.vcpu_state[vcpu] != "running"
        ):
            return None  # the VM stopped while this exit was on its way
        write = kind in (IO_OUT, MMIO_WRITE)
        if (
            kind not in (IO_IN, IO_OUT, MMIO_READ, MMIO_WRITE)
            or size not in (1, 2, 4, 8)
            # KVM hands over at most a page of string I/O; more is not an exit
            or not 1 <= count <= MAX_ACCESS_BYTES // size
            or (write and len(data) != size * count)
        ):
            self.refused += 1
            self.stop(ctx, f"vCPU {vcpu}: malformed exit (kind {kind}, size {size}, count {count})")
            return None
        self.exits[KIND_NAMES[kind]] += 1
        target = self._route(ctx, kind, addr)
        verb = ("read from", "write to")[kind in (IO_OUT, MMIO_WRITE)]
        where = f"port 0x{addr:x}" if kind in (IO_IN, IO_OUT) else f"MMIO address 0x{addr:x}"
        if target is None:
            self.refused += 1
            self.stop(ctx, f"vCPU {vcpu}: {size}-byte {verb} {where}, where no device is")
            return None
        device, offset = target
        try:
            result = device.access(ctx, vcpu, offset, size, count, data, write)
        except DeviceError as exc:
            self.refused += 1
            self.stop(ctx, f"vCPU {vcpu}: {size}-byte {verb} {where}: {exc}")
            return None
        ctx.effect(self._complete, vcpu, result)
        return result

    def _complete(self, vcpu: int, result: bytes) -> None:
        runner = self.runner
        if runner is not None and runner.index == vcpu:
            runner.complete(result)

    def _route(self, ctx: Context, kind: int, addr: int) -> tuple[Device, int] | None:
        if self._ports is None or self._mmio is None:
            self._build_map(ctx)
            assert self._ports is not None
            assert self._mmio is not None
        if kind in (IO_IN, IO_OUT):
            hit = self._ports.get(addr)
            if hit is None:
                return None
            return ctx.component(hit[0]), hit[1]
        for base, length, name in self._mmio:
            if base <= addr < base + length:
                return ctx.component(name), addr - base
        return None

    def _build_map(self, ctx: Context) -> None:
        ports: dict[int, tuple[str, int]] = {}
        mmio: list[tuple[int, int, str]] = []
        for name in self.devices:
            device: Device = ctx.component(name)
            if device.ports is not None:
                first, count = device.ports
                for port in range(first, first + count):
                    ports[port] = (name, port - first)
            if device.mmio is not None:
                mmio.append((device.mmio[0], device.mmio[1], name))
        self._ports, self._mmio = ports, mmio

    # --- hot-plug: a device added to (or removed from) the running service ----------------

    @on(reconfiguration.ADDED)
    def plug(self, ctx: Context, name: str) -> None:
        """A component was added through the log: a device goes on the bus, here and now.

        ``dominoes reconfigure vmm add module:Class`` on a running VM.  A device
        whose ports or MMIO range overlap another's stays off the bus (the
        reason is kept in ``refused_devices``).
        """
        device: Component = ctx.component(name)
        if not isinstance(device, Device) or name in self.devices:
            return
        clash = self._clash(ctx, device)
        if clash:
            self.refused_devices[name] = clash
            ctx.effect(log.error, "vmm: device %s stays off the bus: %s", name, clash)
            return
        self.devices = (*self.devices, name)
        self._ports = self._mmio = None
        if self.phase == RUNNING:
            device.reset(ctx, self.vcpus)
        device.memory = self.memory  # this replica's RAM, for its effects (transient)

    @on(reconfiguration.REMOVED)
    def unplug(self, ctx: Context, name: str) -> None:
        """A device removed through the log leaves the bus: its ports decode nothing."""
        self.refused_devices.pop(name, None)
        if name in self.devices:
            self.devices = tuple(d for d in self.devices if d != name)
            self._ports = self._mmio = None

    def _clash(self, ctx: Context, device: Device) -> str:
        for name in self.devices:
            other: Device = ctx.component(name)
            if device.ports is not None and other.ports is not None:
                (a, n), (b, m) = device.ports, other.ports
                if a < b + m and b < a + n:
                    return f"its ports 0x{a:x}-0x{a + n - 1:x} overlap {name}'s"
            if device.mmio is not None and other.mmio is not None:
                (a, n), (b, m) = device.mmio, other.mmio
                if a < b + m and b < a + n:
                    return f"its MMIO range at 0x{a:x} overlaps {name}'s"
        return ""

    # --- interrupts ---------------------------------------------------------------------

    def raise_irq(self, ctx: Context, vcpu: int, vector: int) -> None:
        """Raise ``vector`` on ``vcpu`` (from a device's handler).

        The vCPU's own replica injects it through ``KVM_INTERRUPT`` once the
        guest can take it; the guest acknowledges it (EOI) through a device,
        which calls :meth:`end_of_interrupt`.
        """
        if self.phase != RUNNING or not 0 <= vcpu < self.vcpus:
            return
        queue = self.pending[vcpu]
        if len(queue) >= PENDING_LIMIT:
            self.irq_dropped += 1
            return
        queue.append(vector)
        self.irq_raised += 1
        ctx.publish(CONTROL, ("irq", vcpu))

    def end_of_interrupt(self, ctx: Context, vcpu: int) -> bool:
        """The guest acknowledged ``vcpu``'s oldest interrupt; False if none was pending."""
        if not 0 <= vcpu < len(self.pending) or not self.pending[vcpu]:
            return False
        self.pending[vcpu].pop(0)
        ctx.effect(self._eoi, vcpu)
        return True

    def _eoi(self, vcpu: int) -> None:
        runner = self.runner
        if runner is not None and runner.index == vcpu:
            runner.end_of_interrupt()

    def next_vector(self, vcpu: int) -> int | None:
        """The vector ``vcpu`` should take next (read by its runner's thread)."""
        try:
            return self.pending[vcpu][0]
        except IndexError:
            return None

    def describe(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "devices": list(self.devices),
            "refused_devices": dict(self.refused_devices),
            "mode": self.mode,
            "vcpus": self.vcpus,
            "vcpu_state": list(self.vcpu_state),
            "stop_reason": self.stop_reason,
            "exits": dict(self.exits),
            "refused": self.refused,
            "faults": self.faults,
            "irq_raised": self.irq_raised,
            "irq_dropped": self.irq_dropped,
            "irq_pending": [len(q) for q in self.pending],
            "seconds": round(self.end_time - self.boot_time, 6) if self.end_time else None,
        }
