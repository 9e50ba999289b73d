"""evaluate: score the trained model on the test split in kilometres, in every inference mode."""

import argparse
import logging
from pathlib import Path

from geoloc.checkpoint import check_cells, load_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.splits import load_cells, load_split
from geoloc.eval_plots import write_plots
from geoloc.evaluate import evaluate
from geoloc.io import write_json, write_parquet
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--metrics", default="metrics/eval.json")
    parser.add_argument("--modes", default="metrics/eval_modes.json",
                        help="the figures of every inference mode")
    parser.add_argument("--predictions", default="data/eval/predictions.parquet")
    parser.add_argument("--plots", default="plots/eval")
    args = parser.parse_args()

    params = load_params()
    model, model_cells, checkpoint = load_checkpoint(args.model)
    # The split's table, once it is known to be the model's: it has the parents too.
    cells = load_cells(args.splits)
    check_cells(model_cells, cells, args.model)
    size = checkpoint["model"]["image_size"]
    test = load_cache(args.cache, "test", size, load_split(args.splits, "test"))
    val = load_cache(args.cache, "val", size, load_split(args.splits, "val"))
    result = evaluate(model, test, cells, params.evaluate, val)

    write_json(result.metrics, args.metrics)
    write_json(result.modes, args.modes)
    write_parquet(result.predictions, args.predictions)
    write_plots(result, test, cells, Path(args.plots))
    metrics = result.metrics
    log.info("test (%s, temperature %.2f): median %.2f km [%.2f, %.2f], p90 %.1f km, accuracy "
             "%.3f; floor %.2f km, baseline %.1f km", params.evaluate.mode,
             metrics["temperature"], metrics["median_km"],
             metrics["median_km_ci_low"], metrics["median_km_ci_high"], metrics["p90_km"],
             metrics["accuracy"], metrics["floor_median_km"], metrics["baseline_median_km"])
    for mode, figures in result.modes.items():
        log.info("  %-16s median %.3f km, p90 %.1f km", mode, figures["median_km"],
                 figures["p90_km"])


if __name__ == "__main__":
    run_stage(main)
