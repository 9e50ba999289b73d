import numpy as np
import pandas as pd
import pytest

from geoloc.data.cells import build_index, data_stats, imbalance
from geoloc.data.splits import SPLITS, assign_sequences, make_splits
from geoloc.errors import GeolocError


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
                             "city": f"city{c}", "batch": "batch01",
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
    split = assign_sequences(images, 0.15, 0.15, seed=3)
    assert split.equals(assign_sequences(images, 0.15, 0.15, seed=3))
    assert not split.equals(assign_sequences(images, 0.15, 0.15, seed=4))
    assert (images.assign(split=split).groupby("sequence_id")["split"].nunique() == 1).all()
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.05)
    assert shares["val"] == pytest.approx(0.15, abs=0.05)
    assert shares["test"] == pytest.approx(0.15, abs=0.05)
    # every city contributes to every split
    assert (images.assign(split=split).groupby("city")["split"].nunique() == 3).all()


def test_cell_points_come_from_train_images_only():
    images, cells = build_index(fake_images(), resolution=5, min_images=5)
    frames, cells, audit = make_splits(images, cells, 0.2, 0.2, seed=0)
    assert audit["shared_sequences"] == 0
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
