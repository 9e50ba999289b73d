import json

import h3
import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image

from geoloc.data import plots

CITIES = pd.DataFrame({"city": ["Paris", "Lyon", "Marseille"],
                       "lat": [48.8566, 45.7640, 43.2965], "lon": [2.3522, 4.8357, 5.3698]})
# Two res-5 cells far from every city label: one dense, one sparse (a >10x span: log colours).
DENSE = h3.latlng_to_cell(47.0, 0.0, 5)
SPARSE = h3.latlng_to_cell(44.5, 1.0, 5)
CELLS = pd.DataFrame({"cell": [DENSE, SPARSE], "n_images": [500, 3]})


def _pixel(image: Image.Image, ax, lon: float, lat: float) -> tuple[int, ...]:
    x, y = ax.transData.transform((lon, lat))  # display pixels, origin at the bottom left
    return image.getpixel((round(x), image.height - round(y)))[:3]


def _hex(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def _close(pixel: tuple[int, ...], rgba: tuple[float, ...]) -> bool:
    return all(abs(p - round(255 * c)) <= 2 for p, c in zip(pixel, rgba[:3], strict=True))


def test_coverage_map_colours_each_cell_by_its_count(tmp_path):
    fig, ax = plots.coverage_figure(CELLS, CITIES)
    plots.save_png(fig, tmp_path / "map.png")
    image = Image.open(tmp_path / "map.png").convert("RGB")
    assert image.size == (9 * plots.DPI, 9 * plots.DPI)
    dense = _pixel(image, ax, *reversed(h3.cell_to_latlng(DENSE)))
    sparse = _pixel(image, ax, *reversed(h3.cell_to_latlng(SPARSE)))
    france = _pixel(image, ax, 2.5, 46.0)  # open country between the two cells
    assert france == _hex(plots.FRANCE_FILL)
    assert dense != sparse
    assert france not in (dense, sparse)
    # The most images take the colour map's top, the fewest its bottom.
    cmap = colormaps[plots.CELL_CMAP]
    assert _close(dense, cmap(1.0)) and _close(sparse, cmap(0.0))


def test_coverage_map_is_byte_identical_on_a_second_run(tmp_path):
    cells = pd.DataFrame({
        # Mixed resolutions, a fine cell inside a coarse one, and one outside the France frame.
        "cell": [h3.latlng_to_cell(46.5, 2.5, 4), h3.latlng_to_cell(46.5, 2.5, 6),
                 h3.latlng_to_cell(52.3, 4.9, 5)],
        "n_images": [40, 12, 7],
    })
    plots.coverage_map(cells, CITIES, tmp_path / "a.png")
    plots.coverage_map(cells, CITIES, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp left


def test_cell_histogram_writes_a_stable_png(tmp_path):
    counts = np.array([3, 5, 5, 8, 12, 40, 41, 150])
    for name in ("a.png", "b.png"):
        plots.cell_histogram(counts, tmp_path / name, min_images=5, max_images=100)
    assert Image.open(tmp_path / "a.png").size == (7 * plots.DPI, round(4.5 * plots.DPI))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_distance_distribution_writes_a_stable_png(tmp_path):
    rng = np.random.default_rng(0)
    distances = {"sequence": np.r_[np.zeros(5), rng.lognormal(-2, 1, 100)],
                 "spatial": rng.lognormal(1, 1, 100)}
    for name in ("a.png", "b.png"):
        plots.distance_distribution(distances, tmp_path / name)
    assert Image.open(tmp_path / "a.png").size == (7 * plots.DPI, round(4.5 * plots.DPI))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_base_map_has_metropolitan_france_in_focus():
    data = json.loads(plots.BASE_MAP.read_text(encoding="utf-8"))
    focus = [f for f in data["features"] if f["properties"]["focus"]]
    assert [f["properties"]["name"] for f in focus] == ["France"]
    points = np.array([p for polygon in focus[0]["geometry"]["coordinates"]
                       for ring in polygon for p in ring])
    lon_min, lat_min = points.min(axis=0)
    lon_max, lat_max = points.max(axis=0)
    # Brittany's tip to Corsica's east coast, Corsica's south tip to Dunkerque.
    assert -5.2 < lon_min < -4.5 and 9.3 < lon_max < 10.0
    assert 41.2 < lat_min < 41.5 and 51.0 < lat_max < 51.2
    neighbours = {f["properties"]["name"] for f in data["features"]} - {"France"}
    assert {"Belgium", "Germany", "Italy", "Spain", "Switzerland"} <= neighbours
