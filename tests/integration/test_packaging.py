"""The wheel installs one import package, `meshd`, holding every module of the source tree.

agent/, server/ and proxy/ are top-level folders mapped to meshd.agent, meshd.server and
meshd.proxy; a folder left out of pyproject's package list would vanish from the wheel while the
editable install used by the other tests still finds it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
FOLDERS = {
    "meshd": "meshd",
    "agent": "meshd/agent",
    "server": "meshd/server",
    "proxy": "meshd/proxy",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # from a copy: setuptools reuses a build/ folder left in the tree, stale modules included
    src = tmp_path_factory.mktemp("src") / "meshd"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("meshd-*.whl")
    return whl


def test_meshd_is_the_only_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert z.read(top).decode().split() == ["meshd"]
    assert all(n.startswith(("meshd/", "meshd-")) for n in names), names


def test_every_source_module_is_in_the_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    missing = []
    for folder, package in FOLDERS.items():
        for src in (Path(REPO) / folder).rglob("*.py"):
            rel = src.relative_to(Path(REPO) / folder)
            if "__pycache__" in rel.parts:
                continue
            if f"{package}/{rel.as_posix()}" not in names:
                missing.append(f"{folder}/{rel.as_posix()}")
    assert not missing, f"not in the wheel (add the package to pyproject): {missing}"


def test_installed_wheel_imports_as_meshd_only(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import meshd.agent, meshd.server, meshd.proxy;"
        "print(meshd.server.__file__)\n"
        "try:\n    import server\nexcept ModuleNotFoundError as e:\n    print('refused', e.name)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith(str(target / "meshd" / "server"))
    assert second == "refused server"
