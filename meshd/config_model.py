"""The agent's configuration as dataclasses (`Config` and its blocks), and the error loading raises.

Filled by `meshd.config`, which reads and merges the sources; kept apart so code that only
reads a Config does not depend on the loader.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from meshd.acl import settings as acl_settings
from meshd.durations import DurationError, parse_duration_seconds
from meshd.k8s import settings as k8s_settings

DEFAULT_HTTP_MAX_BODY = 1 << 20
DEFAULT_HTTP_MAX_CONNS_PER_CLIENT = 200  # Consul's default
DEFAULT_HTTP_READ_HEADER_TIMEOUT = 10.0
DEFAULT_HTTP_MAX_SNAPSHOT = 256 << 20
SOA_DEFAULTS: dict[str, int] = {"refresh": 3600, "retry": 600, "expire": 86400, "min_ttl": 0}


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
    # "" = derive as Consul: the ACL default_policy with ACLs on, else "allow"
    default_intention_policy: str = ""
    leave_on_terminate: bool | None = None  # None = derive: True for clients, False for servers
    raft_fsync: bool = True
    raft_snapshot_threshold: int = 20000  # journal entries between two snapshots (Consul's name)
    raft_snapshot_interval: float = 600.0  # or this long, whichever comes first
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
            acl = self.acl
            self.default_intention_policy = acl.default_policy if acl.enabled else "allow"
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
