"""Torch datasets over the resize cache."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


def train_augmentation(size: int) -> v2.Transform:
    """Crops and colour changes on uint8 CHW tensors. No horizontal flip: a mirrored street
    swaps the side people drive on. Colour jitter blurs each drive's camera signature, which a
    model could otherwise memorise instead of the place."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02),
    ])


class CachedImages(Dataset):
    """(uint8 image H x W x 3, label) pairs read from a memory-mapped cache array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 transform: v2.Transform | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.array(self.images[i]))
        if self.transform is not None:
            image = self.transform(image.permute(2, 0, 1)).permute(1, 2, 0)
        return image, self.labels[i]
