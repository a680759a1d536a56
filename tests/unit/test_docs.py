"""The docs keep up with the code.

* docs/reference.md has a heading for every public name (the ``__all__`` of
  ``dominoes``, ``dominoes.testing``, ``dominoes.lowlevel`` and
  ``dominoes.loops``);
* it names every option of ``dominoes run``, ``dominoes stats``, ``dominoes top`` and
  ``dominoes monitor``, read from the real argparse parser, and its option tables
  give the parser's defaults;
* every Python block of docs/tutorial.md runs, in order, in one namespace, and
  prints the text block that follows it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dominoes._cli import _parser

PROJECT_DIR = Path(__file__).resolve().parents[2]
DOCS = PROJECT_DIR / "docs"
REFERENCE = DOCS / "reference.md"
TUTORIAL = DOCS / "tutorial.md"

PUBLIC_MODULES = [
    "dominoes",
    "dominoes.testing",
    "dominoes.lowlevel",
    "dominoes.loops",
    "dominoes.reconfiguration",
]
COMMANDS = ["run", "stats", "top", "monitor", "snapshot", "replay", "reconfigure"]

_HEADING = re.compile(r"^#+ ")
_FENCE = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def reference_text() -> str:
    return REFERENCE.read_text()


def heading_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if _HEADING.match(line)]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    choices: dict[str, argparse.ArgumentParser] = actions[0].choices
    return choices


def command_section(text: str, command: str) -> list[str]:
    """The lines of the reference's ``### `dominoes <command>``` section."""
    lines = text.splitlines()
    title = f"### `dominoes {command}`"
    assert title in lines, f"no section {title!r} in {REFERENCE.name}"
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if _HEADING.match(lines[i])), len(lines))
    return lines[start:end]


# --- (a) every public name has a heading ------------------------------------------------


def public_names() -> list[tuple[str, str]]:
    return [
        (module, name)
        for module in PUBLIC_MODULES
        for name in importlib.import_module(module).__all__
    ]


@pytest.mark.parametrize(("module", "name"), public_names(), ids=lambda x: x)
def test_every_public_name_has_a_reference_heading(module: str, name: str) -> None:
    headings = heading_lines(reference_text())
    assert any(f"`{name}`" in line for line in headings), (
        f"{module}.{name} has no heading in docs/reference.md"
    )


def test_the_heading_check_sees_headings_only() -> None:
    text = "# Title\nsome `Body` text\n#### `A`, `B`\n```text\n#notaheading `C`\n```\n"
    assert heading_lines(text) == ["# Title", "#### `A`, `B`"]


# --- (b) every option of the command line is documented ------------------------------------


def options() -> list[tuple[str, str]]:
    return [
        (command, option)
        for command, parser in subcommands().items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    ]


def test_the_commands_are_the_documented_ones() -> None:
    assert sorted(subcommands()) == sorted(COMMANDS)


@pytest.mark.parametrize(("command", "option"), options(), ids=lambda x: x)
def test_every_option_is_in_the_reference(command: str, option: str) -> None:
    assert option in reference_text(), f"dominoes {command} {option} is not in docs/reference.md"


def documented_defaults() -> list[tuple[str, str, str]]:
    """(command, option, the default as the reference must show it)."""
    out = []
    for command, parser in subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            shown = "off" if action.nargs == 0 else f"`{action.default}`"
            out.append((command, action.option_strings[0], shown))
    return out


@pytest.mark.parametrize(("command", "option", "default"), documented_defaults(), ids=str)
def test_option_tables_give_the_parser_default(command: str, option: str, default: str) -> None:
    rows = [
        line
        for line in command_section(reference_text(), command)
        if re.match(rf"\| `{re.escape(option)}[` ]", line)
    ]
    assert len(rows) == 1, f"dominoes {command}: expected one table row for {option}"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == default, f"dominoes {command} {option}: default {cells[1]}, not {default}"


# --- (c) the tutorial runs -------------------------------------------------------------------


def tutorial_blocks() -> list[str]:
    return _FENCE.findall(TUTORIAL.read_text())


def test_the_fence_pattern() -> None:
    text = "x\n```python\na = 1\n```\n```text\nno\n```\n```python\nb = a\n```\n"
    assert _FENCE.findall(text) == ["a = 1\n", "b = a\n"]


_BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def tutorial_examples() -> list[tuple[str, str | None]]:
    """Each python block, with the text block right after it (its output), if any."""
    fences = _BLOCK.findall(TUTORIAL.read_text())
    out: list[tuple[str, str | None]] = []
    for i, (kind, body) in enumerate(fences):
        if kind == "python":
            follows = fences[i + 1] if i + 1 < len(fences) else None
            out.append((body, follows[1] if follows and follows[0] == "text" else None))
    return out


def test_the_tutorial_runs_and_prints_what_it_says() -> None:
    examples = tutorial_examples()
    assert [code for code, _ in examples] == tutorial_blocks()
    assert len(examples) >= 10
    # Each block continues the previous one, as in one Python session; each
    # block's output is captured on its own.
    script = textwrap.dedent(
        """
        import contextlib, io, json
        namespace = {"__name__": "__main__"}
        outputs = []
        for number, block in enumerate(BLOCKS, 1):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"docs/tutorial.md, python block {number}", "exec"), namespace)
            outputs.append(out.getvalue())
        print(json.dumps(outputs))
        """
    ).replace("BLOCKS", repr([code for code, _ in examples]))
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    outputs = json.loads(done.stdout.splitlines()[-1])
    for number, ((_, expected), got) in enumerate(zip(examples, outputs, strict=True), 1):
        if expected is not None and got:
            assert got == expected, f"python block {number} printed:\n{got}\nnot:\n{expected}"
