"""Agent -> server writes with ACLs on: the server authorises each command with the token the
agent sent, on a real server behind the real RPC app, signed with the cluster key (a key holder
is no longer trusted with everything)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers import free_port

from meshd import queries as q
from meshd.acl import Access
from meshd.acl.expiry import epoch, iso
from meshd.acl.model import ACLLink, ACLPolicy, ACLPolicyOp, ACLToken, ACLTokenOp
from meshd.acl.settings import ACLConfig, ACLTokens
from meshd.agent.acl import ACLNotFoundError, TokenResolver
from meshd.agent.backend import RemoteBackend
from meshd.rpc import (
    AUTH_HEADER,
    CAConfigRequest,
    ReadReply,
    ReadRequest,
    WriteReply,
    WriteRequest,
    decode_value,
    encoder,
    sign,
)
from meshd.rpc_client import RPCClient
from meshd.server.authority import CommandForbiddenError
from meshd.server.cluster import Server, ServerSettings
from meshd.server.operator import (
    AutopilotHealth,
    ForceLeave,
    KeyringList,
    OperatorCall,
    TransferLeader,
    Usage,
)
from meshd.server.rpc import make_rpc_app
from meshd.structs import IntentionOp, KVOp, NodeService, Register

KEY = os.urandom(32)
MGMT = str(uuid.uuid4())


class RPC:
    def __init__(self, server: Server, client: TestClient[Any, Any]) -> None:
        self.server, self.client = server, client

    async def write(self, cmd: Any, token: str) -> WriteReply:
        path = "/rpc/write"
        body = encoder.encode(WriteRequest(Command=cmd, Token=token))
        resp = await self.client.post(path, data=body, headers={AUTH_HEADER: sign(KEY, path, body)})
        assert resp.status == 200, await resp.read()
        return msgspec.msgpack.decode(await resp.read(), type=WriteReply)

    async def post(self, method: str, payload: Any) -> tuple[int, bytes]:
        """A signed RPC: the caller holds the cluster key, whatever its token."""
        path = f"/rpc/{method}"
        body = encoder.encode(payload)
        resp = await self.client.post(path, data=body, headers={AUTH_HEADER: sign(KEY, path, body)})
        return resp.status, await resp.read()

    async def read(self, query: Any, token: str) -> tuple[int, Any]:
        status, body = await self.post("read", ReadRequest(Query=query, Token=token))
        if status != 200:
            return status, body.decode()
        return status, decode_value(query, msgspec.msgpack.decode(body, type=ReadReply).Value)


@pytest.fixture
async def rpc(tmp_path: Any) -> AsyncIterator[RPC]:
    acl = ACLConfig(enabled=True, default_policy="deny", tokens=ACLTokens(initial_management=MGMT))
    server = Server(
        ServerSettings(
            node_name="s1",
            datacenter="dc1",
            advertise="127.0.0.1",
            rpc_port=free_port(),
            raft_port=free_port(),
            data_dir=str(tmp_path),
            key=KEY,
            password=base64.b64encode(KEY).decode(),
            acl=acl,
        )
    )
    await server.start()
    client = TestClient(TestServer(make_rpc_app(server)))
    await client.start_server()
    try:
        for _ in range(200):
            if server.raft is not None and server.raft.is_leader:
                break
            await asyncio.sleep(0.05)
        yield RPC(server, client)
    finally:
        await client.close()
        await server.close()


async def _agent_token(rpc: RPC, node: str, extra: str = "") -> tuple[str, str]:
    pid, accessor, secret = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    rules = f'node "{node}" {{ policy = "write" }}\nservice_prefix "" {{ policy = "read" }}'
    policy = ACLPolicy(ID=pid, Name=f"agent-{node}-{pid[:8]}", Rules=rules + extra)
    assert (await rpc.write(ACLPolicyOp(Op="set", Policy=policy), MGMT)).Code == 0
    token = ACLToken(AccessorID=accessor, SecretID=secret, Policies=[ACLLink(ID=pid)])
    assert (await rpc.write(ACLTokenOp(Op="set", Token=token), MGMT)).Code == 0
    return accessor, secret


def _register(node: str, service: str = "web") -> Register:
    return Register(
        Node=node, Address="10.0.0.1", Service=NodeService(ID=service, Service=service, Port=80)
    )


async def test_agent_token_registers_its_own_node_only(rpc: RPC) -> None:
    accessor, secret = await _agent_token(rpc, "node-a")
    ok = await rpc.write(_register("node-a"), secret)
    assert (ok.Code, ok.Result) == (0, True)
    assert "web" in rpc.server.store.services["node-a"]
    refused = await rpc.write(_register("node-b"), secret)
    assert refused.Code == 403
    assert refused.Error == (  # a new node: node:write on it (Consul's ChangesNode)
        f"Permission denied: token with AccessorID '{accessor}' lacks permission "
        "'node:write' on \"node-b\""
    )
    assert "node-b" not in rpc.server.store.nodes
    kv = await rpc.write(KVOp(Verb="set", Key="k", Value=b"v"), secret)
    assert kv.Code == 403 and "'key:write' on \"k\"" in kv.Error
    acl_write = await rpc.write(ACLPolicyOp(Op="delete", ID=str(uuid.uuid4())), secret)
    assert acl_write.Code == 403 and "lacks permission 'acl:write'" in acl_write.Error


async def test_no_token_and_unknown_token_are_refused(rpc: RPC) -> None:
    anonymous = await rpc.write(_register("node-a"), "")
    assert anonymous.Code == 403 and anonymous.Error.startswith("Permission denied")
    unknown = await rpc.write(_register("node-a"), str(uuid.uuid4()))
    assert (unknown.Code, unknown.Error) == (403, "ACL not found")
    assert "node-a" not in rpc.server.store.nodes


async def test_a_client_agent_resolves_and_writes_with_tokens_over_rpc(rpc: RPC) -> None:
    """A client agent's RemoteBackend: token resolution is one read over RPC, its compiled
    authorizer is cached, and a write carries the token the caller gave."""
    accessor, secret = await _agent_token(rpc, "node-a")
    port = rpc.client.server.port
    backend = RemoteBackend(RPCClient([f"127.0.0.1:{port}"], KEY, default_port=port), token="")
    resolver = TokenResolver(rpc.server.s.acl, backend)
    try:
        authz = await resolver.resolve(secret)
        assert authz.accessor == accessor
        assert authz.allowed("node", "node-a", Access.WRITE)
        assert not authz.allowed("node", "node-b", Access.WRITE)
        with pytest.raises(ACLNotFoundError):
            await resolver.resolve(str(uuid.uuid4()))
        assert await backend.write(_register("node-a"), secret) is True
        with pytest.raises(CommandForbiddenError, match="lacks permission"):
            await backend.write(_register("node-b"), secret)
        with pytest.raises(CommandForbiddenError):  # the agent's own token: none configured
            await backend.write(_register("node-a", "api"))
    finally:
        await backend.rpc.close()


async def test_reading_acl_state_needs_acl_read_and_secrets_need_acl_write(rpc: RPC) -> None:
    """A cluster-key holder without a token reads no ACL state; acl:read sees tokens with their
    SecretIDs hidden (except its own); acl:write sees them."""
    accessor, secret = await _agent_token(rpc, "node-a")
    r_accessor, reader = await _agent_token(rpc, "node-r", '\nacl = "read"')
    _, writer = await _agent_token(rpc, "node-w", '\nacl = "write"')
    for query in (q.ACLTokens(), q.ACLPolicies(), q.ACLRoles(), q.ACLTokens(AccessorID=accessor)):
        for token in ("", secret):
            status, text = await rpc.read(query, token)
            assert status == 403 and "lacks permission 'acl:read'" in text, (query, token)
    assert await rpc.read(q.ACLTokens(), str(uuid.uuid4())) == (403, "ACL not found\n")
    status, rows = await rpc.read(q.ACLTokens(), reader)
    assert status == 200
    shown = {t.AccessorID: t.SecretID for t in rows}
    assert shown[accessor] == "<hidden>" and shown[r_accessor] == reader
    assert secret not in shown.values() and MGMT not in shown.values()
    status, rows = await rpc.read(q.ACLTokens(), writer)
    assert {t.AccessorID: t.SecretID for t in rows}[accessor] == secret
    status, policies = await rpc.read(q.ACLPolicies(), reader)
    assert status == 200 and {p.ID for p in policies} == set(rpc.server.store.acl.policies)


async def test_a_token_reads_itself_and_resolves_without_acl_read(rpc: RPC) -> None:
    accessor, secret = await _agent_token(rpc, "node-a")
    status, rows = await rpc.read(q.ACLTokens(SecretID=secret), secret)
    assert status == 200 and [(t.AccessorID, t.SecretID) for t in rows] == [(accessor, secret)]
    _, other_secret = await _agent_token(rpc, "node-b")
    status, text = await rpc.read(q.ACLTokens(SecretID=other_secret), secret)
    assert status == 403 and "acl:read" in text
    status, resolved = await rpc.read(q.ACLResolve(SecretID=secret), "")
    assert status == 200 and resolved.AccessorID == accessor


async def test_operator_rpcs_need_operator_rights(rpc: RPC) -> None:
    _, plain = await _agent_token(rpc, "node-a")
    _, op_read = await _agent_token(rpc, "node-r", '\noperator = "read"')
    _, kr_read = await _agent_token(rpc, "node-k", '\nkeyring = "read"')
    cases: list[tuple[Any, str, str]] = [
        (Usage(), op_read, "operator:read"),
        (AutopilotHealth(), op_read, "operator:read"),
        (KeyringList(), kr_read, "keyring:read"),
        (ForceLeave(Node="nobody"), "", "operator:write"),
        (TransferLeader(), "", "operator:write"),
    ]
    for req, allowed, permission in cases:
        for token in ("", plain):
            status, body = await rpc.post("operator", OperatorCall(Request=req, Token=token))
            assert status == 403 and permission in body.decode(), (req, token, body)
        if allowed:
            status, body = await rpc.post("operator", OperatorCall(Request=req, Token=allowed))
            assert status == 200, (req, body)
    status, body = await rpc.post("operator", OperatorCall(Request=TransferLeader(), Token=op_read))
    assert status == 403 and "operator:write" in body.decode()
    index = rpc.server.store.mesh.ca_index
    config = {"Provider": "consul", "Config": {"LeafCertTTL": "1h"}}
    status, body = await rpc.post("caconfig", CAConfigRequest(Config=config, Token=op_read))
    assert status == 403 and "operator:write" in body.decode()
    assert rpc.server.store.mesh.ca_index == index  # the refused request changed nothing


async def test_an_expired_token_is_refused_over_rpc_then_reaped(rpc: RPC) -> None:
    pid, accessor, secret = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    rules = 'key "k" { policy = "write" }\nacl = "read"'
    policy = ACLPolicy(ID=pid, Name="short", Rules=rules)
    assert (await rpc.write(ACLPolicyOp(Op="set", Policy=policy), MGMT)).Code == 0
    expires = iso(datetime.now(UTC) + timedelta(seconds=2))
    token = ACLToken(
        AccessorID=accessor, SecretID=secret, Policies=[ACLLink(ID=pid)], ExpirationTime=expires
    )
    assert (await rpc.write(ACLTokenOp(Op="set", Token=token), MGMT)).Code == 0
    assert (await rpc.write(KVOp(Verb="set", Key="k", Value=b"v"), secret)).Code == 0
    assert (await rpc.read(q.ACLPolicies(), secret))[0] == 200
    while time.time() <= epoch(expires) + 0.01:  # type: ignore[operator]
        await asyncio.sleep(0.1)
    late = await rpc.write(KVOp(Verb="set", Key="k", Value=b"w"), secret)
    assert (late.Code, late.Error) == (403, "ACL not found")
    assert await rpc.read(q.ACLPolicies(), secret) == (403, "ACL not found\n")
    for _ in range(200):  # the leader's reaper scans every few seconds
        if accessor not in rpc.server.store.acl.tokens:
            break
        await asyncio.sleep(0.1)
    assert accessor not in rpc.server.store.acl.tokens


async def test_intention_writes_over_rpc_need_intentions_write(rpc: RPC) -> None:
    _, service_writer = await _agent_token(rpc, "node-a", '\nservice "db" { policy = "write" }')
    _, writer = await _agent_token(
        rpc, "node-b", '\nservice "db" { policy = "read" intentions = "write" }'
    )
    cmd = IntentionOp(Op="upsert", Destination="db", Source="web", Fields={"Action": "allow"})
    for token in ("", service_writer):
        refused = await rpc.write(cmd, token)
        assert refused.Code == 403 and "'intention:write' on \"db\"" in refused.Error
    assert ("service-intentions", "db") not in rpc.server.store.mesh.entries
    assert (await rpc.write(cmd, writer)).Code == 0
    assert ("service-intentions", "db") in rpc.server.store.mesh.entries


async def test_service_write_alone_registers_on_an_existing_node_but_creates_none(rpc: RPC) -> None:
    _, node_token = await _agent_token(rpc, "node-a")
    assert (await rpc.write(_register("node-a"), node_token)).Code == 0
    _, api_token = await _agent_token(rpc, "node-x", '\nservice "api" { policy = "write" }')
    ok = await rpc.write(_register("node-a", "api"), api_token)  # same node, same address
    assert (ok.Code, ok.Error) == (0, "")
    assert "api" in rpc.server.store.services["node-a"]
    moved = Register(
        Node="node-a", Address="10.9.9.9", Service=NodeService(ID="api", Service="api", Port=80)
    )
    for cmd, node in ((_register("intruder", "api"), "intruder"), (moved, "node-a")):
        refused = await rpc.write(cmd, api_token)
        assert refused.Code == 403 and f"'node:write' on \"{node}\"" in refused.Error
    assert "intruder" not in rpc.server.store.nodes
    assert rpc.server.store.nodes["node-a"].Address == "10.0.0.1"


async def test_a_leaf_is_signed_only_for_service_write_or_the_agent_running_it(rpc: RPC) -> None:
    """A holder of the cluster key gets no certificate without a token that may have it."""
    from meshd.agent.leafkeys import new_key_and_csr
    from meshd.rpc import SignReply, SignRequest
    from meshd.server import connect_ca

    await connect_ca.ensure_ca(rpc.server)
    td = connect_ca.trust_domain(rpc.server.store.mesh.cluster_id)
    _, csr = new_key_and_csr(td, "dc1", "web")
    _, csr_api = new_key_and_csr(td, "dc1", "api")
    _, agent_a = await _agent_token(rpc, "node-a")
    _, agent_b = await _agent_token(rpc, "node-b")
    _, web = await _agent_token(rpc, "node-z", '\nservice "web" { policy = "write" }')
    assert (await rpc.write(_register("node-a"), agent_a)).Code == 0  # web runs on node-a

    for token, why in (
        ("", "anonymous"),
        (agent_b, "node:write on a node that does not run web"),
        (str(uuid.uuid4()), "unknown"),
    ):
        status, body = await rpc.post("sign", SignRequest(CSR=csr, Service="web", Token=token))
        assert status == 403, why
        assert body.decode().startswith(("Permission denied", "ACL not found")), body
    # the agent running web, and a token with service:write on web, each get a leaf
    for token in (agent_a, web):
        status, body = await rpc.post("sign", SignRequest(CSR=csr, Service="web", Token=token))
        assert status == 200, body
        reply = msgspec.msgpack.decode(body, type=SignReply)
        assert "BEGIN CERTIFICATE" in reply.CertPEM
    # node:write on node-a gives no leaf for a service node-a does not run
    status, _ = await rpc.post("sign", SignRequest(CSR=csr_api, Service="api", Token=agent_a))
    assert status == 403
