"""A folder of the user's own photos (geoloc.sources.local): EXIF and CSV positions, skips and
their reports, city assignment, content ids, links or copies within the disk budget."""

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from PIL import Image
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational

from geoloc.data.manifest import SCHEMA
from geoloc.errors import GeolocError
from geoloc.params import LocalParams, load_params
from geoloc.sources import local
from geoloc.sources.run import DiskBudget, DiskBudgetError, FetchRun

CITIES = pd.DataFrame({
    "city": ["Brest", "Paris", "Boulogne-Billancourt", "Santiago"],
    "lat": [48.3904, 48.8566, 48.8397, -33.4489],
    "lon": [-4.4861, 2.3522, 2.2399, -70.6693],
    "radius_km": [4.0, 10.0, 5.0, 15.0],
    "batch": ["batch01"] * 4,
})
BREST = (48.3904, -4.4861)
SANTIAGO = (-33.4489, -70.6693)


def make_run(tmp_path, max_gb: float = 1.0, out: str = "out", detect: str = "auto") -> FetchRun:
    store = tmp_path / "store"
    panoramas = load_params(ROOT / "params.yaml").panoramas
    return FetchRun(batch="batch01", out_dir=tmp_path / out, store_dir=store,
                    budget=DiskBudget(store, max_gb=max_gb),
                    panoramas=dataclasses.replace(panoramas, detect=detect))


def dms(degrees: float) -> tuple[float, float, float]:
    """Unsigned degrees, minutes, seconds, the way cameras write them."""
    degrees = abs(degrees)
    d = int(degrees)
    m = int((degrees - d) * 60)
    return float(d), float(m), round((degrees - d - m / 60) * 3600, 4)


def write_photo(path, position=None, *, size=(40, 30), when=None, offset=None, artist=None,
                direction=None, orientation=None, gps_tags=()):
    """A small JPEG with the given EXIF tags; its colour comes from its path, so photos differ."""
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps.update(gps_tags)
    if position is not None:
        lat, lon = position
        gps[GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        gps[GPS.GPSLatitude] = dms(lat)
        gps[GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        gps[GPS.GPSLongitude] = dms(lon)
    if direction is not None:
        gps[GPS.GPSImgDirection] = direction
    details = exif.get_ifd(IFD.Exif)
    if when is not None:
        details[Base.DateTimeOriginal] = when
    if offset is not None:
        details[Base.OffsetTimeOriginal] = offset
    if artist is not None:
        exif[Base.Artist] = artist
    if orientation is not None:
        exif[Base.Orientation] = orientation
    colour = tuple(hashlib.sha256(str(path).encode()).digest()[:3])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", exif=exif)
    return path


def fetch(tmp_path, folder, csv=None, run=None) -> pd.DataFrame:
    run = run or make_run(tmp_path)
    cfg = LocalParams(folder=str(folder), csv=None if csv is None else str(csv))
    return local.fetch(CITIES, cfg, run)


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def by_name(df: pd.DataFrame, folder, names: dict) -> pd.DataFrame:
    """Manifest rows indexed by the name a test gave each photo."""
    ids = {hashlib.sha256((folder / rel).read_bytes()).hexdigest()[:16]: name
           for name, rel in names.items()}
    return df.set_index(df["image_id"].map(ids))


def test_exif_position_time_artist_direction_and_orientation(tmp_path):
    folder = tmp_path / "photos"
    brest = write_photo(folder / "brest.jpg", (BREST[0] + 0.01, BREST[1]),
                        when="2021:05:01 12:30:00", offset="+02:00", artist="Ann",
                        direction=123.5, orientation=6)
    write_photo(folder / "santiago.jpg", SANTIAGO)
    write_photo(folder / "drive 2" / "naive.JPEG", BREST, when="2020:01:02 03:04:05")
    gps = Image.open(brest).getexif().get_ifd(IFD.GPSInfo)   # Pillow wrote what we meant
    assert gps[GPS.GPSLongitudeRef] == "W" and gps[GPS.GPSLongitude][2] > 0

    df = fetch(tmp_path, folder)
    assert dict(df.dtypes.astype(str)) == SCHEMA
    rows = by_name(df, folder, {"brest": "brest.jpg", "santiago": "santiago.jpg",
                                "naive": "drive 2/naive.JPEG"})
    b, s, n = rows.loc["brest"], rows.loc["santiago"], rows.loc["naive"]
    assert (b["lat"], b["lon"]) == pytest.approx((BREST[0] + 0.01, BREST[1]), abs=1e-6)
    assert (s["lat"], s["lon"]) == pytest.approx(SANTIAGO, abs=1e-6)
    assert b["captured_at"] == ms("2021-05-01T10:30:00+00:00")
    assert n["captured_at"] == ms("2020-01-02T03:04:05+00:00")
    assert s["captured_at"] == 0
    assert (b["creator"], b["compass_angle"]) == ("Ann", 123.5)
    assert pd.isna(s["creator"]) and pd.isna(s["compass_angle"])
    assert (b["width"], b["height"]) == (30, 40)      # orientation 6: shown turned
    assert (s["width"], s["height"]) == (40, 30)
    assert list(rows.loc[["brest", "santiago", "naive"], "city"]) == [
        "Brest", "Santiago", "Brest"]
    assert list(rows.loc[["brest", "naive"], "sequence_id"]) == ["local:.", "local:drive 2"]
    assert set(df["source"]) == {"local"} and set(df["batch"]) == {"batch01"}
    assert list(df["path"]) == [f"images/{i}.jpg" for i in df["image_id"]]


def test_csv_overrides_exif_and_gives_sequence_and_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)    # relative paths start at the current folder
    folder = tmp_path / "photos"
    write_photo(folder / "a.jpg", BREST, when="2021:05:01 12:30:00")
    write_photo(folder / "sub" / "b.jpeg")
    write_photo(folder / "sub" / "c.jpg", BREST, when="2019:01:01 00:00:00")
    write_photo(folder / "d.jpg", SANTIAGO)
    (folder / "positions.csv").write_text(
        "image,lat,lon,sequence_id,captured_at\n"
        "a.jpg,48.8566,2.3522,trip1,1620000000000\n"
        "sub/b.jpeg,48.8397,2.2399,trip1,2021-05-01T12:30:00+02:00\n"
        "./sub/c.jpg,48.8600,2.3500,,2021-05-01T10:30:00\n")

    df = fetch(tmp_path, "photos", csv="photos/positions.csv")
    rows = by_name(df, folder, {"a": "a.jpg", "b": "sub/b.jpeg", "c": "sub/c.jpg",
                                "d": "d.jpg"})
    assert (rows.loc["a", "lat"], rows.loc["a", "lon"]) == (48.8566, 2.3522)
    assert list(rows.loc[["a", "b", "c", "d"], "city"]) == [
        "Paris", "Boulogne-Billancourt", "Paris", "Santiago"]
    assert list(rows.loc[["a", "b", "c", "d"], "sequence_id"]) == [
        "local:trip1", "local:trip1", "local:sub", "local:."]
    assert list(rows.loc[["a", "b", "c", "d"], "captured_at"]) == [
        1620000000000, ms("2021-05-01T10:30:00+00:00"), ms("2021-05-01T10:30:00+00:00"), 0]


def test_photos_without_position_or_unreadable_are_skipped_and_reported(tmp_path, caplog):
    folder = tmp_path / "photos"
    write_photo(folder / "good.jpg", BREST)
    for i in range(22):
        write_photo(folder / "nogps" / f"{i:02d}.jpg")
    write_photo(folder / "nogps" / "far_north.jpg", (95.0, 2.0))
    write_photo(folder / "zero.jpg", gps_tags={
        GPS.GPSLatitudeRef: "N", GPS.GPSLongitudeRef: "W", GPS.GPSLongitude: dms(4.48),
        GPS.GPSLatitude: (IFDRational(48, 1), IFDRational(23, 0), IFDRational(0, 1))})
    (folder / "notes.jpg").write_bytes(b"not a picture")
    whole = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpeg").write_bytes(whole[: len(whole) * 3 // 4])
    run = make_run(tmp_path)

    with caplog.at_level(logging.INFO, logger="geoloc.sources.local"):
        df = fetch(tmp_path, folder, run=run)
    assert len(df) == 1
    assert run.counts == {"no_position": 24, "unreadable": 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    no_position = next(w for w in warnings if "no usable GPS position" in w)
    assert "24 photos" in no_position and "and 4 more" in no_position
    assert "nogps/00.jpg" in no_position and "zero.jpg" not in no_position   # past the first 20
    unreadable = next(w for w in warnings if "do not decode" in w)
    assert "notes.jpg" in unreadable and "truncated.jpeg" in unreadable
    summary = caplog.records[-1].getMessage()
    assert "imported 1 photos (1 sequences)" in summary
    assert "skipped 26 (no_position: 24, unreadable: 2)" in summary


def test_nearest_city_within_radius_and_outside_cities_counted(tmp_path, caplog):
    folder = tmp_path / "photos"
    write_photo(folder / "both.jpg", (48.845, 2.27))     # in Paris' and Boulogne's radius
    write_photo(folder / "paris.jpg", (48.87, 2.36))
    write_photo(folder / "lyon.jpg", (45.76, 4.83))
    run = make_run(tmp_path)

    with caplog.at_level(logging.INFO, logger="geoloc.sources.local"):
        df = fetch(tmp_path, folder, run=run)
    rows = by_name(df, folder, {"both": "both.jpg", "paris": "paris.jpg"})
    assert rows.loc["both", "city"] == "Boulogne-Billancourt"
    assert rows.loc["paris", "city"] == "Paris"
    assert len(df) == 2 and run.counts == {"outside_cities": 1}
    (outside,) = [r.getMessage() for r in caplog.records if "outside every city" in r.getMessage()]
    assert outside.startswith("1 photos in ") and outside.endswith("skipped: lyon.jpg")


def test_csv_extra_columns_creator_group_and_rows_naming_no_file(tmp_path, caplog):
    """What a user's spreadsheet holds: columns this project does not read (named once in
    the log), a creator for photos whose EXIF has none, the faces of a panorama as one group,
    and rows of photos since removed from the folder (skipped, named, counted)."""
    folder = tmp_path / "photos"
    for face in range(4):
        write_photo(folder / f"pano1_{face}.jpg", artist="Exif Artist" if face == 0 else None)
    (folder / "photos.csv").write_text(
        "image,lat,lon,sequence_id,captured_at,pano_id,face,creator,group\n"
        + "".join(f"pano1_{f}.jpg,48.39,-4.48,s1,1620000000000,p1,{f},ann,p1\n"
                  for f in range(4))
        + "gone.jpg,48.39,-4.48,s1,1620000000000,p2,0,ann,p2\n")
    run = make_run(tmp_path)

    with caplog.at_level(logging.INFO, logger="geoloc.sources.local"):
        df = fetch(tmp_path, folder, csv=folder / "photos.csv", run=run)
    assert len(df) == 4 and run.counts == {"missing_file": 1}
    assert set(df["creator"]) == {"ann"}          # the CSV's, before EXIF's Artist
    assert set(df["view_group"]) == {"local:p1"} and set(df["sequence_id"]) == {"local:s1"}
    messages = [r.getMessage() for r in caplog.records]
    (ignored,) = [m for m in messages if "ignoring the columns" in m]
    assert "pano_id, face (read: image, lat, lon, sequence_id, captured_at, creator, group)" \
        in ignored
    (missing,) = [m for m in messages if "listed in the CSV but are not in the folder" in m]
    assert missing.endswith("skipped: gone.jpg (line 6)")


def test_without_group_column_view_group_is_null(tmp_path):
    write_photo(tmp_path / "photos" / "a.jpg", BREST, artist="Bob")
    df = fetch(tmp_path, tmp_path / "photos")
    assert df["view_group"].isna().all() and list(df["creator"]) == ["Bob"]


def test_duplicates_kept_once_deterministic_and_files_unchanged(tmp_path):
    folder = tmp_path / "photos"
    write_photo(folder / "a.jpg", BREST)
    write_photo(folder / "b.jpg", (BREST[0], BREST[1] + 0.01))
    (folder / "zz").mkdir()
    shutil.copyfile(folder / "a.jpg", folder / "zz" / "copy.jpg")
    before = {p: p.read_bytes() for p in folder.rglob("*.jpg")}
    first, second = make_run(tmp_path, out="one"), make_run(tmp_path, out="two")

    df = fetch(tmp_path, folder, run=first)
    pd.testing.assert_frame_equal(df, fetch(tmp_path, folder, run=second))
    assert len(df) == 2 and first.counts == {"duplicate": 1}
    assert set(df["sequence_id"]) == {"local:."}             # the first path in sorted order
    assert {p: p.read_bytes() for p in folder.rglob("*.jpg")} == before
    out = {p.name: p.read_bytes() for p in first.image_dir.iterdir()}
    assert out == {f"{hashlib.sha256(b).hexdigest()[:16]}.jpg": b
                   for p, b in before.items() if p.parent == folder}


def test_photos_are_copied_within_the_disk_budget(tmp_path):
    folder = tmp_path / "photos"
    src = write_photo(folder / "a.jpg", BREST)
    run = make_run(tmp_path)
    df = fetch(tmp_path, folder, run=run)
    copied = run.image_dir / f"{df['image_id'][0]}.jpg"
    assert not os.path.samefile(copied, src) and copied.read_bytes() == src.read_bytes()
    assert run.budget.used == src.stat().st_size

    with pytest.raises(DiskBudgetError, match="fetch.max_disk_gb"):
        fetch(tmp_path, folder, run=make_run(tmp_path, max_gb=1e-9, out="tiny"))
    assert not list((tmp_path / "tiny").rglob("*.jpg"))


@pytest.mark.parametrize("header, line, message", [
    ("image,lat", "a.jpg,48.39", "the header must have image,lat,lon"),
    ("image,latitude,lon", "a.jpg,48.39,-4.48", "the header must have image,lat,lon"),
    ("image,lat,lon,lat", "a.jpg,48.39,-4.48,48.39", "each once"),
    ("image,lat,lon", "a.jpg,north,-4.48", "lat 'north' is not a number"),
    ("image,lat,lon", "a.jpg,48.39,", "lon '' is not a number"),
    ("image,lat,lon", "a.jpg,95,-4.48", "lat 95.0 is outside"),
    ("image,lat,lon", "../a.jpg,48.39,-4.48", "must be a path inside"),
    ("image,lat,lon", "b.jpg,48.39,-4.48", "b.jpg is listed a second time (first on line 2)"),
    ("image,lat,lon", "b.jpg,48.39,-4.48,extra", "more fields than the header"),
    ("image,lat,lon,captured_at", "b.jpg,48.39,-4.48,yesterday", "captured_at 'yesterday'"),
])
def test_bad_csv_names_file_and_line(tmp_path, header, line, message):
    folder = tmp_path / "photos"
    write_photo(folder / "a.jpg", BREST)
    write_photo(folder / "b.jpg", BREST)
    columns = header.count(",") + 1
    first = ",".join(["b.jpg", "48.39", "-4.48", "1620000000000"][:columns])
    csv = folder / "positions.csv"
    csv.write_text(f"{header}\n{first}\n{line}\n")
    where = f"{csv}:1" if message.startswith(("the header", "each")) else f"{csv}:3"

    with pytest.raises(local.LocalSourceError, match=re.escape(where)) as error:
        fetch(tmp_path, folder, csv=csv)
    assert message in str(error.value) and isinstance(error.value, GeolocError)
    assert not (tmp_path / "out").exists()     # nothing written before the CSV is checked


def test_missing_folder_or_csv_is_one_clear_error(tmp_path):
    with pytest.raises(GeolocError, match=r"fetch\.local\.folder: .*nowhere.*not a folder"):
        fetch(tmp_path, tmp_path / "nowhere")
    write_photo(tmp_path / "photos" / "a.jpg", BREST)
    with pytest.raises(GeolocError, match=r"fetch\.local\.csv: .*nothing\.csv.*not found"):
        fetch(tmp_path, tmp_path / "photos", csv=tmp_path / "nothing.csv")


def test_a_csv_names_photos_from_its_own_folder(tmp_path):
    """A CSV kept beside its photos in a subfolder lists them by their names there; a path
    may climb to another subfolder, never out of the photo folder."""
    folder = tmp_path / "photos"
    write_photo(folder / "trip" / "a.jpg")
    write_photo(folder / "other" / "b.jpg")
    csv = folder / "trip" / "photos.csv"
    csv.write_text("image,lat,lon\na.jpg,48.39,-4.48\n../other/b.jpg,48.40,-4.48\n")
    df = fetch(tmp_path, folder, csv=csv)
    assert sorted(df["lat"]) == [48.39, 48.40]
    csv.write_text("image,lat,lon\n../../a.jpg,48.39,-4.48\n")
    with pytest.raises(local.LocalSourceError, match=r"must be a path inside .* \(from the CSV"):
        fetch(tmp_path, folder, csv=csv)


def write_panorama(path, position, *, width=512, direction=None, xmp=None):
    """A 2:1 equirectangular panorama whose colour tells the heading: a red disc straight
    ahead (its centre column), green to the right, blue behind."""
    from test_panorama import equirectangular

    image = equirectangular({(0, 0): (255, 0, 0), (90, 0): (0, 255, 0),
                             (180, 0): (0, 0, 255)}, width=width, radius_deg=10)
    write_photo(path, position, size=(1, 1), direction=direction)   # for its EXIF
    with Image.open(path) as tagged:
        exif = tagged.getexif()
    path.unlink()
    image.save(path, format="JPEG", quality=95, exif=exif,
               **({} if xmp is None else {"xmp": xmp.encode()}))
    return path


def test_panoramas_are_cut_into_the_views_of_one_place(tmp_path, caplog):
    """A 2:1 panorama becomes four views of one place, facing the compass angle and every 90
    degrees from it; a re-run writes the same bytes. One too small to cut and one with a
    broken XMP block are named and counted; `never` keeps a panorama whole. A CSV's group
    holds the views with the rest of that group."""
    from test_panorama import XMP

    folder = tmp_path / "photos"
    write_panorama(folder / "pano.jpg", BREST, direction=350.0)
    write_panorama(folder / "tiny.jpg", BREST, width=128)
    write_panorama(folder / "broken.jpg", BREST, xmp="<x:xmpmeta><rdf:RDF>")
    wide = XMP.format(body='GPano:ProjectionType="equirectangular"/>')
    write_photo(folder / "flat.jpg", BREST, size=(40, 30))
    caplog.set_level(logging.WARNING)
    run = make_run(tmp_path)
    df = fetch(tmp_path, folder, run=run)
    assert run.counts == {"panorama_too_small": 1, "broken_xmp": 1}
    assert "tiny.jpg" in caplog.text and "broken.jpg" in caplog.text
    views = df[df["view_group"].notna()].reset_index(drop=True)
    assert len(df) == 5 and len(views) == 4 and views["view_group"].nunique() == 1
    assert sorted(views["compass_angle"]) == [80.0, 170.0, 260.0, 350.0]
    assert (views[["width", "height"]] == 128).all().all()   # 512 px x 90 / 360
    assert views["sequence_id"].nunique() == 1 and views["captured_at"].nunique() == 1
    facing = {row.compass_angle: np.asarray(Image.open(run.image_dir / f"{row.image_id}.jpg"))
              for row in views.itertuples()}
    assert facing[350.0][64, 64, 0] > 200 > facing[350.0][64, 64, 2]   # ahead: red
    assert facing[80.0][64, 64, 1] > 200 > facing[80.0][64, 64, 0]     # right: green
    assert facing[170.0][64, 64, 2] > 200 > facing[170.0][64, 64, 0]   # behind: blue
    again = make_run(tmp_path, out="again")
    fetch(tmp_path, folder, run=again)
    assert sorted(p.read_bytes() for p in run.image_dir.iterdir()) == \
        sorted(p.read_bytes() for p in again.image_dir.iterdir())
    # The XMP says equirectangular: cut whatever the shape; `never`: every photo whole.
    (folder / "broken.jpg").unlink()
    (folder / "tiny.jpg").unlink()
    image = Image.open(folder / "pano.jpg").resize((600, 200))
    image.save(folder / "pano.jpg", exif=Image.open(folder / "pano.jpg").getexif(),
               xmp=wide.encode())
    cut = fetch(tmp_path, folder, run=make_run(tmp_path, out="xmp"))
    assert cut["view_group"].notna().sum() == 4
    whole = fetch(tmp_path, folder, run=make_run(tmp_path, out="whole", detect="never"))
    assert len(whole) == 2 and whole["view_group"].isna().all()
    csv = folder / "photos.csv"
    csv.write_text(f"image,lat,lon,group\npano.jpg,{BREST[0]},{BREST[1]},rig\n"
                   f"flat.jpg,{BREST[0]},{BREST[1]},rig\n")
    grouped = fetch(tmp_path, folder, csv=csv, run=make_run(tmp_path, out="grouped"))
    assert len(grouped) == 5 and set(grouped["view_group"]) == {"local:rig"}
