"""One producer process, one consumer process: dominoes' log against three channels.

    python benchmarks/channel.py [--messages N] [--latency-messages M] [--repeat R]
                                 [--quick] [--json] [--transports a,b,...]
                                 [--pace sleep|spin] [--gap-us US] [--no-pin]
                                 [--busy-limit PCT] [--capacity SLOTS]

See benchmarks/README.md for how to read the figures.

Every transport carries the same 63-byte msgspec msgpack ``Struct(array_like=True)``
(seq, a ``perf_counter_ns`` send stamp, an event name, two small arguments),
encoded by the producer and decoded by the consumer, between two processes
started with the ``spawn`` context.  Each child pins itself with
``os.sched_setaffinity`` first thing (producer on the first allowed core,
consumer on the second when there are two), so threads a library starts later
(pyzmq's I/O thread, ``multiprocessing.Queue``'s feeder) share their process's
core.

Transports
----------
``dominoes``
    A :class:`~dominoes.lowlevel.SharedLog` (memfd) with the default
    shape.  The producer appends with ``Log.try_append`` (backing off like
    ``Replica.submit`` when the log is full), then calls ``Log.wake_list`` and
    writes the consumer's eventfd only if its asleep flag is set.  The
    consumer runs a uvloop loop with ``add_reader(eventfd)`` and does what
    ``Replica._drain`` / ``ReplicaCore.poll`` do, minus the handler: batches
    of at most 256 entries up to the tail observed at the start, for each
    ``read`` (a copy), ``claim`` and decode, one ``advance`` per batch, then
    the sleep protocol (flag seq_cst, re-check, wait on the eventfd) with a
    5 ms safety timer.
``mp_queue``
    ``multiprocessing.Queue``: ``put(bytes)`` / ``get()``.
``faster_fifo``
    ``faster_fifo.Queue``: ``put`` per message, ``get_many`` in the consumer.
``pyzmq``
    PUSH/PULL over ``ipc://`` in a temporary directory; PULL binds before
    PUSH connects (connecting first costs 100-180 ms reconnect stalls).

Phases (one process pair per run)
---------------------------------
1. warm-up: 1,000 messages, acknowledged before anything is timed (connections
   made, caches and allocators warm);
2. throughput: N messages sent as fast as backpressure allows; msgs/s is N
   over the time from the first send stamp to the consumer's last receive;
3. latency: M messages sent about ``--gap-us`` apart (the producer sleeps, so
   the consumer is idle and, for dominoes, asleep on its eventfd each time);
   one-way latency is the consumer's ``perf_counter_ns`` (CLOCK_MONOTONIC,
   system-wide) at decode minus the stamp in the payload.

The consumer checks that every seq arrives once and in order.  Runs of all
transports are interleaved (the order rotates each repeat) and the table gives
medians over repeats of msgs/s and of each run's p50/p99.  Each run also
records the CPU other processes used meanwhile ("busy elsewhere"); a run above
``--busy-limit`` is run again (see ``RETRIES``).  Progress goes to stderr;
``--json`` prints exactly one JSON object on stdout.

Only unix-domain channels are used; the temporary directory, the memfd, the
eventfd and every queue are released after each run, and ``/dev/shm`` is
compared before and after the benchmark (a leftover is reported on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import reduction
from typing import Any, Final

import msgspec

from dominoes.lowlevel import (
    DEFAULT_BATCH,
    DEFAULT_CAPACITY,
    FULL_BACKOFF_MAX,
    FULL_BACKOFF_MIN,
    KIND_NOOP,
    SAFETY_TICK,
    SharedLog,
)

TRANSPORTS: Final = ("dominoes", "mp_queue", "faster_fifo", "pyzmq")
WARMUP: Final = 1_000
DEFAULT_MESSAGES: Final = 200_000
DEFAULT_LATENCY_MESSAGES: Final = 2_000
DEFAULT_REPEAT: Final = 5
DEFAULT_GAP_US: Final = 100.0
#: a run during which other processes used more than this % of the CPUs is run
#: again, at most RETRIES times (the last attempt is kept, and counted), and at
#: most RETRY_BUDGET times in the whole benchmark (so a busy machine cannot
#: stretch it indefinitely: then every run is kept and counted as disturbed)
DEFAULT_BUSY_LIMIT: Final = 10.0
RETRIES: Final = 3
RETRY_BUDGET: Final = 12
#: dominoes consumer: entries per poll (``ReplicaCore``'s); the safety re-check
#: while asleep and the producer's back-off while the log is full are
#: ``Replica``'s (SAFETY_TICK, FULL_BACKOFF_MIN/MAX), imported above
BATCH: Final = DEFAULT_BATCH
#: the replica lines the two sides use in the log
CONSUMER: Final = 0
PRODUCER: Final = 1


class Msg(msgspec.Struct, array_like=True, gc=False):
    """The payload: 63 bytes of msgpack for a 6-digit seq."""

    seq: int
    ts: int
    event: str
    key: str
    amount: int


EVENT: Final = "inventory.reserve_stock"
KEY: Final = "customer-000042-eu-w"


def payload_size() -> int:
    return len(msgspec.msgpack.encode(Msg(123_456, time.perf_counter_ns(), EVENT, KEY, 1234)))


# --- passing file descriptors to spawn children -----------------------------------------


def _rebuild_fd(dup: Any) -> Fd:
    return Fd(dup if isinstance(dup, int) else dup.detach())


class Fd:
    """A file descriptor that reaches a spawn child through ``reduction.DupFd``.

    While a spawn ``Process`` is being started, ``DupFd`` adds the fd to the
    child's ``pass_fds`` and the child sees it under the same number.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], Fd], tuple[Any]]:
        return _rebuild_fd, (reduction.DupFd(self.fd),)


# --- what every child shares ------------------------------------------------------------


@dataclass
class Plan:
    transport: str
    messages: int
    latency_messages: int
    gap_us: float
    spin: bool
    capacity: int
    core: int | None
    handle: Any  # the transport's picklable side (queue, fds, address)
    ctl: dict[str, Any] = field(default_factory=dict)  # events and the result pipe


def _pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


class Consumer:
    """Counts arrivals; raises if a seq is missing, repeated or out of order.

    The common path (a throughput message) is a decode, the order check and one
    compare, so the bookkeeping costs every transport the same few ns.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.decode = msgspec.msgpack.Decoder(Msg).decode
        self.expect = 0
        self.tp_end = WARMUP + plan.messages
        self.total = self.tp_end + plan.latency_messages
        #: the next seq that needs more than counting (a phase edge, a latency probe)
        self.mark = WARMUP - 1
        self.t_first = 0
        self.t_last = 0
        self.latencies: list[int] = []
        self.extra: dict[str, Any] = {}

    def on_message(self, payload: bytes) -> bool:
        """Handle one message; True once the last one has arrived."""
        msg = self.decode(payload)
        seq = msg.seq
        if seq != self.expect:
            raise RuntimeError(f"{self.plan.transport}: got seq {seq}, expected {self.expect}")
        self.expect = seq + 1
        if seq < self.mark:
            return False
        return self._edge(msg)

    def _edge(self, msg: Msg) -> bool:
        now = time.perf_counter_ns()
        seq = msg.seq
        if seq == WARMUP - 1:
            self.plan.ctl["warm"].set()
            self.mark = WARMUP
        elif seq == WARMUP:
            self.t_first = msg.ts
            self.mark = self.tp_end - 1
        elif seq == self.tp_end - 1:
            self.t_last = now
            self.plan.ctl["tp_done"].set()
            self.mark = self.tp_end
        else:
            self.latencies.append(now - msg.ts)
        return self.expect == self.total

    def report(self) -> None:
        self.plan.ctl["result"].send(
            {
                "elapsed_ns": self.t_last - self.t_first,
                "latencies_ns": self.latencies,
                **self.extra,
            }
        )


def _produce(plan: Plan, send: Callable[[bytes], None]) -> None:
    """The producer's three phases over ``send`` (which must not return before queueing)."""
    encode = msgspec.msgpack.Encoder().encode
    clock = time.perf_counter_ns
    ctl = plan.ctl
    for seq in range(WARMUP):
        send(encode(Msg(seq, clock(), EVENT, KEY, seq & 0xFFF)))
    ctl["warm"].wait()
    for seq in range(WARMUP, WARMUP + plan.messages):
        send(encode(Msg(seq, clock(), EVENT, KEY, seq & 0xFFF)))
    ctl["tp_done"].wait()
    time.sleep(0.01)
    gap = plan.gap_us / 1e6
    gap_ns = round(plan.gap_us * 1e3)
    start = WARMUP + plan.messages
    for seq in range(start, start + plan.latency_messages):
        if plan.spin:
            until = clock() + gap_ns
            while clock() < until:
                pass
        else:
            time.sleep(gap)
        send(encode(Msg(seq, clock(), EVENT, KEY, seq & 0xFFF)))


# --- dominoes ---------------------------------------------------------------------------


def dominoes_producer(plan: Plan) -> None:
    _pin(plan.core)
    log_fd, wake_fd = plan.handle
    shared = SharedLog.attach(log_fd.fd)
    log = shared.log()
    try_append, wake_list = log.try_append, log.wake_list
    write = os.eventfd_write
    efd = wake_fd.fd
    signals = 0
    refusals = 0

    def send(payload: bytes) -> None:
        nonlocal signals, refusals
        delay = FULL_BACKOFF_MIN
        while not try_append(PRODUCER, payload):
            refusals += 1
            time.sleep(delay)
            delay = min(delay * 2, FULL_BACKOFF_MAX)
        for _ in wake_list(CONSUMER + 1):
            write(efd, 1)
            signals += 1

    plan.ctl["p_ready"].set()
    plan.ctl["go"].wait()
    try:
        _produce(plan, send)
    finally:
        plan.ctl["presult"].send({"signals": signals, "refusals": refusals})
        shared.close()
        os.close(efd)


def dominoes_consumer(plan: Plan) -> None:
    import uvloop

    _pin(plan.core)
    log_fd, wake_fd = plan.handle
    efd = wake_fd.fd
    shared = SharedLog.attach(log_fd.fd)
    log = shared.log()
    log.join(CONSUMER, pid=os.getpid(), cursor=log.tail)
    log.set_live(CONSUMER)
    consumer = Consumer(plan)
    on_message = consumer.on_message
    read, claim, advance, published = log.read, log.claim, log.advance, log.published
    stats = {"wakeups": 0, "polls": 0, "sleeps": 0, "rescues": 0}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        cursor = log.cursor(CONSUMER)
        safety: asyncio.TimerHandle | None = None
        scheduled = False
        asleep = False

        def schedule() -> None:
            nonlocal scheduled
            if not scheduled:
                scheduled = True
                loop.call_soon(drain)

        def awake() -> None:
            nonlocal asleep
            if asleep:
                asleep = False
                log.set_asleep(CONSUMER, False)

        def drain() -> None:
            nonlocal scheduled
            scheduled = False
            if done.done():
                return
            try:
                drain_once()
            except Exception as exc:  # noqa: BLE001 - the loop would only log it; end the run
                done.set_exception(exc)

        def drain_once() -> None:
            # Replica._drain around ReplicaCore.poll, minus the handler.
            nonlocal asleep, cursor
            stats["polls"] += 1
            stop = log.tail
            budget = BATCH
            seq = start = cursor
            finished = False
            while budget and seq < stop:
                got = read(seq)
                if got is None:
                    break
                kind, nslots, payload = got
                if kind != KIND_NOOP:
                    claim(seq, CONSUMER)
                    finished = on_message(payload)
                seq += nslots
                budget -= 1
            if seq != start:
                cursor = seq
                advance(CONSUMER, seq)
            if finished:
                done.set_result(None)
                return
            if published(seq):
                schedule()
                return
            asleep = True
            stats["sleeps"] += 1
            log.set_asleep(CONSUMER, True)
            if published(seq):
                awake()
                schedule()

        def on_wake() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(efd)
            stats["wakeups"] += 1
            awake()
            schedule()

        def on_safety() -> None:
            nonlocal safety
            safety = loop.call_later(SAFETY_TICK, on_safety)
            if published(cursor):
                if asleep:
                    # Found by the timer while asleep.  Usually the signal is in
                    # flight (the eventfd is readable already); if not, either the
                    # producer is between publishing and signalling or the
                    # wake-up was lost: "rescues" counts those, and stays ~0.
                    try:
                        os.eventfd_read(efd)
                    except BlockingIOError:
                        stats["rescues"] += 1
                awake()
                schedule()

        loop.add_reader(efd, on_wake)
        safety = loop.call_later(SAFETY_TICK, on_safety)
        plan.ctl["c_ready"].set()
        schedule()
        try:
            await done
        finally:
            loop.remove_reader(efd)
            if safety is not None:
                safety.cancel()

    try:
        uvloop.run(run())
        consumer.extra.update(stats)
        consumer.report()
    finally:
        log.leave(CONSUMER)
        shared.close()
        os.close(efd)


# --- multiprocessing.Queue --------------------------------------------------------------


def mp_queue_producer(plan: Plan) -> None:
    _pin(plan.core)
    q = plan.handle
    plan.ctl["p_ready"].set()
    plan.ctl["go"].wait()
    _produce(plan, q.put)
    plan.ctl["presult"].send({})
    q.close()
    q.join_thread()


def mp_queue_consumer(plan: Plan) -> None:
    _pin(plan.core)
    q = plan.handle
    consumer = Consumer(plan)
    on_message, get = consumer.on_message, q.get
    plan.ctl["c_ready"].set()
    while not on_message(get()):
        pass
    consumer.report()


# --- faster-fifo ------------------------------------------------------------------------


def faster_fifo_producer(plan: Plan) -> None:
    _pin(plan.core)
    q = plan.handle
    plan.ctl["p_ready"].set()
    plan.ctl["go"].wait()
    _produce(plan, q.put)  # blocks while the buffer is full
    plan.ctl["presult"].send({})


def faster_fifo_consumer(plan: Plan) -> None:
    _pin(plan.core)
    q = plan.handle
    consumer = Consumer(plan)
    on_message, get_many = consumer.on_message, q.get_many
    plan.ctl["c_ready"].set()
    finished = False
    while not finished:
        for payload in get_many(max_messages_to_get=BATCH):
            finished = on_message(payload)
    consumer.report()


# --- pyzmq ------------------------------------------------------------------------------


def pyzmq_producer(plan: Plan) -> None:
    import zmq

    _pin(plan.core)  # before the context: its I/O thread inherits the mask
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(plan.handle)
    plan.ctl["p_ready"].set()
    plan.ctl["go"].wait()
    try:
        _produce(plan, sock.send)  # blocks at the high-water mark
        plan.ctl["presult"].send({})
    finally:
        sock.close(linger=1000)
        ctx.term()


def pyzmq_consumer(plan: Plan) -> None:
    import zmq

    _pin(plan.core)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(plan.handle)
    consumer = Consumer(plan)
    on_message, recv = consumer.on_message, sock.recv
    plan.ctl["c_ready"].set()
    try:
        while not on_message(recv()):
            pass
        consumer.report()
    finally:
        sock.close(linger=0)
        ctx.term()


ROLES: Final[dict[str, tuple[Callable[[Plan], None], Callable[[Plan], None]]]] = {
    "dominoes": (dominoes_producer, dominoes_consumer),
    "mp_queue": (mp_queue_producer, mp_queue_consumer),
    "faster_fifo": (faster_fifo_producer, faster_fifo_consumer),
    "pyzmq": (pyzmq_producer, pyzmq_consumer),
}


# --- the parent -------------------------------------------------------------------------


@dataclass
class RunResult:
    msgs_per_s: float
    p50_us: float
    p99_us: float
    info: dict[str, Any]
    #: CPU used by processes other than the benchmark's, in % of all cores
    busy_elsewhere: float = 0.0


class ForeignLoad:
    """CPU time the rest of the machine used while a run was going on.

    The machine's busy time (``/proc/stat``) minus what this process and its
    reaped children used (``getrusage``), in % of the cores over the run: on a
    shared 2-vCPU machine a neighbour's burst explains an outlier.
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        return total

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        foreign = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, 100.0 * foreign / (wall * (os.cpu_count() or 1)))


def _quantile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return float(sorted_values[i])


@contextlib.contextmanager
def _transport_handle(
    transport: str, ctx: multiprocessing.context.SpawnContext, capacity: int
) -> Iterator[tuple[Any, Any]]:
    """(producer handle, consumer handle): what each child needs to reach the channel."""
    if transport == "dominoes":
        shared = SharedLog.create(f"bench-{os.getpid()}", capacity=capacity)
        wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            handle = (Fd(shared.fd), Fd(wake))
            yield handle, handle
        finally:
            os.close(wake)
            shared.close()
    elif transport == "mp_queue":
        q: Any = ctx.Queue()
        try:
            yield q, q
        finally:
            q.close()
            q.join_thread()
            del q
    elif transport == "faster_fifo":
        import faster_fifo

        fq = faster_fifo.Queue(max_size_bytes=4 * 1024 * 1024)
        try:
            yield fq, fq
        finally:
            fq.close()
            del fq
    elif transport == "pyzmq":
        tmp = tempfile.mkdtemp(prefix="dominoes-bench-")
        try:
            address = f"ipc://{tmp}/channel"
            yield address, address
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise ValueError(f"unknown transport {transport!r}")


def run_once(
    transport: str,
    *,
    messages: int,
    latency_messages: int,
    gap_us: float,
    spin: bool,
    capacity: int,
    cores: tuple[int | None, int | None],
    timeout: float,
) -> RunResult:
    ctx = multiprocessing.get_context("spawn")
    load = ForeignLoad()
    produce, consume = ROLES[transport]
    ctl: dict[str, Any] = {
        name: ctx.Event() for name in ("c_ready", "p_ready", "go", "warm", "tp_done")
    }
    c_recv, c_send = ctx.Pipe(duplex=False)
    p_recv, p_send = ctx.Pipe(duplex=False)
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        with _transport_handle(transport, ctx, capacity) as (p_handle, c_handle):
            c_plan = Plan(
                transport,
                messages,
                latency_messages,
                gap_us,
                spin,
                capacity,
                cores[1],
                c_handle,
                {**ctl, "result": c_send},
            )
            p_plan = Plan(
                transport,
                messages,
                latency_messages,
                gap_us,
                spin,
                capacity,
                cores[0],
                p_handle,
                {**ctl, "presult": p_send},
            )
            cproc = ctx.Process(target=consume, args=(c_plan,), name=f"{transport}-consumer")
            procs.append(cproc)
            cproc.start()
            if not ctl["c_ready"].wait(30):
                raise RuntimeError(f"{transport}: the consumer did not start")
            pproc = ctx.Process(target=produce, args=(p_plan,), name=f"{transport}-producer")
            procs.append(pproc)
            pproc.start()
            if not ctl["p_ready"].wait(30):
                raise RuntimeError(f"{transport}: the producer did not start")
            ctl["go"].set()
            deadline = time.monotonic() + timeout
            result = _receive(c_recv, procs, deadline, f"{transport}: the consumer's result")
            result.update(_receive(p_recv, procs, deadline, f"{transport}: the producer's result"))
            for proc in procs:
                proc.join(max(1.0, deadline - time.monotonic()))
                if proc.exitcode != 0:
                    raise RuntimeError(f"{proc.name} exited with {proc.exitcode}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            proc.close()
        for conn in (c_recv, c_send, p_recv, p_send):
            conn.close()
    lat = sorted(result.pop("latencies_ns"))
    elapsed = result.pop("elapsed_ns")
    return RunResult(
        msgs_per_s=messages / (elapsed / 1e9),
        p50_us=_quantile(lat, 0.50) / 1e3,
        p99_us=_quantile(lat, 0.99) / 1e3,
        info=result,
        busy_elsewhere=load.percent(),
    )


def _receive(
    conn: multiprocessing.connection.Connection,
    procs: list[multiprocessing.process.BaseProcess],
    deadline: float,
    what: str,
) -> dict[str, Any]:
    """The next message on ``conn``; fails as soon as a child dies without sending it."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: nothing before the timeout")
        running = [p.sentinel for p in procs if p.exitcode is None]
        if conn in multiprocessing.connection.wait([conn, *running], left):
            got: dict[str, Any] = conn.recv()
            return got
        for proc in procs:
            if proc.exitcode not in (None, 0):
                raise RuntimeError(f"{what}: {proc.name} exited with {proc.exitcode}")
        if all(p.exitcode is not None for p in procs):
            if conn.poll(1.0):  # sent just before exiting
                got = conn.recv()
                return got
            raise RuntimeError(f"{what}: the children exited without sending it")


def _shm_names() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _cores(pin: bool) -> tuple[int | None, int | None]:
    if not pin:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        return allowed[0], allowed[1]
    return allowed[0], allowed[0]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=None, help="throughput messages per run")
    parser.add_argument(
        "--latency-messages", type=int, default=None, help="latency-phase messages per run"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per transport")
    parser.add_argument(
        "--gap-us", type=float, default=DEFAULT_GAP_US, help="latency phase: send interval"
    )
    parser.add_argument(
        "--pace",
        choices=("sleep", "spin"),
        default="sleep",
        help="latency phase: the producer sleeps (default; fair to transports with a "
        "helper thread on the producer's core) or busy-waits between sends",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the two processes to cores"
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=DEFAULT_CAPACITY,
        help="dominoes: slots in the log (a power of two; default %(default)s)",
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=DEFAULT_BUSY_LIMIT,
        help=f"run again (up to {RETRIES} times, {RETRY_BUDGET} in all) when other processes "
        "used more than this %% of the CPUs during a run (default %(default)s); 100 keeps "
        "every run",
    )
    parser.add_argument("--quick", action="store_true", help="50k messages, 500 latency, 1 run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    args = parser.parse_args(argv)
    messages = args.messages or (50_000 if args.quick else DEFAULT_MESSAGES)
    latency_messages = args.latency_messages or (500 if args.quick else DEFAULT_LATENCY_MESSAGES)
    repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    transports = [t for t in args.transports.split(",") if t]
    for t in transports:
        if t not in ROLES:
            parser.error(f"unknown transport {t!r}; choose from {', '.join(TRANSPORTS)}")
    if messages < 2 or latency_messages < 1 or repeat < 1:
        parser.error("need --messages >= 2, --latency-messages >= 1, --repeat >= 1")
    cores = _cores(not args.no_pin)
    timeout = 60.0 + messages / 20_000 + latency_messages * (args.gap_us + 500) / 1e6

    shm_before = _shm_names()
    runs: dict[str, list[RunResult]] = {t: [] for t in transports}
    discarded = disturbed_kept = 0
    t0 = time.monotonic()
    for r in range(repeat):
        order = transports[r % len(transports) :] + transports[: r % len(transports)]
        for t in order:
            for attempt in range(RETRIES + 1):
                res = run_once(
                    t,
                    messages=messages,
                    latency_messages=latency_messages,
                    gap_us=args.gap_us,
                    spin=args.pace == "spin",
                    capacity=args.capacity,
                    cores=cores,
                    timeout=timeout,
                )
                disturbed = res.busy_elsewhere > args.busy_limit
                kept = not disturbed or attempt == RETRIES or discarded >= RETRY_BUDGET
                extra = " ".join(f"{k}={v}" for k, v in res.info.items())
                print(
                    f"run {r + 1}/{repeat} {t:12s} {res.msgs_per_s / 1e3:9.1f}k msgs/s "
                    f"p50 {res.p50_us:6.1f} us p99 {res.p99_us:6.1f} us "
                    f"busy elsewhere {res.busy_elsewhere:4.1f}% {extra}"
                    + ("" if kept else " (disturbed: run again)"),
                    file=sys.stderr,
                    flush=True,
                )
                if kept:
                    runs[t].append(res)
                    disturbed_kept += disturbed
                    break
                discarded += 1
    wall = time.monotonic() - t0
    leftovers = sorted(_shm_names() - shm_before)
    if leftovers:
        print(f"warning: new entries in /dev/shm: {leftovers}", file=sys.stderr)

    summary: dict[str, Any] = {}
    for t, rs in runs.items():
        summary[f"{t}_msgs_per_s"] = round(statistics.median(x.msgs_per_s for x in rs))
        summary[f"{t}_p50_us"] = round(statistics.median(x.p50_us for x in rs), 1)
        summary[f"{t}_p99_us"] = round(statistics.median(x.p99_us for x in rs), 1)
    if "dominoes" in runs:
        d = summary["dominoes_msgs_per_s"]
        for t in transports:
            if t != "dominoes":
                summary[f"dominoes_over_{t}"] = _ratio(d, summary[f"{t}_msgs_per_s"])
    meta = {
        "messages": messages,
        "latency_messages": latency_messages,
        "gap_us": args.gap_us,
        "pace": args.pace,
        "capacity": args.capacity,
        "repeat": repeat,
        "payload_bytes": payload_size(),
        "cores": list(cores),
        "pinned": not args.no_pin,
        "busy_elsewhere_pct_median": round(
            statistics.median(x.busy_elsewhere for rs in runs.values() for x in rs), 1
        ),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "wall_s": round(wall, 1),
        "dev_shm_leftovers": leftovers,
        "busy_limit_pct": args.busy_limit,
        "runs_discarded_as_disturbed": discarded,
        "disturbed_runs_kept": disturbed_kept,
        "runs": {  # [msgs/s, p50 us, p99 us, busy elsewhere %] per run
            t: [
                [
                    round(x.msgs_per_s),
                    round(x.p50_us, 1),
                    round(x.p99_us, 1),
                    round(x.busy_elsewhere),
                ]
                for x in rs
            ]
            for t, rs in runs.items()
        },
    }
    if args.json:
        print(json.dumps({**summary, **meta}))
        return 0

    print(
        f"\n{messages:,} messages x {repeat} runs, {latency_messages:,} latency messages "
        f"~{args.gap_us:g} us apart ({args.pace}), {meta['payload_bytes']} B payload, "
        f"cores {cores}, Python {meta['python']}, {wall:.0f} s; other processes used a median "
        f"{meta['busy_elsewhere_pct_median']}% of the CPUs during kept runs ({discarded} runs "
        f"discarded as disturbed, {disturbed_kept} disturbed runs kept)\n"
    )
    print(f"{'transport':12s} {'msgs/s':>10s} {'p50 us':>8s} {'p99 us':>8s}")
    for t in transports:
        print(
            f"{t:12s} {summary[f'{t}_msgs_per_s']:>10,} {summary[f'{t}_p50_us']:>8.1f} "
            f"{summary[f'{t}_p99_us']:>8.1f}"
        )
    ratios = [(k, v) for k, v in summary.items() if k.startswith("dominoes_over_")]
    if ratios:
        print()
        for k, v in ratios:
            print(f"{k.replace('_over_', ' / '):24s} {v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
