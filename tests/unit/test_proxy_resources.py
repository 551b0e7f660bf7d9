"""build_resources: names, mTLS settings, RBAC semantics, EDS filtering, determinism.

RBAC is checked by meaning as well as by shape: a small evaluator below walks the generated
Principal/Permission trees the way Envoy does, so "web is allowed, evil is not" is asserted
directly instead of through brittle proto equality.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.matcher.v3 import string_pb2
from google.protobuf.message import Message

from meshd.intentions import RBACPlan, RBACRule
from meshd.proxy.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshd.proxy.resources import build_resources, resources_digest
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream
from meshd.spiffe import spiffe_service_id

TD = "abc.consul"


def spiffe(svc: str, dc: str = "dc1") -> str:
    return spiffe_service_id(TD, dc, svc)


def snap(**kw: Any) -> ProxySnapshot:
    base: dict[str, Any] = dict(
        proxy_id="web-sidecar-proxy",
        service="web",
        trust_domain=TD,
        datacenter="dc1",
        public_listener_address="10.0.0.5",
        public_listener_port=21000,
        local_app_port=8080,
        upstreams=[
            Upstream(
                "api",
                9191,
                endpoints=[
                    Endpoint("10.0.0.7", 21000),
                    Endpoint("10.0.0.8", 21000, healthy=False),
                    Endpoint("10.0.0.9", 21001, weight=3),
                ],
            )
        ],
        rbac=RBACPlan("ALLOW", [RBACRule(["api"])]),
        leaf_cert_pem="CERT",
        leaf_key_pem="KEY",
        roots_pem=["ROOT1", "ROOT2\n"],
        version=1,
    )
    base.update(kw)
    return ProxySnapshot(**base)


def by_name(res: dict[str, list[Message]], type_url: str) -> dict[str, Any]:
    key = "cluster_name" if type_url == ENDPOINT else "name"
    return {getattr(r, key): r for r in res[type_url]}


def unpack(any_msg: Any, cls: type[Message]) -> Any:
    out = cls()
    assert any_msg.Unpack(out), any_msg.type_url
    return out


# --- a miniature of Envoy's RBAC evaluation ------------------------------------------------------


def s_match(m: string_pb2.StringMatcher, v: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "exact":
        return v == m.exact
    if kind == "prefix":
        return v.startswith(m.prefix)
    if kind == "suffix":
        return v.endswith(m.suffix)
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, v) is not None
    raise AssertionError(kind)


def p_match(p: rbac.Principal, uri: str) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "authenticated":
        return s_match(p.authenticated.principal_name, uri)
    if kind == "and_ids":
        return all(p_match(x, uri) for x in p.and_ids.ids)
    if kind == "or_ids":
        return any(p_match(x, uri) for x in p.or_ids.ids)
    if kind == "not_id":
        return not p_match(p.not_id, uri)
    if kind == "any":
        return p.any
    raise AssertionError(kind)


def perm_match(p: rbac.Permission, req: dict[str, str]) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return p.any
    if kind == "and_rules":
        return all(perm_match(x, req) for x in p.and_rules.rules)
    if kind == "or_rules":
        return any(perm_match(x, req) for x in p.or_rules.rules)
    if kind == "not_rule":
        return not perm_match(p.not_rule, req)
    if kind == "url_path":
        return s_match(p.url_path.path, req[":path"])
    if kind == "header":
        h = p.header
        val = req.get(h.name)
        if h.HasField("string_match"):
            got = val is not None and s_match(h.string_match, val)
        else:
            got = val is not None if h.present_match else False
        return got != h.invert_match
    raise AssertionError(kind)


def allowed(rules: rbac.RBAC, caller: str, **req: str) -> bool:
    request = {
        ":path": req.get("path", "/"),
        ":method": req.get("method", "GET"),
        **{k.replace("_", "-"): v for k, v in req.items() if k not in ("path", "method")},
    }
    hit = any(
        any(p_match(pr, spiffe(caller)) for pr in pol.principals)
        and any(perm_match(pe, request) for pe in pol.permissions)
        for pol in rules.policies.values()
    )
    return hit if rules.action == rbac.RBAC.ALLOW else not hit


def l4_rules(s: ProxySnapshot) -> rbac.RBAC:
    pub = by_name(build_resources(s), LISTENER)["public_listener:10.0.0.5:21000"]
    f = pub.filter_chains[0].filters[0]
    assert f.name == "envoy.filters.network.rbac"
    return unpack(f.typed_config, net_rbac.RBAC).rules


def l7_rules(s: ProxySnapshot) -> rbac.RBAC:
    route = by_name(build_resources(s), ROUTE)["public_listener"]
    cfg = route.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.rbac"]
    return unpack(cfg, http_rbac.RBACPerRoute).rbac.rules


# --- tests ---------------------------------------------------------------------------------------


def test_names_follow_consul() -> None:
    res = build_resources(snap())
    assert sorted(by_name(res, LISTENER)) == [
        "api:127.0.0.1:9191",
        "public_listener:10.0.0.5:21000",
    ]
    assert sorted(by_name(res, CLUSTER)) == ["api.default.dc1.internal.abc.consul", "local_app"]
    assert sorted(by_name(res, ENDPOINT)) == ["api.default.dc1.internal.abc.consul"]
    assert sorted(by_name(res, SECRET)) == ["leaf", "roots"]
    assert res[ROUTE] == []  # tcp: no HTTP, no routes


def test_public_listener_requires_mesh_client_cert() -> None:
    pub = by_name(build_resources(snap()), LISTENER)["public_listener:10.0.0.5:21000"]
    assert pub.address.socket_address.address == "10.0.0.5"
    assert pub.address.socket_address.port_value == 21000
    chain = pub.filter_chains[0]
    ctx = unpack(chain.transport_socket.typed_config, tls_pb2.DownstreamTlsContext)
    assert ctx.require_client_certificate.value is True
    common = ctx.common_tls_context
    assert common.tls_params.tls_minimum_protocol_version == common_pb2.TlsParameters.TLSv1_2
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["leaf"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "roots"
    tcp = unpack(chain.filters[1].typed_config, tcp_proxy_pb2.TcpProxy)
    assert chain.filters[1].name == "envoy.filters.network.tcp_proxy" and tcp.cluster == "local_app"


def test_upstream_cluster_pins_destination_identity() -> None:
    res = build_resources(snap())
    c = by_name(res, CLUSTER)["api.default.dc1.internal.abc.consul"]
    assert c.type == cluster_pb2.Cluster.EDS and c.eds_cluster_config.eds_config.HasField("ads")
    ctx = unpack(c.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    assert ctx.sni == "api.default.dc1.internal.abc.consul"
    sans = ctx.common_tls_context.combined_validation_context.default_validation_context
    [m] = sans.match_typed_subject_alt_names
    assert m.san_type == common_pb2.SubjectAltNameMatcher.URI and m.matcher.exact == spiffe("api")
    local = by_name(res, CLUSTER)["local_app"]
    ep = local.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert local.type == cluster_pb2.Cluster.STATIC and (ep.address, ep.port_value) == (
        "127.0.0.1",
        8080,
    )
    lst = by_name(res, LISTENER)["api:127.0.0.1:9191"]
    assert (
        unpack(lst.filter_chains[0].filters[0].typed_config, tcp_proxy_pb2.TcpProxy).cluster
        == c.name
    )


def test_secrets_carry_leaf_and_roots() -> None:
    s = by_name(build_resources(snap()), SECRET)
    assert s["leaf"].tls_certificate.certificate_chain.inline_string == "CERT"
    assert s["leaf"].tls_certificate.private_key.inline_string == "KEY"
    assert s["roots"].validation_context.trusted_ca.inline_string == "ROOT1\nROOT2\n"


def test_only_healthy_endpoints_in_eds() -> None:
    cla = build_resources(snap())[ENDPOINT][0]
    eps = [
        (e.endpoint.address.socket_address.address, e.load_balancing_weight.value)
        for loc in cla.endpoints
        for e in loc.lb_endpoints
    ]
    assert eps == [("10.0.0.7", 1), ("10.0.0.9", 3)]
    none = snap(upstreams=[Upstream("api", 9191, endpoints=[Endpoint("1.1.1.1", 1, False)])])
    assert list(build_resources(none)[ENDPOINT][0].endpoints) == []


def test_allow_mode_l4() -> None:
    rules = l4_rules(snap(rbac=RBACPlan("ALLOW", [RBACRule(["*"], ["evil"])])))
    assert rules.action == rbac.RBAC.ALLOW
    assert allowed(rules, "web") and allowed(rules, "api") and not allowed(rules, "evil")
    only = l4_rules(snap(rbac=RBACPlan("ALLOW", [RBACRule(["api", "db"])])))
    assert allowed(only, "api") and allowed(only, "db") and not allowed(only, "web")
    # a name matches in any datacenter, and never a prefix or a lookalike
    [pol] = only.policies.values()
    assert p_match(pol.principals[0], spiffe("api", dc="dc2"))
    assert not p_match(pol.principals[0], spiffe("api2"))
    assert not p_match(pol.principals[0], spiffe_service_id("other.consul", "dc1", "api"))
    assert list(l4_rules(snap(rbac=RBACPlan("ALLOW", []))).policies) == []  # deny all


def test_deny_mode_l4_and_default_is_deny_all() -> None:
    rules = l4_rules(snap(rbac=RBACPlan("DENY", [RBACRule(["evil"])])))
    assert rules.action == rbac.RBAC.DENY
    assert allowed(rules, "web") and not allowed(rules, "evil")
    default = ProxySnapshot(
        proxy_id="p",
        service="s",
        trust_domain=TD,
        datacenter="dc1",
        public_listener_address="10.0.0.5",
        public_listener_port=21000,
        local_app_port=1,
    )
    rules = l4_rules(default)
    assert rules.action == rbac.RBAC.ALLOW and not rules.policies


def test_a_source_is_a_service_name_so_a_uri_as_source_matches_nobody() -> None:
    # intentions name services; `check()` compares names, so the plan must not read a URI-shaped
    # source as "this exact certificate" (that would let Envoy disagree with /intentions/check)
    uri_source = l4_rules(snap(rbac=RBACPlan("ALLOW", [RBACRule([spiffe("web")])])))
    assert not allowed(uri_source, "web") and not allowed(uri_source, "api")
    denied = l4_rules(snap(rbac=RBACPlan("DENY", [RBACRule([spiffe("web")])])))
    assert allowed(denied, "web")


def test_l7_permissions_first_match_wins() -> None:
    perms = [
        {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
        {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["get", "HEAD"]}},
        {
            "Action": "allow",
            "HTTP": {
                "PathExact": "/upload",
                "Methods": ["POST"],
                "Header": [{"Name": "X-Token", "Present": True}],
            },
        },
        {
            "Action": "allow",
            "HTTP": {
                "PathRegex": "/v[0-9]+/put",
                "Header": [{"Name": "x-env", "Exact": "dev", "Invert": True}],
            },
        },
    ]
    s = snap(protocol="http", rbac=RBACPlan("ALLOW", [RBACRule(["web"], permissions=perms)]))
    rules = l7_rules(s)
    assert allowed(rules, "web", path="/x") and allowed(rules, "web", path="/x", method="HEAD")
    assert not allowed(rules, "web", path="/admin/users")  # the earlier deny wins
    assert not allowed(rules, "web", path="/x", method="POST")
    assert allowed(rules, "web", path="/upload", method="POST", x_token="t")
    assert not allowed(rules, "web", path="/upload", method="POST")
    assert allowed(rules, "web", path="/v2/put", method="PUT", x_env="prod")
    assert not allowed(rules, "web", path="/v2/put", method="PUT", x_env="dev")
    assert not allowed(rules, "api", path="/x")


def test_l7_deny_mode() -> None:
    perms = [
        {"Action": "allow", "HTTP": {"PathExact": "/health"}},
        {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
    ]
    s = snap(
        protocol="http",
        rbac=RBACPlan("DENY", [RBACRule(["web"], permissions=perms), RBACRule(["evil"])]),
    )
    rules = l7_rules(s)
    assert allowed(rules, "web", path="/health") and not allowed(rules, "web", path="/x")
    assert not allowed(rules, "evil", path="/health") and allowed(rules, "api", path="/x")


def test_l7_permissions_on_tcp_fail_closed() -> None:
    perms = [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]
    allow = l4_rules(snap(rbac=RBACPlan("ALLOW", [RBACRule(["web"], permissions=perms)])))
    assert not allowed(allow, "web")
    deny = l4_rules(
        snap(
            rbac=RBACPlan(
                "DENY",
                [
                    RBACRule(
                        ["web"], permissions=[{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}]
                    )
                ],
            )
        )
    )
    assert not allowed(deny, "web") and allowed(deny, "api")


def test_http_public_listener() -> None:
    res = build_resources(snap(protocol="http"))
    pub = by_name(res, LISTENER)["public_listener:10.0.0.5:21000"]
    [f] = pub.filter_chains[0].filters
    m = unpack(f.typed_config, hcm.HttpConnectionManager)
    assert m.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET
    assert m.set_current_client_cert_details.uri
    assert [h.name for h in m.http_filters] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]
    # the listener-level RBAC denies all: only the route config grants anything
    base = unpack(m.http_filters[0].typed_config, http_rbac.RBAC)
    assert base.HasField("rules") and base.rules.action == rbac.RBAC.ALLOW
    assert not base.rules.policies
    assert m.rds.route_config_name == "public_listener"
    route = by_name(res, ROUTE)["public_listener"]
    assert route.virtual_hosts[0].routes[0].route.cluster == "local_app"
    assert allowed(l7_rules(snap(protocol="http")), "api")


def test_http_upstream_uses_rds_and_h2_where_needed() -> None:
    up = Upstream("api", 9191, protocol="grpc", endpoints=[Endpoint("10.0.0.7", 21000)])
    res = build_resources(snap(protocol="http2", upstreams=[up]))
    name = "api.default.dc1.internal.abc.consul"
    lst = by_name(res, LISTENER)["api:127.0.0.1:9191"]
    m = unpack(lst.filter_chains[0].filters[0].typed_config, hcm.HttpConnectionManager)
    assert m.rds.route_config_name == name
    assert [h.name for h in m.http_filters] == ["envoy.filters.http.router"]
    assert by_name(res, ROUTE)[name].virtual_hosts[0].routes[0].route.cluster == name
    for cname in (name, "local_app"):
        opts = by_name(res, CLUSTER)[cname].typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert unpack(opts, hpo.HttpProtocolOptions).explicit_http_config.HasField(
            "http2_protocol_options"
        )


def test_two_upstreams_one_destination_share_a_cluster() -> None:
    ups = [Upstream("api", 9191), Upstream("api", 9192, local_bind_address="127.0.0.2")]
    res = build_resources(snap(upstreams=ups))
    assert len(res[CLUSTER]) == 2 and len(res[LISTENER]) == 3


def test_deterministic() -> None:
    def shuffled() -> ProxySnapshot:
        ups = [
            Upstream(
                n,
                9000 + i,
                endpoints=random.sample([Endpoint(f"10.0.1.{j}", 20000) for j in range(8)], 8),
            )
            for i, n in enumerate(["db", "api", "cache", "auth"])
        ]
        random.shuffle(ups)
        return snap(
            protocol="http",
            upstreams=ups,
            rbac=RBACPlan(
                "ALLOW",
                [
                    RBACRule(random.sample(["a", "b", "c"], 3), ["x", "y"]),
                    RBACRule(
                        ["*"],
                        permissions=[
                            {
                                "Action": "allow",
                                "HTTP": {"Methods": random.sample(["GET", "PUT", "POST"], 3)},
                            }
                        ],
                    ),
                ],
            ),
        )

    digests = {resources_digest(build_resources(shuffled())) for _ in range(5)}
    assert len(digests) == 1
    a, b = build_resources(shuffled()), build_resources(shuffled())
    for t in a:
        assert [x.SerializeToString(deterministic=True) for x in a[t]] == [
            x.SerializeToString(deterministic=True) for x in b[t]
        ]


@pytest.mark.parametrize(
    "bad",
    [
        dict(protocol="udp"),
        dict(rbac=RBACPlan("MAYBE", [])),
        dict(
            protocol="http",
            rbac=RBACPlan(
                "ALLOW", [RBACRule(["web"], permissions=[{"Action": "perhaps", "HTTP": {}}])]
            ),
        ),
        # a spelling the translator does not read must not silently widen an allow to "any path"
        dict(
            protocol="http",
            rbac=RBACPlan(
                "ALLOW",
                [
                    RBACRule(
                        ["web"], permissions=[{"Action": "allow", "HTTP": {"path_prefix": "/p"}}]
                    )
                ],
            ),
        ),
        dict(
            protocol="http",
            rbac=RBACPlan(
                "ALLOW",
                [
                    RBACRule(
                        ["web"],
                        permissions=[{"Action": "allow", "HTTP": {"Header": [{"Name": "x"}]}}],
                    )
                ],
            ),
        ),
    ],
)
def test_invalid_snapshots_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_resources(snap(**bad))
