"""360 panoramas cut into perspective views, the views of one place.

An equirectangular panorama holds the whole sphere: longitude across (its centre column faces
the camera's heading), latitude down, twice as wide as high. A model reads ordinary street
photos, so each panorama is cut into `views` pinhole crops of `fov` degrees at `pitch`, view i
facing i x 360 / views degrees to the right of the centre column (the compass angle, where known,
is the centre's). The crops are one place (geoloc.retrieval answers them together). Sampling is
bilinear, in float32 numpy: the same panorama gives the same crops, byte for byte.
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from geoloc.choices import PANORAMA_DETECTION
from geoloc.errors import GeolocError

if TYPE_CHECKING:   # params (and pandas under it) load only where they are used
    from geoloc.params import PanoramaParams

GPANO = "{http://ns.google.com/photos/1.0/panorama/}"
MIN_CROP_PX = 64   # a panorama whose views would be smaller than this is too small to cut
JPEG_QUALITY = 92


class PanoramaError(GeolocError, ValueError):
    """A panorama that cannot be cut: too small, or its XMP block does not parse."""


def headings(compass: float | None, cutting: PanoramaParams) -> list[float | None]:
    """The compass heading each view faces, given the centre column's (or None)."""
    return [None if compass is None else (compass + i * 360.0 / cutting.views) % 360.0
            for i in range(cutting.views)]


def view_size(width: int, height: int, cutting: PanoramaParams) -> int:
    """The side of a panorama's views: cutting.size, or less where the panorama has fewer
    pixels per degree; too small to cut, a PanoramaError."""
    size = min(cutting.size, round(width * cutting.fov / 360.0))
    if size < MIN_CROP_PX:
        raise PanoramaError(f"{width} x {height} px is too small to cut into views of "
                            f"{cutting.fov:g} degrees (each would be {size} px, under "
                            f"{MIN_CROP_PX})")
    return size


def projection(image: Image.Image) -> str | None:
    """The projection the photo's XMP names (GPano:ProjectionType, lower case), or None
    without one."""
    xmp = image.info.get("xmp")
    if not xmp:
        return None
    try:
        root = ET.fromstring(xmp)
    except ET.ParseError as exc:
        raise PanoramaError(f"its XMP block does not parse ({exc})") from None
    for element in root.iter():
        if element.tag == f"{GPANO}ProjectionType":
            return (element.text or "").strip().lower()
        if f"{GPANO}ProjectionType" in element.attrib:
            return element.attrib[f"{GPANO}ProjectionType"].strip().lower()
    return None


def is_panorama(image: Image.Image, detect: str, *, strict: bool = True) -> bool:
    """Whether to cut this photo: always, never, or (auto) where its XMP says
    equirectangular or, without a GPano projection, where it is exactly twice as wide as high.
    A broken XMP block raises PanoramaError, or (not `strict`) leaves the shape to decide."""
    if detect not in PANORAMA_DETECTION:
        raise GeolocError(f"panorama detection {detect!r}: one of "
                          f"{', '.join(PANORAMA_DETECTION)}")
    if detect != "auto":
        return detect == "always"
    try:
        kind = projection(image)
    except PanoramaError:
        if strict:
            raise
        kind = None
    if kind is not None:
        return kind == "equirectangular"
    width, height = image.size
    return width == 2 * height


def cut(image: Image.Image, cutting: PanoramaParams) -> list[np.ndarray]:
    """The panorama's views (size x size x 3 uint8 each, view_size), view i facing
    i x 360 / views degrees to the right of its centre column."""
    width, height = image.size
    size = view_size(width, height, cutting)
    # No sharper than the views need: a 50-megapixel panorama would otherwise be sampled from
    # a float copy of 600 MB.
    needed = math.ceil(size * 360.0 / cutting.fov)
    if width > needed:
        image = image.resize((needed, max(1, round(height * needed / width))),
                             Image.Resampling.LANCZOS)
        width, height = image.size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    x, y, z = _rays(size, cutting.fov, cutting.pitch)
    views = []
    for view in range(cutting.views):
        yaw = np.float32(math.radians(view * 360.0 / cutting.views))
        turned_x = x * np.cos(yaw) + z * np.sin(yaw)
        turned_z = z * np.cos(yaw) - x * np.sin(yaw)
        lon = np.arctan2(turned_x, turned_z)
        lat = np.arctan2(y, np.hypot(turned_x, turned_z))
        column = (lon / np.float32(2 * math.pi) + np.float32(0.5)) * width - np.float32(0.5)
        row = (np.float32(0.5) - lat / np.float32(math.pi)) * height - np.float32(0.5)
        views.append(_bilinear(pixels, column, row))
    return views


def jpeg(view: np.ndarray) -> bytes:
    """A view as JPEG bytes (the same view, the same bytes)."""
    out = io.BytesIO()
    Image.fromarray(view).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


@dataclass(frozen=True)
class View:
    """One view of a panorama, as every source writes it and the predictor answers it."""
    data: bytes               # JPEG
    heading: float | None     # the compass heading it faces, where the panorama's is known
    size: int                 # px a side


def views_of(image: Image.Image, compass: float | None, cutting: PanoramaParams) -> list[View]:
    """The panorama cut into views (cut), each as JPEG bytes with its heading."""
    return [View(jpeg(view), heading, view.shape[0]) for view, heading in
            zip(cut(image, cutting), headings(compass, cutting), strict=True)]


def _rays(size: int, fov: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel's ray (x right, y up, z ahead) of a pinhole camera of `fov` degrees across,
    tilted up by `pitch` degrees."""
    focal = (size / 2) / math.tan(math.radians(fov) / 2)
    centres = np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2)
    x = np.broadcast_to(centres[None, :], (size, size))
    y = np.broadcast_to(-centres[:, None], (size, size))
    z = np.full((size, size), np.float32(focal))
    tilt = np.float32(math.radians(pitch))
    return x, y * np.cos(tilt) + z * np.sin(tilt), z * np.cos(tilt) - y * np.sin(tilt)


def _bilinear(pixels: np.ndarray, column: np.ndarray, row: np.ndarray) -> np.ndarray:
    """pixels (H x W x 3) sampled at fractional (column, row): columns wrap around the
    sphere, rows stop at the poles."""
    height, width = pixels.shape[:2]
    row = np.clip(row, 0, height - 1)
    left, top = np.floor(column), np.floor(row)
    across, down = (column - left)[..., None], (row - top)[..., None]
    left = left.astype(np.int64) % width
    right = (left + 1) % width
    top = top.astype(np.int64)
    bottom = np.minimum(top + 1, height - 1)
    upper = pixels[top, left] * (1 - across) + pixels[top, right] * across
    lower = pixels[bottom, left] * (1 - across) + pixels[bottom, right] * across
    return np.clip(np.rint(upper * (1 - down) + lower * down), 0, 255).astype(np.uint8)
