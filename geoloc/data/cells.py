"""The cell index: which H3 cell each image falls in, and the integer label of each kept cell."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.geo import cell_center, cells_of

log = logging.getLogger(__name__)

IMAGES_NAME = "images.parquet"
CELLS_NAME = "cells.parquet"


def build_index(images: pd.DataFrame, resolution: int,
                min_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label each image with its cell; drop cells with fewer than `min_images` images.

    Returns (images with `cell` and `label`, cells with `label`, `cell`, `resolution`,
    `center_lat`, `center_lon`, `n_images`), both sorted, labels 0..K-1 in cell-id order.
    """
    images = images.assign(cell=cells_of(images["lat"], images["lon"], resolution))
    counts = images["cell"].value_counts()
    kept = sorted(counts[counts >= min_images].index)
    if not kept:
        raise GeolocError(f"no H3 cell at resolution {resolution} holds {min_images} images "
                         f"(index.min_images_per_cell); lower it or fetch more batches")
    centers = [cell_center(c) for c in kept]
    cells = pd.DataFrame({
        "label": range(len(kept)),
        "cell": kept,
        "resolution": resolution,
        "center_lat": [c[0] for c in centers],
        "center_lon": [c[1] for c in centers],
        "n_images": [int(counts[c]) for c in kept],
    })
    labelled = images.merge(cells[["cell", "label"]], on="cell", how="inner")
    dropped = len(images) - len(labelled)
    log.info("%d cells kept, %d images in %d smaller cells dropped",
             len(cells), dropped, len(counts) - len(kept))
    return labelled.sort_values("image_id").reset_index(drop=True), cells


def data_stats(images: pd.DataFrame, cells: pd.DataFrame, n_fetched: int) -> dict:
    """Dataset size and balance, for metrics/data.json."""
    per_cell = cells["n_images"]
    return {
        "images": len(images),
        "images_dropped_small_cells": n_fetched - len(images),
        "sequences": int(images["sequence_id"].nunique()),
        "cities": int(images["city"].nunique()),
        "batches": int(images["batch"].nunique()),
        "cells": len(cells),
        "images_per_cell": {"min": int(per_cell.min()), "median": float(per_cell.median()),
                            "max": int(per_cell.max())},
        "cell_imbalance": imbalance(per_cell.to_numpy()),
        "images_per_city": images["city"].value_counts().sort_index().to_dict(),
        "images_per_batch": images["batch"].value_counts().sort_index().to_dict(),
    }


def imbalance(counts: np.ndarray) -> dict:
    """How unevenly images spread over cells: the Gini coefficient (0 when every cell holds as
    many, towards 1 when one holds all) and the entropy of the shares over its maximum, log K
    (1 when even)."""
    counts = np.sort(np.asarray(counts, dtype=float))
    k = len(counts)
    shares = counts / counts.sum()
    # Gini from the sorted values: sum_i (2i - k - 1) x_i / (k sum x), i = 1..k.
    gini = float(((2 * np.arange(1, k + 1) - k - 1) * counts).sum() / (k * counts.sum()))
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(k)) if k > 1 else 1.0
    return {"gini": gini, "normalised_entropy": entropy}


def write_index(images: pd.DataFrame, cells: pd.DataFrame, out_dir: Path) -> None:
    images.to_parquet(out_dir / IMAGES_NAME, index=False)
    cells.to_parquet(out_dir / CELLS_NAME, index=False)


def load_index(index_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, cells) as the index stage wrote them."""
    paths = [Path(index_dir) / name for name in (IMAGES_NAME, CELLS_NAME)]
    for path in paths:
        if not path.exists():
            raise GeolocError(f"{path} not found: run the index stage")
    return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
