"""The servers' read and operator permission tables (server/acl_reads.py)."""

from __future__ import annotations

import typing

import msgspec
import pytest

from meshd import queries as q
from meshd.acl import Access, PermissionDeniedError, build_authorizer, parse_rules
from meshd.acl.model import ACLToken
from meshd.server import acl_reads
from meshd.server.operator import OperatorRequest


class ACLFutureThing(msgspec.Struct, frozen=True):
    """A query type added later, with no row yet."""


def _authz(rules: str) -> typing.Any:
    return build_authorizer(parse_rules(rules), "deny", "acc")


def test_acl_queries_need_acl_read_and_others_are_left_to_the_agent() -> None:
    for query in (q.ACLTokens(), q.ACLPolicies(), q.ACLRoles(), ACLFutureThing()):
        check = acl_reads.read_check(query)
        assert check is not None
        with pytest.raises(PermissionDeniedError, match="acl:read"):
            check(query, _authz('key "k" { policy = "write" }'), "secret")
        check(query, _authz('acl = "read"'), "secret")
    assert acl_reads.read_check(q.ACLResolve(SecretID="s")) is None
    assert acl_reads.read_check(q.ServiceNodes(Service="web")) is None
    own = q.ACLTokens(SecretID="mine")
    check = acl_reads.read_check(own)
    assert check is not None
    check(own, _authz(""), "mine")  # its own token: no acl:read needed
    with pytest.raises(PermissionDeniedError):
        check(own, _authz(""), "someone-else")


def test_secret_ids_are_redacted_without_acl_write() -> None:
    rows = [ACLToken(AccessorID="a1", SecretID="s1"), ACLToken(AccessorID="a2", SecretID="s2")]
    shown = acl_reads.redact(q.ACLTokens(), rows, _authz('acl = "read"'), "s2")
    assert [t.SecretID for t in shown] == ["<hidden>", "s2"]
    assert acl_reads.redact(q.ACLTokens(), rows, _authz('acl = "write"'), "") == rows
    assert rows[0].SecretID == "s1"  # the stored rows are not touched


def test_every_operator_request_has_its_permission() -> None:
    kinds = set(typing.get_args(OperatorRequest))
    assert kinds == set(acl_reads.OPERATOR_PERMISSIONS)
    assert acl_reads.OPERATOR_PERMISSIONS[typing.get_args(OperatorRequest)[0]] == (
        "operator",
        Access.WRITE,
    )  # force-leave
