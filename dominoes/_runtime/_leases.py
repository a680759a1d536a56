"""Client lines: the log lines the supervisor lends to local clients, and their recovery.

A local client (``dominoes.connect``) appends straight into the log on a
line of its own, above the replicas' (a client line never holds the log
back).  The supervisor lends it one when it connects over ``control.sock``
(:meth:`ClientLeases.grant`), answers with the log's fds
(:meth:`ClientLeases.welcome`), and takes it back when that connection
closes, however the client ended (:meth:`ClientLeases.release`).

Taking a line back is a recovery: the client may have died between reserve
and publish.  The line is marked dead (its intent no longer counts as a live
producer's in other recoveries), any slot it reserved but never published is
filled with a no-op, and the line becomes free once nothing is left to
decide.  While a live producer announces the same seq, the answer is not
known yet: the line is looked at again every ``CLIENT_FILL_INTERVAL``
seconds, and stays out of use until then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._core._backend import SupervisedLog
from .._core._reconfigure import EVENT as RECONFIGURE_EVENT

if TYPE_CHECKING:
    from .._core._service import Service

__all__ = ("CLIENT_FILL_INTERVAL", "CLIENT_FILL_PATIENCE", "ClientLeases")

log = logging.getLogger("dominoes.supervisor")

#: Seconds between looks at a departed client's reservation while a live
#: producer announces the same seq (it clears within microseconds).
CLIENT_FILL_INTERVAL: Final = 0.005
#: Looks after which a still-ambiguous departed client is logged, and the
#: interval grows tenfold (the line stays out of use until it is resolved).
CLIENT_FILL_PATIENCE: Final = 200


class ClientLeases:
    """The client lines of one service: who holds which, and which are being recovered."""

    def __init__(
        self,
        *,
        service: Service,
        replicas: int,
        log: SupervisedLog,
        fds: list[int],
        wake: Callable[[], None],
        stopping: Callable[[], bool],
        first_line: int | None = None,
        refuse: str = "",
    ) -> None:
        self._service = service
        #: why no local client may connect ("": they may)
        self._refuse = refuse
        self._n = replicas
        #: the first line a client may get (after the replicas and the log writer)
        self._first = replicas if first_line is None else first_line
        #: None once the log is released (the service is gone, the log with it)
        self._log: SupervisedLog | None = log
        self._fds = fds
        self._wake = wake
        self._stopping = stopping
        # client line -> its control connection
        self._clients: dict[int, asyncio.StreamWriter] = {}
        # the lines of departed clients whose reservation is being recovered
        self._departing: set[int] = set()

    def lines(self) -> list[int]:
        """The lines held by connected clients."""
        return sorted(self._clients)

    def grant(self, writer: asyncio.StreamWriter) -> int:
        """Give a connecting local client a free client line (above the replicas)."""
        name = self._service.name
        if self._stopping() or self._log is None:
            raise RuntimeError(f"service {name!r} is stopping")
        if self._refuse:
            raise RuntimeError(self._refuse)
        top = self._log.max_replicas
        for line in range(self._first, top):
            if line not in self._clients and line not in self._departing:
                self._clients[line] = writer
                log.info("local client connected on line %d", line)
                return line
        raise RuntimeError(
            f"service {name!r} has no free client line "
            f"(at most {top - self._first} local clients at once)"
        )

    def welcome(self, line: int) -> tuple[dict[str, Any], list[int]]:
        """The reply to a connect, and the fds sent with it (the log, every eventfd)."""
        assert self._log is not None
        reply = {
            "line": line,
            "replicas": self._n,
            "service": self._service.name,
            "events": sorted({*self._service.events(), RECONFIGURE_EVENT}),
            "max_entry_bytes": self._log.max_entry_bytes,
        }
        return reply, list(self._fds)

    def release(self, line: int) -> None:
        """A client's control connection closed: it exited or died.  Recover its line.

        The process is gone (its last fd closed), so it can no longer touch the
        log.  The line is marked dead while it is recovered, so that its
        intent no longer counts as a live producer's in other recoveries, and
        becomes absent (free) once nothing is left to decide.
        """
        self._clients.pop(line, None)
        if self._log is None:
            return  # the service is gone: the log with it
        self._departing.add(line)
        self._log.mark_dead(line)
        self._recover(line, 0)

    def close(self) -> None:
        """The log is released: nothing is left to recover."""
        self._log = None

    def _recover(self, line: int, attempt: int) -> None:
        if self._log is None:
            self._departing.discard(line)
            return
        filled = self._log.fill_abandoned(line)
        if filled:
            log.warning("client line %d: filled %d abandoned slot(s) with no-ops", line, filled)
            self._wake()
        if not self._log.recovery_pending(line):
            self._log.leave(line)
            self._departing.discard(line)
            log.info("local client on line %d left", line)
            return
        if attempt == CLIENT_FILL_PATIENCE:
            log.warning(
                "client line %d: a live producer still announces its reserved seq; waiting", line
            )
        delay = CLIENT_FILL_INTERVAL * (10 if attempt >= CLIENT_FILL_PATIENCE else 1)
        asyncio.get_running_loop().call_later(delay, self._recover, line, attempt + 1)
