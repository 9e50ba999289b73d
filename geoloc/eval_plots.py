"""The evaluate stage's plots: CSV tables that `dvc plots` draws and diffs, and two PNGs, where
the model errs and what its best and worst guesses look like.

Same conventions as `geoloc.data.plots`: Agg figures without pyplot, France base map, and PNGs
whose bytes depend on the data only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from geoloc.data.cache import CachedSplit
from geoloc.data.plots import cell_figure, draw_france_outline, new_figure, save_png, set_view
from geoloc.evaluate import Evaluation, cell_errors, confusion_table, error_cdf, extremes
from geoloc.io import atomic_path

# One fixed scale, 10 m to 1000 km, so error maps of different runs can be compared by eye.
ERROR_FLOOR_KM = 0.01  # log colours cannot show 0: smaller medians are drawn at 10 m
ERROR_CEILING_KM = 1000.0  # about France's width; anything beyond takes the top colour

GRID_EACH = 6  # best and worst predictions shown

TRUE_COLOUR = "#2ca02c"
PREDICTED_COLOUR = "#d62728"
OUTLINE_COLOUR = "#a0a0a0"

# A panel of the prediction grid, in inches, top to bottom: margin, photo, gap, map, caption.
PANEL_WIDTH = 2.0
MARGIN = 0.1
PHOTO = PANEL_WIDTH - 2 * MARGIN  # square
GAP = 0.05
MAP_HEIGHT = 1.3
CAPTION = 0.45
PANEL_HEIGHT = MARGIN + PHOTO + GAP + MAP_HEIGHT + CAPTION
KEY_HEIGHT = 0.3  # the band above the panels that says which marker is which


def write_plots(result: Evaluation, test: CachedSplit, cells: pd.DataFrame, out_dir: Path) -> None:
    """Every plot of the evaluate stage under `out_dir`: CSV tables that `dvc plots` draws and
    diffs (error CDF per mode, calibration, confusion, per-city figures) and two PNGs (the map
    of median error per cell, the best and worst predictions)."""
    predictions = result.predictions
    modes = list(result.modes)
    tables = {
        "error_cdf.csv": error_cdf(predictions, modes),
        "calibration.csv": result.calibration,
        "confusion.csv": confusion_table(predictions, cells),
        "cities.csv": result.by_city,
    }
    for name, table in tables.items():
        with atomic_path(out_dir / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    error_map(cell_errors(predictions, cells), out_dir / "error_map.png")
    shown = extremes(predictions, GRID_EACH)
    cache_rows = test.rows.set_index("image_id").loc[shown["image_id"], "cache_row"]
    prediction_grid(test.images[cache_rows.to_numpy()], shown, out_dir / "predictions.png")


def error_map(per_cell: pd.DataFrame, path: Path | str) -> None:
    """Map of France with each cell (columns `cell`, `median_km`) coloured by its median error."""
    fig, _ = error_map_figure(per_cell)
    save_png(fig, path)


def error_map_figure(per_cell: pd.DataFrame) -> tuple[Figure, Axes]:
    """The error map and its axes, whose `transData` maps (lon, lat) to pixels once drawn."""
    # NaN (no test image in the cell) survives np.maximum and is drawn grey.
    medians = np.maximum(per_cell["median_km"].to_numpy(dtype=float), ERROR_FLOOR_KM)
    cells = per_cell.assign(median_km=medians)
    norm = colors.LogNorm(ERROR_FLOOR_KM, ERROR_CEILING_KM)  # fresh: a figure's colour bar owns it
    fig, ax = cell_figure(cells, "median_km", norm, "median test error (km)")
    tested = int(np.isfinite(medians).sum())
    ax.set_title(f"Median test error per cell ({tested} of {len(cells)} cells with test images)")
    return fig, ax


def prediction_grid(images: np.ndarray, rows: pd.DataFrame, path: Path | str,
                    columns: int = 6) -> None:
    """Photos with their true and predicted places; `rows` holds one row per image, in order."""
    fig, _ = prediction_grid_figure(images, rows, columns)
    save_png(fig, path)


def prediction_grid_figure(images: np.ndarray, rows: pd.DataFrame, columns: int = 6,
                           ) -> tuple[Figure, list[tuple[Axes, Axes]]]:
    """The grid and, per panel in reading order, its (photo, map) axes.

    `rows` needs `title`, `city`, `lat`, `lon`, `pred_lat`, `pred_lon` and `error_km`.
    """
    if len(rows) == 0:
        raise ValueError("prediction_grid needs at least one image; `rows` is empty")
    if len(images) != len(rows):
        raise ValueError(f"prediction_grid got {len(images)} images for {len(rows)} rows")
    columns = min(columns, len(rows))
    height = math.ceil(len(rows) / columns) * PANEL_HEIGHT + KEY_HEIGHT
    fig = new_figure(columns * PANEL_WIDTH, height, layout=None)  # panels are placed by hand

    panels = []
    for i, (image, row) in enumerate(zip(images, rows.itertuples(index=False), strict=True)):
        left = (i % columns) * PANEL_WIDTH
        top = height - KEY_HEIGHT - (i // columns) * PANEL_HEIGHT
        panels.append(_draw_panel(fig, image, row, left, top))
    _draw_key(fig, height)
    return fig, panels


def _draw_panel(fig: Figure, image: np.ndarray, row, left: float, top: float) -> tuple[Axes, Axes]:
    """One panel, its top-left corner at (`left`, `top`) inches from the figure's bottom left."""
    photo_top = top - MARGIN
    photo = _axes_at(fig, left + MARGIN, photo_top - PHOTO, PHOTO, PHOTO)
    # Nearest neighbour: the pixels the model saw, not detail invented by smoothing.
    photo.imshow(image, interpolation="nearest")
    photo.set_axis_off()

    map_bottom = photo_top - PHOTO - GAP - MAP_HEIGHT
    ax = _axes_at(fig, left + MARGIN, map_bottom, PHOTO, MAP_HEIGHT)
    draw_france_outline(ax, colour=OUTLINE_COLOUR, linewidth=0.5)
    # Above the outline's zorder 4, so the points stay visible on the coast.
    ax.plot([row.lon, row.pred_lon], [row.lat, row.pred_lat], color="#555555", linewidth=0.7,
            zorder=5)
    ax.plot(row.lon, row.lat, "o", color=TRUE_COLOUR, markersize=5, zorder=6)
    ax.plot(row.pred_lon, row.pred_lat, "x", color=PREDICTED_COLOUR, markersize=6,
            markeredgewidth=1.5, zorder=7)
    # Grown past France only when a point lies outside it, so that point is still shown.
    set_view(ax, [[(row.lon, row.lat), (row.pred_lon, row.pred_lat)]])
    ax.set_axis_off()

    fig.text((left + PANEL_WIDTH / 2) / fig.get_figwidth(),
             (map_bottom - 0.05) / fig.get_figheight(),
             f"{row.title} · {row.city}\nerror {error_text(row.error_km)}",
             ha="center", va="top", fontsize=8, linespacing=1.3)
    return photo, ax


def _axes_at(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """Axes at a rectangle given in inches, converted to the figure fractions matplotlib wants."""
    fig_width, fig_height = fig.get_size_inches()
    return fig.add_axes((left / fig_width, bottom / fig_height,
                         width / fig_width, height / fig_height))


def _draw_key(fig: Figure, height: float) -> None:
    markers = [
        Line2D([], [], linestyle="none", marker="o", color=TRUE_COLOUR, markersize=5,
               label="true place"),
        Line2D([], [], linestyle="none", marker="x", color=PREDICTED_COLOUR, markersize=6,
               markeredgewidth=1.5, label="predicted place"),
    ]
    fig.legend(handles=markers, loc="center", bbox_to_anchor=(0.5, 1 - KEY_HEIGHT / 2 / height),
               ncols=2, frameon=False, fontsize=8)


def error_text(km: float) -> str:
    """'0.42 km', '4.2 km', '12 km', '431 km': two significant digits, none wasted past 10 km."""
    return f"{km:.2g} km" if km < 10 else f"{km:.0f} km"
