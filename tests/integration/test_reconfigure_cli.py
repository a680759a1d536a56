"""``dominoes reconfigure`` on a running ``examples.counter`` service, seen from its clients.

A handler bound and a component added through the log change what every
replica does from one log position on; a replica killed and restarted
afterwards comes back with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from dominoes import UnknownEventError, connect, reconfiguration

from .harness import (
    LineClient,
    Service,
    ask,
    clients_on_every_replica,
    converged,
    running,
    wait_until,
)
from .harness import reconfigure as harness_reconfigure

TARGET = "examples.counter:service"


def reconfigure(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return harness_reconfigure(svc, "counter", *args)


def components(svc: Service, index: int) -> dict[str, Any]:
    registry = ask(svc.run_dir, index, "stats")["registry"]
    return {c["name"]: c["sizes"] for c in registry["components"]}


def test_bind_add_unbind_and_remove_on_a_live_service(tmp_path: Path) -> None:
    with running(TARGET, tmp_path / "run") as svc:
        on = clients_on_every_replica(svc.port, 2)
        assert on[0].ask("INCR k 50") == "50"

        bound = reconfigure(
            svc, "bind", "Counter.incr", "examples.limits:cap", "--order", "-1",
            "--static", json.dumps({"limit": 10}),
        )  # fmt: skip
        assert bound.returncode == 0, bound.stderr
        binding = int(bound.stdout)
        for client in on.values():  # the next write on either replica meets the cap
            assert client.ask("INCR k 50") == "ERR increment 50 is over the limit of 10"
        assert on[1].ask("INCR k 5") == "55"

        added = reconfigure(svc, "add", "examples.limits:Audit")
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == "audit"
        on[0].ask("INCR a")
        on[1].ask("INCR b")
        converged(svc.run_dir)
        assert [components(svc, i)["audit"] for i in range(2)] == [{"increments": 2}] * 2

        # a replica killed now comes back with the cap and the audit (from a snapshot)
        os.kill(svc.replica_pids()[1], signal.SIGKILL)
        svc.wait_restarted(1)
        for client in on.values():
            client.close()
        on = clients_on_every_replica(svc.port, 2)
        assert on[1].ask("INCR k 50") == "ERR increment 50 is over the limit of 10"
        on[1].ask("INCR c")
        converged(svc.run_dir)
        assert components(svc, 1)["audit"] == {"increments": 3}

        unbound = reconfigure(svc, "unbind", str(binding))
        assert unbound.returncode == 0, unbound.stderr
        assert on[0].ask("INCR k 50") == "105"
        removed = reconfigure(svc, "remove", "audit")
        assert removed.returncode == 0, removed.stderr
        wait_until(lambda: all("audit" not in components(svc, i) for i in range(2)))
        converged(svc.run_dir)
        for client in on.values():
            client.close()


def test_a_spec_that_cannot_apply_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    with running(TARGET, tmp_path / "run") as svc:
        failed = reconfigure(svc, "add", "examples.nowhere:Audit")
        assert failed.returncode == 1
        assert failed.stderr.startswith("dominoes: error: ")
        assert "cannot import examples.nowhere:Audit" in failed.stderr
        bad_json = reconfigure(svc, "add", "examples.limits:Audit", "--kwargs", "[1]")
        assert bad_json.returncode == 2
        assert "expected a JSON object" in bad_json.stderr
        assert set(components(svc, 0)) == {"Counter"}
        converged(svc.run_dir)


def test_a_durable_service_restarts_with_its_reconfigurations(tmp_path: Path) -> None:
    """Stopped and started again from its data dir, the service has the cap and the audit."""
    args = ("--durable", str(tmp_path / "data"))
    with running(TARGET, tmp_path / "run", args=args) as svc:
        assert reconfigure(svc, "add", "examples.limits:Audit").returncode == 0
        bound = reconfigure(
            svc,
            "bind",
            "Counter.incr",
            "examples.limits:cap",
            "--order",
            "-1",
            "--static",
            '{"limit": 3}',
        )
        assert bound.returncode == 0, bound.stderr
        on = clients_on_every_replica(svc.port, 2)
        assert on[0].ask("INCR k 2") == "2"
        for client in on.values():
            client.close()
        assert svc.stop() == 0
    with running(TARGET, tmp_path / "run", args=args) as svc:
        on = clients_on_every_replica(svc.port, 2)
        assert on[1].ask("INCR k 9") == "ERR increment 9 is over the limit of 3"
        assert on[0].ask("INCR k 3") == "5"
        converged(svc.run_dir)
        assert [components(svc, i)["audit"] for i in range(2)] == [{"increments": 1}] * 2
        for client in on.values():
            client.close()


def test_reconfiguring_under_load_loses_no_write_and_applies_none_twice(tmp_path: Path) -> None:
    """8 writers, each on its own key, while handlers and a component come and go:
    every writer's replies count 1, 2, 3, ... with no gap and no repeat."""
    with running(TARGET, tmp_path / "run") as svc:
        stop = threading.Event()
        replies: dict[int, list[str]] = {w: [] for w in range(8)}

        def write(w: int) -> None:
            with LineClient(svc.port) as client:
                while not stop.is_set():
                    replies[w].append(client.ask(f"INCR w{w}"))

        writers = [threading.Thread(target=write, args=(w,)) for w in range(8)]
        for t in writers:
            t.start()
        try:
            for _ in range(2):
                got = reconfigure(
                    svc, "bind", "Counter.incr", "examples.limits:cap", "--order", "-1",
                    "--static", '{"limit": 1000}',
                )  # fmt: skip
                assert got.returncode == 0, got.stderr
                assert reconfigure(svc, "add", "examples.limits:Audit").returncode == 0
                assert reconfigure(svc, "unbind", got.stdout.strip()).returncode == 0
                assert reconfigure(svc, "remove", "audit").returncode == 0
        finally:
            stop.set()
            for t in writers:
                t.join(30)
        for w, said in replies.items():
            assert said == [str(n) for n in range(1, len(said) + 1)], f"writer {w}: {said[-5:]}"
        on = clients_on_every_replica(svc.port, 2)
        for client in on.values():
            for w, said in replies.items():
                assert client.ask(f"GET w{w}") == str(len(said))
            client.close()
        converged(svc.run_dir)


def test_a_local_client_submits_to_a_component_added_after_it_connected(tmp_path: Path) -> None:
    """The client's list of events came with its welcome; an event bound since is
    looked up when first used, and a name bound nowhere is still refused at once."""

    async def scenario(svc: Service) -> tuple[Any, str]:
        async with await connect("counter", run_dir=svc.run_dir) as client:
            await client.submit("Counter.incr", "a")
            added = await client.submit(
                reconfiguration.EVENT, reconfiguration.add("examples.limits:Audit")
            )
            assert added == "audit"
            await client.submit("Counter.incr", "a")
            got = await client.submit("audit.reset", "a")
            with pytest.raises(UnknownEventError):
                await client.submit("audit.nothing", "a")
            return got, "ok"

    with running(TARGET, tmp_path / "run") as svc:
        got, _ = asyncio.run(scenario(svc))
        converged(svc.run_dir)
    assert got == 1


def test_an_event_s_ownership_mode_is_set_and_given_back(tmp_path: Path) -> None:
    with running(TARGET, tmp_path / "run") as svc:
        on = clients_on_every_replica(svc.port, 2)
        assert on[0].ask("INCR m 1") == "1"
        every = reconfigure(svc, "mode", "Counter.incr", "every")
        assert every.returncode == 0, every.stderr
        assert every.stdout.strip() == "every"
        for client in on.values():  # replies still come from the replica asked
            assert client.ask("INCR m 1") in ("2", "3")
        back = reconfigure(svc, "mode", "Counter.incr", "caller")
        assert back.stdout.strip() == "the caller's"
        assert on[1].ask("INCR m 1") == "4"
        bad = reconfigure(svc, "mode", "Counter.incr", "sometimes")
        assert bad.returncode == 2
        for client in on.values():
            client.close()
        converged(svc.run_dir)
