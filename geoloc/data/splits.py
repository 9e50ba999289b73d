"""Sequence-disjoint train/val/test splits and the cells' representative points."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CELLS_NAME = "cells.parquet"


def assign_sequences(images: pd.DataFrame, val_fraction: float, test_fraction: float,
                     seed: int) -> pd.Series:
    """Split name for each image; every sequence goes whole to one split.

    Within each city, sequences are shuffled and each goes to the split furthest below its
    target share of images, so every city contributes to every split in proportion.
    """
    targets = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
               "test": test_fraction}
    split_of_sequence = {}
    sizes = images.groupby(["city", "sequence_id"]).size()
    for city, city_sizes in sizes.groupby(level="city"):
        rng = np.random.default_rng([seed, _stable_int(city)])
        order = rng.permutation(len(city_sizes))
        counts = dict.fromkeys(SPLITS, 0)
        total = 0
        for i in order:
            (_, sequence), n = city_sizes.index[i], int(city_sizes.iloc[i])
            total += n
            split = max(SPLITS, key=lambda s: targets[s] * total - counts[s])
            counts[split] += n
            split_of_sequence[sequence] = split
    return images["sequence_id"].map(split_of_sequence)


def make_splits(images: pd.DataFrame, cells: pd.DataFrame, val_fraction: float,
                test_fraction: float, seed: int) -> tuple[dict, pd.DataFrame, dict]:
    """Return ({split: rows}, cells with representative points, audit figures).

    Val and test images whose cell has no training image are dropped: no point can be learnt
    for them. A cell's point is the mean position of its training images; a cell with none keeps
    its hexagon centre, which uses no data and so cannot leak.
    """
    split = assign_sequences(images, val_fraction, test_fraction, seed)
    train = images[split == "train"]
    points = train.groupby("label").agg(lat=("lat", "mean"), lon=("lon", "mean"),
                                        n_train=("lat", "size"))
    cells = cells.join(points, on="label")
    cells["n_train"] = cells["n_train"].fillna(0).astype("int64")
    cells["lat"] = cells["lat"].fillna(cells["center_lat"])
    cells["lon"] = cells["lon"].fillna(cells["center_lon"])
    trained = set(points.index)
    frames, dropped = {}, {}
    for name in SPLITS:
        rows = images[split == name]
        keep = rows["label"].isin(trained)
        dropped[name] = int((~keep).sum())
        frames[name] = rows[keep].sort_values("image_id").reset_index(drop=True)
    audit = split_audit(frames)
    audit["images_dropped_no_train_cell"] = dropped
    audit["cells_without_train_images"] = int((cells["n_train"] == 0).sum())
    return frames, cells, audit


def split_audit(frames: dict[str, pd.DataFrame]) -> dict:
    """Counts per split and the sequences shared between splits (must be 0)."""
    sequences = {name: set(df["sequence_id"]) for name, df in frames.items()}
    shared = sum(len(sequences[a] & sequences[b])
                 for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:])
    return {
        "images": {name: len(df) for name, df in frames.items()},
        "sequences": {name: len(s) for name, s in sequences.items()},
        "shared_sequences": shared,
    }


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def write_splits(frames: dict[str, pd.DataFrame], cells: pd.DataFrame, out_dir: Path) -> None:
    for name, rows in frames.items():
        rows.to_parquet(out_dir / f"{name}.parquet", index=False)
    cells.to_parquet(out_dir / CELLS_NAME, index=False)


def load_split(splits_dir: Path | str, name: str) -> pd.DataFrame:
    path = Path(splits_dir) / f"{name}.parquet"
    if not path.exists():
        raise GeolocError(f"{path} not found: run the split stage")
    return pd.read_parquet(path)


def load_cells(splits_dir: Path | str) -> pd.DataFrame:
    """The class table: label, cell, representative point (lat, lon) and n_train."""
    path = Path(splits_dir) / CELLS_NAME
    if not path.exists():
        raise GeolocError(f"{path} not found: run the split stage")
    return pd.read_parquet(path)
