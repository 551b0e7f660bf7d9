"""A proxy definition with a broken upstream (one that slipped past registration, e.g. persisted
by an older version) is skipped with a logged reason instead of failing the snapshot loop."""

from __future__ import annotations

import logging

import pytest

from meshd.agent.mesh import _reads_of, valid_upstreams
from meshd.queries import ServiceNodes
from meshd.structs import NodeService
from meshd.validate import ValidationError
from meshd.validate_catalog import service


def test_broken_upstreams_are_skipped_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ups = [{"LocalBindPort": 1}, {"DestinationName": "api", "LocalBindPort": 2}, "db"]
    with caplog.at_level(logging.WARNING, logger="meshd.mesh"):
        kept = valid_upstreams("p1", {"Upstreams": ups})
    assert kept == [{"DestinationName": "api", "LocalBindPort": 2}]
    assert "proxy p1: upstream 0 has no DestinationName" in caplog.text
    assert "upstream 2 has no DestinationName" in caplog.text


def test_the_reads_of_a_proxy_with_a_broken_upstream_cover_the_good_ones() -> None:
    svc = NodeService(
        ID="p1",
        Service="p1",
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "web", "Upstreams": [{}, {"DestinationName": "api"}]},
    )
    reads = _reads_of(svc)
    assert ServiceNodes(Service="api", Connect=True) in reads


def test_registration_refuses_an_upstream_without_a_destination() -> None:
    svc = NodeService(
        ID="p1",
        Service="p1",
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "web", "Upstreams": [{"LocalBindPort": 1}]},
    )
    with pytest.raises(ValidationError, match=r"Upstreams\[0\].DestinationName is required"):
        service(svc)
