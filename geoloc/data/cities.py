"""The batch city list, data/cities.csv: city,lat,lon,radius_km,batch (radius_km may be empty
for a batch of one's own photos: see _parse_row)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.geo import group_mean_points, haversine_km, pairwise_km

CITIES_FILE = Path("data/cities.csv")
COLUMNS = ["city", "lat", "lon", "radius_km", "batch"]
# Batch names become folder names (data/raw/<batch>) and DVC stage keys (fetch@<batch>).
BATCH_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
BATCH_RULE = "a batch name is letters, digits, '_' and '-' (it names a folder and a DVC stage)"


class CitiesError(GeolocError, ValueError):
    """data/cities.csv is malformed; the message names the file and line."""


def load_cities(path: Path | str = CITIES_FILE) -> pd.DataFrame:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CitiesError(f"{path}: file not found") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header != COLUMNS:
        raise CitiesError(f"{path}:1: header must be {','.join(COLUMNS)}, got {header}")
    rows, seen = [], {}
    for line, fields in enumerate(reader, start=2):
        if not fields:
            continue
        row = _parse_row(fields, f"{path}:{line}")
        if row["city"] in seen:
            raise CitiesError(f"{path}:{line}: city {row['city']!r} already on line "
                              f"{seen[row['city']]}")
        seen[row["city"]] = line
        rows.append(row)
    if not rows:
        raise CitiesError(f"{path}: no cities")
    return pd.DataFrame(rows, columns=COLUMNS)


def cities_of_batch(cities: pd.DataFrame, batch: str) -> pd.DataFrame:
    rows = cities[cities["batch"] == batch].reset_index(drop=True)
    if rows.empty:
        known = ", ".join(sorted(cities["batch"].unique()))
        raise CitiesError(f"batch {batch!r} has no cities in {CITIES_FILE} (batches: {known})")
    return rows


def nearest_cities(lat, lon, cities: pd.DataFrame) -> list[str | None]:
    """For each point, the nearest city whose circle (radius_km) holds it; None outside all.
    A city without a radius (inf) holds every point."""
    if cities.empty or len(lat) == 0:
        return [None] * len(lat)
    km = pairwise_km(np.asarray(lat, float), np.asarray(lon, float),
                     cities["lat"].to_numpy(float), cities["lon"].to_numpy(float))
    km[km > cities["radius_km"].to_numpy(float)[None, :]] = np.inf
    names = cities["city"].to_numpy()
    return [str(names[j]) if np.isfinite(d) else None
            for j, d in zip(km.argmin(axis=1), km.min(axis=1), strict=True)]


def require_circles(cities: pd.DataFrame, source: str) -> None:
    """Fetching from `source` needs each city's circle: refuse a city without a radius."""
    open_cities = cities.loc[~np.isfinite(cities["radius_km"].to_numpy(float)), "city"]
    if len(open_cities):
        raise CitiesError(f"fetch.source {source} needs each city's radius_km, the circle it "
                          f"fetches: {', '.join(open_cities)} has none (only fetch.source local "
                          f"takes a city without one)")


def city_points(photos: pd.DataFrame) -> list[dict]:
    """Each city of the photos (a snapshot's training photos) at the mean position of its
    photos, by name: what a snapshot names its answers after. Photos without a city count for
    none."""
    named = photos.dropna(subset=["city"])
    if named.empty:
        return []
    names, groups = np.unique(named["city"].astype(str).to_numpy(), return_inverse=True)
    lat, lon = group_mean_points(named["lat"].to_numpy(float), named["lon"].to_numpy(float),
                                 groups)
    return [{"name": str(n), "lat": round(float(a), 5), "lon": round(float(o), 5)}
            for n, a, o in zip(names, lat, lon, strict=True)]


def nearest_city(cities: list[dict], lat: float, lon: float) -> tuple[str, float] | None:
    """(name, km) of the city of `cities` (city_points) nearest the point; None without any."""
    if not cities:
        return None
    km = haversine_km(lat, lon, [c["lat"] for c in cities], [c["lon"] for c in cities])
    best = int(np.argmin(km))
    return cities[best]["name"], float(km[best])


def _parse_row(fields: list[str], where: str) -> dict:
    if len(fields) != len(COLUMNS):
        raise CitiesError(f"{where}: expected {len(COLUMNS)} fields, got {len(fields)}")
    city, lat, lon, radius, batch = (f.strip() for f in fields)
    if not city:
        raise CitiesError(f"{where}: empty city name")
    # No radius: no circle, every photo of the batch goes to its nearest city (local photos
    # spread over a country need no hand-drawn circles); the other sources need one.
    row = {"city": city, "batch": batch, "radius_km": math.inf}
    checks = [("lat", lat, -90, 90), ("lon", lon, -180, 180)]
    if radius:
        checks.append(("radius_km", radius, 0.1, 100))
    for name, text, low, high in checks:
        try:
            value = float(text)
        except ValueError:
            raise CitiesError(f"{where}: {name} {text!r} is not a number") from None
        if not low <= value <= high:
            raise CitiesError(f"{where}: {name} {value} is outside [{low}, {high}]")
        row[name] = value
    if not BATCH_PATTERN.match(batch):
        raise CitiesError(f"{where}: batch {batch!r}: {BATCH_RULE}")
    return row
