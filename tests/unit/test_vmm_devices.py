"""The VMM's machine and device models as replicated state, without KVM.

Exits are submitted the way a vCPU's replica submits them (``Machine.exit``
from the vCPU's own replica), to a ``Cluster`` of replicas in this process;
every replica must end with the same registers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from dominoes.components.vmm import (
    IO_IN,
    IO_OUT,
    MMIO_READ,
    MMIO_WRITE,
    Counter,
    Device,
    Machine,
    Mailbox,
    Timer,
    Uart,
    compose,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from dominoes import Context
from dominoes.testing import Cluster

MEMORY = 16 << 20


def booted(replicas: int = 2, vcpus: int = 2, devices: tuple[Device, ...] = ()) -> Cluster:
    cluster = Cluster(compose("vmm-test", devices), replicas=replicas)
    assert cluster.call(0, Machine.boot, vcpus, MEMORY, 0, 0) is True
    return cluster


def out(cluster: Cluster, vcpu: int, port: int, value: int, size: int = 4) -> Any:
    return cluster.call(
        vcpu, Machine.exit, vcpu, IO_OUT, port, size, 1, value.to_bytes(size, "little")
    )


def inp(cluster: Cluster, vcpu: int, port: int, size: int = 4) -> int:
    got = cluster.call(vcpu, Machine.exit, vcpu, IO_IN, port, size, 1, b"")
    assert got is not None
    return int.from_bytes(got, "little")


def machine(cluster: Cluster, replica: int = 0) -> Machine:
    component: Machine = cluster[replica].component(Machine)
    return component


def test_the_counter_and_the_mailbox_are_one_state() -> None:
    cluster = booted()
    for vcpu in (0, 1, 0):
        out(cluster, vcpu, 0x510, 5)
    assert inp(cluster, 1, 0x510) == 15
    assert inp(cluster, 0, 0x514) == 0
    cluster.call(0, Machine.exit, 0, MMIO_WRITE, 0xD0000000, 4, 1, (7).to_bytes(4, "little"))
    cluster.call(1, Machine.exit, 1, MMIO_WRITE, 0xD0000000, 4, 1, (9).to_bytes(4, "little"))
    taken = cluster.call(1, Machine.exit, 1, MMIO_READ, 0xD0000000, 4, 1, b"")
    assert taken == (7).to_bytes(4, "little")
    cluster.assert_converged()
    assert [r.component(Mailbox).words for r in cluster] == [[9], [9]]


def test_uart_lines_are_published_once_in_log_order() -> None:
    cluster = booted()
    for vcpu, text in ((0, "hi 0\n"), (1, "hi 1\r\n")):
        for byte in text.encode():
            out(cluster, vcpu, 0x3F8, byte, size=1)
    assert inp(cluster, 0, 0x3FD, size=1) & 0x60 == 0x60  # THRE | TEMT
    cluster.assert_converged()
    for replica in cluster:
        assert replica.component(Uart).tail == ["hi 0", "hi 1"]
    cluster.call(1, Uart.receive, b"ab")
    assert inp(cluster, 0, 0x3FD, size=1) & 1 == 1
    assert [inp(cluster, 0, 0x3F8, size=1) for _ in range(3)] == [ord("a"), ord("b"), 0]


def test_an_access_no_device_decodes_stops_the_vm_everywhere() -> None:
    cluster = booted()
    assert out(cluster, 1, 0x1234, 1, size=1) is None
    cluster.assert_converged()
    for replica in range(2):
        m = machine(cluster, replica)
        assert m.phase == "stopped"
        assert m.stop_reason == "vCPU 1: 1-byte write to port 0x1234, where no device is"
        assert m.refused == 1
    # an exit that was on its way when the VM stopped changes nothing
    assert out(cluster, 0, 0x510, 1) is None
    assert cluster[1].component(Counter).value == 0


def test_a_register_a_device_lacks_stops_the_vm() -> None:
    cluster = booted()
    assert out(cluster, 0, 0x512, 1, size=2) is None
    assert "counter has no writable register at +0x2" in machine(cluster).stop_reason


def test_timer_ticks_raise_interrupts_through_the_log_until_acknowledged() -> None:
    cluster = booted()
    out(cluster, 1, 0x540, 5000)  # vCPU 1: a tick every 5 ms
    cluster.advance(0.006)
    cluster.advance(0.006)
    for replica in range(2):
        assert machine(cluster, replica).pending == [[], [0x20, 0x20]]
    out(cluster, 1, 0x544, 0)  # EOI
    assert inp(cluster, 1, 0x540) == 1
    out(cluster, 1, 0x540, 0)  # stop
    cluster.advance(0.05)
    cluster.assert_converged()
    assert machine(cluster).pending == [[], [0x20]]
    assert cluster[0].component(Timer).ticks == [0, 2]


def test_the_disk_refuses_out_of_range_commands_with_a_status() -> None:
    cluster = booted()
    cluster.call(0, Machine.boot, 2, MEMORY, 0, 0)  # a second boot is refused
    from dominoes.components.vmm import Disk

    cluster.call(0, Disk.attach, 64 * 512)
    out(cluster, 0, 0x560, 60)  # sector
    out(cluster, 0, 0x568, 8)  # count: past the end
    out(cluster, 0, 0x56C, 2)  # write
    assert inp(cluster, 0, 0x56C) == 2  # out of range
    out(cluster, 0, 0x56C, 9)
    assert inp(cluster, 0, 0x56C) == 1  # bad command
    assert inp(cluster, 1, 0x570) == 64
    cluster.assert_converged()


class Clock(Device):
    """The how-to's device: seconds of replicated time at ports 0x70-0x73."""

    name: ClassVar[str] = "clock"
    ports: ClassVar[tuple[int, int] | None] = (0x70, 4)

    def __init__(self) -> None:
        self.reads = 0

    def read(self, ctx: Context, vcpu: int, offset: int, size: int) -> int:
        self.reads += 1
        return int(ctx.now)


def test_a_device_of_your_own_joins_the_bus() -> None:
    cluster = booted(devices=(Clock(),))
    assert inp(cluster, 0, 0x70) == int(cluster.clock)
    cluster.assert_converged()
    with pytest.raises(ValueError, match="overlap"):
        compose("clash", (Clock(), type("Other", (Clock,), {"name": "other"})()))


WRITABLE = [(0x510, 4), (0x3F8, 1), (0x3FB, 1), (0x540, 4), (0x544, 4)]
READABLE = [(0x510, 4), (0x514, 4), (0x3F8, 1), (0x3FD, 1), (0x540, 4)]
EXITS = st.one_of(
    st.tuples(st.integers(0, 1), st.just(True), st.sampled_from(WRITABLE), st.integers(0, 0xFFFF)),
    st.tuples(st.integers(0, 1), st.just(False), st.sampled_from(READABLE), st.just(0)),
)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(EXITS, max_size=30),
    st.integers(1, 2),
)
def test_any_exits_leave_every_replica_with_the_same_devices(
    exits: list[tuple[int, bool, tuple[int, int], int]], killed: int
) -> None:
    """Random exits from both vCPUs, timers and a restarted replica: one state."""
    cluster = booted(replicas=3)
    for i, (vcpu, write, (port, size), value) in enumerate(exits):
        if port == 0x540 and write:
            value = value and 1000 + value  # periods of at least 1 ms
        if write:
            out(cluster, vcpu, port, value & ((1 << (8 * size)) - 1), size)
        else:
            inp(cluster, vcpu, port, size)
        if i == len(exits) // 2:
            cluster.kill(killed)
            cluster.advance(0.01)
            cluster.restart(killed)
            cluster.run_until(lambda: not cluster[killed].joining)
    cluster.advance(0.1)
    cluster.assert_converged()
    model = sum(v for _, w, (p, _), v in exits if w and p == 0x510)
    assert cluster[killed].component(Counter).value == model
    assert machine(cluster, killed).phase == "running"


def test_a_device_hot_plugged_through_the_log_goes_on_the_bus_of_a_running_vm() -> None:
    """``dominoes reconfigure vmm add dominoes.components.vmm:Rtc``: from that log
    position on, every replica routes its ports; removing it takes it off again."""
    from dominoes import reconfiguration

    cluster = booted(replicas=3)
    out(cluster, 0, 0x510, 7)
    name = cluster.call(
        1, reconfiguration.EVENT, reconfiguration.add("dominoes.components.vmm:Rtc")
    )
    assert name == "rtc"
    assert inp(cluster, 1, 0x70) == int(cluster.clock)
    assert inp(cluster, 0, 0x74) == 0
    cluster.assert_converged()
    for replica in cluster:
        assert replica.component(Machine).devices[-1] == "rtc"
    # a replica that joins now gets the device on its bus from the snapshot
    cluster.kill(2)
    cluster.restart(2)
    cluster.run_until(lambda: not cluster[2].joining)
    got = cluster.call(2, Machine.exit, 1, IO_IN, 0x70, 4, 1, b"")  # vCPU 1's exit, via 2
    assert got == int(cluster.clock).to_bytes(4, "little")
    assert cluster[2].component(Machine).devices[-1] == "rtc"
    cluster.call(0, reconfiguration.EVENT, reconfiguration.remove("rtc"))
    # no device decodes 0x70 any more: the VM stops
    assert cluster.call(0, Machine.exit, 0, IO_IN, 0x70, 4, 1, b"") is None
    assert "0x70, where no device is" in machine(cluster, 2).stop_reason
    cluster.assert_converged()


def test_a_hot_plugged_device_whose_ports_clash_stays_off_the_bus() -> None:
    from dominoes import reconfiguration

    cluster = booted(devices=(Clock(),))
    cluster.call(0, reconfiguration.EVENT, reconfiguration.add("dominoes.components.vmm:Rtc"))
    for replica in cluster:
        m = replica.component(Machine)
        assert "rtc" not in m.devices
        assert "overlap clock's" in m.refused_devices["rtc"]
    assert inp(cluster, 0, 0x70) == int(cluster.clock)  # still the clock's port
    cluster.assert_converged()


@pytest.mark.parametrize(
    ("count", "data"),
    [(0, b""), (4097, b""), (2, b"\x01\x00\x00\x00")],  # none; over a page; short data
)
def test_an_exit_no_kvm_could_make_is_refused_at_once(count: int, data: bytes) -> None:
    """A crafted exit entry (a count past a page of string I/O, data shorter than
    it says) stops the VM in one step: no device runs a billion accesses."""
    cluster = booted()
    kind = IO_OUT if data else IO_IN
    size = 4 if data else 1
    assert cluster.call(0, Machine.exit, 0, kind, 0x510, size, count, data) is None
    assert "malformed exit" in machine(cluster, 1).stop_reason
    assert cluster[1].component(Counter).adds == 0
    cluster.assert_converged()
