"""The stateless rules every command passes before the servers propose it (meshd.validate)."""

from __future__ import annotations

from typing import Any

import pytest

from meshd import validate
from meshd.structs import (
    SERF_CHECK_ID,
    Barrier,
    Batch,
    CASetRoots,
    Command,
    ConfigEntryOp,
    Deregister,
    HealthCheck,
    IntentionOp,
    KVOp,
    NodeService,
    NodeStatus,
    Register,
    Restore,
    Weights,
)


def svc(**kw: Any) -> NodeService:
    return NodeService(**{"ID": "web-1", "Service": "web", **kw})


def chk(**kw: Any) -> HealthCheck:
    return HealthCheck(**{"Node": "n1", "CheckID": "c1", "Name": "c1", **kw})


def reg(**kw: Any) -> Register:
    return Register(**{"Node": "n1", "Address": "10.0.0.1", **kw})


GOOD: list[Command] = [
    reg(),
    reg(Service=svc(Port=8080, Tags=["a"], Meta={"env": "prod"}), Checks=[chk(ServiceID="web-1")]),
    reg(Service=svc(Kind="connect-proxy", Proxy={"DestinationServiceName": "web"})),
    Deregister(Node="n1", ServiceID="web-1"),
    KVOp(Verb="set", Key="a/b", Value=b"x" * 1024),
    KVOp(Verb="delete-tree", Key=""),
    Batch(Ops=[reg(), KVOp(Verb="delete", Key="k")]),
    Barrier(),
    ConfigEntryOp(Op="delete", Kind="service-defaults", Name="web"),
    IntentionOp(Op="upsert", Destination="db", Source="web", Fields={"Action": "allow"}),
    NodeStatus(Node="n1", Address="10.0.0.1", Status="critical"),
    CASetRoots(ClusterID="c0ffee", Roots=b"\x90"),
    Restore(Data=b"\x80"),
]


@pytest.mark.parametrize("cmd", GOOD, ids=lambda c: type(c).__name__)
def test_valid_commands_pass(cmd: Command) -> None:
    validate.validate(validate.typed(cmd))


BAD: list[tuple[Command, str]] = [
    (reg(Node=""), "Node is required"),
    (reg(Node="a" * 257), "Node is longer than 256"),
    (reg(Node="bad\nname"), "control characters"),
    (reg(Address="10.0.0.1 evil"), "Address '10.0.0.1 evil' contains whitespace"),
    (reg(NodeMeta={"bad key": "v"}), "NodeMeta: key 'bad key' contains invalid characters"),
    (reg(NodeMeta={"k": "v" * 513}), "value of 'k' is longer than 512"),
    (reg(NodeMeta={f"k{i}": "v" for i in range(65)}), "more than 64 key/value pairs"),
    (reg(Service=svc(Service="")), "Service.Service is required"),
    (reg(Service=svc(ID="web\x01one")), "Service.ID 'web\\x01one' contains control characters"),
    (reg(Service=svc(Port=70000)), "Port 70000 is out of range"),
    (reg(Service=svc(Weights=Weights(Passing=0))), "Weights.Passing must be greater than 0"),
    (reg(Service=svc(Kind="router")), "Kind 'router' is not a service kind"),
    (reg(Service=svc(Kind="connect-proxy")), "DestinationServiceName must be set"),
    (reg(Service=svc(Tags=["x" * 300])), "Tags entry is longer than 256"),
    (reg(Checks=[chk(CheckID="")]), "Checks[0].CheckID is required"),
    (reg(Checks=[chk(CheckID=SERF_CHECK_ID)]), "maintained by the servers"),
    (reg(Checks=[chk(Status="ok")]), "Status 'ok' is not one of"),
    (reg(Checks=[chk(Node="other")]), "Node 'other' does not match the node 'n1'"),
    (reg(Checks=[chk(Output="x" * (validate.MAX_TEXT + 1))]), "Output is longer than"),
    (reg(Checks=[chk(), chk()]), "Checks[1].CheckID 'c1' appears more than once"),
    (Deregister(Node=""), "Node is required"),
    (KVOp(Verb="append", Key="k"), "unknown KV verb 'append'"),
    (KVOp(Verb="set", Key=""), "Missing key name"),
    (KVOp(Verb="set", Key="k" * 513), "KV key is longer than 512"),
    (KVOp(Verb="set", Key="a\x00b"), "NUL"),
    (KVOp(Verb="set", Key="k", Value=b"x" * (512 * 1024 + 1)), "Value exceeds 524288 byte limit"),
    (KVOp(Verb="cas", Key="k", Index=-1), "CAS index must not be negative"),
    (Batch(Ops=[reg(), KVOp(Verb="set", Key="")]), "Ops[1]: Missing key name"),
    (Batch(Ops=[reg()] * (validate.MAX_BATCH + 1)), "a batch holds at most"),
    (ConfigEntryOp(Op="patch", Kind="service-defaults", Name="web"), "unknown config entry op"),
    (ConfigEntryOp(Op="set", Kind="service-defaults", Name=""), "Name is required"),
    (IntentionOp(Op="merge", Destination="db", Source="web"), "unknown intention op 'merge'"),
    (IntentionOp(Op="upsert", Destination="", Source="web"), "DestinationName is required"),
    (
        IntentionOp(Op="upsert", Destination="db", Source="web", Fields={"Owner": "x"}),
        "unknown intention field 'Owner'",
    ),
    (NodeStatus(Node="n1", Address="a", Status="dead"), "Status 'dead' is not one of"),
    (CASetRoots(ClusterID="", Roots=b"\x90"), "ClusterID is required"),
    (Restore(Data=b""), "snapshot is empty"),
]


@pytest.mark.parametrize(("cmd", "reason"), BAD, ids=lambda x: x if isinstance(x, str) else "")
def test_each_rule_denies_with_its_reason(cmd: Command, reason: str) -> None:
    with pytest.raises(validate.ValidationError) as e:
        validate.validate(cmd)
    assert reason in str(e.value)


def test_limits_come_from_the_config() -> None:
    op = KVOp(Verb="set", Key="k", Value=b"x" * 2000)
    validate.validate(op)
    with pytest.raises(validate.ValidationError, match="Value exceeds 1000 byte limit"):
        validate.validate(op, validate.Limits.from_config({"kv_max_value_size": 1000}))


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (reg(NodeMeta={"rack": 7}), "invalid Register: Expected `str`, got `int`"),
        (reg(Service=svc(Port="80")), "Expected `int`, got `str`"),
        (KVOp(Verb="set", Key="k", Flags=2**64), "invalid KVOp"),
    ],
)
def test_typed_refuses_fields_of_the_wrong_type(cmd: Command, reason: str) -> None:
    """A struct built in-process is not type-checked; the log encoding round trip is."""
    with pytest.raises(validate.ValidationError) as e:
        validate.typed(cmd)
    assert reason in str(e.value)


def test_unknown_command_type_is_refused() -> None:
    with pytest.raises(validate.ValidationError, match="unknown command"):
        validate.validate(Weights())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"Name": "web", "Meta": {"bad key": "v"}}, "Service.Meta: key 'bad key' contains invalid"),
        ({"Name": "web", "Kind": "connect-proxy"}, "DestinationServiceName must be set"),
        ({"Name": "web", "Check": {"CheckID": "serfHealth", "TTL": "10s"}}, "maintained by the"),
        ({"Name": "web", "Check": {"TTL": "10s", "OutputMaxSize": 10**6}}, "OutputMaxSize must be"),
    ],
)
def test_the_agent_refuses_what_the_servers_would(raw: dict[str, Any], reason: str) -> None:
    """An agent that accepted these into its local state could never sync them."""
    from meshd.agent.definitions import DefinitionError, parse_service

    with pytest.raises(DefinitionError) as e:
        parse_service(raw)
    assert reason in str(e.value)
