"""Batches straight from the memory-mapped resize cache.

The dataset's items are whole batches: one read of the sampled rows (in file order) returns a
uint8 batch, B x S x S x 3, with no per-image decode, resize or tensor conversion; augmentation
and normalisation then run on the batch (geoloc.data.augment, and the model itself). Worker
processes reopen the memory map rather than receive a copy of the array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from geoloc.data.cache import CachedSplit


class CacheBatches(Dataset):
    """Given a list of item numbers, their images (uint8 tensor) and labels (int64 tensor)."""

    def __init__(self, images: np.ndarray, positions: np.ndarray, labels: np.ndarray):
        if len(positions) != len(labels):
            raise ValueError(f"{len(positions)} positions but {len(labels)} labels")
        self.images = images
        self.positions = np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.positions[items]
        order = np.argsort(rows, kind="stable")  # read in file order; a batch has no order
        images = self._array()[rows[order]]      # fancy indexing: one copy, writable
        return torch.from_numpy(images), torch.from_numpy(self.labels[items][order])

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


def cache_loader(split: CachedSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader of (uint8 images, labels) batches over the split's usable rows."""
    dataset = CacheBatches(split.images, split.rows["cache_row"].to_numpy(),
                           split.rows["label"].to_numpy())
    items = range(len(dataset))
    order = (RandomSampler(items, generator=torch.Generator().manual_seed(seed)) if shuffle
             else SequentialSampler(items))
    return DataLoader(dataset, batch_size=None,
                      sampler=BatchSampler(order, batch_size, drop_last),
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())
