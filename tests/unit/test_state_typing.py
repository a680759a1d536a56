"""``State.call`` and ``State.query`` are checked by mypy against the handlers they name.

``update[P, R]`` and ``query[P, R]`` carry a handler's parameters (after
``self, ctx`` or ``self``) and its result; ``State.call``/``query``/``read``
take ``P`` and return ``R`` (``typing.ParamSpec``).  A snippet with right and
wrong calls goes through mypy --strict: the right ones pass, each wrong one
is reported on its line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
from __future__ import annotations

import dominoes
from dominoes import Component, Context, query, update


class Cart(Component):
    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}

    @update
    def add(self, ctx: Context, user: str, item: str, qty: int = 1) -> int:
        self.items.setdefault(user, []).extend([item] * qty)
        return len(self.items[user])

    @query
    def list(self, user: str) -> list[str]:
        return self.items.get(user, [])

    @query.local
    def count(self, user: str) -> int:
        return len(self.items.get(user, []))


async def right(state: dominoes.State) -> None:
    n: int = await state.call(Cart.add, "ann", "pen")
    m: int = await state.call(Cart.add, "ann", "pen", qty=3)
    items: list[str] = state.query(Cart.list, "ann")
    also: list[str] = await state.read(Cart.list, "ann")
    k: int = state.query(Cart.count, "ann")
    print(n, m, items, also, k)


async def wrong(state: dominoes.State) -> None:
    await state.call(Cart.add, "ann", 3)  # WRONG arg-type
    await state.call(Cart.add, "ann")  # WRONG call-arg
    await state.call(Cart.add, "ann", "pen", qty="3")  # WRONG arg-type
    await state.call(Cart.add, "ann", "pen", colour="red")  # WRONG call-arg
    s: str = await state.call(Cart.add, "ann", "pen")  # WRONG arg-type
    state.query(Cart.list, 1)  # WRONG arg-type
    t: int = state.query(Cart.list, "ann")  # WRONG assignment
    state.query(Cart.add, "ann", "pen")  # WRONG arg-type
    print(s, t)
"""


def test_mypy_checks_call_and_query_against_the_handlers(tmp_path: Path) -> None:
    snippet = tmp_path / "typed_shop.py"
    snippet.write_text(SNIPPET)
    config = str(ROOT / "pyproject.toml")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", config]
    done = subprocess.run(
        [*cmd, str(snippet)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    lines = SNIPPET.splitlines()
    expected = {
        (i + 1, line.split("# WRONG ")[1].strip())
        for i, line in enumerate(lines)
        if "# WRONG " in line
    }
    reported = set()
    for out in done.stdout.splitlines():
        if ": error: " in out and out.startswith(str(snippet)):
            lineno = int(out.split(":")[1])
            code = out.rsplit("[", 1)[1].rstrip("]")
            reported.add((lineno, code))
    assert done.returncode == 1, done.stdout + done.stderr
    assert reported == expected, done.stdout
