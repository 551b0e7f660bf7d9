"""The SPIFFE ID layout, pinned by literals: the CA, the leaf manager, the proxy and the
authorize endpoint all take their IDs from `meshd.spiffe`, so this is where a change of shape
must show up (Consul's URI forms, which sidecars of a real Consul cluster also expect)."""

from __future__ import annotations

import re

import pytest

from meshd.spiffe import (
    is_spiffe_id,
    parse_service_id,
    service_id_regex,
    spiffe_agent_id,
    spiffe_service_id,
    trust_domain,
    trust_domain_uri,
)

TD = trust_domain("11111111-2222-3333-4444-555555555555")
DC = "dc1"


def test_spiffe_ids() -> None:
    assert TD == "11111111-2222-3333-4444-555555555555.consul"
    assert spiffe_service_id(TD, DC, "web") == f"spiffe://{TD}/ns/default/dc/dc1/svc/web"
    assert spiffe_agent_id(TD, DC, "node-1") == f"spiffe://{TD}/agent/client/dc/dc1/id/node-1"
    assert trust_domain_uri(TD) == f"spiffe://{TD}"
    assert parse_service_id(spiffe_service_id(TD, DC, "web")).service == "web"
    for bad in ("", "a/b", "a b", ".."):
        with pytest.raises(ValueError):
            spiffe_service_id(TD, DC, bad)
    with pytest.raises(ValueError):
        parse_service_id(spiffe_agent_id(TD, DC, "n"))
    with pytest.raises(ValueError):
        trust_domain_uri("")


def test_is_spiffe_id() -> None:
    assert is_spiffe_id(spiffe_service_id(TD, DC, "web"))
    assert is_spiffe_id(trust_domain_uri(TD))
    for uri in ("spiffe://", "https://example.com/", "", "SPIFFE://x"):
        assert not is_spiffe_id(uri)


def test_service_id_regex_accepts_any_dc_of_the_trust_domain_only() -> None:
    web = re.compile(service_id_regex(TD, "web"))
    assert web.match(spiffe_service_id(TD, "dc1", "web"))
    assert web.match(spiffe_service_id(TD, "dc9", "web", ns="other"))
    assert not web.match(spiffe_service_id(TD, DC, "web2"))
    assert not web.match(spiffe_service_id("other.consul", DC, "web"))
    assert not web.match(spiffe_agent_id(TD, DC, "web"))
    anyone = re.compile(service_id_regex(TD))
    assert anyone.match(spiffe_service_id(TD, DC, "api"))
    assert not anyone.match(spiffe_service_id("other.consul", DC, "api"))
    # a dot in the trust domain or name is literal, not "any character"
    assert not re.match(service_id_regex(TD, "a.b"), spiffe_service_id(TD, DC, "axb"))
    assert not re.match(service_id_regex(TD), spiffe_service_id(TD.replace(".", "x"), DC, "api"))
    # a name no ID can carry still gives a pattern (not an error that fails the proxy's whole
    # config); it matches no caller because no certificate can name it
    assert service_id_regex(TD, "a/b").endswith("/svc/a/b$")
    with pytest.raises(ValueError):
        spiffe_service_id(TD, DC, "a/b")
