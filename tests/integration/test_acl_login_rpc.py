"""Login and logout over the servers' RPC port: the server verifies the bearer token itself, so
a holder of the cluster key cannot mint a login token, take over another token's IDs, or log
out a token that login did not make."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_acl_rpc import MGMT, RPC, rpc  # noqa: F401  (the fixture: a real server, real RPC)

from meshd.acl.auth_model import (
    ACLAuthMethod,
    ACLAuthMethodOp,
    ACLBindingRule,
    ACLBindingRuleOp,
    ACLLogin,
    ACLLogout,
)
from meshd.acl.model import ACLToken, ACLTokenOp
from meshd.server.authority import CommandForbiddenError, Origin, admit

KEY = ec.generate_private_key(ec.SECP256R1())
PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def bearer(key: ec.EllipticCurvePrivateKey = KEY) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 60, "svc": "web"}, key, algorithm="ES256")


def login_cmd(token: str, accessor: str | None = None) -> ACLLogin:
    return ACLLogin(
        AuthMethod="j",
        BearerToken=token,
        AccessorID=accessor or str(uuid.uuid4()),
        SecretID=str(uuid.uuid4()),
        CreateTime="2026-01-01T00:00:00Z",
    )


async def _setup(rpc: RPC) -> None:  # noqa: F811
    config = {"JWTValidationPubKeys": [PEM], "JWTSupportedAlgs": ["ES256"],
              "ClaimMappings": {"svc": "svc"}}  # fmt: skip
    method = ACLAuthMethod(Name="j", Type="jwt", Config=config)
    assert (await rpc.write(ACLAuthMethodOp(Op="set", AuthMethod=method), MGMT)).Code == 0
    rule = ACLBindingRule(
        ID=str(uuid.uuid4()), AuthMethod="j", BindType="service", BindName="${value.svc}"
    )
    assert (await rpc.write(ACLBindingRuleOp(Op="set", BindingRule=rule), MGMT)).Code == 0


async def test_login_and_logout_over_rpc(rpc: RPC) -> None:  # noqa: F811
    await _setup(rpc)
    made = await rpc.write(login_cmd(bearer()), "")
    assert made.Code == 0, made.Error
    assert made.Result["AuthMethod"] == "j"
    assert made.Result["ServiceIdentities"] == [{"ServiceName": "web"}]
    secret = made.Result["SecretID"]

    # the management token is no login token; a logout without a token finds nothing
    refused = await rpc.write(ACLLogout(), MGMT)
    assert (refused.Code, refused.Error) == (403, "ACL not found")
    done = await rpc.write(ACLLogout(), secret)
    assert done.Code == 0, done.Error
    assert rpc.server.store.acl.token_by_secret(secret) is None


async def test_forged_logins_are_refused(rpc: RPC) -> None:  # noqa: F811
    await _setup(rpc)
    tokens = dict(rpc.server.store.acl.tokens)
    wrong_key = await rpc.write(login_cmd(bearer(ec.generate_private_key(ec.SECP256R1()))), "")
    assert wrong_key.Code == 403 and wrong_key.Error.startswith("Permission denied")
    assert rpc.server.store.acl.tokens == tokens

    # a valid login may not reuse another token's AccessorID (it would replace that token)
    victim = ACLToken(AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()))
    assert (await rpc.write(ACLTokenOp(Op="set", Token=victim), MGMT)).Code == 0
    tokens = dict(rpc.server.store.acl.tokens)
    takeover = await rpc.write(login_cmd(bearer(), victim.AccessorID), "")
    assert takeover.Code == 400 and "already in use" in takeover.Error

    # nor can the exchange be skipped: a login-made token written directly needs acl:write,
    # and no origin may propose a login command to the log as it is
    direct = ACLToken(AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()), AuthMethod="j")
    assert (await rpc.write(ACLTokenOp(Op="set", Token=direct), "")).Code == 403
    for origin in Origin:
        with pytest.raises(CommandForbiddenError):
            admit(login_cmd(bearer()), origin, rpc.server.store)
    assert rpc.server.store.acl.tokens == tokens
