"""360 panoramas cut into views (geoloc.panorama): markers rendered at known headings and
pitches land in the right crop, at the right pixel; detection by XMP or by shape."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from geoloc.panorama import PanoramaError, cut, headings, is_panorama, jpeg, projection
from geoloc.params import PanoramaParams


def cutting(views: int = 4, fov: float = 90, pitch: float = 0, size: int = 512):
    return PanoramaParams(detect="auto", views=views, fov=fov, pitch=pitch, size=size)


COLOURS = {0: (255, 0, 0), 90: (0, 255, 0), 180: (0, 0, 255), 270: (255, 255, 0)}
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" {body}</rdf:RDF></x:xmpmeta>')


def equirectangular(markers: dict[tuple[float, float], tuple[int, int, int]],
                    width: int = 1024, radius_deg: float = 4) -> Image.Image:
    """A grey equirectangular panorama with a disc of colour at each (heading, elevation) in
    degrees, heading 0 at the centre column and growing to the right."""
    height = width // 2
    lon = (np.arange(width) + 0.5) / width * 360 - 180
    lat = 90 - (np.arange(height) + 0.5) / height * 180
    lon, lat = np.meshgrid(lon, lat)
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    for (heading, elevation), colour in markers.items():
        # The angle on the sphere between each pixel's direction and the marker's.
        a, b = np.radians(lat), math.radians(elevation)
        cosine = (np.sin(a) * math.sin(b)
                  + np.cos(a) * math.cos(b) * np.cos(np.radians(lon - heading)))
        pixels[np.degrees(np.arccos(np.clip(cosine, -1, 1))) < radius_deg] = colour
    return Image.fromarray(pixels)


def test_each_marker_lands_in_the_view_facing_it():
    panorama = equirectangular({(h, 0): c for h, c in COLOURS.items()})
    views = cut(panorama, cutting(views=4, fov=90, pitch=0, size=256))
    assert len(views) == 4 and all(v.shape == (256, 256, 3) for v in views)
    for view, colour in zip(views, COLOURS.values(), strict=True):
        # A 4-degree disc is 9 px across the centre (focal length 128 px).
        assert (view[122:134, 122:134] == colour).all()
        # The other markers are 90 degrees off or more: on this view's edges at most.
        for other in COLOURS.values():
            if other != colour:
                assert not (view[:, 16:-16] == other).all(axis=2).any()


def test_an_off_centre_marker_lands_where_the_pinhole_puts_it():
    """A marker 30 degrees right of the centre and 20 up: in view 0 at f tan(30) right of the
    centre; with the views pitched up 20 degrees, on view 0's centre row."""
    panorama = equirectangular({(30, 0): (255, 0, 0), (0, 20): (0, 0, 255)}, radius_deg=1.5)
    size, fov = 256, 90
    focal = size / 2 / math.tan(math.radians(fov / 2))
    view = cut(panorama, cutting(views=4, fov=fov, size=size))[0]
    column = round(size / 2 + focal * math.tan(math.radians(30)) - 0.5)
    assert tuple(view[size // 2, column]) == (255, 0, 0)
    row = round(size / 2 - focal * math.tan(math.radians(20)) - 0.5)
    assert tuple(view[row, size // 2]) == (0, 0, 255)
    pitched = cut(panorama, cutting(views=4, fov=fov, pitch=20, size=size))[0]
    assert tuple(pitched[size // 2, size // 2]) == (0, 0, 255)


def test_the_views_wrap_around_the_seam_and_are_the_same_bytes_each_time():
    """The back view (180 degrees) straddles the panorama's left and right edges."""
    panorama = equirectangular({(180, 0): (0, 0, 255), (175, 0): (255, 0, 0)}, radius_deg=2)
    first = cut(panorama, cutting(views=2, size=200))
    back = first[1]
    assert tuple(back[100, 100]) == (0, 0, 255)
    assert (back[100, :100] == (255, 0, 0)).all(axis=1).any()   # 5 degrees left of the back
    again = cut(panorama, cutting(views=2, size=200))
    assert [jpeg(v) for v in first] == [jpeg(v) for v in again]


def test_views_are_never_sharper_than_the_panorama_and_too_small_is_refused():
    assert cut(equirectangular({}, width=400), cutting(size=512))[0].shape == (100, 100, 3)
    with pytest.raises(PanoramaError, match=r"200 x 100 px is too small .* 50 px, under 64"):
        cut(Image.new("RGB", (200, 100)), cutting())


def saved(image: Image.Image, xmp: str | None) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", **({} if xmp is None else {"xmp": xmp.encode()}))
    return Image.open(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize(("size", "xmp", "detect", "expected"), [
    ((400, 200), None, "auto", True),                       # 2:1, no XMP
    ((400, 300), None, "auto", False),
    ((600, 200), XMP.format(body='GPano:ProjectionType="equirectangular"/>'), "auto", True),
    ((400, 200), XMP.format(body='GPano:ProjectionType="cylindrical"/>'), "auto", False),
    ((600, 200), XMP.format(body='><GPano:ProjectionType>equirectangular'
                                 '</GPano:ProjectionType></rdf:Description>'), "auto", True),
    ((400, 300), None, "always", True),
    ((400, 200), None, "never", False),
])
def test_a_panorama_is_told_by_its_xmp_or_its_shape(size, xmp, detect, expected):
    assert is_panorama(saved(Image.new("RGB", size), xmp), detect) is expected


def test_a_broken_xmp_block_is_named_or_left_to_the_shape():
    image = saved(Image.new("RGB", (400, 200)), "<x:xmpmeta><rdf:RDF>")
    with pytest.raises(PanoramaError, match="its XMP block does not parse"):
        projection(image)
    with pytest.raises(PanoramaError):
        is_panorama(image, "auto")
    assert is_panorama(image, "auto", strict=False)
    flat = saved(Image.new("RGB", (400, 300)), "<x:xmpmeta><rdf:RDF>")
    assert not is_panorama(flat, "auto", strict=False)
    assert projection(saved(Image.new("RGB", (4, 2)), None)) is None


def test_a_large_panorama_is_brought_down_to_the_views_resolution_first():
    """Views of 128 px over 90 degrees need 512 px across the sphere: a 2048 px panorama is
    resized before sampling, and its views match those of the same panorama drawn at 512."""
    markers = {(0, 0): (255, 0, 0), (90, 0): (0, 255, 0)}
    large = cut(equirectangular(markers, width=2048), cutting(size=128))
    small = cut(equirectangular(markers, width=512), cutting(size=128))
    assert all(a.shape == (128, 128, 3) for a in large)
    assert all(np.abs(a.astype(int) - b).mean() < 6 for a, b in zip(large, small, strict=True))


def test_headings_start_at_the_compass_angle():
    assert headings(350.0, cutting(views=4)) == [350.0, 80.0, 170.0, 260.0]
    assert headings(None, cutting(views=3)) == [None, None, None]


def test_each_pixel_samples_the_panoramas_column_and_row_its_ray_points_at():
    """A panorama whose red channel is twice its column (modulo 256) and green twice its row
    (ramps that bilinear sampling reproduces exactly, away from the wrap): each view pixel
    holds the column and row its ray points at, to the half pixel (the pixel centres on both
    sides)."""
    width, height, size = 256, 128, 64
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([(2 * columns) % 256, 2 * rows, np.zeros_like(rows)],
                      axis=-1).astype(np.uint8)
    view = cut(Image.fromarray(pixels), cutting(views=4, fov=90, size=size))[0]
    focal = size / 2   # 90 degrees across
    u = np.arange(size) + 0.5 - size / 2
    lon = np.arctan2(u[None, :], focal)
    lat = np.arctan2(-u[:, None], np.hypot(u[None, :], focal))
    column = (lon / (2 * np.pi) + 0.5) * width - 0.5
    row = (0.5 - lat / np.pi) * height - 0.5
    # View 0 sees columns 96 to 160: twice those wrap at 256, so compare modulo 256.
    red = (view[..., 0] - np.rint(2 * column)) % 256
    assert np.minimum(red, 256 - red).max() <= 1
    assert np.abs(view[..., 1] - np.rint(2 * row)).max() <= 1
    assert np.mean(red == 0) > 0.9
