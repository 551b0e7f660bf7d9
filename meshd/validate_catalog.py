"""The rules of the catalog and KV commands: registrations, checks, node status, KV writes."""

from __future__ import annotations

from typing import Any

from meshd.structs import (
    HEALTH_STATES,
    SERF_CHECK_ID,
    Deregister,
    HealthCheck,
    KVOp,
    NodeService,
    NodeStatus,
    NodeStatusBatch,
    Register,
)
from meshd.validate_fields import (
    MAX_KEY,
    MAX_TEXT,
    Limits,
    ValidationError,
    address,
    meta,
    name,
    service_name,
)

SERVICE_KINDS = (
    "",
    "connect-proxy",
    "mesh-gateway",
    "terminating-gateway",
    "ingress-gateway",
    "api-gateway",
)
KV_VERBS = ("set", "cas", "delete", "delete-tree", "delete-cas", "lock", "unlock")


def service(svc: NodeService, where: str = "Service") -> None:
    service_name(svc.Service, f"{where}.Service")
    service_name(svc.ID, f"{where}.ID")
    for tag in svc.Tags:
        name(tag, f"{where}.Tags entry")
    address(svc.Address, f"{where}.Address")
    for key, ta in svc.TaggedAddresses.items():
        name(key, f"{where}.TaggedAddresses key")
        if not isinstance(ta, dict) or set(ta) - {"Address", "Port"}:
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}] must be {{Address, Port}}")
        if not isinstance(ta.get("Address", ""), str):
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}].Address must be a string")
        port = ta.get("Port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}].Port must be a port number")
    if svc.Locality is not None and set(svc.Locality) - {"Region", "Zone"}:
        raise ValidationError(f"{where}.Locality holds only Region and Zone")
    if not 0 <= svc.Port <= 65535:
        raise ValidationError(f"{where}.Port {svc.Port} is out of range 0-65535")
    if svc.Weights.Passing < 1:
        raise ValidationError(f"{where}.Weights.Passing must be greater than 0")
    if svc.Weights.Warning < 0:
        raise ValidationError(f"{where}.Weights.Warning must not be negative")
    if svc.Kind not in SERVICE_KINDS:
        raise ValidationError(f"{where}.Kind {svc.Kind!r} is not a service kind")
    if svc.Kind == "connect-proxy":
        dest = (svc.Proxy or {}).get("DestinationServiceName")
        if not isinstance(dest, str) or not dest:
            raise ValidationError(
                f"{where}.Proxy.DestinationServiceName must be set for a connect-proxy"
            )
    upstreams(svc.Proxy, f"{where}.Proxy.Upstreams")
    meta(svc.Meta, f"{where}.Meta")


def upstreams(proxy: dict[str, Any] | None, where: str) -> None:
    """An upstream without a destination cannot be configured; refusing it here keeps it from
    reaching the sidecar snapshot builder, where it would stop config for the other proxies."""
    ups = (proxy or {}).get("Upstreams")
    if ups is None:
        return
    if not isinstance(ups, list):
        raise ValidationError(f"{where} must be a list")
    for i, up in enumerate(ups):
        if not isinstance(up, dict):
            raise ValidationError(f"{where}[{i}] must be an object")
        dest = up.get("DestinationName")
        if not isinstance(dest, str) or not dest:
            raise ValidationError(f"{where}[{i}].DestinationName is required")


def check(c: HealthCheck, node: str, where: str = "Check") -> None:
    name(c.CheckID, f"{where}.CheckID")
    if c.CheckID == SERF_CHECK_ID:
        raise ValidationError(f"{where}.CheckID {SERF_CHECK_ID!r} is maintained by the servers")
    name(c.Name, f"{where}.Name", required=False)
    if c.Node and c.Node != node:
        raise ValidationError(f"{where}.Node {c.Node!r} does not match the node {node!r}")
    if c.Status not in HEALTH_STATES:
        raise ValidationError(
            f"{where}.Status {c.Status!r} is not one of {', '.join(HEALTH_STATES)}"
        )
    name(c.ServiceID, f"{where}.ServiceID", required=False)
    for field, text in (("Output", c.Output), ("Notes", c.Notes)):
        if len(text) > MAX_TEXT:
            raise ValidationError(f"{where}.{field} is longer than {MAX_TEXT} characters")


def register(r: Register, limits: Limits) -> None:
    name(r.Node, "Node")
    address(r.Address, "Address")
    for key, value in r.TaggedAddresses.items():
        name(key, "TaggedAddresses key")
        address(value, f"TaggedAddresses[{key!r}]")
    meta(r.NodeMeta, "NodeMeta")
    if r.Service is not None:
        service(r.Service)
    checks = [*([r.Check] if r.Check else []), *r.Checks]
    seen: set[str] = set()
    for i, c in enumerate(checks):
        check(c, r.Node, f"Checks[{i}]")
        if c.CheckID in seen:
            raise ValidationError(f"Checks[{i}].CheckID {c.CheckID!r} appears more than once")
        seen.add(c.CheckID)


def deregister(d: Deregister, limits: Limits) -> None:
    name(d.Node, "Node")
    name(d.ServiceID, "ServiceID", required=False)
    name(d.CheckID, "CheckID", required=False)


def kv(op: KVOp, limits: Limits) -> None:
    if op.Verb not in KV_VERBS:
        raise ValidationError(f"unknown KV verb {op.Verb!r}")
    if len(op.Key) > MAX_KEY:
        raise ValidationError(f"KV key is longer than {MAX_KEY} characters")
    if "\x00" in op.Key:
        raise ValidationError("KV key contains a NUL character")
    if not op.Key and op.Verb != "delete-tree":
        raise ValidationError("Missing key name")
    size = len(op.Value or b"")
    if size > limits.kv_max_value_size:
        raise ValidationError(f"Value exceeds {limits.kv_max_value_size} byte limit")
    if not 0 <= op.Flags < 2**64:
        raise ValidationError(f"KV flags {op.Flags} are not an unsigned 64-bit number")
    if op.Index < 0:
        raise ValidationError("KV CAS index must not be negative")
    if op.Verb in ("lock", "unlock") and not op.Session:
        raise ValidationError("missing session")


def node_status(s: NodeStatus, limits: Limits) -> None:
    name(s.Node, "Node")
    address(s.Address, "Address")
    if s.Status not in HEALTH_STATES:
        raise ValidationError(f"Status {s.Status!r} is not one of {', '.join(HEALTH_STATES)}")
    if not 0 <= s.ServerPort <= 65535:
        raise ValidationError(f"ServerPort {s.ServerPort} is out of range 0-65535")


def node_status_batch(b: NodeStatusBatch, limits: Limits) -> None:
    for i, s in enumerate(b.Updates):
        try:
            node_status(s, limits)
        except ValidationError as e:
            raise ValidationError(f"Updates[{i}]: {e}") from None
    for n in b.Deregisters:
        name(n, "Node")


def kv_reap(cmd: Any, limits: Limits) -> None:
    if not 0 <= cmd.Index < 2**63:
        raise ValidationError(f"reap index {cmd.Index} is out of range")
