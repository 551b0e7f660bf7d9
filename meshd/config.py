"""Agent configuration: Consul's command-line flags and config-file keys merged into one `Config`.

Users bring their existing Consul files, so key names, flag names and merge rules are Consul's:
files are applied in order, later scalars win, maps merge key by key and lists concatenate
(that is how several files can each add `services`), and flags are applied last. Every key is
checked against a schema because a typo that is silently ignored (``"port": {"http": 1}``) is far
more expensive to debug than a start-up error naming the file and the dotted key.

Each source is first validated into a *partial* dict holding only the keys it set, in canonical
form (durations as float seconds, domains with a trailing dot); partials are then merged and the
result becomes a `Config`. Keeping "was it set?" until the end is what lets dev mode and the
client/server distinction supply defaults without overriding anything the user wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd import configvalues as cv
from meshd.acl import settings as acl_settings
from meshd.config_model import (
    SOA_DEFAULTS,
    Config,
    ConfigError,
    DNSConfig,
    Ports,
    TLSConfig,
    parse_duration,
)
from meshd.config_schema import FLAGS, TOP
from meshd.configvalues import Schema
from meshd.hclparse import parse_hcl
from meshd.k8s import settings as k8s_settings

__all__ = [  # the loader, and the names imported from many places (defined in config_model)
    "Config",
    "ConfigError",
    "ConfigReport",
    "TLSConfig",
    "collect_config",
    "load_config",
    "parse_duration",
    "read_config_file",
]

CONFIG_EXTENSIONS = (".json", ".hcl")


def _merge(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Consul's rule: maps merge key by key, lists concatenate, anything else is replaced."""
    for key, value in new.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged = dict(old)
            _merge(merged, value)
            base[key] = merged
        elif isinstance(old, list) and isinstance(value, list):
            base[key] = old + value
        else:
            base[key] = value


def _put(out: dict[str, Any], target: tuple[str, ...], value: Any) -> None:
    for key in reversed(target):
        value = {key: value}
    _merge(out, value)


def _walk(
    raw: Any,
    schema: Schema,
    path: str,
    source: str,
    out: dict[str, Any],
    errors: list[str] | None = None,
) -> None:
    """Canonical values into `out`; with `errors`, every problem is collected instead of the
    first one raised (`meshd validate` names them all)."""

    def fail(message: str) -> None:
        if errors is None:
            raise ConfigError(message)
        errors.append(message)

    for block in raw if isinstance(raw, list) else [raw]:  # HCL repeats blocks as lists
        if not isinstance(block, dict):
            fail(f"{source}: {path!r} must be an object, got {cv.show(block)}")
            continue
        for key, value in block.items():
            dotted = f"{path}.{key}" if path else str(key)
            entry = schema.get(key) or schema.get(str(key).lower())
            if entry is None:
                fail(f"{source}: unknown key {dotted!r}")
                continue
            if value is None:  # JSON null: not set
                continue
            target, check = entry
            if isinstance(check, dict):
                if target is not None:
                    _put(out, target, True)
                _walk(value, check, dotted, source, out, errors)
                continue
            try:
                canonical = check(value)
            except cv.InvalidError as e:
                fail(f"{source}: invalid {dotted!r}: {e}")
                continue
            if target is not None:
                _put(out, target, canonical)


def read_config_file(
    path: str, errors: list[str] | None = None, config_format: str | None = None
) -> dict[str, Any]:
    """One file's keys in canonical form (only those it sets); see `_walk` for `errors`.
    `config_format` ("json" or "hcl") overrides the extension, as Consul's -config-format does:
    tools that check a rendered file first (Ansible's `validate`) name it without one."""
    source = f"config file {path}"
    suffix = f".{config_format}" if config_format else Path(path).suffix.lower()
    if suffix not in CONFIG_EXTENSIONS:
        raise ConfigError(f"{source}: unknown format, the name must end in .json or .hcl")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from None
    try:
        raw = json.loads(text) if suffix == ".json" else parse_hcl(text)
    except Exception as e:
        raise ConfigError(f"{source}: invalid {suffix[1:].upper()}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object")
    out: dict[str, Any] = {}
    _walk(raw, TOP, "", source, out, errors)
    return out


def _dir_files(directory: str) -> list[str]:
    """Consul reads only *.json and *.hcl in a config dir, in lexical order, not recursively."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError(f"config dir {directory}: cannot read: {e}") from None
    return [
        os.path.join(directory, n)
        for n in names
        if n.lower().endswith(CONFIG_EXTENSIONS) and os.path.isfile(os.path.join(directory, n))
    ]


def _read_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Flags as click parsed them; None, empty tuples and False switches mean "not given"."""
    out: dict[str, Any] = {}
    for raw_name, value in flags.items():
        name = raw_name.lstrip("-").replace("_", "-")
        if name == "dev":
            continue  # load_config reads it; accepted so a CLI may pass all its params
        entry = FLAGS.get(name)
        if entry is None:
            raise ConfigError(f"unknown flag -{name}")
        target, check = entry
        if value is None or value in ((), []) or (check is cv.boolean and value is False):
            continue
        try:
            canonical = check(value)  # type: ignore[operator]
        except cv.InvalidError as e:
            raise ConfigError(f"flag -{name}: invalid value: {e}") from None
        if target is not None:
            _put(out, target, canonical)
    return out


# --- assembly ------------------------------------------------------------------------------------


def _build(merged: dict[str, Any], dev: bool) -> Config:
    dns = dict(merged.pop("dns_config", {}))
    dns["soa"] = {**SOA_DEFAULTS, **dns.get("soa", {})}
    tls: dict[str, Any] = {
        k: (v or None) if isinstance(v, str) else v for k, v in merged.pop("tls", {}).items()
    }
    for key in ("data_dir", "advertise_addr", "alt_domain", "encrypt", "log_file", "pid_file"):
        if key in merged:
            merged[key] = merged[key] or None
    return Config(
        dev=dev,
        kubernetes=k8s_settings.build(merged.pop("kubernetes", None)),
        acl=acl_settings.build(merged.pop("acl", None)),
        ports=Ports(**merged.pop("ports", {})),
        dns_config=DNSConfig(**dns),
        tls=TLSConfig(**tls),
        **merged,
    )


def _problems(cfg: Config) -> list[str]:
    """Rules spanning several keys, checked once every source has been merged."""
    out: list[str] = []
    if cfg.dev and cfg.bootstrap_expect:
        out.append("bootstrap_expect is not allowed in dev mode (dev mode bootstraps)")
    if cfg.bootstrap and cfg.bootstrap_expect:
        out.append("bootstrap and bootstrap_expect are mutually exclusive")
    if not cfg.server and (cfg.bootstrap or cfg.bootstrap_expect):
        out.append("bootstrap and bootstrap_expect require server = true (-server)")
    if cfg.server and not cfg.dev and cfg.data_dir is None:
        out.append(
            "data_dir is required when server = true (set data_dir / -data-dir, "
            "or use -dev for an in-memory agent)"
        )
    try:
        cv.node_name(cfg.node_name)
    except cv.InvalidError as e:
        out.append(f"invalid 'node_name' (defaults to the host name): {e}")
    if cfg.alt_domain and cfg.alt_domain == cfg.domain:
        out.append("alt_domain must differ from domain")
    if len(cfg.node_meta) > 64:
        out.append(f"node_meta has {len(cfg.node_meta)} keys; at most 64 are allowed")
    tls = cfg.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        out.append("tls: cert_file and key_file must be set together")
    if (tls.verify_incoming or tls.verify_outgoing) and not tls.ca_file:
        out.append("tls: verify_incoming/verify_outgoing require ca_file")
    if cfg.ports.https != -1 and not tls.cert_file:
        out.append("ports.https is enabled but tls cert_file/key_file are not set")
    return out


@dataclass
class ConfigReport:
    """What `collect_config` found: the merged Config, each file's own keys (so a definition's
    error can name the file that holds it), and every problem, in the order met."""

    config: Config
    files: list[tuple[str, dict[str, Any]]]
    errors: list[str]


def collect_config(
    *,
    files: Sequence[str | os.PathLike[str]] = (),
    dirs: Sequence[str | os.PathLike[str]] = (),
    flags: Mapping[str, Any] | None = None,
    dev: bool = False,
    config_format: str | None = None,
) -> ConfigReport:
    """`load_config` that keeps going after an error, so one run names every problem.
    `config_format` applies to `files` only; a directory's files are chosen by extension."""
    flags = flags or {}
    dev = dev or bool(flags.get("dev"))
    errors: list[str] = []
    paths = [(os.fspath(f), config_format) for f in files]
    for directory in dirs:
        try:
            paths.extend((f, None) for f in _dir_files(os.fspath(directory)))
        except ConfigError as e:
            errors.append(str(e))
    merged: dict[str, Any] = {}
    parts: list[tuple[str, dict[str, Any]]] = []
    for path, fmt in paths:
        try:
            part = read_config_file(path, errors, fmt)
        except ConfigError as e:
            errors.append(str(e))
            continue
        parts.append((path, part))
        _merge(merged, part)
    try:
        _merge(merged, _read_flags(flags))
    except ConfigError as e:
        errors.append(str(e))
    cfg = _build(merged, dev)  # only valid values reached `merged`
    errors.extend(_problems(cfg))
    return ConfigReport(cfg, parts, errors)


def load_config(
    *,
    files: Sequence[str | os.PathLike[str]] = (),
    dirs: Sequence[str | os.PathLike[str]] = (),
    flags: Mapping[str, Any] | None = None,
    dev: bool = False,
) -> Config:
    """Merge `files`, then every *.json/*.hcl of each of `dirs`, then `flags`, into a Config.

    Files and dirs are separate arguments, so the interleaving of repeated -config-file and
    -config-dir on Consul's command line is not kept: all files come first. Raises one
    ConfigError naming every problem, one per line.
    """
    report = collect_config(files=files, dirs=dirs, flags=flags, dev=dev)
    if report.errors:
        raise ConfigError("\n".join(report.errors))
    return report.config
