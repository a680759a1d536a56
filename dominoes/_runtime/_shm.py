"""The log's shared memory: an anonymous, sealed memfd passed by file descriptor.

Why a memfd and not a named POSIX segment in ``/dev/shm``
---------------------------------------------------------
A named segment outlives the processes using it until someone unlinks it.  A
supervisor killed with SIGKILL cannot unlink, so a named segment leaks on any
unclean stop; and on Python 3.11/3.12 every process that attaches through
``multiprocessing.shared_memory`` must also be kept from letting its
``resource_tracker`` unlink the segment under everyone else.

A memfd has no name.  The supervisor creates it, sets its mode to 0600, seals
its size (``F_SEAL_SHRINK | F_SEAL_GROW``: nobody with the fd can truncate it
and SIGBUS the replicas) and hands the fd to replicas (``pass_fds``) and to
local clients (``SCM_RIGHTS`` over the 0600 control socket).  The memory is
freed when the last process holding the fd or a mapping exits, clean stop or
not, so nothing of the service ever appears in ``/dev/shm``.

:class:`ShmLogFactory` is this backend's entry in the ``dominoes.logs``
group (``dominoes run --log shm``, the default): its host is the
supervisor's side of one log, and its one handle, the memfd, is what every
replica inherits.
"""

from __future__ import annotations

import atexit
import fcntl
import mmap
import os
from typing import Final

from .._core._log import DEFAULT_CAPACITY, DEFAULT_MAX_REPLICAS, DEFAULT_SLOT_SIZE, Log
from ._atomics import AtomicWords

__all__ = ("SharedLog", "ShmLogFactory", "ShmLogHost")

_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class SharedLog:
    """A :class:`Log` over a shared memfd, with the atomics it needs.

    ``create`` makes a new one (the supervisor); ``attach`` maps an inherited
    fd (a replica, a local client).  ``close`` releases every view before
    unmapping, so a ``BufferError`` can never keep the mapping alive.

    A process that exits without calling ``close`` (an error path that forgot
    it) is closed at exit all the same (``atexit``).  Left to the
    interpreter's final garbage collection, the views would be torn down in
    any order: the memoryview still exported to ``AtomicWords`` fails to
    clear (``BufferError: memoryview has 1 exported buffer``), the mapping
    goes anyway, and the process dies of SIGSEGV: what a replica that could
    not bind its address did, and a supervisor refusing ``--replicas 2000``.
    """

    def __init__(self, fd: int, size: int, *, owner: bool) -> None:
        self.fd = fd
        self.size = size
        self._owner = owner
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map)
        self.words = AtomicWords(self._view)
        self._handles: list[Log] = []
        atexit.register(self.close)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        slot_size: int = DEFAULT_SLOT_SIZE,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        max_entry_slots: int | None = None,
        first: int = 1,
    ) -> SharedLog:
        size = Log.size_for(capacity, slot_size, max_replicas)
        fd = os.memfd_create(f"dominoes-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            shared = cls(fd, size, owner=True)
        except BaseException:
            os.close(fd)
            raise
        try:
            Log.create(
                shared._view,
                shared.words,
                capacity=capacity,
                slot_size=slot_size,
                max_replicas=max_replicas,
                max_entry_slots=max_entry_slots,
                first=first,
            )
        except BaseException:  # a shape Log refuses
            shared.close()
            raise
        return shared

    @classmethod
    def attach(cls, fd: int) -> SharedLog:
        """Map an inherited log fd; the layout's magic and version are checked."""
        size = os.fstat(fd).st_size
        shared = cls(fd, size, owner=False)
        try:
            shared.log()  # checks magic and version
        except BaseException:
            shared.close()
            raise
        return shared

    def log(self) -> Log:
        """A new handle on the log (each producer keeps its own cached limit)."""
        handle = Log(self._view, self.words)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Release every handle and view, unmap, close the fd.  Idempotent.

        Nothing may use the log afterwards: a handle's next access raises
        ``ValueError: buffer released``.  A replica therefore closes it only
        once its event loop is closed (see ``_process.main``).
        """
        atexit.unregister(self.close)
        for handle in self._handles:
            handle.release()
        self._handles.clear()
        self.words.release()
        self._view.release()
        self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShmLogHost:
    """The supervisor's side of one ``shm`` log (the ``LogHost`` protocol)."""

    def __init__(self, shared: SharedLog) -> None:
        self.shared = shared
        #: this process's own handle (the supervisor's: membership, dead
        #: replicas, poison verdicts)
        self.log: Log = shared.log()

    def handles(self) -> list[int]:
        """What a replica process inherits to reach the log: the memfd."""
        return [self.shared.fd]

    def close(self) -> None:
        """Unmap and close the memfd (replicas and clients holding it keep the memory)."""
        self.shared.close()


class ShmLogFactory:
    """The ``shm`` entry of the ``dominoes.logs`` group: a log in a sealed memfd."""

    name: Final = "shm"

    def __init__(self, service: str = "log") -> None:
        #: names the memfd (``/proc/PID/fd`` shows ``/memfd:dominoes-SERVICE``)
        self.service = service

    def create(
        self,
        *,
        capacity: int,
        slot_size: int,
        replicas: int,
        max_entry_slots: int | None,
        first: int = 1,
    ) -> ShmLogHost:
        return ShmLogHost(
            SharedLog.create(
                self.service,
                capacity=capacity,
                slot_size=slot_size,
                max_replicas=replicas,
                max_entry_slots=max_entry_slots,
                first=first,
            )
        )

    def attach(self, handles: list[int]) -> ShmLogHost:
        """Map the memfd a replica process inherited (``handles()`` of the host)."""
        if len(handles) != 1:
            raise ValueError(f"the shm log is reached through one memfd, not {len(handles)} fds")
        return ShmLogHost(SharedLog.attach(handles[0]))
