"""meshd/coordinate.py: Vivaldi as Serf computes it."""

from __future__ import annotations

import math
import random

import pytest

from meshd.coordinate import (
    DIMENSIONALITY,
    HEIGHT_MIN,
    VIVALDI_ERROR_MAX,
    Client,
    Coordinate,
    CoordinateError,
    sort_by_distance,
)


def test_fresh_coordinate_is_serfs_origin():
    c = Coordinate()
    assert c.Vec == [0.0] * DIMENSIONALITY
    assert c.Error == VIVALDI_ERROR_MAX and c.Height == HEIGHT_MIN and c.Adjustment == 0.0
    assert c.distance(Coordinate()) == pytest.approx(2 * HEIGHT_MIN)


def test_distance_is_euclidean_plus_heights_and_positive_adjustments():
    a = Coordinate(Vec=[0.003, 0.004] + [0.0] * 6, Height=0.001)
    b = Coordinate(Height=0.002)
    assert a.distance(b) == pytest.approx(0.005 + 0.003)
    a.Adjustment, b.Adjustment = 0.001, 0.0005
    assert a.distance(b) == pytest.approx(0.008 + 0.0015)
    a.Adjustment = -1.0  # an adjustment that would make it negative is ignored
    assert a.distance(b) == pytest.approx(0.008)


def test_nodes_converge_to_the_rtts_they_measure():
    """A star of clients around one hub (meshd's heartbeats go to the leader): each client's
    estimate of its RTT to the hub approaches the true RTT."""
    random.seed(7)
    truth = {"a": 0.010, "b": 0.050, "c": 0.100}
    hub = Coordinate()
    clients = {n: Client() for n in truth}
    for _ in range(300):
        for n, rtt in truth.items():
            jitter = rtt * random.uniform(-0.02, 0.02)
            clients[n].update("hub", hub, rtt + jitter)
    for n, rtt in truth.items():
        est = clients[n].coord.distance(hub)
        assert est == pytest.approx(rtt, rel=0.15), (n, est)
        assert clients[n].coord.Error < 0.5  # confidence grew
    # and they order by distance as the truth does
    order = sorted(truth, key=lambda n: clients[n].coord.distance(hub))
    assert order == ["a", "b", "c"]


def test_update_refuses_implausible_samples_and_keeps_state():
    c = Client()
    before = c.coord
    for bad in (-0.001, 11.0, math.nan):
        with pytest.raises(CoordinateError):
            c.update("x", Coordinate(), bad)
    assert c.coord is before and c.updates == 0


def test_from_json_validates():
    good = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}
    assert Coordinate.from_json(good).to_json() == good
    for bad in (
        None,
        {**good, "Vec": [0.0] * 7},
        {**good, "Error": "1"},
        {**good, "Height": math.inf},
        {**good, "Adjustment": True},
    ):
        with pytest.raises(CoordinateError):
            Coordinate.from_json(bad)


def test_sort_by_distance_puts_unknown_last_and_keeps_order_without_origin():
    origin = Coordinate()
    coords = {
        "far": Coordinate(Vec=[0.5] + [0.0] * 7),
        "near": Coordinate(Vec=[0.01] + [0.0] * 7),
    }
    rows = ["nocoord", "far", "near"]
    assert sort_by_distance(origin, rows, coords.get) == ["near", "far", "nocoord"]
    assert sort_by_distance(None, rows, coords.get) == rows
