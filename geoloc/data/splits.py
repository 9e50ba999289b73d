"""Sequence-disjoint train/val/test splits and the cells' representative points."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.geo import haversine_km
from geoloc.params import SplitParams

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CELLS_NAME = "cells.parquet"


def twin_groups(images: pd.DataFrame, max_gap_s: float, max_gap_m: float) -> pd.Series:
    """Group id (its first sequence id) for each sequence: a drive uploaded as several
    sequences is one group. Two sequences are twins when they share a creator and one starts
    within max_gap_s and max_gap_m of where and when the other ended."""
    ordered = images.sort_values(["sequence_id", "captured_at", "image_id"])
    ends = ordered.groupby("sequence_id").agg(
        creator=("creator", "first"), start=("captured_at", "first"),
        end=("captured_at", "last"), lat0=("lat", "first"), lon0=("lon", "first"),
        lat1=("lat", "last"), lon1=("lon", "last"))
    parent = {s: s for s in ends.index}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for _, drives in ends[ends["creator"].notna()].groupby("creator"):
        drives = drives.sort_values(["start", "end"])
        for i, (a, first) in enumerate(drives.iterrows()):
            for b, second in drives.iloc[i + 1:].iterrows():
                if second["start"] - first["end"] > max_gap_s * 1000:
                    break  # sorted by start: no later drive starts close enough either
                gap = haversine_km(first["lat1"], first["lon1"], second["lat0"],
                                   second["lon0"]) * 1000
                if abs(second["start"] - first["end"]) <= max_gap_s * 1000 and gap <= max_gap_m:
                    low, high = sorted((root(a), root(b)))
                    parent[high] = low
    return pd.Series({s: root(s) for s in ends.index}, name="group")


def assign_sequences(images: pd.DataFrame, groups: pd.Series, val_fraction: float,
                     test_fraction: float, seed: int) -> pd.Series:
    """Split name for each image; every twin group of sequences goes whole to one split.

    Within each city (a group's first), groups are shuffled and each goes to the split
    furthest below its target share of images, so every city contributes to every split in
    proportion.
    """
    targets = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
               "test": test_fraction}
    group = images["sequence_id"].map(groups)
    frame = pd.DataFrame({"group": group, "city": images["city"]})
    city_of_group = frame.sort_values(["group", "city"]).groupby("group")["city"].first()
    sizes = frame.groupby("group").size()
    split_of_group = {}
    for city, city_groups in city_of_group.groupby(city_of_group):
        rng = np.random.default_rng([seed, _stable_int(city)])
        names = city_groups.index.to_numpy()
        counts = dict.fromkeys(SPLITS, 0)
        total = 0
        for name in names[rng.permutation(len(names))]:
            n = int(sizes[name])
            total += n
            split = max(SPLITS, key=lambda s: targets[s] * total - counts[s])
            counts[split] += n
            split_of_group[name] = split
    return group.map(split_of_group)


def make_splits(images: pd.DataFrame, cells: pd.DataFrame, cfg: SplitParams,
                ) -> tuple[dict, pd.DataFrame, dict]:
    """Return ({split: rows}, cells with representative points, audit figures).

    Val and test images whose cell has no training image are dropped: no point can be learnt
    for them. A cell's point is the mean position of its training images; a cell with none keeps
    its hexagon centre, which uses no data and so cannot leak.
    """
    groups = twin_groups(images, cfg.twin_max_gap_s, cfg.twin_max_gap_m)
    split = assign_sequences(images, groups, cfg.val_fraction, cfg.test_fraction, cfg.seed)
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
    audit = split_audit(frames, groups)
    audit["images_dropped_no_train_cell"] = dropped
    audit["cells_without_train_images"] = int((cells["n_train"] == 0).sum())
    return frames, cells, audit


def split_audit(frames: dict[str, pd.DataFrame], groups: pd.Series) -> dict:
    """Counts per split, and the sequences and twin groups shared between splits (must be 0)."""
    sequences = {name: set(df["sequence_id"]) for name, df in frames.items()}
    twins = {name: set(groups[list(s)]) for name, s in sequences.items()}
    return {
        "images": {name: len(df) for name, df in frames.items()},
        "sequences": {name: len(s) for name, s in sequences.items()},
        "shared_sequences": _shared(sequences),
        "twin_groups": int((groups.value_counts() > 1).sum()),
        "shared_twin_groups": _shared(twins),
    }


def _shared(sets: dict[str, set]) -> int:
    return sum(len(sets[a] & sets[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:])


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
