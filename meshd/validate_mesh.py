"""The rules of the mesh and operator commands: config entries, intentions, CA roots,
autopilot, coordinates, prepared queries, the keyring, snapshot restore."""

from __future__ import annotations

from meshd.autopilot import AutopilotConfigError, normalize_config
from meshd.coordinate import Coordinate, CoordinateError
from meshd.keyring import KeyringError, key_bytes
from meshd.prepared_query import PreparedQueryError, normalize
from meshd.structs import (
    AutopilotConfigOp,
    CASetRoots,
    ConfigEntryOp,
    CoordinateBatch,
    IntentionOp,
    KeyringOp,
    PreparedQueryOp,
    Restore,
)
from meshd.validate_fields import Limits, ValidationError, name

CONFIG_OPS = ("set", "delete")
INTENTION_OPS = ("upsert", "delete")
INTENTION_FIELDS = ("Action", "Description", "Permissions", "LegacyMeta")


def config_entry(op: ConfigEntryOp, limits: Limits) -> None:
    if op.Op not in CONFIG_OPS:
        raise ValidationError(f"unknown config entry op {op.Op!r}")
    name(op.Kind, "Kind")
    name(op.Name, "Name")
    if op.CASIndex < -1:
        raise ValidationError("CAS index must not be negative")


def intention(op: IntentionOp, limits: Limits) -> None:
    if op.Op not in INTENTION_OPS:
        raise ValidationError(f"unknown intention op {op.Op!r}")
    name(op.Source, "SourceName")
    name(op.Destination, "DestinationName")
    unknown = sorted(set(op.Fields) - set(INTENTION_FIELDS))
    if unknown:
        raise ValidationError(f"unknown intention field {unknown[0]!r}")


def ca_roots(c: CASetRoots, limits: Limits) -> None:
    name(c.ClusterID, "ClusterID")
    if not c.Roots:
        raise ValidationError("CA roots are required")


def restore(r: Restore, limits: Limits) -> None:
    if not r.Data:
        raise ValidationError("snapshot is empty")


def autopilot_config(op: AutopilotConfigOp, limits: Limits) -> None:
    if op.CASIndex < -1:
        raise ValidationError("CAS index must not be negative")
    try:
        normalize_config(op.Config)
    except AutopilotConfigError as e:
        raise ValidationError(str(e)) from None


MAX_COORDINATES = 1024  # updates in one batch (the leader writes every few seconds)


def coordinates(b: CoordinateBatch, limits: Limits) -> None:
    if len(b.Updates) > MAX_COORDINATES:
        raise ValidationError(f"a coordinate batch holds at most {MAX_COORDINATES} updates")
    for u in b.Updates:
        name(u.Node, "Node")
        name(u.Segment, "Segment", required=False)
        try:
            Coordinate.from_json(u.Coord)
        except CoordinateError as e:
            raise ValidationError(f"coordinate of {u.Node!r}: {e}") from None


def prepared_query(op: PreparedQueryOp, limits: Limits) -> None:
    if op.Op not in ("set", "delete"):
        raise ValidationError(f"unknown prepared query op {op.Op!r}")
    name(op.ID, "ID")
    if op.Op == "set":
        try:
            normalize(op.Query, op.ID)
        except PreparedQueryError as e:
            raise ValidationError(str(e)) from None


def keyring(op: KeyringOp, limits: Limits) -> None:
    if op.Op not in ("install", "use", "remove"):
        raise ValidationError(f"unknown keyring op {op.Op!r}")
    try:
        for key in [op.Key, *op.Current]:
            key_bytes(key)
    except KeyringError as e:
        raise ValidationError(str(e)) from None
