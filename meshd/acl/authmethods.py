"""Auth method configs (`jwt`, `kubernetes`) and the pure half of verifying a login.

A method's `Config` is checked when the method is written (Consul's rules and messages), so a
login never meets a config it cannot use. JWT checks follow Consul's go-sso: the signature by
PyJWT against the configured keys, then Consul's own time rules (a token without `exp` lives
`ExpirationLeeway` past its start, default 150 s; clock skew `ClockSkewLeeway`, default 60 s;
-1 turns a leeway off), the bound issuer and audiences, and the claim mappings that make the
identity. The network half (JWKS fetch, Kubernetes TokenReview) is in the servers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshd.acl.auth_model import AUTH_METHOD_TYPES, ACLAuthMethod
from meshd.acl.binding import Identity
from meshd.durations import DurationError, parse_duration_seconds

SUPPORTED_ALGS = tuple(f"{k}{n}" for k in ("RS", "ES", "PS") for n in (256, 384, 512))
K8S_FIELDS = ("serviceaccount.namespace", "serviceaccount.name", "serviceaccount.uid")
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class AuthMethodError(ValueError):
    """An auth method config that cannot work; the text is Consul's reason."""


class LoginError(Exception):
    """A bearer token the auth method does not accept (403 Permission denied: reason)."""


def _strings(cfg: dict[str, Any], key: str) -> list[str]:
    value = cfg.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthMethodError(f"{key} must be a list of strings")
    return list(value)


def _mapping(cfg: dict[str, Any], key: str) -> dict[str, str]:
    value = cfg.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AuthMethodError(f"{key} must map claim names to strings")
    targets = list(value.values())
    for t in targets:
        if targets.count(t) > 1:
            raise AuthMethodError(f"{key} contains multiple mappings for key {t!r}")
    return {str(k): v for k, v in value.items()}


def _leeway(cfg: dict[str, Any], key: str, default: float) -> float:
    value = cfg.get(key)
    if value in (None, "", 0, "0", "0s"):
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return 0.0
    if isinstance(value, str) and value.strip().startswith("-"):
        return 0.0
    try:
        return parse_duration_seconds(value)
    except DurationError as e:
        raise AuthMethodError(f"{key}: {e}") from None


def public_key(pem: str) -> PublicKey:
    """An RSA, ECDSA or Ed25519 public key, or a certificate holding one (Consul's rule)."""
    data = pem.encode()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise AuthMethodError(
                "data does not contain any valid RSA, ECDSA, or ED25519 public keys"
            ) from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise AuthMethodError("data does not contain any valid RSA, ECDSA, or ED25519 public keys")
    return key


@dataclass
class JWTConfig:
    keys: list[PublicKey] = field(default_factory=list)
    jwks_url: str = ""
    jwks_ca_cert: str = ""
    algorithms: list[str] = field(default_factory=lambda: ["RS256"])
    bound_issuer: str = ""
    bound_audiences: list[str] = field(default_factory=list)
    claim_mappings: dict[str, str] = field(default_factory=dict)
    list_claim_mappings: dict[str, str] = field(default_factory=dict)
    clock_skew: float = 60.0
    expiration_leeway: float = 150.0
    not_before_leeway: float = 150.0


@dataclass
class KubernetesConfig:
    host: str
    ca_cert: str
    service_account_jwt: str


def jwt_config(cfg: dict[str, Any]) -> JWTConfig:
    pems = _strings(cfg, "JWTValidationPubKeys")
    url = str(cfg.get("JWKSURL") or "")
    if bool(pems) + bool(url) + bool(cfg.get("OIDCDiscoveryURL")) != 1:
        raise AuthMethodError(
            "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be "
            'set for type "jwt"'
        )
    if cfg.get("OIDCDiscoveryURL"):
        raise AuthMethodError("OIDCDiscoveryURL is not supported by meshd; use JWKSURL")
    if cfg.get("JWKSCACert") and not url:
        raise AuthMethodError("'JWKSCACert' should not be set unless 'JWKSURL' is set")
    if cfg.get("JWKSCACert"):
        try:
            x509.load_pem_x509_certificates(str(cfg["JWKSCACert"]).encode())
        except ValueError as e:
            raise AuthMethodError(f"error checking JWKSCACert: {e}") from None
    keys = []
    for i, pem in enumerate(pems):
        try:
            keys.append(public_key(pem))
        except AuthMethodError as e:
            raise AuthMethodError(
                f"error parsing public key JWTValidationPubKeys[{i}]: {e}"
            ) from None
    algs = _strings(cfg, "JWTSupportedAlgs") or ["RS256"]
    for a in algs:
        if a not in SUPPORTED_ALGS:
            raise AuthMethodError(f"Invalid supported algorithm: {a}")
    return JWTConfig(
        keys=keys,
        jwks_url=url,
        jwks_ca_cert=str(cfg.get("JWKSCACert") or ""),
        algorithms=algs,
        bound_issuer=str(cfg.get("BoundIssuer") or ""),
        bound_audiences=_strings(cfg, "BoundAudiences"),
        claim_mappings=_mapping(cfg, "ClaimMappings"),
        list_claim_mappings=_mapping(cfg, "ListClaimMappings"),
        clock_skew=_leeway(cfg, "ClockSkewLeeway", 60.0),
        expiration_leeway=_leeway(cfg, "ExpirationLeeway", 150.0),
        not_before_leeway=_leeway(cfg, "NotBeforeLeeway", 150.0),
    )


def kubernetes_config(cfg: dict[str, Any]) -> KubernetesConfig:
    host, ca, sa_jwt = (str(cfg.get(k) or "") for k in ("Host", "CACert", "ServiceAccountJWT"))
    if not host:
        raise AuthMethodError("Config.Host is required")
    if not ca:
        raise AuthMethodError("Config.CACert is required")
    try:
        x509.load_pem_x509_certificates(ca.encode())
    except ValueError as e:
        raise AuthMethodError(f"error parsing kubernetes ca cert: {e}") from None
    if not sa_jwt:
        raise AuthMethodError("Config.ServiceAccountJWT is required")
    try:
        jwt.get_unverified_header(sa_jwt)
    except jwt.PyJWTError as e:
        raise AuthMethodError(f"Config.ServiceAccountJWT is not a valid JWT: {e}") from None
    if not host.startswith(("https://", "http://")):
        host = "https://" + host
    return KubernetesConfig(host.rstrip("/"), ca, sa_jwt)


def check_method(method: ACLAuthMethod) -> None:
    if method.Type not in AUTH_METHOD_TYPES:
        raise AuthMethodError(
            f"Invalid Auth Method: Type should be one of: [{' '.join(AUTH_METHOD_TYPES)}]"
        )
    try:
        if method.Type == "jwt":
            jwt_config(method.Config)
        else:
            kubernetes_config(method.Config)
    except AuthMethodError as e:
        raise AuthMethodError(f"Invalid Auth Method: {e}") from None


def identity_shape(method: ACLAuthMethod) -> tuple[list[str], frozenset[str]]:
    """(variables a BindName may use, top-level selector fields) of the method's identities."""
    if method.Type == "kubernetes":
        return list(K8S_FIELDS), frozenset({"serviceaccount"})
    cfg = jwt_config(method.Config)
    return [f"value.{t}" for t in cfg.claim_mappings.values()], frozenset({"value", "list"})


def kubernetes_identity(namespace: str, name: str, uid: str) -> Identity:
    values = dict(zip(K8S_FIELDS, (namespace, name, uid), strict=True))
    return Identity(
        fields={"serviceaccount": {"namespace": namespace, "name": name, "uid": uid}},
        variables=values,
    )


# ---- JWT ----------------------------------------------------------------------------------------


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by JSON pointer when the name starts with '/' (Consul's rule)."""
    if not path.startswith("/"):
        return claims.get(path)
    node: Any = claims
    for part in path[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _text(value: Any, claim: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(int(value))
    raise LoginError(f"error converting claim '{claim}' to string from unknown type")


def _times(claims: dict[str, Any], cfg: JWTConfig, now: float) -> None:
    def num(key: str) -> float:
        value = claims.get(key, 0) or 0
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise LoginError(f"error validating claims: {key} is not a number")
        return float(value)

    iat, exp, nbf = num("iat"), num("exp"), num("nbf")
    if not (iat or exp or nbf):
        raise LoginError("no issue time, notbefore, or expiration time encoded in token")
    if not exp:
        exp = max(iat, nbf) + cfg.expiration_leeway
    if not nbf:
        nbf = iat if iat else exp - cfg.not_before_leeway
    skew = cfg.clock_skew
    if now + skew < nbf:
        raise LoginError("error validating claims: validation failed, token not valid yet (nbf)")
    if now - skew > exp:
        raise LoginError("error validating claims: validation failed, token is expired (exp)")
    if iat and now + skew < iat:
        raise LoginError("error validating claims: validation failed, token issued in the future")


def _audience(claims: dict[str, Any], bound: list[str]) -> None:
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else [a for a in aud or [] if isinstance(a, str)]
    if not bound and auds:
        raise LoginError(
            "error validating claims: audience claim found in JWT but no audiences are bound"
        )
    if bound and not any(a in auds for a in bound):
        raise LoginError("error validating claims: aud claim does not match any bound audience")


def verify_signature(token: str, keys: list[Any], algorithms: list[str]) -> dict[str, Any]:
    """The claims of `token` if one of `keys` signed it with an allowed algorithm."""
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise LoginError(f"error parsing token: {e}") from None
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=algorithms, options={"verify_signature": True,
                "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False},
            )  # fmt: skip
            return claims
        except (jwt.PyJWTError, TypeError, ValueError):
            continue  # PyJWT raises TypeError for a key of another kind than the token's alg
    raise LoginError("no known key successfully validated the token signature")


def jwt_identity(cfg: JWTConfig, token: str, keys: list[Any], now: float | None = None) -> Identity:
    """The identity of a JWT signed by one of `keys` (the static keys, or the JWKS's)."""
    claims = verify_signature(token, keys, cfg.algorithms)
    _times(claims, cfg, time.time() if now is None else now)
    if cfg.bound_issuer and claims.get("iss") != cfg.bound_issuer:
        raise LoginError("error validating claims: validation failed, invalid issuer claim (iss)")
    _audience(claims, cfg.bound_audiences)
    values = {t: "" for t in cfg.claim_mappings.values()}
    for source, target in cfg.claim_mappings.items():
        raw = _claim(claims, source)
        if raw is not None:
            values[target] = _text(raw, source)
    lists: dict[str, list[str]] = {t: [] for t in cfg.list_claim_mappings.values()}
    for source, target in cfg.list_claim_mappings.items():
        raw = _claim(claims, source)
        if raw is not None:
            items = raw if isinstance(raw, list) else [raw]
            lists[target] = [t for t in (_text(i, source) for i in items) if t]
    return Identity(
        fields={"value": values, "list": lists},
        variables={f"value.{k}": v for k, v in values.items()},
    )
