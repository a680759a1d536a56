"""Redis's persistence commands on a durable KV service, under redis-py.

``dominoes run dominoes.components.kv:service --replicas 2 --durable DIR
--fsync always``: SAVE and BGSAVE write snapshots into DIR, LASTSAVE and
``INFO persistence`` report them, CONFIG GET shows the command line, and a
service stopped with SIGINT and started again on DIR has its keys back.
The same commands on a service without ``--durable`` say persistence is off.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .harness import Service
from .kv_helpers import clients_on_every_replica, kv_service, replica_of, wait_for

pytestmark = pytest.mark.integration

NOT_DURABLE = "persistence is off: run the service with --durable DIR"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kv-persistence") / "data"


@pytest.fixture(scope="module")
def durable(data_dir: Path) -> Iterator[Service]:
    """A 2-replica durable KV service (``--fsync always``) on ``data_dir``."""
    run_dir = data_dir.parent / "run"
    with kv_service(run_dir, args=("--durable", str(data_dir), "--fsync", "always")) as svc:
        yield svc


@pytest.fixture(scope="module")
def both(durable: Service) -> Iterator[dict[int, redis.Redis]]:
    """One client per replica of the durable service."""
    clients = clients_on_every_replica(durable.port)
    yield clients
    for c in clients.values():
        c.close()


def snapshots(data_dir: Path) -> list[int]:
    return sorted(int(p.name[9:-5]) for p in data_dir.glob("snapshot-*.snap"))


def lastsave(r: redis.Redis) -> int:
    return int(r.lastsave().timestamp())


def test_save_writes_a_snapshot_and_lastsave_reports_it(
    both: dict[int, redis.Redis], data_dir: Path
) -> None:
    r0, r1 = both[0], both[1]
    before = lastsave(r0)
    saves = r0.info("persistence")["rdb_saves"]
    applied = r0.info("dominoes")["applied_seq"]
    r0.mset({f"saved:{i}": i for i in range(100)})
    assert r0.save() is True
    status = r0.info("persistence")
    assert status["rdb_saves"] == saves + 1
    assert status["rdb_last_bgsave_status"] == "ok"
    assert status["rdb_bgsave_in_progress"] == 0
    seq = status["dominoes_snapshot_seq"]
    assert seq in snapshots(data_dir)  # on disk when SAVE answered
    assert seq > applied + 1  # past the MSET's entry: the snapshot holds it
    after = lastsave(r0)
    assert before <= after <= time.time()
    assert status["rdb_last_save_time"] == after
    assert lastsave(r1) == after  # the snapshot's time is the service's, not one replica's


def test_bgsave_starts_a_snapshot(both: dict[int, redis.Redis], data_dir: Path) -> None:
    r = both[1]
    saves = r.info("persistence")["rdb_saves"]
    r.set("bg", "1")
    assert r.bgsave() is True  # redis-py sends BGSAVE SCHEDULE

    def written() -> dict[str, Any]:  # nothing acknowledges a BGSAVE's end
        status: dict[str, Any] = r.info("persistence")
        return status if status["rdb_saves"] == saves + 1 else {}

    status = wait_for(written, timeout=30)
    assert status["rdb_bgsave_in_progress"] == 0
    assert status["rdb_last_bgsave_status"] == "ok"
    assert status["dominoes_snapshot_seq"] in snapshots(data_dir)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("BGSAVE", "NOW")


def test_info_persistence_fields(both: dict[int, redis.Redis], data_dir: Path) -> None:
    for index, r in both.items():
        assert replica_of(r) == index
        status = r.info("persistence")
        assert status["loading"] == 0
        assert status["async_loading"] == 0
        assert status["aof_enabled"] == 1
        assert status["aof_rewrite_in_progress"] == 0
        assert status["aof_rewrite_scheduled"] == 0
        assert status["aof_last_write_status"] == "ok"
        assert status["aof_current_size"] > 0  # the segment files hold the writes
        assert status["rdb_last_bgsave_status"] in ("ok", "err")
        assert isinstance(status["rdb_changes_since_last_save"], int)
        assert isinstance(status["rdb_last_save_time"], int)
        assert status["dominoes_fsync"] == "always"
        assert Path(status["dominoes_dir"]).resolve() == data_dir.resolve()
        assert status["dominoes_acked"] >= status["dominoes_synced"] > 0
        assert status["dominoes_held_replies"] >= 0
        assert r.info()["aof_enabled"] == 1  # the default sections include it


def test_config_get_shows_the_command_line(both: dict[int, redis.Redis], data_dir: Path) -> None:
    r = both[0]
    assert r.config_get("appendfsync") == {"appendfsync": "always"}
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert Path(str(r.config_get("dir")["dir"])).resolve() == data_dir.resolve()
    assert r.config_get("save") == {"save": "600 1 0 1000000"}  # --snapshot-every's default
    assert set(r.config_get("append*")) == {"appendonly", "appendfsync"}
    with pytest.raises(redis.ResponseError, match="--fsync"):
        r.config_set("appendfsync", "no")
    assert r.config_get("appendfsync") == {"appendfsync": "always"}


def test_save_without_durability_is_an_error(tmp_path: Path) -> None:
    with kv_service(tmp_path / "run") as svc:
        r = redis.Redis(port=svc.port, socket_timeout=10)
        try:
            with pytest.raises(redis.ResponseError, match=NOT_DURABLE):
                r.save()
            with pytest.raises(redis.ResponseError, match=NOT_DURABLE):
                r.bgsave()
            assert r.info("persistence")["aof_enabled"] == 0
            assert r.config_get("appendonly") == {"appendonly": "no"}
            assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        finally:
            r.close()


def test_a_restart_on_the_same_directory_keeps_the_keys(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    args = ("--durable", str(data), "--fsync", "everysec")
    in_snapshot = {f"snap:{i}": f"v{i}" for i in range(200)}
    after_snapshot = {f"log:{i}": f"w{i}" for i in range(200)}
    with kv_service(run, args=args) as svc:
        r = redis.Redis(port=svc.port, socket_timeout=10)
        try:
            r.mset(in_snapshot)
            assert r.save() is True
            r.mset(after_snapshot)  # in the log's segments only
            r.delete("snap:0")
        finally:
            r.close()
        svc.proc.send_signal(signal.SIGINT)
        assert svc.proc.wait(60) == 0, svc.output
    assert snapshots(data)
    with kv_service(run, args=args) as svc:
        r = redis.Redis(port=svc.port, socket_timeout=10)
        try:
            expected = {**in_snapshot, **after_snapshot}
            del expected["snap:0"]
            keys = sorted(expected)
            assert r.mget(keys) == [expected[k].encode() for k in keys]
            assert r.exists("snap:0") == 0
            assert r.dbsize() == len(expected)
            status = r.info("persistence")
            assert status["dominoes_replayed"] > 0  # the writes after the snapshot
            assert status["rdb_last_save_time"] > 0
        finally:
            r.close()
