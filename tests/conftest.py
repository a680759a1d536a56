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
