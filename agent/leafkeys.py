"""Agent side of the leaf-certificate flow: make the key, ask for a signature, know when to renew.

The private key is generated here and never sent anywhere: only the CSR goes to the servers,
so a compromised server log or Raft snapshot reveals no sidecar's key.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd.spiffe import spiffe_service_id

RENEW_FROM = 0.6
RENEW_TO = 0.9


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def new_key_and_csr(trust_domain: str, dc: str, service: str) -> tuple[str, str]:
    """(key PEM, CSR PEM). The CSR already names the SPIFFE ID the server will insist on, so a
    mismatch (wrong dc or trust domain) fails loudly at signing instead of at handshake time."""
    key = ec.generate_private_key(ec.SECP256R1())
    uri = spiffe_service_id(trust_domain, dc, service)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service[:64])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def renew_at(
    not_before: dt.datetime,
    not_after: dt.datetime,
    rng: _Uniform = random,
) -> dt.datetime:
    """A random moment in 60-90% of the lifetime (Consul's window): early enough to survive a
    server outage, spread out so a fleet issued at once does not renew in one burst."""
    return not_before + (not_after - not_before) * rng.uniform(RENEW_FROM, RENEW_TO)


def _cert(cert_pem: str) -> x509.Certificate:
    """First certificate of a PEM, which may be a chain (leaf first, as presented in TLS)."""
    return x509.load_pem_x509_certificates(cert_pem.encode())[0]


def cert_not_before(cert_pem: str) -> dt.datetime:
    return _cert(cert_pem).not_valid_before_utc


def cert_not_after(cert_pem: str) -> dt.datetime:
    return _cert(cert_pem).not_valid_after_utc


def cert_serial(cert_pem: str) -> str:
    """Colon hex, the form Consul's /v1/agent/connect/ca/leaf returns in SerialNumber."""
    serial = _cert(cert_pem).serial_number
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def cert_uri_san(cert_pem: str) -> str:
    """The SPIFFE URI; empty when there is none (e.g. not a mesh certificate)."""
    try:
        san = _cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""
