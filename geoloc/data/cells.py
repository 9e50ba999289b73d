"""The cell index: adaptive H3 cells, each image's cell and label, and the cell hierarchy.

Cells adapt to photo density (PlaNet, OSV-5M; ../shared/reference/geolocation.md): start at
`coarsest_resolution`, split a cell into its H3 children while it holds more than
`max_images_per_cell`, down to `finest_resolution`. A cell left with fewer than
`min_images_per_cell` images is merged into its parent: the parent then stands for its area
outside its kept children. What is still too small at the coarsest resolution is dropped.
An image belongs to the finest kept cell among its ancestors.

Any of the four limits may be `auto`, chosen from the photos (resolve_index): about 2 sqrt(N)
images at most per cell and a quarter of that at least, so 400 photos of one coast make tens of
cells and 100k photos of France hundreds; the finest resolution where no cell need hold more
than that (capped at AUTO_FINEST, where cells are a few GPS errors wide), and the finest
coarsest resolution that drops at most 1% of the photos (in cells too small to keep), at most
four levels above the finest (a cell up to 7^4 times the area of the finest ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path

import h3
import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.geo import cell_center, cells_of
from geoloc.params import IndexParams, is_auto

log = logging.getLogger(__name__)

IMAGES_NAME = "images.parquet"
CELLS_NAME = "cells.parquet"
AUTO_FINEST = 11          # ~2,000 m2 cells, 28 m edges: finer would split GPS noise
MAX_DROPPED = 0.01        # share of photos an auto coarsest resolution may drop ...
AUTO_SPAN = 4             # ... when it is at most this many levels above the finest
MAX_LISTED = 5            # cells named in a warning


def resolve_index(cfg: IndexParams, lat, lon) -> IndexParams:
    """`cfg` with every `auto` value chosen from the photos at (lat, lon)."""
    n = len(lat)
    max_images, min_images = cfg.max_images_per_cell, cfg.min_images_per_cell
    if is_auto(max_images):
        floor = 4 * min_images if not is_auto(min_images) else 8
        max_images = max(math.ceil(2 * math.sqrt(n)), floor)
    if is_auto(min_images):
        min_images = max(2, math.ceil(max_images / 4))
    coarsest, finest = cfg.coarsest_resolution, cfg.finest_resolution
    if is_auto(finest):
        fits = [r for r, c in enumerate(_counts_at_every_resolution(lat, lon))
                if c.max() <= max_images]
        finest = fits[0] if fits else AUTO_FINEST
        finest = finest if is_auto(coarsest) else max(finest, coarsest)
    if is_auto(coarsest):
        # The finest roots that drop at most MAX_DROPPED of the photos (in cells too small to
        # keep): coarser roots keep sparse photos in larger cells instead.
        fine = pd.Series(cells_of(lat, lon, finest)).value_counts()
        limits = dataclasses.replace(cfg, finest_resolution=finest,
                                     max_images_per_cell=max_images,
                                     min_images_per_cell=min_images)
        def dropped(roots: int) -> int:
            return _grow_cells(fine, dataclasses.replace(limits, coarsest_resolution=roots))[2]

        lowest = max(finest - AUTO_SPAN, 0)
        coarsest = next((r for r in range(finest, lowest, -1) if dropped(r) <= MAX_DROPPED * n),
                        None)
        if coarsest is None:
            coarsest, lost = lowest, dropped(lowest)
            if lost > MAX_DROPPED * n:
                log.warning("index.coarsest_resolution auto is %d, %d levels above the finest "
                            "(%d): %d of the %d photos (%.1f%%) lie in cells under "
                            "index.min_images_per_cell even there and are dropped; set "
                            "index.coarsest_resolution lower to keep them in larger cells",
                            coarsest, AUTO_SPAN, finest, lost, n, 100 * lost / n)
    resolved = dataclasses.replace(cfg, coarsest_resolution=coarsest, finest_resolution=finest,
                                   max_images_per_cell=max_images, min_images_per_cell=min_images)
    resolved.check("index")
    return resolved


def _counts_at_every_resolution(lat, lon) -> list[np.ndarray]:
    """Images per occupied cell at each resolution 0..AUTO_FINEST."""
    fine = pd.Series(cells_of(lat, lon, AUTO_FINEST)).value_counts()
    return [fine.groupby(fine.index.map(lambda c, r=r: h3.cell_to_parent(c, r))).sum().to_numpy()
            for r in range(AUTO_FINEST + 1)]


def adaptive_cells(fine_counts: pd.Series, cfg: IndexParams) -> list[str]:
    """The kept cells, sorted, from the number of images in each cell at the finest
    resolution."""
    kept, stopped, _ = _grow_cells(fine_counts, cfg)
    if stopped:
        log.warning("%d cells hold more than index.max_images_per_cell (%d) images because "
                    "index.finest_resolution (%d) stops them from splitting: %s; raise "
                    "finest_resolution (or set it to auto) unless their photos were taken at "
                    "one spot", len(stopped), cfg.max_images_per_cell, cfg.finest_resolution,
                    ", ".join(f"{c} ({n} images)" for c, n in stopped[:MAX_LISTED]))
    return kept


def _grow_cells(fine_counts: pd.Series, cfg: IndexParams,
                ) -> tuple[list[str], list[tuple[str, int]], int]:
    """(kept cells sorted, the (cell, images) too full but at the finest resolution, fullest
    first, the number of images dropped)."""
    counts = _counts_per_resolution(fine_counts, cfg)
    kept: list[str] = []
    stopped: list[str] = []

    def grow(cell: str) -> int:
        """Keep cells under `cell`; return how many of its images no kept cell holds."""
        rest = counts[cell]
        if rest > cfg.max_images_per_cell:
            if h3.get_resolution(cell) == cfg.finest_resolution:
                stopped.append(cell)
            else:
                rest = 0
                for child in sorted(h3.cell_to_children(cell)):
                    if child in counts:
                        rest += grow(child)
        if rest >= cfg.min_images_per_cell:
            kept.append(cell)
            return 0
        return rest

    roots = sorted(c for c in counts if h3.get_resolution(c) == cfg.coarsest_resolution)
    dropped = sum(grow(root) for root in roots)   # what is left over at a root
    full = sorted(((c, counts[c]) for c in stopped), key=lambda item: (-item[1], item[0]))
    return sorted(kept), full, dropped


def _counts_per_resolution(fine_counts: pd.Series, cfg: IndexParams) -> dict[str, int]:
    """Images per cell at every resolution from coarsest to finest."""
    counts: dict[str, int] = {}
    for fine, n in fine_counts.items():
        for res in range(cfg.coarsest_resolution, cfg.finest_resolution + 1):
            cell = h3.cell_to_parent(fine, res)
            counts[cell] = counts.get(cell, 0) + int(n)
    return counts


def owner(cell: str, kept: set[str], coarsest: int) -> str | None:
    """The finest kept cell among `cell` and its ancestors down to `coarsest`, if any."""
    for res in range(h3.get_resolution(cell), coarsest - 1, -1):
        ancestor = h3.cell_to_parent(cell, res)
        if ancestor in kept:
            return ancestor
    return None


def neighbours(kept: list[str], coarsest: int) -> dict[str, list[str]]:
    """Kept cells whose areas touch: for every kept cell, the owners of the cells around it
    at its own resolution, made symmetric. Same-resolution kept cells that are H3 neighbours
    are always neighbours; a cell and a parent that surrounds it are too."""
    kept_set = set(kept)
    touching: dict[str, set[str]] = {c: set() for c in kept}
    for cell in kept:
        for around in h3.grid_disk(cell, 1):  # grid_disk, unlike grid_ring, takes pentagons
            other = owner(around, kept_set, coarsest)
            if other not in (None, cell):
                touching[cell].add(other)
                touching[other].add(cell)
    return {c: sorted(touching[c]) for c in kept}


def build_index(images: pd.DataFrame, cfg: IndexParams,
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Put each image in its adaptive cell; drop the images no kept cell holds and, with
    `cap_images_per_cell`, those above the cap.

    Returns (images with `cell`, `label` and `cell_r<res>` for every resolution, cells, the
    number of images dropped for each reason), sorted; labels are 0..K-1 in cell-id order.
    The cell table holds `label`, `cell`, `resolution`, `center_lat`, `center_lon`,
    `n_images`, `parents` (the cell ids at every coarser resolution, coarsest first) and
    `neighbours` (the labels of the cells it touches). `cfg` has no `auto` left: see
    resolve_index.
    """
    if any(is_auto(v) for v in dataclasses.astuple(cfg)):
        raise ValueError(f"build_index needs resolved limits (resolve_index), got {cfg}")
    resolutions = range(cfg.coarsest_resolution, cfg.finest_resolution + 1)
    fine = pd.Series(cells_of(images["lat"], images["lon"], cfg.finest_resolution),
                     index=images.index)
    kept = adaptive_cells(fine.value_counts(), cfg)
    if not kept:
        raise GeolocError(f"no cell holds {cfg.min_images_per_cell} images "
                          f"(index.min_images_per_cell); lower it or fetch more batches")
    kept_set = set(kept)
    owners = {f: owner(f, kept_set, cfg.coarsest_resolution) for f in fine.unique()}
    images = images.assign(cell=fine.map(owners), **{
        f"cell_r{res}": fine.map({f: h3.cell_to_parent(f, res) for f in owners})
        for res in resolutions})
    held = images[images["cell"].notna()]
    capped = held
    if cfg.cap_images_per_cell is not None:
        capped = cap_per_cell(held, cfg.cap_images_per_cell)
    dropped = {"small_cells": len(images) - len(held), "cap": len(held) - len(capped)}
    cells = cell_table(kept, capped["cell"].value_counts(), cfg.coarsest_resolution)
    labelled = capped.merge(cells[["cell", "label"]], on="cell")
    log.info("%d cells at resolutions %s; images dropped: %s", len(cells),
             cells["resolution"].value_counts().sort_index().to_dict(), dropped)
    return labelled.sort_values("image_id").reset_index(drop=True), cells, dropped


def cell_table(kept: list[str], counts: pd.Series, coarsest: int) -> pd.DataFrame:
    label = {cell: i for i, cell in enumerate(kept)}
    touching = neighbours(kept, coarsest)
    centers = [cell_center(c) for c in kept]
    return pd.DataFrame({
        "label": range(len(kept)),
        "cell": kept,
        "resolution": [h3.get_resolution(c) for c in kept],
        "center_lat": [c[0] for c in centers],
        "center_lon": [c[1] for c in centers],
        "n_images": [int(counts[c]) for c in kept],
        "parents": [[h3.cell_to_parent(c, res) for res in range(coarsest, h3.get_resolution(c))]
                    for c in kept],
        "neighbours": [[label[n] for n in touching[c]] for c in kept],
    })


def hierarchy_levels(cells: pd.DataFrame) -> dict[int, np.ndarray]:
    """For every resolution r coarser than the finest class, each class's group at r: the
    index of its ancestor at r, or of itself if it is no finer than r (it has no parent there).

    The coarsest r is the coarsest ancestor listed in `parents`. A level where every class is
    alone in its group is left out: its loss would repeat the cell loss.
    """
    ancestors = [{h3.get_resolution(p): p for p in parents} for parents in cells["parents"]]
    coarsest = min([int(cells["resolution"].min()), *(r for up in ancestors for r in up)])
    levels = {}
    for r in range(coarsest, int(cells["resolution"].max())):
        keys = [up.get(r, cell) for up, cell in zip(ancestors, cells["cell"], strict=True)]
        names, groups = np.unique(keys, return_inverse=True)
        if len(names) < len(cells):
            levels[r] = groups.astype(np.int64)
    return levels


def neighbour_edges(cells: pd.DataFrame) -> np.ndarray:
    """(E, 2) label pairs i < j of the classes whose areas touch, each pair once."""
    pairs = set()
    for i, around in zip(cells["label"], cells["neighbours"], strict=True):
        pairs.update((min(int(i), int(j)), max(int(i), int(j))) for j in around)
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def cap_per_cell(images: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most `cap` images per cell, spread over sequences: one image of every sequence
    first, then a second, and so on; the order inside a sequence is a hash of the image id,
    so the sample is deterministic and stays put when batches are added."""
    key = images["image_id"].map(stable_hash)
    turn = key.groupby(images["sequence_id"]).rank(method="first")
    order = images.assign(_turn=turn, _key=key).sort_values(["cell", "_turn", "_key"])
    return order.groupby("cell").head(cap).drop(columns=["_turn", "_key"])


def stable_hash(text: str) -> int:
    """A hash of `text` that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def data_stats(images: pd.DataFrame, cells: pd.DataFrame, dropped: dict[str, int],
               cfg: IndexParams) -> dict:
    """Dataset size and balance, and the index limits used (auto ones resolved), for
    metrics/data.json."""
    per_cell = cells["n_images"]
    return {
        "index": dataclasses.asdict(cfg),
        "images": len(images),
        "images_dropped_small_cells": dropped["small_cells"],
        "images_dropped_cap": dropped["cap"],
        "sequences": int(images["sequence_id"].nunique()),
        "cities": int(images["city"].nunique()),
        "batches": int(images["batch"].nunique()),
        "cells": len(cells),
        "cells_per_resolution": {str(r): int(n) for r, n in
                                 cells["resolution"].value_counts().sort_index().items()},
        "images_per_cell": {"min": int(per_cell.min()), "median": float(per_cell.median()),
                            "max": int(per_cell.max())},
        "cell_imbalance": imbalance(per_cell.to_numpy()),
        "images_per_city": images["city"].value_counts().sort_index().to_dict(),
        "images_per_batch": images["batch"].value_counts().sort_index().to_dict(),
    }


def imbalance(counts: np.ndarray) -> dict:
    """How unevenly images spread over cells: the Gini coefficient (0 when every cell holds as
    many, towards 1 when one holds all) and the entropy of the shares over its maximum, log K
    (1 when even)."""
    counts = np.sort(np.asarray(counts, dtype=float))
    k = len(counts)
    shares = counts / counts.sum()
    # Gini from the sorted values: sum_i (2i - k - 1) x_i / (k sum x), i = 1..k.
    gini = float(((2 * np.arange(1, k + 1) - k - 1) * counts).sum() / (k * counts.sum()))
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(k)) if k > 1 else 1.0
    return {"gini": gini, "normalised_entropy": entropy}


def write_index(images: pd.DataFrame, cells: pd.DataFrame, out_dir: Path) -> None:
    images.to_parquet(out_dir / IMAGES_NAME, index=False)
    cells.to_parquet(out_dir / CELLS_NAME, index=False)


def load_index(index_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, cells) as the index stage wrote them."""
    paths = [Path(index_dir) / name for name in (IMAGES_NAME, CELLS_NAME)]
    for path in paths:
        if not path.exists():
            raise GeolocError(f"{path} not found: run the index stage")
    return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
