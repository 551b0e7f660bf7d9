"""Agent logging: the rotated log file (size, age, archives kept), formats, journald detection
and secret masking."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from meshd.agent.logs import REDACTED, RotatingLogFile, journald_stream, secrets_of, setup_logging
from meshd.config import Config


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("meshd.test", level, __file__, 1, msg, None, None)


def handler(path: Path, **kw: object) -> RotatingLogFile:
    h = RotatingLogFile(str(path), **kw)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    return h


def test_rotates_by_size_and_keeps_the_live_name(tmp_path: Path) -> None:
    h = handler(tmp_path / "meshd.log", max_bytes=100)
    for i in range(10):
        h.emit(record(f"line {i:02d} " + "x" * 30))  # 39 bytes + newline: two fit per file
    h.close()
    archives = h.archives()
    assert len(archives) == 4
    for a in archives:
        assert os.path.getsize(a) <= 100
        assert Path(a).name.startswith("meshd-") and a.endswith(".log")
    live = (tmp_path / "meshd.log").read_text().splitlines()
    assert [ln[:7] for ln in live] == ["line 08", "line 09"]
    everything = "".join(Path(a).read_text() for a in archives) + "\n".join(live)
    assert all(f"line {i:02d}" in everything for i in range(10))  # nothing lost


def test_rotates_by_age(tmp_path: Path) -> None:
    clock = Clock()
    h = handler(tmp_path / "meshd.log", max_age=3600.0, clock=clock)
    h.emit(record("old"))
    clock.now += 3599
    h.emit(record("still young"))
    assert h.archives() == []
    clock.now += 1
    h.emit(record("new file"))
    h.close()
    assert [Path(a).read_text() for a in h.archives()] == ["old\nstill young\n"]
    assert (tmp_path / "meshd.log").read_text() == "new file\n"


@pytest.mark.parametrize(("max_files", "kept"), [(0, 5), (2, 2), (-1, 0)])
def test_max_files(tmp_path: Path, max_files: int, kept: int) -> None:
    h = handler(tmp_path / "a.log", max_bytes=10, max_files=max_files)
    for i in range(6):
        h.emit(record(f"entry-{i}"))  # 8 bytes + newline: one per file
    h.close()
    archives = h.archives()
    assert len(archives) == kept
    if kept:  # the newest archives survive
        assert Path(archives[-1]).read_text() == "entry-4\n"
    assert (tmp_path / "a.log").read_text() == "entry-5\n"


def test_log_file_name_rules(tmp_path: Path) -> None:
    assert RotatingLogFile.resolve(f"{tmp_path}/") == f"{tmp_path}/meshd.log"
    assert RotatingLogFile.resolve(str(tmp_path)) == f"{tmp_path}/meshd.log"
    assert RotatingLogFile.resolve(f"{tmp_path}/agent") == f"{tmp_path}/agent.log"
    assert RotatingLogFile.resolve(f"{tmp_path}/agent.txt") == f"{tmp_path}/agent.txt"


def test_journald_detection(tmp_path: Path) -> None:
    f = tmp_path / "stream"
    with open(f, "w") as out:
        st = os.fstat(out.fileno())
        assert journald_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, out.fileno())
        assert not journald_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, out.fileno())
        assert not journald_stream({"JOURNAL_STREAM": "garbage"}, out.fileno())
        assert not journald_stream({}, out.fileno())


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_file_secrets_and_level_change(tmp_path: Path, restore_root_logging: None) -> None:
    key = "c2VjcmV0LWtleS1mb3ItdGhlLWNsdXN0ZXIhISEhISE="
    cfg = Config(
        log_json=True,
        log_file=str(tmp_path / "m.log"),
        log_level="INFO",
        encrypt=key,
        services=[{"name": "s", "token": "tok-0123456789"}],
    )
    assert set(secrets_of(cfg)) == {key, "tok-0123456789"}
    setup = setup_logging(cfg)
    log = logging.getLogger("meshd.test")
    log.debug("hidden at info")
    log.info("oops %s and tok-0123456789", key)
    setup.apply(Config(log_level="DEBUG", log_json=True))
    log.debug("shown at debug")
    setup.close()
    lines = [json.loads(ln) for ln in (tmp_path / "m.log").read_text().splitlines()]
    assert [r["@message"] for r in lines] == [
        f"oops {REDACTED} and {REDACTED}",
        "shown at debug",
    ]
    assert [r["@level"] for r in lines] == ["info", "debug"]
