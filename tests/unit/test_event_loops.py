"""The suite's own loop parametrization: every async test runs on asyncio and on uvloop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests import conftest


def test_the_suite_runs_async_tests_on_both_loops() -> None:
    assert set(conftest.LOOP_FACTORIES) == {"asyncio", "uvloop"}


async def test_an_async_test_runs_on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    if request.node.name.endswith("[uvloop]"):
        assert isinstance(loop, uvloop.Loop)
    else:
        assert request.node.name.endswith("[asyncio]")
        assert not isinstance(loop, uvloop.Loop)
        assert type(loop).__module__.startswith("asyncio")


@pytest.fixture
async def fixture_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def test_an_async_fixture_runs_on_its_tests_loop(
    fixture_loop: asyncio.AbstractEventLoop,
) -> None:
    assert fixture_loop is asyncio.get_running_loop()


@pytest.mark.parametrize("n", [1, 2])
async def test_parametrized_async_tests_run_on_both_loops_too(
    request: pytest.FixtureRequest, n: int
) -> None:
    assert request.node.callspec.id in {f"asyncio-{n}", f"uvloop-{n}"}
