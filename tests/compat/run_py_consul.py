"""Run py-consul 1.8.0's own test suite, unchanged, against fresh `meshd agent -dev` processes.

    .venv/bin/python tests/compat/run_py_consul.py [pytest args...]

Downloads the sdist from PyPI once into a cache dir ($MESHD_COMPAT_CACHE, default
~/.cache/meshd/compat), unpacks it into a fresh temp dir, swaps its Docker-based root
conftest.py for py_consul_conftest.py (same fixture names, backed by meshd), runs its tests
and prints one line per test and the pass count. Exit status 0 whenever the suite ran: known
incompatibilities are listed in docs/compat.md; the floor lives in test_py_consul_suite.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "py-consul"
VERSION = "1.8.0"
SDIST = f"py_consul-{VERSION}.tar.gz"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class CompatRunError(RuntimeError):
    """The suite could not be run at all (download, unpack, or pytest itself broke)."""


@dataclass(frozen=True)
class Outcome:
    test: str  # node id, e.g. tests/api/test_kv.py::TestConsulKV::test_kv
    result: str  # passed | failed | error | skipped
    message: str


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "meshd" / "compat"
    return Path(os.environ.get("MESHD_COMPAT_CACHE", default))


def fetch_sdist() -> Path:
    """The sdist from PyPI, downloaded once: it is pinned, so the cached copy never goes stale."""
    cache = cache_dir()
    sdist = cache / SDIST
    if sdist.exists():
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    done = subprocess.run(
        [*cmd, f"{PACKAGE}=={VERSION}", "-d", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 or not sdist.exists():
        raise CompatRunError(f"pip download {PACKAGE}=={VERSION} failed: {done.stderr[-2000:]}")
    return sdist


def unpack(sdist: Path, into: Path) -> Path:
    """A pristine copy of the sdist, with only the Docker conftest replaced by meshd's."""
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    src = into / f"py_consul-{VERSION}"
    shutil.copyfile(HERE / "py_consul_conftest.py", src / "conftest.py")
    return src


def outcomes(junit_xml: Path) -> list[Outcome]:
    rows: list[Outcome] = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = case.get("name", "")
        result, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                result = "failed" if tag == "failure" else tag
                message = (
                    (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
                )
                break
        rows.append(Outcome(f"{module}::{name}", result, message))
    return rows


def run(extra_args: list[str] | None = None) -> list[Outcome]:
    """Run the suite once; the outcome of every test py-consul collected."""
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="meshd-compat-") as tmp:
        src = unpack(sdist, Path(tmp))
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "MESHD_REPO": str(REPO), "PYTHONPATH": str(src)}
        env.pop("CONSUL_HTTP_ADDR", None)
        cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
        cmd += ["-o", "addopts=", "-o", "timeout=60", f"--junitxml={junit}"]
        done = subprocess.run(
            [*cmd, *(extra_args or [])],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if not junit.exists() or done.returncode not in (0, 1):  # 1: some tests failed
            raise CompatRunError(f"pytest exited {done.returncode}: {done.stdout[-3000:]}")
        return outcomes(junit)


def main(argv: list[str]) -> int:
    rows = run(argv)
    for row in rows:
        print(f"{row.result.upper():8} {row.test}  {row.message}".rstrip())
    counts = Counter(r.result for r in rows)
    print(
        f"py-consul {VERSION}: {counts['passed']} passed of {len(rows)} "
        f"({counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
