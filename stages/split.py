"""split: leakage-proof train/val/test splits and each cell's representative point."""

import argparse
import logging
from pathlib import Path

from geoloc.data.cells import load_index
from geoloc.data.plots import distance_distribution
from geoloc.data.splits import distances_by_protocol, make_splits, write_splits
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", default="data/index")
    parser.add_argument("--out", default="data/splits")
    parser.add_argument("--metrics", default="metrics/split.json")
    parser.add_argument("--plots", default="plots/data")
    args = parser.parse_args()

    cfg = load_params().split
    images, cells = load_index(args.index)
    frames, split_cells, audit = make_splits(images, cells, cfg)
    with atomic_dir(args.out) as tmp:
        write_splits(frames, split_cells, tmp)
    write_json(audit, args.metrics)
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    distance_distribution(distances_by_protocol(images, cells, cfg),
                          Path(args.plots) / "test_to_train_km.png")
    log.info("%s protocol; images per split: %s", cfg.protocol, audit["images"])


if __name__ == "__main__":
    run_stage(main)
