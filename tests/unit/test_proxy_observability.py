"""Access logs and tracing in a sidecar's xDS resources, and the proxy config that asks for
them (Consul's AccessLogs rules; meshd's `tracing` short form)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from meshd.intentions import RBACPlan, RBACRule
from meshd.proxy.common import CLUSTER, LISTENER
from meshd.proxy.observability import TRACING_CLUSTER
from meshd.proxy.resources import build_resources, resources_digest
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream
from meshd.proxy_observability import (
    DEFAULT_JSON_FORMAT,
    ObservabilityConfigError,
    parse_access_logs,
    parse_tracing,
    snapshot_fields,
)


def snap(proxy: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None):
    return ProxySnapshot(
        proxy_id="web-sidecar-proxy",
        service="web",
        trust_domain="abc.consul",
        datacenter="dc1",
        public_listener_address="10.0.0.5",
        public_listener_port=21000,
        local_app_port=8080,
        protocol="http",
        upstreams=[
            Upstream("api", 9191, protocol="http", endpoints=[Endpoint("10.0.0.7", 21000)]),
            Upstream("db", 9192, protocol="tcp", endpoints=[Endpoint("10.0.0.8", 21000)]),
        ],
        rbac=RBACPlan("ALLOW", [RBACRule(["api"])]),
        leaf_cert_pem="CERT",
        leaf_key_pem="KEY",
        roots_pem=["ROOT"],
        **snapshot_fields(proxy or {}, defaults, "web"),
    )


def unpack(any_msg: Any, cls: type[Message]) -> Any:
    out = cls()
    assert any_msg.Unpack(out), any_msg.type_url
    return out


def filters(res: dict[str, list[Message]]) -> dict[str, Any]:
    """listener name -> its one network filter (HCM or TCP proxy), unpacked."""
    out = {}
    for lis in res[LISTENER]:
        f = lis.filter_chains[0].filters[-1]
        cls = hcm.HttpConnectionManager if "http_connection" in f.name else tcp_proxy_pb2.TcpProxy
        out[lis.name] = unpack(f.typed_config, cls)
    return out


FILE_LOGS = {"Enabled": True, "Type": "file", "Path": "/var/log/envoy.log"}


def test_nothing_configured_changes_nothing():
    plain, with_off = (
        build_resources(snap()),
        build_resources(snap(defaults={"AccessLogs": {"Enabled": False, "Type": "stderr"}})),
    )
    assert resources_digest(plain) == resources_digest(with_off)
    for lis in plain[LISTENER]:
        assert not lis.access_log
    assert all(not f.access_log for f in filters(plain).values())


def test_file_access_log_on_every_listener_and_filter_in_consuls_json():
    res = build_resources(snap(defaults={"AccessLogs": FILE_LOGS}))
    for lis in res[LISTENER]:
        # the listener's own log: only connections no filter chain took (NR)
        (entry,) = lis.access_log
        assert list(entry.filter.response_flag_filter.flags) == ["NR"]
        assert unpack(entry.typed_config, file_pb2.FileAccessLog).path == "/var/log/envoy.log"
    got = filters(res)
    assert set(got) == {
        "api:127.0.0.1:9191",
        "db:127.0.0.1:9192",
        "public_listener:10.0.0.5:21000",
    }
    for f in got.values():
        (entry,) = f.access_log
        log = unpack(entry.typed_config, file_pb2.FileAccessLog)
        fmt = dict(log.log_format.json_format)
        assert fmt == DEFAULT_JSON_FORMAT


def test_stdout_text_format_and_listener_logs_off():
    logs = {"Enabled": True, "DisableListenerLogs": True, "TextFormat": "%RESPONSE_CODE%"}
    res = build_resources(snap(defaults={"AccessLogs": logs}))
    assert all(not lis.access_log for lis in res[LISTENER])
    for f in filters(res).values():
        log = unpack(f.access_log[0].typed_config, stream_pb2.StdoutAccessLog)
        assert log.log_format.text_format_source.inline_string == "%RESPONSE_CODE%\n"


def test_the_registrations_access_logs_win_over_proxy_defaults():
    res = build_resources(
        snap(
            proxy={"AccessLogs": {"Enabled": True, "Type": "stderr"}},
            defaults={"AccessLogs": FILE_LOGS},
        )
    )
    f = filters(res)["public_listener:10.0.0.5:21000"]
    unpack(f.access_log[0].typed_config, stream_pb2.StderrAccessLog)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("yes", "must be an object"),
        ({"Enabled": "true"}, "Enabled must be a boolean"),
        ({"Enabled": True, "Type": "file"}, "Path is required"),
        ({"Enabled": True, "Type": "syslog"}, "Type must be one of"),
        ({"Enabled": True, "Path": "/x"}, "only allowed"),
        ({"Enabled": True, "JSONFormat": "[1]"}, "JSON object"),
        ({"Enabled": True, "JSONFormat": "{", "Type": "stdout"}, "not JSON"),
        ({"Enabled": True, "JSONFormat": "{}", "TextFormat": "x"}, "not both"),
    ],
)
def test_bad_access_logs_say_why(raw, reason):
    with pytest.raises(ObservabilityConfigError, match=reason):
        parse_access_logs(raw)


def test_bad_settings_in_a_registration_turn_the_feature_off_not_the_proxy():
    s = snap(proxy={"AccessLogs": {"Enabled": True, "Type": "file"}, "Config": {"tracing": 1}})
    assert s.access_logs is None and s.tracing is None
    assert build_resources(s)[LISTENER]


def test_zipkin_tracing_on_http_listeners_with_w3c_and_b3():
    res = build_resources(
        snap(defaults={"Config": {"tracing": {"zipkin": "zipkin.local:9411", "sampling": 10}}})
    )
    got = filters(res)
    for name in ("api:127.0.0.1:9191", "public_listener:10.0.0.5:21000"):
        t = got[name].tracing
        assert t.random_sampling.value == 10
        z = unpack(t.provider.typed_config, zipkin_pb2.ZipkinConfig)
        assert z.collector_cluster == TRACING_CLUSTER and z.collector_endpoint == "/api/v2/spans"
        assert z.trace_context_option == zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION
    clusters = {c.name: c for c in res[CLUSTER]}
    c = clusters[TRACING_CLUSTER]
    assert c.type == cluster_pb2.Cluster.STRICT_DNS
    sa = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("zipkin.local", 9411)


def test_opentelemetry_tracing_speaks_grpc_to_the_collector():
    s = snap(proxy={"Config": {"tracing": {"opentelemetry": "127.0.0.1:4317"}}})
    res = build_resources(s)
    t = filters(res)["public_listener:10.0.0.5:21000"].tracing
    assert t.random_sampling.value == 100
    otel = unpack(t.provider.typed_config, opentelemetry_pb2.OpenTelemetryConfig)
    assert otel.grpc_service.envoy_grpc.cluster_name == TRACING_CLUSTER
    assert otel.service_name == "web"
    c = {c.name: c for c in res[CLUSTER]}[TRACING_CLUSTER]
    assert c.type == cluster_pb2.Cluster.STATIC and c.typed_extension_protocol_options


def test_a_bootstrap_tracer_traces_only_what_callers_sample():
    """Consul's `envoy_tracing_json`: the listeners trace with 0% random sampling."""
    s = snap(proxy={"Config": {"envoy_tracing_json": '{"http": {}}'}})
    res = build_resources(s)
    t = filters(res)["public_listener:10.0.0.5:21000"]
    assert t.HasField("tracing") and t.tracing.random_sampling.value == 0
    assert not t.tracing.HasField("provider")
    assert TRACING_CLUSTER not in {c.name for c in res[CLUSTER]}


def test_listener_tracing_json_is_used_as_given():
    s = snap(proxy={"Config": {"envoy_listener_tracing_json": '{"random_sampling": {"value": 5}}'}})
    t = filters(build_resources(s))["public_listener:10.0.0.5:21000"].tracing
    assert t.random_sampling.value == 5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({}, "exactly one"),
        ({"zipkin": "a:1", "opentelemetry": "b:2"}, "exactly one"),
        ({"zipkin": "a"}, "host:port"),
        ({"zipkin": "a:0"}, "host:port"),
        ({"zipkin": "a:1", "sampling": "all"}, "a number"),
        ({"zipkin": "a:1", "sampling": -1}, "between 0 and 100"),
        ({"zipkin": "a:1", "jaeger": "b:2"}, "unknown keys"),
    ],
)
def test_bad_tracing_says_why(raw, reason):
    with pytest.raises(ObservabilityConfigError, match=reason):
        parse_tracing(raw, "web")


def test_bad_listener_tracing_json_is_ignored_not_fatal():
    s = snap(proxy={"Config": {"envoy_listener_tracing_json": "{not json"}})
    res = build_resources(s)
    assert not filters(res)["public_listener:10.0.0.5:21000"].HasField("tracing")
