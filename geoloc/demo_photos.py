"""A folder of geotagged photos like a user's own, to try the local source and the own-photos
preset without photos, and to test them: drives through one city of data/cities.csv rendered
by the synthetic world, stopping to take the four faces of a panorama (FACES), each face a
JPEG with EXIF GPS and capture time, and photos.csv beside them with the columns a spreadsheet
of such photos has (image, lat, lon, sequence_id, captured_at, and pano_id and face, which
the local source ignores).

    python -m geoloc.demo_photos data/photos/demo --city Brest --drives 25 --stops 4
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from PIL import Image

from geoloc.data.cities import CitiesError, load_cities
from geoloc.errors import GeolocError
from geoloc.exif import written_exif
from geoloc.io import atomic_path
from geoloc.log import setup_logging
from geoloc.sources.synthetic import panorama_views

log = logging.getLogger(__name__)

CSV_NAME = "photos.csv"
COLUMNS = ("image", "lat", "lon", "sequence_id", "captured_at", "pano_id", "face")


def write_demo_folder(out: Path | str, city: str, *, drives: int, stops: int,
                      width: int = 256, seed: int = 0, cities: Path | str = "data/cities.csv",
                      ) -> Path:
    """Write drives x stops x 4 photos of `city` under `out` (one subfolder per drive) and
    out/photos.csv; return the CSV's path."""
    table = load_cities(cities)
    rows = table[table["city"] == city]
    if rows.empty:
        raise CitiesError(f"{city!r} is not a city of {cities}: add a line for it first")
    out = Path(out)
    listed = []
    for view in panorama_views(next(rows.itertuples(index=False)), seed, drives, stops, width):
        name = f"drive{view.drive:02d}/stop{view.stop:02d}_face{view.face}.jpg"
        with atomic_path(out / name) as tmp:
            Image.fromarray(view.pixels).save(
                tmp, format="JPEG", quality=90,
                exif=written_exif(view.lat, view.lon, view.captured_at))
        listed.append((name, f"{view.lat:.7f}", f"{view.lon:.7f}", f"drive{view.drive:02d}",
                       view.captured_at, f"{view.drive:02d}-{view.stop:02d}", view.face))
    with atomic_path(out / CSV_NAME) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows(listed)
    log.info("%d photos of %s (%d drives of %d stops, 4 faces each) in %s", len(listed), city,
             drives, stops, out)
    return out / CSV_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoloc.demo_photos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write, e.g. data/photos/demo")
    parser.add_argument("--city", required=True, help="a city of data/cities.csv")
    parser.add_argument("--drives", type=int, default=25)
    parser.add_argument("--stops", type=int, default=4, help="panoramas per drive")
    parser.add_argument("--width", type=int, default=256, help="photo width, px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        write_demo_folder(args.out, args.city, drives=args.drives, stops=args.stops,
                          width=args.width, seed=args.seed)
    except GeolocError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
