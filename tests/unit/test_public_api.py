"""The public surface: thin re-exporting modules, and who may import what.

Like trio's ``test_exports.py``: the public namespaces only re-export names
from underscore modules, ``components/``, ``loops/``, ``examples/`` and
``benchmarks/`` build on the public API only, and the sans-IO core imports no
I/O or concurrency module.
Every check reads source with ``ast``, so nothing is imported just to check it.
"""

from __future__ import annotations

import ast
import importlib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import dominoes
import dominoes.lowlevel
import dominoes.testing

PACKAGE_DIR = Path(dominoes.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent

PUBLIC_MODULES = ["dominoes", "dominoes.testing", "dominoes.lowlevel"]

#: Top-level directories that must use only public names, and the package
#: each installs as (``components`` and ``loops`` map into ``dominoes``).
#: A benchmark measures what users get, so it may need no more than they have;
#: what it needs of the runtime is exported from ``dominoes.lowlevel``.
CLIENT_DIRS = {
    "components": "dominoes.components",
    "loops": "dominoes.loops",
    "examples": "examples",
    "benchmarks": "benchmarks",
}

#: Calls that import the module named by their first argument.
IMPORT_CALLS = frozenset({"import_module", "__import__"})

#: What the sans-IO core must never import.
FORBIDDEN_IN_CORE = frozenset(
    {"asyncio", "os", "socket", "multiprocessing", "threading", "selectors", "time"}
)


def source_of(module: types.ModuleType) -> ast.Module:
    assert module.__file__ is not None
    return ast.parse(Path(module.__file__).read_text(), filename=module.__file__)


def package_of(module_name: str, path: Path) -> str:
    """The package a relative import in ``path`` (module ``module_name``) starts from."""
    return module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]


def absolute(package: str, level: int, module: str | None) -> str:
    """Resolve ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level - 1 < len(parts) else []
    return ".".join([*base, *([module] if module else [])])


def is_private_dominoes(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[0] == "dominoes" and parts[1].startswith("_")


def imported_by_call(node: ast.Call) -> str | None:
    """The module ``importlib.import_module("...")`` or ``__import__("...")`` names."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in IMPORT_CALLS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def private_imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Every ``dominoes._...`` name an import (statement or call) in ``tree`` reaches."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = imported_by_call(node)
            if called is not None and is_private_dominoes(called):
                yield called
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if is_private_dominoes(alias.name):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = absolute(package, node.level, node.module)
            if is_private_dominoes(base):
                yield base
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if is_private_dominoes(full):
                    yield full


# --- __all__ ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_a_tuple_of_unique_strings(name: str) -> None:
    module = importlib.import_module(name)
    assert type(module.__all__) is tuple
    assert all(isinstance(x, str) for x in module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    missing = [x for x in module.__all__ if not hasattr(module, x)]
    assert missing == []


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_star_import_gives_exactly_all(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(importlib.import_module(name).__all__)


# --- the public modules only re-export --------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_import_with_the_explicit_as_form(name: str) -> None:
    tree = source_of(importlib.import_module(name))
    wrong = [
        f"{node.module}: {alias.name} as {alias.asname}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if alias.asname != alias.name
    ]
    assert wrong == []


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_import_only_from_underscore_modules(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    package = package_of(name, Path(module.__file__))
    tree = source_of(module)
    sources = [
        absolute(package, node.level, node.module)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
    ]
    assert sources
    assert [s for s in sources if not is_private_dominoes(s)] == []
    assert not [node for node in tree.body if isinstance(node, ast.Import)]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_is_a_reexport(name: str) -> None:
    module = importlib.import_module(name)
    tree = source_of(module)
    reexported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr not in {"annotations"}
    }
    assert public - reexported == set()
    assert reexported == set(module.__all__)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_define_nothing_themselves(name: str) -> None:
    tree = source_of(importlib.import_module(name))
    allowed_targets = {"__all__", "__version__"}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom):
            continue
        if isinstance(node, ast.Assign):
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            assert targets <= allowed_targets, ast.unparse(node)
            continue
        pytest.fail(f"{name} defines something: {ast.unparse(node)[:80]}")


def test_version_is_a_string() -> None:
    assert isinstance(dominoes.__version__, str)


# --- components, loops, examples and benchmarks use only public names ----------------------


def client_files() -> list[tuple[str, Path]]:
    """(module name, path) of every .py file under the client directories."""
    out = []
    for dirname, package in CLIENT_DIRS.items():
        root = PROJECT_DIR / dirname
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out.append((".".join([package, *rel]), path))
    return out


@pytest.mark.parametrize(
    ("module_name", "path"),
    client_files(),
    ids=lambda x: str(x.relative_to(PROJECT_DIR)) if isinstance(x, Path) else "",
)
def test_clients_import_no_private_dominoes_module(module_name: str, path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = package_of(module_name, path)
    assert list(private_imports(tree, package)) == []


def test_there_are_client_files_to_check() -> None:
    assert client_files(), "components/ and loops/ should at least have __init__.py"


def test_every_benchmark_is_checked() -> None:
    checked = {path for _, path in client_files()}
    benchmarks = set((PROJECT_DIR / "benchmarks").rglob("*.py"))
    assert benchmarks, "benchmarks/ should hold the benchmark scripts"
    assert benchmarks <= checked


@pytest.mark.parametrize(
    ("source", "module_name", "filename", "expected"),
    [
        ("import dominoes._core._log", "dominoes.components.x", "x.py", ["dominoes._core._log"]),
        ("from dominoes._core import _log", "examples.x", "x.py", ["dominoes._core"]),
        ("from dominoes import _cluster", "examples.x", "x.py", ["dominoes._cluster"]),
        ("from .._core._log import Log", "dominoes.components.x", "x.py", ["dominoes._core._log"]),
        ("from .. import _core", "dominoes.loops.x", "x.py", ["dominoes._core"]),
        ("from . import _core", "dominoes.components", "__init__.py", []),
        ("from .. import _core", "dominoes.components", "__init__.py", ["dominoes._core"]),
        ("def f():\n    from dominoes._core import _log", "examples.x", "x.py", ["dominoes._core"]),
        ("import dominoes\nfrom dominoes import Service", "examples.x", "x.py", []),
        ("from dominoes.testing import Cluster", "examples.x", "x.py", []),
        ("from .helpers import thing", "dominoes.components.x", "x.py", []),
        ("from .. import testing", "dominoes.components.x", "x.py", []),
        ("from dominoes.lowlevel import SharedLog", "benchmarks.x", "x.py", []),
        (
            "from dominoes._runtime._shm import SharedLog",
            "benchmarks.x",
            "x.py",
            ["dominoes._runtime._shm"],
        ),
        ("import _resp\nfrom _resp import encode", "benchmarks.baselines.x", "x.py", []),
        (
            "importlib.import_module('dominoes._runtime._shm')",
            "benchmarks.x",
            "x.py",
            ["dominoes._runtime._shm"],
        ),
        ("__import__('dominoes._core._log')", "benchmarks.x", "x.py", ["dominoes._core._log"]),
        ("importlib.import_module('dominoes.loops')", "dominoes.x", "x.py", []),
        ("importlib.import_module(name)", "benchmarks.x", "x.py", []),
    ],
)
def test_the_private_import_check_itself(
    source: str, module_name: str, filename: str, expected: list[str]
) -> None:
    package = package_of(module_name, Path(filename))
    assert list(private_imports(ast.parse(source), package)) == expected


# --- the core is sans-IO ------------------------------------------------------------------


def forbidden_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_IN_CORE]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] in FORBIDDEN_IN_CORE
        ):
            found.append(node.module)
    return found


CORE_FILES = sorted((PACKAGE_DIR / "_core").glob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_the_core_imports_no_io_or_concurrency_module(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert forbidden_imports(tree) == []


def test_the_core_has_the_expected_modules() -> None:
    names = {p.stem for p in CORE_FILES}
    expected = {"_registry", "_component", "_context", "_machine", "_service", "_codec"}
    assert expected | {"_replica", "_log"} <= names


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", ["asyncio"]),
        ("import os.path", ["os.path"]),
        ("from time import monotonic", ["time"]),
        (
            "from multiprocessing.shared_memory import SharedMemory",
            ["multiprocessing.shared_memory"],
        ),
        ("if TYPE_CHECKING:\n    import socket", ["socket"]),
        ("def f():\n    import threading, selectors", ["threading", "selectors"]),
        ("import random, struct, hashlib", []),
        ("from .time import x", []),  # a sibling module, not the stdlib's
    ],
)
def test_the_forbidden_import_check_itself(source: str, expected: list[str]) -> None:
    assert forbidden_imports(ast.parse(source)) == expected
