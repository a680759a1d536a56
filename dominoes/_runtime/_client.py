"""Local clients: submit updates from another process on the same machine.

``client = await dominoes.connect("counter")`` attaches to a running
service through its control socket and, from then on, appends requests
straight into the service's shared-memory log, like a replica does::

    async with await dominoes.connect("counter") as client:
        value = await client.submit(Counter.incr, "hits", by=2)

How it works
------------
* **Attach.**  The client connects to ``<run dir>/control.sock`` (0600, in a
  0700 directory; the supervisor also refuses any other uid with
  ``SO_PEERCRED``), checks with ``SO_PEERCRED`` in turn that the supervisor
  runs as its own uid, and sends ``{"op": "connect"}``.  The supervisor answers
  with a *client line* ``L`` (a log header line above the replicas, which
  never holds the log back), the service's events and limits, and passes the
  log's memfd and every replica's eventfd with ``SCM_RIGHTS``.  The
  connection stays open for the client's lifetime: when it closes, however
  the client ended, the supervisor fills any slot the client had reserved
  but not published with a no-op, and frees the line.
* **Submit.**  A request is a ``race`` ``Call`` entry with a request id
  ``c<L>.<nonce>.<key>`` (``nonce``: 8 random bytes per client incarnation).
  It is appended on line ``L`` (reserve and publish, with no suspension in
  between), then replicas whose asleep flag is set are woken through their
  eventfds.  The first replica to apply the entry owns it and sends the
  reply datagram to the client's abstract unix socket, derived from the id.
* **Retry.**  Without a reply within ``_timeout``, the same entry (same id) is
  appended again.  The state machine applies an id once; a retry is answered
  with the recorded result.  Ids are remembered for the service's
  ``dedup_window`` entries.
* **Errors.**  Unknown events (:class:`UnknownEventError`), arguments msgpack
  cannot encode (``TypeError``) and entries over the log's size limit
  (:class:`EntryTooLargeError`) are raised here, before anything is
  appended.  A handler's exception comes back as :class:`RemoteError`
  (``"OverflowError: ..."``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import socket
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import msgspec

from .._core._codec import Call, Mode, encode
from .._core._component import EventRef
from .._core._errors import DominoesError, LogFullError, UnknownEventError
from .._core._machine import RemoteError
from ._backoff import Backoff
from ._local import MAX_REPLY, NONCE_HEX, client_request_prefix, reply_address
from ._shm import SharedLog
from ._wakeups import EventfdWakeups, wake_sleepers

__all__ = ("Client", "ClientStatistics", "connect")

#: Most fds a connect reply may carry: the log and one eventfd per replica.
_MAX_FDS: Final = 1 + 1024
_UCRED: Final = struct.Struct("3i")
_reply_decoder: Final = msgspec.msgpack.Decoder()


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one local client."""

    line: int
    submitted: int
    replies: int
    retries: int
    timeouts: int
    full_waits: int
    wakeups_sent: int
    #: replies for no pending request (a late answer to an earlier attempt)
    stale_replies: int
    #: datagrams refused: from another uid, truncated or undecodable
    refused_replies: int
    pending: int


class Client:
    """A local process's connection to a running service; see :func:`connect`."""

    def __init__(
        self,
        *,
        service: str,
        line: int,
        replicas: int,
        events: frozenset[str],
        max_entry_bytes: int,
        control: socket.socket,
        shared: SharedLog,
        wake_fds: list[int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.service = service
        #: this client's line in the log header (its entries' ``origin``)
        self.line = line
        self.replicas = replicas
        #: every event the service binds a handler to
        self.events = events
        #: the service's run dir, to ask for the events bound now (None: never)
        self._run_dir: Path | None = None
        #: the largest encoded request the log takes (EntryTooLargeError beyond)
        self.max_entry_bytes = max_entry_bytes
        self._control = control
        self._shared = shared
        self._log = shared.log()
        self._wake_fds = wake_fds
        self._wake = EventfdWakeups(wake_fds)
        self._loop = loop
        self._nonce = os.urandom(NONCE_HEX // 2).hex()
        self._prefix = client_request_prefix(line, self._nonce)
        self._ids = itertools.count(1)
        self._uid = os.geteuid()
        self._waiting: dict[str, list[asyncio.Future[tuple[bool, Any]]]] = {}
        self._buf = bytearray(MAX_REPLY)
        self._closed = False
        self._gone = False  # the supervisor closed our control connection
        self._submitted = self._replies = self._retries = self._timeouts = 0
        self._full_waits = self._wakeups_sent = self._stale = self._refused = 0
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(reply_address(service, line, self._nonce))
        except BaseException:
            sock.close()
            raise
        self._replies_sock = sock
        loop.add_reader(sock.fileno(), self._on_reply)
        loop.add_reader(control.fileno(), self._on_control)

    # --- public API ---------------------------------------------------------------

    async def submit(
        self,
        event: EventRef,
        /,
        *args: Any,
        _request_id: str | None = None,
        _timeout: float = 1.0,
        _retries: int = 5,
        **kwargs: Any,
    ) -> Any:
        """Apply an update on the service and return its result.

        ``event`` is an ``@update`` (``Counter.incr``) or its event name
        (``"Counter.incr"``).  ``_request_id`` names the request: submitting
        again with the same one (from this client) applies it at most once
        and returns the recorded result.  Without an answer within
        ``_timeout`` seconds the request is appended again, up to ``_retries``
        times, then ``TimeoutError`` is raised.  A handler's exception is
        raised as :class:`RemoteError`.
        """
        self._check_open()
        if _retries < 0 or _timeout <= 0:
            raise ValueError("_retries must be >= 0 and _timeout > 0")
        name = event if isinstance(event, str) else event.event
        if name not in self.events and name not in await self._events_now():
            raise UnknownEventError(
                f"no handler is bound to event {name!r} in service {self.service!r}"
            )
        key = str(next(self._ids)) if _request_id is None else f"k{_request_id}"
        rid = self._prefix + key
        call = Call(name, list(args), kwargs, time.time(), self.line, Mode.RACE, rid)
        try:
            payload = encode(call)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"the arguments of {name} cannot be encoded: {exc}") from None
        self._log.slots_for(len(payload))  # raises EntryTooLargeError before any append
        fut: asyncio.Future[tuple[bool, Any]] = self._loop.create_future()
        self._waiting.setdefault(rid, []).append(fut)
        self._submitted += 1
        try:
            deadline = self._loop.time() + _timeout * (_retries + 1)
            for attempt in range(_retries + 1):
                if attempt:
                    self._retries += 1
                await self._append(payload, deadline)
                done, _ = await asyncio.wait({fut}, timeout=_timeout)
                if done:
                    break
                self._timeouts += 1
            else:
                raise TimeoutError(
                    f"no reply to {name} (request {rid!r}) after {_retries + 1} attempts "
                    f"of {_timeout}s; service {self.service!r} may be stalled"
                )
        finally:
            waiters = self._waiting.get(rid)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._waiting[rid]
        ok, value = fut.result()
        if not ok:
            raise RemoteError(value)
        return value

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            line=self.line,
            submitted=self._submitted,
            replies=self._replies,
            retries=self._retries,
            timeouts=self._timeouts,
            full_waits=self._full_waits,
            wakeups_sent=self._wakeups_sent,
            stale_replies=self._stale,
            refused_replies=self._refused,
            pending=sum(len(w) for w in self._waiting.values()),
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def _events_now(self) -> frozenset[str]:
        """The events bound now (a reconfiguration may have added some since the
        welcome's list), asked of the supervisor; the welcome's list if it cannot say."""
        if self._run_dir is None:
            return self.events
        from ._top import control_request

        try:
            (reply,) = await asyncio.to_thread(
                control_request, self._run_dir, [{"op": "events"}], 5.0
            )
        except (ConnectionError, RuntimeError, OSError, ValueError):
            return self.events
        if isinstance(reply, dict) and isinstance(reply.get("events"), list):
            self.events = frozenset(reply["events"]) | self.events
        return self.events

    async def close(self) -> None:
        """Detach: pending submits fail, and the supervisor frees this client's line."""
        self._shutdown(ConnectionError(f"client of service {self.service!r} closed"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"line {self.line}"
        return f"<dominoes.Client {self.service!r} {state}>"

    # --- appending ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._gone:
            raise ConnectionError(f"service {self.service!r} stopped")
        if self._closed:
            raise ConnectionError(f"client of service {self.service!r} is closed")

    async def _append(self, payload: bytes, deadline: float) -> None:
        """Append ``payload`` on this client's line (waiting while the log is full)."""
        backoff = Backoff()
        while True:
            self._check_open()
            # Reserve and publish with no suspension in between.
            if self._log.try_append(self.line, payload):
                break
            self._full_waits += 1
            if self._loop.time() > deadline:
                raise LogFullError(f"the log of service {self.service!r} stayed full")
            await asyncio.sleep(backoff.next())
        # The producer's half of the wake-up protocol (as the replicas do).
        self._wakeups_sent += wake_sleepers(self._log, self._wake, self.replicas)

    # --- replies ------------------------------------------------------------------

    def _on_reply(self) -> None:
        sock, buf = self._replies_sock, self._buf
        cmsg = socket.CMSG_SPACE(_UCRED.size)
        while True:
            try:
                nbytes, ancdata, flags, _ = sock.recvmsg_into([buf], cmsg)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or not self._same_uid(ancdata):
                self._refused += 1
                continue
            try:
                rid, ok, value = _reply_decoder.decode(memoryview(buf)[:nbytes])
            except (msgspec.DecodeError, TypeError, ValueError):
                self._refused += 1
                continue
            waiters = self._waiting.get(rid) if isinstance(rid, str) else None
            if not waiters:
                self._stale += 1
                continue
            self._replies += 1
            for fut in waiters:
                if not fut.done():
                    fut.set_result((bool(ok), value))

    def _same_uid(self, ancdata: list[tuple[int, int, bytes]]) -> bool:
        """The kernel-supplied sender credentials say: this uid (anyone may send here)."""
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _, uid, _ = _UCRED.unpack(data[: _UCRED.size])
                return bool(uid == self._uid)
        return False

    def _on_control(self) -> None:
        try:
            data = self._control.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # EOF: the supervisor stopped (or dropped us)
            self._gone = True
            self._shutdown(ConnectionError(f"service {self.service!r} stopped"))

    # --- closing --------------------------------------------------------------------

    def _shutdown(self, error: Exception) -> None:
        if self._closed:
            return
        self._closed = True
        for waiters in self._waiting.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(error)
        self._waiting.clear()
        loop = self._loop
        if not loop.is_closed():
            loop.remove_reader(self._replies_sock.fileno())
            loop.remove_reader(self._control.fileno())
        self._replies_sock.close()
        # Nothing appends any more (appends never suspend midway, and every
        # one checks _closed first); closing the control connection tells the
        # supervisor to recover and free the line.
        self._shared.close()
        for fd in self._wake_fds:
            os.close(fd)
        self._wake_fds = []
        self._wake = EventfdWakeups(self._wake_fds)
        self._control.close()


async def connect(
    name: str,
    *,
    run_dir: Path | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the whole attach, as documented
) -> Client:
    """Attach to the running service ``name`` on this machine.

    ``run_dir`` is the service's run directory (``dominoes run --run-dir``);
    by default ``$XDG_RUNTIME_DIR/dominoes/NAME`` or ``/tmp/dominoes-UID/NAME``.
    Raises ``ConnectionError`` if no such service runs, ``PermissionError``
    if it runs as another user, or if a process of another user serves its
    control socket (a run directory someone else created or swapped: the
    client sends nothing to it and believes nothing from it).
    """
    # Imported only here: ``import dominoes`` stays light.
    from ._peercred import ForeignServerError, connect_checked
    from ._rundir import default_run_dir

    loop = asyncio.get_running_loop()
    path = (run_dir or default_run_dir(name)) / "control.sock"
    deadline = loop.time() + timeout
    sock: socket.socket | None = None
    fds: list[int] = []
    try:
        try:
            # SO_PEERCRED: the supervisor runs as this uid.  A unix connect
            # completes at once (it waits only on a full accept queue, within
            # ``timeout``), so it is made here without the loop.
            sock = connect_checked(path, timeout)
            sock.setblocking(False)
            async with asyncio.timeout_at(deadline):
                await loop.sock_sendall(sock, b'{"op": "connect"}\n')
                data, fds = await _receive_reply(loop, sock)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(
                f"service {name!r} is not running (no control socket at {path}): {exc}"
            ) from None
        except ForeignServerError as exc:
            raise ForeignServerError(f"cannot attach to service {name!r}: {exc}") from None
        except PermissionError as exc:
            raise PermissionError(
                f"cannot attach to service {name!r} at {path} ({exc}); only the user running it can"
            ) from None
        except TimeoutError:
            raise TimeoutError(f"service {name!r} did not answer within {timeout}s") from None
        reply = json.loads(data)
        if "error" in reply:
            text = str(reply["error"])
            if text.startswith("PermissionError"):
                raise PermissionError(text)
            raise ConnectionError(f"service {name!r} refused the connection: {text}")
        if reply.get("service") != name:
            other = reply.get("service")
            raise ConnectionError(f"{path} belongs to service {other!r}, not {name!r}")
        replicas = int(reply["replicas"])
        if len(fds) != 1 + replicas:
            raise DominoesError(f"expected {1 + replicas} file descriptors, received {len(fds)}")
        # The log fd belongs to the mapping from here on (closed with it).
        log_fd = fds.pop(0)
        shared = SharedLog.attach(log_fd)
        try:
            client = Client(
                service=name,
                line=int(reply["line"]),
                replicas=replicas,
                events=frozenset(reply["events"]),
                max_entry_bytes=int(reply["max_entry_bytes"]),
                control=sock,
                shared=shared,
                wake_fds=fds,
                loop=loop,
            )
            client._run_dir = path.parent
        except BaseException:
            shared.close()
            raise
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if sock is not None:
            sock.close()
        raise
    return client


async def _receive_reply(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[bytes, list[int]]:
    """Read one JSON line and the fds passed with it, from a non-blocking socket."""
    data = b""
    fds: list[int] = []
    try:
        while not data.endswith(b"\n"):
            try:
                chunk, got, flags, _ = socket.recv_fds(
                    sock, 65536, _MAX_FDS, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                await _readable(loop, sock)
                continue
            fds += got
            if flags & socket.MSG_CTRUNC:
                raise OSError(errno.EMSGSIZE, "too many file descriptors in the connect reply")
            if not chunk:
                raise ConnectionError("the supervisor closed the control connection")
            data += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return data, fds


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
