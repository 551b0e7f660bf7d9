"""Access logs and tracing on a sidecar's listeners, plus the collector's cluster.

Applied after the listeners are built (`decorate_listeners`), so the translators of listeners
and routes stay unaware of them and a proxy with neither configured gets byte-identical
resources. Consul's shapes: one access logger per HTTP connection manager / TCP proxy, and one
on the listener itself that logs only connections no filter chain took (response flag NR),
unless `DisableListenerLogs`.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2, substitution_format_string_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format, struct_pb2

from meshd.proxy_observability import AccessLogs, Tracing

from .common import pack, seconds, socket_address
from .snapshot import ProxySnapshot

log = logging.getLogger("meshd.mesh")
TRACING_CLUSTER = "meshd_tracing"
ZIPKIN_PATH = "/api/v2/spans"
_HCM_TYPE = hcm.HttpConnectionManager.DESCRIPTOR.full_name
_TCP_TYPE = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


def _format(logs: AccessLogs) -> substitution_format_string_pb2.SubstitutionFormatString:
    fmt = substitution_format_string_pb2.SubstitutionFormatString()
    if logs.json_format is not None:
        s = struct_pb2.Struct()
        s.update(logs.json_format)
        fmt.json_format.CopyFrom(s)
    else:
        fmt.text_format_source.inline_string = logs.text_format
    return fmt


def access_log(logs: AccessLogs, *, listener: bool) -> accesslog_pb2.AccessLog:
    fmt = _format(logs)
    sink: Any
    if logs.sink == "file":
        sink = file_pb2.FileAccessLog(path=logs.path, log_format=fmt)
    elif logs.sink == "stderr":
        sink = stream_pb2.StderrAccessLog(log_format=fmt)
    else:
        sink = stream_pb2.StdoutAccessLog(log_format=fmt)
    entry = accesslog_pb2.AccessLog(
        name="Consul Listener Log" if listener else "Consul Listener Filter Log",
        typed_config=pack(sink),
    )
    if listener:
        entry.filter.response_flag_filter.flags.append("NR")
    return entry


def _provider(t: Tracing) -> http_tracer_pb2.Tracing.Http:
    if t.tracer == "zipkin":
        z = zipkin_pb2.ZipkinConfig(
            collector_cluster=TRACING_CLUSTER,
            collector_endpoint=ZIPKIN_PATH,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=f"{t.host}:{t.port}",
            trace_id_128bit=True,
            # read and write both B3 and W3C traceparent, so either kind of caller joins
            trace_context_option=zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION,
        )
        z.shared_span_context.value = False  # a client and a server span per hop
        return http_tracer_pb2.Tracing.Http(name="envoy.tracers.zipkin", typed_config=pack(z))
    otel = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER)
        ),
        service_name=t.service_name,
    )
    return http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=pack(otel))


def hcm_tracing(snap: ProxySnapshot) -> hcm.HttpConnectionManager.Tracing | None:
    """meshd's `tracing` wins; then Consul's `envoy_listener_tracing_json`; a bootstrap tracer
    (`envoy_tracing_json`) gets Consul's default: trace only what the caller already samples."""
    if snap.tracing is not None:
        return hcm.HttpConnectionManager.Tracing(
            provider=_provider(snap.tracing),
            random_sampling=percent_pb2.Percent(value=snap.tracing.sampling),
        )
    if snap.listener_tracing_json:
        out = hcm.HttpConnectionManager.Tracing()
        try:
            json_format.Parse(snap.listener_tracing_json, out)
        except json_format.ParseError as e:
            # one bad key must not freeze the proxy's config: the rest still goes out
            log.warning("sidecar %s: envoy_listener_tracing_json ignored: %s", snap.proxy_id, e)
            return None
        return out
    if snap.bootstrap_tracing:
        return hcm.HttpConnectionManager.Tracing(random_sampling=percent_pb2.Percent(value=0))
    return None


def _decorate_filter(
    f: lc.Filter,
    logs: AccessLogs | None,
    tracing: hcm.HttpConnectionManager.Tracing | None,
) -> None:
    tc = f.typed_config
    if tc.TypeName() == _HCM_TYPE:
        m = hcm.HttpConnectionManager()
        tc.Unpack(m)
        if logs is not None:
            m.access_log.append(access_log(logs, listener=False))
        if tracing is not None:
            m.tracing.CopyFrom(tracing)
        tc.CopyFrom(pack(m))
    elif tc.TypeName() == _TCP_TYPE and logs is not None:
        t = tcp_proxy_pb2.TcpProxy()
        tc.Unpack(t)
        t.access_log.append(access_log(logs, listener=False))
        tc.CopyFrom(pack(t))


def decorate_listeners(snap: ProxySnapshot, listeners: list[listener_pb2.Listener]) -> None:
    """Add the configured access logs and tracing to `listeners`, in place."""
    logs = snap.access_logs
    tracing = hcm_tracing(snap)
    if logs is None and tracing is None:
        return
    for lis in listeners:
        if logs is not None and logs.listener_logs:
            lis.access_log.append(access_log(logs, listener=True))
        for chain in lis.filter_chains:
            for f in chain.filters:
                _decorate_filter(f, logs, tracing)


def tracing_clusters(snap: ProxySnapshot) -> list[cluster_pb2.Cluster]:
    """The collector's cluster for meshd's `tracing`; none otherwise (Consul's
    `envoy_tracing_json` brings its own through `envoy_extra_static_clusters_json`)."""
    t = snap.tracing
    if t is None:
        return []
    try:
        ipaddress.ip_address(t.host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    c = cluster_pb2.Cluster(
        name=TRACING_CLUSTER,
        type=kind,
        connect_timeout=seconds(5),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=TRACING_CLUSTER,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[
                        ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(t.host, t.port)))
                    ]
                )
            ],
        ),
    )
    if t.tracer == "opentelemetry":  # OTLP/gRPC
        from .clusters import h2_options

        h2_options(c)
    return [c]
