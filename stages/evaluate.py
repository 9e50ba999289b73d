"""evaluate: score the trained model on the test split in kilometres."""

import argparse
import logging
from pathlib import Path

from geoloc.checkpoint import check_cells, load_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.splits import load_cells, load_split
from geoloc.evaluate import error_cdf, evaluate
from geoloc.io import atomic_path, write_json, write_parquet
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--metrics", default="metrics/eval.json")
    parser.add_argument("--predictions", default="data/eval/predictions.parquet")
    parser.add_argument("--plots", default="plots/eval")
    args = parser.parse_args()

    params = load_params()
    model, cells, checkpoint = load_checkpoint(args.model)
    check_cells(cells, load_cells(args.splits), args.model)
    test = load_cache(args.cache, "test", checkpoint["model"]["image_size"],
                      load_split(args.splits, "test"))
    metrics, predictions = evaluate(model, test, cells, params.evaluate.top_k)

    write_json(metrics, args.metrics)
    write_parquet(predictions, args.predictions)
    with atomic_path(Path(args.plots) / "error_cdf.csv") as tmp:
        error_cdf(predictions["error_km"].to_numpy()).to_csv(tmp, index=False, float_format="%.6g")
    log.info("test: median %.2f km, p90 %.2f km, accuracy %.3f (baseline median %.1f km)",
             metrics["median_km"], metrics["p90_km"], metrics["accuracy"],
             metrics["baseline_median_km"])


if __name__ == "__main__":
    run_stage(main)
