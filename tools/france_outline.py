"""Build geoloc/assets/france.geojson, the offline base map of the dataset plots.

Source: Natural Earth 1:50m admin-0 countries (version 4.1.0, public domain, naturalearthdata.com),
as TopoJSON in the npm package world-atlas 2.0.2 (countries-50m.json); `npm pack world-atlas@2.0.2`
fetches it. The output keeps metropolitan France (with Corsica, flagged "focus": true) and the
parts of its neighbours that fall near it, rounded to 3 decimals (about 100 m) and written compact
and sorted, so the same input always gives the same bytes.

    python tools/france_outline.py /tmp/wa/package/countries-50m.json geoloc/assets/france.geojson
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geoloc.io import atomic_path

FRANCE = "France"
NEIGHBOURS = {
    "Andorra", "Belgium", "Germany", "Italy", "Luxembourg", "Monaco", "Netherlands", "Spain",
    "Switzerland", "United Kingdom",
}
# (lon_min, lat_min, lon_max, lat_max). A part of France is kept if it lies inside the first box,
# which drops Guiana, Réunion and the other overseas parts; a neighbour's part is kept if it
# touches the second, which drops what a map of France never shows (the Canaries, Sicily, ...).
METROPOLE = (-6.0, 41.0, 11.0, 52.0)
CONTEXT = (-7.0, 40.0, 12.0, 53.0)
DECIMALS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topojson", type=Path, help="world-atlas countries-50m.json")
    parser.add_argument("output", type=Path, help="GeoJSON to write")
    args = parser.parse_args()

    topology = json.loads(args.topojson.read_text())
    text = json.dumps(outline(topology), separators=(",", ":"), ensure_ascii=False)
    with atomic_path(args.output) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({len(text.encode()) // 1024} KB)")


def outline(topology: dict) -> dict:
    """The FeatureCollection: France first, then the neighbours by name."""
    arcs = decode_arcs(topology)
    features = []
    for geometry in topology["objects"]["countries"]["geometries"]:
        name = geometry.get("properties", {}).get("name")
        if name == FRANCE:
            parts = [p for p in polygons(geometry, arcs) if _inside(_bbox(p), METROPOLE)]
        elif name in NEIGHBOURS:
            parts = [p for p in polygons(geometry, arcs) if _touches(_bbox(p), CONTEXT)]
        else:
            continue
        if not parts:
            continue
        features.append({
            "type": "Feature",
            "properties": {"name": name, "focus": name == FRANCE},
            "geometry": {"type": "MultiPolygon", "coordinates": parts},
        })
    missing = ({FRANCE} | NEIGHBOURS) - {f["properties"]["name"] for f in features}
    if missing:
        raise SystemExit(f"not found in the TopoJSON: {', '.join(sorted(missing))}")
    features.sort(key=lambda f: (not f["properties"]["focus"], f["properties"]["name"]))
    return {"type": "FeatureCollection", "features": features}


def decode_arcs(topology: dict) -> list[list[tuple[float, float]]]:
    """Undo the quantisation: each arc is a start point then deltas, in integer grid units."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    decoded = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        decoded.append(points)
    return decoded


def polygons(geometry: dict, arcs: list) -> list[list[list[list[float]]]]:
    """A Polygon or MultiPolygon as a list of polygons, each a list of rounded, closed rings."""
    if geometry["type"] == "Polygon":
        shapes = [geometry["arcs"]]
    elif geometry["type"] == "MultiPolygon":
        shapes = geometry["arcs"]
    else:
        return []
    return [[_ring(indices, arcs) for indices in shape] for shape in shapes]


def _ring(indices: list[int], arcs: list) -> list[list[float]]:
    points: list[tuple[float, float]] = []
    for index in indices:
        # A negative index ~i walks arc i backwards; consecutive arcs share their joining point.
        arc = arcs[index] if index >= 0 else arcs[~index][::-1]
        points.extend(arc if not points else arc[1:])
    ring: list[list[float]] = []
    for lon, lat in points:
        point = [round(lon, DECIMALS), round(lat, DECIMALS)]
        if not ring or point != ring[-1]:  # rounding merges close points; keep one of each
            ring.append(point)
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def _bbox(polygon: list) -> tuple[float, float, float, float]:
    lons = [p[0] for p in polygon[0]]
    lats = [p[1] for p in polygon[0]]
    return min(lons), min(lats), max(lons), max(lats)


def _inside(box: tuple, frame: tuple) -> bool:
    return frame[0] <= box[0] and frame[1] <= box[1] and box[2] <= frame[2] and box[3] <= frame[3]


def _touches(box: tuple, frame: tuple) -> bool:
    return box[0] <= frame[2] and frame[0] <= box[2] and box[1] <= frame[3] and frame[1] <= box[3]


if __name__ == "__main__":
    main()
