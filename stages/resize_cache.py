"""resize_cache: decode, resize and centre-crop every split's images, at every cached size."""

import argparse
from pathlib import Path

from geoloc.data.cache import build_cache, default_workers, write_cache_index
from geoloc.data.splits import SPLITS, load_split
from geoloc.io import atomic_dir
from geoloc.params import load_params
from geoloc.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/cache")
    args = parser.parse_args()

    cfg = load_params().cache
    workers = cfg.workers or default_workers()
    with atomic_dir(args.out) as tmp:
        entries = {split: build_cache(load_split(args.splits, split), Path(args.raw), cfg.sizes,
                                      tmp, split, workers)
                   for split in SPLITS}
        write_cache_index(entries, tmp)


if __name__ == "__main__":
    run_stage(main)
