"""What a sidecar logs and traces: Consul's `AccessLogs` and meshd's `tracing` proxy config.

Pure parsing and validation, shared by config-entry writes (a bad entry is refused with the
reason, before Raft) and the agent's snapshot builder (which must never fail a whole proxy on
one bad field, so it logs and leaves the feature off). The Envoy translation lives in
`meshd.proxy.observability`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

#: Consul's default JSON access log line (agent/xds/accesslogs): same keys, same operators, so
#: log pipelines built for Consul's sidecars parse meshd's unchanged.
DEFAULT_JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
SINKS = ("stdout", "stderr", "file")
TRACING_KEY = "tracing"
TRACERS = ("zipkin", "opentelemetry")
log = logging.getLogger("meshd.mesh")


class ObservabilityConfigError(ValueError):
    """An `AccessLogs` or `tracing` setting Envoy could not be given; the message says which."""


@dataclass(frozen=True)
class AccessLogs:
    """Consul's AccessLogsConfig, validated. `json_format` is None for a text format."""

    sink: str
    path: str
    json_format: dict[str, Any] | None
    text_format: str
    listener_logs: bool


@dataclass(frozen=True)
class Tracing:
    """One collector: `tracer` is zipkin or opentelemetry (OTLP over gRPC)."""

    tracer: str
    host: str
    port: int
    sampling: float
    service_name: str


def _str(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ObservabilityConfigError(f"AccessLogs.{key} must be a string")
    return v


def parse_access_logs(raw: Any) -> AccessLogs | None:
    """None when logging is off (absent, or `Enabled = false`), as in Consul.

    Consul's rules: Type is stdout (the default), stderr or file; file needs a Path and only
    file takes one; JSONFormat and TextFormat exclude each other; JSONFormat is a JSON object.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ObservabilityConfigError("AccessLogs must be an object")
    enabled = raw.get("Enabled", False)
    if not isinstance(enabled, bool):
        raise ObservabilityConfigError("AccessLogs.Enabled must be a boolean")
    sink = _str(raw, "Type") or "stdout"
    if sink not in SINKS:
        raise ObservabilityConfigError(
            f"AccessLogs.Type must be one of {', '.join(SINKS)}, not {sink!r}"
        )
    path, text, js = _str(raw, "Path"), _str(raw, "TextFormat"), _str(raw, "JSONFormat")
    if sink == "file" and not path:
        raise ObservabilityConfigError('AccessLogs.Path is required with Type = "file"')
    if sink != "file" and path:
        raise ObservabilityConfigError('AccessLogs.Path is only allowed with Type = "file"')
    if text and js:
        raise ObservabilityConfigError("AccessLogs: set JSONFormat or TextFormat, not both")
    json_format: dict[str, Any] | None = None
    if not text:
        json_format = dict(DEFAULT_JSON_FORMAT)
        if js:
            try:
                json_format = json.loads(js)
            except ValueError as e:
                raise ObservabilityConfigError(f"AccessLogs.JSONFormat is not JSON: {e}") from None
            if not isinstance(json_format, dict) or not json_format:
                raise ObservabilityConfigError("AccessLogs.JSONFormat must be a JSON object")
    disable = raw.get("DisableListenerLogs", False)
    if not isinstance(disable, bool):
        raise ObservabilityConfigError("AccessLogs.DisableListenerLogs must be a boolean")
    if not enabled:
        return None
    if text and not text.endswith("\n"):
        text += "\n"  # one record per line, as Consul makes it
    return AccessLogs(sink, path, json_format, text, not disable)


def _hostport(value: Any, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ObservabilityConfigError(f"tracing.{key} must be a host:port string")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ObservabilityConfigError(f"tracing.{key} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def parse_tracing(raw: Any, service: str) -> Tracing | None:
    """meshd's short form, e.g. `tracing = { zipkin = "127.0.0.1:9411", sampling = 10 }`.

    One collector per proxy; `sampling` is the percent of requests that start a trace
    (default 100); requests that arrive with a sampled trace context are always traced.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ObservabilityConfigError("tracing must be an object")
    unknown = set(raw) - {*TRACERS, "sampling", "service_name"}
    if unknown:
        raise ObservabilityConfigError(f"tracing: unknown keys {sorted(unknown)}")
    chosen = [t for t in TRACERS if raw.get(t)]
    if len(chosen) != 1:
        raise ObservabilityConfigError("tracing needs exactly one of zipkin or opentelemetry")
    host, port = _hostport(raw[chosen[0]], chosen[0])
    sampling = raw.get("sampling", 100)
    if isinstance(sampling, bool) or not isinstance(sampling, int | float):
        raise ObservabilityConfigError("tracing.sampling must be a number (percent)")
    if not 0 <= sampling <= 100:
        raise ObservabilityConfigError("tracing.sampling must be between 0 and 100")
    name = raw.get("service_name") or service
    if not isinstance(name, str):
        raise ObservabilityConfigError("tracing.service_name must be a string")
    return Tracing(chosen[0], host, port, float(sampling), name)


def validate_proxy_defaults(entry: dict[str, Any]) -> None:
    """Refuse a proxy-defaults entry whose AccessLogs or Config.tracing could not be applied."""
    parse_access_logs(entry.get("AccessLogs"))
    config = entry.get("Config") or {}
    if isinstance(config, dict):
        parse_tracing(config.get(TRACING_KEY), "global")


def snapshot_fields(
    proxy: dict[str, Any], defaults: dict[str, Any] | None, service: str
) -> dict[str, Any]:
    """The ProxySnapshot fields for one sidecar: its registration's `Proxy.AccessLogs` and
    `Proxy.Config` win over proxy-defaults', key by key for Config (Consul's merge).

    Never raises: a setting that slipped past validation (an old entry, a registration) turns
    that feature off with the reason logged, rather than stopping the proxy's config.
    """
    defaults = defaults or {}
    config = {**(defaults.get("Config") or {}), **(proxy.get("Config") or {})}
    out: dict[str, Any] = {
        "listener_tracing_json": str(config.get("envoy_listener_tracing_json") or ""),
        "bootstrap_tracing": bool(config.get("envoy_tracing_json")),
    }
    raw_logs = proxy.get("AccessLogs")
    if raw_logs is None:
        raw_logs = defaults.get("AccessLogs")
    for key, parse in (
        ("access_logs", lambda: parse_access_logs(raw_logs)),
        ("tracing", lambda: parse_tracing(config.get(TRACING_KEY), service)),
    ):
        try:
            out[key] = parse()
        except ObservabilityConfigError as e:
            log.warning("sidecar for %s: %s; ignored", service, e)
            out[key] = None
    return out


_ACCESS_LOG_KEYS = {
    k.lower(): k
    for k in ("Enabled", "DisableListenerLogs", "Type", "Path", "JSONFormat", "TextFormat")
}


def sidecar_access_logs(raw: Any) -> dict[str, Any] | None:
    """A sidecar registration's `access_logs` / `AccessLogs`, in Consul's field names and
    validated (ObservabilityConfigError), so a bad one is refused at registration."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ObservabilityConfigError("AccessLogs must be an object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = _ACCESS_LOG_KEYS.get(str(key).lower().replace("_", ""))
        if name is None:
            raise ObservabilityConfigError(f"AccessLogs: unknown field {key!r}")
        out[name] = value
    parse_access_logs(out)
    return out
