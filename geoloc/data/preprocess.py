"""Turn any photo into the square uint8 array the models read: one way, used everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop to size x size RGB (uint8, HxWx3)."""
    image = ImageOps.exif_transpose(image)
    # Draft mode lets the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT domain.
    image.draft("RGB", (size, size))
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_square(path: Path | str, size: int) -> np.ndarray:
    with Image.open(path) as image:
        return to_square(image, size)
