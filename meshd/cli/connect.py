"""`meshd connect envoy`: bootstrap and run the Envoy sidecar of a local service."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any
from urllib.parse import urlparse

import click

from meshd.api import APIError, Client
from meshd.cli import CLIError, client, http_options


@click.group()
def connect() -> None:
    """Service mesh helpers."""


def _find_proxy(services: dict, sidecar_for: str) -> dict:
    for svc in services.values():
        proxy = svc.get("Proxy") or {}
        if svc.get("Kind") == "connect-proxy" and proxy.get("DestinationServiceID") == sidecar_for:
            return svc
    raise CLIError(
        f"no sidecar proxy registered for service ID {sidecar_for!r} on this agent "
        "(register the service with connect { sidecar_service {} })"
    )


def _xds_port(api: Client) -> str:
    """The agent's xDS port from /v1/agent/self; a service's own token has no agent:read, and
    then the default port is used (as Consul's CLI does)."""
    try:
        return str(api.get("/v1/agent/self").get("xDS", {}).get("Port", 8502))
    except APIError as e:
        if e.status != 403:
            raise
        return "8502"


def _proxy_conf(api: Any, proxy: dict[str, Any]) -> dict[str, Any]:
    """The proxy Config the bootstrap reads (`envoy_prometheus_bind_addr`, stats tags,
    tracing...): the registration's keys win over proxy-defaults'."""
    try:
        conf = dict((api.get("/v1/config/proxy-defaults/global") or {}).get("Config") or {})
    except APIError as e:
        if e.status not in (403, 404):  # none, or the proxy's token may not read it (ACLs)
            raise
        conf = {}
    conf.update((proxy.get("Proxy") or {}).get("Config") or {})
    return conf


@connect.command("envoy", context_settings={"ignore_unknown_options": True})
@http_options
@click.option(
    "-sidecar-for",
    "--sidecar-for",
    "sidecar_for",
    required=True,
    help="ID of the local service whose sidecar to run.",
)
@click.option(
    "-admin-bind",
    "--admin-bind",
    "admin_bind",
    default="127.0.0.1:19000",
    show_default=True,
    help="Envoy's admin listener.",
)
@click.option(
    "-grpc-addr",
    "--grpc-addr",
    "grpc_addr",
    default=None,
    help="The agent's xDS address host:port (default: the agent's host and gRPC "
    "port, or $CONSUL_GRPC_ADDR).",
)
@click.option(
    "-bootstrap",
    "--bootstrap",
    "print_only",
    is_flag=True,
    help="Print the bootstrap JSON instead of running Envoy.",
)
@click.argument("envoy_args", nargs=-1, type=click.UNPROCESSED)
def envoy(
    sidecar_for: str,
    admin_bind: str,
    grpc_addr: str | None,
    print_only: bool,
    envoy_args: tuple[str, ...],
) -> None:
    """Write the Envoy bootstrap for a sidecar and exec Envoy (arguments after -- go to it)."""
    from meshd.proxy.bootstrap import EnvoyNotFoundError, bootstrap_config, envoy_argv
    from meshd.proxy.bootstrap_extras import BootstrapConfigError, apply_proxy_config

    api = client()
    proxy = _find_proxy(api.get("/v1/agent/services"), sidecar_for)
    grpc_addr = grpc_addr or os.environ.get("CONSUL_GRPC_ADDR")
    if grpc_addr:
        grpc_addr = grpc_addr.split("://", 1)[-1]
        host, _, port = grpc_addr.rpartition(":")
    else:
        port = _xds_port(api)
        host = urlparse(api.address).hostname or "127.0.0.1"
    if not port.isdigit():
        raise CLIError(f"invalid gRPC address {grpc_addr!r}: expected host:port")
    conf = _proxy_conf(api, proxy)
    config = bootstrap_config(
        node_id=proxy["ID"],
        cluster=proxy["Proxy"].get("DestinationServiceName") or proxy["Service"],
        ads_host=host,
        ads_port=int(port),
        admin_bind=admin_bind,
        ads_token=api.token,  # the ADS stream needs service:write on the service (ACLs on)
        prometheus_bind=str(conf.get("envoy_prometheus_bind_addr") or ""),
        stats_bind=str(conf.get("envoy_stats_bind_addr") or ""),
    )
    try:
        apply_proxy_config(
            config,
            conf,
            service=proxy["Proxy"].get("DestinationServiceName") or proxy["Service"],
            datacenter=str(proxy.get("Datacenter") or ""),
        )
    except BootstrapConfigError as e:
        raise CLIError(f"sidecar for {sidecar_for}: {e}") from None
    if print_only:
        click.echo(json.dumps(config, indent=2))
        return
    # one file per sidecar and admin port, rewritten at each start: exec leaves no one to clean
    # up a fresh temp file, so a fixed name is what keeps them from piling up
    port_tag = admin_bind.rsplit(":", 1)[-1]
    path = os.path.join(tempfile.gettempdir(), f"meshd-envoy-{proxy['ID']}-{port_tag}.json")
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    os.replace(path + ".tmp", path)
    try:
        argv = envoy_argv(path, extra=list(envoy_args))
    except EnvoyNotFoundError as e:
        raise CLIError(str(e)) from None
    sys.stdout.flush()
    os.execv(argv[0], argv)
