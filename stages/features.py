"""features: a pretrained backbone's features of every split's photos, at its native size."""

import argparse
import logging
import time
from pathlib import Path

from geoloc.data.cache import default_workers
from geoloc.data.features import build_features, export_backbone, write_features_index
from geoloc.data.splits import SPLITS, load_split
from geoloc.io import atomic_dir
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.features")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/features")
    args = parser.parse_args()

    cfg = load_params().features
    started = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        session = export_backbone(cfg, tmp)
        entries = {split: build_features(load_split(args.splits, split), Path(args.raw),
                                         cfg.size, session, tmp, split, default_workers())
                   for split in SPLITS}
        dim = session.get_outputs()[0].shape[1]
        write_features_index(cfg, dim, entries, tmp)
    images = sum(entry["rows"] for entry in entries.values())
    seconds = time.perf_counter() - started
    log.info("%s features (%d) of %d photos at %d px in %.0f s (%.0f photos/s)", cfg.backbone,
             dim, images, cfg.size, seconds, images / seconds)


if __name__ == "__main__":
    run_stage(main)
