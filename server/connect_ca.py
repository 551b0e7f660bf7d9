"""The servers' side of the mesh CA: bootstrap on leadership, leaf signing, root rotation.

The CA signing key lives only in the replicated state on servers; agents send a CSR (their key
stays with them) and get back a leaf for the service they asked for. Signing runs in a worker
thread so an EC signature never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from meshd.config import ConfigError, parse_duration
from meshd.rpc import SignReply, SignRequest
from meshd.server.ca import CAError, CARoot, chain_pem, generate_root, rotate, sign_leaf
from meshd.spiffe import trust_domain
from meshd.structs import CASetRoots

if TYPE_CHECKING:
    from meshd.server.cluster import Server

DEFAULT_CA_CONFIG: dict[str, Any] = {
    "LeafCertTTL": "72h",
    "RotationPeriod": "2160h",
    "PrivateKeyType": "ec",
    "PrivateKeyBits": 256,
}
ROOT_KEYS = ("PrivateKeyType", "PrivateKeyBits", "RootCertTTL")


def _encode_roots(roots: list[CARoot]) -> bytes:
    return msgspec.msgpack.encode(roots)


async def ensure_ca(server: Server) -> None:
    """On the leader: create the cluster id and the first root if the state has none."""
    m = server.store.mesh
    if m.roots:
        return
    cluster_id = m.cluster_id or str(uuid.uuid4())
    root = await asyncio.to_thread(generate_root, trust_domain(cluster_id))
    await server.write(
        CASetRoots(
            ClusterID=cluster_id, Roots=_encode_roots([root]), Config=dict(DEFAULT_CA_CONFIG)
        )
    )


def check_ca_config(config: dict[str, Any]) -> None:
    """Refuse a CA config the built-in CA would silently not honour.

    Consul's built-in provider takes `ec` (P-224/256/384/521) or `rsa` keys; meshd's generates
    EC P-256 only, so any other type or size is refused rather than stored and ignored.
    """
    key_type = config.get("PrivateKeyType", "ec")
    if key_type not in ("ec", "rsa"):
        raise CAError(f"invalid PrivateKeyType {key_type!r}: must be 'ec' or 'rsa'")
    if key_type != "ec":
        raise CAError(f"PrivateKeyType {key_type!r} is not supported: the built-in CA uses 'ec'")
    bits = config.get("PrivateKeyBits", 256)
    if isinstance(bits, bool) or bits != 256:
        raise CAError(f"PrivateKeyBits {bits!r} is not supported: the built-in CA uses EC P-256")
    for key in ("LeafCertTTL", "RotationPeriod", "RootCertTTL", "IntermediateCertTTL"):
        value = config.get(key)
        if value is None:
            continue
        try:
            parse_duration(value)
        except (ConfigError, ValueError) as e:
            raise CAError(f"invalid {key} {value!r}: {e}") from None


def leaf_ttl(config: dict[str, Any]) -> float:
    try:
        return parse_duration(config.get("LeafCertTTL", "72h"))
    except ConfigError as e:
        raise CAError(f"invalid LeafCertTTL: {e}") from None


async def sign(server: Server, req: SignRequest) -> SignReply:
    m = server.store.mesh
    root = m.active_root()
    if root is None:
        raise CAError("the CA is not initialised yet (no leader has bootstrapped it)")
    td = trust_domain(m.cluster_id)
    cert, serial, nb, na = await asyncio.to_thread(
        sign_leaf,
        root,
        req.CSR,
        service=req.Service,
        dc=server.s.datacenter,
        trust_domain=td,
        ttl_seconds=leaf_ttl(m.ca_config),
    )
    return SignReply(
        CertPEM=chain_pem(root, cert),
        SerialNumber=serial,
        ValidAfter=nb.isoformat(),
        ValidBefore=na.isoformat(),
        RootID=root.ID,
    )


async def set_config(server: Server, config: dict[str, Any], force_rotate: bool) -> None:
    """Store a new CA config; a change of root parameters (or `force_rotate`) rotates the root
    with cross-signing, keeping the old root trusted so no connection breaks."""
    m = server.store.mesh
    merged = {**DEFAULT_CA_CONFIG, **m.ca_config, **config}
    check_ca_config(merged)
    leaf_ttl(merged)
    old = m.active_root()
    roots = list(m.roots)
    if old is not None and (
        force_rotate or any(merged.get(k) != m.ca_config.get(k) for k in ROOT_KEYS if k in config)
    ):
        new = await asyncio.to_thread(rotate, old, trust_domain(m.cluster_id))
        roots = [msgspec.structs.replace(r, Active=False) for r in roots] + [new]
    await server.write(
        CASetRoots(ClusterID=m.cluster_id, Roots=_encode_roots(roots), Config=merged)
    )
