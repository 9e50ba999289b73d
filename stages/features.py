"""features: a pretrained backbone's features of every fetched photo, at its native size, keyed
by image id (no split reads them: a new split, seed or fold computes none again)."""

import argparse
import logging
import time
from pathlib import Path

from geoloc.data.cache import default_workers
from geoloc.data.features import build_features, export_backbone, write_features_index
from geoloc.data.manifest import read_batches
from geoloc.io import atomic_dir
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.features")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/features")
    args = parser.parse_args()

    params = load_params()
    cfg = params.features
    photos = read_batches(Path(args.raw), params.batches).sort_values("image_id")
    started = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        session = export_backbone(cfg, tmp)
        entry = build_features(photos, Path(args.raw), cfg.size, session, tmp,
                               default_workers())
        write_features_index(cfg, entry, tmp)
    seconds = time.perf_counter() - started
    log.info("%s features (%d) of %d photos at %d px in %.0f s (%.0f photos/s)", cfg.backbone,
             entry["dim"], len(photos), cfg.size, seconds, len(photos) / seconds)


if __name__ == "__main__":
    run_stage(main)
