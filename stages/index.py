"""index: adaptive H3 cells over the fetched images; each image's cell and label."""

import argparse
import logging
from pathlib import Path

from geoloc.data.cells import build_index, data_stats, resolve_index, write_index
from geoloc.data.cities import load_cities
from geoloc.data.manifest import read_batches
from geoloc.data.plots import cell_histogram, coverage_map
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/index")
    parser.add_argument("--metrics", default="metrics/data.json")
    parser.add_argument("--plots", default="plots/data")
    args = parser.parse_args()

    params = load_params()
    fetched = read_batches(Path(args.raw), params.batches)
    cfg = resolve_index(params.index, fetched["lat"], fetched["lon"])
    log.info("index limits: resolutions %d to %d, %d to %d images per cell",
             cfg.coarsest_resolution, cfg.finest_resolution, cfg.min_images_per_cell,
             cfg.max_images_per_cell)
    images, cells, dropped = build_index(fetched, cfg)
    with atomic_dir(args.out) as tmp:
        write_index(images, cells, tmp)
    write_json(data_stats(images, cells, dropped, cfg), args.metrics)
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    cities = load_cities()
    coverage_map(cells, cities[cities["city"].isin(images["city"])], plots / "coverage.png")
    cell_histogram(cells["n_images"], plots / "images_per_cell.png",
                   cfg.min_images_per_cell, cfg.max_images_per_cell)
    log.info("%d images in %d cells", len(images), len(cells))


if __name__ == "__main__":
    run_stage(main)
