"""train: fit the model named in params on the cached train split, early-stopped on val km."""

import argparse
import logging

from dvclive import Live

from geoloc.checkpoint import save_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.splits import load_cells, load_split
from geoloc.models import build_model
from geoloc.params import as_dict, load_params
from geoloc.stage import run_stage
from geoloc.train import fit, seed_everything

log = logging.getLogger("stages.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--out", default="models/model.pt")
    parser.add_argument("--live", default="metrics/train", help="DVCLive folder")
    args = parser.parse_args()

    params = load_params()
    size = params.cache.sizes[0]
    cells = load_cells(args.splits)
    splits = {name: load_cache(args.cache, name, size, load_split(args.splits, name))
              for name in ("train", "val")}

    seed_everything(params.train.seed)
    model = build_model(params.model.arch, len(cells), params.model.width, params.model.dropout)
    with Live(args.live, dvcyaml=False, save_dvc_exp=False) as live:
        summary = fit(model, splits["train"], splits["val"], cells, params.train, params.loss,
                      live)
    save_checkpoint(args.out, model, cells, arch=params.model.arch, width=params.model.width,
                    dropout=params.model.dropout, image_size=size, params=as_dict(params),
                    summary=summary)
    log.info("best epoch %d: val median %.2f km", summary["best_epoch"], summary["val_median_km"])


if __name__ == "__main__":
    run_stage(main)
