"""``dominoes stats`` and ``dominoes top``: the operator's view from the command line.

What they show comes from the supervisor's ``control.sock``, so they first
check that a process of this uid serves it (``SO_PEERCRED``): in a run
directory another user made or swapped, it may be theirs, serving a made-up
document.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from ._peercred import ForeignServerError, connect_checked

__all__ = (
    "NotRunningError",
    "control_request",
    "control_state",
    "fetch_stats",
    "render",
    "stats_main",
    "top_main",
)


class NotRunningError(ConnectionError):
    """No supervisor answers at the run dir (no socket, or a stale one)."""


def control_state(path: Path, timeout: float = 1.0) -> str:
    """``"running"``, ``"stale"`` or ``"absent"``: what is at a ``control.sock`` path.

    A supervisor killed with SIGKILL cannot remove its socket file; nobody
    listens on it any more, so a connect is refused (``ECONNREFUSED``).  The
    next ``dominoes run`` of the service finds it stale and removes it.
    """
    try:
        connect_checked(path, timeout).close()
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except ConnectionRefusedError:
        return "stale"
    except OSError:  # ForeignServerError included
        return "running"  # there, but not ours to reach (a permission): not stale
    return "running"


def control_request(
    run_dir: Path, requests: list[dict[str, Any]], timeout: float = 5.0
) -> list[Any]:
    """Send ``requests`` (JSON lines) to the supervisor's ``control.sock``; its
    decoded replies, in order (fewer if it closed the connection first).

    Raises :class:`NotRunningError` (no service), ``ConnectionError`` (it
    stopped answering, or did not answer in ``timeout`` seconds) or
    ``RuntimeError`` (an unreadable answer, or a process of another uid serves
    the socket).
    """
    path = run_dir / "control.sock"
    try:  # its server is checked first: in a hijacked run dir, it may be another uid's
        s = connect_checked(path, timeout)
    except (FileNotFoundError, NotADirectoryError):
        raise NotRunningError(f"no service is running at {path}") from None
    except ConnectionRefusedError:
        raise NotRunningError(
            f"not running (stale socket {path}: its supervisor was killed; the next "
            "'dominoes run' of the service removes it)"
        ) from None
    except ForeignServerError as exc:
        raise RuntimeError(str(exc)) from None
    except OSError as exc:
        raise ConnectionError(f"cannot reach the service at {path} ({exc.strerror})") from None
    with s:
        try:
            s.sendall(b"".join(orjson.dumps(r) + b"\n" for r in requests))
            lines = _read_lines(s, len(requests))
        except TimeoutError:
            raise ConnectionError(f"the service at {path} did not answer in {timeout:g}s") from None
        except OSError as exc:
            raise ConnectionError(f"the service at {path} went away ({exc.strerror})") from None
    if not lines:
        raise ConnectionError(f"the service at {path} closed the connection (stopping?)")
    try:
        return [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError as exc:
        raise RuntimeError(f"unreadable answer from {path}: {exc}") from None


def fetch_stats(run_dir: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The supervisor's ``stats`` document (one entry per replica).

    Its ``status`` (added here, under that key) is the supervisor's reading
    of the log's cursors and tail taken at one instant, after the replicas
    answered: the lag column and the footer both come from it, so they agree.
    Raises as :func:`control_request` does, and ``RuntimeError`` if the
    service answered with an error.
    """
    replies = control_request(run_dir, [{"op": "stats"}, {"op": "status"}], timeout)
    doc: dict[str, Any] = replies[0]
    status = replies[1] if len(replies) > 1 else None
    if "error" in doc:
        raise RuntimeError(doc["error"])
    if isinstance(status, dict) and "error" not in status:
        doc["status"] = status
    return doc


def _read_lines(s: socket.socket, count: int) -> list[bytes]:
    """Up to ``count`` newline-ended lines (fewer if the peer closes first)."""
    buf = b""
    while buf.count(b"\n") < count:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    return [line for line in buf.split(b"\n")[:count] if line]


def stats_main(run_dir: Path, as_json: bool) -> int:
    try:
        doc = fetch_stats(run_dir)
    except (ConnectionError, RuntimeError) as exc:
        print(f"dominoes: {run_dir.name}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _console().print(render(doc))
    return 0


def _console() -> Any:
    from rich.console import Console

    # Piped output gets a width that fits the table rather than 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=160)


#: The table's columns.  Units are in the headers: ``seq`` and ``lag`` count
#: log positions (slots; a large entry spans several), ``entries`` and
#: ``entries/s`` count entries (a group commit of many writes is one), and
#: ``queries/s`` counts reads answered from the local state.
COLUMNS = ("replica", "pid", "core", "loop", "state", "seq", "lag (slots)", "entries",
           "entries/s", "queries/s", "claims", "effects", "loop lag ms", "stalls/div")  # fmt: skip


def _positions(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[int, int]]:
    """The log summary and each replica's cursor, from one reading of the log.

    The supervisor's ``status`` reads every cursor and the tail at one
    instant.  A replica's own report cannot show its lag: it answers between
    two batches, right after it caught up with the tail it saw, so it nearly
    always says 0 while the log (read at another instant) shows it a batch
    behind.  Without a status (an older supervisor), the reports are used.
    """
    status = doc.get("status")
    if isinstance(status, dict) and "log" in status:
        cursors = {r["index"]: r["cursor"] for r in status.get("replicas", []) if "cursor" in r}
        return status["log"], cursors
    return doc["log"], {}


def _row(entry: dict[str, Any], tail: int, cursors: dict[int, int]) -> list[str]:
    report = entry.get("report")
    if not report:
        why = entry.get("error", "not ready")
        blank = ["-"] * (len(COLUMNS) - 6)
        return [str(entry["index"]), str(entry.get("pid") or "-"), str(entry.get("core")), "-",
                entry.get("state", "?"), *blank, why]  # fmt: skip
    r = report["replica"]
    c = r["core"]
    cursor = cursors.get(r["index"])
    if cursor is None:  # no status: the replica's own (earlier) view
        seq, lag = r["applied_seq"], r["lag"]
    else:
        seq, lag = cursor - 1, max(0, tail - cursor)
    return [
        str(r["index"]),
        str(r["pid"]),
        str(r["cpu"]),
        r["loop"],
        r["state"],
        str(seq),
        str(lag),
        str(c["applied_entries"]),
        f"{r['entries_per_s']:.0f}",
        f"{r['queries_per_s']:.0f}",
        str(c["claims_won"]),
        str(r["effects_run"]),
        f"{r['loop_lag_ms']:.1f}",
        f"{c['stalls'] + r['effect_stalls']}/{c['divergences']}",
    ]


def _flatten(section: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A report section's scalars, nested mappings' keys dotted (``ingress.TcpInErrs``);
    lists (per-connection rows, ...) are left to ``--json`` and the monitor."""
    if not isinstance(section, dict):
        return []
    out: list[tuple[str, Any]] = []
    for k, v in section.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out.append((f"{prefix}{k}", v))
    return out


def render(doc: dict[str, Any]) -> Any:
    """A rich renderable: one row per replica and a log summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    log, cursors = _positions(doc)
    table = Table(title=f"dominoes: {doc['service']}", title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("loop", "state") else "right")
    for entry in doc["replicas"]:
        table.add_row(*_row(entry, log["tail"], cursors))
    behind = log["tail"] - log["slowest_cursor"]
    summary = Text(
        f"log: tail {log['tail']}, {log['free_slots']}/{log['capacity']} slots free, "
        f"slowest replica {log['slowest_replica']} at {log['slowest_cursor']} "
        f"({behind} behind), dead {list(log['dead']) or '-'}; "
        f"supervisor restarts {doc.get('deaths', 0)}"
    )
    parts: list[Any] = [table, summary]
    for entry in doc["replicas"]:
        for name, section in ((entry.get("report") or {}).get("reports") or {}).items():
            flat = ", ".join(f"{k} {v}" for k, v in _flatten(section))
            parts.append(Text(f"replica {entry.get('index', '?')} {name}: {flat}"))
    bridge = doc.get("bridge")
    if not bridge:
        return Group(*parts)
    state = "UNREACHABLE" if bridge.get("unreachable") else "ok"
    line = Text(
        f"stream {bridge.get('stream', '?')}: {state}, "
        f"messages out {bridge.get('messages_out', 0)} in {bridge.get('messages_in', 0)} "
        f"(copied to {bridge.get('copied', 0)}), "
        f"fences {bridge.get('fences_served', 0)}, retries {bridge.get('retries', 0)}, "
        f"snapshots uploaded {bridge.get('snapshots_uploaded', 0)}"
    )
    return Group(*parts, line)


def top_main(run_dir: Path, once: bool, interval: float) -> int:
    from rich.live import Live

    console = _console()
    try:
        doc = fetch_stats(run_dir)
    except (ConnectionError, RuntimeError) as exc:
        print(f"dominoes: {run_dir.name}: {exc}", file=sys.stderr)
        return 1
    if once:
        console.print(render(doc))
        return 0
    with Live(render(doc), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    live.update(render(fetch_stats(run_dir)))
                except (ConnectionError, RuntimeError) as exc:
                    live.update(f"[red]{exc}[/red]")
        except KeyboardInterrupt:
            pass
    return 0
