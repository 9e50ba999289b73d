"""A folder of the user's own geotagged JPEGs, imported as one batch.

A photo's position comes from its EXIF GPS tags or, for the photos a CSV lists (header
``image,lat,lon`` plus optional ``sequence_id,captured_at,creator,group``; other columns are
ignored), from that CSV. A photo joins the nearest city of the batch whose radius holds it.
Photos without a position, files that do not decode, CSV rows naming no file and photos outside
every city of the batch are skipped, counted and named in one line per reason.

A 360 panorama (params `panoramas.detect`: by its XMP, or its 2:1 shape) is cut into the views
of one place (geoloc.panorama), each view a photo of the batch; one too small to cut, or whose XMP
block does not parse, is skipped and counted like the others.

The files are copied into the batch under a content id, so the same photo is the same image
wherever it lives; the user's files are only read.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import pandas as pd
from PIL import Image
from PIL.ExifTags import IFD, Base

from geoloc.data.cities import nearest_cities
from geoloc.data.manifest import SCHEMA, conform
from geoloc.errors import GeolocError
from geoloc.exif import capture_time, compass, gps_position, ms, text
from geoloc.io import atomic_path
from geoloc.panorama import PanoramaError, is_panorama, view_size, views_of
from geoloc.params import LocalParams, PanoramaParams
from geoloc.sources.run import FetchRun

log = logging.getLogger(__name__)

SOURCE = "local"
JPEG_SUFFIXES = (".jpg", ".jpeg")
CSV_REQUIRED = ("image", "lat", "lon")
CSV_OPTIONAL = ("sequence_id", "captured_at", "creator", "group")
MAX_LISTED = 20                      # paths named in a warning; the rest are only counted
ROTATED = (5, 6, 7, 8)               # EXIF orientations shown turned by 90 degrees

SKIP_REASONS = {
    "unreadable": "do not decode as JPEG images",
    "no_position": "have no usable GPS position (EXIF or CSV)",
    "missing_file": "are listed in the CSV but are not in the folder",
    "outside_cities": "lie outside every city circle of this batch in data/cities.csv (they "
                      "may belong to another batch)",
    "panorama_too_small": "are 360 panoramas too small to cut into views (panoramas)",
    "broken_xmp": "have an XMP block that does not parse, so whether they are panoramas is "
                  "unknown (set panoramas.detect to always or never to decide)",
}


class LocalSourceError(GeolocError, ValueError):
    """fetch.local names a missing folder or a malformed CSV."""


class _Skip(Exception):
    """A photo that cannot be imported, by kind (the key of the run's counters)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class _Listed:
    """What the CSV says about one photo; NOT_LISTED for the photos it does not list."""
    lat: float | None
    lon: float | None
    sequence_id: str | None
    captured_at: int | None
    creator: str | None
    group: str | None


NOT_LISTED = _Listed(lat=None, lon=None, sequence_id=None, captured_at=None, creator=None,
                     group=None)


@dataclasses.dataclass(frozen=True)
class _Photo:
    path: Path
    image_id: str
    lat: float
    lon: float
    captured_at: int
    sequence_id: str
    compass_angle: float | None
    creator: str | None
    view_group: str | None
    width: int
    height: int
    panorama: bool   # cut into views when placed in the batch


def fetch(cities: pd.DataFrame, cfg: LocalParams, run: FetchRun) -> pd.DataFrame:
    """Import the photos of cfg.folder that lie in a city of `cities` (the rows of one batch)
    into run.image_dir/<image_id>.jpg and return their manifest rows."""
    folder = _folder(cfg.folder)
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    listed = _read_csv(Path(cfg.csv), folder, skipped) if cfg.csv else {}
    photos = _read_photos(folder, listed, skipped, run.panoramas)
    cities_of = nearest_cities([p.lat for p in photos], [p.lon for p in photos], cities)
    rows = []
    for photo, city in zip(photos, cities_of, strict=True):
        if city is None:
            skipped["outside_cities"].append(photo.path.relative_to(folder).as_posix())
            continue
        if photo.panorama:
            rows += _place_views(photo, city, run)
            continue
        _place(photo.path, run.image_dir / f"{photo.image_id}.jpg", run)
        rows.append(_row(photo, city, run.batch))
    _report(folder, rows, skipped, run)
    return conform(pd.DataFrame(rows, columns=list(SCHEMA)))


def _folder(name: str) -> Path:
    folder = Path(name)
    if not folder.is_dir():
        raise LocalSourceError(
            f"fetch.local.folder: {name!r} is not a folder (looked for {folder.absolute()}; "
            f"relative paths start at the project root). Point it at the folder of your photos.")
    return folder


def _jpegs(folder: Path) -> list[Path]:
    found = (p for p in folder.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES and p.is_file())
    paths = sorted(found, key=lambda p: p.relative_to(folder).parts)
    if not paths:
        raise LocalSourceError(f"fetch.local.folder: no .jpg/.jpeg files under {folder}")
    return paths


def _read_photos(folder: Path, listed: dict[str, _Listed], skipped: dict[str, list[str]],
                 cutting: PanoramaParams) -> list[_Photo]:
    """The importable photos, each content once (the first path in sorted order wins)."""
    photos, seen = [], set()
    for path in _jpegs(folder):
        rel = path.relative_to(folder).as_posix()
        try:
            photo = _read_photo(path, folder, listed.get(rel, NOT_LISTED), cutting)
        except _Skip as skip:
            skipped[skip.kind].append(rel)
            continue
        if photo.image_id in seen:
            skipped["duplicate"].append(rel)
            continue
        seen.add(photo.image_id)
        photos.append(photo)
    return photos


def _read_photo(path: Path, folder: Path, listed: _Listed, cutting: PanoramaParams) -> _Photo:
    data = path.read_bytes()
    exif, gps, details, (width, height), panorama = _decode(data, cutting.detect)
    position = (listed.lat, listed.lon) if listed.lat is not None else gps_position(gps)
    if position is None:
        raise _Skip("no_position")
    if panorama:
        try:
            view_size(width, height, cutting)
        except PanoramaError:
            raise _Skip("panorama_too_small") from None
    if exif.get(Base.Orientation) in ROTATED:
        width, height = height, width
    return _Photo(
        path=path,
        image_id=hashlib.sha256(data).hexdigest()[:16],
        lat=position[0],
        lon=position[1],
        captured_at=_first(listed.captured_at, capture_time(details), 0),
        # One folder is taken as one drive: merging drives costs nothing but split freedom,
        # while cutting one in two would leak near-identical frames between splits. The prefix
        # keeps local ids apart from other sources' ids.
        sequence_id="local:" + _first(listed.sequence_id,
                                      path.parent.relative_to(folder).as_posix()),
        compass_angle=compass(gps),
        creator=_first(listed.creator, text(exif.get(Base.Artist))),
        view_group=None if listed.group is None else "local:" + listed.group,
        width=width,
        height=height,
        panorama=panorama,
    )


def _decode(data: bytes, detect: str) -> tuple[Image.Exif, dict, dict, tuple[int, int], bool]:
    """The EXIF tags (main, GPS and Exif folders), stored pixel size and whether it is a
    panorama (`detect`: panoramas.detect) of a JPEG, after checking that all of it
    decodes."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            exif, size = img.getexif(), img.size
            # Read here, where a corrupt EXIF block is caught like corrupt pixels.
            gps, details = exif.get_ifd(IFD.GPSInfo), exif.get_ifd(IFD.Exif)
            panorama = is_panorama(img, detect)
            # Decoding at 1/8 scale still reads every byte, so truncation shows, but costs less.
            img.draft(img.mode, (1, 1))
            img.load()
    except PanoramaError:
        raise _Skip("broken_xmp") from None
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError):
        raise _Skip("unreadable") from None
    return exif, gps, details, size, panorama


def _place_views(photo: _Photo, city: str, run: FetchRun) -> list[dict]:
    """Cut a panorama into its views, write each into the batch, and return their rows: one
    view group (the CSV's `group`, if it gives one, else the panorama's own), each view
    facing its own compass heading. A view's id comes from the panorama's content id and its
    number (two views may look alike: an empty sky)."""
    with Image.open(photo.path) as image:
        views = views_of(image, photo.compass_angle, run.panoramas)
    group = photo.view_group or f"local:panorama:{photo.image_id}"
    rows = []
    for number, view in enumerate(views):
        image_id = hashlib.sha256(f"{photo.image_id}:{number}".encode()).hexdigest()[:16]
        run.budget.reserve(len(view.data))
        with atomic_path(run.image_dir / f"{image_id}.jpg") as tmp:
            tmp.write_bytes(view.data)
        rows.append(_row(dataclasses.replace(
            photo, image_id=image_id, compass_angle=view.heading, width=view.size,
            height=view.size, view_group=group), city, run.batch))
    return rows


def _row(photo: _Photo, city: str, batch: str) -> dict:
    return {
        "image_id": photo.image_id, "lat": photo.lat, "lon": photo.lon,
        "captured_at": photo.captured_at, "sequence_id": photo.sequence_id,
        "compass_angle": photo.compass_angle, "creator": photo.creator, "source": SOURCE,
        "city": city, "batch": batch, "path": f"images/{photo.image_id}.jpg",
        "width": photo.width, "height": photo.height, "view_group": photo.view_group,
    }


def _first(*values):
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


# ------------------------------------------------------------------------------------- CSV

def _read_csv(path: Path, folder: Path, skipped: dict[str, list[str]]) -> dict[str, _Listed]:
    """The CSV's rows keyed by the photo's path relative to the folder (the CSV names photos
    relative to its own folder); a row naming no file is skipped (under "missing_file")."""
    reader = csv.DictReader(io.StringIO(_csv_file_text(path), newline=""))
    _check_header(path, reader)
    base = Path(os.path.relpath(path.parent, folder))
    listed: dict[str, _Listed] = {}
    lines: dict[str, int] = {}
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            rel, info = _parse_row(row, base, folder, where)
            if rel in lines:
                raise LocalSourceError(f"{where}: {rel} is listed a second time (first on line "
                                       f"{lines[rel]})")
            lines[rel] = reader.line_num
            if (folder / rel).is_file():
                listed[rel] = info
            else:
                skipped["missing_file"].append(f"{rel} (line {reader.line_num})")
    except csv.Error as exc:
        raise LocalSourceError(f"{path}:{reader.line_num}: {exc}") from None
    return listed


def _csv_file_text(path: Path) -> str:
    if not path.is_file():
        raise LocalSourceError(
            f"fetch.local.csv: {str(path)!r} not found (looked for {path.absolute()}; relative "
            f"paths start at the project root). Fix the path, or set it to null to use EXIF GPS.")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")   # -sig: spreadsheets often start UTF-8 with a BOM
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LocalSourceError(f"{path}:{line}: not UTF-8 text; save the CSV as UTF-8") from None


def _check_header(path: Path, reader: csv.DictReader) -> None:
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in CSV_REQUIRED if c not in reader.fieldnames]
    if missing or len(set(reader.fieldnames)) != len(reader.fieldnames):
        raise LocalSourceError(
            f"{path}:1: the header must have {','.join(CSV_REQUIRED)} and may have "
            f"{','.join(CSV_OPTIONAL)}, each once; got {','.join(reader.fieldnames) or 'nothing'}")
    ignored = [c for c in reader.fieldnames if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if ignored:
        log.info("%s: ignoring the columns %s (read: %s)", path, ", ".join(ignored),
                 ", ".join(c for c in reader.fieldnames if c not in ignored))


def _parse_row(row: dict, base: Path, folder: Path, where: str) -> tuple[str, _Listed]:
    if None in row:   # DictReader's key for fields beyond the header
        raise LocalSourceError(f"{where}: more fields than the header names")
    return _listed_image(row["image"], base, folder, where), _Listed(
        lat=_csv_number(row["lat"], "lat", 90, where),
        lon=_csv_number(row["lon"], "lon", 180, where),
        sequence_id=_csv_text(row.get("sequence_id")),
        captured_at=_csv_time(row.get("captured_at"), where),
        creator=_csv_text(row.get("creator")),
        group=_csv_text(row.get("group")),
    )


def _csv_text(text: str | None) -> str | None:
    return (text or "").strip() or None


def _listed_image(text: str | None, base: Path, folder: Path, where: str) -> str:
    """The path of an image listed in a CSV in folder/base, relative to the folder, as the
    folder scan spells it."""
    text = (text or "").strip()
    rel = Path(os.path.normpath(base / text)) if text else None
    if rel is None or Path(text).is_absolute() or ".." in rel.parts[:1]:
        raise LocalSourceError(f"{where}: image {text!r} must be a path inside {folder} "
                               f"(from the CSV's own folder)")
    if rel.suffix.lower() not in JPEG_SUFFIXES:
        raise LocalSourceError(f"{where}: image {text!r} is not a .jpg/.jpeg file")
    return rel.as_posix()


def _csv_number(text: str | None, name: str, limit: float, where: str) -> float:
    text = (text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise LocalSourceError(f"{where}: {name} {text!r} is not a number") from None
    if not -limit <= value <= limit:   # NaN fails this too
        raise LocalSourceError(f"{where}: {name} {value} is outside [-{limit}, {limit}]")
    return value


def _csv_time(text: str | None, where: str) -> int | None:
    """captured_at as ms since 1970 or an ISO-8601 time (UTC when it has no offset)."""
    text = (text or "").strip()
    if not text:
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    try:
        return ms(dt.datetime.fromisoformat(text))
    except ValueError:
        raise LocalSourceError(f"{where}: captured_at {text!r} is neither ms since 1970 nor an "
                               f"ISO-8601 time like 2021-05-01T12:30:00+02:00") from None


# ----------------------------------------------------------------------- cities and output

def _place(src: Path, dest: Path, run: FetchRun) -> None:
    """Copy, never link: DVC may make its cached files read-only, and a hard link would carry
    that onto the user's own photo."""
    run.budget.reserve(src.stat().st_size)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _report(folder: Path, rows: list[dict], skipped: dict[str, list[str]], run: FetchRun) -> None:
    for kind, paths in sorted(skipped.items()):
        if paths:
            run.count(kind, len(paths))
    for kind, reason in SKIP_REASONS.items():
        _warn_paths(folder, skipped[kind], reason)
    if skipped["duplicate"]:
        log.info("%d files in %s repeat another photo's content and were kept once",
                 len(skipped["duplicate"]), folder)
    sequences = len({row["sequence_id"] for row in rows})
    by_kind = ", ".join(f"{kind}: {len(paths)}" for kind, paths in sorted(skipped.items())
                        if paths)
    log.info("local: imported %d photos (%d sequences) from %s into %s, skipped %d%s",
             len(rows), sequences, folder, run.batch, sum(map(len, skipped.values())),
             f" ({by_kind})" if by_kind else "")


def _warn_paths(folder: Path, paths: list[str], reason: str) -> None:
    if not paths:
        return
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    log.warning("%d photos in %s %s and were skipped: %s%s", len(paths), folder, reason,
                ", ".join(paths[:MAX_LISTED]), more)
