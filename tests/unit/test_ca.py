"""The mesh CA: identities are exactly what the server authorises, and real TLS accepts them."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import ssl
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.agent.leafkeys import (
    cert_not_after,
    cert_not_before,
    cert_serial,
    cert_uri_san,
    new_key_and_csr,
    renew_at,
)
from meshd.server.ca import (
    CAError,
    CARoot,
    chain_pem,
    generate_root,
    public_view,
    rotate,
    sign_leaf,
    verify_leaf,
)
from meshd.spiffe import spiffe_service_id, trust_domain, trust_domain_uri

TD = trust_domain("11111111-2222-3333-4444-555555555555")
DC = "dc1"
HOUR = 3600.0


@pytest.fixture(scope="module")
def root() -> CARoot:
    return generate_root(TD)


def issue(
    root: CARoot, service: str, *, ttl: float = HOUR, now: dt.datetime | None = None
) -> tuple[str, str]:
    """(key_pem, cert_pem) through the real agent -> server CSR flow."""
    key_pem, csr_pem = new_key_and_csr(TD, DC, service)
    cert_pem, _, _, _ = sign_leaf(
        root, csr_pem, service=service, dc=DC, trust_domain=TD, ttl_seconds=ttl, now=now
    )
    return key_pem, cert_pem


def csr_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, uri: str | None) -> str:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if uri is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_root_properties(root: CARoot) -> None:
    cert = x509.load_pem_x509_certificate(root.RootCert.encode())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert root.ID == root.SigningKeyID == ":".join(f"{b:02x}" for b in ski)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert root.Active and root.PrivateKeyType == "ec" and root.PrivateKeyBits == 256
    assert root.ExternalTrustDomain == TD and root.SerialNumber == cert.serial_number
    assert dt.datetime.fromisoformat(root.NotAfter) - dt.datetime.fromisoformat(
        root.NotBefore
    ) > dt.timedelta(days=3649)
    assert 0 < root.SerialNumber < 2**63


def test_public_view_hides_key_and_struct_roundtrips(root: CARoot) -> None:
    view = public_view(root)
    assert "SigningKey" not in view and "PRIVATE KEY" not in msgspec.json.encode(view).decode()
    assert view["RootCert"] == root.RootCert and view["ID"] == root.ID
    # The Raft snapshot stores the struct itself, key included.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(root), type=CARoot) == root


def test_leaf_has_authorised_identity(root: CARoot) -> None:
    now = dt.datetime.now(dt.UTC)
    key_pem, csr_pem = new_key_and_csr(TD, DC, "web")
    cert_pem, serial, nb, _ = sign_leaf(
        root, csr_pem, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR, now=now
    )
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert_uri_san(cert_pem) == spiffe_service_id(TD, DC, "web")
    assert cert_serial(cert_pem) == serial and len(serial.split(":")) <= 17
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and ku.key_agreement
    assert not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ":".join(f"{b:02x}" for b in aki.key_identifier or b"") == root.ID
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root.RootCert.encode()))
    # The certificate is for the agent's own key, which never left the agent.
    pub = serialization.load_pem_private_key(key_pem.encode(), None).public_key()
    assert cert.public_key() == pub
    assert nb == now.replace(microsecond=0) - dt.timedelta(minutes=1)
    assert cert_not_before(cert_pem) == nb


def test_ttl_honoured_and_clamped_to_root(root: CARoot) -> None:
    now = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    _, csr = new_key_and_csr(TD, DC, "web")
    cert_pem, _, _, na = sign_leaf(
        root, csr, service="web", dc=DC, trust_domain=TD, ttl_seconds=72 * HOUR, now=now
    )
    assert na == now + dt.timedelta(hours=72) == cert_not_after(cert_pem)
    short = generate_root(TD, ttl_days=1)
    _, _, _, na = sign_leaf(
        short, csr, service="web", dc=DC, trust_domain=TD, ttl_seconds=30 * 24 * HOUR
    )
    assert na == dt.datetime.fromisoformat(short.NotAfter)
    with pytest.raises(CAError):
        sign_leaf(root, csr, service="web", dc=DC, trust_domain=TD, ttl_seconds=0)


def test_csr_for_another_identity_is_refused(root: CARoot) -> None:
    _, csr_api = new_key_and_csr(TD, DC, "api")
    with pytest.raises(CAError, match="only"):
        sign_leaf(root, csr_api, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)
    _, csr_dc2 = new_key_and_csr(TD, "dc2", "web")
    with pytest.raises(CAError):
        sign_leaf(root, csr_dc2, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CAError):
        sign_leaf(
            root,
            csr_for(key, trust_domain_uri(TD)),
            service="web",
            dc=DC,
            trust_domain=TD,
            ttl_seconds=HOUR,
        )


def test_csr_without_san_gets_the_authorised_one(root: CARoot) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()), None)
    cert_pem, *_ = sign_leaf(root, csr, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)
    assert cert_uri_san(cert_pem) == spiffe_service_id(TD, DC, "web")


def test_tampered_csr_is_refused(root: CARoot) -> None:
    _, csr_pem = new_key_and_csr(TD, DC, "web")
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CAError, match="signature"):
        sign_leaf(root, tampered, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)
    with pytest.raises(CAError):
        sign_leaf(root, "not a csr", service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)


def test_weak_keys_are_refused(root: CARoot) -> None:
    uri = spiffe_service_id(TD, DC, "web")
    for key in (rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP384R1())):
        with pytest.raises(CAError, match=r"not allowed|at least"):
            sign_leaf(
                root, csr_for(key, uri), service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR
            )
    ok = csr_for(rsa.generate_private_key(65537, 2048), uri)
    cert_pem, *_ = sign_leaf(root, ok, service="web", dc=DC, trust_domain=TD, ttl_seconds=HOUR)
    assert verify_leaf(cert_pem, [root]) == uri


def test_verify_leaf(root: CARoot) -> None:
    _, good = issue(root, "web")
    assert verify_leaf(good, [root]) == spiffe_service_id(TD, DC, "web")
    other = generate_root(TD)
    _, foreign = issue(other, "web")
    with pytest.raises(CAError):
        verify_leaf(foreign, [root])
    assert verify_leaf(foreign, [root, other]) == spiffe_service_id(TD, DC, "web")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    _, expired = issue(root, "web", ttl=HOUR, now=past)
    with pytest.raises(CAError, match="valid"):
        verify_leaf(expired, [root])
    # Same leaf within its window (root made earlier, so it was valid then too).
    old_root = generate_root(TD, now=past - dt.timedelta(days=1))
    _, was_good = issue(old_root, "web", ttl=HOUR, now=past)
    assert verify_leaf(was_good, [old_root], now=past + dt.timedelta(minutes=5))
    with pytest.raises(CAError):
        verify_leaf(was_good, [old_root])
    with pytest.raises(CAError):
        verify_leaf(good, [])
    with pytest.raises(CAError):
        verify_leaf("garbage", [root])


def test_rotation_cross_signed_chain(root: CARoot) -> None:
    new = rotate(root, TD)
    assert new.Active and new.ID != root.ID and len(new.IntermediateCerts) == 1
    cross = x509.load_pem_x509_certificate(new.IntermediateCerts[0].encode())
    new_cert = x509.load_pem_x509_certificate(new.RootCert.encode())
    old_cert = x509.load_pem_x509_certificate(root.RootCert.encode())
    assert cross.subject == new_cert.subject and cross.public_key() == new_cert.public_key()
    assert cross.issuer == old_cert.subject
    cross.verify_directly_issued_by(old_cert)

    _, leaf = issue(new, "api")
    uri = spiffe_service_id(TD, DC, "api")
    # A peer that trusts only the old root: fails alone, passes with the cross-signed cert.
    with pytest.raises(CAError):
        verify_leaf(leaf, [root])
    assert verify_leaf(chain_pem(new, leaf), [root]) == uri
    assert verify_leaf(leaf, [root], intermediates=new.IntermediateCerts) == uri
    # Peers that already have the new root, with or without the chain.
    assert verify_leaf(leaf, [new]) == uri
    assert verify_leaf(chain_pem(new, leaf), [root, new]) == uri
    # Old leaves keep working while both roots are trusted, not after the old one is dropped.
    _, old_leaf = issue(root, "api")
    assert verify_leaf(old_leaf, [root, new]) == uri
    with pytest.raises(CAError):
        verify_leaf(old_leaf, [new])


def test_renew_at_window() -> None:
    nb = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    na = nb + dt.timedelta(hours=72)
    rng = random.Random(7)
    draws = [renew_at(nb, na, rng) for _ in range(5000)]
    lo, hi = nb + (na - nb) * 0.6, nb + (na - nb) * 0.9
    assert all(lo <= t <= hi for t in draws)
    # Spread over the window, not bunched at one end.
    assert min(draws) < lo + dt.timedelta(hours=1) and max(draws) > hi - dt.timedelta(hours=1)


# --- real TLS -------------------------------------------------------------------------------


def write_identity(tmp: Path, name: str, key_pem: str, cert_pem: str) -> tuple[str, str]:
    (tmp / f"{name}.key").write_text(key_pem)
    (tmp / f"{name}.crt").write_text(cert_pem)
    return str(tmp / f"{name}.crt"), str(tmp / f"{name}.key")


def contexts(
    tmp: Path,
    server_id: tuple[str, str],
    client_id: tuple[str, str],
    server_trust: list[CARoot],
    client_trust: list[CARoot],
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.verify_mode = ssl.CERT_REQUIRED
    srv.load_cert_chain(*server_id)
    srv.load_verify_locations(cadata="".join(r.RootCert for r in server_trust))
    cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cli.check_hostname = False  # mesh identity is the URI SAN, checked below
    cli.verify_mode = ssl.CERT_REQUIRED
    cli.load_cert_chain(*client_id)
    cli.load_verify_locations(cadata="".join(r.RootCert for r in client_trust))
    return srv, cli


def uri_of(peercert: dict) -> str:
    return next(v for k, v in peercert["subjectAltName"] if k == "URI")


async def handshake(srv: ssl.SSLContext, cli: ssl.SSLContext) -> tuple[str, str]:
    """(URI the client saw on the server, URI the server saw on the client)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(uri_of(writer.get_extra_info("peercert")).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=srv)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cli)
        seen_by_client = uri_of(writer.get_extra_info("peercert"))
        seen_by_server = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        writer.close()
        return seen_by_client, seen_by_server
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_handshake_with_mesh_leaves(root: CARoot, tmp_path: Path) -> None:
    api = write_identity(tmp_path, "api", *issue(root, "api"))
    web = write_identity(tmp_path, "web", *issue(root, "web"))
    srv, cli = contexts(tmp_path, api, web, [root], [root])
    seen_by_client, seen_by_server = await handshake(srv, cli)
    assert seen_by_client == spiffe_service_id(TD, DC, "api")
    assert seen_by_server == spiffe_service_id(TD, DC, "web")


async def test_tls_during_rotation_via_cross_signed_chain(root: CARoot, tmp_path: Path) -> None:
    new = rotate(root, TD)
    key, leaf = issue(new, "api")
    web = write_identity(tmp_path, "web", *issue(root, "web"))
    # web still trusts only the old root; api trusts both. The bare leaf is not enough...
    bare = write_identity(tmp_path, "api-bare", key, leaf)
    with pytest.raises(ssl.SSLError):
        await handshake(*contexts(tmp_path, bare, web, [root, new], [root]))
    # ...the leaf followed by the cross-signed certificate is.
    api = write_identity(tmp_path, "api", key, chain_pem(new, leaf))
    srv, cli = contexts(tmp_path, api, web, [root, new], [root])
    seen_by_client, seen_by_server = await handshake(srv, cli)
    assert seen_by_client == spiffe_service_id(TD, DC, "api")
    assert seen_by_server == spiffe_service_id(TD, DC, "web")


async def test_tls_refuses_client_from_another_ca(root: CARoot, tmp_path: Path) -> None:
    api = write_identity(tmp_path, "api", *issue(root, "api"))
    intruder = write_identity(tmp_path, "web", *issue(generate_root(TD), "web"))
    srv, cli = contexts(tmp_path, api, intruder, [root], [root])
    try:
        _, seen_by_server = await handshake(srv, cli)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return
    assert seen_by_server == ""  # the server hung up instead of answering
