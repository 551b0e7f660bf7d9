"""The discovery-chain compiler: config entries -> one service's compiled chain, in Consul's shape.

Pure: the entries come through a lookup function, so the servers compile against the state a
write would produce (and refuse the write if any chain breaks), the agent compiles against its
watch cache (recording what it read, so it watches exactly that), and `/v1/discovery-chain`
answers with the same structure Consul's does (`StartNode`, `Nodes`, `Targets`).

The compiled form is the contract with the proxy translators: a router node's routes lead to
splitter or resolver nodes, a splitter's splits lead to resolver nodes (nested splitters are
flattened, weights multiplied, as Consul does), and a resolver node names one target plus its
failover targets. Targets carry the subset filter the agent applies to the endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "L7_PROTOCOLS",
    "ChainError",
    "Lookup",
    "check_chains",
    "compile_chain",
    "protocol_of",
]

RESOLVER, SPLITTER, ROUTER = "service-resolver", "service-splitter", "service-router"
SERVICE_DEFAULTS, PROXY_DEFAULTS = "service-defaults", "proxy-defaults"
#: The kinds whose change can change (or break) a compiled chain.
CHAIN_KINDS = frozenset({RESOLVER, SPLITTER, ROUTER, SERVICE_DEFAULTS, PROXY_DEFAULTS})
L7_PROTOCOLS = frozenset({"http", "http2", "grpc"})
DEFAULT_CONNECT_TIMEOUT = "5s"

#: (kind, name) -> the stored entry, or None
Lookup = Callable[[str, str], dict[str, Any] | None]


class ChainError(ValueError):
    """A chain that cannot be compiled; the text is what a refused config-entry write says."""


def protocol_of(lookup: Lookup, service: str) -> str:
    """service-defaults wins, then proxy-defaults' `Config.protocol`, then tcp (Consul's order)."""
    defaults = lookup(SERVICE_DEFAULTS, service)
    if defaults and defaults.get("Protocol"):
        return str(defaults["Protocol"])
    proxy = lookup(PROXY_DEFAULTS, "global") or {}
    return str((proxy.get("Config") or {}).get("protocol") or "tcp")


def _node_name(service: str) -> str:
    return f"{service}.default.default"


class _Compiler:
    def __init__(
        self,
        service: str,
        lookup: Lookup,
        datacenter: str,
        trust_domain: str,
        overrides: Mapping[str, str],
    ) -> None:
        self.service = service
        self.lookup = lookup
        self.dc = datacenter
        self.td = trust_domain
        self.nodes: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.protocol = protocol_of(lookup, service)
        self.connect_timeout = overrides.get("ConnectTimeout", "")
        protocol = overrides.get("Protocol", "")
        # Consul: an overridden protocol keeps routers and splitters only if both it and the
        # chain's own protocol are L7 (an upstream's `protocol` config cannot add L7 routing)
        self.no_l7 = bool(protocol) and not {protocol, self.protocol} <= L7_PROTOCOLS
        self.protocol = protocol or self.protocol

    def compile(self) -> dict[str, Any]:
        router = None if self.no_l7 else self.lookup(ROUTER, self.service)
        splitter = None if self.no_l7 else self.lookup(SPLITTER, self.service)
        if (router or splitter) and self.protocol not in L7_PROTOCOLS:
            raise ChainError(
                f"discovery chain {self.service!r} uses a protocol {self.protocol!r} that does "
                "not permit advanced routing or splitting behavior"
            )
        start = self._router(router) if router else self._splitter_or_resolver(self.service)
        resolver = self.lookup(RESOLVER, self.service)
        return {
            "ServiceName": self.service,
            "Namespace": "default",
            "Partition": "default",
            "Datacenter": self.dc,
            "Default": not (router or splitter or resolver),
            "Protocol": self.protocol,
            "StartNode": start,
            "Nodes": self.nodes,
            "Targets": self.targets,
        }

    def _same_protocol(self, service: str) -> None:
        if service == self.service or self.no_l7:
            return
        theirs = protocol_of(self.lookup, service)
        if theirs != self.protocol:
            raise ChainError(
                f"discovery chain {self.service!r} uses inconsistent protocols; service "
                f"{service!r} has {theirs!r} which is not {self.protocol!r}"
            )

    def _router(self, router: dict[str, Any]) -> str:
        name = f"router:{_node_name(self.service)}"
        default = {
            "Match": {"HTTP": {"PathPrefix": "/"}},
            "Destination": {
                "Service": self.service,
                "Namespace": "default",
                "Partition": "default",
            },
        }
        routes = []
        for route in [*router.get("Routes", []), default]:
            dest = route.get("Destination") or {}
            service = dest.get("Service") or self.service
            self._same_protocol(service)
            subset = dest.get("ServiceSubset", "")
            nxt = self._resolver(service, subset) if subset else self._splitter_or_resolver(service)
            routes.append({"Definition": route, "NextNode": nxt})
        self.nodes[name] = {"Type": "router", "Name": _node_name(self.service), "Routes": routes}
        return name

    def _splitter_or_resolver(self, service: str) -> str:
        if not self.no_l7 and self.lookup(SPLITTER, service):
            return self._splitter(service)
        return self._resolver(service, "")

    def _splitter(self, service: str) -> str:
        name = f"splitter:{_node_name(service)}"
        if name not in self.nodes:
            splits = self._flat_splits(service, 1.0, (service,))
            self.nodes[name] = {"Type": "splitter", "Name": _node_name(service), "Splits": splits}
        return name

    def _flat_splits(
        self, service: str, scale: float, seen: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        """A split to another service that has its own splitter is replaced by that splitter's
        splits, their weights scaled (Consul flattens nested splitters the same way)."""
        splitter = self.lookup(SPLITTER, service) or {}
        out: list[dict[str, Any]] = []
        for split in splitter.get("Splits", []):
            target = split.get("Service") or service
            subset = split.get("ServiceSubset", "")
            weight = round(float(split["Weight"]) * scale, 2)
            self._same_protocol(target)
            if not subset and target != service and self.lookup(SPLITTER, target):
                if target in seen:
                    raise ChainError(
                        f"detected circular reference in splitters: {' -> '.join((*seen, target))}"
                    )
                out.extend(self._flat_splits(target, weight / 100, (*seen, target)))
                continue
            entry: dict[str, Any] = {"Weight": weight, "NextNode": self._resolver(target, subset)}
            for field in ("RequestHeaders", "ResponseHeaders"):
                if split.get(field):
                    entry[field] = split[field]
            out.append(entry)
        return out

    def _redirected(self, service: str, subset: str) -> tuple[str, str, dict[str, Any] | None]:
        """Follow resolver redirects to the resolver that really answers."""
        path = [(service, subset)]
        resolver = self.lookup(RESOLVER, service)
        while resolver and resolver.get("Redirect"):
            redirect = resolver["Redirect"]
            service = redirect.get("Service") or service
            subset = redirect.get("ServiceSubset", "")
            if (service, subset) in path:
                hops = " -> ".join(
                    f"{s}{'/' + b if b else ''}" for s, b in [*path, (service, subset)]
                )
                raise ChainError(f"detected circular resolver redirect: {hops}")
            path.append((service, subset))
            self._same_protocol(service)
            resolver = self.lookup(RESOLVER, service)
        return service, subset, resolver

    def _target(self, service: str, subset: str) -> tuple[str, dict[str, Any] | None]:
        service, subset, resolver = self._redirected(service, subset)
        subsets = (resolver or {}).get("Subsets") or {}
        subset = subset or (resolver or {}).get("DefaultSubset", "")
        if subset and subset not in subsets:
            raise ChainError(f"service {service!r} does not have a subset named {subset!r}")
        tid = f"{subset + '.' if subset else ''}{service}.default.default.{self.dc}"
        if tid not in self.targets:
            sni = f"{subset + '.' if subset else ''}{service}.default.{self.dc}.internal.{self.td}"
            self.targets[tid] = {
                "ID": tid,
                "Service": service,
                "ServiceSubset": subset,
                "Namespace": "default",
                "Partition": "default",
                "Datacenter": self.dc,
                "MeshGateway": {},
                "Subset": dict(subsets.get(subset) or {}),
                "ConnectTimeout": self._connect_timeout(resolver),
                "SNI": sni,
                "Name": sni,
            }
        return tid, resolver

    def _connect_timeout(self, resolver: dict[str, Any] | None) -> str:
        return (
            self.connect_timeout
            or (resolver or {}).get("ConnectTimeout")
            or DEFAULT_CONNECT_TIMEOUT
        )

    def _resolver(self, service: str, subset: str) -> str:
        tid, resolver = self._target(service, subset)
        name = f"resolver:{tid}"
        if name in self.nodes:
            return name
        resolver = resolver or {}
        node_resolver: dict[str, Any] = {
            "Default": not resolver,
            "ConnectTimeout": self._connect_timeout(resolver),
            "Target": tid,
        }
        if resolver.get("RequestTimeout"):
            node_resolver["RequestTimeout"] = resolver["RequestTimeout"]
        failover = self._failover(tid, resolver)
        if failover:
            node_resolver["Failover"] = {"Targets": failover}
        node: dict[str, Any] = {"Type": "resolver", "Name": tid, "Resolver": node_resolver}
        if resolver.get("LoadBalancer"):
            node["LoadBalancer"] = resolver["LoadBalancer"]
        self.nodes[name] = node
        return name

    def _failover(self, tid: str, resolver: dict[str, Any]) -> list[str]:
        target = self.targets[tid]
        rules = resolver.get("Failover") or {}
        rule = rules.get(target["ServiceSubset"]) or rules.get("*")
        if not rule:
            return []
        out: list[str] = []
        for spec in rule.get("Targets") or [rule]:
            service = spec.get("Service") or target["Service"]
            self._same_protocol(service)
            other, _ = self._target(service, spec.get("ServiceSubset", ""))
            if other != tid and other not in out:
                out.append(other)
        return out


def compile_chain(
    service: str,
    lookup: Lookup,
    *,
    datacenter: str,
    trust_domain: str = "",
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The compiled chain of `service` (Consul's `CompiledDiscoveryChain` as JSON).

    `overrides`: "Protocol" and "ConnectTimeout" as the discovery-chain API's
    OverrideProtocol / OverrideConnectTimeout give them. Raises ChainError when the entries
    cannot form a valid chain."""
    return _Compiler(service, lookup, datacenter, trust_domain, overrides or {}).compile()


def check_chains(entries: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """Compile every chain the entries can affect; the first failure is the refusal.

    A chain without a resolver, splitter or router of its own is the default chain, which
    cannot fail, so the services named by such entries are the ones to compile."""

    def lookup(kind: str, name: str) -> dict[str, Any] | None:
        return entries.get((kind, name))

    for service in sorted(_chain_services(entries)):
        compile_chain(service, lookup, datacenter="dc")


def _chain_services(entries: Iterable[tuple[str, str]]) -> set[str]:
    return {name for kind, name in entries if kind in (RESOLVER, SPLITTER, ROUTER)}
