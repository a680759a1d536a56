"""Shared test configuration.

Async tests run on uvloop by default; ``DOMINOES_TEST_LOOP=asyncio`` runs the
whole suite on the stdlib loop instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: 200 examples per property in CI (the foundation issue's floor),
# no per-example deadline (2-core CI machines are noisy), and a reproduction
# blob printed with every failure.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LOOP = os.environ.get("DOMINOES_TEST_LOOP", "uvloop")


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if LOOP == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if LOOP == "asyncio":
        return asyncio.new_event_loop
    raise pytest.UsageError(f"DOMINOES_TEST_LOOP must be uvloop or asyncio, not {LOOP!r}")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {LOOP: _factory()}


def pytest_report_header(config: pytest.Config) -> str:
    return f"dominoes event loop: {LOOP}"
