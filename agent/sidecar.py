"""`connect { sidecar_service {} }`: expanding a service's sidecar into its own registration.

Consul's defaults: ID and name `<service>-sidecar-proxy`, kind connect-proxy, a port from
21000-21255 not used by another local sidecar, the proxy pointing at the service's local port,
and two checks: the proxy's public port listening (TCP) and an alias of the service itself.
"""

from __future__ import annotations

from typing import Any

from meshd.agent.definitions import DefinitionError, ServiceDefinition, parse_service
from meshd.proxy_observability import (
    TRACING_KEY,
    ObservabilityConfigError,
    parse_tracing,
    sidecar_access_logs,
)

PORT_MIN, PORT_MAX = 21000, 21255


def _fold(d: Any) -> dict[str, Any]:
    return (
        {k.lower().replace("_", ""): v for k, v in (d or {}).items()} if isinstance(d, dict) else {}
    )


def expand_sidecar(defn: ServiceDefinition, used_ports: set[int]) -> ServiceDefinition | None:
    """Pure: the sidecar's definition, or None when the service asks for none."""
    if defn.sidecar is None:
        return None
    svc = defn.service
    sc = _fold(defn.sidecar)
    proxy = _fold(sc.get("proxy"))
    port = sc.get("port") or next(
        (p for p in range(PORT_MIN, PORT_MAX + 1) if p not in used_ports), None
    )
    if port is None:
        raise DefinitionError("no free sidecar port in 21000-21255")
    upstreams = []
    for i, raw in enumerate(proxy.get("upstreams") or []):
        up = _fold(raw)
        name = up.get("destinationname")
        bind = up.get("localbindport")
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"sidecar upstream {i}: destination_name is required")
        if not isinstance(bind, int) or isinstance(bind, bool) or not 0 < bind < 65536:
            raise DefinitionError(f"sidecar upstream {i}: local_bind_port must be a port")
        upstream = {
            "DestinationType": "service",
            "DestinationName": name,
            "LocalBindPort": bind,
            "LocalBindAddress": up.get("localbindaddress") or "127.0.0.1",
        }
        if isinstance(up.get("config"), dict) and up["config"]:
            upstream["Config"] = dict(up["config"])  # opaque; `protocol` overrides the chain's
        upstreams.append(upstream)
    sid = f"{svc.ID}-sidecar-proxy"
    config = dict(proxy.get("config") or {})
    try:  # refused here, with the reason, rather than ignored when the snapshot is built
        access_logs = sidecar_access_logs(proxy.get("accesslogs"))
        parse_tracing(config.get(TRACING_KEY), svc.Service)
    except ObservabilityConfigError as e:
        raise DefinitionError(f"sidecar proxy: {e}") from None
    raw = {
        "ID": sid,
        "Name": f"{svc.Service}-sidecar-proxy",
        "Kind": "connect-proxy",
        "Port": port,
        "Address": sc.get("address") or svc.Address or "",
        "Tags": list(sc.get("tags") or svc.Tags),
        "Meta": dict(sc.get("meta") or svc.Meta),
        # Consul: a sidecar runs where its service runs
        "Locality": sc.get("locality") or svc.Locality,
        "Proxy": {
            "DestinationServiceName": svc.Service,
            "DestinationServiceID": svc.ID,
            "LocalServiceAddress": proxy.get("localserviceaddress") or "127.0.0.1",
            "LocalServicePort": proxy.get("localserviceport") or svc.Port,
            "Upstreams": upstreams,
            "Config": config,
            **({"AccessLogs": access_logs} if access_logs is not None else {}),
        },
        # an explicit `checks = []` means none; absent means Consul's two defaults
        "Checks": sc["checks"]
        if sc.get("checks") is not None
        else [
            {
                "Name": "Connect Sidecar Listening",
                "CheckID": f"service:{sid}:1",
                "TCP": f"{(sc.get('address') or '127.0.0.1')}:{port}",
                "Interval": "1s",
            },
            {
                "Name": "Connect Sidecar Aliasing",
                "CheckID": f"service:{sid}:2",
                "AliasService": svc.ID,
            },
        ],
    }
    return parse_service(raw)
