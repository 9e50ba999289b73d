import h3
import numpy as np
import pytest

from geoloc.geo import (
    EARTH_RADIUS_KM,
    cell_center,
    cell_resolution,
    cells_of,
    group_mean_points,
    haversine_km,
    mean_point,
    nearest_km,
    offsets_km,
    pairwise_km,
    shift_km,
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


def antipodes(n: int = 2000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-89, 89, n), rng.uniform(-180, 180, n)
    return lat, lon, -lat, np.mod(lon + 360.0, 360.0) - 180.0


def test_antipodes_are_half_the_circumference_away_not_nan():
    """Rounding takes the haversine term and the chord just past their bounds for some
    antipodal pairs: the distance is still half the circumference."""
    lat, lon, far_lat, far_lon = antipodes()
    assert haversine_km(lat, lon, far_lat, far_lon) == pytest.approx(np.pi * EARTH_RADIUS_KM)
    for i in range(0, 2000, 250):
        assert nearest_km(lat[i:i + 1], lon[i:i + 1], far_lat[i:i + 1], far_lon[i:i + 1]) == (
            pytest.approx([np.pi * EARTH_RADIUS_KM]))


def test_distances_are_computed_in_float64_whatever_the_input():
    """float32 coordinates (as a model's outputs come) are measured in float64: 1 m apart at
    Paris is 1 m, not float32's rounding of it."""
    lat = np.array([PARIS[0]], dtype=np.float32)
    lon = np.array([PARIS[1]], dtype=np.float32)
    north = np.float32(PARIS[0] + np.degrees(0.001 / EARTH_RADIUS_KM))
    here = haversine_km(lat, lon, lat, lon)
    assert here.dtype == np.float64 and here[0] == 0
    exact = haversine_km(lat.astype(np.float64), lon, np.float64(north), lon)
    assert haversine_km(lat, lon, north, lon) == pytest.approx(exact, rel=1e-12)
    assert nearest_km(lat, lon, [north], lon).dtype == np.float64
    assert nearest_km(lat, lon, [north], lon) == pytest.approx(exact, rel=1e-6)


def test_cells_of_refuses_coordinates_of_different_lengths():
    with pytest.raises(ValueError):
        cells_of([45.0, 46.0], [3.0], 5)


def test_offsets_are_east_and_north_km_at_the_origins_latitude_and_shift_inverts_them():
    """east = R dlon cos(lat0), north = R dlat; across the antimeridian the short way round;
    shift_km brings every offset back to its point, longitude in [-180, 180)."""
    one_degree = EARTH_RADIUS_KM * np.pi / 180
    east, north = offsets_km([46.0, 44.0], [4.0, 2.0], 45.0, 3.0)
    assert east == pytest.approx([one_degree * np.cos(np.radians(45)),
                                  -one_degree * np.cos(np.radians(45))], rel=1e-12)
    assert north == pytest.approx([one_degree, -one_degree], rel=1e-12)
    east, north = offsets_km(10.0, -179.5, 10.0, 179.5)
    assert east == pytest.approx(one_degree * np.cos(np.radians(10)), rel=1e-12)
    assert north == 0
    assert offsets_km(10.0, 179.5, 10.0, -179.5)[0] == pytest.approx(-east, rel=1e-12)

    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-60, 60, 500), rng.uniform(-180, 180, 500)
    lat0, lon0 = lat + rng.normal(0, 0.5, 500), lon + rng.normal(0, 0.5, 500)
    back_lat, back_lon = shift_km(lat0, lon0, *offsets_km(lat, lon, lat0, lon0))
    assert back_lat == pytest.approx(lat, abs=1e-9)
    assert np.abs(np.mod(back_lon - lon + 180, 360) - 180).max() < 1e-9
    assert ((back_lon >= -180) & (back_lon < 180)).all()
    lat, lon = shift_km(45.0, 179.9, 20.0, 0.0)
    assert lat == 45.0 and lon == pytest.approx(
        179.9 + np.degrees(20.0 / (EARTH_RADIUS_KM * np.cos(np.radians(45)))) - 360)


def test_mean_points_weigh_unit_vectors_and_cross_the_antimeridian():
    """Rows of k points each (here k = 2) give one point per row: the normalised weighted sum
    of their unit vectors."""
    lat = np.array([[0.0, 0.0], [10.0, 10.0], [30.0, 60.0]])
    lon = np.array([[0.0, 90.0], [179.0, -179.0], [5.0, 5.0]])
    weights = np.array([[3.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    mean_lat, mean_lon = mean_point(lat, lon, weights)
    assert mean_lat[[0, 2]] == pytest.approx([0.0, 45.0])
    assert 10.0 < mean_lat[1] < 10.01          # a great circle's midpoint bows poleward
    assert mean_lat[0] == 0 and mean_lon[0] == pytest.approx(np.degrees(np.arctan2(1, 3)))
    assert abs(mean_lon[1]) == pytest.approx(180.0) and mean_lon[2] == pytest.approx(5.0)
    # an unweighted pair's mean is its great circle's midpoint
    assert haversine_km(mean_lat[1], mean_lon[1], 10.0, 179.0) == pytest.approx(
        haversine_km(10.0, 179.0, 10.0, -179.0) / 2)

    groups = np.array([1, 0, 1, 2])
    lat, lon = group_mean_points(np.array([0.0, 45.0, 0.0, -89.0]),
                                 np.array([0.0, 3.0, 90.0, 10.0]), groups)
    assert lat == pytest.approx([45.0, 0.0, -89.0]) and lon == pytest.approx([3.0, 45.0, 10.0])
    assert group_mean_points([90.0], [0.0], np.array([0]))[0] == pytest.approx([90.0])


def test_offsets_and_shift_compute_in_float64_whatever_the_input():
    """float32 positions and offsets (a model's outputs) give float64 answers: a point 1 m
    from its origin is 1 m, not float32's rounding of the degrees."""
    lat0, lon0 = np.float32(48.8566), np.float32(2.3522)
    east, north = offsets_km(lat0 + np.float32(1e-5), lon0, lat0, lon0)
    assert north.dtype == np.float64
    assert north == pytest.approx(EARTH_RADIUS_KM * np.radians(
        np.float64(lat0 + np.float32(1e-5)) - np.float64(lat0)), rel=1e-12)
    lat, lon = shift_km(lat0, lon0, np.float32(0.001), np.float32(0.001))
    assert lat.dtype == lon.dtype == np.float64
    assert lat - np.float64(lat0) == pytest.approx(np.degrees(0.001 / EARTH_RADIUS_KM),
                                                   rel=1e-6)
