"""Who may add to the service graph: a node reports only for the sidecars registered on it.

The cluster key proves a caller is part of the cluster, not which node it is, so a report is
also held against the catalog: every sidecar in it must be a `connect-proxy` registered on the
report's node, fronting the service it claims, and every edge must start at that service. With
ACLs on, the report carries the sending agent's token, which must have `node:write` on that
node, the same right that node needs to register those sidecars in the first place. A report
that fails any check is refused whole: it was made up, or its sender is out of step with the
catalog, and either way none of it is evidence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshd.acl import PermissionDeniedError
from meshd.acl.authorizer import Access
from meshd.server.acl_authz import TokenNotFoundError, server_authorizer
from meshd.telemetry import TelemetryReport

if TYPE_CHECKING:
    from meshd.server.cluster import Server


class ReportRefusedError(Exception):
    """A telemetry report this node may not send; the message says what gave it away."""


def check_report(server: Server, report: TelemetryReport, token: str | None) -> None:
    """Raise ReportRefusedError unless `report` is one its node may send.

    token None: the agent running inside this server, which is trusted like the server.
    """
    node = report.node
    if token is not None and server.s.acl.enabled:
        try:
            authz = server_authorizer(server.s.acl, server.store.acl, token)
        except (TokenNotFoundError, PermissionDeniedError) as e:
            raise ReportRefusedError(f"telemetry report for node {node!r}: {e}") from None
        if not authz.allowed("node", node, Access.WRITE):
            raise ReportRefusedError(
                f"telemetry report for node {node!r}: the token lacks node:write on it"
            )
    store = server.store
    with store.lock:
        registered = dict(store.services.get(node, {}))
    for sc in report.sidecars:
        svc = registered.get(sc.proxy_id)
        dest = (svc.Proxy or {}).get("DestinationServiceName") if svc is not None else None
        if sc.node != node or svc is None or svc.Kind != "connect-proxy":
            raise ReportRefusedError(
                f"telemetry report for node {node!r}: no sidecar {sc.proxy_id!r} is "
                "registered on that node"
            )
        if dest != sc.service:
            raise ReportRefusedError(
                f"telemetry report for node {node!r}: sidecar {sc.proxy_id!r} fronts "
                f"{dest!r}, not {sc.service!r}"
            )
        wrong = {e.source for e in sc.edges if e.source != sc.service}
        if sc.inbound is not None and sc.inbound.service != sc.service:
            wrong.add(sc.inbound.service)
        if wrong:
            raise ReportRefusedError(
                f"telemetry report for node {node!r}: sidecar {sc.proxy_id!r} reports "
                f"traffic of another service ({', '.join(sorted(wrong))})"
            )
