"""`meshd k8s`: render the objects that install meshd on Kubernetes, and serve the webhook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meshd.cli import CLIError


@click.group()
def k8s() -> None:
    """Install and run meshd on Kubernetes."""


def _opt(name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Consul-style `-flag` and the `--flag` Kubernetes users type, both."""
    return click.option(f"-{name}", f"--{name}", name.replace("-", "_"), **kw)


@k8s.command("manifests")
@_opt("namespace", default="meshd", show_default=True, help="Namespace for every object.")
@_opt("name", default="meshd", show_default=True, help="Prefix of the objects' names.")
@_opt("image", default="meshd:0.1.0", show_default=True, help="Image with `meshd` inside.")
@_opt("datacenter", default="dc1", show_default=True, help="Datacenter name.")
@_opt("domain", default="consul", show_default=True, help="meshd's DNS domain.")
@_opt("cluster-domain", default="cluster.local", show_default=True, help="Cluster DNS domain.")
@_opt("replicas", type=int, default=3, show_default=True, help="Number of servers.")
@_opt("storage", default="10Gi", show_default=True, help="Size of each server's volume.")
@_opt("storage-class", default=None, help="StorageClass of the servers' volumes.")
@_opt("gossip-secret", default="meshd-gossip-key", show_default=True, help="Secret (key `key`).")
@_opt(
    "tls-secret",
    default="meshd-server-tls",
    show_default=True,
    help="Servers' TLS Secret (tls.crt, tls.key, ca.crt); '' = no TLS on port 8300.",
)
@_opt("ca-secret", default="meshd-ca", show_default=True, help="Agents' CA Secret (ca.crt).")
@_opt("agent-memory", default="128Mi", show_default=True, help="Agent memory request/limit.")
@_opt("server-memory", default="256Mi", show_default=True, help="Server memory request/limit.")
@_opt("dns-cluster-ip", default=None, help="Pin the ClusterIP of the agents' DNS Service.")
@_opt("webhook", is_flag=True, help="Also render the sidecar-injection webhook.")
@_opt(
    "webhook-ca-bundle",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM file of the CA that signed the webhook's certificate (its caBundle).",
)
@_opt(
    "webhook-tls-secret",
    default="meshd-webhook-tls",
    show_default=True,
    help="Secret with the webhook's tls.crt and tls.key.",
)
@_opt(
    "sync-catalog",
    is_flag=True,
    help="Sync Services both ways (run by the leading server; gives the servers RBAC for it).",
)
@_opt(
    "sync-namespace",
    default="default",
    show_default=True,
    help="Namespace of the ExternalName Services made for meshd's services.",
)
@_opt(
    "coredns-stub",
    is_flag=True,
    help="Print the CoreDNS server block for the DNS Service instead (needs -dns-cluster-ip).",
)
def manifests(coredns_stub: bool, **flags: Any) -> None:
    """Print the objects for `kubectl apply -f -` (multi-document YAML)."""
    from meshd.k8s import manifests as m

    bundle_path = flags["webhook_ca_bundle"]
    if bundle_path:
        try:
            flags["webhook_ca_bundle"] = Path(bundle_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"-webhook-ca-bundle: cannot read {bundle_path}: {e}") from None
    opts = m.ManifestOptions(**flags)
    try:
        opts.validate()
        if coredns_stub:
            if not opts.dns_cluster_ip:
                raise m.ManifestError(
                    "-coredns-stub needs -dns-cluster-ip: CoreDNS forwards to IPs"
                )
            click.echo(m.coredns_stub(opts, opts.dns_cluster_ip), nl=False)
            return
        objects = m.render(opts)
    except m.ManifestError as e:
        raise CLIError(str(e)) from None
    click.echo(m.to_yaml(objects), nl=False)


@k8s.command("webhook")
@_opt("tls-cert-file", required=True, help="PEM certificate the API server will verify.")
@_opt("tls-key-file", required=True, help="PEM private key of that certificate.")
@_opt("listen", default="0.0.0.0:8080", show_default=True, help="host:port to serve HTTPS on.")
@_opt("image", default="meshd:0.1.0", show_default=True, help="Image of injected containers.")
@_opt("agent-http-port", type=int, default=8500, show_default=True, help="Agents' HTTP port.")
@_opt("agent-grpc-port", type=int, default=8502, show_default=True, help="Agents' xDS port.")
def webhook(
    tls_cert_file: str,
    tls_key_file: str,
    listen: str,
    image: str,
    agent_http_port: int,
    agent_grpc_port: int,
) -> None:
    """Serve the sidecar-injection admission webhook over HTTPS (POST /mutate)."""
    import asyncio
    import ssl

    from meshd.k8s.webhook import InjectorSettings
    from meshd.k8s.webhook_server import serve, server_ssl

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise CLIError(f"-listen {listen!r}: expected host:port")
    try:
        ctx = server_ssl(tls_cert_file, tls_key_file)
    except (OSError, ssl.SSLError) as e:
        raise CLIError(f"cannot load the TLS certificate and key: {e}") from None
    settings = InjectorSettings(image, agent_http_port, agent_grpc_port)
    click.echo(f"meshd webhook: serving HTTPS on {host}:{port} (POST /mutate)", err=True)
    try:
        asyncio.run(serve(settings, host.strip("[]"), int(port), ctx))
    except OSError as e:
        raise CLIError(f"cannot listen on {listen}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        pass
