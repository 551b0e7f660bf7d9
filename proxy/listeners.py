"""Listeners and route configurations: the public (inbound mTLS) listener and one per upstream.

For HTTP protocols the intentions ride on the route configuration (RBAC per-route config on
the virtual host), not on the listener: an intention change is then an RDS push that applies to
the next request even on kept-alive connections, instead of a listener replacement that leaves
existing connections on the old filter chain until they drain. The listener-level RBAC filter
denies everything, so a listener whose routes are missing fails closed.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from .chain_routes import (
    FAULT_FILTER,
    chain_has_faults,
    chain_route_config,
    chain_tcp_cluster,
)
from .common import (
    LOCAL_APP_CLUSTER,
    ads_source,
    downstream_tls,
    pack,
    seconds,
    socket_address,
)
from .observability import decorate_listeners
from .rbac import build_rbac, deny_all
from .snapshot import H2_PROTOCOLS, HTTP_PROTOCOLS, PROTOCOLS, ProxySnapshot, Upstream

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
NET_RBAC_FILTER = "envoy.filters.network.rbac"
HTTP_RBAC_FILTER = "envoy.filters.http.rbac"
ROUTER_FILTER = "envoy.filters.http.router"
PUBLIC_ROUTE = "public_listener"


def _check_protocol(p: str) -> None:
    if p not in PROTOCOLS:
        raise ValueError(f"unknown protocol {p!r}; expected one of {sorted(PROTOCOLS)}")


def public_listener_name(snap: ProxySnapshot) -> str:
    return f"public_listener:{snap.public_listener_address}:{snap.public_listener_port}"


def upstream_listener_name(up: Upstream) -> str:
    return f"{up.destination_name}:{up.local_bind_address}:{up.local_bind_port}"


def _tcp_proxy(cluster: str, stat_prefix: str) -> lc.Filter:
    return lc.Filter(
        name=TCP_PROXY_FILTER,
        typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)),
    )


def _hcm(stat_prefix: str, route_name: str, *, inbound: bool, fault: bool = False) -> lc.Filter:
    filters = []
    if fault:
        filters.append(hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault())))
    if inbound:
        filters.append(
            hcm.HttpFilter(
                name=HTTP_RBAC_FILTER, typed_config=pack(http_rbac.RBAC(rules=deny_all()))
            )
        )
    filters.append(hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router())))
    m = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(route_config_name=route_name, config_source=ads_source()),
        http_filters=filters,
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        # The app must never trust an XFCC its caller made up: Envoy strips it and sets its own.
        forward_client_cert_details=(
            hcm.HttpConnectionManager.SANITIZE_SET
            if inbound
            else hcm.HttpConnectionManager.SANITIZE
        ),
    )
    if inbound:
        m.set_current_client_cert_details.uri = True
        # Path-based intentions are only as good as the path they see: "/admin/../x" and
        # "//admin" must be matched in their normalised form.
        m.normalize_path.value = True
        m.merge_slashes = True
    return lc.Filter(name=HCM_FILTER, typed_config=pack(m))


def public_listener(snap: ProxySnapshot) -> listener_pb2.Listener:
    _check_protocol(snap.protocol)
    http = snap.protocol in HTTP_PROTOCOLS
    if http:
        filters = [_hcm("public_listener", PUBLIC_ROUTE, inbound=True)]
        alpn = ["h2", "http/1.1"]
    else:
        rules = build_rbac(snap.rbac, snap.trust_domain, l7=False)
        filters = [
            lc.Filter(
                name=NET_RBAC_FILTER,
                typed_config=pack(net_rbac.RBAC(stat_prefix="connect_authz", rules=rules)),
            ),
            _tcp_proxy(LOCAL_APP_CLUSTER, "public_listener"),
        ]
        alpn = []
    return listener_pb2.Listener(
        name=public_listener_name(snap),
        stat_prefix=PUBLIC_ROUTE,
        address=socket_address(snap.public_listener_address, snap.public_listener_port),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[lc.FilterChain(filters=filters, transport_socket=downstream_tls(alpn))],
    )


def upstream_listener(snap: ProxySnapshot, up: Upstream) -> listener_pb2.Listener:
    _check_protocol(up.protocol)
    cluster = snap.upstream_cluster(up)
    stat = f"upstream.{up.destination_name}"
    if up.protocol in HTTP_PROTOCOLS:
        filt = _hcm(stat, cluster, inbound=False, fault=chain_has_faults(up.chain))
    else:
        filt = _tcp_proxy(chain_tcp_cluster(up) if up.chain else cluster, stat)
    return listener_pb2.Listener(
        name=upstream_listener_name(up),
        stat_prefix=stat,
        address=socket_address(up.local_bind_address, up.local_bind_port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[lc.FilterChain(filters=[filt])],
    )


def _route(name: str, cluster: str, protocol: str) -> route_pb2.RouteConfiguration:
    action = rc.RouteAction(cluster=cluster)
    if protocol in H2_PROTOCOLS:
        # Streams (gRPC server streaming, long polls) must not be cut at Envoy's 15 s default.
        action.timeout.CopyFrom(seconds(0))
    vhost = rc.VirtualHost(
        name=name, domains=["*"], routes=[rc.Route(match=rc.RouteMatch(prefix="/"), route=action)]
    )
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost])


def public_route(snap: ProxySnapshot) -> route_pb2.RouteConfiguration:
    rc_ = _route(PUBLIC_ROUTE, LOCAL_APP_CLUSTER, snap.protocol)
    per_route = http_rbac.RBACPerRoute(
        rbac=http_rbac.RBAC(rules=build_rbac(snap.rbac, snap.trust_domain, l7=True))
    )
    rc_.virtual_hosts[0].typed_per_filter_config[HTTP_RBAC_FILTER].CopyFrom(pack(per_route))
    return rc_


def build_listeners(
    snap: ProxySnapshot,
) -> tuple[list[listener_pb2.Listener], list[route_pb2.RouteConfiguration]]:
    listeners = [public_listener(snap)]
    routes: dict[str, route_pb2.RouteConfiguration] = {}
    if snap.protocol in HTTP_PROTOCOLS:
        routes[PUBLIC_ROUTE] = public_route(snap)
    for up in sorted(snap.upstreams, key=upstream_listener_name):
        listeners.append(upstream_listener(snap, up))
        if up.protocol in HTTP_PROTOCOLS:
            name = snap.upstream_cluster(up)
            if up.chain is not None:
                routes.setdefault(name, chain_route_config(name, up))
            else:
                routes.setdefault(name, _route(name, name, up.protocol))
    listeners.sort(key=lambda x: x.name)
    decorate_listeners(snap, listeners)
    return listeners, [routes[n] for n in sorted(routes)]
