"""Agent logging: text or JSON lines on stderr, an optional rotated `log_file`, and journald.

Under systemd, journald stamps every line itself, so when stderr *is* the journal stream
(JOURNAL_STREAM names stderr's device and inode, which systemd documents as the check) the text
format drops its timestamp and instead starts each line with the syslog priority `<N>`, which
journald turns into the entry's PRIORITY (so `journalctl -p warning` works). JSON lines are
Consul's shape (`@timestamp`, `@level`, `@module`, `@message`).

Known secrets (the gossip/Raft key, tokens in service definitions) are masked in every line as a
last line of defence: no code path logs them, but an exception text from a library might.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshd.config import Config

__all__ = ["LogSetup", "RotatingLogFile", "journald_stream", "secrets_of", "setup_logging"]

LEVELS = {
    "TRACE": logging.DEBUG,  # Python has no TRACE; Consul's trace is its most verbose level
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_JSON_LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
REDACTED = "[redacted]"


def journald_stream(env: dict[str, str] | None = None, fd: int | None = None) -> bool:
    """True when `fd` (stderr) is connected to the journal, not merely started under systemd:
    a `meshd agent 2>file` run from a unit's shell keeps its timestamps."""
    env = dict(os.environ) if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno() if fd is None else fd)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def secrets_of(cfg: Config) -> list[str]:
    """Strings that must never appear in a log line."""
    found = [cfg.encrypt or ""]
    for svc in cfg.services:
        found.extend(str(v) for k, v in svc.items() if k.lower() == "token" and v)
    return [s for s in found if len(s) >= 8]  # masking "a" everywhere would hide real text


class _Formatter(logging.Formatter):
    def __init__(self, *, json_lines: bool, journald: bool, secrets: Callable[[], list[str]]):
        super().__init__()
        self.json_lines = json_lines
        self.journald = journald
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        for secret in self.secrets():
            message = message.replace(secret, REDACTED)
        if self.json_lines:
            out: dict[str, Any] = {
                "@timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "@level": _JSON_LEVEL.get(record.levelno, "error"),
                "@module": record.name,
                "@message": message,
            }
            return json.dumps(out, ensure_ascii=False)
        text = f"[{record.levelname}] {record.name}: {message}"
        if self.journald:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 3)}>{text}"
        stamp = (
            datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        )
        return f"{stamp} {text}"


class RotatingLogFile(logging.handlers.BaseRotatingHandler):
    """Consul's `log_file`: the live file keeps the configured name; when it is older than
    `max_age` seconds or a line would take it past `max_bytes`, it is renamed to
    `<name>-<unix nanoseconds><ext>` and a new one begun. `max_files` archives are kept
    (0: all, -1: none)."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 0,
        max_age: float = 24 * 3600.0,
        max_files: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_files = max_files
        self.clock = clock
        super().__init__(path, "a", encoding="utf-8", delay=False)
        self.opened = clock()

    @staticmethod
    def resolve(path: str) -> str:
        """A directory (trailing '/') gets `meshd.log`; a name without extension gets `.log`."""
        if path.endswith(os.sep) or os.path.isdir(path):
            path = os.path.join(path, "meshd.log")
        return path if Path(path).suffix else path + ".log"

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 (logging's API)
        if self.clock() - self.opened >= self.max_age:
            return True
        if self.max_bytes <= 0 or self.stream is None:
            return False
        size = self.stream.tell()
        return size > 0 and size + len(self.format(record).encode()) + 1 > self.max_bytes

    def archives(self) -> list[str]:
        base = Path(self.baseFilename)
        prefix, ext = base.stem + "-", base.suffix
        names = [
            n
            for n in os.listdir(base.parent)
            if n.startswith(prefix) and n.endswith(ext) and n[len(prefix) : -len(ext)].isdigit()
        ]
        return [
            str(base.parent / n)
            for n in sorted(names, key=lambda n: int(n[len(prefix) : -len(ext)]))
        ]

    def doRollover(self) -> None:  # noqa: N802 (logging's API)
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        base = Path(self.baseFilename)
        archive = base.with_name(f"{base.stem}-{time.time_ns()}{base.suffix}")
        if base.exists() and base.stat().st_size > 0:
            os.replace(base, archive)
        self._prune()
        self.stream = self._open()
        self.opened = self.clock()

    def _prune(self) -> None:
        if self.max_files == 0:
            return
        archives = self.archives()
        keep = max(self.max_files, 0)
        for old in archives[: len(archives) - keep] if keep else archives:
            with contextlib.suppress(OSError):
                os.remove(old)


class LogSetup:
    """The handlers `setup_logging` installed; `apply` changes what a reload may change."""

    def __init__(self, handlers: Iterable[logging.Handler], secrets: list[str]) -> None:
        self.handlers = list(handlers)
        self.secrets = secrets

    def apply(self, cfg: Config) -> None:
        logging.getLogger().setLevel(LEVELS.get(cfg.log_level, logging.INFO))
        self.secrets[:] = secrets_of(cfg)

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()


def setup_logging(cfg: Config) -> LogSetup:
    """Replace the root logger's handlers with the configured ones."""
    secrets = secrets_of(cfg)
    journald = journald_stream()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        _Formatter(json_lines=cfg.log_json, journald=journald, secrets=lambda: secrets)
    )
    handlers: list[logging.Handler] = [console]
    if cfg.log_file:
        path = RotatingLogFile.resolve(cfg.log_file)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        f = RotatingLogFile(
            path,
            max_bytes=cfg.log_rotate_bytes,
            max_age=cfg.log_rotate_duration,
            max_files=cfg.log_rotate_max_files,
        )
        # The file is not the journal: it always carries its own timestamps.
        f.setFormatter(_Formatter(json_lines=cfg.log_json, journald=False, secrets=lambda: secrets))
        handlers.append(f)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    setup = LogSetup(handlers, secrets)
    setup.apply(cfg)
    return setup
