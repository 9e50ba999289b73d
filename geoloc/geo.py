"""Distances on the sphere and H3 helpers (h3 v4 API)."""

from __future__ import annotations

import h3
import numpy as np
from scipy.spatial import cKDTree

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; broadcasts like numpy."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in
                              (lat1, lon1, lat2, lon2))
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def pairwise_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Distance matrix (len(lat1) x len(lat2)) in km."""
    return haversine_km(np.asarray(lat1)[:, None], np.asarray(lon1)[:, None],
                        np.asarray(lat2)[None, :], np.asarray(lon2)[None, :])


def nearest_km(lat, lon, ref_lat, ref_lon) -> np.ndarray:
    """Distance in km from each point to its nearest reference point.

    A k-d tree over unit vectors: the nearest by chord is the nearest on the sphere, so this
    is exact and takes O(n log n), where pairwise_km would need n x m memory."""
    if len(ref_lat) == 0:
        return np.full(len(lat), np.inf)
    chord, _ = cKDTree(_unit_vectors(ref_lat, ref_lon)).query(_unit_vectors(lat, lon))
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))


def _unit_vectors(lat, lon) -> np.ndarray:
    lat, lon = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat, lon))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def cells_of(lat, lon, resolution: int) -> list[str]:
    """H3 cell id (hex string) of each point."""
    return [h3.latlng_to_cell(float(a), float(o), resolution)
            for a, o in zip(lat, lon, strict=True)]


def cell_center(cell: str) -> tuple[float, float]:
    """(lat, lon) of the cell's centre."""
    return h3.cell_to_latlng(cell)


def cell_resolution(cell: str) -> int:
    return h3.get_resolution(cell)


def offsets_km(lat, lon, lat0, lon0) -> tuple[np.ndarray, np.ndarray]:
    """(east_km, north_km) of points from (lat0, lon0), all in degrees; broadcasts like numpy.

    An equirectangular projection centred on (lat0, lon0): east = R dlon cos(lat0),
    north = R dlat, with dlon wrapped to [-pi, pi) so the antimeridian is no jump. shift_km
    inverts it exactly, so a point -> offset -> point round trip loses nothing; what is
    approximate is hypot(east, north) as a distance. Against the great circle it is off by
    0.003 m at 1 km, 3 m at 10 km and 76 m (0.15 %) at 50 km at latitude 45 (131 m at 60;
    the error grows as d^2 tan(lat0)), which is small next to a cell's size. Not for use
    within a few degrees of a pole, where cos(lat0) goes to 0.
    """
    lat, lon, lat0, lon0 = (np.radians(np.asarray(v, dtype=np.float64)) for v in
                            (lat, lon, lat0, lon0))
    dlon = np.mod(lon - lon0 + np.pi, 2 * np.pi) - np.pi
    return EARTH_RADIUS_KM * dlon * np.cos(lat0), EARTH_RADIUS_KM * (lat - lat0)


def shift_km(lat0, lon0, east_km, north_km) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of the point (east_km, north_km) from (lat0, lon0): the inverse
    of offsets_km, longitude wrapped to [-180, 180)."""
    lat0, lon0, east_km, north_km = (np.asarray(v, dtype=np.float64) for v in
                                     (lat0, lon0, east_km, north_km))
    lat = lat0 + np.degrees(north_km / EARTH_RADIUS_KM)
    lon = lon0 + np.degrees(east_km / (EARTH_RADIUS_KM * np.cos(np.radians(lat0))))
    return lat, np.mod(lon + 180.0, 360.0) - 180.0


def mean_point(lat, lon, weights) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean positions on the sphere: rows of (lat, lon, weights), N x k each, give N
    points, the normalised weighted sum of the k unit vectors (a chordal mean, which unlike a
    mean of degrees is right across the antimeridian)."""
    vectors = (_unit_vectors(lat, lon) * np.asarray(weights, dtype=np.float64)[..., None]).sum(-2)
    return _lat_lon(vectors)


def group_mean_points(lat, lon, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chordal mean position of each group of points (`groups` numbers them 0..G-1)."""
    sums = np.zeros((int(groups.max()) + 1, 3))
    np.add.at(sums, groups, _unit_vectors(lat, lon))
    return _lat_lon(sums)


def _lat_lon(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = np.moveaxis(vectors, -1, 0)
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))
