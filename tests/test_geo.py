import h3
import numpy as np
import pytest

from geoloc.geo import (
    cell_center,
    cell_resolution,
    cells_of,
    haversine_km,
    nearest_km,
    pairwise_km,
)

PARIS = (48.8566, 2.3522)
MARSEILLE = (43.2965, 5.3698)
LONDON = (51.5074, -0.1278)


@pytest.mark.parametrize(("a", "b", "km"), [
    (PARIS, MARSEILLE, 660.5),
    (PARIS, LONDON, 343.6),
    ((0.0, 0.0), (0.0, 1.0), 111.195),       # one degree of the equator on a 6371 km sphere
    ((0.0, 0.0), (0.0, 180.0), np.pi * 6371.0),
])
def test_haversine_known_distances(a, b, km):
    assert haversine_km(*a, *b) == pytest.approx(km, rel=2e-3)
    assert haversine_km(*b, *a) == pytest.approx(km, rel=2e-3)


def test_haversine_zero_and_broadcast():
    lats = np.array([PARIS[0], MARSEILLE[0]])
    lons = np.array([PARIS[1], MARSEILLE[1]])
    assert np.allclose(haversine_km(lats, lons, lats, lons), 0.0)
    matrix = pairwise_km(lats, lons, lats, lons)
    assert matrix.shape == (2, 2)
    assert matrix[0, 1] == pytest.approx(matrix[1, 0])


@pytest.mark.parametrize("resolution", [4, 5, 7, 9])
def test_h3_round_trip(resolution):
    rng = np.random.default_rng(0)
    lats = rng.uniform(42.5, 51.0, 50)
    lons = rng.uniform(-4.5, 8.0, 50)
    cells = cells_of(lats, lons, resolution)
    edge_km = h3.average_hexagon_edge_length(resolution, unit="km")
    for lat, lon, cell in zip(lats, lons, cells, strict=True):
        assert cell_resolution(cell) == resolution
        center = cell_center(cell)
        # the centre lies in its own cell, and every point lies within ~one edge of its centre
        assert cells_of([center[0]], [center[1]], resolution) == [cell]
        assert haversine_km(lat, lon, *center) < 1.5 * edge_km


def test_nearest_km_matches_brute_force_and_handles_no_reference():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(41, 51, 300), rng.uniform(-5, 10, 300)
    ref_lat, ref_lon = rng.uniform(41, 51, 500), rng.uniform(-5, 10, 500)
    brute = pairwise_km(lat, lon, ref_lat, ref_lon).min(axis=1)
    assert nearest_km(lat, lon, ref_lat, ref_lon) == pytest.approx(brute, abs=1e-6)
    assert nearest_km(lat[:3], lon[:3], lat[:3], lon[:3]) == pytest.approx([0, 0, 0], abs=1e-6)
    assert np.isinf(nearest_km(lat[:2], lon[:2], [], [])).all()
