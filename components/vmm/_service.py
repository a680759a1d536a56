"""The VMM as a dominoes service: options, boot, the vCPU of each replica, the console.

``dominoes run dominoes.components.vmm:service --guest kernel.bin --vcpus 2
--disk disk.img``.  Replica ``i`` runs vCPU ``i`` (replicas beyond ``--vcpus``
hold the device state only).  Each replica is its own KVM VM with one vCPU;
all of them map one guest RAM: a memfd of replica 0, which the others open
through ``/proc/PID/fd/FD`` (so nothing is left in ``/dev/shm`` when the
service ends).

The life of a VM:

1. Replica 0 creates the RAM, copies the guest's image to 1 MiB and appends
   :meth:`Machine.boot` (and :meth:`Disk.attach`).
2. Applying ``boot`` publishes ``start``: each replica with a vCPU opens the
   RAM, creates its VM and vCPU at the image's first byte, in 32-bit
   protected mode or (``--mode long``) 64-bit long mode, and starts its
   thread.
3. Every exit is an entry (see ``_machine``).  HLT with interrupts off ends a
   vCPU (:meth:`Machine.halted`); once all have, the VM is ``halted``.
4. A fault (triple fault, an access no device decodes, a lost replica) stops
   the VM: every vCPU is kicked out and its thread ends; the device state
   stays, for ``dominoes stats``.

A replica that restarts (kill -9) while its vCPU was running cannot resume
it: the vCPU's registers died with the process.  It appends
:meth:`Machine.fault` for its vCPU, and the VM stops, cleanly, saying so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from dominoes import LogFullError, Option, Replica, Service, SlowSubscriberError, State

from . import _kvm as kvm
from ._devices import CONSOLE, Counter, Disk, Mailbox, Timer, Uart
from ._machine import CONTROL, MODES, RUNNING, Device, Machine
from ._vcpu import EXIT, FAULT, HALTED, VcpuRunner, install_kick_handler

log = logging.getLogger("dominoes.vmm")

__all__ = ("IMAGE_BASE", "compose", "service")

#: where the guest's image goes, and where every vCPU starts
IMAGE_BASE: Final = 0x100000
#: the top of vCPU 0's stack; vCPU i's is STACK_TOP - i * STACK_SIZE
STACK_TOP: Final = 0x80000
STACK_SIZE: Final = 0x8000
#: where the booting replica writes the page tables of a long-mode guest
PAGE_TABLES: Final = 0x90000
#: the replica that writes the console and serves its socket
CONSOLE_REPLICA: Final = 0


def _mebibytes(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 4096:
        raise ValueError("--memory is in MiB, from 2 to 4096")
    return value


def _vcpus(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 16:
        raise ValueError("--vcpus is from 1 to 16 (0: one per replica)")
    return value


def _mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"--mode is one of {', '.join(MODES)}")
    return text


def _console(text: str) -> str:
    if text == "stdout" or text.startswith("file:") or text.startswith("tcp:"):
        if text.startswith("tcp:"):
            int(text[4:])
        return text
    raise ValueError("--console is stdout, file:PATH or tcp:PORT")


OPTIONS: Final = (
    Option("guest", required=True, help="the guest's flat binary image, loaded at 1 MiB"),
    Option("vcpus", type=_vcpus, default=0, help="vCPUs (default: one per replica)"),
    Option("disk", default="", help="the disk's backing file (default: no disk)"),
    Option("memory", type=_mebibytes, default=16, help="guest RAM in MiB (default 16)"),
    Option(
        "mode",
        type=_mode,
        default="protected",
        help="how every vCPU starts: protected (32-bit, flat segments; the default) or long "
        "(64-bit, paging on, 0-4 GiB identity-mapped by tables at 0x90000)",
    ),
    Option(
        "console",
        type=_console,
        default="stdout",
        help="where the UART's lines go: stdout, file:PATH, or tcp:PORT (a socket on "
        "127.0.0.1 that socat or nc can use; what it receives feeds the UART)",
    ),
)


class Vmm:
    """One replica's side of the VM: its RAM, its vCPU, its console."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.state = State(replica)
        self.machine: Machine = replica.component(Machine)
        self.loop = asyncio.get_running_loop()
        self.memory: mmap.mmap | None = None
        self.memory_fd = -1
        self.kvm: kvm.Kvm | None = None
        self.vm: kvm.Vm | None = None
        self.vcpu: kvm.Vcpu | None = None
        self.runner: VcpuRunner | None = None
        self.console_clients: set[asyncio.StreamWriter] = set()
        self.console_file: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()
        #: why this replica could not open the disk ("" if it could, or there is none)
        self.disk_error = ""

    # --- start --------------------------------------------------------------------------

    async def start(self) -> None:
        replica, machine = self.replica, self.machine
        install_kick_handler()
        options = replica.options
        disk = replica.component(Disk)
        disk.on_error = self._device_failed
        if options["disk"]:
            try:
                disk.fd = os.open(options["disk"], os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                self.disk_error = f"cannot open the disk {options['disk']}: {exc.strerror}"
                log.error("vmm: replica %d %s", replica.index, self.disk_error)
        # follow the control topic from now on: nothing is applied before the
        # subscription exists, since this method does not await in between
        control = self.state.subscribe(CONTROL, maxsize=1 << 16)
        self._spawn(self._follow(control))
        if replica.index == CONSOLE_REPLICA:
            await self._open_console(options["console"])
        replica.reports["vmm"] = self.report
        if machine.phase == RUNNING:
            if replica.index < machine.vcpus and machine.vcpu_state[replica.index] == "running":
                # restarted while our vCPU ran: its registers are gone
                await replica.submit(
                    Machine.fault,
                    replica.index,
                    "its replica restarted (the process died) while the vCPU ran; "
                    "a vCPU's registers live in its process, so the VM cannot go on",
                )
            return
        if machine.phase == "new" and replica.index == 0:
            await self._boot()

    async def _boot(self) -> None:
        options = self.replica.options
        vcpus = options["vcpus"] or self.replica.replicas
        if vcpus > self.replica.replicas:
            await self.replica.submit(
                Machine.stop,
                f"--vcpus {vcpus} needs as many replicas (there are {self.replica.replicas}): "
                "each vCPU runs on its own replica",
            )
            return
        if self.disk_error:
            await self.replica.submit(Machine.stop, self.disk_error)
            return
        size = options["memory"] << 20
        try:
            image = await asyncio.to_thread(Path(options["guest"]).read_bytes)
        except OSError as exc:
            await self.replica.submit(Machine.stop, f"cannot read the guest image: {exc}")
            return
        if IMAGE_BASE + len(image) > size:
            await self.replica.submit(
                Machine.stop,
                f"the guest image ({len(image)} bytes) does not fit in {size >> 20} MiB",
            )
            return
        fd = os.memfd_create("dominoes-vmm-ram", 0)
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        memory[IMAGE_BASE : IMAGE_BASE + len(image)] = image
        if options["mode"] == "long":
            kvm.write_identity_map(memory, PAGE_TABLES)
        self.memory, self.memory_fd = memory, fd
        log.info(
            "vmm: image %s (%d bytes, sha256 %s)",
            options["guest"],
            len(image),
            hashlib.sha256(image).hexdigest()[:16],
        )
        disk = self.replica.component(Disk)
        if disk.fd >= 0:
            await self.replica.submit(Disk.attach, os.fstat(disk.fd).st_size)
        await self.replica.submit(Machine.boot, vcpus, size, os.getpid(), fd, options["mode"])

    # --- the control topic --------------------------------------------------------------

    async def _follow(self, control: Any) -> None:
        try:
            async for what, arg in control:
                if what == "start":
                    self._start_vcpu()
                elif what == "irq":
                    if self.runner is not None and arg == self.runner.index:
                        self.runner.notify_irq()
                elif what in ("stop", "halted"):
                    self._stop_vcpu()
        except SlowSubscriberError:  # cannot happen at this size; stop rather than hang
            await self.replica.submit(Machine.stop, "the VMM's control messages overflowed")

    def _start_vcpu(self) -> None:
        replica, machine = self.replica, self.machine
        index = replica.index
        if index >= machine.vcpus:
            return  # no vCPU here: this replica holds the device state only
        try:
            self._attach_memory()
            assert self.memory is not None
            self.kvm = kvm.Kvm()
            self.vm = kvm.Vm(self.kvm, self.memory)
            self.vcpu = self.vm.vcpu(index)
            stack, args = STACK_TOP - index * STACK_SIZE, (index, machine.vcpus)
            if machine.mode == "long":
                self.vcpu.enter_long_mode(
                    entry=IMAGE_BASE, stack=stack, page_tables=PAGE_TABLES, args=args
                )
            else:
                self.vcpu.enter_protected_mode(entry=IMAGE_BASE, stack=stack, args=args)
        except OSError as exc:
            self._submit(Machine.fault, index, f"cannot create the vCPU: {exc}")
            return
        self.runner = VcpuRunner(
            self.vcpu, index, self.loop, self._on_request, lambda: machine.next_vector(index)
        )
        machine.runner = self.runner
        self.runner.start()

    def _attach_memory(self) -> None:
        machine = self.machine
        if self.memory is None:
            path = f"/proc/{machine.memory_pid}/fd/{machine.memory_fd}"
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self.memory = mmap.mmap(fd, machine.memory_size)
            self.memory_fd = fd
        machine.memory = self.memory  # for devices plugged in later
        for name in machine.devices:
            device: Device = self.replica.component(name)
            device.memory = self.memory

    def _on_request(self, kind: str, args: tuple[Any, ...]) -> None:
        runner = self.runner
        assert runner is not None
        if kind == EXIT:
            self._submit(Machine.exit, runner.index, *args)
        elif kind == HALTED:
            self._submit(Machine.halted, runner.index)
        elif kind == FAULT:
            self._submit(Machine.fault, runner.index, args[0])

    def _submit(self, event: Any, *args: Any) -> None:
        try:
            self.replica.submit_nowait(event, *args).add_done_callback(self._consume)
        except LogFullError:  # backpressure: the vCPU waits for room
            self._spawn(self.replica.submit(event, *args))

    def _consume(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            log.error("vmm: an exit's entry failed: %r", exc)

    def _device_failed(self, reason: str) -> None:
        self._submit(Machine.stop, reason)

    def _stop_vcpu(self) -> None:
        if self.runner is not None:
            self.runner.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the console --------------------------------------------------------------------

    async def _open_console(self, where: str) -> None:
        lines = self.state.subscribe(CONSOLE, maxsize=1 << 16)
        if where.startswith("file:"):
            try:
                self.console_file = open(where[5:], "a", buffering=1, encoding="utf-8")  # noqa: SIM115, ASYNC230 - once, at start
            except OSError as exc:
                log.error("vmm: cannot open the console %s (%s); printing to stdout", where, exc)
        elif where.startswith("tcp:"):
            server = await asyncio.start_server(
                self._console_client, self.replica.host, int(where[4:]), reuse_address=True
            )
            self._spawn(server.serve_forever())
        self._spawn(self._print(lines))

    async def _print(self, lines: Any) -> None:
        while True:
            try:
                async for line in lines:
                    self._write_line(line)
                return
            except SlowSubscriberError:
                self._write_line("[vmm: console lines were lost: the console fell behind]")

    def _write_line(self, line: str) -> None:
        data = line + "\n"
        if self.console_file is not None:
            self.console_file.write(data)
        elif self.console_clients:
            for writer in list(self.console_clients):
                writer.write(data.encode())
        elif not self.replica.options["console"].startswith("tcp:"):
            sys.stdout.write(data)
            sys.stdout.flush()

    async def _console_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # what the guest printed before this client came, then what it prints
        for line in self.replica.component(Uart).tail:
            writer.write((line + "\n").encode())
        self.console_clients.add(writer)
        try:
            while data := await reader.read(4096):
                await self.replica.submit(Uart.receive, data)
        except (ConnectionError, OSError):
            pass
        finally:
            self.console_clients.discard(writer)
            writer.close()

    # --- reports ------------------------------------------------------------------------

    def report(self, detail: str | None) -> Any:
        machine = self.machine
        if detail == "console":
            return list(self.replica.component(Uart).tail)
        if detail is not None:
            return {"error": f"unknown detail {detail!r}: try 'console'"}
        out: dict[str, Any] = machine.describe()
        for name in machine.devices:
            out[name] = self.replica.component(name).describe()
        runner = self.runner
        out["local"] = {
            "vcpu": runner.index if runner else None,
            "thread_exits": runner.exits if runner else 0,
            "kicks": runner.kicks if runner else 0,
            "injected": runner.injected if runner else 0,
            "round_trips": runner.round_trips if runner else 0,
            "latency": runner.latency() if runner else {"sampled": 0},
            "running": bool(runner and not runner.stopped.is_set()),
        }
        return out


async def start(replica: Replica) -> None:
    """``on_start``: this replica's VM side."""
    if why := kvm.available():
        # the service stays up, with the reason in its report and its log
        log.error("vmm: replica %d cannot use KVM: %s", replica.index, why)
        if replica.component(Machine).phase == "new":
            await replica.submit(Machine.stop, f"KVM is not usable here: {why}")
        return
    vmm = Vmm(replica)
    replica.vmm = vmm  # type: ignore[attr-defined]  # for the monitor and tests
    await vmm.start()


def compose(name: str = "vmm", devices: Iterable[Device] = (), **service_kwargs: Any) -> Service:
    """A VMM service with the standard devices plus ``devices`` (your own models).

    A device's ports and MMIO range must not overlap another's.
    """
    standard: list[Device] = [Uart(), Timer(), Counter(), Mailbox(), Disk()]
    all_devices = [*standard, *devices]
    taken: dict[int, str] = {}
    for device in all_devices:
        if device.ports is not None:
            first, count = device.ports
            for port in range(first, first + count):
                if port in taken:
                    raise ValueError(f"port 0x{port:x}: {device.name} and {taken[port]} overlap")
                taken[port] = device.name
    machine = Machine(tuple(d.name for d in all_devices))
    service_kwargs.setdefault("on_start", start)
    service_kwargs.setdefault("options", OPTIONS)
    service_kwargs.setdefault("serves", "KVM (console: --console)")
    return Service(name, [machine, *all_devices], **service_kwargs)


#: ``dominoes run dominoes.components.vmm:service --guest kernel.bin``
service: Final = compose()
