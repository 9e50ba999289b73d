"""split: sequence-disjoint train/val/test splits and each cell's representative point."""

import argparse
import logging

from geoloc.data.cells import load_index
from geoloc.data.splits import make_splits, write_splits
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", default="data/index")
    parser.add_argument("--out", default="data/splits")
    parser.add_argument("--metrics", default="metrics/split.json")
    args = parser.parse_args()

    cfg = load_params().split
    images, cells = load_index(args.index)
    frames, cells, audit = make_splits(images, cells, cfg)
    with atomic_dir(args.out) as tmp:
        write_splits(frames, cells, tmp)
    write_json(audit, args.metrics)
    log.info("images per split: %s", audit["images"])


if __name__ == "__main__":
    run_stage(main)
