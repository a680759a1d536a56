"""The KVM VMM's exits: replicated device models against one lock, and bare KVM.

    python benchmarks/vmm.py [--repeat R] [--exits N] [--configs a,b,...]
                             [--json PATH] [--timeout S]

The guest: a flat binary assembled here (``as --32``, then ``ld -m elf_i386
-Ttext=0x100000 --oformat=binary``) from :data:`GUEST`: every vCPU writes 1 to
the counter's port (``outl %eax, %dx``, dx = 0x510) ``--exits`` times
(default 200,000), then ``cli; hlt``.  Each write is one KVM port-I/O exit
handled by the VMM; nothing else exits (HLT ends the vCPU).  The count is in
the image: the service starts vCPU i with EDI = i and ESI = the vCPU count.

Configurations (``--configs``; all by default):

``dominoes_1`` / ``dominoes_2``
    ``dominoes run dominoes.components.vmm:service --guest IMAGE --vcpus N
    --replicas N --console file:/dev/null``: one replica per vCPU, each its
    own single-vCPU KVM VM, all sharing the guest RAM (a memfd).  An exit is a
    log entry (``Machine.exit``) that every replica applies to its copy of the
    device registers, and the vCPU's own replica completes.  Time: the
    machine's ``seconds``, replicated time from the ``boot`` entry to the
    ``halted`` one (it includes each replica creating its VM and vCPU, a few
    ms).  Latency: each replica's ``local.latency``, the round trip of its
    own vCPU's exits (hand-off to the event loop until resumed), every 16th
    exit, the last 4096 such samples.
``locked_2``
    the lock-based design the research compares against: this process, ONE
    KVM VM with 2 vCPUs (the same ``_kvm`` binding, the same RAM layout, image
    and stacks), each vCPU run by its own thread pinned to core i, the same
    device model classes (``dominoes.components.vmm.Counter`` and the other
    standard port devices, on the same port map) called directly under ONE
    ``threading.Lock`` with a stand-in for the replicated context.  Time: from
    the threads' start (a barrier) to the last vCPU's HLT.  Latency: the lock,
    the decode and the device call (``perf_counter_ns``), sampled as the
    service samples.
``locked_1``
    the same with one vCPU thread (a reference).
``raw_1``
    one vCPU, one thread, no device work and no lock: ``KVM_RUN`` again at
    once after each exit.  The upper bound for this machine's KVM (nested,
    on the reference machine).

exits/s is the exits of all vCPUs over the time; CPU is utime+stime of the
process tree (for ``dominoes_*``: supervisor and replicas, between the first
moment every replica answers ``stats`` and the halt, per exit handled in that
window; for ``locked_*``/``raw_1``: this process over the run), reported as
µs of CPU per exit.  "busy elsewhere" is the CPU other processes (and the
hypervisor) used meanwhile, in % of all cores; reported, runs are not rerun.

Rounds are interleaved: round r runs every configuration once, in an order
rotated by r; the table gives medians over ``--repeat`` (default 3) rounds.
Ratios (of the exits/s medians): dominoes_2/dominoes_1, dominoes_2/locked_2,
dominoes_1/locked_1, locked_2/locked_1, dominoes_1/raw_1; reported, never
judged.  ``--json PATH`` writes ``{"configs": {name: {...}}, "ratios": {...},
"meta": {...}}``.  Exit status 1 when a run failed (a VM that stopped, did
not halt in ``--timeout``, or counted other than N exits per vCPU), 0
otherwise, and 0 with a message when KVM, ``as`` or ``ld`` is missing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import mmap
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dominoes.components.vmm import (  # noqa: E402
    IMAGE_BASE,
    Counter,
    Device,
    DeviceError,
    Disk,
    Timer,
    Uart,
    available,
)
from dominoes.components.vmm import _kvm as kvm  # noqa: E402
from dominoes.components.vmm._machine import KIND_NAMES  # noqa: E402
from dominoes.components.vmm._service import STACK_SIZE, STACK_TOP  # noqa: E402
from dominoes.components.vmm._vcpu import SAMPLE_EVERY, SAMPLES  # noqa: E402

from benchmarks.kv import (  # noqa: E402
    _machine_busy,
    _median,
    _own_cpu,
    _round,
    free_port,
    git_head,
    log,
    tree_cpu,
)
from dominoes import Context  # noqa: E402

CONFIGS: Final = ("dominoes_1", "dominoes_2", "locked_1", "locked_2", "raw_1")
VCPUS: Final = {"dominoes_1": 1, "dominoes_2": 2, "locked_1": 1, "locked_2": 2, "raw_1": 1}
DESCRIPTIONS: Final = {
    "dominoes_1": "dominoes run, 1 vCPU on 1 replica",
    "dominoes_2": "dominoes run, 2 vCPUs on 2 replicas",
    "locked_1": "1 process, 1 VM, 1 vCPU thread, devices under one lock",
    "locked_2": "1 process, 1 VM, 2 vCPU threads, devices under one lock",
    "raw_1": "1 vCPU thread, KVM_RUN again at once (no device work)",
}
RATIOS: Final = (
    ("dominoes_2", "dominoes_1"),
    ("dominoes_2", "locked_2"),
    ("dominoes_1", "locked_1"),
    ("locked_2", "locked_1"),
    ("dominoes_1", "raw_1"),
)
TARGET: Final = "dominoes.components.vmm:service"
#: the guest RAM, as the service's default --memory
MEMORY: Final = 16 << 20
#: the counter's port
COUNTER_PORT: Final = 0x510

#: the guest (GNU as, 32-bit): EXITS is given with --defsym
GUEST: Final = """\
    .code32
    .text
    .globl _start
_start:
    movl $EXITS, %ecx
    movw $0x510, %dx
    movl $1, %eax
    testl %ecx, %ecx
    jz 2f
1:
    outl %eax, %dx
    decl %ecx
    jnz 1b
2:
    cli
    hlt
    jmp 2b
"""


def build_guest(directory: Path, exits: int) -> Path:
    """Assemble and link the guest: a flat binary whose first byte is its entry."""
    source, obj, image = directory / "guest.s", directory / "guest.o", directory / "guest.bin"
    source.write_text(GUEST)
    for argv in (
        ["as", "--32", f"--defsym=EXITS={exits}", "-o", str(obj), str(source)],
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "--oformat=binary", "-e", "_start",
         "-o", str(image), str(obj)],
    ):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return image


def why_not() -> str | None:
    """Why the benchmark cannot run here, or None."""
    if why := available():
        return f"KVM is not usable here: {why}"
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (binutils): the guest is assembled at run time"
    return None


def machine_facts() -> dict[str, Any]:
    flags = model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = line
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    return {
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        # a guest of a hypervisor: its KVM is nested
        "nested": " hypervisor" in flags,
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


@dataclass
class Sample:
    """One run of one configuration."""

    exits: int = 0
    seconds: float = 0.0
    #: per vCPU: sampled, p50_us, p99_us, max_us
    latency: list[dict[str, float]] = field(default_factory=list)
    cpu_us_per_exit: float | None = None
    busy_elsewhere: float | None = None
    error: str | None = None

    @property
    def exits_s(self) -> float | None:
        return self.exits / self.seconds if self.seconds > 0 and not self.error else None

    def percentile(self, key: str) -> float | None:
        """The mean over vCPUs of their ``key`` (p50_us, p99_us)."""
        got = [float(lat[key]) for lat in self.latency if key in lat]
        return sum(got) / len(got) if got else None


def _latency(samples: collections.deque[int]) -> dict[str, float]:
    """As the service's runner reports it (``VcpuRunner.latency``)."""
    ordered = sorted(samples)
    if not ordered:
        return {"sampled": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 1)

    return {"sampled": len(ordered), "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0)}


def _busy(machine: float, own: float, window: float) -> float:
    foreign = machine - own
    return max(0.0, 100.0 * foreign / (max(window, 1e-6) * (os.cpu_count() or 1)))


# -- the lock-based VMM (and bare KVM) ------------------------------------------


class StandIn:
    """The least of a replicated ``Context`` a device's read and write may use.

    The counter uses none of it; ``effect`` runs at once (this process is the
    owner of every exit), ``publish`` goes nowhere.
    """

    seq = 0

    def __init__(self) -> None:
        self.now = time.time()

    def effect(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def publish(self, *args: Any) -> None:
        pass


def run_locked(image: bytes, vcpus: int, *, devices: bool = True) -> Sample:
    """One KVM VM with ``vcpus`` vCPU threads in this process; device calls under one lock.

    ``devices=False``: no device work and no lock (``raw``).
    """
    fd = os.memfd_create("vmm-bench-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, MEMORY)
    memory = mmap.mmap(fd, MEMORY)
    memory[IMAGE_BASE : IMAGE_BASE + len(image)] = image
    handle = kvm.Kvm()
    vm = kvm.Vm(handle, memory)
    cpus = [vm.vcpu(i) for i in range(vcpus)]
    for i, vcpu in enumerate(cpus):
        vcpu.enter_protected_mode(
            entry=IMAGE_BASE, stack=STACK_TOP - i * STACK_SIZE, args=(i, vcpus)
        )
    stand_in = StandIn()
    ctx = cast(Context, stand_in)
    # the standard port devices, on the service's port map (only the counter is used)
    bus: list[Device] = [Uart(), Timer(), Counter(), Disk()]
    ports: dict[int, tuple[Device, int]] = {}
    for device in bus:
        device.reset(ctx, vcpus)
        if device.ports is not None:
            first, count = device.ports
            for port in range(first, first + count):
                ports[port] = (device, port - first)
    exits = dict.fromkeys(KIND_NAMES, 0)
    lock = threading.Lock()
    cores = sorted(os.sched_getaffinity(0))
    barrier = threading.Barrier(vcpus + 1)
    ended = [0.0] * vcpus
    handled = [0] * vcpus
    samples: list[collections.deque[int]] = [collections.deque(maxlen=SAMPLES) for _ in cpus]
    errors: list[str] = []

    def thread(index: int) -> None:
        os.sched_setaffinity(0, {cores[index % len(cores)]})  # this thread only
        vcpu = cpus[index]
        run = vcpu.run_struct
        mine = samples[index]
        n = 0
        barrier.wait()
        try:
            while True:
                reason = vcpu.run()
                if reason == kvm.EXIT_IO:
                    n += 1
                    if not devices:
                        continue
                    io = run.exit.io
                    size, count, port = int(io.size), int(io.count), int(io.port)
                    out = io.direction == kvm.IO_OUT
                    data = bytes(vcpu.io_data(size, count)) if out else b""
                    sample = not n % SAMPLE_EVERY
                    began = time.perf_counter_ns() if sample else 0
                    with lock:
                        hit = ports.get(port)
                        if hit is None:
                            raise RuntimeError(f"vCPU {index}: port 0x{port:x}, where no device is")
                        device, offset = hit
                        exits[KIND_NAMES[int(io.direction)]] += 1
                        result = device.access(ctx, index, offset, size, count, data, out)
                    if sample:
                        mine.append(time.perf_counter_ns() - began)
                    if not out:
                        vcpu.io_data(size, count)[:] = result
                elif reason == kvm.EXIT_HLT and not run.if_flag:
                    break
                elif reason in (kvm.EXIT_IRQ_WINDOW_OPEN, kvm.EXIT_INTR):
                    continue
                else:
                    raise RuntimeError(f"vCPU {index}: exit {kvm.EXIT_NAMES.get(reason, reason)}")
        except (RuntimeError, OSError, DeviceError) as exc:  # the run's error
            errors.append(str(exc))
        ended[index] = time.perf_counter()
        handled[index] = n

    threads = [threading.Thread(target=thread, args=(i,), name=f"vcpu-{i}") for i in range(vcpus)]
    try:
        for t in threads:
            t.start()
        busy0, cpu0 = _machine_busy(), _own_cpu()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = max(ended) - t0
        cpu, busy = _own_cpu() - cpu0, _machine_busy() - busy0
    finally:
        for vcpu in cpus:
            vcpu.close()
        vm.close()
        handle.close()
        memory.close()
        os.close(fd)
    total = sum(exits.values()) if devices else sum(handled)
    counter = cast(Counter, bus[2])
    if devices and not errors and counter.value != total:
        errors.append(f"the counter reads {counter.value} after {total} exits")
    return Sample(
        exits=total,
        seconds=seconds,
        latency=[_latency(s) for s in samples] if devices else [],
        cpu_us_per_exit=cpu / total * 1e6 if total else None,
        busy_elsewhere=_busy(busy, cpu, seconds),
        error="; ".join(errors) or None,
    )


# -- the service ----------------------------------------------------------------


def ask(run_dir: Path, index: int, op: str = "stats") -> Any:
    """Replica ``index``'s answer to ``op`` over its control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(run_dir / f"replica-{index}.sock"))
        s.sendall(json.dumps({"op": op}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def vmm_reports(run_dir: Path, replicas: int) -> list[dict[str, Any]] | None:
    """Every replica's ``vmm`` report, or None while one of them cannot answer yet."""
    try:
        return [ask(run_dir, i)["reports"]["vmm"] for i in range(replicas)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_dominoes(image: Path, vcpus: int, workdir: Path, timeout: float) -> Sample:
    run_dir = Path(tempfile.mkdtemp(prefix=f"dominoes_{vcpus}-", dir=workdir))
    argv = [
        sys.executable, "-m", "dominoes", "run", TARGET,
        "--replicas", str(vcpus), "--vcpus", str(vcpus), "--guest", str(image),
        "--console", "file:/dev/null", "--port", str(free_port()),
        "--run-dir", str(run_dir), "--log-level", "WARNING",
    ]  # fmt: skip
    log_path = run_dir / "service.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail() -> str:
        with contextlib.suppress(OSError):
            return log_path.read_bytes()[-1500:].decode(errors="replace")
        return ""

    try:
        deadline = time.monotonic() + timeout
        first: tuple[float, int, float, float, float] | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}: {tail()}")
            reports = vmm_reports(run_dir, vcpus)
            if reports is not None:
                if first is None:  # (tree CPU, exits so far, machine busy, own CPU, when)
                    done = sum(int(r["local"]["round_trips"]) for r in reports)
                    first = (tree_cpu(proc.pid)[0], done, _machine_busy(), _own_cpu(),
                             time.monotonic())  # fmt: skip
                phases = {r["phase"] for r in reports}
                if phases == {"halted"}:
                    break
                if "stopped" in phases:
                    reasons = {r["stop_reason"] for r in reports}
                    raise RuntimeError(f"the VM stopped: {'; '.join(sorted(reasons))}")
            if time.monotonic() > deadline:
                seen = [r["phase"] for r in reports] if reports else "no answer"
                raise RuntimeError(
                    f"the VM did not halt in {timeout:g} s (phases: {seen}): {tail()}"
                )
            time.sleep(0.1)
        cpu1, busy1, own1, t1 = tree_cpu(proc.pid)[0], _machine_busy(), _own_cpu(), time.monotonic()
        assert first is not None
        cpu0, done0, busy0, own0, t0 = first
        done1 = sum(int(r["local"]["round_trips"]) for r in reports)
        counts = [sum(int(v) for v in r["exits"].values()) for r in reports]
        if len(set(counts)) != 1:
            raise RuntimeError(f"the replicas counted different exits: {counts}")
        values = {int(r["counter"]["value"]) for r in reports}
        if values != {counts[0]}:
            raise RuntimeError(f"the counter reads {sorted(values)} after {counts[0]} exits")
        window = done1 - done0
        return Sample(
            exits=counts[0],
            seconds=float(reports[0]["seconds"]),
            latency=[dict(r["local"]["latency"]) for r in reports],
            # too few exits after the first answer: no figure rather than noise
            cpu_us_per_exit=(cpu1 - cpu0) / window * 1e6 if window >= 1000 else None,
            busy_elsewhere=_busy(busy1 - busy0 - (own1 - own0), cpu1 - cpu0, t1 - t0),
        )
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait; then SIGKILL what is left of its process group (it leads its own)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            log(f"  warning: the service (pid {proc.pid}) ignored SIGTERM for 20 s; killing it")
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- the benchmark --------------------------------------------------------------


def run_one(name: str, image: Path, workdir: Path, timeout: float) -> Sample:
    vcpus = VCPUS[name]
    try:
        if name.startswith("dominoes"):
            return run_dominoes(image, vcpus, workdir, timeout)
        return run_locked(image.read_bytes(), vcpus, devices=not name.startswith("raw"))
    except (OSError, RuntimeError) as exc:
        return Sample(error=f"{type(exc).__name__}: {exc}")


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--exits", type=int, default=200_000, help="exits per vCPU (200,000)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)} (all)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results there as JSON")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds a service run may take to halt"
    )
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.repeat < 1 or not 1 <= args.exits < 1 << 31:
        parser.error("--repeat is at least 1, --exits from 1 to 2**31-1")
    if why := why_not():
        print(f"vmm benchmark skipped: {why}")
        return 0
    # a generous bound: nested KVM does ~10k exits/s per vCPU in the slowest case
    timeout = args.timeout or 60.0 + 2 * args.exits / 5_000
    facts = machine_facts()
    commit = git_head()
    log(
        f"vmm: {args.exits:,} exits per vCPU, {args.repeat} round(s); {facts['nproc']} cores, "
        f"{'nested' if facts['nested'] else 'bare-metal'} KVM, {facts['cpu']}, at {commit}"
    )
    runs: dict[str, list[Sample]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        workdir = Path(tmp)
        image = build_guest(workdir, args.exits)
        for r in range(args.repeat):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for name in order:
                got = run_one(name, image, workdir, timeout)
                runs[name].append(got)
                if got.error:
                    log(f"  round {r + 1} {name:11s} FAILED: {got.error[:600]}")
                    continue
                expected = args.exits * VCPUS[name]
                if got.exits != expected:
                    got.error = f"{got.exits} exits, not {expected}"
                    log(f"  round {r + 1} {name:11s} FAILED: {got.error}")
                    continue
                log(
                    f"  round {r + 1} {name:11s} {_fmt(got.exits_s, ',.0f'):>9s} exits/s  "
                    f"p50 {_fmt(got.percentile('p50_us'), '.1f'):>6s} µs  "
                    f"p99 {_fmt(got.percentile('p99_us'), '.1f'):>6s} µs  "
                    f"cpu {_fmt(got.cpu_us_per_exit, '.1f'):>6s} µs/exit  "
                    f"busy elsewhere {_fmt(got.busy_elsewhere, '.0f')}%"
                )

    results: dict[str, dict[str, Any]] = {}
    for name, samples in runs.items():
        good = [s for s in samples if not s.error]
        rate = _median([s.exits_s for s in good])
        results[name] = {
            "description": DESCRIPTIONS[name],
            "vcpus": VCPUS[name],
            "exits": good[0].exits if good else None,
            "expected_exits": args.exits * VCPUS[name],
            "exits_s": _round(rate, 1),
            "exits_s_per_vcpu": _round(None if rate is None else rate / VCPUS[name], 1),
            "p50_us": _round(_median([s.percentile("p50_us") for s in good]), 1),
            "p99_us": _round(_median([s.percentile("p99_us") for s in good]), 1),
            "cpu_us_per_exit": _round(_median([s.cpu_us_per_exit for s in good]), 2),
            "exits_s_runs": [_round(s.exits_s, 1) for s in samples],
            "seconds_runs": [_round(s.seconds, 6) if not s.error else None for s in samples],
            "latency_runs": [s.latency for s in samples],
            "busy_elsewhere_pct_runs": [_round(s.busy_elsewhere, 1) for s in samples],
            "failed_runs": len(samples) - len(good),
            "errors": [s.error for s in samples if s.error],
        }
    ratios: dict[str, float | None] = {}
    for num, den in RATIOS:
        a = results.get(num, {}).get("exits_s")
        b = results.get(den, {}).get("exits_s")
        ratios[f"{num}/{den}"] = _round(a / b, 3) if a and b else None
    failures = sum(r["failed_runs"] for r in results.values())
    out = {
        "configs": results,
        "ratios": ratios,
        "meta": {
            "exits_per_vcpu": args.exits,
            "repeat": args.repeat,
            "commit": commit,
            "machine": facts,
            "latency": f"per vCPU, every {SAMPLE_EVERY}th exit, the last {SAMPLES}; "
            "p50/p99 in the table: the mean over the vCPUs",
            "failures": failures,
        },
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"\n{args.exits:,} exits per vCPU, medians of {args.repeat} round(s); "
        f"{facts['nproc']} cores, {'nested' if facts['nested'] else 'bare-metal'} KVM, "
        f"at {commit}\n"
    )
    print("| config | exits/s | exits/s per vCPU | p50 µs | p99 µs | CPU µs/exit |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        print(
            f"| {name} | {_fmt(res['exits_s'], ',.0f')} | {_fmt(res['exits_s_per_vcpu'], ',.0f')} "
            f"| {_fmt(res['p50_us'], '.1f')} | {_fmt(res['p99_us'], '.1f')} "
            f"| {_fmt(res['cpu_us_per_exit'], '.1f')} |"
        )
    print()
    for key, value in ratios.items():
        print(f"{key:22s} {_fmt(value, '.3f')}")
    if failures:
        print(f"\n{failures} run(s) failed: see the errors above")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
