import pytest

from meshd.agent.definitions import DefinitionError, parse_service
from meshd.agent.sidecar import PORT_MIN, expand_sidecar


def test_defaults_follow_consul():
    d = parse_service(
        {
            "Name": "web",
            "ID": "web-1",
            "Port": 8080,
            "Connect": {
                "SidecarService": {
                    "Proxy": {"Upstreams": [{"DestinationName": "api", "LocalBindPort": 9191}]}
                }
            },
        }
    )
    sc = expand_sidecar(d, used_ports=set())
    svc = sc.service
    assert (svc.ID, svc.Service, svc.Kind, svc.Port) == (
        "web-1-sidecar-proxy",
        "web-sidecar-proxy",
        "connect-proxy",
        PORT_MIN,
    )
    assert svc.Proxy["DestinationServiceName"] == "web"
    assert svc.Proxy["DestinationServiceID"] == "web-1"
    assert svc.Proxy["LocalServicePort"] == 8080
    assert svc.Proxy["Upstreams"] == [
        {
            "DestinationType": "service",
            "DestinationName": "api",
            "LocalBindPort": 9191,
            "LocalBindAddress": "127.0.0.1",
        }
    ]
    kinds = sorted(c.Type for c in sc.checks)
    assert kinds == ["alias", "tcp"]


def test_port_skips_used_and_explicit_wins():
    d = parse_service({"Name": "a", "Port": 1, "Connect": {"SidecarService": {}}})
    assert expand_sidecar(d, {PORT_MIN, PORT_MIN + 1}).service.Port == PORT_MIN + 2
    d = parse_service({"Name": "a", "Port": 1, "Connect": {"sidecar_service": {"port": 30000}}})
    assert expand_sidecar(d, set()).service.Port == 30000


def test_snake_case_config_file_form_and_explicit_no_checks():
    d = parse_service(
        {
            "name": "b",
            "port": 2,
            "connect": {
                "sidecar_service": {
                    "checks": [],
                    "proxy": {"upstreams": [{"destination_name": "c", "local_bind_port": 7000}]},
                }
            },
        }
    )
    sc = expand_sidecar(d, set())
    assert sc.checks == [] and sc.service.Proxy["Upstreams"][0]["DestinationName"] == "c"


def test_no_sidecar_and_bad_upstreams():
    assert expand_sidecar(parse_service({"Name": "plain"}), set()) is None
    bad = parse_service(
        {
            "Name": "x",
            "Connect": {
                "SidecarService": {
                    "Proxy": {"Upstreams": [{"DestinationName": "y", "LocalBindPort": "80"}]}
                }
            },
        }
    )
    with pytest.raises(DefinitionError):
        expand_sidecar(bad, set())
    full = set(range(PORT_MIN, 21256))
    with pytest.raises(DefinitionError):
        expand_sidecar(parse_service({"Name": "z", "Connect": {"SidecarService": {}}}), full)
