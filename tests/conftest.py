"""Shared test configuration.

Every ``async def`` test runs twice, once on each event loop dominoes supports:
``test_x[asyncio]`` on the stdlib loop and ``test_x[uvloop]`` on uvloop
(``-k uvloop`` keeps the uvloop runs).  pytest-asyncio parametrizes them from
:func:`pytest_asyncio_loop_factories`; async fixtures run on the loop of the
test that requests them.  A test marked ``one_loop`` runs on uvloop only: it
drives other processes (a ``dominoes run``, NATS servers), whose loops are
their own, so its client loop's flavour tests nothing of dominoes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import warnings
from collections.abc import Callable

import pytest
import uvloop
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

# On a failure, hypothesis's pytest plugin imports its patch writer, whose libcst
# import warns (a DeprecationWarning, an error under this repository's
# filterwarnings): the failure would end as an INTERNALERROR and its falsifying
# example would be lost.  Imported here, once, quietly, for every property test.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("hypothesis.extra._patching")

#: The event loops every async test runs on: parametrization id -> loop factory.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("one_loop") is not None:
        return {"uvloop": LOOP_FACTORIES["uvloop"]}
    return LOOP_FACTORIES


def pytest_report_header(config: pytest.Config) -> str:
    return f"dominoes event loops: {', '.join(LOOP_FACTORIES)} (every async test on each)"
