"""split: leakage-proof train/val/test splits and each cell's representative point."""

import argparse
import logging
from pathlib import Path

from geoloc.data.cells import load_index
from geoloc.data.plots import distance_distribution
from geoloc.data.splits import (
    TEST_SEQUENCES,
    distances_by_protocol,
    make_splits,
    read_test_sequences,
    write_splits,
)
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
    parser.add_argument("--test-sequences", default=TEST_SEQUENCES, type=Path,
                        help="sequences that make the test split, if it lists any")
    args = parser.parse_args()

    cfg = load_params().split
    images, cells = load_index(args.index)
    test_sequences = read_test_sequences(args.test_sequences, images)
    frames, split_cells, audit = make_splits(images, cells, cfg, test_sequences)
    with atomic_dir(args.out) as tmp:
        write_splits(frames, split_cells, tmp)
    write_json(audit, args.metrics)
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    distance_distribution(distances_by_protocol(images, cells, cfg, test_sequences),
                          Path(args.plots) / "test_to_train_km.png")
    fixed = f"; test: the {len(test_sequences)} sequences of {args.test_sequences}" \
        if test_sequences else ""
    log.info("%s protocol; images per split: %s%s", cfg.protocol, audit["images"], fixed)


if __name__ == "__main__":
    run_stage(main)
