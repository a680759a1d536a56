"""maxmemory: accounted sizes, eviction and OOM, decided alike on every replica.

Writes go to both replicas in turn; after each scenario both replicas must
hold exactly the same keys and account the same ``used_memory_dataset``: an
eviction decided from one replica's own memory would make them differ.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .harness import Service
from .kv_helpers import clients_on_every_replica, kv_service

pytestmark = pytest.mark.integration

#: redis-py raises OutOfMemoryError for an ``-OOM ...`` reply, with the text after "OOM"
OOM = "command not allowed when used memory > 'maxmemory'."
LIMIT = 20_000


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with kv_service(tmp_path_factory.mktemp("kv-maxmemory")) as svc:
        yield svc


@pytest.fixture
def on(kv: Service) -> Iterator[dict[int, redis.Redis]]:
    clients = clients_on_every_replica(kv.port)
    clients[0].flushall()
    clients[0].config_set("maxmemory-policy", "noeviction")
    clients[0].config_set("maxmemory", str(LIMIT))
    yield clients
    clients[0].config_set("maxmemory", "0")
    clients[0].config_set("maxmemory-policy", "noeviction")
    clients[0].flushall()
    for r in clients.values():
        r.close()


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory_dataset"])


def agree(on: dict[int, redis.Redis]) -> set[bytes]:
    """Both replicas hold the same keys and account the same size; the keys."""
    on[0].delete("{barrier}")  # each replica has applied what the other acknowledged
    on[1].delete("{barrier}")
    keys = [{k.encode() if isinstance(k, str) else k for k in r.keys("*")} for r in on.values()]
    assert keys[0] == keys[1]
    assert used(on[0]) == used(on[1])
    return keys[0]


def test_noeviction_refuses_writes_that_grow_and_lets_the_others_run(
    on: dict[int, redis.Redis],
) -> None:
    refused_at, error = None, ""
    for i in range(400):
        try:
            on[i % 2].set(f"k{i}", "x" * 100)
        except redis.exceptions.OutOfMemoryError as exc:
            refused_at, error = i, str(exc)
            break
    assert refused_at is not None
    assert error == OOM
    keys = agree(on)
    assert len(keys) == refused_at
    assert used(on[0]) > LIMIT
    # reads, deletions and pops still run; so do writes once there is room again
    assert on[1].get("k0") == b"x" * 100
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        on[1].rpush("list", "v")
    assert on[0].lpop("list") is None
    assert on[1].delete(*[f"k{i}" for i in range(40)]) == 40
    assert on[0].set("after", "1")
    assert agree(on) == (keys - {f"k{i}".encode() for i in range(40)}) | {b"after"}


def test_scripts_and_functions_flagged_no_writes_or_allow_oom_run_over_the_limit(
    on: dict[int, redis.Redis],
) -> None:
    on[0].function_load(
        "#!lua name=oom\n"
        "redis.register_function('grow', function(k, a) return redis.call('set', k[1], a[1]) end)\n"
        "redis.register_function{function_name='peek', flags={'no-writes'},\n"
        "  callback=function(k) return redis.call('get', k[1]) end}\n"
        "redis.register_function{function_name='force', flags={'allow-oom'},\n"
        "  callback=function(k, a) return redis.call('set', k[1], a[1]) end}",
        replace=True,
    )
    for i in range(400):
        try:
            on[i % 2].set(f"k{i}", "x" * 100)
        except redis.exceptions.OutOfMemoryError:
            break
    else:
        raise AssertionError("the limit was never reached")
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        on[0].fcall("grow", 1, "g", "v")
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        on[1].eval("return redis.call('set', KEYS[1], 'v')", 1, "g")
    assert on[1].fcall("peek", 1, "k0") == b"x" * 100
    assert on[0].fcall("force", 1, "forced", "yes") == b"OK"
    assert on[1].get("forced") == b"yes"
    assert on[0].eval("#!lua flags=no-writes\nreturn redis.call('get', KEYS[1])", 1, "k1") == (
        b"x" * 100
    )
    assert on[1].eval("#!lua flags=allow-oom\nreturn redis.call('set', 'e', '1')", 0) == b"OK"
    with pytest.raises(redis.ResponseError, match="Function not found"):
        on[1].fcall("nosuch", 0)
    agree(on)
    on[0].function_delete("oom")


def test_allkeys_lru_evicts_the_least_recently_written(on: dict[int, redis.Redis]) -> None:
    on[0].config_set("maxmemory-policy", "allkeys-lru")
    on[0].set("keep", "v")
    for i in range(400):
        on[i % 2].set(f"k{i}", "x" * 100)
        if i % 2 == 0:
            # written again, so at most two keys are newer: evicting it would take
            # all 5 samples among 3 of ~125 keys (the random is the entry's, not ours)
            on[(i + 1) % 2].set("keep", "v")
    keys = agree(on)
    assert b"keep" in keys
    assert b"k399" in keys
    assert b"k0" not in keys
    assert 50 < len(keys) < 400
    assert used(on[0]) <= LIMIT + 200  # over by at most the last entry's write
    assert int(on[1].info("stats")["evicted_keys"]) > 0


def test_allkeys_random_and_collections_agree_on_every_replica(
    on: dict[int, redis.Redis],
) -> None:
    on[0].config_set("maxmemory-policy", "allkeys-random")
    for i in range(300):
        r = on[i % 2]
        r.hset(f"h{i % 7}", f"f{i}", "y" * 30)
        r.rpush(f"l{i % 5}", "z" * 40)
        r.sadd(f"s{i % 3}", f"m{i}")
        r.zadd(f"z{i % 4}", {f"m{i}": i})
    agree(on)
    assert used(on[0]) <= LIMIT + 500


def test_volatile_ttl_evicts_keys_with_a_deadline_first_then_refuses(
    on: dict[int, redis.Redis],
) -> None:
    on[0].config_set("maxmemory-policy", "volatile-ttl")
    for i in range(60):
        on[i % 2].set(f"p{i}", "x" * 100)  # no deadline: never evicted
    for i in range(60):
        on[i % 2].set(f"t{i}", "x" * 100, ex=86400 + i)
    keys = agree(on)
    assert {f"p{i}".encode() for i in range(60)} <= keys
    errors = []
    for i in range(200):
        try:
            on[i % 2].set(f"q{i}", "x" * 100)
        except redis.exceptions.OutOfMemoryError as exc:
            errors.append(str(exc))
    keys = agree(on)
    assert errors  # once no key with a deadline is left
    assert set(errors) == {OOM}
    assert not any(k.startswith(b"t") for k in keys)


def test_maxmemory_0_turns_the_accounting_off(on: dict[int, redis.Redis]) -> None:
    on[0].set("a", "1")
    assert used(on[1]) > 0
    on[1].config_set("maxmemory", "0")
    on[0].set("b", "2")
    assert used(on[0]) == 0
    assert on[0].info("memory")["maxmemory_policy"] == "noeviction"


def test_a_restarted_replica_keeps_accounting_alike(tmp_path: Path) -> None:
    """The sizes and the sampling list are replicated state: a replica restored from
    a snapshot after kill -9 evicts exactly what the other does."""
    with kv_service(tmp_path) as svc:
        on = clients_on_every_replica(svc.port)
        on[0].config_set("maxmemory-policy", "allkeys-lru")
        on[0].config_set("maxmemory", str(LIMIT))
        for i in range(200):
            on[i % 2].set(f"k{i}", "x" * 100)
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        svc.wait_restarted(1)
        on[1].close()
        on = clients_on_every_replica(svc.port)
        for i in range(200, 400):
            on[i % 2].set(f"k{i}", "x" * 100)
        keys = agree(on)
        assert 50 < len(keys) < 400
        for r in on.values():
            r.close()
