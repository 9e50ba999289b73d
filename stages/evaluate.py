"""evaluate: score the trained model on the test split in kilometres, in every inference mode,
and write the feature index the retrieval mode searches (the export ships it)."""

import argparse
import json
import logging
from pathlib import Path

from geoloc.checkpoint import check_cells, load_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.features import features_of, load_features
from geoloc.data.splits import SPLITS, load_cells, load_split
from geoloc.eval_plots import write_plots
from geoloc.evaluate import evaluate
from geoloc.inference import Outputs, view_places
from geoloc.io import write_json, write_parquet
from geoloc.outputs import split_outputs
from geoloc.params import load_params
from geoloc.retrieval import RetrievalIndex
from geoloc.stage import run_stage

log = logging.getLogger("stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--retrieval", default="models/retrieval.npz",
                        help="the feature index of the training photos (retrieval mode)")
    parser.add_argument("--recipe", default="models/recipe.json",
                        help="the headline mode and what turns outputs into points (the "
                             "temperatures among them): the export ships it")
    parser.add_argument("--crossval", default="metrics/crossval.json",
                        help="the crossval stage's figures (evaluate.mode auto chooses from "
                             "them)")
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
    rows = {split: load_split(args.splits, split) for split in SPLITS}
    features = {split: load_features(args.features, split, rows[split], params.features)
                for split in SPLITS}
    frozen = checkpoint["model"]["freeze_backbone"]
    outputs = {}
    for split in ("test", "val"):
        # A frozen backbone's head reads the features; other models read the cached images.
        data = (features[split] if frozen else
                load_cache(args.cache, split, size, rows[split]))
        outputs[split] = Outputs(data.rows, *split_outputs(model, data),
                                 features=features_of(features[split], data.rows))
    train = features["train"]
    index = RetrievalIndex.build(train.features[train.rows["feature_row"]], train.rows["lat"],
                                 train.rows["lon"], train.rows["label"],
                                 params.evaluate.retrieval.dims,
                                 places=view_places(train.rows))
    # Cross-validation re-fits the head on the features: its figures are this model's only
    # when this model is such a head.
    crossval = json.loads(Path(args.crossval).read_text()) if frozen else None
    result = evaluate(outputs["test"], cells, params.evaluate, outputs["val"], index, crossval,
                      serves_retrieval=params.export.retrieval_index)
    index.save(args.retrieval)
    mode = result.mode
    write_json({"mode": mode, "recipe": result.recipe.settings(),
                "choice": result.metrics["choice"]}, args.recipe, rounded=False)

    write_json(result.metrics, args.metrics)
    write_json(result.modes, args.modes)
    write_parquet(result.predictions, args.predictions)
    write_plots(result, load_cache(args.cache, "test", params.cache.sizes[0], rows["test"]),
                cells, Path(args.plots))
    metrics = result.metrics
    log.info("test (%s, temperature %.2f): median %.2f km [%.2f, %.2f], p90 %.1f km, beyond "
             "200 km %.3f; classifier accuracy %.3f; floor %.2f km, baseline %.1f km",
             mode, metrics["temperature"], metrics["median_km"],
             metrics["median_km_ci_low"], metrics["median_km_ci_high"], metrics["p90_km"],
             metrics["far_200km"], metrics["accuracy"], metrics["floor_median_km"],
             metrics["baseline_median_km"])
    for mode, figures in result.modes.items():
        log.info("  %-16s median %.3f km, p90 %.1f km, p95 %.1f km, beyond 200/500 km "
                 "%.3f/%.3f", mode, figures["median_km"], figures["p90_km"], figures["p95_km"],
                 figures["far_200km"], figures["far_500km"])


if __name__ == "__main__":
    run_stage(main)
