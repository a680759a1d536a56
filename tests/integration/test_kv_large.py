"""Large values: entries over the ring's limit travel through the blob store.

With the default log one entry holds 1,441,792 bytes; a larger SET is written
once to a file in the run directory and every replica reads it from there.
The test stores values of several sizes on one replica, reads them on the
other, and checks that no blob file outlives its entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .harness import Service, wait_until
from .kv_helpers import clients_on_every_replica, kv_service, raw_exchange


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with kv_service(tmp_path_factory.mktemp("large") / "run") as svc:
        yield svc


def blob_files(svc: Service) -> list[str]:
    return sorted(p.name for p in svc.run_dir.glob("blob-*"))


def test_a_large_value_set_on_one_replica_is_read_on_the_other(big: Service) -> None:
    on = clients_on_every_replica(big.port)
    try:
        for size in (1_441_000, 2 * 1024 * 1024, 24 * 1024 * 1024):
            value = os.urandom(size)
            assert on[0].set(f"large:{size}", value) is True
            assert on[1].get(f"large:{size}") == value
            assert on[1].strlen(f"large:{size}") == size
        # A large value in a pipeline between small commands keeps its place.
        pipe = on[1].pipeline(transaction=False)
        # redis-py types a pipeline's commands as the client's: they return the pipeline
        pipe.set("small:a", "1").set("large:p", b"x" * 5_000_000).incr("small:a")  # type: ignore[union-attr]
        assert pipe.execute() == [True, True, 2]
        assert on[0].get("large:p") == b"x" * 5_000_000
        # Every blob goes once both replicas are past its entry.
        assert on[0].set("after", "1") is True
        wait_until(lambda: blob_files(big) == [], timeout=20)
        for path in big.run_dir.iterdir():
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:  # replaced meanwhile (a newer recovery point)
                continue
            assert mode & 0o077 == 0, path
    finally:
        for r in on.values():
            r.close()


def test_small_values_never_touch_the_blob_store(big: Service) -> None:
    on = clients_on_every_replica(big.port)
    try:
        before = int(on[0].info("dominoes")["core_blobs_appended"])
        pipe = on[0].pipeline(transaction=False)
        for i in range(1000):
            pipe.set(f"small:{i}", "v" * 100)
        pipe.execute()
        assert int(on[0].info("dominoes")["core_blobs_appended"]) == before
        assert on[1].get("small:999") == b"v" * 100
    finally:
        for r in on.values():
            r.close()


def test_a_bulk_over_the_protocol_limit_gets_redis_error(big: Service) -> None:
    request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$600000000\r\n"
    reply, closed = raw_exchange(big.port, request, timeout=10)  # it closes: no wait
    assert reply == b"-ERR Protocol error: invalid bulk length\r\n"
    assert closed
