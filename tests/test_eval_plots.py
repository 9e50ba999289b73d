import math

import h3
import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from PIL import Image

from geoloc import eval_plots
from geoloc.data import plots

# Res-4 cells far apart: one good, one bad, one below the 10 m floor, one with no test image.
GOOD = h3.latlng_to_cell(48.0, 0.0, 4)
BAD = h3.latlng_to_cell(44.0, 4.5, 4)
EXACT = h3.latlng_to_cell(48.5, 6.0, 4)
UNTESTED = h3.latlng_to_cell(45.0, 0.5, 4)
PER_CELL = pd.DataFrame({"cell": [GOOD, BAD, EXACT, UNTESTED],
                         "median_km": [0.3, 420.0, 0.0, np.nan],
                         "n_test": [12, 7, 3, 0]})

MAGENTA = (255, 0, 255)


def _pixel(image: Image.Image, transform, x: float, y: float) -> tuple[int, ...]:
    x, y = transform.transform((x, y))  # display pixels, origin at the bottom left
    return image.getpixel((round(x), image.height - round(y)))[:3]


def _hex(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def _close(pixel: tuple[int, ...], rgb: tuple[float, ...], tolerance: int = 2) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, rgb, strict=True))


def _cell_pixel(image: Image.Image, ax, cell: str) -> tuple[int, ...]:
    lat, lon = h3.cell_to_latlng(cell)
    return _pixel(image, ax.transData, lon, lat)


def _expected(km: float) -> tuple[int, ...]:
    # Worked out by hand rather than through the module's norm: 10 m to 1000 km over 5 decades.
    share = math.log10(max(km, 0.01) / 0.01) / 5
    return tuple(round(255 * c) for c in colormaps[plots.CELL_CMAP](share)[:3])


def test_error_map_colours_each_cell_by_its_median_error(tmp_path):
    fig, ax = eval_plots.error_map_figure(PER_CELL)
    plots.save_png(fig, tmp_path / "errors.png")
    image = Image.open(tmp_path / "errors.png").convert("RGB")
    assert image.size == (9 * plots.DPI, 9 * plots.DPI)

    good, bad = _cell_pixel(image, ax, GOOD), _cell_pixel(image, ax, BAD)
    assert _close(good, _expected(0.3)) and _close(bad, _expected(420.0))
    assert not _close(good, bad, tolerance=40)  # 3 decades apart: far apart on the colour map
    assert _close(_cell_pixel(image, ax, EXACT), _expected(0.0))  # clamped to the floor
    assert _cell_pixel(image, ax, UNTESTED) == _hex(plots.NO_DATA)
    assert _pixel(image, ax.transData, 2.5, 46.0) == _hex(plots.FRANCE_FILL)  # no cell there


def test_error_map_is_byte_identical_on_a_second_run(tmp_path):
    fine = h3.latlng_to_cell(46.5, 2.5, 7)  # inside a coarse cell: mixed resolutions
    per_cell = pd.concat([PER_CELL, pd.DataFrame({"cell": [fine], "median_km": [2.0]})])
    eval_plots.error_map(per_cell, tmp_path / "a.png")
    eval_plots.error_map(per_cell, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp left


def _grid_inputs(n: int) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    images[1] = MAGENTA
    rows = pd.DataFrame({
        "title": [f"best {i + 1}" for i in range(n)],
        "city": ["Paris", "Brest", "Lyon", "Nice", "Lille"][:n],
        "lat": [48.86, 48.39, 45.76, 43.70, 50.63][:n],
        "lon": [2.35, -4.49, 4.84, 7.26, 3.06][:n],
        # Brest's prediction is across the country, so its two markers cannot overlap.
        "pred_lat": [48.80, 43.30, 45.70, 43.60, 50.60][:n],
        "pred_lon": [2.30, 5.37, 4.80, 7.20, 3.00][:n],
        "error_km": [7.9, 1003.0, 8.1, 11.0, 5.0][:n],
    })
    return images, rows


@pytest.mark.parametrize(("columns", "width", "height"), [(3, 3, 2), (6, 4, 1)])
def test_prediction_grid_lays_out_panels_in_rows(tmp_path, columns, width, height):
    images, rows = _grid_inputs(4)
    eval_plots.prediction_grid(images, rows, tmp_path / "grid.png", columns=columns)
    image = Image.open(tmp_path / "grid.png")
    assert image.size == (
        round(width * eval_plots.PANEL_WIDTH * plots.DPI),
        round((height * eval_plots.PANEL_HEIGHT + eval_plots.KEY_HEIGHT) * plots.DPI),
    )


def test_prediction_grid_draws_photo_true_and_predicted_points(tmp_path):
    images, rows = _grid_inputs(4)
    fig, panels = eval_plots.prediction_grid_figure(images, rows, columns=3)
    plots.save_png(fig, tmp_path / "grid.png")
    image = Image.open(tmp_path / "grid.png").convert("RGB")
    assert len(panels) == 4

    photo, ax = panels[1]
    assert _pixel(image, photo.transAxes, 0.5, 0.5) == MAGENTA
    brest = rows.iloc[1]
    true = _pixel(image, ax.transData, brest["lon"], brest["lat"])
    predicted = _pixel(image, ax.transData, brest["pred_lon"], brest["pred_lat"])
    assert _close(true, _hex(eval_plots.TRUE_COLOUR), tolerance=10)
    assert _close(predicted, _hex(eval_plots.PREDICTED_COLOUR), tolerance=10)
    # The other photos are noise, not the magenta one: each panel shows its own image.
    assert _pixel(image, panels[0][0].transAxes, 0.5, 0.5) != MAGENTA


def test_prediction_grid_is_byte_identical_on_a_second_run(tmp_path):
    images, rows = _grid_inputs(5)
    eval_plots.prediction_grid(images, rows, tmp_path / "a.png", columns=2)
    eval_plots.prediction_grid(images, rows, tmp_path / "b.png", columns=2)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_prediction_grid_refuses_empty_rows(tmp_path):
    images, rows = _grid_inputs(2)
    with pytest.raises(ValueError, match="at least one image"):
        eval_plots.prediction_grid(images[:0], rows.iloc[:0], tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()
