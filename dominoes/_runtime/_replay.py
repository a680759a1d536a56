"""``dominoes replay``: apply a durable service's recorded log again, in one process.

A durable service (``dominoes run --durable DIR``) records every log entry in
segment files and its state in snapshots (formats: ``dominoes._core._segment``).
A replay builds one state machine of the service (``Service.new_machine``),
loads a snapshot or starts empty at seq 1, and applies the recorded entries
in order, as a restarting replica does (``Persistence.restore``), so that
one can:

* step through what the service did (``--step``: each entry, decoded, and
  its outcome);
* find where a handler that is not deterministic diverged (``--digest``):
  the live replicas record the digests they computed (``Control("digest",
  [replica, seq, digest])`` entries, with ``--digest-every``); the replay
  computes its own at those seqs and compares, component by component;
* write the state at any seq as a snapshot file (``--save``, ``--until``),
  to compare with another byte for byte.

It only reads ``DIR``: a torn last record (a crash mid-write, or the record a
live service is writing) is not truncated, the replay stops before it and
says so; a corrupt record anywhere else, or a missing segment, is an error
naming the file and the offset.  The directory may belong to a running
service.

An entry the live service declared a poison entry (every replica gave up
applying it) is applied as the same error here: the log writer records the
verdict as a poison mark in the segments.  (A verdict the writer had not
recorded when the service died is not known: such an entry runs its handler
again; Ctrl-C stops a replay.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from .._core._codec import Batch, Call, Control, Entry, Fire, Scoped, decode
from .._core._layout import KIND_NOOP
from .._core._machine import Applied, StateMachine
from .._core._segment import (
    Record,
    encode_snapshot,
)
from .._core._service import Service
from ._durable import DurableLogError, LogReader, Torn, segments, snapshots, usable_snapshots

__all__ = (
    "FROM_SNAPSHOT",
    "LogReader",
    "ReplayError",
    "ReplayOptions",
    "Replayer",
    "Start",
    "Torn",
    "choose_start",
    "prescan",
    "replay_main",
)

#: the live replicas' digest reports: ``{seq: {replica: {component: digest}}}``
LiveDigests = dict[int, dict[int, dict[str, str]]]

#: ``--from-snapshot`` choices (None, the default: seq 1 if the log starts
#: there, else the oldest usable snapshot)
FROM_SNAPSHOT: Final = ("oldest", "newest", "none")

#: exit status when a replayed digest differs from the one a live replica recorded
EXIT_DIFFERS: Final = 3

#: characters of an entry's arguments or outcome shown per ``--step`` line
_SHOWN: Final = 300


#: The log cannot be replayed as asked (corrupt, incomplete, no usable snapshot):
#: one error with the reader's (``_durable.LogReader``), so it needs no translating.
ReplayError = DurableLogError


@dataclass(frozen=True)
class Start:
    """Where a replay begins: a snapshot's state (or none), and the first seq to apply."""

    snapshot: Path | None
    seq: int
    #: the snapshot's state (``StateMachine.snapshot`` bytes), None without one
    state: bytes | None = None


def choose_start(
    data_dir: Path,
    how: str | None = None,
    until: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> Start:
    """Where to begin (see ``FROM_SNAPSHOT``); a snapshot must check out and its
    log must be there (the first segment starts at or before its cursor).

    A snapshot past ``until`` is not used.  Snapshots that do not check out
    are passed over (``warn`` says which); :class:`ReplayError` if none fits.
    """
    if how is not None and how not in FROM_SNAPSHOT:
        raise ValueError(f"how must be one of {FROM_SNAPSHOT} or None, not {how!r}")
    if not data_dir.is_dir():
        raise ReplayError(f"{data_dir} is not a directory")
    segs = segments(data_dir)
    first = segs[0][0] if segs else None
    if first not in (None, 1) and next(data_dir.glob("snapshot-*.r*.snap"), None) is not None:
        raise ReplayError(
            f"{data_dir} is a partitioned service's: each of its snapshots holds one "
            f"replica's partitions, and a replay holds them all, so it needs the log from "
            f"seq 1, which starts at seq {first} (the segments before it were deleted once "
            f"every replica's snapshots covered them)"
        )
    empty = first is None and not snapshots(data_dir)
    if how == "none" or (how is None and (first == 1 or empty)):
        if first is not None and first != 1:
            raise ReplayError(
                f"the log in {data_dir} starts at seq {first}, not 1 (the segments before "
                f"it were deleted once a snapshot covered them): replay from a snapshot"
            )
        return Start(None, 1)
    for cursor, path, state in usable_snapshots(
        data_dir, newest=how == "newest", until=until, warn=warn
    ):
        return Start(path, cursor, state)
    what = f"at or before seq {until} " if until is not None else ""
    if first is None:
        where = "and no log segments"
    else:
        where = f"whose log is there (the log starts at seq {first})"
    raise ReplayError(f"no usable snapshot {what}{where} in {data_dir}")


def prescan(data_dir: Path, start: int, digests: bool) -> tuple[set[int], LiveDigests]:
    """One read of the log from ``start`` before the replay: the entries the live
    service declared poison (their marks may follow them), and, with ``digests``,
    the digests the live replicas recorded: ``{seq: {replica: {component: digest}}}``
    (``Control("digest", ...)`` entries)."""
    found: LiveDigests = {}
    reader = LogReader(data_dir)
    for record in reader.read(start):
        if not digests or record.kind == KIND_NOOP:
            continue
        entry = _decode(record)
        if type(entry) is Control and entry.op == "digest":
            reporter, at, digest = entry.arg
            found.setdefault(int(at), {})[int(reporter)] = dict(digest)
    return {s for s in reader.poisoned if s >= start}, found


def _decode(record: Record) -> Entry:
    """The record's entry; a :class:`Scoped` one's call or batch (one machine holding
    every partition applies it alike, and shows it decoded)."""
    try:
        entry = decode(record.payload, record.seq)
        return entry.inner() if type(entry) is Scoped else entry
    except Exception as exc:  # noqa: BLE001 - a checked record that does not decode
        raise ReplayError(
            f"the entry at seq {record.seq} does not decode ({type(exc).__name__}: {exc})"
        ) from None


# --- the replay --------------------------------------------------------------------------------


@dataclass
class ReplayOptions:
    data_dir: Path
    until: int | None = None
    from_snapshot: str | None = None
    #: report every entry (``--step``)
    step: bool = False
    #: wait for Enter after each entry (``--step`` with a terminal on stdin)
    interactive: bool = False
    #: digest at digest points and compare with the live replicas' reports (``--digest``)
    digest: bool = False
    #: the digest period with ``digest`` (None: the service's ``digest_every``)
    digest_every: int | None = None
    #: write the final state here as a snapshot file (``--save``)
    save: Path | None = None
    as_json: bool = False


@dataclass
class Summary:
    start: Start
    #: entries applied (records other than no-ops)
    entries: int = 0
    #: no-op records passed over (positions a dead producer left)
    noops: int = 0
    #: entries (or calls of a batch) whose outcome was an error, as in the live run
    errors: int = 0
    first: int | None = None
    last: int | None = None
    #: the seq after the last record the log holds (None: not read to the end)
    log_end: int | None = None
    torn: Torn | None = None
    #: the replay stopped early: "quit" (q at the prompt), "interrupted" (Ctrl-C)
    stopped: str = ""
    #: component digests compared with a live replica's, and how many differed
    compared: int = 0
    differed: int = 0
    #: live digest reports for seqs before the start (nothing to compare them with)
    uncompared: int = 0
    cursor: int = 1
    digest: dict[str, str] = field(default_factory=dict)
    saved: Path | None = None


class Replayer:
    """One replay: a machine, the log, what to report (see :class:`ReplayOptions`).

    ``emit(kind, doc)`` receives every report (``entry``, ``digest``,
    ``compare``); :meth:`run` returns the :class:`Summary`.
    """

    def __init__(
        self,
        service: Service,
        options: ReplayOptions,
        emit: Callable[[str, dict[str, Any]], None],
        warn: Callable[[str], None],
        ask: Callable[[], str] | None = None,
    ) -> None:
        self.service = service
        self.options = options
        self._emit = emit
        self._warn = warn
        self._ask = ask
        self.machine: StateMachine = service.new_machine(0)
        #: entries the live service declared poison: applied as that error
        self.poisoned: set[int] = set()
        # A joiner's snapshot asked through the log is no business of a replay.
        self.machine.snapshot_writer = lambda seq, joiner: True
        if not options.digest:
            self.machine.digest_every = 0
        elif options.digest_every is not None:
            self.machine.digest_every = options.digest_every

    def run(self) -> Summary:
        opts = self.options
        start = choose_start(opts.data_dir, opts.from_snapshot, opts.until, self._warn)
        self.poisoned, live = prescan(opts.data_dir, start.seq, opts.digest)
        machine = self.machine
        if start.state is not None:
            try:
                machine.restore(start.state)
            except (ValueError, TypeError) as exc:  # another service's, another version's
                raise ReplayError(f"snapshot {start.snapshot}: {exc}") from None
            if machine.cursor != start.seq:
                raise ReplayError(
                    f"snapshot {start.snapshot} holds the state at seq {machine.cursor}, "
                    f"its header says {start.seq}"
                )
            # Digest points go on from the restored cursor, as on a restored replica
            # (the setter places the next one after the cursor).
            machine.digest_every = machine.digest_every
        summary = Summary(start, cursor=machine.cursor)
        summary.uncompared = sum(len(v) for at, v in live.items() if at < start.seq)
        reader = LogReader(opts.data_dir)
        pausing = opts.step and opts.interactive and self._ask is not None
        try:
            for record in reader.read(start.seq, opts.until):
                if record.seq != machine.cursor:
                    raise ReplayError(f"record at seq {record.seq}, expected {machine.cursor}")
                out = self._apply(record, summary)
                if opts.digest and out is not None:
                    self._digests(record.seq, out, live.get(record.seq), summary)
                if pausing:
                    assert self._ask is not None
                    answer = self._ask().strip().lower()
                    if answer == "q":
                        summary.stopped = "quit"
                        break
                    if answer == "c":
                        pausing = False
            else:
                if reader.complete:
                    summary.log_end = reader.end
                summary.torn = reader.torn
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
        summary.cursor = machine.cursor
        summary.digest = machine.digest()
        # Ctrl-C may have cut an apply halfway: such a state is not worth a file.
        if opts.save is not None and summary.stopped != "interrupted":
            summary.saved = self.save(opts.save)
        return summary

    def _apply(self, record: Record, summary: Summary) -> Applied | None:
        machine = self.machine
        seq = record.seq
        if record.kind == KIND_NOOP:
            machine.skip(seq, record.nslots)
            summary.noops += 1
            if self.options.step:
                self._emit("entry", {"seq": seq, "nslots": record.nslots, "kind": "noop"})
            return None
        entry = _decode(record)
        doc = describe(entry, machine, record.nslots) if self.options.step else None
        if seq in self.poisoned:  # as the live replicas did
            out = machine.apply_poisoned(entry, False, record.nslots)
        else:
            out = machine.apply(entry, False, record.nslots)
        summary.entries += 1
        if summary.first is None:
            summary.first = seq
        summary.last = seq
        outcomes = out.batch if out.batch else [out]
        summary.errors += sum(1 for o in outcomes if o.error is not None)
        if doc is not None:
            doc["outcome"] = [_outcome(o) for o in outcomes] if out.batch else _outcome(out)
            self._emit("entry", doc)
        return out

    def _digests(
        self,
        seq: int,
        out: Applied,
        reports: dict[int, dict[str, str]] | None,
        summary: Summary,
    ) -> None:
        mine = out.digest
        if mine is not None:  # one of the replay's own digest points
            self._emit("digest", {"seq": seq, "digest": mine})
        if not reports:
            return
        if mine is None:
            mine = self.machine.digest()
        for name in sorted(set(mine).union(*(set(d) for d in reports.values()))):
            # one line per distinct live digest (replicas that agree share one)
            by_value: dict[str, list[int]] = {}
            for reporter in sorted(reports):
                by_value.setdefault(reports[reporter].get(name, "-"), []).append(reporter)
            for theirs, replicas in by_value.items():
                ok = mine.get(name, "-") == theirs
                summary.compared += 1
                summary.differed += not ok
                self._emit(
                    "compare",
                    {
                        "seq": seq,
                        "component": name,
                        "replay": mine.get(name, "-"),
                        "live": theirs,
                        "replicas": replicas,
                        "ok": ok,
                    },
                )

    def save(self, path: Path) -> Path:
        """Write the machine's state as a snapshot file (the service's format) at ``path``."""
        data_dir = self.options.data_dir.resolve()
        if path.resolve().parent == data_dir:
            raise ReplayError(
                f"--save {path}: not into the data directory (a replay only reads it)"
            )
        blob = encode_snapshot(self.machine.cursor, self.machine.snapshot())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ReplayError(f"--save {path}: {exc.strerror or exc}") from None
        return path


def describe(entry: Entry, machine: StateMachine, nslots: int) -> dict[str, Any]:
    """What ``--step`` shows of an entry, read before it is applied."""
    doc: dict[str, Any] = {"seq": entry.seq, "nslots": nslots}
    if type(entry) is Call:
        doc.update(kind="call", **_call(entry))
    elif type(entry) is Batch:
        doc.update(kind="batch", origin=entry.origin, calls=[_call(c) for c in entry.calls])
    elif type(entry) is Fire:
        doc.update(kind="fire", timer=entry.timer_id, origin=entry.origin)
        timer = machine.timers.pending.get(entry.timer_id)
        if timer is None:
            doc["event"] = None  # fired or cancelled already: a no-op
        else:
            deadline, event, args, kwargs = timer
            doc.update(event=event, args=list(args), kwargs=dict(kwargs), deadline=deadline)
    elif type(entry) is Control:
        doc.update(kind="control", op=entry.op, arg=entry.arg, origin=entry.origin)
    doc["ts"] = entry.ts
    return doc


def _call(call: Call) -> dict[str, Any]:
    doc: dict[str, Any] = {"event": call.event, "args": call.args, "kwargs": call.kwargs}
    doc.update(origin=call.origin, mode=call.mode.name.lower())
    if call.request_id:
        doc["request_id"] = call.request_id
    return doc


def _outcome(out: Applied) -> dict[str, Any]:
    if out.error is not None:
        return {"error": f"{type(out.error).__name__}: {out.error}"}
    if out.duplicate:
        return {"result": out.result, "duplicate": True}
    return {"result": out.result}


# --- the command ------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _call_text(doc: dict[str, Any]) -> str:
    args = ", ".join(
        [_short(a) for a in doc["args"]] + [f"{k}={_short(v)}" for k, v in doc["kwargs"].items()]
    )
    return f"{doc['event']}({args})"


def _outcome_text(outcome: dict[str, Any]) -> str:
    if "error" in outcome:
        return f"error {outcome['error']}"
    dup = " (duplicate request)" if outcome.get("duplicate") else ""
    return f"{_short(outcome['result'])}{dup}"


def entry_text(doc: dict[str, Any]) -> list[str]:
    """The lines ``--step`` prints for one entry."""
    seq, kind = doc["seq"], doc["kind"]
    slots = f" ({doc['nslots']} slots)" if doc["nslots"] > 1 else ""
    if kind == "noop":
        return [f"seq {seq} noop{slots}"]
    if kind == "call":
        lines = [f"seq {seq} call {_call_text(doc)} origin {doc['origin']}{slots}"]
        lines.append(f"  -> {_outcome_text(doc['outcome'])}")
        return lines
    if kind == "batch":
        lines = [f"seq {seq} batch of {len(doc['calls'])} calls origin {doc['origin']}{slots}"]
        for i, (call, outcome) in enumerate(zip(doc["calls"], doc["outcome"], strict=True)):
            lines.append(f"  [{i}] {_call_text(call)} -> {_outcome_text(outcome)}")
        return lines
    if kind == "fire":
        if doc["event"] is None:
            return [f"seq {seq} fire timer {doc['timer']}: fired or cancelled already (no-op)"]
        return [
            f"seq {seq} fire timer {doc['timer']} {_call_text(doc)}{slots}",
            f"  -> {_outcome_text(doc['outcome'])}",
        ]
    arg = doc["arg"]
    shown = f"replica {arg[0]}, seq {arg[1]}" if doc["op"] == "digest" else _short(arg)
    return [f"seq {seq} control {doc['op']} {shown} origin {doc['origin']}"]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return repr(obj)


class _Printer:
    """Text (or, with ``--json``, one JSON object a line) on ``out``."""

    def __init__(self, out: IO[str], as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def json(self, doc: dict[str, Any]) -> None:
        line = orjson.dumps(doc, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
        self.out.write(line.decode() + "\n")
        self.out.flush()

    def emit(self, kind: str, doc: dict[str, Any]) -> None:
        if self.as_json:
            self.json({"type": kind, **doc})
            return
        if kind == "entry":
            lines = entry_text(doc)
        elif kind == "digest":
            lines = [
                f"seq {doc['seq']} digest {name} {h}" for name, h in sorted(doc["digest"].items())
            ]
        else:  # compare
            verdict = "OK" if doc["ok"] else "DIFFERS"
            replicas = ", ".join(str(r) for r in doc["replicas"])
            word = "replica" if len(doc["replicas"]) == 1 else "replicas"
            lines = [
                f"seq {doc['seq']} component {doc['component']}: replay {doc['replay']} "
                f"live {doc['live']} {verdict} ({word} {replicas})"
            ]
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def summary(self, s: Summary, options: ReplayOptions) -> None:
        start = s.start
        doc: dict[str, Any] = {
            "entries": s.entries,
            "noops": s.noops,
            "errors": s.errors,
            "first_seq": s.first,
            "last_seq": s.last,
            "start": start.seq,
            "snapshot": str(start.snapshot) if start.snapshot is not None else None,
            "cursor": s.cursor,
            "log_end": s.log_end,
            "until": options.until,
            "stopped": s.stopped or None,
            "torn": None,
            "compared": s.compared,
            "differed": s.differed,
            "uncompared": s.uncompared,
            "digest": s.digest,
            "saved": str(s.saved) if s.saved is not None else None,
        }
        if s.torn is not None:
            t = s.torn
            doc["torn"] = {"path": str(t.path), "offset": t.offset, "bytes": t.size, "seq": t.seq}
        if self.as_json:
            self.json({"type": "summary", **doc})
            return
        where = f"snapshot {start.snapshot} (seq {start.seq})" if start.snapshot else "seq 1"
        span = f", seq {s.first} to {s.last}" if s.first is not None else ""
        noops = f" and {s.noops} no-op{'s' * (s.noops != 1)}" if s.noops else ""
        entries = f"{s.entries} entr{'ies' if s.entries != 1 else 'y'}"
        lines = [f"replayed {entries}{noops}{span}, from {where}"]
        if s.errors:
            lines.append(f"{s.errors} of them ended in an error (a replicated outcome, as live)")
        if s.stopped == "quit":
            lines.append(f"stopped at the prompt before seq {s.cursor}")
        elif s.stopped == "interrupted":
            cut = "; --save not written" if options.save is not None else ""
            lines.append(f"interrupted before seq {s.cursor} (an apply may be cut halfway){cut}")
        elif options.until is not None and s.log_end is not None and s.log_end < options.until:
            lines.append(f"the log ends at seq {s.log_end}, before --until {options.until}")
        elif options.until is not None and s.cursor < options.until:
            lines.append(
                f"stopped at seq {s.cursor}: the entry there spans past --until {options.until}"
            )
        elif options.until is not None:
            lines.append(f"stopped before seq {options.until} (--until)")
        if s.torn is not None:
            t = s.torn
            lines.append(
                f"torn last record in {t.path} at offset {t.offset} (seq {t.seq}): {t.size} "
                f"bytes not replayed ({t.reason}); left as it is"
            )
        if options.digest:
            if s.compared:
                verdict = f"{s.differed} DIFFER" if s.differed else "all equal"
                lines.append(
                    f"compared {s.compared} component digests with the live replicas': {verdict}"
                )
            else:
                lines.append(
                    "no digests recorded by the live replicas in this part of the log "
                    "(run the service with --digest-every K to record them)"
                )
            if s.uncompared:
                lines.append(
                    f"{s.uncompared} digest reports are for seqs before seq {start.seq}, where "
                    f"the replay starts: not compared"
                )
        if s.saved is not None:
            lines.append(f"saved the state at seq {s.cursor} to {s.saved}")
        lines.append(f"state at seq {s.cursor} (the next seq to apply), digests:")
        width = max((len(name) for name in s.digest), default=0)
        lines += [f"  {name:<{width}}  {h}" for name, h in sorted(s.digest.items())]
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()


def _ask_tty() -> str:
    try:
        return input("[Enter: next, c: continue, q: quit] ")
    except EOFError:
        return "c"


def replay_main(
    target: str,
    options: ReplayOptions,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """``dominoes replay``: 0, 1 (the log cannot be replayed), 2 (the service does not
    load), ``EXIT_DIFFERS`` (a digest differs from a live replica's), 130 (Ctrl-C)."""
    from ._process import ServiceLoadError, load_service

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    def warn(text: str) -> None:
        err.write(f"dominoes: warning: {text}\n")
        err.flush()

    try:
        service = load_service(target)
    except (ServiceLoadError, ImportError, AttributeError, TypeError, ValueError) as exc:
        err.write(f"dominoes: error: {exc}\n")
        return 2
    printer = _Printer(out, options.as_json)
    replayer = Replayer(service, options, printer.emit, warn, _ask_tty)
    try:
        summary = replayer.run()
        printer.summary(summary, options)
    except ReplayError as exc:
        err.write(f"dominoes: error: {exc}\n")
        return 1
    except KeyboardInterrupt:  # before the replay began (reading the digests)
        err.write("dominoes: interrupted\n")
        return 130
    except BrokenPipeError:  # ``dominoes replay ... --step | head``: the reader left
        if out is sys.stdout:  # so that the interpreter's flush at exit does not fail too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if summary.differed:
        err.write(
            f"dominoes: {summary.differed} component digests differ from the live replicas' "
            f"(a handler that is not deterministic?)\n"
        )
        return EXIT_DIFFERS
    return 130 if summary.stopped == "interrupted" else 0
