"""The embedded offline world (geoloc.sources.synthetic): determinism, schema, geometry of the
drives and appearance that depends on where a photo was taken."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import fetch_run
from PIL import Image

from geoloc.data.manifest import SCHEMA
from geoloc.data.splits import twin_groups
from geoloc.geo import haversine_km
from geoloc.sources import synthetic

CITIES = pd.DataFrame({
    "city": ["Brest", "Marseille"],
    "lat": [48.3904, 43.2965],
    "lon": [-4.4861, 5.3698],
    "radius_km": [4.0, 7.0],
    "batch": ["b1", "b1"],
})


def small_cfg(**changes) -> SimpleNamespace:
    cfg = dict(seed=0, sequences_per_city=2, frames_min=4, frames_max=6, image_size=64,
               jpeg_quality=90, panorama_share=0.0, workers=1)
    return SimpleNamespace(**{**cfg, **changes})


def haversine_m(lat1, lon1, lat2, lon2):
    return 1000 * haversine_km(lat1, lon1, lat2, lon2)


def bearing_deg(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=float)) for v in
                              (lat1, lon1, lat2, lon2))
    y = np.sin(lon2 - lon1) * np.cos(lat2)
    x = np.cos(lat1) * np.sin(lat2) - np.sin(lat1) * np.cos(lat2) * np.cos(lon2 - lon1)
    return np.degrees(np.arctan2(y, x)) % 360


def files_of(out_dir, manifest) -> dict:
    return {p: (out_dir / p).read_bytes() for p in manifest["path"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, synthetic.fetch(CITIES, small_cfg(sequences_per_city=6), fetch_run(out, "b1"))


def test_manifest_schema(world):
    _, df = world
    assert list(df.columns) == list(SCHEMA)
    for column in ("image_id", "sequence_id", "creator", "source", "city", "batch", "path"):
        assert pd.api.types.is_string_dtype(df[column]), column
    for column in ("lat", "lon"):
        assert df[column].dtype == np.float64, column
    assert df["compass_angle"].dtype == "Float64"
    for column in ("captured_at", "width", "height"):
        assert df[column].dtype == np.int64, column
    assert df["image_id"].is_unique
    assert df["image_id"].is_monotonic_increasing
    assert df.index.equals(pd.RangeIndex(len(df)))
    assert (df["source"] == "synthetic").all() and (df["batch"] == "b1").all()
    assert set(df["city"]) == set(CITIES["city"])
    assert df["image_id"].str.fullmatch(r"\d{16}").all()
    assert df["sequence_id"].str.fullmatch(r"[0-9A-Za-z]{22}").all()
    assert (df["path"] == "images/" + df["image_id"] + ".jpg").all()
    assert df["compass_angle"].between(0, 360, inclusive="left").all()
    assert (df["width"] == 64).all() and (df["height"] == 48).all()   # 4:3 landscape


def test_images_are_jpegs_of_the_declared_size(world):
    out, df = world
    assert len(df), "the world rendered no photos: nothing below would be checked"
    for row in df.itertuples():
        with Image.open(out / row.path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (row.width, row.height)
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        df["path"].str.removeprefix("images/"))


def test_sequences_per_city_and_frame_counts(world):
    _, df = world
    drives = twin_groups(df, max_gap_s=60, max_gap_m=50)
    drive = df["sequence_id"].map(drives)
    # both cities, by name: a check per city passes for a city with no photos
    assert drive.groupby(df["city"]).nunique().to_dict() == {"Brest": 6, "Marseille": 6}
    assert df.groupby(drive).size().between(4, 6).all()
    assert df.groupby("sequence_id").size().between(2, 6).all()   # a part has 2 frames or more
    assert df.groupby("sequence_id")["city"].nunique().eq(1).all()
    assert df.groupby("sequence_id")["creator"].nunique().eq(1).all()
    assert df["creator"].str.fullmatch(r"user_[0-9a-f]{6}").all()


def test_positions_stay_within_the_city_radius(world):
    _, df = world
    centres = df.merge(CITIES, on="city", suffixes=("", "_c"))
    assert len(centres) == len(df) > 0   # every photo measured against its own city
    dist = haversine_m(centres["lat"], centres["lon"], centres["lat_c"], centres["lon_c"])
    assert (dist <= centres["radius_km"] * 1000).all()


def test_drives_are_continuous_and_timed(world):
    _, df = world
    sequences = [seq for _, seq in df.sort_values("captured_at").groupby("sequence_id")]
    # a step needs two frames: sequences of one frame would leave the checks nothing to see
    assert sequences and min(len(seq) for seq in sequences) >= 2
    for seq in sequences:
        lat, lon = seq["lat"].to_numpy(), seq["lon"].to_numpy()
        steps = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
        assert ((steps >= 5) & (steps <= 30)).all(), steps
        times = seq["captured_at"].to_numpy()
        assert (np.diff(times) > 0).all()
        assert (times > 1_420_070_400_000).all() and (times < 1_767_225_600_000).all()


def test_compass_angle_follows_the_drive(world):
    _, df = world
    errors = []
    for _, seq in df.sort_values("captured_at").groupby("sequence_id"):
        lat, lon = seq["lat"].to_numpy(), seq["lon"].to_numpy()
        moved = bearing_deg(lat[:-1], lon[:-1], lat[1:], lon[1:])
        diff = (seq["compass_angle"].to_numpy()[1:] - moved + 180) % 360 - 180
        errors.extend(np.abs(diff))
    assert errors, "no sequence of two frames or more: no drive to follow"
    # turns at corners and U-turns give large errors on a few frames only
    assert np.median(errors) < 15


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (tmp_path / name for name in "abc")
    for d in (a, b, c):
        d.mkdir()
    first = synthetic.fetch(CITIES, small_cfg(), fetch_run(a, "b1"))
    second = synthetic.fetch(CITIES, small_cfg(), fetch_run(b, "b1"))
    assert len(first), "two empty worlds are equal and disjoint: nothing would be compared"
    pd.testing.assert_frame_equal(first, second)
    assert files_of(a, first) == files_of(b, second)

    other = synthetic.fetch(CITIES, small_cfg(seed=1), fetch_run(c, "b1"))
    assert set(other["image_id"]).isdisjoint(first["image_id"])
    assert set(files_of(c, other).values()).isdisjoint(files_of(a, first).values())


def test_the_bytes_do_not_depend_on_the_number_of_processes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    serial = synthetic.fetch(CITIES, small_cfg(workers=1), fetch_run(one, "b1"))
    parallel = synthetic.fetch(CITIES, small_cfg(workers=2), fetch_run(two, "b1"))
    assert len(serial), "two empty worlds are equal: nothing would be compared"
    pd.testing.assert_frame_equal(serial, parallel)
    assert files_of(one, serial) == files_of(two, parallel)


def test_a_larger_world_holds_the_smaller_ones_drives(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    few = synthetic.fetch(CITIES, small_cfg(sequences_per_city=2), fetch_run(small, "b1"))
    many = synthetic.fetch(CITIES, small_cfg(sequences_per_city=5), fetch_run(large, "b1"))
    kept = many[many["image_id"].isin(few["image_id"])].reset_index(drop=True)
    assert len(few), "an empty world is in every world: nothing would be compared"
    pd.testing.assert_frame_equal(few, kept)
    assert files_of(small, few) == files_of(large, kept)
    assert len(many) > len(few)


def test_a_city_does_not_depend_on_the_rest_of_its_batch(tmp_path):
    alone, together = tmp_path / "alone", tmp_path / "together"
    alone.mkdir()
    together.mkdir()
    lorient = pd.DataFrame({"city": ["Lorient"], "lat": [47.7485], "lon": [-3.3702],
                            "radius_km": [3.0], "batch": ["b1"]})
    solo = synthetic.fetch(CITIES.iloc[[1]], small_cfg(), fetch_run(alone, "b1"))
    # Marseille first alone, then last of three
    both = synthetic.fetch(pd.concat([lorient, CITIES], ignore_index=True), small_cfg(),
                           fetch_run(together, "b1"))
    marseille = both[both["city"] == "Marseille"].reset_index(drop=True)
    assert len(solo), "an empty Marseille is the same anywhere: nothing would be compared"
    pd.testing.assert_frame_equal(solo, marseille)
    assert files_of(alone, solo) == files_of(together, marseille)


def test_ids_are_unique_across_cities_and_sequences(tmp_path):
    many = pd.DataFrame({"city": [f"Town {i}" for i in range(6)], "lat": 47.0,
                         "lon": np.linspace(0, 5, 6), "radius_km": 2.0, "batch": "b"})
    df = synthetic.fetch(many, small_cfg(frames_min=1, frames_max=3, image_size=32),
                         fetch_run(tmp_path, "b"))
    assert df["image_id"].is_unique
    assert df.groupby("sequence_id")["city"].nunique().eq(1).all()
    assert df["sequence_id"].nunique() == 12


def test_empty_batch_gives_an_empty_manifest(tmp_path):
    df = synthetic.fetch(CITIES.iloc[:0], small_cfg(), fetch_run(tmp_path, "b1"))
    assert df.empty and list(df.columns) == list(SCHEMA)
    assert (tmp_path / "images").is_dir()


def test_bad_settings_and_duplicate_cities_are_refused(tmp_path):
    with pytest.raises(ValueError, match="frames_min"):
        synthetic.fetch(CITIES, small_cfg(frames_min=7, frames_max=6), fetch_run(tmp_path, "b1"))
    with pytest.raises(ValueError, match="duplicate"):
        synthetic.fetch(pd.concat([CITIES, CITIES]), small_cfg(), fetch_run(tmp_path, "b1"))
    with pytest.raises(ValueError, match=r"panorama_share: the world's panoramas, 128 x 64 px "
                                         r"is too small .* raise fetch.synthetic.image_size"):
        synthetic.fetch(CITIES, small_cfg(image_size=32, panorama_share=0.1),
                        fetch_run(tmp_path, "b1"))


@pytest.mark.parametrize(("lat", "lon", "region"), [
    (48.8566, 2.3522, "north"),       # Paris
    (50.6292, 3.0573, "north"),       # Lille
    (43.2965, 5.3698, "south"),       # Marseille
    (43.6047, 1.4442, "south"),       # Toulouse
    (48.3904, -4.4861, "coast"),      # Brest
    (49.1829, -0.3707, "coast"),      # Caen
    (45.1885, 5.7245, "mountains"),   # Grenoble
    (45.7772, 3.0870, "mountains"),   # Clermont-Ferrand
    (43.2951, -0.3708, "mountains"),  # Pau
])
def test_regions(lat, lon, region):
    assert synthetic._region(lat, lon) == region


def test_appearance_depends_on_position(world):
    """Tell Brest from Marseille by the nearest image of another drive, on 8 x 6 thumbnails:
    the cameras vary per drive, so only what the city looks like can carry this."""
    out, df = world
    thumbs = np.array([np.asarray(Image.open(out / p).resize((8, 6), Image.BILINEAR),
                                  dtype=float).ravel() for p in df["path"]])
    drive = df["sequence_id"].map(twin_groups(df, max_gap_s=60, max_gap_m=50)).to_numpy()
    city = df["city"].to_numpy()
    right = []
    for i in range(len(df)):
        other = drive != drive[i]
        nearest = np.linalg.norm(thumbs[other] - thumbs[i], axis=1).argmin()
        right.append(city[other][nearest] == city[i])
    assert np.mean(right) > 0.8   # chance is 0.5


def test_neighbourhood_fields_are_smooth_and_bounded():
    city = synthetic._make_city(CITIES.iloc[0], seed=0)
    x = np.linspace(0, 3000, 301)
    fields = synthetic._fields(city, np.stack([x, np.zeros_like(x)], axis=1))
    assert fields.shape == (301, synthetic.N_FIELDS)
    assert np.abs(fields).max() < 1
    # 10 m apart: nearly the same value; along 3 km of street: clearly varying
    for f in fields.T:
        assert np.corrcoef(f[:-1], f[1:])[0, 1] > 0.95
    assert (fields.max(0) - fields.min(0)).min() > 0.5


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """One city driven 30 times, as small as the renderer allows."""
    out = tmp_path_factory.mktemp("crowded")
    cfg = small_cfg(sequences_per_city=30, image_size=32)
    return synthetic.fetch(CITIES.iloc[:1], cfg, fetch_run(out, "b1"))


def test_some_drives_are_uploaded_as_twin_sequences(crowded):
    groups = twin_groups(crowded, max_gap_s=60, max_gap_m=50)
    pairs = int((groups.value_counts() == 2).sum())
    assert 1 <= pairs <= 15 and groups.value_counts().max() == 2
    # every twin pair is a cut drive: 30 drives, one more sequence per cut
    assert crowded["sequence_id"].nunique() == 30 + pairs


def test_most_drives_start_near_a_popular_spot(crowded):
    city = synthetic._make_city(CITIES.iloc[0], seed=0)
    spots = city.to_latlon(city.hotspots)
    drive = crowded["sequence_id"].map(twin_groups(crowded, max_gap_s=60, max_gap_m=50))
    starts = crowded.sort_values("captured_at").groupby(drive).first()
    assert len(starts) == 30   # a share of every drive, not of those found
    near = haversine_m(starts["lat"].to_numpy()[:, None], starts["lon"].to_numpy()[:, None],
                       spots[0][None, :], spots[1][None, :]).min(axis=1)
    # within the spot's radius plus the snap onto a street (at most half a block, 75 m)
    share = np.mean(near <= synthetic.HOTSPOT_RADIUS_M + 80)
    assert 0.4 <= share <= 0.9


def test_a_360_camera_writes_the_views_of_one_place_and_leaves_other_drives_alone(tmp_path):
    """With panorama_share, some drives are taken with a 360 camera: each frame four views of
    one place (64 px, as wide as the photos: a quarter of a panorama four times as wide),
    facing the compass angle and every 90 degrees from it; the drives taken with ordinary
    cameras are as they were."""
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    before = synthetic.fetch(CITIES, small_cfg(sequences_per_city=4), fetch_run(plain, "b1"))
    after = synthetic.fetch(CITIES, small_cfg(sequences_per_city=4, panorama_share=0.5),
                            fetch_run(mixed, "b1"))
    views = after[after["view_group"].notna()]
    kept = after[after["view_group"].isna()].reset_index(drop=True)
    assert len(views) and len(kept)
    assert set(kept["image_id"]) <= set(before["image_id"])
    pd.testing.assert_frame_equal(kept, before[before["image_id"].isin(kept["image_id"])]
                                  .reset_index(drop=True))
    assert files_of(mixed, kept) == files_of(plain, before[before["image_id"].isin(
        kept["image_id"])])
    for group, rows in views.groupby("view_group"):
        assert len(rows) == 4 and rows["captured_at"].nunique() == 1, group
        assert rows[["lat", "lon", "sequence_id"]].nunique().max() == 1
        turns = np.sort((rows["compass_angle"] - rows["compass_angle"].iloc[0]) % 360)
        assert np.allclose(turns, [0, 90, 180, 270])
    assert (views[["width", "height"]] == 64).all().all()
    for path in views["path"]:
        with Image.open(mixed / path) as image:
            assert image.size == (64, 64)


def test_each_view_of_a_360_frame_is_the_street_it_faces():
    """Cut from the world's panorama, view i faces i x 90 degrees to the right: it must look
    like the corridor of the street direction there (d - i: directions turn left as d grows)
    rendered by a pinhole camera, and less like the others."""
    from dataclasses import replace

    from geoloc.panorama import cut
    from geoloc.params import PanoramaParams

    city = synthetic._make_city(synthetic._Place("Brest", 48.3904, -4.4861, 4.0), 0)
    rng, noise_rng = city.rng(synthetic.RNG_SEQUENCE, 0), city.rng(synthetic.RNG_NOISE, 0)
    (g, d), *_ = synthetic._drive(city, rng, 2)
    cam = replace(synthetic._camera(city, rng, noise_rng, 12.0, 512, 256), bonnet=None,
                  blur_px=0.0, yaw=0.0, roll=0.0, horizon_px=0.0)
    shot = synthetic._Shot(g=g, d=d, shift_px=(0.0, 0.0), roll=0.0, gain=1.0)
    panorama = Image.fromarray(synthetic._render_panorama(city, cam, shot, 512, noise_rng))
    views = cut(panorama, PanoramaParams(detect="auto", views=4, fov=90, pitch=0, size=128))
    assert len(views) == 4   # the loop below checks only the views it is given
    # The pinhole of a 90-degree view: ray slopes x / f and y / f, f = 64 px.
    centres = (np.arange(128, dtype=np.float32) + np.float32(0.5 - 64)) / np.float32(64)
    dx = np.ascontiguousarray(np.broadcast_to(centres[None, :], (128, 128)))
    dy = np.ascontiguousarray(np.broadcast_to(-centres[:, None], (128, 128)))
    corridors = []
    for direction in range(4):
        street = synthetic._street(city, g, direction)
        lane = min(cam.lane, street.road_half - 0.8)
        colour = synthetic._scene(city, cam, street, lane, city.heading(direction), dx, dy)
        corridors.append(np.clip(colour.transpose(1, 2, 0) * 255, 0, 255))
    for turn, view in enumerate(views):
        distance = [np.abs(view.astype(np.float32) - corridor).mean() for corridor in corridors]
        assert int(np.argmin(distance)) == (d - turn) % 4, (turn, distance)
