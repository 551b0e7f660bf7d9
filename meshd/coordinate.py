"""Vivaldi network coordinates, as Serf computes them (hashicorp/serf/coordinate).

Each node holds a point in an 8-dimensional Euclidean space plus a "height" (the access-link
latency every path from the node pays) and an adjustment term; the estimated round-trip time
between two nodes is the distance between their coordinates. A node moves its own coordinate a
little after every RTT sample to a peer whose coordinate it knows: towards the peer when the
estimate was too long, away when too short, by a step weighted by how confident each side is
(its `Error`). Constants are Serf's defaults so coordinates and estimates compare with Consul's.

Pure: no clock, no I/O. Randomness is only used to split two nodes sitting at the same point.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

DIMENSIONALITY = 8
VIVALDI_ERROR_MAX = 1.5
VIVALDI_CE = 0.25
VIVALDI_CC = 0.25
ADJUSTMENT_WINDOW = 20
HEIGHT_MIN = 10.0e-6
LATENCY_FILTER_SIZE = 3
GRAVITY_RHO = 150.0
ZERO_THRESHOLD = 1.0e-6
MAX_RTT = 10.0  # seconds: a sample above this is a measurement error, not a network


class CoordinateError(ValueError):
    """A coordinate or an RTT sample that cannot be used (the text says why)."""


@dataclass
class Coordinate:
    Vec: list[float] = field(default_factory=lambda: [0.0] * DIMENSIONALITY)
    Error: float = VIVALDI_ERROR_MAX
    Adjustment: float = 0.0
    Height: float = HEIGHT_MIN

    def to_json(self) -> dict[str, Any]:
        return {
            "Vec": list(self.Vec),
            "Error": self.Error,
            "Adjustment": self.Adjustment,
            "Height": self.Height,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Coordinate:
        """A coordinate as Consul's API carries it; refused when it is not a usable point."""
        if not isinstance(raw, dict):
            raise CoordinateError("Coord must be an object")
        vec = raw.get("Vec")
        if not isinstance(vec, list) or len(vec) != DIMENSIONALITY:
            raise CoordinateError(f"Coord.Vec must hold {DIMENSIONALITY} numbers")
        values = [*vec, raw.get("Error"), raw.get("Adjustment"), raw.get("Height")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise CoordinateError("Coord fields must be numbers")
        if not all(math.isfinite(float(v)) for v in values):
            raise CoordinateError("Coord fields must be finite")
        return cls(
            Vec=[float(v) for v in vec],
            Error=float(raw["Error"]),
            Adjustment=float(raw["Adjustment"]),
            Height=float(raw["Height"]),
        )

    def raw_distance(self, other: Coordinate) -> float:
        return _magnitude(_diff(self.Vec, other.Vec)) + self.Height + other.Height

    def distance(self, other: Coordinate) -> float:
        """Estimated RTT in seconds; the adjustment terms apply only when they keep it positive."""
        dist = self.raw_distance(other)
        adjusted = dist + self.Adjustment + other.Adjustment
        return adjusted if adjusted > 0.0 else dist

    def apply_force(self, force: float, other: Coordinate) -> Coordinate:
        unit, mag = _unit_vector_at(self.Vec, other.Vec)
        vec = [a + b * force for a, b in zip(self.Vec, unit, strict=True)]
        height = self.Height
        if mag > ZERO_THRESHOLD:
            height = max((self.Height + other.Height) * force / mag + self.Height, HEIGHT_MIN)
        return Coordinate(vec, self.Error, self.Adjustment, height)


def _diff(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _magnitude(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _unit_vector_at(a: list[float], b: list[float]) -> tuple[list[float], float]:
    """The unit vector pointing from b to a, and the distance; a random direction when the two
    points coincide (so two fresh nodes can move apart)."""
    d = _diff(a, b)
    mag = _magnitude(d)
    if mag > ZERO_THRESHOLD:
        return [x / mag for x in d], mag
    while True:
        r = [random.random() - 0.5 for _ in a]
        m = _magnitude(r)
        if m > ZERO_THRESHOLD:
            return [x / m for x in r], 0.0


class Client:
    """One node's coordinate and the state its updates need (Serf's coordinate.Client)."""

    def __init__(self) -> None:
        self.coord = Coordinate()
        self.origin = Coordinate()
        self._samples: dict[str, deque[float]] = {}
        self._adjust: deque[float] = deque(maxlen=ADJUSTMENT_WINDOW)
        self.updates = 0

    def forget(self, node: str) -> None:
        self._samples.pop(node, None)

    def _filtered(self, node: str, rtt: float) -> float:
        """The median of the last few samples to `node`: one slow reply does not move us."""
        window = self._samples.setdefault(node, deque(maxlen=LATENCY_FILTER_SIZE))
        window.append(rtt)
        ordered = sorted(window)
        return ordered[len(ordered) // 2]

    def _vivaldi(self, other: Coordinate, rtt: float) -> None:
        c = self.coord
        dist = c.distance(other)
        rtt = max(rtt, ZERO_THRESHOLD)
        wrongness = abs(dist - rtt) / rtt
        total_error = max(c.Error + other.Error, ZERO_THRESHOLD)
        weight = c.Error / total_error
        error = VIVALDI_CE * weight * wrongness + c.Error * (1.0 - VIVALDI_CE * weight)
        error = min(error, VIVALDI_ERROR_MAX)
        force = VIVALDI_CC * weight * (rtt - dist)
        moved = c.apply_force(force, other)
        moved.Error = error
        self.coord = moved

    def _update_adjustment(self, other: Coordinate, rtt: float) -> None:
        self._adjust.append(rtt - self.coord.raw_distance(other))
        self.coord.Adjustment = sum(self._adjust) / (2.0 * ADJUSTMENT_WINDOW)

    def _update_gravity(self) -> None:
        dist = self.origin.raw_distance(self.coord)
        force = -1.0 * (dist / GRAVITY_RHO) ** 2
        moved = self.coord.apply_force(force, self.origin)
        moved.Error, moved.Adjustment = self.coord.Error, self.coord.Adjustment
        self.coord = moved

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate:
        """Take one RTT sample (seconds) to `node`, whose coordinate is `other`."""
        if not 0.0 <= rtt <= MAX_RTT or not math.isfinite(rtt):
            raise CoordinateError(f"round trip time {rtt!r}s is not plausible")
        if len(other.Vec) != DIMENSIONALITY:
            raise CoordinateError("coordinate dimensionality does not match")
        rtt = self._filtered(node, rtt)
        self._vivaldi(other, rtt)
        self._update_adjustment(other, rtt)
        self._update_gravity()
        if not all(math.isfinite(v) for v in [*self.coord.Vec, self.coord.Height]):
            self.coord = Coordinate()  # Serf resets a coordinate that has become invalid
        self.updates += 1
        return self.coord


def sort_by_distance(origin: Coordinate | None, rows: list[Any], coord_of: Any) -> list[Any]:
    """Rows ordered by estimated RTT from `origin`; rows without a coordinate go last, in their
    original order (Consul's `?near=` sort). Stable, so equal estimates keep their order."""
    if origin is None:
        return rows

    def key(row: Any) -> tuple[int, float]:
        c = coord_of(row)
        return (0, origin.distance(c)) if c is not None else (1, 0.0)

    return sorted(rows, key=key)
