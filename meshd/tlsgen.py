"""Certificates for the agents' `tls` block, as `consul tls ca|cert create` makes them.

Same shapes as Consul's so files and habits carry over: an EC P-256 CA, and leaf certificates
named `server.<dc>.<domain>` (servers), `client.<dc>.<domain>` or `cli.<dc>.<domain>`, each
also valid for `localhost` and 127.0.0.1. `verify_server_hostname` relies on that naming: only
a server certificate carries the `server.` name, so a client certificate cannot pose as one.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KINDS", "CertError", "Issued", "create_ca", "create_cert", "load_ca"]

KINDS = ("server", "client", "cli")
# Clock skew between the machine that signs and the hosts that verify must not void a new cert.
_BACKDATE = datetime.timedelta(minutes=1)


class CertError(ValueError):
    """A CA or certificate cannot be made or read; the message says which file and why."""


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,  # EC keys sign (ECDHE); they never encipher keys
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise CertError(f"-days must be at least 1, got {days}")
    now = datetime.datetime.now(datetime.UTC)
    return now - _BACKDATE, now + datetime.timedelta(days=days)


def create_ca(domain: str = "consul", days: int = 1825) -> Issued:
    """A self-signed CA that may sign leaves but not other CAs (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshd Agent CA {serial}")])
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def load_ca(cert_pem: bytes, key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CertError(f"the CA file is not a PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"the CA key file is not an unencrypted PEM key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key must be an EC key (as `meshd tls ca create` makes)")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertError("the CA key does not belong to the CA certificate")
    return cert, key


def create_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    kind: str,
    dc: str = "dc1",
    domain: str = "consul",
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    days: int = 365,
) -> Issued:
    """A leaf for `kind` (server, client or cli), signed by the CA."""
    if kind not in KINDS:
        raise CertError(f"unknown certificate kind {kind!r}; one of {', '.join(KINDS)}")
    ca_cert, ca_key = load_ca(ca_cert_pem, ca_key_pem)
    try:
        ips = [ipaddress.ip_address(i) for i in ("127.0.0.1", *ip_addresses)]
    except ValueError as e:
        raise CertError(f"-additional-ipaddress: {e}") from None
    name = f"{kind}.{dc}.{domain}"
    names = list(dict.fromkeys([name, "localhost", *dns_names]))  # ordered, no repeats
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind != "cli":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(i) for i in dict.fromkeys(ips)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
