"""What the servers admit (meshd.server.authority) and how the state machine applies it."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import pytest

from meshd.server.authority import ORIGINS, CommandForbiddenError, Origin, admit
from meshd.server.mesh_state import INTENTIONS
from meshd.server.store import CommandError, Store
from meshd.structs import (
    Barrier,
    Batch,
    CASetRoots,
    Command,
    ConfigEntryOp,
    Deregister,
    HealthCheck,
    IntentionOp,
    KVOp,
    KVReap,
    NodeService,
    NodeStatus,
    Register,
    Restore,
    encode_command,
)


def store_with_node() -> Store:
    s = Store()
    s.apply(Register(Node="n1", Address="10.0.0.1", Service=NodeService(ID="a", Service="a")), 1)
    return s


def check(sid: str) -> HealthCheck:
    return HealthCheck(Node="n1", CheckID=f"chk-{sid}", Name="c", ServiceID=sid)


@pytest.mark.parametrize(
    "cmd",
    [
        NodeStatus(Node="n1", Address="10.0.0.1", Status="critical"),
        CASetRoots(ClusterID="c", Roots=b"\x90"),
        Restore(Data=Store().dump()),
        KVReap(Index=10**6),  # an agent could make servers forget fresh deletes
        Batch(Ops=[NodeStatus(Node="n1", Address="10.0.0.1", Status="critical")]),  # type: ignore[list-item]
    ],
    ids=lambda c: type(c).__name__,
)
def test_an_agent_may_not_send_server_only_commands(cmd: Any) -> None:
    store = store_with_node()
    before = store.dump()
    with pytest.raises(CommandForbiddenError, match="is issued only by servers"):
        admit(cmd, Origin.AGENT, store)
    assert store.dump() == before


def test_every_command_type_has_an_origin_row() -> None:
    assert set(typing.get_args(Command)) == set(ORIGINS)


def test_servers_may_send_their_own_commands() -> None:
    store = store_with_node()
    cmd = NodeStatus(Node="n1", Address="10.0.0.1", Status="critical")
    assert admit(cmd, Origin.SERVER, store) == cmd


def test_a_check_must_name_a_service_of_its_node() -> None:
    store = store_with_node()
    with pytest.raises(CommandError, match='Unknown service ID "ghost" for check ID "chk-ghost"'):
        admit(Register(Node="n1", Address="x", Checks=[check("ghost")]), Origin.AGENT, store)
    # known in the store, in the same Register, or registered earlier in the same batch
    admit(Register(Node="n1", Address="x", Checks=[check("a")]), Origin.AGENT, store)
    same = Register(Node="n1", Address="x", Service=NodeService(ID="b", Service="b"))
    admit(msgspec.structs.replace(same, Checks=[check("b")]), Origin.AGENT, store)
    batch = Batch(Ops=[same, Register(Node="n1", Address="x", Checks=[check("b")])])
    admit(batch, Origin.AGENT, store)
    with pytest.raises(CommandError, match="Ops\\[0\\]: Unknown service ID"):
        admit(Batch(Ops=[batch.Ops[1], same]), Origin.AGENT, store)


def test_a_new_node_needs_an_address() -> None:
    with pytest.raises(CommandError, match="Must provide node and address"):
        admit(Register(Node="fresh", Address=""), Origin.AGENT, store_with_node())
    admit(Register(Node="n1", Address=""), Origin.AGENT, store_with_node())


def test_config_entries_are_normalised_by_the_server() -> None:
    raw = {"kind": "service-defaults", "name": "web", "protocol": "http"}
    cmd = admit(
        ConfigEntryOp(Op="set", Kind="service-defaults", Name="web", Entry=raw),
        Origin.AGENT,
        Store(),
    )
    assert isinstance(cmd, ConfigEntryOp)
    assert cmd.Entry == {"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Meta": {}}


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (
            ConfigEntryOp(Op="set", Kind="service-defaults", Name="web", Entry={"Kind": "x"}),
            "unsupported config entry kind 'x'",
        ),
        (
            ConfigEntryOp(
                Op="set",
                Kind="service-defaults",
                Name="api",
                Entry={"Kind": "service-defaults", "Name": "web"},
            ),
            "the command names service-defaults/api",
        ),
        (ConfigEntryOp(Op="delete", Kind="mesh", Name="m"), "invalid config entry kind: mesh"),
        (
            IntentionOp(Op="upsert", Destination="db", Source="web", Fields={"Action": "maybe"}),
            "Action must be set to 'allow' or 'deny'",
        ),
        (
            IntentionOp(Op="upsert", Destination="db", Source="we*b", Fields={"Action": "deny"}),
            "wildcard character '*' cannot be used with partial values",
        ),
        (CASetRoots(ClusterID="c", Roots=b"junk"), "bad CA roots"),
        (CASetRoots(ClusterID="c", Roots=b"\x90"), "exactly one CA root must be active"),
        (Restore(Data=b"not a snapshot"), "not a meshd snapshot"),
    ],
)
def test_schema_errors_are_refused_with_the_reason(cmd: Any, reason: str) -> None:
    with pytest.raises(CommandError) as e:
        admit(cmd, Origin.SERVER, Store())
    assert reason in str(e.value)


def upsert(
    src: str, dst: str = "db", *, create: bool = False, action: str = "allow"
) -> IntentionOp:
    return IntentionOp(
        Op="upsert", Destination=dst, Source=src, Fields={"Action": action}, MustNotExist=create
    )


def sources(store: Store, dst: str = "db") -> dict[str, str]:
    entry = store.mesh.entries.get((INTENTIONS, dst)) or {}
    return {s["Name"]: s["Action"] for s in entry.get("Sources", [])}


def test_intention_ops_apply_in_one_step() -> None:
    s = Store()
    ixn_id = s.apply(upsert("web", create=True), 1)
    assert isinstance(ixn_id, str) and len(ixn_id) == 36
    assert s.apply(upsert("api", create=True), 2) != ixn_id
    assert sources(s) == {"web": "allow", "api": "allow"}
    err = s.apply(upsert("web", create=True, action="deny"), 3)
    assert isinstance(err, CommandError) and "already exists" in str(err)
    assert sources(s) == {"web": "allow", "api": "allow"}
    assert s.apply(upsert("web", action="deny"), 4) == ixn_id  # replace keeps the pair's ID
    assert sources(s) == {"web": "deny", "api": "allow"}
    s.apply(IntentionOp(Op="delete", Destination="db", Source="web"), 5)
    s.apply(IntentionOp(Op="delete", Destination="db", Source="api"), 6)
    assert (INTENTIONS, "db") not in s.mesh.entries  # the last source takes the entry with it


def test_apply_is_total() -> None:
    """A committed entry that fails to apply must not stop the state machine."""
    s = store_with_node()
    broken = Register(Node="n1", Address="x", Service="not a service")  # type: ignore[arg-type]
    result = s.apply(broken, 2)
    assert isinstance(result, CommandError) and "could not apply Register" in str(result)
    assert isinstance(s.apply_encoded(b"\xc1garbage", 3), CommandError)
    assert s.apply(KVOp(Verb="set", Key="k", Value=b"v"), 4) is True
    assert s.kv["k"].ModifyIndex == 4 and s.index == 4


def test_apply_dispatches_every_command_type() -> None:
    s = store_with_node()
    ops = [
        Barrier(),
        NodeStatus(Node="n1", Address="10.0.0.1", Status="critical"),
        Batch(Ops=[KVOp(Verb="set", Key="b", Value=b"1")]),
        Deregister(Node="n1", ServiceID="a"),
    ]
    for i, op in enumerate(ops, start=2):
        assert s.apply(msgspec.msgpack.decode(encode_command(op), type=type(op)), i) is True
    assert s.checks["n1"]["serfHealth"].Status == "critical"
    assert s.kv["b"].Value == b"1" and "a" not in s.services["n1"]


def test_a_command_decoded_from_an_rpc_body_still_meets_every_rule() -> None:
    """The type round trip is skipped for it, never the rules or the references."""
    wire = msgspec.msgpack.encode(Batch(Ops=[Register(Node="", Address="10.0.0.9")]))
    decoded = msgspec.msgpack.decode(wire, type=Batch)
    with pytest.raises(CommandError, match="Ops\\[0\\]: Node is required"):
        admit(decoded, Origin.AGENT, Store(), decoded=True)
    orphan = Register(Node="n1", Address="10.0.0.1", Checks=[check("missing")])
    with pytest.raises(CommandError, match="Unknown service ID"):
        admit(orphan, Origin.AGENT, store_with_node(), decoded=True)
