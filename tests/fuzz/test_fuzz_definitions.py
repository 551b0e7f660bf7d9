"""HTTP body decoders: a 400 with a reason (a typed error) or a definition the servers can take."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from strategies import INTS, json_values, objects_with

from meshd.agent.definitions import DefinitionError, parse_check, parse_service
from meshd.agent.http.common import BadRequestError, decode_json

SERVICE_FIELDS = [
    "Name", "ID", "Tags", "Address", "Port", "Meta", "Weights", "EnableTagOverride",
    "Check", "Checks", "Kind", "Proxy", "Connect", "TaggedAddresses",
]  # fmt: skip
CHECK_FIELDS = [
    "Name", "CheckID", "ID", "Status", "HTTP", "TCP", "UDP", "GRPC", "TTL", "Args", "Interval",
    "Timeout", "Header", "Method", "AliasService", "SuccessBeforePassing", "OutputMaxSize",
]  # fmt: skip

VALUES = json_values(st.sampled_from(["Passing", "Warning", "Name", "TTL", "Interval"]))
GOOD_NAME = st.sampled_from(["web", "db-1", "api.v2"])


def _encodable(obj: Any) -> None:
    """What the servers receive must encode: a value that cannot stalls anti-entropy forever."""
    msgspec.msgpack.encode(obj)


@given(objects_with(SERVICE_FIELDS, VALUES), GOOD_NAME)
def test_parse_service_is_a_definition_or_a_definition_error(
    body: dict[str, Any], name: str
) -> None:
    try:
        defn = parse_service({"Name": name, **body})
    except DefinitionError as e:
        assert str(e)
        return
    _encodable(defn.service)
    assert defn.service.Service and defn.service.Weights.Passing >= 1


@given(objects_with(CHECK_FIELDS, VALUES))
def test_parse_check_is_a_check_or_a_definition_error(body: dict[str, Any]) -> None:
    try:
        check = parse_check(body)
    except DefinitionError as e:
        assert str(e)
        return
    assert check.Type in ("http", "tcp", "udp", "grpc", "ttl", "script", "alias")
    if check.Type in ("http", "tcp", "udp", "grpc", "script"):
        assert check.Interval >= 1.0  # Consul's floor


@given(
    st.fixed_dictionaries(
        {"Name": GOOD_NAME, "Weights": st.fixed_dictionaries({"Passing": INTS, "Warning": INTS})}
    )
)
def test_weights_are_accepted_only_within_64_bits(body: dict[str, Any]) -> None:
    try:
        defn = parse_service(body)
    except DefinitionError:
        return
    _encodable(defn.service)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_json_is_a_value_or_a_bad_request(raw: bytes) -> None:
    try:
        decode_json(raw)
    except BadRequestError as e:
        assert str(e).startswith("Request decode failed")


@given(json_values(), st.integers(1, 400))
def test_decoded_bodies_are_shallow_and_64_bit(value: Any, depth: int) -> None:
    raw = "[" * depth + json.dumps(value) + "]" * depth
    try:
        data = decode_json(raw.encode())
    except BadRequestError:
        return
    _encodable(data)
