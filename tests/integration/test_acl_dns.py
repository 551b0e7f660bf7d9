"""DNS with ACLs on: answers use the `dns` token; what it cannot read does not exist."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest
from acl_helpers import ACLAgent, running_acl_agent
from helpers import wait_for

DNS_SECRET = str(uuid.uuid4())


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent(acl='token_ttl = "1s"')


def _rcode(acl: ACLAgent, name: str) -> int:
    q = dns.message.make_query(name, "A")
    return int(dns.query.udp(q, "127.0.0.1", port=acl.proc.dns_port, timeout=3).rcode())


def test_dns_answers_only_what_the_dns_token_reads(acl: ACLAgent) -> None:
    for name in ("web", "db"):
        acl.ok("PUT", "/v1/agent/service/register", {"Name": name, "Port": 80})
    wait_for(
        lambda: acl.ok("GET", "/v1/catalog/service/web") and acl.ok("GET", "/v1/catalog/service/db")
    )
    # no dns token yet: anonymous under default deny reads nothing, so nothing exists
    assert _rcode(acl, "web.service.consul.") == dns.rcode.NXDOMAIN
    acl.ok(
        "PUT",
        "/v1/acl/policy",
        {
            "Name": "dns-web",
            "Rules": 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }',
        },
    )
    acl.ok("PUT", "/v1/acl/token", {"SecretID": DNS_SECRET, "Policies": [{"Name": "dns-web"}]})
    _, weak = acl.token_for('service_prefix "" { policy = "read" }')
    refused = acl.call("PUT", "/v1/agent/token/dns", {"Token": DNS_SECRET}, token=weak)
    assert refused.status == 403 and b"'agent:write'" in refused.body
    acl.ok("PUT", "/v1/agent/token/dns", {"Token": DNS_SECRET})
    wait_for(lambda: _rcode(acl, "web.service.consul.") == dns.rcode.NOERROR, timeout=10)
    assert _rcode(acl, "db.service.consul.") == dns.rcode.NXDOMAIN
