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

import base64
import binascii
import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.durations import DurationError, parse_duration_seconds
from meshd.hclparse import parse_hcl

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
    encrypt: str | None = None
    retry_join: list[str] = field(default_factory=list)
    retry_interval: float = 30.0
    reconnect_timeout: float = 72 * 3600.0
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


# --- value validators: (raw value) -> canonical value, raising _InvalidError with the reason ---


class _InvalidError(Exception):
    """A value's reason for rejection; the caller adds where it came from."""


Validator = Callable[[Any], Any]
Schema = dict[str, tuple[tuple[str, ...] | None, "Validator | Schema"]]


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})" if not isinstance(v, str) else repr(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _InvalidError(f"must be true or false, got {_show(v)}")
    return v


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _InvalidError(f"must be a non-negative integer, got {_show(v)}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or 1 <= v <= 65535):
        raise _InvalidError(f"must be a port number 1-65535, or -1 to disable; got {_show(v)}")
    return v


def _max_files(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < -1:
        raise _InvalidError(f"must be -1 (keep none), 0 (keep all) or a count; got {_show(v)}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _InvalidError(f"must be a string, got {_show(v)}")
    return v


def _optional(check: Validator) -> Validator:
    """An empty string means "unset" in Consul's files, so it must not fail format checks."""
    return lambda v: "" if _str(v) == "" else check(v)


def _policy(v: Any) -> str:
    if _str(v).lower() not in ("allow", "deny"):
        raise _InvalidError(f"must be allow or deny, got {v!r}")
    return v.lower()


def _duration(minimum: float = 0.0, *, positive: bool = False) -> Validator:
    def check(v: Any) -> float:
        try:
            seconds = parse_duration_seconds(v)
        except DurationError as e:
            raise _InvalidError(str(e)) from None
        if positive and seconds <= 0:
            raise _InvalidError(f"must be greater than zero, got {v!r}")
        if seconds < minimum:
            raise _InvalidError(f"must be at least {minimum / 3600:g}h, got {v!r}")
        return seconds

    return check


def _ip(v: Any) -> str:
    try:
        ipaddress.ip_address(_str(v))
    except ValueError:
        raise _InvalidError(f"must be an IP address, got {v!r}") from None
    return v


def _ip_list(v: Any) -> str:
    """Consul's client_addr may name several space-separated addresses."""
    if not _str(v).split():
        raise _InvalidError("must name at least one IP address")
    for part in v.split():
        _ip(part)
    return v


_DC_RE = re.compile(r"[A-Za-z0-9_-]+")
_NODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_DOMAIN_RE = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _datacenter(v: Any) -> str:
    if not _DC_RE.fullmatch(_str(v)):
        raise _InvalidError(f"may only contain letters, digits, '-' and '_'; got {v!r}")
    return v.lower()  # Consul lowercases datacenter names


def _node_name(v: Any) -> str:
    if not _NODE_RE.fullmatch(_str(v)):
        raise _InvalidError(f"must be 1-255 letters, digits, '.', '-' or '_'; got {v!r}")
    return v


def _domain(v: Any) -> str:
    name = _str(v).strip().lower()
    name = name if name.endswith(".") else name + "."
    if not _DOMAIN_RE.fullmatch(name):
        raise _InvalidError(f"must be a DNS domain such as 'consul.'; got {v!r}")
    return name


def _encrypt(v: Any) -> str:
    try:
        key = base64.b64decode(_str(v), validate=True)
    except (binascii.Error, ValueError):
        raise _InvalidError("must be a base64-encoded key") from None
    if len(key) not in (16, 24, 32):
        raise _InvalidError(
            f"must decode to a 16, 24 or 32 byte key, got {len(key)} bytes "
            "(generate one with `openssl rand -base64 32`)"
        )
    return v


_LEVELS = {
    "TRACE": "TRACE",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERR": "ERROR",
    "ERROR": "ERROR",
}


def _log_level(v: Any) -> str:
    level = _LEVELS.get(_str(v).upper())
    if level is None:
        raise _InvalidError(f"must be one of trace, debug, info, warn, error; got {v!r}")
    return level


def _str_list(v: Any) -> list[str]:
    if isinstance(v, tuple):  # click hands multi-value options over as tuples
        v = list(v)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _InvalidError(f"must be a list of strings, got {_show(v)}")
    return v


def _object_list(v: Any) -> list[dict[str, Any]]:
    """`service {}` is one object and repeated blocks a list in HCL; JSON allows either too."""
    items = [v] if isinstance(v, dict) else v
    if not isinstance(items, list):
        raise _InvalidError(f"must be an object or a list of objects, got {_show(v)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _InvalidError(f"item {i} must be an object, got {_show(item)}")
    return list(items)


def _map(v: Any) -> dict[str, Any]:
    """A user-keyed map; repeated HCL blocks arrive as a list of maps, merged in order."""
    parts = v if isinstance(v, list) else [v]
    if not parts or not all(isinstance(p, dict) for p in parts):
        raise _InvalidError(f"must be an object, got {_show(v)}")
    return {k: x for p in parts for k, x in p.items()}


def _node_meta(v: Any) -> dict[str, str]:
    meta = _map(v)
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(str(key)):
            raise _InvalidError(f"key {key!r} must be 1-128 letters, digits, '-' or '_'")
        if key.startswith("consul-"):
            raise _InvalidError(f"key {key!r} uses the reserved prefix 'consul-'")
        if not isinstance(value, str) or len(value) > 512:
            raise _InvalidError(f"value of {key!r} must be a string of at most 512 characters")
    return meta


def _meta_pairs(v: Any) -> dict[str, str]:
    """-node-meta key:value, repeatable; like Consul, a pair without ':' gets an empty value."""
    pairs = (p.split(":", 1) for p in _str_list(v))
    return _node_meta({p[0]: p[1] if len(p) > 1 else "" for p in pairs})


def _service_ttl(v: Any) -> dict[str, float]:
    ttls = _map(v)
    for name in ttls:
        if "*" in name[:-1]:
            raise _InvalidError(f"{name!r}: '*' is only allowed at the end (a prefix wildcard)")
    out: dict[str, float] = {}
    for name, ttl in ttls.items():
        try:
            out[name] = _duration()(ttl)
        except _InvalidError as e:
            raise _InvalidError(f"{name!r}: {e}") from None
    return out


# --- schemas: key -> (target path in the canonical dict or None to drop, validator/schema) ------


def _fields(prefix: tuple[str, ...], **validators: Validator) -> Schema:
    return {key: ((*prefix, key), check) for key, check in validators.items()}


_PORTS: Schema = {
    **_fields(("ports",), http=_port, https=_port, grpc=_port, dns=_port, server=_port, raft=_port),
    "serf_lan": (None, _port),
    "serf_wan": (None, _port),  # accepted for Consul files, unused
}
_ADDRESSES = _fields(("addresses",), http=_ip_list, https=_ip_list, grpc=_ip_list, dns=_ip_list)
_SOA = _fields(("dns_config", "soa"), refresh=_count, retry=_count, expire=_count, min_ttl=_count)
_DNS: Schema = {
    **_fields(
        ("dns_config",),
        allow_stale=_bool,
        max_stale=_duration(),
        node_ttl=_duration(),
        service_ttl=_service_ttl,
        only_passing=_bool,
        a_record_limit=_count,
        udp_answer_limit=_count,
        enable_truncate=_bool,
        recursor_timeout=_duration(positive=True),
    ),
    "soa": (None, _SOA),
}
_TLS_FILES = _fields(
    ("tls",),
    ca_file=_str,
    cert_file=_str,
    key_file=_str,
    verify_incoming=_bool,
    verify_outgoing=_bool,
)
_TLS_HOSTNAME = _fields(("tls",), verify_server_hostname=_bool)
_TLS: Schema = {
    "defaults": (None, _TLS_FILES),
    "internal_rpc": (None, _TLS_HOSTNAME),  # Consul >= 1.12
    **_TLS_FILES,
    **_TLS_HOSTNAME,  # meshd shorthand: tls { ca_file = "..." }
}
_LIMITS = _fields(
    ("limits",),
    http_max_body_bytes=_count,
    http_max_conns_per_client=_count,
    node_failure_timeout=_duration(positive=True),
    rpc_max_conns_per_client=_count,
    kv_max_value_size=_count,
    txn_max_req_len=_count,
)
_TOP: Schema = {
    **_fields(
        (),
        server=_bool,
        bootstrap=_bool,
        bootstrap_expect=_count,
        node_name=_node_name,
        datacenter=_datacenter,
        data_dir=_str,
        client_addr=_ip_list,
        bind_addr=_ip,
        advertise_addr=_optional(_ip),
        domain=_domain,
        alt_domain=_optional(_domain),
        recursors=_str_list,
        services=_object_list,
        checks=_object_list,
        enable_script_checks=_bool,
        encrypt=_optional(_encrypt),
        retry_join=_str_list,
        retry_interval=_duration(positive=True),
        reconnect_timeout=_duration(8 * 3600.0),
        log_level=_log_level,
        node_meta=_node_meta,
        leave_on_terminate=_bool,
        skip_leave_on_interrupt=_bool,
        default_intention_policy=_policy,
        raft_fsync=_bool,
        log_json=_bool,
        log_file=_str,
        log_rotate_bytes=_count,
        log_rotate_duration=_duration(positive=True),
        log_rotate_max_files=_max_files,
        pid_file=_str,
        watches=_object_list,
    ),
    "service": (("services",), _object_list),
    "check": (("checks",), _object_list),
    "ports": (None, _PORTS),
    "addresses": (None, _ADDRESSES),
    "dns_config": (None, _DNS),
    "tls": (None, _TLS),
    "limits": (None, _LIMITS),
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
        }.items()
    },
    **{f"{p}-port": (("ports", p), _port) for p in ("http", "https", "grpc", "dns", "server")},
    "serf-lan-port": (None, _port),
    "serf-wan-port": (None, _port),
    "node-meta": (("node_meta",), _meta_pairs),
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
            fail(f"{source}: {path!r} must be an object, got {_show(block)}")
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
                _walk(value, check, dotted, source, out, errors)
                continue
            try:
                canonical = check(value)
            except _InvalidError as e:
                fail(f"{source}: invalid {dotted!r}: {e}")
                continue
            if target is not None:
                _put(out, target, canonical)


def read_config_file(path: str, errors: list[str] | None = None) -> dict[str, Any]:
    """One file's keys in canonical form (only those it sets); see `_walk` for `errors`."""
    source = f"config file {path}"
    suffix = Path(path).suffix.lower()
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
        if value is None or value in ((), []) or (check is _bool and value is False):
            continue
        try:
            canonical = check(value)  # type: ignore[operator]
        except _InvalidError as e:
            raise ConfigError(f"flag -{name}: invalid value: {e}") from None
        if target is not None:
            _put(out, target, canonical)
    return out


# --- assembly ------------------------------------------------------------------------------------


def _build(merged: dict[str, Any], dev: bool) -> Config:
    dns = dict(merged.pop("dns_config", {}))
    dns["soa"] = {**SOA_DEFAULTS, **dns.get("soa", {})}
    tls = {k: (v or None) if isinstance(v, str) else v for k, v in merged.pop("tls", {}).items()}
    for key in ("data_dir", "advertise_addr", "alt_domain", "encrypt"):
        if key in merged:
            merged[key] = merged[key] or None
    return Config(
        dev=dev,
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
        _node_name(cfg.node_name)
    except _InvalidError as e:
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
) -> ConfigReport:
    """`load_config` that keeps going after an error, so one run names every problem."""
    flags = flags or {}
    dev = dev or bool(flags.get("dev"))
    errors: list[str] = []
    paths = [os.fspath(f) for f in files]
    for directory in dirs:
        try:
            paths.extend(_dir_files(os.fspath(directory)))
        except ConfigError as e:
            errors.append(str(e))
    merged: dict[str, Any] = {}
    parts: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            part = read_config_file(path, errors)
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
