"""The KV service driven by redis-cli (Debian's redis-tools; ``scripts/test`` installs it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .harness import Service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed"),
]


def cli(svc: Service, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(svc.port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout


def test_commands(svc: Service) -> None:
    assert cli(svc, "PING") == "PONG\n"
    assert cli(svc, "SET", "cli:a", "hello world") == "OK\n"
    assert cli(svc, "GET", "cli:a") == "hello world\n"
    assert cli(svc, "INCRBY", "cli:n", "41") == "41\n"
    assert cli(svc, "RPUSH", "cli:l", "x", "y") == "2\n"
    assert cli(svc, "LRANGE", "cli:l", "0", "-1") == "x\ny\n"
    assert cli(svc, "GET", "cli:l").startswith("WRONGTYPE")
    assert cli(svc, "NOSUCH", "x").startswith("ERR unknown command 'NOSUCH'")
    assert "replica_index:" in cli(svc, "INFO", "dominoes")


def test_resp3(svc: Service) -> None:
    cli(svc, "HSET", "cli:h", "f", "v")
    assert cli(svc, "-3", "HGETALL", "cli:h") == "f v\n"  # a RESP3 map, as redis-server prints


def test_interactive_style_input_on_stdin(svc: Service) -> None:
    # redis-cli reads commands from stdin when none are given
    out = cli(svc, stdin="SET cli:s 1\nINCR cli:s\nGET cli:s\n")
    assert out == "OK\n2\n2\n"


def test_pipe_mode(svc: Service) -> None:
    body = "".join(f"SET cli:p{i} {i}\r\n" for i in range(1000))
    out = cli(svc, "--pipe", stdin=body)
    assert "errors: 0, replies: 1000" in out
    assert cli(svc, "GET", "cli:p999") == "999\n"
