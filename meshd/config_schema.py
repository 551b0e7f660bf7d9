"""What each config-file key and each command-line flag means: the schema tables.

A row maps a key to (target path in the canonical dict, or None to drop; validator or nested
schema). `meshd.config` walks sources with these tables.
"""

from __future__ import annotations

from meshd import configvalues as cv
from meshd.acl import settings as acl_settings
from meshd.configvalues import Schema, Validator
from meshd.k8s import settings as k8s_settings


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
TOP: Schema = {
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
        raft_snapshot_threshold=cv.positive,
        raft_snapshot_interval=cv.duration(positive=True),
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
    # Consul's ACL authority datacenter; meshd has one datacenter: accepted so Consul files load
    "primary_datacenter": (None, cv.datacenter),
    **_TLS_FILES,
    **_TLS_HOSTNAME,  # Consul's pre-1.12 top-level TLS keys
}

FLAGS: Schema = {
    **{
        name: TOP[key]
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
