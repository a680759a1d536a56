"""The command line refuses what it cannot run, in one line, before anything starts.

Everything here runs in-process and starts no replica: each refusal happens
before the supervisor would spawn one (and the ones that would start one are
in tests/integration/test_cli_edges.py).
"""

from __future__ import annotations

import io
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest

import dominoes
from dominoes._cli import _find_run_dir, _replicas_warning, main
from dominoes._runtime._logs import names as log_names
from dominoes._runtime._process import ServiceLoadError, load_service
from dominoes._runtime._top import (
    COLUMNS,
    NotRunningError,
    control_state,
    fetch_stats,
    render,
    stats_main,
)

_names = itertools.count()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``dominoes ARGV`` in-process: its exit status and its stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses with SystemExit(2)
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# --- options ----------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"dominoes {dominoes.__version__}\n"


@pytest.mark.parametrize("value", ["-5", "0", "nan", "soon"])
def test_stall_ms_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["run", "examples.counter:service", f"--stall-ms={value}"], capsys)
    assert code == 2
    assert "--stall-ms" in err
    assert "Traceback" not in err


def test_replicas_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["run", "examples.counter:service", "--replicas", "0"], capsys)
    assert code == 2
    assert "--replicas: must be at least 1, not 0" in err


def test_an_unknown_loop_is_one_line_before_any_replica_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run_cli(["run", "examples.counter:service", "--loop", "nosuch"], capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("dominoes: error: --loop nosuch: no loop policy named 'nosuch'")
    assert "asyncio" in err  # the available ones are listed


def test_an_unknown_log_is_one_line_listing_the_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = ["run", "examples.counter:service", "--log", "nope", "--run-dir", str(run_dir)]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err == (
        f"dominoes: error: --log nope: no log backend named 'nope'; available: "
        f"{', '.join(log_names())}\n"
    )
    assert {"memory", "shm"} <= set(log_names())
    assert not run_dir.exists()  # refused before anything started


@pytest.mark.parametrize("replicas", ["1", "2"])
def test_the_memory_log_is_refused_for_replica_processes(
    replicas: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Even one replica is a process of its own, apart from the supervisor's.
    run_dir = tmp_path / "run"
    argv = ["run", "examples.counter:service", "--log", "memory", "--replicas", replicas,
            "--run-dir", str(run_dir)]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("dominoes: error: --log memory: the memory log works in one process only")
    assert err.rstrip().endswith("use --log shm")
    assert not run_dir.exists()


def test_more_replicas_than_cores_is_a_warning_that_says_why() -> None:
    text = _replicas_warning(8, {0, 1})
    assert text is not None
    assert text.startswith("8 replicas on 2 cores")
    assert "share cores" in text
    assert "every replica applies every write" in text
    assert "--replicas 2 or fewer" in text
    assert _replicas_warning(2, {0, 1}) is None
    assert _replicas_warning(None, {0, 1}) is None
    assert _replicas_warning(2, {3}) == _replicas_warning(2, {3})  # one core: singular
    assert "1 core " in (_replicas_warning(2, {3}) or "")


# --- errors in the service's module ------------------------------------------------------------


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path and current (as ``dominoes run`` makes the current one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def module(where: Path, source: str, stem: str = "svc") -> str:
    """Write a module with a name no test used before (imports are cached); its name."""
    name = f"{stem}_{next(_names)}"
    (where / f"{name}.py").write_text(source)
    return name


def test_a_syntax_error_names_the_file_and_line(
    importable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(importable, "import dominoes\n\nservice = dominoes.Service('x'\nx = (\n")
    code, err = run_cli(["run", f"{name}:service"], capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"dominoes: error: cannot import {name}: {name}.py:")
    assert "SyntaxError" in err
    assert "Traceback" not in err


def test_an_exception_while_importing_names_the_services_file_and_line(
    importable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(importable, "import dominoes\n\nlimit = 1 / 0\n")
    code, err = run_cli(["run", f"{name}:service"], capsys)
    assert code == 2
    assert err == (
        f"dominoes: error: cannot import {name}: {name}.py:3: ZeroDivisionError: division by zero\n"
    )


def test_an_exception_deeper_names_the_services_line_and_where_it_was_raised(
    importable: Path,
) -> None:
    helper = module(importable, "def load():\n    raise KeyError('settings')\n", "helper")
    name = module(importable, f"import {helper}\n\nCONFIG = {helper}.load()\n")
    with pytest.raises(ServiceLoadError) as info:
        load_service(f"{name}:service")
    assert str(info.value) == (
        f"cannot import {name}: {name}.py:3: KeyError: 'settings' (raised at {helper}.py:2)"
    )


def test_a_missing_module_is_one_line(importable: Path) -> None:
    with pytest.raises(ServiceLoadError, match=r"^cannot import no_such_mod: ModuleNotFoundError"):
        load_service("no_such_mod:service")


def test_a_missing_dependency_of_the_service_names_its_import_line(importable: Path) -> None:
    name = module(importable, "import os\nimport no_such_dependency\n")
    with pytest.raises(ServiceLoadError) as info:
        load_service(f"{name}:service")
    assert str(info.value).startswith(f"cannot import {name}: {name}.py:2: ModuleNotFoundError")


# --- stats and top: not running ----------------------------------------------------------------


def stale_socket(path: Path) -> None:
    """What a SIGKILLed supervisor leaves: a socket file nobody listens on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))


def test_control_state_tells_running_stale_and_absent(tmp_path: Path) -> None:
    assert control_state(tmp_path / "control.sock") == "absent"
    stale_socket(tmp_path / "stale" / "control.sock")
    assert control_state(tmp_path / "stale" / "control.sock") == "stale"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(tmp_path / "control.sock"))
        live.listen()
        assert control_state(tmp_path / "control.sock") == "running"


@pytest.mark.parametrize("command", ["stats", "top"])
def test_stats_and_top_say_a_stale_socket_is_not_running(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "counter"
    stale_socket(run_dir / "control.sock")
    extra = ["--once"] if command == "top" else []
    code, err = run_cli([command, "--run-dir", str(run_dir), *extra], capsys)
    assert code == 1
    assert err.startswith("dominoes: counter: not running (stale socket ")
    assert err.count("\n") == 1, err


def test_stats_without_a_service_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stats_main(tmp_path / "gone", as_json=False) == 1
    assert capsys.readouterr().err.startswith("dominoes: gone: no service is running at ")
    with pytest.raises(NotRunningError):
        fetch_stats(tmp_path / "gone")


def test_the_service_is_found_among_stale_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    root = tmp_path / "dominoes"
    stale_socket(root / "killed" / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        (root / "alive").mkdir()
        live.bind(str(root / "alive" / "control.sock"))
        live.listen()
        assert _find_run_dir(None, None) == root / "alive"
    # Only a stale one: it is chosen, and stats/top then say it is not running.
    (root / "alive" / "control.sock").unlink()
    assert _find_run_dir(None, None) == root / "killed"


# --- top's table -----------------------------------------------------------------------------


def report(index: int, applied_seq: int, lag: int, entries: int) -> dict[str, Any]:
    """A replica's stats report (the fields the table reads)."""
    return {
        "replica": {
            "index": index, "pid": 100 + index, "cpu": index, "loop": "uvloop", "state": "live",
            "applied_seq": applied_seq, "lag": lag, "entries_per_s": 1000.0,
            "queries_per_s": 50.0, "effects_run": 0, "loop_lag_ms": 0.1, "effect_stalls": 0,
            "core": {"claims_won": 0, "stalls": 0, "divergences": 0, "applied_entries": entries},
        }
    }  # fmt: skip


def log_doc(tail: int, slowest: int, cursor: int) -> dict[str, Any]:
    return {"tail": tail, "free_slots": 1000, "capacity": 16384, "slowest_replica": slowest,
            "slowest_cursor": cursor, "dead": []}  # fmt: skip


def table_text(doc: dict[str, Any]) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=200).print(render(doc))
    return out.getvalue()


def test_lag_and_the_footer_come_from_one_reading_of_the_log() -> None:
    # Each replica answered right after catching up (lag 0 in its report);
    # the log, read at one instant, has replica 1 230 slots behind.
    doc = {
        "service": "kv",
        "deaths": 0,
        "replicas": [
            {"index": 0, **{"report": report(0, 999, 0, 400)}},
            {"index": 1, **{"report": report(1, 990, 0, 390)}},
        ],
        "log": log_doc(1000, 0, 1000),  # read later than the reports: not used
        "status": {
            "replicas": [{"index": 0, "cursor": 1200}, {"index": 1, "cursor": 1000}],
            "log": log_doc(1230, 1, 1000),
        },
    }
    text = table_text(doc)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    cells = [cell.strip() for cell in rows["1"].split("│")[1:-1]]
    named = dict(zip(COLUMNS, cells, strict=True))
    assert named["seq"] == "999"
    assert named["lag (slots)"] == "230"
    assert named["entries"] == "390"  # entries, as entries/s counts
    assert "slowest replica 1 at 1000 (230 behind)" in text


def test_without_a_status_the_reports_are_shown() -> None:
    doc = {
        "service": "kv",
        "replicas": [{"index": 0, "report": report(0, 41, 3, 40)}, {"index": 1, "pid": None}],
        "log": log_doc(45, 0, 42),
    }
    text = table_text(doc)
    assert "(3 behind)" in text
    assert "not ready" in text


@pytest.mark.parametrize("option", ["--stuck-after", "--apply-timeout", "--eject-after"])
def test_durations_must_not_be_negative(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dominoes._cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["run", "examples.counter:service", option, "-1"])
    assert exit_info.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err
    assert (
        getattr(_parser().parse_args(["run", "x:y", option, "0"]), option[2:].replace("-", "_"))
        == 0
    )
