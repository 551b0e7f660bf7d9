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
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd import configvalues as cv
from meshd.acl import settings as acl_settings
from meshd.configvalues import Schema, Validator
from meshd.durations import DurationError, parse_duration_seconds
from meshd.hclparse import parse_hcl
from meshd.k8s import settings as k8s_settings

__all__ = [
    "Config",
    "ConfigError",
    "ConfigReport",
    "DNSConfig",
    "Ports",
    "TLSConfig",
    "collect_config",
    "load_config",
    "parse_duration",
    "read_config_file",
]

DEFAULT_HTTP_MAX_BODY = 1 << 20
DEFAULT_HTTP_MAX_CONNS_PER_CLIENT = 200  # Consul's default
DEFAULT_HTTP_READ_HEADER_TIMEOUT = 10.0
DEFAULT_HTTP_MAX_SNAPSHOT = 256 << 20
SOA_DEFAULTS: dict[str, int] = {"refresh": 3600, "retry": 600, "expire": 86400, "min_ttl": 0}
CONFIG_EXTENSIONS = (".json", ".hcl")


class ConfigError(ValueError):
    """Invalid configuration; the message names the file or flag and the dotted key."""


def parse_duration(v: str | float) -> float:
    """Seconds from a Go duration ("1m30s") or a bare number; shared by config, HTTP and checks."""
    try:
        return parse_duration_seconds(v)
    except DurationError as e:
        raise ConfigError(str(e)) from None


@dataclass
class Ports:
    http: int = 8500
    https: int = -1
    grpc: int = 8502
    dns: int = 8600
    server: int = 8300
    raft: int = 8301


@dataclass
class DNSConfig:
    allow_stale: bool = True
    max_stale: float = 87600 * 3600.0  # Consul's "87600h": any server may answer
    node_ttl: float = 0.0
    service_ttl: dict[str, float] = field(default_factory=dict)
    only_passing: bool = False
    a_record_limit: int = 0
    udp_answer_limit: int = 3
    enable_truncate: bool = True
    recursor_timeout: float = 2.0
    soa: dict[str, int] = field(default_factory=lambda: dict(SOA_DEFAULTS))

    def ttl_for(self, service: str) -> float:
        """Consul's lookup order: the exact name, then the longest `prefix*` ("*" matches all)."""
        if service in self.service_ttl and not service.endswith("*"):
            return self.service_ttl[service]
        best_len, ttl = -1, 0.0
        for key, value in self.service_ttl.items():
            prefix = key[:-1]
            if key.endswith("*") and service.startswith(prefix) and len(prefix) > best_len:
                best_len, ttl = len(prefix), value
        return ttl


@dataclass
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False


@dataclass
class Config:
    dev: bool = False
    server: bool = False
    bootstrap: bool = False
    bootstrap_expect: int = 0
    node_name: str = field(default_factory=socket.gethostname)
    datacenter: str = "dc1"
    data_dir: str | None = None
    client_addr: str = "127.0.0.1"
    # Consul binds 0.0.0.0 outside dev mode; meshd stays on loopback until told otherwise.
    bind_addr: str = "127.0.0.1"
    advertise_addr: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    ports: Ports = field(default_factory=Ports)
    domain: str = "consul."
    alt_domain: str | None = None
    recursors: list[str] = field(default_factory=list)
    dns_config: DNSConfig = field(default_factory=DNSConfig)
    services: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False  # script checks from config files only (Consul)
    encrypt: str | None = None
    retry_join: list[str] = field(default_factory=list)
    retry_interval: float = 30.0
    reconnect_timeout: float = 72 * 3600.0
    kv_tombstone_ttl: float = 15 * 60.0  # deleted KV keys' tombstones are reaped after this
    log_level: str = "INFO"
    node_meta: dict[str, str] = field(default_factory=dict)
    tls: TLSConfig = field(default_factory=TLSConfig)
    default_intention_policy: str = ""  # "" = derive: "allow" in dev mode, else "deny"
    leave_on_terminate: bool | None = None  # None = derive: True for clients, False for servers
    raft_fsync: bool = True
    limits: dict[str, int] = field(default_factory=dict)
    # None = derive: True for servers (a ^C must not shrink the quorum), False for clients
    skip_leave_on_interrupt: bool | None = None
    log_json: bool = False
    log_file: str | None = None
    log_rotate_bytes: int = 0  # 0: no size limit
    log_rotate_duration: float = 24 * 3600.0
    log_rotate_max_files: int = 0  # 0: keep every archive; -1: keep none
    pid_file: str | None = None
    watches: list[dict[str, Any]] = field(default_factory=list)  # stored; run by a later issue
    kubernetes: k8s_settings.KubernetesConfig | None = None  # the agent's Kubernetes mode
    acl: acl_settings.ACLConfig = field(default_factory=acl_settings.ACLConfig)

    def __post_init__(self) -> None:
        # Derived here rather than in load_config so a hand-built Config(dev=True) behaves too.
        if self.dev:
            self.server = True
            self.data_dir = None
            if not self.bootstrap_expect:
                self.bootstrap = True
        if not self.default_intention_policy:
            self.default_intention_policy = "allow" if self.dev else "deny"
        if self.leave_on_terminate is None:
            self.leave_on_terminate = not self.server
        if self.skip_leave_on_interrupt is None:
            self.skip_leave_on_interrupt = self.server

    @property
    def http_max_body(self) -> int:
        return int(self.limits.get("http_max_body_bytes", DEFAULT_HTTP_MAX_BODY))

    @property
    def http_max_conns_per_client(self) -> int:
        return int(self.limits.get("http_max_conns_per_client", DEFAULT_HTTP_MAX_CONNS_PER_CLIENT))

    @property
    def http_read_header_timeout(self) -> float:
        return float(self.limits.get("http_read_header_timeout", DEFAULT_HTTP_READ_HEADER_TIMEOUT))

    @property
    def http_max_snapshot(self) -> int:
        return int(self.limits.get("http_max_snapshot_bytes", DEFAULT_HTTP_MAX_SNAPSHOT))


# --- schemas: key -> (target path in the canonical dict or None to drop, validator/schema) ------


def _fields(prefix: tuple[str, ...], **validators: Validator) -> Schema:
    return {key: ((*prefix, key), check) for key, check in validators.items()}


_PORTS: Schema = {
    **_fields(
        ("ports",),
        http=cv.port,
        https=cv.port,
        grpc=cv.port,
        dns=cv.port,
        server=cv.port,
        raft=cv.port,
    ),
    "serf_lan": (None, cv.port),
    "serf_wan": (None, cv.port),  # accepted for Consul files, unused
}
_ADDRESSES = _fields(
    ("addresses",), http=cv.ip_list, https=cv.ip_list, grpc=cv.ip_list, dns=cv.ip_list
)
_SOA = _fields(
    ("dns_config", "soa"), refresh=cv.count, retry=cv.count, expire=cv.count, min_ttl=cv.count
)
_DNS: Schema = {
    **_fields(
        ("dns_config",),
        allow_stale=cv.boolean,
        max_stale=cv.duration(),
        node_ttl=cv.duration(),
        service_ttl=cv.service_ttl,
        only_passing=cv.boolean,
        a_record_limit=cv.count,
        udp_answer_limit=cv.count,
        enable_truncate=cv.boolean,
        recursor_timeout=cv.duration(positive=True),
    ),
    "soa": (None, _SOA),
}
_TLS_FILES = _fields(
    ("tls",),
    ca_file=cv.string,
    cert_file=cv.string,
    key_file=cv.string,
    verify_incoming=cv.boolean,
    verify_outgoing=cv.boolean,
)
_TLS_HOSTNAME = _fields(("tls",), verify_server_hostname=cv.boolean)
_TLS: Schema = {
    "defaults": (None, _TLS_FILES),
    "internal_rpc": (None, _TLS_HOSTNAME),  # Consul >= 1.12
    **_TLS_FILES,
    **_TLS_HOSTNAME,  # meshd shorthand: tls { ca_file = "..." }
}
_LIMITS = _fields(
    ("limits",),
    http_max_body_bytes=cv.count,
    http_max_conns_per_client=cv.count,
    http_read_header_timeout=cv.duration(positive=True),
    http_max_snapshot_bytes=cv.count,
    node_failure_timeout=cv.duration(positive=True),
    rpc_max_conns_per_client=cv.count,
    kv_max_value_size=cv.count,
    txn_max_req_len=cv.count,
)
_TOP: Schema = {
    **_fields(
        (),
        server=cv.boolean,
        bootstrap=cv.boolean,
        bootstrap_expect=cv.count,
        node_name=cv.node_name,
        datacenter=cv.datacenter,
        data_dir=cv.string,
        client_addr=cv.ip_list,
        bind_addr=cv.ip,
        advertise_addr=cv.optional(cv.ip),
        domain=cv.domain,
        alt_domain=cv.optional(cv.domain),
        recursors=cv.str_list,
        services=cv.object_list,
        checks=cv.object_list,
        enable_script_checks=cv.boolean,
        enable_local_script_checks=cv.boolean,
        encrypt=cv.optional(cv.encrypt),
        retry_join=cv.str_list,
        retry_interval=cv.duration(positive=True),
        reconnect_timeout=cv.duration(8 * 3600.0),
        kv_tombstone_ttl=cv.duration(positive=True),
        log_level=cv.log_level,
        node_meta=cv.node_meta,
        leave_on_terminate=cv.boolean,
        skip_leave_on_interrupt=cv.boolean,
        default_intention_policy=cv.policy,
        raft_fsync=cv.boolean,
        log_json=cv.boolean,
        log_file=cv.string,
        log_rotate_bytes=cv.count,
        log_rotate_duration=cv.duration(positive=True),
        log_rotate_max_files=cv.max_files,
        pid_file=cv.string,
        watches=cv.object_list,
    ),
    "service": (("services",), cv.object_list),
    "check": (("checks",), cv.object_list),
    "ports": (None, _PORTS),
    "addresses": (None, _ADDRESSES),
    "dns_config": (None, _DNS),
    "tls": (None, _TLS),
    "limits": (None, _LIMITS),
    "kubernetes": (("kubernetes", "enabled"), k8s_settings.SCHEMA),
    "acl": (None, acl_settings.SCHEMA),  # target: the block is there
    **_TLS_FILES,
    **_TLS_HOSTNAME,  # Consul's pre-1.12 top-level TLS keys
}

_FLAGS: Schema = {
    **{
        name: _TOP[key]
        for name, key in {
            "server": "server",
            "bootstrap": "bootstrap",
            "bootstrap-expect": "bootstrap_expect",
            "node": "node_name",
            "datacenter": "datacenter",
            "data-dir": "data_dir",
            "client": "client_addr",
            "bind": "bind_addr",
            "advertise": "advertise_addr",
            "domain": "domain",
            "alt-domain": "alt_domain",
            "recursor": "recursors",
            "retry-join": "retry_join",
            "retry-interval": "retry_interval",
            "encrypt": "encrypt",
            "log-level": "log_level",
            "enable-script-checks": "enable_script_checks",
            "log-json": "log_json",
            "log-file": "log_file",
            "log-rotate-bytes": "log_rotate_bytes",
            "log-rotate-duration": "log_rotate_duration",
            "log-rotate-max-files": "log_rotate_max_files",
            "pid-file": "pid_file",
            "enable-local-script-checks": "enable_local_script_checks",
        }.items()
    },
    **{f"{p}-port": (("ports", p), cv.port) for p in ("http", "https", "grpc", "dns", "server")},
    "serf-lan-port": (None, cv.port),
    "serf-wan-port": (None, cv.port),
    "node-meta": (("node_meta",), cv.meta_pairs),
}


# --- sources -------------------------------------------------------------------------------------


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
    _walk(raw, _TOP, "", source, out, errors)
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
        entry = _FLAGS.get(name)
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
