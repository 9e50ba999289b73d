"""Leakage-proof train/val/test splits and the cells' representative points.

Two protocols (../shared/reference/geolocation.md, "Leakage"): `sequence` keeps every twin
group of sequences (one drive uploaded in parts) in one split; `spatial` also keeps every block
(an H3 cell finer than the classes) in one split, so val and test measure unseen places.
Validation follows the same rules as test, or early stopping would tune on leaked scores.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import h3
import numpy as np
import pandas as pd

from geoloc.choices import PROTOCOLS
from geoloc.data.cells import stable_hash
from geoloc.errors import GeolocError
from geoloc.geo import cells_of, haversine_km, nearest_km
from geoloc.io import atomic_path
from geoloc.params import SplitParams, is_auto

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)

CELLS_NAME = "cells.parquet"
MAX_RESOLUTION = 15   # H3's finest
# Auto blocks are at least this fine (about 5 km2): the spatial protocol holds out
# neighbourhoods, not whole towns, which a block one level finer than city-sized cells can be.
NEIGHBOURHOOD = 7
SMALL_BLOCKS = 8      # finer auto blocks (under ~0.7 km2) are worth a warning

TEST_SEQUENCES = Path("data/test_sequences.txt")
TEST_SEQUENCES_HEADER = """\
# The sequences that make the test split, one id per line (`geoloc freeze-test` writes them
# from data/splits/test.parquet). When any are listed, test is exactly their images and
# split.test_fraction is unused: one test set while the data grows. Listing none draws it.
"""


def twin_groups(images: pd.DataFrame, max_gap_s: float, max_gap_m: float) -> pd.Series:
    """Group id (its first sequence id) for each sequence: a drive uploaded as several
    sequences is one group. Two sequences are twins when they share a creator and the one that
    starts later (of two starting together: ends later) starts within max_gap_s and max_gap_m
    of where and when the other ended, bounds included, or when they hold views of one place
    (one view group: a rig whose cameras upload a sequence each)."""
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

    def join(a: str, b: str) -> None:
        low, high = sorted((root(a), root(b)))
        parent[high] = low

    for _, drives in ends[ends["creator"].notna()].groupby("creator"):
        drives = drives.sort_values(["start", "end"])
        for i, (a, first) in enumerate(drives.iterrows()):
            for b, second in drives.iloc[i + 1:].iterrows():
                if second["start"] - first["end"] > max_gap_s * 1000:
                    break  # sorted by start: no later drive starts close enough either
                gap = haversine_km(first["lat1"], first["lon1"], second["lat0"],
                                   second["lon0"]) * 1000
                if abs(second["start"] - first["end"]) <= max_gap_s * 1000 and gap <= max_gap_m:
                    join(a, b)
    if "view_group" in images:
        viewed = images[images["view_group"].notna()]
        for sequences in viewed.groupby("view_group")["sequence_id"].unique():
            for other in sequences[1:]:
                join(sequences[0], other)
    return pd.Series({s: root(s) for s in ends.index}, name="group")


def assign_units(images: pd.DataFrame, units: pd.Series, val_fraction: float,
                 test_fraction: float, seed: int) -> pd.Series:
    """Split name for each image; every unit (a twin group, or a block of groups) goes whole
    to one split.

    City by city (a unit's city is its first), units are shuffled and each goes to the split
    that most lacks images against its share, so every city contributes to every split in
    proportion where its units allow, large units fall where there is room for them, and what
    one city could not give is made up by the next.
    """
    # Exact shares (0.15 is 3/20, not the float nearest it), so splits that lack equally are
    # tied and the tie-break settles it, not float rounding.
    val, test = Fraction(str(val_fraction)), Fraction(str(test_fraction))
    targets = {"train": 1 - val - test, "val": val, "test": test}
    frame = pd.DataFrame({"unit": units, "city": images["city"]})
    city_of_unit = frame.sort_values(["unit", "city"]).groupby("unit")["city"].first()
    sizes = frame.groupby("unit").size()
    split_of_unit = {}
    # Carried over: what one city could not give, the next makes up.
    lacking = dict.fromkeys(SPLITS, Fraction(0))
    for city, city_units in city_of_unit.groupby(city_of_unit):
        rng = np.random.default_rng([seed, stable_hash(city)])
        names = city_units.index.to_numpy()
        total = int(sizes[names].sum())
        for split, share in targets.items():
            lacking[split] += share * total
        for name in names[rng.permutation(len(names))]:
            # Random tie-breaks: in a fixed order, val would win every tie with test.
            tie_break = dict(zip(SPLITS, rng.random(len(SPLITS)), strict=True))
            split = max(SPLITS, key=lambda s: (lacking[s], tie_break[s]))
            lacking[split] -= int(sizes[name])
            split_of_unit[name] = split
    return units.map(split_of_unit)


def home_blocks(group: pd.Series, blocks: pd.Series) -> pd.Series:
    """For each image, its group's home block: the one holding most of the group's images
    (ties go to the smallest block id), so a block and every group living in it can go whole
    to one split."""
    votes = pd.DataFrame({"group": group, "block": blocks}).value_counts().reset_index()
    home = votes.sort_values(["group", "count", "block"], ascending=[True, False, True])
    return group.map(home.groupby("group")["block"].first())


def blocks_of(images: pd.DataFrame, resolution: int) -> pd.Series:
    return pd.Series(cells_of(images["lat"], images["lon"], resolution), index=images.index)


def make_splits(images: pd.DataFrame, cells: pd.DataFrame, cfg: SplitParams,
                test_sequences: frozenset[str] = frozenset(),
                ) -> tuple[dict, pd.DataFrame, dict]:
    """Return ({split: rows}, cells with representative points, audit figures).

    With `test_sequences` (read_test_sequences), test is exactly the images of those
    sequences, whatever else the data holds: a test set that stays fixed while the data grows.
    The units holding them are test units; their other images (a new drive twinned with a
    listed one, or under the spatial protocol one in a test block) are dropped, not trained
    on, and val takes `val_fraction` of the rest.

    Every row holds its `unit`: its twin group, or under the spatial protocol its group's
    home block. Under the spatial protocol an image lying in a block of another split than its
    own is dropped (the ends of drives that leave their home block), so no test or val block
    holds a train image. Val and test then keep one image per sequence if asked. A cell's point
    is the mean position of its training images; a cell with none keeps its hexagon centre, which
    uses no data and so cannot leak. Val and test images in such a cell stay: they are the
    photos of places training never saw, which a user's photos can be too (a classifier
    cannot name their cell; retrieval may still find a neighbour), and dropping them would
    flatter every figure. The audit counts them.
    """
    block_resolution = resolve_block_resolution(cfg.block_resolution, cells)
    groups = twin_groups(images, cfg.twin_max_gap_s, cfg.twin_max_gap_m)
    group = images["sequence_id"].map(groups)
    blocks = blocks_of(images, block_resolution)
    units = group if cfg.protocol == "sequence" else home_blocks(group, blocks)
    dropped = {reason: dict.fromkeys(SPLITS, 0) for reason in
               ("outside_block", "one_per_sequence", "beside_the_fixed_test")}
    if test_sequences:
        listed = images["sequence_id"].isin(test_sequences)
        test_units = units.isin(units[listed])
        split = pd.concat([
            assign_units(images[~test_units], units[~test_units], cfg.val_fraction, 0.0,
                         cfg.seed),
            pd.Series("test", index=images.index[test_units])]).loc[images.index]
    else:
        split = assign_units(images, units, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if cfg.protocol == "spatial":
        keep = split == block_splits(blocks, units, split)
        dropped["outside_block"] = _count(split[~keep])
        split = split[keep]
    if test_sequences:
        keep = (split != "test") | images.loc[split.index, "sequence_id"].isin(test_sequences)
        dropped["beside_the_fixed_test"] = _count(split[~keep])
        split = split[keep]
    if cfg.one_image_per_sequence:
        keep = _one_per_sequence(images.loc[split.index]) | (split == "train")
        dropped["one_per_sequence"] = _count(split[~keep])
        split = split[keep]
    cells = with_points(cells, images.loc[split.index[split == "train"]])
    unseen = _count(split[~images.loc[split.index, "label"].isin(
        cells.loc[cells["n_train"] > 0, "label"])])
    # Each photo keeps its unit, so cross-validation cuts folds along the same lines.
    images = images.assign(unit=units.astype(str))
    frames = {name: images.loc[split.index[split == name]].sort_values("image_id")
              .reset_index(drop=True) for name in SPLITS}
    audit = split_audit(frames, groups, block_resolution)
    audit["images_dropped"] = dropped
    audit["fixed_test_sequences"] = len(test_sequences)
    audit["block_resolution"] = block_resolution
    audit["cells_without_train_images"] = int((cells["n_train"] == 0).sum())
    audit["images_in_cells_without_train_images"] = unseen
    return frames, cells, audit


def with_points(cells: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The class table with each cell's point the mean position of its `train` photos and
    `n_train` their count; a cell with none keeps its hexagon centre, which uses no data and
    so cannot leak."""
    points = train.groupby("label").agg(lat=("lat", "mean"), lon=("lon", "mean"),
                                        n_train=("lat", "size"))
    cells = cells.drop(columns=["lat", "lon", "n_train"], errors="ignore").join(points,
                                                                                on="label")
    cells["n_train"] = cells["n_train"].fillna(0).astype("int64")
    cells["lat"] = cells["lat"].fillna(cells["center_lat"])
    cells["lon"] = cells["lon"].fillna(cells["center_lon"])
    return cells


def read_test_sequences(path: Path | str, images: pd.DataFrame) -> frozenset[str]:
    """The sequence ids listed in `path` (one per line; `#` starts a comment), or none when it
    lists none. Ids the images do not hold are named in a warning (the data shrank)."""
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    listed = frozenset(filter(None, lines))
    missing = listed - set(images["sequence_id"])
    if missing:
        log.warning("%d of the %d sequences in %s are not in the data (%s...): the fixed test "
                    "split holds the other %d", len(missing), len(listed), path,
                    ", ".join(sorted(missing)[:3]), len(listed) - len(missing))
    if listed and listed == missing:
        raise GeolocError(f"none of the sequences in {path} is in the data: empty it to draw "
                          f"the test split, or fetch the data it was written for")
    return listed


def write_test_sequences(splits_dir: Path | str, path: Path | str) -> int:
    """List the sequences of a split's test set in `path`, for read_test_sequences; returns
    how many."""
    sequences = sorted(load_split(splits_dir, "test")["sequence_id"].unique())
    with atomic_path(path) as tmp:
        Path(tmp).write_text(TEST_SEQUENCES_HEADER + "".join(f"{s}\n" for s in sequences))
    return len(sequences)


def resolve_block_resolution(value: int | str, cells: pd.DataFrame) -> int:
    """split.block_resolution, `auto` being one level finer than the finest cell and no
    coarser than a neighbourhood (NEIGHBOURHOOD); an explicit value no finer than the finest
    cell is refused: such a block could hold a whole cell and send it to val or test with no
    train image."""
    finest = int(cells["resolution"].max())
    if is_auto(value):
        resolution = min(max(finest + 1, NEIGHBOURHOOD), MAX_RESOLUTION)
        if resolution > SMALL_BLOCKS:
            log.warning("split.block_resolution auto is %d, one finer than the finest cell: "
                        "blocks of about %.3g km2, so under the spatial protocol photos tens "
                        "of metres apart may go to different splits; set it (e.g. to %d) if "
                        "that protocol matters", resolution,
                        h3.average_hexagon_area(resolution, "km^2"), SMALL_BLOCKS)
        return resolution
    if value <= finest:
        raise GeolocError(f"split.block_resolution ({value}) must be finer than the finest cell "
                          f"of the index (resolution {finest}): set it to auto or above {finest}")
    return value


def block_splits(blocks: pd.Series, units: pd.Series, split: pd.Series) -> pd.Series:
    """The split of each image's block: the split of the groups whose home it is, or where it
    is home to none, the split most of its images are in."""
    unit_split = split.groupby(units).first()
    majority = split.groupby(blocks).agg(lambda s: s.value_counts().sort_index().idxmax())
    return blocks.map(unit_split).fillna(blocks.map(majority))


def _one_per_sequence(images: pd.DataFrame) -> pd.Series:
    """True for one image of each sequence, chosen by a hash of its id."""
    key = images["image_id"].map(stable_hash)
    return key == key.groupby(images["sequence_id"]).transform("min")


def _count(split: pd.Series) -> dict[str, int]:
    return {name: int((split == name).sum()) for name in SPLITS}


def split_audit(frames: dict[str, pd.DataFrame], groups: pd.Series,
                block_resolution: int) -> dict:
    """Counts per split; the sequences, twin groups and blocks shared between splits (the
    first two must be 0, the last too under the spatial protocol); how far each val and test
    image is from its nearest train image."""
    sequences = {name: set(df["sequence_id"]) for name, df in frames.items()}
    twins = {name: set(groups[list(s)]) for name, s in sequences.items()}
    blocks = {name: set(blocks_of(df, block_resolution)) for name, df in frames.items()}
    return {
        "images": {name: len(df) for name, df in frames.items()},
        "sequences": {name: len(s) for name, s in sequences.items()},
        "shared_sequences": _shared(sequences),
        "twin_groups": int((groups.value_counts() > 1).sum()),
        "shared_twin_groups": _shared(twins),
        "shared_blocks": _shared(blocks),
        "nearest_train_km": {name: _summary(nearest_train_km(frames, name))
                             for name in ("val", "test")},
    }


def nearest_train_km(frames: dict[str, pd.DataFrame], name: str) -> np.ndarray:
    """Distance from each image of split `name` to its nearest train image."""
    train, rows = frames["train"], frames[name]
    return nearest_km(rows["lat"], rows["lon"], train["lat"], train["lon"])


def distances_by_protocol(images: pd.DataFrame, cells: pd.DataFrame, cfg: SplitParams,
                          test_sequences: frozenset[str] = frozenset(),
                          ) -> dict[str, np.ndarray]:
    """Each test image's distance to its nearest train image under each protocol, the other
    params unchanged: what a stricter split costs in how close test is to train."""
    distances = {}
    for protocol in PROTOCOLS:
        frames, _, _ = make_splits(images, cells, replace(cfg, protocol=protocol),
                                   test_sequences)
        distances[protocol] = nearest_train_km(frames, "test")
    return distances


def _summary(km: np.ndarray) -> dict[str, float | None]:
    if len(km) == 0:
        return {"min": None, "median": None}
    return {"min": float(km.min()), "median": float(np.median(km))}


def _shared(sets: dict[str, set]) -> int:
    return sum(len(sets[a] & sets[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:])


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
