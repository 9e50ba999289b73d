"""The resize cache: one uint8 array (N x S x S x 3) per split and size, rows in split order."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from geoloc.data.preprocess import read_square
from geoloc.errors import GeolocError
from geoloc.io import atomic_path

log = logging.getLogger(__name__)


def cache_path(cache_dir: Path | str, split: str, size: int) -> Path:
    return Path(cache_dir) / f"{split}_{size}.npy"


def build_cache(rows: pd.DataFrame, raw_dir: Path, size: int, out: Path) -> None:
    """Decode, resize and write every image of `rows` into a memory-mapped .npy at `out`."""
    with atomic_path(out) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(rows), size, size, 3))
        for i, path in enumerate(tqdm(rows["path"], desc=out.name, unit="img", mininterval=2)):
            try:
                array[i] = read_square(Path(raw_dir) / path, size)
            except OSError as exc:
                raise GeolocError(f"cannot read image {Path(raw_dir) / path}: {exc}") from exc
        array.flush()
        del array
    log.info("wrote %s (%d images at %d px)", out, len(rows), size)


def load_cache(cache_dir: Path | str, split: str, size: int, expected_rows: int) -> np.ndarray:
    """Memory-map a split's cache, checking it matches the split it claims to hold."""
    path = cache_path(cache_dir, split, size)
    if not path.exists():
        raise GeolocError(f"{path} not found: run the resize_cache stage")
    array = np.load(path, mmap_mode="r")
    if array.shape != (expected_rows, size, size, 3):
        raise GeolocError(f"{path} has shape {array.shape}, expected "
                         f"({expected_rows}, {size}, {size}, 3): rebuild it with dvc repro")
    return array
