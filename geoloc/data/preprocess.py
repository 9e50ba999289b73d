"""Turn any photo into the square uint8 array the models read: one way, used everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_square(image: Image.Image, size: int, draft: bool = True) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop to size x size RGB (uint8, HxWx3).

    With `draft` (before anything loads the pixels), the JPEG decoder scales by 1/2, 1/4 or 1/8
    in the DCT domain as far as `size` allows, several times faster than a full decode.
    """
    if draft:
        image.draft("RGB", (size, size))
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = size / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_squares(path: Path | str, sizes: tuple[int, ...], draft: bool = True) -> list[np.ndarray]:
    """The photo at each size, each decoded on its own so that a size's pixels do not depend
    on the other sizes (and match what the predictor makes of the same file)."""
    squares = []
    for size in sizes:
        with Image.open(path) as image:
            squares.append(to_square(image, size, draft))
    return squares
