"""crossval: answer every train and val photo once, by models that never saw its drive
(crossval.folds drive-disjoint folds of the split's units), in every way `evaluate.mode: auto`
chooses among, beside the nearest photo and the training centroid; write the figures, their
intervals over drives and the choice to metrics/crossval.json. The test split is not read."""

import argparse
import logging

import pandas as pd

from geoloc.crossval import TooFewDrives, cross_validate, crossval_metrics
from geoloc.data.features import FeatureSplit, load_features
from geoloc.data.splits import load_cells, load_split
from geoloc.io import write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.crossval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--metrics", default="metrics/crossval.json")
    args = parser.parse_args()

    params = load_params()
    metrics = {"folds": 0}
    if params.crossval.folds == 0:
        log.info("crossval.folds is 0: no cross-validation (evaluate.mode auto chooses on val)")
    else:
        try:
            result = cross_validate(pool(args, params), load_cells(args.splits), params)
            metrics = crossval_metrics(result, params.evaluate.bootstrap_samples)
        except TooFewDrives as exc:
            # Too little data to cross-validate is no reason to stop the rest of the pipeline.
            log.warning("%s", exc)
    write_json(metrics, args.metrics)
    if not metrics["folds"]:
        return
    log.info("%d photos of %d drives, %d folds; chosen: %s", metrics["photos"],
             metrics["drives"], metrics["folds"], metrics["choice"])
    for name, figures in {**metrics["answers"], **metrics["references"]}.items():
        against = ("" if "vs_nearest_photo_km" not in figures else   # the lookup itself
                   ", vs nearest photo {vs_nearest_photo_km:+.3f} km "
                   "[{vs_nearest_photo_km_ci_low:+.3f}, {vs_nearest_photo_km_ci_high:+.3f}]"
                   .format(**figures))
        log.info("  %-22s median %.3f km [%.3f, %.3f], p90 %.1f km%s", name,
                 figures["median_km"], figures["median_km_ci_low"],
                 figures["median_km_ci_high"], figures["p90_km"], against)


def pool(args: argparse.Namespace, params) -> FeatureSplit:
    """The train and val photos with their features, by image id: what cross-validation
    answers."""
    train, val = (load_features(args.features, split, load_split(args.splits, split),
                                params.features) for split in ("train", "val"))
    return FeatureSplit(train.features, pd.concat([train.rows, val.rows], ignore_index=True)
                        .sort_values("image_id", ignore_index=True))


if __name__ == "__main__":
    run_stage(main)
