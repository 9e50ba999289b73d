"""Drive-disjoint folds and paired intervals over drives (geoloc.crossval)."""

import h3
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params

from geoloc.crossval import (
    CrossValidationError,
    TooFewDrives,
    cross_validate,
    crossval_metrics,
    drive_folds,
)
from geoloc.data.features import FeatureSplit
from geoloc.metrics import paired_difference_ci


def drives(per_city: dict[str, list[int]]) -> pd.DataFrame:
    """Photos of drives of the given lengths, city by city."""
    rows = [(city, f"{city}-{i}") for city, lengths in per_city.items()
            for i, length in enumerate(lengths) for _ in range(length)]
    return pd.DataFrame(rows, columns=["city", "unit"])


def test_each_drive_is_in_one_fold_and_each_fold_has_every_city():
    photos = drives({"Lyon": [5, 9, 2, 7, 4, 6], "Nice": [3, 3, 8, 1, 5], "Pau": [4, 4, 4]})
    fold = drive_folds(photos["city"], photos["unit"], folds=3, seed=0)
    assert pd.Series(fold).groupby(photos["unit"]).nunique().max() == 1
    for city, group in pd.Series(fold).groupby(photos["city"]):
        assert set(group) == {0, 1, 2}, city
        sizes = group.value_counts()
        # Largest first, to the emptiest fold: no fold is more than a drive ahead.
        largest = photos.loc[photos["city"] == city, "unit"].value_counts().max()
        assert sizes.max() - sizes.min() <= largest
    assert np.array_equal(fold, drive_folds(photos["city"], photos["unit"], 3, seed=0))
    assert not np.array_equal(fold, drive_folds(photos["city"], photos["unit"], 3, seed=1))


@pytest.mark.parametrize(("per_city", "folds", "message"), [
    ({"Lyon": [4, 2]}, 3, r"at least 3 drives; the data has 2: set crossval.folds to 0"),
    ({"Lyon": [4, 2], "Nice": [3]}, 5, r"folds is 5 but the data has 3 drives: set "
                                       r"crossval.folds to at most 3"),
    ({"Lyon": [4, 2, 2], "Nice": [3]}, 3, r"folds is 3 but the city Nice has 1 drives \(and 1 "
                                          r"cities fewer than 3\): set crossval.folds to 0 "
                                          r"\(no cross-validation\), or leave that city out"),
    # the city with the fewest drives is named, and the folds it allows
    ({"Lyon": [1] * 4, "Nice": [1] * 3, "Brest": [1] * 5}, 5,
     r"the city Nice has 3 drives \(and 2 cities fewer than 5\): set crossval.folds to at "
     r"most 3, or"),
])
def test_folds_that_cannot_be_made_are_refused_with_the_numbers(per_city, folds, message):
    photos = drives(per_city)
    with pytest.raises(CrossValidationError, match=message):
        drive_folds(photos["city"], photos["unit"], folds, seed=0)


def test_a_paired_difference_resamples_drives_and_both_answers_together():
    rng = np.random.default_rng(3)
    # 30 drives of 8 photos; a drive's photos share most of their error.
    drive = np.repeat(np.arange(30), 8)
    reference = np.repeat(rng.lognormal(0, 1, 30), 8) * rng.uniform(0.9, 1.1, 240)
    better = reference * 0.8
    difference, low, high = paired_difference_ci(better, reference, drive, samples=2000)
    assert difference == pytest.approx(np.median(better) - np.median(reference))
    assert low <= difference <= high < 0          # better, and the interval says so
    _, photo_low, photo_high = paired_difference_ci(better, reference, np.arange(240), 2000)
    assert high - low > 1.5 * (photo_high - photo_low)   # photos of a drive are not independent
    same = paired_difference_ci(reference, reference, drive, samples=500)
    assert same == (0.0, 0.0, 0.0)                # the same answers: no difference, no doubt
    _, low90, high90 = paired_difference_ci(better, reference, drive, samples=2000, q=90)
    assert high90 < 0


def feature_world(kind: str, seed: int = 0) -> tuple[FeatureSplit, pd.DataFrame]:
    """Two cities of three H3 cells, eight drives of eight photos in each cell, and features
    (of the width of the features backbone, 1280) that make one answer the best:
    - "positions": random Fourier features of the position at a ~1 km scale, so the most
      similar training photos are the nearest ones and retrieval beats any cell's point;
    - "noisy": the cell's one-hot code drowned in noise, so one photo is often put in the
      wrong cell but a drive's eight photos together rarely are: the sequence mode wins."""
    rng = np.random.default_rng(seed)
    centres = {"Lyon": (45.76, 4.84), "Nice": (43.70, 7.27)}
    cells, rows = [], []
    for city, (lat0, lon0) in centres.items():
        for k in range(3):
            cell = h3.latlng_to_cell(lat0 + 0.12 * k, lon0, 5)
            label = len(cells)
            lat_c, lon_c = h3.cell_to_latlng(cell)
            cells.append({"label": label, "cell": cell, "resolution": 5, "center_lat": lat_c,
                          "center_lon": lon_c, "parents": [h3.cell_to_parent(cell, 4)],
                          "neighbours": [], "lat": lat_c, "lon": lon_c, "n_train": 32})
            for drive in range(8):
                start = np.array([lat_c, lon_c]) + rng.uniform(-0.04, 0.04, 2)
                sequence = f"{city}-{k}-{drive}"
                for frame in range(8):
                    lat, lon = start + frame * np.array([0.001, 0.001])
                    rows.append({"image_id": f"{sequence}-{frame}", "sequence_id": sequence,
                                 "captured_at": 1_000 * (frame + 1), "city": city,
                                 "lat": lat, "lon": lon, "label": label, "unit": sequence})
    rows = pd.DataFrame(rows).sort_values("image_id", ignore_index=True)
    rows["feature_row"] = np.arange(len(rows))
    if kind == "positions":
        frequencies = rng.normal(0, 1 / 0.01, (2, 640))       # ~1 km in degrees
        phase = rows[["lat", "lon"]].to_numpy() @ frequencies
        features = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
    else:
        features = np.zeros((len(rows), 1280))
        features[:, :len(cells)] = rng.normal(0, 0.8, (len(rows), len(cells)))
        features[np.arange(len(rows)), rows["label"]] += 1.0
    return FeatureSplit(features.astype(np.float32), rows), pd.DataFrame(cells)


CV_PARAMS = tiny_params(crossval={"folds": 4, "seed": 0},
                        train={"epochs": 10, "patience": 10, "lr": 0.03, "batch_size": 32},
                        evaluate={"bootstrap_samples": 200,
                                  "auto": {"neighbours": [1, 10], "within_top_cells": [0, 1]}})


@pytest.mark.parametrize(("kind", "best"), [("positions", "retrieval_k1_all"),
                                            ("noisy", "sequence")])
def test_auto_picks_the_answer_the_world_was_made_for(kind, best):
    pool, cells = feature_world(kind)
    result = cross_validate(pool, cells, CV_PARAMS)
    # Every photo answered once, by a model whose training never held its drive.
    assert len(result.rows) == len(pool.rows)
    for name, km in result.errors.items():
        assert np.isfinite(km).all(), name
    assert result.rows.groupby("unit")["fold"].nunique().max() == 1
    metrics = crossval_metrics(result, CV_PARAMS.evaluate.bootstrap_samples)
    assert metrics["choice"] == best
    chosen = metrics["answers"][best]
    assert chosen["median_km_ci_low"] <= chosen["median_km"] <= chosen["median_km_ci_high"]
    # The nearest photo is not read against itself; the centroid is far worse than it.
    assert not any(key.startswith("vs_") for key in metrics["references"]["nearest_photo"])
    assert metrics["references"]["centroid"]["vs_nearest_photo_km_ci_low"] > 0
    assert set(metrics["answers"]) == {"argmax", "topk", "topk_mean", "hierarchical",
                                       "sequence", "sequence_online", "retrieval_k1_all",
                                       "retrieval_k1_top1", "retrieval_k10_all",
                                       "retrieval_k10_top1", "place_k1_all", "place_k1_top1",
                                       "place_k10_all", "place_k10_top1"}
    # Every frame is a place of its own: place retrieval is photo retrieval, and a tie goes
    # to the photo's.
    place = metrics["answers"]["place_k10_all"]
    assert (place["vs_retrieval_km"], place["vs_retrieval_km_ci_low"],
            place["vs_retrieval_km_ci_high"]) == (0.0, 0.0, 0.0)
    assert {k: v for k, v in place.items() if not k.startswith("vs_retrieval")} == \
        metrics["answers"]["retrieval_k10_all"]


def test_a_fold_that_leaves_a_cell_without_training_photos_still_answers_and_counts_it():
    pool, cells = feature_world("noisy")
    # One drive alone in a cell of its own: when its fold is answered, no training photo
    # is in that cell.
    rows = pool.rows.copy()
    lonely = rows["unit"] == "Lyon-0-0"
    rows.loc[lonely, "label"] = len(cells)
    cells = pd.concat([cells, cells.iloc[[0]].assign(label=len(cells))], ignore_index=True)
    result = cross_validate(FeatureSplit(pool.features, rows), cells, CV_PARAMS)
    assert result.unseen == int(lonely.sum())
    assert all(np.isfinite(km).all() for km in result.errors.values())


def test_too_few_drives_is_its_own_error_which_the_stage_passes_over():
    photos = drives({"Lyon": [4, 2]})
    with pytest.raises(TooFewDrives, match="at least 3 drives; the data has 2"):
        drive_folds(photos["city"], photos["unit"], 3, seed=0)
