"""``dominoes stats`` and ``dominoes top``: the operator's view from the command line."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ("fetch_stats", "render", "stats_main", "top_main")


def fetch_stats(run_dir: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The supervisor's ``stats`` document (one entry per replica)."""
    path = run_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            raise ConnectionError(f"no service is running at {path} ({exc.strerror})") from None
        s.sendall(b'{"op": "stats"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    doc: dict[str, Any] = orjson.loads(buf)
    if "error" in doc:
        raise RuntimeError(doc["error"])
    return doc


def stats_main(run_dir: Path, as_json: bool) -> int:
    try:
        doc = fetch_stats(run_dir)
    except (ConnectionError, RuntimeError) as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
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
    return console if console.is_terminal else Console(width=140)


def _row(entry: dict[str, Any]) -> list[str]:
    report = entry.get("report")
    if not report:
        why = entry.get("error", "not ready")
        return [str(entry["index"]), str(entry.get("pid") or "-"), str(entry.get("core")), "-",
                entry.get("state", "?"), "-", "-", "-", "-", "-", "-", "-", why]  # fmt: skip
    r = report["replica"]
    c = r["core"]
    return [
        str(r["index"]),
        str(r["pid"]),
        str(r["cpu"]),
        r["loop"],
        r["state"],
        str(r["applied_seq"]),
        str(r["lag"]),
        f"{r['entries_per_s']:.0f}",
        f"{r['queries_per_s']:.0f}",
        str(c["claims_won"]),
        str(r["effects_run"]),
        f"{r['loop_lag_ms']:.1f}",
        f"{c['stalls'] + r['effect_stalls']}/{c['divergences']}",
    ]


def render(doc: dict[str, Any]) -> Any:
    """A rich renderable: one row per replica and a log summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"dominoes: {doc['service']}", title_justify="left")
    for name in ("replica", "pid", "core", "loop", "state", "applied", "lag", "entries/s",
                 "queries/s", "claims", "effects", "loop lag ms", "stalls/div"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("loop", "state") else "right")
    for entry in doc["replicas"]:
        table.add_row(*_row(entry))
    log = doc["log"]
    summary = Text(
        f"log: tail {log['tail']}, {log['free_slots']}/{log['capacity']} slots free, "
        f"slowest replica {log['slowest_replica']} at {log['slowest_cursor']}, "
        f"dead {list(log['dead']) or '-'}; supervisor restarts {doc.get('deaths', 0)}"
    )
    return Group(table, summary)


def top_main(run_dir: Path, once: bool, interval: float) -> int:
    from rich.live import Live

    console = _console()
    try:
        doc = fetch_stats(run_dir)
    except (ConnectionError, RuntimeError) as exc:
        print(f"dominoes: error: {exc}", file=sys.stderr)
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
