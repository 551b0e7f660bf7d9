"""The mesh certificate authority, as pure functions over `cryptography`.

Pure so the Raft state machine can hold the roots (a `CARoot` is a msgspec struct and goes into
the snapshot as is) while signing stays deterministic apart from fresh keys and serials, and so
every rule here is unit-testable without a cluster. The CA private key lives only in
`CARoot.SigningKey` on the servers; agents send CSRs, never keys.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshd.spiffe import is_spiffe_id, spiffe_service_id, trust_domain_uri

__all__ = [
    "CAError",
    "CARoot",
    "chain_pem",
    "cross_sign",
    "generate_root",
    "public_view",
    "rotate",
    "sign_leaf",
    "verify_leaf",
]

CLOCK_SKEW = dt.timedelta(minutes=1)
MIN_RSA_BITS = 2048


class CAError(ValueError):
    """A request the CA refuses; the message is safe to return to the client (HTTP 400)."""


class CARoot(msgspec.Struct):
    """One trusted root, shaped like an entry of Consul's /v1/connect/ca/roots."""

    ID: str
    Name: str
    SerialNumber: int
    SigningKeyID: str
    ExternalTrustDomain: str
    NotBefore: str
    NotAfter: str
    RootCert: str
    IntermediateCerts: list[str] = []
    Active: bool = True
    PrivateKeyType: str = "ec"
    PrivateKeyBits: int = 256
    CreateIndex: int = 0
    ModifyIndex: int = 0
    # Never leaves the servers: stripped by public_view() before anything reaches the API.
    SigningKey: str = ""


def public_view(root: CARoot) -> dict[str, Any]:
    """The API form: everything except the private key, which must never be served."""
    out: dict[str, Any] = msgspec.to_builtins(root)
    out.pop("SigningKey", None)
    return out


def _utcnow(now: dt.datetime | None) -> dt.datetime:
    """Naive datetimes are taken as UTC so a caller's local clock can't shift a validity window."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now if now.tzinfo else now.replace(tzinfo=dt.UTC)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _colon_hex(data: bytes) -> str:
    """Consul prints key IDs and serials as lowercase colon-separated hex."""
    return ":".join(f"{b:02x}" for b in data)


def serial_colon_hex(serial: int) -> str:
    return _colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load_cert(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise CAError(f"invalid certificate PEM: {e}") from None


def _signing_key(root: CARoot) -> ec.EllipticCurvePrivateKey:
    if not root.SigningKey:
        raise CAError(f"root {root.ID} has no signing key on this server")
    key = serialization.load_pem_private_key(root.SigningKey.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"root {root.ID} signing key is not an EC key")
    return key


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer))


def generate_root(
    trust_domain: str,
    *,
    ttl_days: int = 3650,
    name: str = "meshd CA Primary Cert",
    now: dt.datetime | None = None,
) -> CARoot:
    """A fresh self-signed EC P-256 root.

    pathlen is 1, not 0: rotation presents leaf -> cross-signed new root -> old root, and with
    pathlen 0 on the old root both OpenSSL and cryptography reject that chain (measured).
    Leaves are CA:FALSE, so 1 still forbids any CA below a leaf's issuer.
    """
    now = _utcnow(now)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # A distinct subject per root (Consul's "pri-<id>.consul.ca.<td8>.consul") keeps path
    # building unambiguous while two roots are trusted during a rotation.
    subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"pri-{secrets.token_hex(4)}.consul.ca.{trust_domain[:8]}.consul",
            )
        ]
    )
    # 63 bits so SerialNumber fits Consul's uint64 JSON field and every JSON parser's integers.
    serial = secrets.randbits(63) | 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=ttl_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain_uri(trust_domain))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_id = _colon_hex(ski.digest)
    return CARoot(
        ID=key_id,
        Name=name,
        SerialNumber=serial,
        SigningKeyID=key_id,
        ExternalTrustDomain=trust_domain,
        NotBefore=_rfc3339(cert.not_valid_before_utc),
        NotAfter=_rfc3339(cert.not_valid_after_utc),
        RootCert=_pem(cert),
        IntermediateCerts=[],
        Active=True,
        SigningKey=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def _check_csr_key(csr: x509.CertificateSigningRequest) -> None:
    """Weak keys would make the whole mesh's mTLS only as strong as its weakest sidecar."""
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CAError(f"CSR key curve {key.curve.name} not allowed; use P-256")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CAError(f"CSR RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    else:
        raise CAError("CSR key type not allowed; use EC P-256 or RSA >= 2048")


def _check_csr_identity(csr: x509.CertificateSigningRequest, expected: str) -> None:
    """The caller is authorised for `expected` only; a CSR naming anything else is refused."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if any(u != expected for u in uris):
        raise CAError(f"CSR asks for identity {uris!r}; only {expected!r} may be signed here")


def sign_leaf(
    root: CARoot,
    csr_pem: str,
    *,
    service: str,
    dc: str,
    trust_domain: str,
    ttl_seconds: float,
    now: dt.datetime | None = None,
) -> tuple[str, str, dt.datetime, dt.datetime]:
    """Sign a service leaf: (cert_pem, serial colon-hex, not_before, not_after).

    Only the key is taken from the CSR; subject and SAN are set here from the authorised
    service, so nothing a client writes into its CSR can widen the identity it receives.
    """
    if ttl_seconds <= 0:
        raise CAError(f"leaf TTL must be positive, got {ttl_seconds}")
    try:
        expected = spiffe_service_id(trust_domain, dc, service)
    except ValueError as e:
        raise CAError(str(e)) from None
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise CAError(f"invalid CSR PEM: {e}") from None
    if not csr.is_signature_valid:
        raise CAError("CSR signature is invalid")
    _check_csr_key(csr)
    _check_csr_identity(csr, expected)

    key = _signing_key(root)
    root_cert = _load_cert(root.RootCert)
    now = _utcnow(now)
    not_before = now - CLOCK_SKEW
    # A leaf outliving its root would fail verification anyway; clamp so renew_at() is honest.
    not_after = min(now + dt.timedelta(seconds=ttl_seconds), root_cert.not_valid_after_utc)
    serial = secrets.randbits(128) or 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service[:64])]))
        .issuer_name(root_cert.subject)
        .public_key(csr.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(_aki(root_cert), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(expected)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), serial_colon_hex(serial), cert.not_valid_before_utc, cert.not_valid_after_utc


def chain_pem(root: CARoot, cert_pem: str) -> str:
    """Leaf plus the signing root's intermediates: what a sidecar should present, so peers that
    still trust only the previous root can build a path through the cross-signed certificate."""
    parts = [cert_pem.strip(), *(c.strip() for c in root.IntermediateCerts)]
    return "\n".join(parts) + "\n"


def cross_sign(old_root: CARoot, new_root: CARoot) -> str:
    """new_root's certificate (same subject, key, SKI) re-issued by old_root's key.

    Peers that have not yet learnt the new root can then verify leaves it signs, so a rotation
    never needs a moment where every sidecar has switched trust at once.
    """
    old_cert, new_cert = _load_cert(old_root.RootCert), _load_cert(new_root.RootCert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_cert.subject)
        .issuer_name(old_cert.subject)
        .public_key(new_cert.public_key())
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(new_cert.not_valid_before_utc)
        .not_valid_after(min(new_cert.not_valid_after_utc, old_cert.not_valid_after_utc))
    )
    for ext in new_cert.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(_aki(old_cert), critical=False)
    return _pem(builder.sign(_signing_key(old_root), hashes.SHA256()))


def rotate(old_root: CARoot, trust_domain: str, *, now: dt.datetime | None = None) -> CARoot:
    """A new active root carrying its cross-signed certificate.

    Pure: old_root is not modified; the caller marks it inactive (and keeps it in the trusted
    set until every leaf it signed has expired).
    """
    new_root = generate_root(trust_domain, name=old_root.Name, now=now)
    new_root.IntermediateCerts = [cross_sign(old_root, new_root)]
    return new_root


def _split_pems(pem: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as e:
        raise CAError(f"invalid certificate PEM: {e}") from None
    if not certs:
        raise CAError("no certificate in PEM")
    return certs


def verify_leaf(
    leaf_pem: str,
    roots: Sequence[CARoot],
    *,
    intermediates: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """Verify a presented leaf against trusted roots; return its SPIFFE URI.

    leaf_pem may carry its chain after the leaf (as presented in TLS); those certificates, the
    `intermediates` and the roots' own IntermediateCerts are untrusted path-building material
    only: trust comes from the roots' certificates alone. Uses cryptography's RFC 5280 path
    validation with the client profile (leaves are used for both ends of mTLS and carry no
    DNS name for a server profile to match).
    """
    if not roots:
        raise CAError("no trusted roots")
    presented = _split_pems(leaf_pem)
    leaf, pool = presented[0], presented[1:]
    for pem in intermediates:
        pool.extend(_split_pems(pem))
    for root in roots:
        for pem in root.IntermediateCerts:
            pool.extend(_split_pems(pem))
    store = Store([_load_cert(r.RootCert) for r in roots])
    verifier = PolicyBuilder().store(store).time(_utcnow(now)).build_client_verifier()
    try:
        verified = verifier.verify(leaf, pool)
    except (VerificationError, InvalidSignature, ValueError) as e:
        raise CAError(f"certificate does not verify: {e}") from None
    uris = [
        s.value for s in verified.subjects or () if isinstance(s, x509.UniformResourceIdentifier)
    ]
    if len(uris) != 1 or not is_spiffe_id(uris[0]):
        raise CAError(f"leaf must carry exactly one SPIFFE URI SAN, has {uris!r}")
    return uris[0]
