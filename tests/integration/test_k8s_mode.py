"""The agent's Kubernetes mode against a stand-in API server (tests/k8s_apiserver.py).

A real `meshd agent -dev` with `kubernetes { kubeconfig = ... }` lists and watches the stand-in,
which speaks the real list/watch protocol (resourceVersions, bookmarks, 410 Gone) and stores
only objects that validate strictly against the Kubernetes 1.30 schema. What the tests check is
what a user sees: the catalog, health and DNS answers of the agent, and the Services meshd
writes back. Every wait polls with a generous timeout; nothing asserts how fast.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from helpers import MeshdProcess, dev_agent, free_port, wait_for
from k8s_apiserver import NODE, FakeAPIServer, endpoint_slice, pod, service

from meshd.k8s.webhook import registration

Obj = dict[str, Any]
SYNC_NS = "meshd-sync"
WAIT = 30.0


@pytest.fixture(scope="module")
def api() -> Iterator[FakeAPIServer]:
    server = FakeAPIServer(free_port()).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def k8s_agent(
    api: FakeAPIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeshdProcess]:
    tmp = tmp_path_factory.mktemp("k8s")
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
    config = tmp / "k8s.hcl"
    config.write_text(
        f"""
kubernetes {{
  kubeconfig = "{kubeconfig}"
  node_name  = "{NODE}"
  sync_catalog {{
    to_consul     = true
    to_k8s        = true
    k8s_namespace = "{SYNC_NS}"
  }}
}}
"""
    )
    agent = dev_agent(f"-config-file={config}").start()
    yield agent
    agent.stop()


def instances(agent: MeshdProcess, name: str, passing: bool = False) -> list[Obj]:
    path = f"/v1/health/service/{name}" + ("?passing" if passing else "")
    r = agent.get(path)
    assert r.status == 200, r.body
    return list(r.json())


def addresses(agent: MeshdProcess, name: str, passing: bool = False) -> set[str]:
    return {e["Service"]["Address"] for e in instances(agent, name, passing)}


def dns_a(agent: MeshdProcess, name: str) -> set[str]:
    q = dns.message.make_query(f"{name}.service.consul", dns.rdatatype.A)
    answer = dns.query.udp(q, "127.0.0.1", port=agent.dns_port, timeout=5)
    return {rr.address for rrset in answer.answer for rr in rrset}


def test_a_pod_appears_follows_readiness_in_catalog_health_and_dns_and_vanishes(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    notes = {"consul.hashicorp.com/connect-service": "web"}
    api.put(pod("web-0", "10.1.0.10", ready=False, annotations=notes))
    (entry,) = wait_for(lambda: instances(k8s_agent, "web"), WAIT)
    svc = entry["Service"]
    assert (svc["Address"], svc["Port"], svc["ID"]) == ("10.1.0.10", 8080, "web-0-web")
    assert svc["Meta"]["pod-name"] == "web-0"
    assert svc["Meta"]["k8s-namespace"] == "default"
    assert svc["Meta"]["k8s-node"] == NODE
    assert entry["Node"]["Meta"]["k8s-node"] == NODE
    assert instances(k8s_agent, "web", passing=True) == []
    assert dns_a(k8s_agent, "web") == set()

    api.put(pod("web-0", "10.1.0.10", ready=True, annotations=notes))
    wait_for(lambda: addresses(k8s_agent, "web", passing=True) == {"10.1.0.10"}, WAIT)
    wait_for(lambda: dns_a(k8s_agent, "web") == {"10.1.0.10"}, WAIT)

    api.put(pod("web-0", "10.1.0.10", ready=False, annotations=notes))
    wait_for(lambda: instances(k8s_agent, "web", passing=True) == [], WAIT)
    wait_for(lambda: dns_a(k8s_agent, "web") == set(), WAIT)

    api.delete("pods", "default", "web-0")
    wait_for(lambda: instances(k8s_agent, "web") == [], WAIT)
    assert "web-0-web" not in k8s_agent.get("/v1/agent/services").json()


def test_an_injected_pod_is_named_by_the_service_selecting_it_and_gets_its_sidecar(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    api.put(service("orders", "shop", {"app": "orders"}, {}))
    notes = {
        "consul.hashicorp.com/connect-inject": "true",
        "consul.hashicorp.com/connect-service-upstreams": "billing:9001",
    }
    api.put(
        pod("orders-7d9f-x2", "10.1.0.20", ns="shop", labels={"app": "orders"}, annotations=notes)
    )
    wait_for(lambda: addresses(k8s_agent, "orders", passing=True) == {"10.1.0.20"}, WAIT)
    (proxy,) = wait_for(lambda: instances(k8s_agent, "orders-sidecar-proxy"), WAIT)
    assert proxy["Service"]["Address"] == "10.1.0.20"
    assert proxy["Service"]["Proxy"]["DestinationServiceName"] == "orders"
    upstreams = proxy["Service"]["Proxy"]["Upstreams"]
    assert [(u["DestinationName"], u["LocalBindPort"]) for u in upstreams] == [("billing", 9001)]

    api.delete("pods", "shop", "orders-7d9f-x2")
    wait_for(lambda: instances(k8s_agent, "orders") == [], WAIT)
    wait_for(lambda: instances(k8s_agent, "orders-sidecar-proxy") == [], WAIT)


def test_the_init_containers_registration_and_the_agents_are_one_instance(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    """The webhook's init container registers `<pod>-<service>` over the HTTP API while the
    pod is not ready yet; the Kubernetes mode registers the same ID. Whichever comes first,
    once the pod turns Ready there is one instance, the agent's, and deleting the pod removes
    it and its sidecar (no preStop needed)."""
    notes = {"consul.hashicorp.com/connect-inject": "true"}
    for order, name in (("init first", "twice-a"), ("agent first", "twice-b")):
        starting = pod(
            f"{name}-0", "10.1.0.80", ready=False, labels={"app": name}, annotations=notes
        )
        text = json.dumps(registration(name, 8080, [], "default")["service"])
        init = json.loads(
            text.replace("$(POD_NAME)", f"{name}-0").replace("$(POD_IP)", "10.1.0.80")
        )
        if order == "init first":
            assert k8s_agent.put("/v1/agent/service/register", init).status == 200
            api.put(starting)
        else:
            api.put(starting)
            wait_for(lambda n=name: instances(k8s_agent, n), WAIT)
            assert k8s_agent.put("/v1/agent/service/register", init).status == 200
        ready = copy.deepcopy(starting)
        ready["status"]["conditions"][0]["status"] = "True"
        api.put(ready)
        wait_for(lambda n=name: addresses(k8s_agent, n, passing=True) == {"10.1.0.80"}, WAIT)
        (entry,) = instances(k8s_agent, name)
        assert entry["Service"]["Meta"]["external-source"] == "kubernetes"
        assert f"{name}-0-{name}:k8s-readiness" in {c["CheckID"] for c in entry["Checks"]}
        assert len(instances(k8s_agent, f"{name}-sidecar-proxy")) == 1
        api.delete("pods", "default", f"{name}-0")
        wait_for(lambda n=name: instances(k8s_agent, n) == [], WAIT)
        wait_for(lambda n=name: instances(k8s_agent, f"{n}-sidecar-proxy") == [], WAIT)


def test_pods_that_ask_nothing_or_live_elsewhere_are_not_registered(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    api.put(pod("plain-0", "10.1.0.30", labels={"app": "plain"}))
    notes = {"consul.hashicorp.com/connect-service": "elsewhere"}
    api.put(pod("elsewhere-0", "10.1.0.31", node="node-b", annotations=notes))
    marker = {"consul.hashicorp.com/connect-service": "marker"}
    api.put(pod("marker-0", "10.1.0.32", annotations=marker))  # put last: seen means all seen
    wait_for(lambda: instances(k8s_agent, "marker"), WAIT)
    assert instances(k8s_agent, "plain") == []
    assert instances(k8s_agent, "elsewhere") == []
    api.delete("pods", "default", "marker-0")


def test_a_pod_with_a_malformed_annotation_is_skipped_and_the_others_still_register(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    bad = {
        "consul.hashicorp.com/connect-service": "broken",
        "consul.hashicorp.com/connect-service-upstreams": "db-without-port",
    }
    api.put(pod("broken-0", "10.1.0.40", annotations=bad))
    good = {"consul.hashicorp.com/connect-service": "fine"}
    api.put(pod("fine-0", "10.1.0.41", annotations=good))
    wait_for(lambda: addresses(k8s_agent, "fine") == {"10.1.0.41"}, WAIT)
    assert instances(k8s_agent, "broken") == []
    api.delete("pods", "default", "fine-0")
    api.delete("pods", "default", "broken-0")


def test_a_pod_moving_to_another_node_is_deregistered_and_comes_back_when_it_returns(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    notes = {"consul.hashicorp.com/connect-service": "mover"}
    api.put(pod("mover-0", "10.1.0.50", annotations=notes))
    wait_for(lambda: addresses(k8s_agent, "mover", passing=True) == {"10.1.0.50"}, WAIT)
    # A StatefulSet pod is recreated under the same name on another node...
    api.delete("pods", "default", "mover-0")
    api.put(pod("mover-0", "10.2.0.50", node="node-b", annotations=notes))
    wait_for(lambda: instances(k8s_agent, "mover") == [], WAIT)
    # ...and an object that stops matching the field selector arrives as DELETED.
    api.put(pod("mover-0", "10.1.0.51", annotations=notes))
    wait_for(lambda: addresses(k8s_agent, "mover", passing=True) == {"10.1.0.51"}, WAIT)
    api.put(pod("mover-0", "10.2.0.51", node="node-b", annotations=notes))
    wait_for(lambda: instances(k8s_agent, "mover") == [], WAIT)
    api.delete("pods", "default", "mover-0")


def test_an_expired_watch_relists_and_catches_the_changes_it_never_saw(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    notes = {"consul.hashicorp.com/connect-service": "expiry"}
    api.put(pod("expiry-old", "10.1.0.60", annotations=notes))
    wait_for(lambda: addresses(k8s_agent, "expiry") == {"10.1.0.60"}, WAIT)
    expired_before = api.stat("expired")

    def meanwhile(server: FakeAPIServer) -> None:
        server.delete("pods", "default", "expiry-old")
        server.put(pod("expiry-new", "10.1.0.61", annotations=notes))

    api.compact(meanwhile)  # the events for these changes are compacted away
    wait_for(lambda: addresses(k8s_agent, "expiry", passing=True) == {"10.1.0.61"}, WAIT)
    assert api.stat("expired") > expired_before  # the agent did get its 410, and relisted
    api.delete("pods", "default", "expiry-new")
    wait_for(lambda: instances(k8s_agent, "expiry") == [], WAIT)


def test_bookmarks_are_asked_for_and_sent(api: FakeAPIServer, k8s_agent: MeshdProcess) -> None:
    before = api.stat("bookmark")
    wait_for(lambda: api.stat("bookmark") > before, WAIT)


def test_an_api_server_restart_is_survived_and_changes_made_while_down_are_applied(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    notes = {"consul.hashicorp.com/connect-service": "restart"}
    api.put(pod("restart-a", "10.1.0.70", annotations=notes))
    wait_for(lambda: addresses(k8s_agent, "restart") == {"10.1.0.70"}, WAIT)

    def while_down(server: FakeAPIServer) -> None:
        server.delete("pods", "default", "restart-a")
        server.put(pod("restart-b", "10.1.0.71", annotations=notes))

    api.restart(while_down)
    wait_for(lambda: addresses(k8s_agent, "restart", passing=True) == {"10.1.0.71"}, WAIT)
    api.put(pod("restart-b", "10.1.0.71", ready=False, annotations=notes))  # the new watch works
    wait_for(lambda: instances(k8s_agent, "restart", passing=True) == [], WAIT)
    api.delete("pods", "default", "restart-b")
    wait_for(lambda: instances(k8s_agent, "restart") == [], WAIT)


def test_kubernetes_services_sync_into_the_catalog_when_they_opt_in(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    sync = {"consul.hashicorp.com/service-sync": "true"}
    api.put(service("billing", "shop", {"app": "billing"}, sync))
    api.put(endpoint_slice("billing", "shop", [("10.3.0.1", True), ("10.3.0.2", False)]))
    api.put(service("hidden", "shop", {"app": "hidden"}, {}))
    api.put(endpoint_slice("hidden", "shop", [("10.3.0.9", True)]))
    api.put(service("kdns", "kube-system", {"app": "kdns"}, sync))
    api.put(endpoint_slice("kdns", "kube-system", [("10.3.0.10", True)]))

    wait_for(lambda: addresses(k8s_agent, "billing", passing=True) == {"10.3.0.1"}, WAIT)
    (entry,) = instances(k8s_agent, "billing")
    assert entry["Service"]["Port"] == 8080
    assert "k8s" in entry["Service"]["Tags"]
    assert entry["Service"]["Meta"]["external-source"] == "kubernetes"
    wait_for(lambda: dns_a(k8s_agent, "billing") == {"10.3.0.1"}, WAIT)
    assert instances(k8s_agent, "hidden") == []  # not annotated, and default_sync is off
    assert instances(k8s_agent, "kdns") == []  # kube-system is denied by default

    api.put(endpoint_slice("billing", "shop", [("10.3.0.1", True), ("10.3.0.2", True)]))
    wait_for(lambda: addresses(k8s_agent, "billing") == {"10.3.0.1", "10.3.0.2"}, WAIT)
    # a Service synced in is not written back out as an ExternalName
    assert api.get("services", SYNC_NS, "billing") is None

    api.delete("services", "shop", "billing")
    wait_for(lambda: instances(k8s_agent, "billing") == [], WAIT)


def test_meshd_services_appear_in_kubernetes_as_external_names_and_go_away(
    api: FakeAPIServer, k8s_agent: MeshdProcess
) -> None:
    mine = service("taken", SYNC_NS, {"app": "taken"}, {})
    api.put(mine)
    for name in ("vm-db", "taken"):
        r = k8s_agent.put("/v1/agent/service/register", {"Name": name, "Port": 5432})
        assert r.status == 200, r.body

    created = wait_for(lambda: api.get("services", SYNC_NS, "vm-db"), WAIT)
    assert created["spec"] == {"type": "ExternalName", "externalName": "vm-db.service.consul"}
    assert created["metadata"]["labels"]["meshd.io/sync-source"] == "meshd"
    # a Service meshd did not make is never changed
    assert api.get("services", SYNC_NS, "taken")["spec"]["type"] == "ClusterIP"

    assert k8s_agent.put("/v1/agent/service/deregister/vm-db").status == 200
    wait_for(lambda: api.get("services", SYNC_NS, "vm-db") is None, WAIT)
    assert k8s_agent.put("/v1/agent/service/deregister/taken").status == 200
    assert api.get("services", SYNC_NS, "taken") is not None


def test_an_unreadable_kubeconfig_stops_the_agent_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "k8s.json"
    missing = tmp_path / "no-such-kubeconfig"
    config.write_text(json.dumps({"kubernetes": {"kubeconfig": str(missing)}}))
    agent = dev_agent(f"-config-file={config}")
    with pytest.raises(RuntimeError) as info:
        agent.start(timeout=20)
    agent.stop()
    assert f"kubeconfig {missing}: no such file" in str(info.value)
