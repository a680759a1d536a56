"""Die with the parent: a replica (or a snapshot child) never outlives its supervisor.

A replica watches its supervisor through a pipe and exits when it closes, but
only while its event loop runs: a replica stopped by SIGSTOP, or wedged in a
handler, would outlive a SIGKILLed supervisor and keep the service's port
and memory.  ``PR_SET_PDEATHSIG`` makes the kernel send SIGKILL when the
parent dies, which works on a stopped process too.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

__all__ = ("die_with_parent",)

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int) -> None:
    """Ask for SIGKILL when the parent dies; exit now if ``parent`` is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if parent and os.getppid() != parent:  # it died before the request took effect
        os._exit(1)
