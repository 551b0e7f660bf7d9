"""xDS under ACLs: a stream is served only to a token with `service:write` on the service the
proxy fronts, so no process without that token receives the service's leaf key.

The ADS server (meshd.proxy) knows nothing of ACLs; it calls this hook with the stream's node
id and the `x-consul-token` it was opened with, and refuses the stream on PermissionError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from meshd.acl import Access, PermissionDeniedError
from meshd.agent.acl import ACLNotFoundError
from meshd.server.store import connect_destination

if TYPE_CHECKING:
    from meshd.agent.agent import Agent


def stream_service(agent: Agent, node_id: str) -> str:
    """The service whose identity a stream gets: a local sidecar's destination, a local
    service's own name, else (a proxyless client) the node id as a service name."""
    svc = agent.local.services.get(node_id)
    if svc is None:
        return node_id
    return connect_destination(svc) or svc.Service


def xds_hook(agent: Agent) -> Callable[[str, str], Awaitable[float | None]]:
    async def authorize(node_id: str, token: str) -> float | None:
        """The stream's grant, until the token's expiry (when the stream checks again)."""
        try:
            authz = await agent.acl.resolve(token)
            authz.check("service", stream_service(agent, node_id), Access.WRITE)
        except (ACLNotFoundError, PermissionDeniedError) as e:
            raise PermissionError(str(e)) from None
        return authz.expires_at

    return authorize
