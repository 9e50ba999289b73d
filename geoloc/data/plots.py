"""Dataset plots as PNG: where the images are, how many per cell, how far test is from train.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so no
global backend or figure registry is touched and nothing has to be closed. PNGs are written without
a Software/date chunk, so the same data gives the same bytes.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import h3
import numpy as np
import pandas as pd
from matplotlib import colormaps, colors, patheffects, ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from geoloc.io import atomic_path

BASE_MAP = Path(__file__).resolve().parent.parent / "assets" / "france.geojson"
FRANCE_VIEW = (-5.5, 10.0, 41.0, 51.5)  # lon_min, lon_max, lat_min, lat_max
SEA = "#d4e6f1"
NEIGHBOUR = "#dcdcdc"
FRANCE_FILL = "#f7f5ef"
FRANCE_EDGE = "#333333"
CELL_CMAP = "viridis"
NO_DATA = "#bdbdbd"  # a cell with no value to colour it by
DPI = 110
ZERO_FLOOR_KM = 0.001  # a test image at its train twin's exact spot is drawn at 1 m


def coverage_map(cells: pd.DataFrame, cities: pd.DataFrame, path: Path | str) -> None:
    """Map of France with each cell (columns `cell`, `n_images`) coloured by its image count."""
    fig, _ = coverage_figure(cells, cities)
    save_png(fig, path)


def coverage_figure(cells: pd.DataFrame, cities: pd.DataFrame) -> tuple[Figure, Axes]:
    """The coverage map and its axes, whose `transData` maps (lon, lat) to pixels once drawn."""
    counts = cells["n_images"].to_numpy(dtype=float)
    norm = _count_norm(counts)
    if isinstance(norm, colors.LogNorm):
        cells = cells.assign(n_images=np.maximum(counts, 1.0))  # log colours cannot show 0
    fig, ax = cell_figure(cells, "n_images", norm, "images per cell")
    ax.set_title(f"Coverage: {int(counts.sum())} images in {len(cells)} cells")
    _label_cities(fig, ax, cities)  # last: it measures the finished layout
    return fig, ax


def cell_figure(cells: pd.DataFrame, column: str, norm: colors.Normalize,
                label: str) -> tuple[Figure, Axes]:
    """France with each cell (columns `cell`, `column`) filled by its value; NaN values in grey.

    The colour bar is labelled `label`; the title is the caller's.
    """
    fig = new_figure(9, 9)
    ax = fig.add_subplot()
    ax.set_facecolor(SEA)

    # Coarse cells first so the finer ones that lie inside them are drawn on top.
    cells = cells.assign(res=[h3.get_resolution(c) for c in cells["cell"]])
    cells = cells.sort_values(["res", "cell"], kind="stable")
    hexagons = [[(lon, lat) for lat, lon in h3.cell_to_boundary(c)] for c in cells["cell"]]

    _draw_base_map(ax)
    cmap = colormaps[CELL_CMAP].with_extremes(bad=NO_DATA)
    patches = PolyCollection(hexagons, array=cells[column].to_numpy(dtype=float), cmap=cmap,
                             norm=norm, edgecolors="#ffffff80", linewidths=0.3, zorder=3)
    ax.add_collection(patches)
    draw_france_outline(ax)
    bar = fig.colorbar(patches, ax=ax, shrink=0.6, pad=0.02)
    bar.set_label(label)
    if isinstance(norm, colors.LogNorm):
        # Ticks at 1, 2, 5, 10, ... in plain numbers: readable values, not powers of ten.
        bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())

    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    set_view(ax, hexagons)
    return fig, ax


def cell_histogram(counts, path: Path | str, min_images: int | None = None,
                   max_images: int | None = None) -> None:
    """How many cells hold how many images, with the index's min/max limits when given."""
    counts = np.asarray(counts, dtype=float)
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    if counts.size and counts.max() - counts.min() <= 60:
        # Few distinct counts: one bar per integer, centred on it.
        bins = np.arange(counts.min() - 0.5, counts.max() + 1.5)
    else:
        bins = "auto"
    ax.hist(counts, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
    for limit, label, colour in ((min_images, "min", "#c44e52"), (max_images, "max", "#dd8452")):
        if limit is not None:
            ax.axvline(limit, color=colour, linestyle="--", linewidth=1.5,
                       label=f"{label}imum: {limit} images")
    if min_images is not None or max_images is not None:
        ax.legend(frameon=False)
    ax.set_xlabel("images in the cell")
    ax.set_ylabel("cells")
    ax.set_title(f"Images per cell ({counts.size} cells)")
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)


def distance_distribution(distances: dict[str, np.ndarray], path: Path | str) -> None:
    """Per split protocol, the empirical CDF of each test image's distance to the train set."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    for i, name in enumerate(sorted(distances)):
        km = np.asarray(distances[name], dtype=float)
        km = np.sort(np.maximum(km[np.isfinite(km)], ZERO_FLOOR_KM))
        if km.size == 0:
            continue  # a protocol with no test images has no curve to draw
        colour = f"C{i}"
        share = np.arange(1, km.size + 1) / km.size
        median = float(np.median(km))
        ax.step(km, share, where="post", color=colour, linewidth=1.8,
                label=f"{name} (median {_km_text(median)})")
        ax.plot([median], [0.5], "o", color=colour, markersize=6, zorder=3)
        ax.axvline(median, color=colour, linestyle=":", linewidth=1)
    ax.axhline(0.5, color="grey", linewidth=0.6, alpha=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("distance to the nearest train image (km, log scale; 0 drawn at 1 m)")
    ax.set_ylabel("share of test images within")
    ax.set_title("Test-to-train distance by split protocol")
    ax.grid(which="major", alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    save_png(fig, path)


def save_png(fig: Figure, path: Path | str) -> None:
    """Write `fig` as a PNG with no Software chunk, via a temporary file beside `path`."""
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format is named rather than guessed.
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """An Agg-backed figure of `width` x `height` inches; `layout=None` to place axes by hand."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


@cache
def _base_map() -> tuple[tuple[list, ...], tuple[list, ...]]:
    """(France's rings, the neighbours' rings), each ring a list of (lon, lat)."""
    data = json.loads(BASE_MAP.read_text(encoding="utf-8"))
    france, neighbours = [], []
    for feature in data["features"]:
        # Every ring is drawn filled, holes too: the only holes near France (San Marino and the
        # Vatican, inside Italy) are neighbours, so grey either way.
        rings = [ring for polygon in feature["geometry"]["coordinates"] for ring in polygon]
        (france if feature["properties"].get("focus") else neighbours).extend(rings)
    return tuple(france), tuple(neighbours)


def _draw_base_map(ax: Axes) -> None:
    france, neighbours = _base_map()
    ax.add_collection(PolyCollection(neighbours, facecolors=NEIGHBOUR, edgecolors="#b0b0b0",
                                     linewidths=0.5, zorder=1))
    ax.add_collection(PolyCollection(france, facecolors=FRANCE_FILL, edgecolors="none",
                                     zorder=2))


def draw_france_outline(ax: Axes, colour: str = FRANCE_EDGE, linewidth: float = 0.8) -> None:
    """France's coast and borders, unfilled, at zorder 4."""
    # Drawn over the cells so the coast and borders stay visible through them.
    france, _ = _base_map()
    ax.add_collection(PolyCollection(france, facecolors="none", edgecolors=colour,
                                     linewidths=linewidth, zorder=4))


def _count_norm(counts: np.ndarray) -> colors.Normalize:
    """Log colours when counts span more than 10x, so a few dense cells don't wash out the rest."""
    if counts.size == 0:
        return colors.Normalize(0, 1)
    low, high = max(counts.min(), 1.0), max(counts.max(), 1.0)
    if high > 10 * low:
        return colors.LogNorm(low, high)
    if high == counts.min():
        return colors.Normalize(high - 1, high + 1)  # all cells alike: one mid colour
    return colors.Normalize(counts.min(), high)


def set_view(ax: Axes, hexagons: list) -> None:
    """France's frame grown to every cell; a 1/cos(latitude) aspect so shapes are not squashed."""
    lon_min, lon_max, lat_min, lat_max = FRANCE_VIEW
    if hexagons:
        points = np.array([p for hexagon in hexagons for p in hexagon])
        lon_min, lon_max = min(lon_min, points[:, 0].min()), max(lon_max, points[:, 0].max())
        lat_min, lat_max = min(lat_min, points[:, 1].min()), max(lat_max, points[:, 1].max())
    ax.set_xlim(lon_min - 0.2, lon_max + 0.2)
    ax.set_ylim(lat_min - 0.2, lat_max + 0.2)
    ax.set_aspect(1 / math.cos(math.radians((lat_min + lat_max) / 2)))


# Where a city's name may go relative to its dot, in points: right first, then left, above, below.
LABEL_SPOTS = [
    ((5, 0), "left", "center"), ((-5, 0), "right", "center"),
    ((0, 5), "center", "bottom"), ((0, -5), "center", "top"),
    ((4, 4), "left", "bottom"), ((-4, 4), "right", "bottom"),
    ((4, -4), "left", "top"), ((-4, -4), "right", "top"),
]


def _label_cities(fig: Figure, ax: Axes, cities: pd.DataFrame) -> None:
    """A dot and a name per city; each name takes the first spot that overlaps no earlier name."""
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    ax.scatter(cities["lon"], cities["lat"], s=12, c="#d62728", edgecolors="white",
               linewidths=0.6, zorder=5)
    fig.canvas.draw()  # fixes the layout, so label extents below are the ones that get saved
    renderer = fig.canvas.get_renderer()
    taken = []
    # North to south, west to east: a fixed order, so the same cities give the same picture.
    for city in cities.sort_values(["lat", "lon"], ascending=[False, True]).itertuples():
        for offset, ha, va in LABEL_SPOTS:
            text = ax.annotate(city.city, (city.lon, city.lat), xytext=offset,
                               textcoords="offset points", ha=ha, va=va, fontsize=7,
                               path_effects=halo, zorder=6, clip_on=True, in_layout=False)
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in taken):
                break
            if (offset, ha, va) != LABEL_SPOTS[-1]:
                text.remove()  # the last spot keeps its label even if it overlaps: never hide one
        taken.append(box)


def _km_text(km: float) -> str:
    return f"{km * 1000:.0f} m" if km < 1 else f"{km:.3g} km"
