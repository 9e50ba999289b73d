"""train: fit the model named in params on the cached train split, early-stopped on val km.

Runs alone, or under torchrun for DDP (gloo on CPU, NCCL on CUDA):
    torchrun --nproc_per_node=2 stages/train.py
"""

import argparse
import logging
import time
from pathlib import Path

from dvclive import Live

from geoloc.checkpoint import save_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.features import load_features
from geoloc.data.splits import load_cells, load_split
from geoloc.io import write_json
from geoloc.models import build_model
from geoloc.params import as_dict, load_params
from geoloc.stage import run_stage
from geoloc.train import (
    SilentLive,
    fingerprint,
    fit,
    seed_everything,
    start_distributed,
    stop_distributed,
)

log = logging.getLogger("stages.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--features", default="data/features",
                        help="the features stage's (a frozen backbone trains on them)")
    parser.add_argument("--out", default="models/model.pt")
    parser.add_argument("--live", default="metrics/train", help="DVCLive folder")
    parser.add_argument("--resume", default="models/checkpoints/last.pt",
                        help="the checkpoint written after every epoch (train.resume)")
    parser.add_argument("--time", default="metrics/train_time.json",
                        help="how long training took (kept out of the model's bytes)")
    args = parser.parse_args()

    params = load_params()
    dist = start_distributed()
    cells = load_cells(args.splits)
    rows = {split: load_split(args.splits, split) for split in ("train", "val")}
    if params.model.freeze_backbone:
        size = params.features.size
        train, val = (load_features(args.features, split, rows[split], params.features)
                      for split in ("train", "val"))
        train_rows = train.rows
    else:
        size = params.cache.sizes[0]
        train = {s: load_cache(args.cache, "train", s, rows["train"]) for s in params.cache.sizes}
        val = load_cache(args.cache, "val", size, rows["val"])
        train_rows = train[size].rows

    seed_everything(params.train.seed, params.train.deterministic)
    model = build_model(params.model, len(cells))
    stamp = fingerprint(as_dict(params), train_rows, val.rows, cells)
    resume = Path(args.resume)
    live = Live(args.live, dvcyaml=False, save_dvc_exp=False) if dist.main else SilentLive()
    started = time.perf_counter()
    try:
        summary = fit(model, train, val, cells, params.train, params.loss, live,
                      resume_path=resume, stamp=stamp, dist=dist)
    finally:
        if dist.main:
            live.end()
        stop_distributed(dist)
    if dist.main:
        save_checkpoint(args.out, model, cells, params.model, size, as_dict(params), summary)
        resume.unlink(missing_ok=True)  # finished: nothing left to resume
        minutes = (time.perf_counter() - started) / 60
        write_json({"train_minutes": minutes, "epochs_run": summary["epochs_run"],
                    "minutes_per_epoch": minutes / summary["epochs_run"],
                    "device": summary["device"], "precision": summary["precision"]}, args.time)
        log.info("best epoch %d: val median %.2f km", summary["best_epoch"],
                 summary["val_median_km"])


if __name__ == "__main__":
    run_stage(main)
