"""resize_cache: decode, resize and centre-crop every split's images into one uint8 array each."""

import argparse
from pathlib import Path

from geoloc.data.cache import build_cache, cache_path
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

    size = load_params().cache.size
    with atomic_dir(args.out) as tmp:
        for split in SPLITS:
            build_cache(load_split(args.splits, split), Path(args.raw), size,
                        cache_path(tmp, split, size))


if __name__ == "__main__":
    run_stage(main)
