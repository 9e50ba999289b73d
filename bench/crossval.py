"""Cross-validation's time (`make bench`, metrics/bench.json): the crossval stage's work
(geoloc.crossval: the heads re-fitted per fold, every mode and retrieval setting answered, the
intervals over drives) on a world of features made here, at each size asked for. The params
are params.yaml's (folds, head, loss, training, the settings auto tries); the features are
1280 wide as EfficientNet-Lite0's, each photo its cell's direction plus noise, so the heads
learn for several epochs as they do on real features before early stopping ends them.

    python bench/crossval.py                      # 5,000 and 25,000 photos
    python bench/crossval.py --photos 2000        # quicker

Keys: crossval_seconds_<photos>_photos, crossval_epochs_<photos>_photos (the epochs the folds'
heads ran in all, which the time depends on).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import h3
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402

from geoloc.crossval import cross_validate, crossval_metrics  # noqa: E402
from geoloc.data.features import FeatureSplit  # noqa: E402
from geoloc.params import load_params  # noqa: E402

FRAMES = 10          # photos per drive
CITIES = 10
CELLS_PER_CITY = 6
WIDTH = 1280


def feature_world(photos: int, seed: int = 0) -> tuple[FeatureSplit, pd.DataFrame]:
    """`photos` photos in drives of FRAMES, each drive in one cell of one of CITIES French
    cities, with features drawn around their cell's direction."""
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(43.5, 49.0, CITIES), rng.uniform(-1.0, 7.0, CITIES)])
    cells = []
    for city, (lat, lon) in enumerate(centres):
        for k in range(CELLS_PER_CITY):
            cell = h3.latlng_to_cell(lat + 0.1 * (k % 3), lon + 0.15 * (k // 3), 5)
            lat_c, lon_c = h3.cell_to_latlng(cell)
            cells.append({"label": len(cells), "cell": cell, "resolution": 5,
                          "center_lat": lat_c, "center_lon": lon_c,
                          "parents": [h3.cell_to_parent(cell, 4)], "neighbours": [],
                          "lat": lat_c, "lon": lon_c, "n_train": 0, "city": f"city{city}"})
    cells = pd.DataFrame(cells)
    drives = photos // FRAMES
    label = rng.integers(0, len(cells), drives)
    start = cells[["lat", "lon"]].to_numpy()[label] + rng.uniform(-0.03, 0.03, (drives, 2))
    step = np.arange(FRAMES) * 0.0005
    rows = pd.DataFrame({
        "image_id": [f"{d:06d}-{f}" for d in range(drives) for f in range(FRAMES)],
        "sequence_id": np.repeat([f"drive{d:06d}" for d in range(drives)], FRAMES),
        "captured_at": np.tile(np.arange(1, FRAMES + 1) * 1000, drives),
        "city": cells["city"].to_numpy()[np.repeat(label, FRAMES)],
        "lat": (start[:, :1] + step).ravel(), "lon": (start[:, 1:] + step).ravel(),
        "label": np.repeat(label, FRAMES)})
    rows["unit"] = rows["sequence_id"]
    rows["feature_row"] = np.arange(len(rows))
    directions = rng.normal(0, 1, (len(cells), WIDTH)).astype(np.float32)
    features = directions[rows["label"]] * 0.3 + rng.normal(0, 1, (len(rows), WIDTH)).astype(
        np.float32)
    return FeatureSplit(features, rows), cells.drop(columns="city")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", default=[5_000, 25_000])
    parser.add_argument("--out", default="metrics/bench.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = load_params()
    figures = {}
    for photos in args.photos:
        pool, cells = feature_world(photos)
        started = time.perf_counter()
        result = cross_validate(pool, cells, params)
        crossval_metrics(result, params.evaluate.bootstrap_samples)
        figures[f"crossval_seconds_{photos}_photos"] = time.perf_counter() - started
        figures[f"crossval_epochs_{photos}_photos"] = sum(result.epochs)
    record(args.out, figures)


if __name__ == "__main__":
    main()
