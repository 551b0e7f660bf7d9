"""JWT auth method: real keys (cryptography) and real tokens (PyJWT), checked as Consul checks
them: signature, time claims with Consul's leeways, bound issuer and audiences, claim mappings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshd.acl.auth_model import ACLAuthMethod
from meshd.acl.authmethods import (
    AuthMethodError,
    JWTConfig,
    LoginError,
    check_method,
    jwt_config,
    jwt_identity,
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def config(**extra: Any) -> JWTConfig:
    cfg: dict[str, Any] = {
        "JWTValidationPubKeys": [pem(RSA_KEY), pem(EC_KEY)],
        "JWTSupportedAlgs": ["RS256", "ES256"],
        "BoundIssuer": "https://issuer.example",
        "BoundAudiences": ["meshd"],
        "ClaimMappings": {"service": "service", "/meta/team": "team", "admin": "admin"},
        "ListClaimMappings": {"groups": "groups"},
    }
    cfg.update(extra)
    return jwt_config(cfg)


def token(key: Any = RSA_KEY, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": "https://issuer.example",
        "aud": "meshd",
        "iat": now,
        "exp": now + 300,
        "service": "web",
        "meta": {"team": "pay"},
        "admin": True,
        "groups": ["a", "b"],
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


@pytest.mark.parametrize(("key", "alg"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
def test_good_token_gives_the_mapped_claims(key: Any, alg: str) -> None:
    identity = jwt_identity(config(), token(key, alg), config().keys)
    assert identity.fields == {
        "value": {"service": "web", "team": "pay", "admin": "true"},
        "list": {"groups": ["a", "b"]},
    }
    assert identity.variables == {
        "value.service": "web",
        "value.team": "pay",
        "value.admin": "true",
    }


# made when each test runs: a token made at collection could expire before its test comes
# up (a whole suite's run is longer than its 300 s lifetime)
BAD_TOKENS: list[tuple[Callable[[], str], str]] = [
    (lambda: token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "token is expired"),
    (lambda: token(iss="https://evil.example"), "invalid issuer"),
    (lambda: token(aud="someone-else"), "aud claim does not match any bound audience"),
    (lambda: token(OTHER_KEY), "no known key successfully validated the token signature"),
    (lambda: token(iat=None, exp=None), "no issue time, notbefore, or expiration time"),
    (lambda: token(nbf=int(time.time()) + 3600), "not valid yet"),
    (
        lambda: jwt.encode({"iat": int(time.time())}, "s" * 32, algorithm="HS256"),
        "no known key",
    ),
    (lambda: "not-a-jwt", "error parsing token"),
]


@pytest.mark.parametrize(
    ("bad", "message"),
    BAD_TOKENS,
    ids=["expired", "issuer", "audience", "wrong-key", "no-times", "nbf", "hs256", "garbage"],
)
def test_bad_tokens_are_refused_with_the_reason(bad: Callable[[], str], message: str) -> None:
    with pytest.raises(LoginError, match=message):
        jwt_identity(config(), bad(), config().keys)


def test_missing_exp_lives_expiration_leeway_past_iat() -> None:
    old = int(time.time()) - 200
    stale = token(iat=old, exp=None)
    # no exp: it expires 150 s (ExpirationLeeway) after iat, 50 s ago
    with pytest.raises(LoginError, match="expired"):
        jwt_identity(config(ClockSkewLeeway="-1"), stale, config().keys)
    # with a longer leeway the same token is fine
    jwt_identity(config(ExpirationLeeway="10m"), stale, config().keys)


def test_clock_skew_leeway_lets_a_just_expired_token_in() -> None:
    now = int(time.time())
    just = token(iat=now - 100, exp=now - 30)
    jwt_identity(config(), just, config().keys)  # default skew: 60 s
    with pytest.raises(LoginError, match="expired"):
        jwt_identity(config(ClockSkewLeeway="-1"), just, config().keys)


def test_audience_in_token_without_bound_audiences_is_refused() -> None:
    cfg = config(BoundAudiences=[])
    with pytest.raises(LoginError, match="no audiences are bound"):
        jwt_identity(cfg, token(), cfg.keys)
    jwt_identity(cfg, token(aud=None), cfg.keys)


def test_algorithm_outside_the_supported_list_is_refused() -> None:
    cfg = config(JWTSupportedAlgs=["RS256"])
    with pytest.raises(LoginError, match="no known key"):
        jwt_identity(cfg, token(EC_KEY, "ES256"), cfg.keys)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({}, "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL'"),
        ({"JWTValidationPubKeys": ["x"], "JWKSURL": "https://k"}, "exactly one of"),
        ({"JWTValidationPubKeys": ["not a key"]}, "JWTValidationPubKeys\\[0\\]"),
        ({"JWKSURL": "https://k", "JWTSupportedAlgs": ["HS256"]}, "Invalid supported algorithm"),
        ({"JWKSURL": "https://k", "ClaimMappings": {"a": "x", "b": "x"}}, "multiple mappings"),
        ({"JWKSURL": "https://k", "ClockSkewLeeway": "soon"}, "ClockSkewLeeway"),
        ({"JWKSURL": "https://k", "JWKSCACert": "junk"}, "error checking JWKSCACert"),
        ({"JWTValidationPubKeys": ["x"], "JWKSCACert": "junk"}, "unless 'JWKSURL' is set"),
    ],
)
def test_bad_jwt_configs_are_refused(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthMethodError, match=message):
        check_method(ACLAuthMethod(Name="j", Type="jwt", Config=cfg))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({}, "Config.Host is required"),
        ({"Host": "https://k"}, "Config.CACert is required"),
        ({"Host": "https://k", "CACert": "junk"}, "error parsing kubernetes ca cert"),
    ],
)
def test_bad_kubernetes_configs_are_refused(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthMethodError, match=message):
        check_method(ACLAuthMethod(Name="k", Type="kubernetes", Config=cfg))


def test_unknown_type_is_refused() -> None:
    with pytest.raises(AuthMethodError, match="Type should be one of: \\[jwt kubernetes\\]"):
        check_method(ACLAuthMethod(Name="x", Type="ldap"))
