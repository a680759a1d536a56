"""Run directories that another user cannot hijack.

Why
---
A service keeps its control sockets, its monitor sockets and its snapshots
(the whole state) in its run directory.  Without ``$XDG_RUNTIME_DIR`` that is
``/tmp/dominoes-UID/NAME``, and ``/tmp`` is shared: any user can create
``/tmp/dominoes-UID`` before uid UID first runs a service, and put in it a
symlink to one of the victim's directories (which the service would then
chmod and empty of ``snapshot-*``), or a ``NAME/`` of their own holding their
own ``control.sock`` (which clients would ask, and where the service would
write its snapshots).

So, as ssh-agent and tmux do, each directory dominoes makes is created with
``mkdir`` (which never follows a symlink), opened with ``O_NOFOLLOW |
O_DIRECTORY``, and checked on the open descriptor: this uid owns it, and
nobody else may write to it.  Anything else stops the service with one line
naming the directory.  Both levels of the default are checked: the per-uid
``/tmp/dominoes-UID`` (or ``$XDG_RUNTIME_DIR/dominoes``) and the service's
``NAME``; so is an explicit ``--run-dir`` (created if missing).

A directory this uid owns that others may read or enter but not write to
(``0755``: what earlier versions made of ``/tmp/dominoes-UID``) is tightened
to 0700 rather than refused: nobody else can have put anything in it.

What is trusted: ``/tmp`` itself (sticky, so nobody else can rename or remove
what this uid created there, and the checked paths stay the checked
directories), ``$XDG_RUNTIME_DIR`` (the user's own, made by the login
manager) and the parents of an explicit ``--run-dir`` (the operator's
choice).  Clients do not rely on the directory: they check who serves the
socket they connect to (see ``_peercred``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

__all__ = ("RunDirError", "default_run_dir", "make_run_dir")

#: Mode bits that let someone else change what a directory holds.
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunDirError(RuntimeError):
    """A run directory is not this uid's alone: the service refuses to use it."""


def default_run_dir(name: str) -> Path:
    """``$XDG_RUNTIME_DIR/dominoes/NAME``, else ``/tmp/dominoes-UID/NAME``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "dominoes" if base else Path(f"/tmp/dominoes-{os.getuid()}")
    return root / name


def make_run_dir(run_dir: Path | None, name: str) -> Path:
    """Create the run directory of service ``name`` (0700), or check the one there; its path.

    ``run_dir`` is ``--run-dir``: missing parents are created as ``mkdir -p``
    would, and ``run_dir`` itself is checked.  ``None`` means
    :func:`default_run_dir`, whose per-uid parent is created and checked
    the same way.  Raises :class:`RunDirError`.
    """
    if run_dir is not None:
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {run_dir}: {exc}") from None
        os.close(_open_private(str(run_dir), None, run_dir))
        return run_dir
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise RunDirError(f"the service's name {name!r} cannot name a directory")
    path = default_run_dir(name)
    base = _open_private(str(path.parent), None, path.parent)
    try:
        os.close(_open_private(name, base, path))
    finally:
        os.close(base)
    return path


def _open_private(name: str, dir_fd: int | None, shown: Path) -> int:
    """Create (if missing) and open directory ``name``; raise unless it is ours alone.

    ``name`` is relative to ``dir_fd`` (an open, checked directory) or
    absolute; ``shown`` is its path for messages.  Returns the open fd.
    """
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass  # checked below, whoever made it
    except OSError as exc:
        raise RunDirError(f"cannot create the run directory {shown}: {exc.strerror}") from None
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RunDirError(
                f"{shown} is a symlink or not a directory; refusing to use it as a run "
                "directory (someone else may have planted it: remove it, or pass --run-dir)"
            ) from None
        raise RunDirError(f"cannot open the run directory {shown}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        mine = os.geteuid()
        if st.st_uid != mine:
            raise RunDirError(
                f"{shown} belongs to uid {st.st_uid}, not to this user (uid {mine}); refusing "
                "to use it as a run directory (someone else created it: remove it, or pass "
                "--run-dir)"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & _WRITABLE_BY_OTHERS:
            raise RunDirError(
                f"{shown} has mode {mode:04o}: others may write to it, so what it holds cannot "
                "be trusted; refusing to use it as a run directory (remove it, or chmod 700 it "
                "once you have checked what is in it)"
            )
        if mode != 0o700:
            os.fchmod(fd, 0o700)  # readable or searchable by others, but only ours to fill
    except BaseException:
        os.close(fd)
        raise
    return fd
