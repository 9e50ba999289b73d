import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params
from hypothesis import given, settings
from hypothesis import strategies as st

from geoloc.data.cells import build_index, data_stats, imbalance
from geoloc.data.splits import SPLITS, assign_sequences, make_splits, twin_groups
from geoloc.errors import GeolocError

SPLIT = tiny_params().split


def fake_images(cities: int = 4, sequences: int = 8, frames: int = 10, seed: int = 0):
    """Manifest-like rows: each sequence a short straight drive near its city's centre."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(cities):
        lat0, lon0 = 44.0 + 1.5 * c, 1.0 + 1.2 * c
        for s in range(sequences):
            start = rng.normal(0, 0.01, 2)
            for f in range(frames):
                rows.append({"image_id": f"{c}{s:02d}{f:03d}", "sequence_id": f"seq{c}_{s}",
                             "city": f"city{c}", "batch": "batch01", "creator": f"user{s % 3}",
                             "captured_at": 1_600_000_000_000 + (c * 100 + s) * 3_600_000
                             + 2000 * f,
                             "lat": lat0 + start[0] + 1e-4 * f, "lon": lon0 + start[1]})
    return pd.DataFrame(rows)


def test_index_drops_small_cells_and_labels_contiguously():
    images = fake_images()
    far = images.iloc[:3].assign(image_id=["x1", "x2", "x3"], lat=30.0, lon=-20.0)
    labelled, cells = build_index(pd.concat([images, far]), resolution=5, min_images=5)
    assert len(labelled) == len(images)                      # the lonely 3 were dropped
    assert cells["label"].tolist() == list(range(len(cells)))
    assert cells["cell"].is_monotonic_increasing
    assert (cells["n_images"] >= 5).all()
    assert labelled.groupby("label").size().tolist() == cells["n_images"].tolist()
    stats = data_stats(labelled, cells, n_fetched=len(images) + 3)
    assert stats["images_dropped_small_cells"] == 3
    assert stats["cities"] == 4 and stats["cells"] == len(cells)


def test_imbalance_is_zero_gini_and_full_entropy_when_even():
    assert imbalance([7, 7, 7, 7]) == pytest.approx({"gini": 0.0, "normalised_entropy": 1.0})
    skewed = imbalance([1, 1, 1, 97])
    assert skewed["gini"] == pytest.approx(0.72)   # (-3 - 1 + 1 + 3 * 97) / (4 * 100)
    assert 0 < skewed["normalised_entropy"] < 0.2
    assert imbalance([1, 2]) == pytest.approx(
        {"gini": 1 / 6, "normalised_entropy": -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))
         / np.log(2)})


def test_index_with_no_big_enough_cell_is_a_clear_error():
    with pytest.raises(GeolocError, match="index.min_images_per_cell"):
        build_index(fake_images(cities=1, sequences=1, frames=3), resolution=5, min_images=10)


def test_splits_are_sequence_disjoint_deterministic_and_proportional():
    images = fake_images(cities=5, sequences=20)
    groups = twin_groups(images, 60, 50)
    split = assign_sequences(images, groups, 0.15, 0.15, seed=3)
    assert split.equals(assign_sequences(images, groups, 0.15, 0.15, seed=3))
    assert not split.equals(assign_sequences(images, groups, 0.15, 0.15, seed=4))
    assert (images.assign(split=split).groupby("sequence_id")["split"].nunique() == 1).all()
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.05)
    assert shares["val"] == pytest.approx(0.15, abs=0.05)
    assert shares["test"] == pytest.approx(0.15, abs=0.05)
    # every city contributes to every split
    assert (images.assign(split=split).groupby("city")["split"].nunique() == 3).all()


def test_cell_points_come_from_train_images_only():
    images, cells = build_index(fake_images(), resolution=5, min_images=5)
    frames, cells, audit = make_splits(images, cells, SPLIT)
    assert audit["shared_sequences"] == 0 == audit["shared_twin_groups"]
    train = frames["train"]
    for _, cell in cells[cells["n_train"] > 0].iterrows():
        members = train[train["label"] == cell["label"]]
        assert cell["lat"] == pytest.approx(members["lat"].mean())
        assert cell["lon"] == pytest.approx(members["lon"].mean())
    trained = set(train["label"])
    for name in SPLITS:
        assert set(frames[name]["label"]) <= trained
        assert audit["images"][name] == len(frames[name])
    kept = sum(audit["images"].values()) + sum(audit["images_dropped_no_train_cell"].values())
    assert kept == len(images)


def drive(sequence: str, creator: str | None, start_ms: int, lat: float, lon: float,
          frames: int = 5, step_deg: float = 1e-4) -> pd.DataFrame:
    """A drive north: a frame every 2 s and about 11 m."""
    return pd.DataFrame({
        "image_id": [f"{sequence}-{f}" for f in range(frames)], "sequence_id": sequence,
        "creator": creator, "city": "c", "batch": "batch01",
        "captured_at": [start_ms + 2000 * f for f in range(frames)],
        "lat": [lat + step_deg * f for f in range(frames)], "lon": lon})


def test_a_drive_uploaded_in_parts_is_one_twin_group():
    t, lat, lon = 1_600_000_000_000, 45.0, 5.0
    end_a = (t + 8000, lat + 4e-4)
    images = pd.concat([
        drive("a", "ann", t, lat, lon),
        drive("b", "ann", end_a[0] + 30_000, end_a[1] + 2e-4, lon),      # 30 s, 22 m on
        drive("c", "ann", end_a[0] + 30_000 + 8000 + 20_000, end_a[1] + 8e-4, lon),  # then c
        drive("d", "bob", end_a[0] + 10_000, end_a[1], lon),             # another creator
        drive("e", "ann", end_a[0] + 600_000, end_a[1], lon),            # 10 minutes later
        drive("f", "ann", end_a[0] + 20_000, end_a[1] + 0.01, lon),      # 1.1 km away
        drive("g", None, end_a[0] + 5_000, end_a[1], lon),               # creator unknown
    ])
    groups = twin_groups(images, max_gap_s=60, max_gap_m=50)
    assert groups.to_dict() == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f",
                                "g": "g"}


@st.composite
def manifests(draw) -> pd.DataFrame:
    """Random drives by a few creators, close in time and space, so that twins happen."""
    frames = []
    for s in range(draw(st.integers(1, 25))):
        frames.append(drive(
            f"s{s:02d}", draw(st.sampled_from(["ann", "bob", None])),
            1_600_000_000_000 + draw(st.integers(0, 40)) * 15_000,
            45.0 + draw(st.integers(0, 20)) * 2e-4, 5.0 + draw(st.integers(0, 3)) * 0.2,
            frames=draw(st.integers(1, 6))).assign(city=f"c{s % 3}"))
    return pd.concat(frames, ignore_index=True)


@settings(max_examples=60, deadline=None)
@given(manifests(), st.integers(0, 5))
def test_no_sequence_or_twin_group_crosses_splits(images, seed):
    groups = twin_groups(images, max_gap_s=60, max_gap_m=50)
    split = assign_sequences(images, groups, 0.2, 0.2, seed)
    assert split.notna().all()
    per_sequence = images.assign(split=split).groupby("sequence_id")["split"].nunique()
    assert (per_sequence == 1).all()
    per_group = images.assign(split=split, group=images["sequence_id"].map(groups))
    assert (per_group.groupby("group")["split"].nunique() == 1).all()
    # Twins really are merged: same creator, end and start within a minute and 50 m.
    for sequence, group in groups.items():
        if sequence != group:
            assert images.loc[images["sequence_id"] == sequence, "creator"].iloc[0] is not None
