"""Torch datasets over the resize cache."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedImages(Dataset):
    """(uint8 image H x W x 3, label) pairs read from a memory-mapped cache array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.images[i])), self.labels[i]
