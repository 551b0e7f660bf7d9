"""ACL commands through the servers' admission and the state machine."""

from __future__ import annotations

import uuid

import pytest

from meshd import queries as q
from meshd.acl import Access, build_authorizer, parse_rules
from meshd.acl.model import ACLLink, ACLPolicy, ACLPolicyOp, ACLToken, ACLTokenOp
from meshd.acl.settings import ACLConfig
from meshd.server.acl_authz import TokenNotFoundError, server_authorizer
from meshd.server.authority import CommandForbiddenError, Origin, admit
from meshd.server.reads import run_query
from meshd.server.store import CommandError, Store


def _uuid() -> str:
    return str(uuid.uuid4())


def _apply(store: Store, cmd: object) -> object:
    cmd = admit(cmd, Origin.AGENT, store)  # type: ignore[arg-type]
    result = store.apply(cmd, store.index + 1)
    if isinstance(result, Exception):
        raise result
    return result


def _token(**kw: object) -> ACLToken:
    return ACLToken(AccessorID=_uuid(), SecretID=_uuid(), **kw)  # type: ignore[arg-type]


def test_bootstrap_once_then_forbidden_with_reset_index() -> None:
    store = Store()
    boot = _token()
    _apply(store, ACLTokenOp(Op="bootstrap", Token=boot))
    resolved = store.acl.resolve(boot.SecretID)
    assert resolved is not None and resolved.Management
    with pytest.raises(CommandForbiddenError) as e:
        _apply(store, ACLTokenOp(Op="bootstrap", Token=_token()))
    assert str(e.value) == "Permission denied: ACL bootstrap no longer allowed (reset index: 1)"
    assert len(store.acl.tokens) == 1


def test_a_second_bootstrap_admitted_on_a_lagging_server_is_forbidden_when_applied() -> None:
    """Two servers each admit a bootstrap against state that has neither; the log orders
    them, and the second one applied answers 403 as Consul does, not 400."""
    lagging = Store()
    first = admit(ACLTokenOp(Op="bootstrap", Token=_token()), Origin.AGENT, lagging)
    second = admit(ACLTokenOp(Op="bootstrap", Token=_token()), Origin.AGENT, lagging)
    store = Store()
    assert not isinstance(store.apply(first, 1), Exception)
    refused = store.apply(second, 2)
    assert isinstance(refused, CommandForbiddenError)
    assert "ACL bootstrap no longer allowed (reset index: 1)" in str(refused)
    assert len(store.acl.tokens) == 1


def test_policy_and_token_resolve_to_rules() -> None:
    store = Store()
    pid = _uuid()
    rules = 'service "web" { policy = "write" }'
    _apply(store, ACLPolicyOp(Op="set", Policy=ACLPolicy(ID=pid, Name="web-w", Rules=rules)))
    tok = _token(Policies=[ACLLink(Name="web-w")])
    stored = _apply(store, ACLTokenOp(Op="set", Token=tok))
    assert isinstance(stored, ACLToken) and stored.Policies == [ACLLink(ID=pid, Name="web-w")]
    _, resolved, _ = run_query(store, q.ACLResolve(SecretID=tok.SecretID))
    authz = build_authorizer([r for text in resolved.Rules for r in parse_rules(text)])
    assert authz.allowed("service", "web", Access.WRITE)
    assert not authz.allowed("service", "db", Access.READ)
    _, missing, _ = run_query(store, q.ACLResolve(SecretID=_uuid()))
    assert missing is None


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (
            ACLPolicyOp(Op="set", Policy=ACLPolicy(ID=_uuid(), Name="p", Rules='key "a" {')),
            "Invalid Policy",
        ),
        (ACLPolicyOp(Op="set", Policy=ACLPolicy(ID=_uuid(), Name="bad name")), "Name"),
        (ACLTokenOp(Op="set", Token=_token(Policies=[ACLLink(Name="nope")])), "nope"),
        (ACLTokenOp(Op="set", Token=ACLToken(AccessorID="x", SecretID=_uuid())), "UUID"),
    ],
)
def test_bad_acl_commands_refused_and_change_nothing(cmd: object, reason: str) -> None:
    store = Store()
    before = store.dump()
    with pytest.raises(CommandError) as e:
        _apply(store, cmd)
    assert reason in str(e.value)
    assert store.dump() == before


def test_duplicate_policy_name_refused() -> None:
    store = Store()
    _apply(store, ACLPolicyOp(Op="set", Policy=ACLPolicy(ID=_uuid(), Name="p")))
    with pytest.raises(CommandError, match="already exists"):
        _apply(store, ACLPolicyOp(Op="set", Policy=ACLPolicy(ID=_uuid(), Name="p")))


def test_acl_state_survives_a_snapshot() -> None:
    store = Store()
    boot = _token()
    _apply(store, ACLTokenOp(Op="bootstrap", Token=boot))
    copy = Store()
    copy.load(store.dump())
    assert copy.acl.tokens == store.acl.tokens
    assert copy.acl.bootstrap_index == 1
    assert copy.acl.resolve(boot.SecretID) == store.acl.resolve(boot.SecretID)


def test_servers_refuse_an_expired_token() -> None:
    store = Store()
    live, dead = _token(), _token(ExpirationTime="2020-01-01T00:00:00Z")
    _apply(store, ACLTokenOp(Op="set", Token=live))
    # a token that expired since it was created (admission refuses one already expired)
    store.apply(ACLTokenOp(Op="set", Token=dead), store.index + 1)
    cfg = ACLConfig(enabled=True, default_policy="deny")
    assert server_authorizer(cfg, store.acl, live.SecretID).accessor == live.AccessorID
    with pytest.raises(TokenNotFoundError):
        server_authorizer(cfg, store.acl, dead.SecretID)
