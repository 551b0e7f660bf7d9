"""The package layering of docs/decisions.md ("How the packages layer"), enforced.

Every module of the source tree is parsed with `ast` (nothing is imported, so a module that
would only misbehave at import time is still checked) and each import, top-level or inside a
function, is checked against the layer table. A lazy import is still a dependency: it just fails
later, on a user's machine. Only the CLI may import anything, since it is the top layer.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folder -> the package it installs as, read from pyproject.toml's `package-dir` so a package
#: added there is checked too.
PACKAGE_DIRS = {
    folder: package
    for package, folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"].items()
}

#: Layer -> the layers its modules may import (besides the standard library and third parties).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "server": frozenset({"core", "server"}),
    "proxy": frozenset({"core", "proxy"}),
    "agent": frozenset({"core", "server", "proxy", "agent"}),
    "cli": frozenset({"core", "server", "proxy", "agent", "cli"}),
}


def layer_of(module: str) -> str | None:
    """None for a module outside meshd (stdlib or a third party: not ours to layer)."""
    if module != "meshd" and not module.startswith("meshd."):
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("agent", "server", "proxy"):
        return parts[1]
    # `python -m meshd` is the CLI's entry point, so it belongs to the CLI's layer
    if len(parts) > 1 and parts[1] in ("cli", "__main__"):
        return "cli"
    return "core"


def module_name(path: Path) -> tuple[str, bool]:
    """(dotted name as installed, whether it is a package's __init__)."""
    rel = path.relative_to(ROOT)
    parts = [PACKAGE_DIRS[rel.parts[0]], *rel.parts[1:-1]]
    is_package = rel.name == "__init__.py"
    if not is_package:
        parts.append(rel.stem)
    return ".".join(parts), is_package


def source_files() -> list[Path]:
    return sorted(p for top in PACKAGE_DIRS for p in (ROOT / top).rglob("*.py"))


@dataclass(frozen=True)
class Import:
    target: str
    line: int


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, source: str) -> Iterator[Import]:
    """Every module `path` imports: `import x`, `from x import y` (y may itself be a module,
    so `from meshd import agent` yields meshd.agent), relative forms, and calls of
    `importlib.import_module` / `__import__` with a literal name."""
    module, is_package = module_name(path)
    tree = ast.parse(source, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            yield Import(base, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(f"{base}.{alias.name}", node.lineno)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(node.args[0].value, node.lineno)


def violations(path: Path, source: str | None = None) -> list[str]:
    """The imports of `path` its layer forbids; `source` stands in for the file's text."""
    module, _ = module_name(path)
    own = layer_of(module)
    assert own is not None
    worst: dict[int, str] = {}  # line -> the module a forbidden import on it names first
    for imp in imports_of(path, path.read_text() if source is None else source):
        target = layer_of(imp.target)
        if target is not None and target not in ALLOWED[own]:
            worst[imp.line] = min(worst.get(imp.line, imp.target), imp.target, key=len)
    rel = path.relative_to(ROOT)
    return [
        f"{rel}:{line}: {own} module {module} imports {target} ({layer_of(target)} layer)"
        for line, target in sorted(worst.items())
    ]


def test_the_tree_is_found() -> None:
    # guards against a layout change that silently makes every other test check nothing
    names = {module_name(p)[0] for p in source_files()}
    for expected in ("meshd.structs", "meshd.cli.main", "meshd.agent.agent", "meshd.server.store"):
        assert expected in names
    assert "meshd.proxy.rbac" in names


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_or_sideways_import(path: Path) -> None:
    found = violations(path)
    assert not found, "\n".join(["imports against the layering (docs/decisions.md):", *found])


@pytest.mark.parametrize(
    ("where", "source", "bad"),
    [
        ("meshd/filter.py", "def f():\n    from meshd.agent import dns\n", "meshd.agent"),
        ("meshd/filter.py", "from meshd import server\n", "meshd.server"),
        (
            "server/store.py",
            "from meshd.proxy.snapshot import ProxySnapshot\n",
            "meshd.proxy.snapshot",
        ),
        ("server/store.py", "def f():\n    import meshd.agent.mesh\n", "meshd.agent.mesh"),
        ("server/store.py", "from ..agent import cache\n", "meshd.agent"),
        ("proxy/rbac.py", "from meshd.server.ca import CAError\n", "meshd.server.ca"),
        (
            "proxy/rbac.py",
            "import importlib\nimportlib.import_module('meshd.agent')\n",
            "meshd.agent",
        ),
        ("agent/dns.py", "from meshd.cli import main\n", "meshd.cli"),
        ("meshd/__main__.py", "from meshd.agent import mesh\n", None),
        ("meshd/cli/main.py", "def f():\n    from meshd.agent.agent import Agent\n", None),
        ("agent/dns.py", "from meshd.server.store import Store\n", None),
        ("meshd/__init__.py", "from .cli import main\n", "meshd.cli"),
    ],
)
def test_the_checker_refuses_a_bad_import_and_only_that(
    where: str, source: str, bad: str | None
) -> None:
    """The checker itself can fail: a real module's text plus one bad import is refused (and
    the CLI's entry point, which may import anything, is not)."""
    path = ROOT / where
    found = violations(path, path.read_text() + "\n" + source)
    assert [v.split(" imports ")[1].split(" (")[0] for v in found] == ([bad] if bad else [])
