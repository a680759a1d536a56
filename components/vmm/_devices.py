"""The device models: a 16550 UART, a timer, a shared counter, a mailbox, a disk.

Each is a :class:`Device`: its registers are replicated state that every
replica changes as it applies an exit; what touches the outside world (guest
memory, the disk file) is an effect of the vCPU's own replica.  The guest's
view of each (ports, registers) is in ``docs/howto/vmm.md``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Final

from dominoes import Context, update

from ._machine import Device, Machine

log = logging.getLogger("dominoes.vmm")

__all__ = ("CONSOLE", "Counter", "Disk", "Mailbox", "Rtc", "Timer", "Uart")

#: the topic console lines are published to (every replica gets them in log order)
CONSOLE: Final = "vmm.console"
#: lines the UART keeps for reports (``dominoes stats``, the monitor)
TAIL_LINES: Final = 64
#: a line longer than this is cut
LINE_LIMIT: Final = 1024
#: bytes waiting in the UART's receive queue at most; more are dropped
RX_LIMIT: Final = 4096


class Uart(Device):
    """A 16550 UART (COM1, ports 0x3F8-0x3FF), without FIFO timing or interrupts.

    Transmit: bytes make lines; each complete line is published to
    :data:`CONSOLE` in log order (the console writer prints it) and kept in
    ``tail``.  Receive: :meth:`receive` queues bytes (the console socket's
    input); the guest reads them from RBR while LSR's data-ready bit is set.
    """

    name: ClassVar[str] = "uart"
    ports: ClassVar[tuple[int, int] | None] = (0x3F8, 8)

    line: bytes
    tail: list[str]
    rx: bytes

    def __init__(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 0
        self.dlm = 0
        self.fcr = 0
        #: the line being written
        self.line = b""
        #: the last complete lines
        self.tail = []
        self.lines = 0
        self.tx_bytes = 0
        #: bytes received, not yet read by the guest
        self.rx = b""
        self.rx_bytes = 0
        self.rx_dropped = 0

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        dlab = self.lcr & 0x80
        if offset == 0:
            if dlab:
                return self.dll
            if not self.rx:
                return 0
            byte, self.rx = self.rx[0], self.rx[1:]
            return byte
        if offset == 1:
            return self.dlm if dlab else self.ier
        if offset == 2:
            return 0xC1 if self.fcr & 1 else 0x01  # no interrupt pending
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            return 0x60 | (1 if self.rx else 0)  # THRE | TEMT | DR
        if offset == 6:
            return 0xB0  # DCD, DSR, CTS
        return self.scr

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & 0x80
        if offset == 0:
            if dlab:
                self.dll = value
            else:
                self._transmit(ctx, value)
        elif offset == 1:
            if dlab:
                self.dlm = value
            else:
                self.ier = value
        elif offset == 2:
            self.fcr = value
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value
        elif offset == 7:
            self.scr = value
        # offsets 5 and 6 (LSR, MSR) are read-only: writes are ignored, as on the chip

    def _transmit(self, ctx: Context, byte: int) -> None:
        self.tx_bytes += 1
        if byte == 0x0D:
            return
        if byte != 0x0A:
            self.line += bytes((byte,))
            if len(self.line) < LINE_LIMIT:
                return
        text = self.line.decode("utf-8", "replace")
        self.line = b""
        self.lines += 1
        self.tail.append(text)
        del self.tail[:-TAIL_LINES]
        ctx.publish(CONSOLE, text)

    @update
    def receive(self, ctx: Context, data: bytes) -> int:
        """Bytes for the guest to read (the console socket's input); how many were queued."""
        room = max(0, RX_LIMIT - len(self.rx))
        taken = data[:room]
        self.rx += taken
        self.rx_bytes += len(taken)
        self.rx_dropped += len(data) - len(taken)
        return len(taken)

    def describe(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "tx_bytes": self.tx_bytes,
            "rx_bytes": self.rx_bytes,
            "rx_waiting": len(self.rx),
            "rx_dropped": self.rx_dropped,
        }


class Timer(Device):
    """A periodic timer per vCPU (ports 0x540-0x547); its ticks are replicated timers.

    ``outl 0x540, period_us`` arms this vCPU's timer (0 stops it; at least
    1000 µs); every tick raises :data:`VECTOR` on the vCPU, through the log.
    ``outl 0x544`` is the end of interrupt; ``inl 0x540`` reads the ticks
    this vCPU acknowledged.
    """

    name: ClassVar[str] = "timer"
    ports: ClassVar[tuple[int, int] | None] = (0x540, 8)

    #: the vector a tick raises
    VECTOR: ClassVar[int] = 0x20
    #: the shortest period, in microseconds
    MIN_PERIOD_US: ClassVar[int] = 1000

    period_us: list[int]
    timer_ids: list[int]
    ticks: list[int]
    acked: list[int]

    def __init__(self) -> None:
        self.period_us = []
        self.timer_ids = []
        self.ticks = []
        self.acked = []

    def reset(self, ctx: Context, vcpus: int) -> None:
        self.period_us = [0] * vcpus
        self.timer_ids = [0] * vcpus
        self.ticks = [0] * vcpus
        self.acked = [0] * vcpus

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        if offset == 0:
            return self.acked[vcpu]
        if offset == 4:
            return self.period_us[vcpu]
        return super().read(ctx, vcpu, offset, size)

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        if offset == 0:
            if self.timer_ids[vcpu]:
                ctx.cancel(self.timer_ids[vcpu])
                self.timer_ids[vcpu] = 0
            self.period_us[vcpu] = value and max(value, self.MIN_PERIOD_US)
            if value:
                self.timer_ids[vcpu] = ctx.raise_later(self.period_us[vcpu] / 1e6, Timer.tick, vcpu)
        elif offset == 4:
            if ctx.component(Machine).end_of_interrupt(ctx, vcpu):
                self.acked[vcpu] += 1
        else:
            super().write(ctx, vcpu, offset, size, value)

    @update
    def tick(self, ctx: Context, vcpu: int) -> None:
        """One period of ``vcpu``'s timer went by (a replicated timer fired)."""
        machine = ctx.component(Machine)
        self.timer_ids[vcpu] = 0
        if machine.phase != "running" or not self.period_us[vcpu]:
            return
        self.ticks[vcpu] += 1
        machine.raise_irq(ctx, vcpu, self.VECTOR)
        self.timer_ids[vcpu] = ctx.raise_later(self.period_us[vcpu] / 1e6, Timer.tick, vcpu)

    def describe(self) -> dict[str, Any]:
        return {
            "period_us": list(self.period_us),
            "ticks": list(self.ticks),
            "acked": list(self.acked),
        }


class Counter(Device):
    """A 64-bit counter every vCPU adds to (ports 0x510-0x517).

    ``outl 0x510, n`` adds ``n``; ``inl 0x510`` and ``inl 0x514`` read the low
    and high halves.
    """

    name: ClassVar[str] = "counter"
    ports: ClassVar[tuple[int, int] | None] = (0x510, 8)

    def __init__(self) -> None:
        self.value = 0
        self.adds = 0

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        if offset == 0:
            return self.value & 0xFFFFFFFF
        if offset == 4:
            return self.value >> 32
        return super().read(ctx, vcpu, offset, size)

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        if offset != 0:
            super().write(ctx, vcpu, offset, size, value)
        self.value = (self.value + value) & 0xFFFFFFFFFFFFFFFF
        self.adds += 1

    def describe(self) -> dict[str, Any]:
        return {"value": self.value, "adds": self.adds}


class Mailbox(Device):
    """A FIFO of 32-bit words at MMIO 0xD0000000, shared by every vCPU.

    A write at +0 posts a word; a read at +0 takes the oldest (0 if none);
    a read at +4 counts the words waiting.
    """

    name: ClassVar[str] = "mailbox"
    mmio: ClassVar[tuple[int, int] | None] = (0xD0000000, 0x1000)
    #: words the mailbox holds at most; posts beyond are dropped
    LIMIT: ClassVar[int] = 1024

    words: list[int]

    def __init__(self) -> None:
        self.words = []
        self.posted = 0
        self.taken = 0
        self.dropped = 0

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        if offset == 0:
            if not self.words:
                return 0
            self.taken += 1
            return self.words.pop(0)
        if offset == 4:
            return len(self.words)
        return super().read(ctx, vcpu, offset, size)

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        if offset != 0:
            super().write(ctx, vcpu, offset, size, value)
        if len(self.words) >= self.LIMIT:
            self.dropped += 1
            return
        self.words.append(value & 0xFFFFFFFF)
        self.posted += 1

    def describe(self) -> dict[str, Any]:
        return {"words": list(self.words), "posted": self.posted, "taken": self.taken}


class Rtc(Device):
    """A clock (ports 0x70-0x77), not on the bus by default: hot-plug it into a running VM.

    ``inl 0x70`` and ``inl 0x74`` read the low and high halves of the
    replicated time, in whole seconds since the epoch: the same on every
    replica, so the registers stay identical.  ``dominoes reconfigure vmm add
    dominoes.components.vmm:Rtc`` puts it on the bus at one log position.
    """

    name: ClassVar[str] = "rtc"
    ports: ClassVar[tuple[int, int] | None] = (0x70, 8)

    def __init__(self) -> None:
        self.reads = 0

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        seconds = int(ctx.now)
        if offset == 0:
            self.reads += 1
            return seconds & 0xFFFFFFFF
        if offset == 4:
            return seconds >> 32
        return super().read(ctx, vcpu, offset, size)

    def describe(self) -> dict[str, Any]:
        return {"reads": self.reads}


#: a disk sector
SECTOR: Final = 512
#: sectors one command moves at most
MAX_SECTORS: Final = 128

DISK_OK: Final = 0
DISK_BAD_COMMAND: Final = 1
DISK_OUT_OF_RANGE: Final = 2
DISK_NO_DISK: Final = 3


class Disk(Device):
    """A DMA block device backed by a file (ports 0x560-0x577), one register file per vCPU.

    ``0x560`` first sector, ``0x564`` buffer's guest-physical address,
    ``0x568`` sectors (1-128), ``outl 0x56C`` command (1 read, 2 write);
    ``inl 0x56C`` status, ``inl 0x570`` disk size in sectors.

    The registers and counters are replicated; the data moves between the
    file and guest memory in an effect of the vCPU's own replica, before
    its vCPU resumes, so a command is complete when its ``outl`` returns.  The
    file is shared like guest memory is: a write that completed is seen by
    every later read, whichever vCPU issues it.  Two vCPUs writing the same
    sectors without ordering their commands get the order their commands
    complete in, as on real hardware with two queues.
    """

    name: ClassVar[str] = "disk"
    ports: ClassVar[tuple[int, int] | None] = (0x560, 0x18)
    transient: ClassVar[tuple[str, ...]] = ("memory", "fd", "on_error")

    sector: list[int]
    addr: list[int]
    count: list[int]
    status: list[int]

    def __init__(self) -> None:
        self.size_sectors = 0
        self.sector = []
        self.addr = []
        self.count = []
        self.status = []
        self.reads = 0
        self.writes = 0
        self.sectors_read = 0
        self.sectors_written = 0
        self.refused = 0
        #: this replica's descriptor of the disk file (-1: none)
        self.fd = -1
        #: what an I/O error calls on the owner (the runner stops the VM)
        self.on_error: Any = None

    def reset(self, ctx: Context, vcpus: int) -> None:
        self.sector = [0] * vcpus
        self.addr = [0] * vcpus
        self.count = [0] * vcpus
        self.status = [DISK_OK] * vcpus

    @update
    def attach(self, ctx: Context, size_bytes: int) -> None:
        """The disk file's size, as the booting replica found it."""
        self.size_sectors = size_bytes // SECTOR

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        registers = {0x0: self.sector, 0x4: self.addr, 0x8: self.count, 0xC: self.status}
        if offset in registers:
            return registers[offset][vcpu]
        if offset == 0x10:
            return self.size_sectors
        return super().read(ctx, vcpu, offset, size)

    def write(self, ctx: Context, vcpu: int, offset: int, size: int, value: int) -> None:
        if offset == 0x0:
            self.sector[vcpu] = value
        elif offset == 0x4:
            self.addr[vcpu] = value
        elif offset == 0x8:
            self.count[vcpu] = value
        elif offset == 0xC:
            self.status[vcpu] = self._command(ctx, vcpu, value)
        else:
            super().write(ctx, vcpu, offset, size, value)

    def _command(self, ctx: Context, vcpu: int, command: int) -> int:
        if command not in (1, 2):
            self.refused += 1
            return DISK_BAD_COMMAND
        if not self.size_sectors:
            self.refused += 1
            return DISK_NO_DISK
        first, addr, count = self.sector[vcpu], self.addr[vcpu], self.count[vcpu]
        memory_size = ctx.component(Machine).memory_size
        if (
            not 1 <= count <= MAX_SECTORS
            or first + count > self.size_sectors
            or addr + count * SECTOR > memory_size
        ):
            self.refused += 1
            return DISK_OUT_OF_RANGE
        if command == 1:
            self.reads += 1
            self.sectors_read += count
        else:
            self.writes += 1
            self.sectors_written += count
        ctx.effect(self._dma, command, first, addr, count)
        return DISK_OK

    def _dma(self, command: int, first: int, addr: int, count: int) -> None:
        """On the vCPU's replica, before it resumes: move the data."""
        length = count * SECTOR
        try:
            if self.memory is None or self.fd < 0:
                raise OSError("the disk is not open on this replica")
            if command == 1:
                data = os.pread(self.fd, length, first * SECTOR)
                self.memory[addr : addr + len(data)] = data
                if len(data) < length:
                    self.memory[addr + len(data) : addr + length] = bytes(length - len(data))
            else:
                os.pwrite(self.fd, self.memory[addr : addr + length], first * SECTOR)
        except OSError as exc:
            log.error("vmm: disk I/O failed: %s", exc)
            if self.on_error is not None:
                self.on_error(f"disk I/O failed: {exc}")

    def describe(self) -> dict[str, Any]:
        return {
            "size_sectors": self.size_sectors,
            "reads": self.reads,
            "writes": self.writes,
            "sectors_read": self.sectors_read,
            "sectors_written": self.sectors_written,
            "refused": self.refused,
        }
