"""The resize cache: per split and size, one uint8 array (N x S x S x 3) in the split's row order,
and cache.json saying what each array holds.

Building decodes each JPEG once, in a pool of processes, with Pillow's draft mode (the decoder
scales by 1/2, 1/4 or 1/8 in the DCT domain), and streams the rows into preallocated .npy files
through memory maps whose written pages are handed back to the kernel as it goes, so the
builder's memory does not grow with the dataset. An image that cannot be decoded is skipped and
listed; its row stays zero and is never read.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from geoloc.data.preprocess import read_squares
from geoloc.errors import GeolocError
from geoloc.io import atomic_path, write_json

log = logging.getLogger(__name__)

INDEX_NAME = "cache.json"
RELEASE_ROWS = 256      # written rows between two hand-backs of the mapped pages
CHUNK = 8               # images per task sent to a worker


class CacheError(GeolocError):
    """The cache is missing, stale, truncated or does not match its split."""


@dataclass
class CachedSplit:
    """A split's cache array at one size, and the split's rows that have an image in it;
    `rows["cache_row"]` is each row's position in `images`."""

    images: np.ndarray
    rows: pd.DataFrame


def cache_path(cache_dir: Path | str, split: str, size: int) -> Path:
    return Path(cache_dir) / f"{split}_{size}.npy"


def ids_digest(rows: pd.DataFrame) -> str:
    """What identifies a split's content and order: a hash of its image ids."""
    return hashlib.sha256("\n".join(rows["image_id"]).encode()).hexdigest()


def build_cache(rows: pd.DataFrame, raw_dir: Path, sizes: list[int], out_dir: Path,
                split: str, workers: int, draft: bool = True) -> dict:
    """Write `split`'s images at every size into out_dir; return its cache.json entry."""
    paths = [str(Path(raw_dir) / p) for p in rows["path"]]
    skipped = []
    with ExitStack() as stack:
        files = [stack.enter_context(row_file(cache_path(out_dir, split, size),
                                               (len(paths), size, size, 3)))
                 for size in sizes]
        decoded = decode_all(paths, sizes, draft, workers, stack)
        for i, result in enumerate(tqdm(decoded, total=len(paths), desc=f"{split} cache",
                                        unit="img", mininterval=2)):
            if isinstance(result, str):
                skipped.append({"row": i, "image_id": rows["image_id"].iloc[i],
                                "error": result})
            else:
                for file, square in zip(files, result, strict=True):
                    file.rows[i] = square
            if (i + 1) % RELEASE_ROWS == 0:
                for file in files:
                    file.release()
    for entry in skipped:
        log.warning("%s: skipped image %s: %s", split, entry["image_id"], entry["error"])
    log.info("%s: %d images at %s px, %d skipped", split, len(paths) - len(skipped), sizes,
             len(skipped))
    return {"rows": len(paths), "ids_sha256": ids_digest(rows), "sizes": list(sizes),
            "skipped": skipped}


def decode_all(paths: list[str], sizes: list[int], draft: bool, workers: int,
                stack: ExitStack):
    """Each image's squares (or why it failed), in order, from a pool of `workers` processes."""
    decode = partial(decode_squares, sizes=tuple(sizes), draft=draft)
    if workers <= 1:
        return map(decode, paths)
    # spawn: a forked worker would inherit whatever threads and locks the parent holds.
    pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
    return _ahead(pool, partial(_decode_chunk, decode), paths, chunks_ahead=4 * workers)


def _ahead(pool, decode_chunk, paths: list[str], chunks_ahead: int) -> Iterator:
    """decode_chunk's results, in order, with at most chunks_ahead chunks of CHUNK paths
    decoded or in flight beyond what the caller has taken: Pool.imap runs ahead without
    bound, and a consumer slower than the decoders (a network over the photos) would
    otherwise hold every decoded image in memory."""
    pending = collections.deque()
    for start in range(0, len(paths), CHUNK):
        pending.append(pool.apply_async(decode_chunk, (paths[start:start + CHUNK],)))
        if len(pending) >= chunks_ahead:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _decode_chunk(decode, paths: list[str]) -> list:
    return [decode(path) for path in paths]


def decode_squares(path: str, sizes: tuple[int, ...], draft: bool) -> list[np.ndarray] | str:
    """The image at every size, or the error text if it cannot be decoded."""
    try:
        return read_squares(path, sizes, draft)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


class RowFile:
    """A preallocated .npy written row by row through a shared memory map; `release` writes
    the dirty pages out and drops them from this process, so its memory stays flat."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype=np.uint8):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = header.offset
        del header
        self._file = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self._map = mmap.mmap(self._file.fileno(), 0)
        self.rows = np.frombuffer(self._map, dtype=dtype, count=int(np.prod(shape)),
                                  offset=offset).reshape(shape)

    def release(self) -> None:
        self._map.flush()
        self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.release()
        del self.rows  # the buffer export must go before the map can close
        self._map.close()
        self._file.close()


@contextmanager
def row_file(path: Path, shape: tuple[int, ...], dtype=np.uint8) -> Iterator[RowFile]:
    """A RowFile that appears under `path` only once complete."""
    with atomic_path(path) as tmp:
        file = RowFile(tmp, shape, dtype)
        try:
            yield file
        finally:
            file.close()


def write_cache_index(entries: dict[str, dict], out_dir: Path) -> None:
    write_json(entries, Path(out_dir) / INDEX_NAME)


def load_cache(cache_dir: Path | str, split: str, size: int, rows: pd.DataFrame) -> CachedSplit:
    """Memory-map `split`'s cache at `size`, refusing one that is stale (built from other rows),
    truncated or of the wrong shape."""
    cache_dir = Path(cache_dir)
    index_path = cache_dir / INDEX_NAME
    if not index_path.exists():
        raise CacheError(f"{index_path} not found: run the resize_cache stage")
    entry = json.loads(index_path.read_text()).get(split)
    if entry is None or size not in entry["sizes"]:
        raise CacheError(f"{cache_dir} holds no {split} images at {size} px "
                         f"(cache.sizes): run `dvc repro resize_cache`")
    if entry["rows"] != len(rows) or entry["ids_sha256"] != ids_digest(rows):
        raise CacheError(f"the {split} cache in {cache_dir} was built from other rows than "
                         f"data/splits/{split}.parquet (stale): run `dvc repro resize_cache`")
    path = cache_path(cache_dir, split, size)
    expected = (len(rows), size, size, 3)
    try:
        images = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise CacheError(f"{path} not found: run `dvc repro resize_cache`") from None
    except ValueError as exc:  # numpy cannot map a file shorter than its header says
        raise CacheError(f"{path} is truncated or damaged ({exc}): run "
                         f"`dvc repro resize_cache`") from None
    if images.shape != expected or images.dtype != np.uint8:
        raise CacheError(f"{path} holds {images.dtype} {images.shape}, expected uint8 "
                         f"{expected}: run `dvc repro resize_cache`")
    return CachedSplit(images, usable_rows(rows, entry["skipped"], "cache_row"))


def usable_rows(rows: pd.DataFrame, skipped: list[dict], column: str) -> pd.DataFrame:
    """The rows but those `skipped` (as cache.json or features.json list them), each with its
    position in the array under `column`."""
    usable = rows.assign(**{column: np.arange(len(rows))})
    gone = [s["row"] for s in skipped]
    return usable[~usable[column].isin(gone)].reset_index(drop=True)


def default_workers() -> int:
    return len(os.sched_getaffinity(0))
