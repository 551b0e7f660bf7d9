"""`meshd tls ca create` and `meshd tls cert create`: Consul's `consul tls` commands.

Files land in the current directory under Consul's names (`consul-agent-ca.pem`,
`dc1-server-consul-0.pem`...), so guides and scripts written for Consul work unchanged. Nothing
is ever overwritten: a CA that exists is an error, and a certificate takes the next free index.
Keys are created 0600 from the start (never chmod-ed after being written world-readable).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from meshd.cli import CLIError

_SERVER_WARNING = """\
==> WARNING: Server Certificates grants authority to become a
    server and access all state in the cluster including root keys
    and all ACL tokens. Do not distribute them to production hosts
    that are not server nodes. Store them as securely as CA keys."""


def _write_new(path: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CLIError(f"{path} already exists") from None
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    click.echo(f"==> Saved {path}")


def _save_pair(cert_path: str, key_path: str, cert_pem: bytes, key_pem: bytes) -> None:
    _write_new(cert_path, cert_pem, 0o644)
    _write_new(key_path, key_pem, 0o600)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CLIError(f"cannot read the {what} {path}: {e.strerror}") from None


@click.group("tls")
def tls() -> None:
    """Create a CA and certificates for the agents' `tls` config block."""


@tls.group("ca")
def ca() -> None:
    """Helpers for the certificate authority."""


@tls.group("cert")
def cert() -> None:
    """Helpers for agent certificates."""


_days = click.option("-days", "--days", type=int, default=None, help="Days the file is valid.")
_domain = click.option(
    "-domain", "--domain", default="consul", show_default=True, help="The cluster's DNS domain."
)


@ca.command("create")
@_domain
@_days
def ca_create(domain: str, days: int | None) -> None:
    """Create a self-signed CA (valid 1825 days unless -days)."""
    from meshd.tlsgen import CertError, create_ca

    cert_path, key_path = f"{domain}-agent-ca.pem", f"{domain}-agent-ca-key.pem"
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise CLIError(f"{path} already exists")
    try:
        issued = create_ca(domain, days or 1825)
    except CertError as e:
        raise CLIError(str(e)) from None
    _save_pair(cert_path, key_path, issued.cert_pem, issued.key_pem)


def _next_free(prefix: str) -> tuple[str, str]:
    i = 0
    while os.path.exists(f"{prefix}-{i}.pem") or os.path.exists(f"{prefix}-{i}-key.pem"):
        i += 1
    return f"{prefix}-{i}.pem", f"{prefix}-{i}-key.pem"


@cert.command("create")
@click.option("-server", "--server", is_flag=True, help="A server certificate.")
@click.option("-client", "--client", is_flag=True, help="A client agent certificate.")
@click.option("-cli", "--cli", is_flag=True, help="A certificate for the CLI (client auth only).")
@click.option("-dc", "--dc", default="dc1", show_default=True, help="The datacenter.")
@_domain
@click.option(
    "-additional-dnsname",
    "--additional-dnsname",
    multiple=True,
    help="Another DNS name for the certificate (repeatable).",
)
@click.option(
    "-additional-ipaddress",
    "--additional-ipaddress",
    multiple=True,
    help="Another IP address for the certificate (repeatable).",
)
@click.option("-ca", "--ca", "ca_file", default=None, help="CA file (#DOMAIN#-agent-ca.pem).")
@click.option("-key", "--key", "key_file", default=None, help="CA key (#DOMAIN#-agent-ca-key.pem).")
@_days
def cert_create(
    server: bool,
    client: bool,
    cli: bool,
    dc: str,
    domain: str,
    additional_dnsname: tuple[str, ...],
    additional_ipaddress: tuple[str, ...],
    ca_file: str | None,
    key_file: str | None,
    days: int | None,
) -> None:
    """Create a certificate signed by the CA (valid 365 days unless -days)."""
    from meshd.tlsgen import CertError, create_cert

    kinds = [k for k, on in (("server", server), ("client", client), ("cli", cli)) if on]
    if len(kinds) != 1:
        raise CLIError("Please provide exactly one of -server, -client or -cli")
    kind = kinds[0]
    ca_file = ca_file or f"{domain}-agent-ca.pem"
    key_file = key_file or f"{domain}-agent-ca-key.pem"
    ca_pem, ca_key = _read(ca_file, "CA file"), _read(key_file, "CA key file")
    try:
        issued = create_cert(
            ca_pem,
            ca_key,
            kind=kind,
            dc=dc,
            domain=domain,
            dns_names=additional_dnsname,
            ip_addresses=additional_ipaddress,
            days=days or 365,
        )
    except CertError as e:
        raise CLIError(str(e)) from None
    if kind == "server":
        click.echo(_SERVER_WARNING)
    click.echo(f"==> Using {ca_file} and {key_file}")
    cert_path, key_path = _next_free(f"{dc}-{kind}-{domain}")
    _save_pair(cert_path, key_path, issued.cert_pem, issued.key_pem)
