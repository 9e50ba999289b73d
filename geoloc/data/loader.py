"""Batches straight from the memory-mapped resize cache.

The dataset's items are whole batches: one read of the sampled rows (in file order) returns a
uint8 batch, B x S x S x 3, with no per-image decode, resize or tensor conversion; augmentation
and normalisation then run on the batch (geoloc.data.augment, and the model itself). Worker
processes reopen the memory map rather than receive a copy of the array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from geoloc.data.cache import CachedSplit


class CacheBatches(Dataset):
    """Given a list of item numbers: their images (uint8), labels (int64) and true positions
    (float32 lat, lon in degrees, for the distance-aware losses)."""

    def __init__(self, images: np.ndarray, cache_rows: np.ndarray, labels: np.ndarray,
                 points: np.ndarray):
        if not len(cache_rows) == len(labels) == len(points):
            raise ValueError(f"{len(cache_rows)} rows, {len(labels)} labels, {len(points)} points")
        self.images = images
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.points = np.asarray(points, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        items = np.asarray(items)[np.argsort(self.cache_rows[items], kind="stable")]
        # In file order (a batch has no order of its own); fancy indexing: one copy, writable.
        images = self._array()[self.cache_rows[items]]
        return (torch.from_numpy(images), torch.from_numpy(self.labels[items]),
                torch.from_numpy(self.points[items]))

    def _array(self) -> np.ndarray:
        if self.images is None:
            self.images = np.load(self._path, mmap_mode="r")
        return self.images

    def __getstate__(self) -> dict:
        # Pickling a memory map would copy the whole array into every worker: send its path.
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap):
            state["images"], state["_path"] = None, self.images.filename
        return state


def cache_loader(split: CachedSplit, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, workers: int = 0,
                 rank: int = 0, world: int = 1, drop_last: bool = False) -> DataLoader:
    """A DataLoader of (uint8 images, labels, points) batches over the split's usable rows.

    Shuffling draws from `generator`: reseed it before an epoch to make that epoch's order
    reproducible (and resumable). With `world` > 1 (DDP) each rank takes every world-th item
    of the order, so the ranks share out an epoch.
    """
    rows = split.rows
    dataset = CacheBatches(split.images, rows["cache_row"].to_numpy(), rows["label"].to_numpy(),
                           rows[["lat", "lon"]].to_numpy())
    items = range(len(dataset))
    order = RandomSampler(items, generator=generator) if shuffle else SequentialSampler(items)
    if world > 1:
        order = _RankShare(order, rank, world)
    return DataLoader(dataset, batch_size=None,
                      sampler=BatchSampler(order, batch_size, drop_last),
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


class _RankShare(Sampler):
    """Every world-th item of another sampler's order, starting at `rank`; every rank gets as
    many items (the order is padded by wrapping), so DDP's collective steps stay in step."""

    def __init__(self, order: Sampler, rank: int, world: int):
        self.order, self.rank, self.world = order, rank, world

    def __len__(self) -> int:
        return -(-len(self.order) // self.world)

    def __iter__(self):
        items = list(self.order)
        items += items[: len(self) * self.world - len(items)]
        return iter(items[self.rank::self.world])
