"""index: put every fetched image in an H3 cell and label the cells that hold enough images."""

import argparse
import logging
from pathlib import Path

from geoloc.data.cells import build_index, data_stats, write_index
from geoloc.data.manifest import read_batches
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/index")
    parser.add_argument("--metrics", default="metrics/data.json")
    args = parser.parse_args()

    params = load_params()
    fetched = read_batches(Path(args.raw), params.batches)
    images, cells = build_index(fetched, params.index.resolution, params.index.min_images_per_cell)
    with atomic_dir(args.out) as tmp:
        write_index(images, cells, tmp)
    write_json(data_stats(images, cells, len(fetched)), args.metrics)
    log.info("%d images in %d cells", len(images), len(cells))


if __name__ == "__main__":
    run_stage(main)
