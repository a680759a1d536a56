"""Run directories: created without following symlinks, refused unless this uid's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dominoes._runtime._rundir import RunDirError, default_run_dir, make_run_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another uid's files")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /tmp (sticky, writable by all) as $XDG_RUNTIME_DIR."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    return shared


def test_the_default_is_under_xdg_runtime_dir_else_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_run_dir("kv") == Path("/run/user/1000/dominoes/kv")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_run_dir("kv") == Path(f"/tmp/dominoes-{os.getuid()}/kv")


def test_both_levels_of_the_default_are_created_0700(xdg: Path) -> None:
    path = make_run_dir(None, "kv")
    assert path == xdg / "dominoes" / "kv"
    assert mode(xdg / "dominoes") == mode(path) == 0o700
    assert make_run_dir(None, "kv") == path  # and found fine the next time


def test_a_planted_per_uid_symlink_is_refused_and_its_target_untouched(
    xdg: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "snapshot-0-1.bin").write_bytes(b"keep me")
    (xdg / "dominoes").symlink_to(victim)
    with pytest.raises(RunDirError, match="is a symlink"):
        make_run_dir(None, "kv")
    assert mode(victim) == 0o755
    assert sorted(p.name for p in victim.iterdir()) == ["snapshot-0-1.bin"]


def test_a_planted_service_symlink_is_refused(xdg: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o750)
    (xdg / "dominoes").mkdir(mode=0o700)
    (xdg / "dominoes" / "kv").symlink_to(victim)
    with pytest.raises(RunDirError, match="kv is a symlink"):
        make_run_dir(None, "kv")
    assert mode(victim) == 0o750


@pytest.mark.parametrize("level", ["base", "service"])
def test_a_directory_others_may_write_to_is_refused(xdg: Path, level: str) -> None:
    base = xdg / "dominoes"
    base.mkdir()
    target = base if level == "base" else base / "kv"
    target.mkdir(exist_ok=True)
    target.chmod(0o777)
    with pytest.raises(RunDirError, match="has mode 0777: others may write to it"):
        make_run_dir(None, "kv")
    assert mode(target) == 0o777  # refused, not "fixed"


def test_one_of_ours_that_others_may_only_read_is_tightened(xdg: Path) -> None:
    base = xdg / "dominoes"
    base.mkdir()
    base.chmod(0o755)  # what earlier versions made of /tmp/dominoes-UID
    make_run_dir(None, "kv")
    assert mode(base) == 0o700


@as_root
@pytest.mark.parametrize("level", ["base", "service"])
def test_another_owners_directory_is_refused(xdg: Path, level: str) -> None:
    base = xdg / "dominoes"
    base.mkdir(mode=0o700)
    target = base if level == "base" else base / "kv"
    target.mkdir(mode=0o700, exist_ok=True)
    os.chown(target, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match=f"belongs to uid {NOBODY}, not to this user"):
        make_run_dir(None, "kv")


@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_a_name_that_is_no_single_directory_is_refused(xdg: Path, name: str) -> None:
    with pytest.raises(RunDirError, match="cannot name a directory"):
        make_run_dir(None, name)


def test_an_explicit_run_dir_is_created_with_its_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "run"
    assert make_run_dir(path, "kv") == path
    assert mode(path) == 0o700


def test_an_explicit_run_dir_is_checked_like_the_default(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o775)
    with pytest.raises(RunDirError, match=f"{run} has mode 0775"):
        make_run_dir(run, "kv")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(RunDirError, match=f"{link} is a symlink"):
        make_run_dir(link, "kv")
    run.chmod(0o750)
    make_run_dir(run, "kv")
    assert mode(run) == 0o700


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(RunDirError, match="not a directory"):
        make_run_dir(path, "kv")
