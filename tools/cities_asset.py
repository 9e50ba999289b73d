"""Build geoloc/assets/cities.json, the city markers of the web demo's map, from data/cities.csv
(which is not part of the installed package). A test checks that the two agree.

    python tools/cities_asset.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geoloc.data.cities import load_cities
from geoloc.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def city_markers(cities_csv: Path) -> list[dict]:
    cities = load_cities(cities_csv)
    return [{"name": row.city, "lat": row.lat, "lon": row.lon} for row in cities.itertuples()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=Path, default=ROOT / "data/cities.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "geoloc/assets/cities.json")
    args = parser.parse_args()
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(city_markers(args.cities), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
