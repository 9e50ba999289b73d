"""Drive-disjoint cross-validation: the folds, and the intervals that respect drives.

A fold holds whole units of the split (a twin group of sequences, or a block under the spatial
protocol), so no photo is answered by a model that saw its drive; each city's units are dealt
out over the folds, largest first, to the fold with the fewest of that city's photos, so every
fold holds a share of every city. Photos of one drive are not independent draws: an interval
resamples drives, and a comparison of two answers resamples the same drives for both (paired).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from geoloc.choice import Answer, answer_errors, candidates, choose
from geoloc.data.features import FeatureSplit
from geoloc.data.splits import with_points
from geoloc.errors import GeolocError
from geoloc.evaluate import fit_temperatures, nearest_photo_km
from geoloc.geo import haversine_km, mean_point
from geoloc.inference import Outputs, Recipe, view_places
from geoloc.metrics import bootstrap_ci, distance_metrics, paired_figures
from geoloc.models import GeoNet, build_model
from geoloc.outputs import split_outputs
from geoloc.params import Params
from geoloc.retrieval import RetrievalIndex
from geoloc.train import SilentLive, fit, seed_everything

log = logging.getLogger(__name__)
# The references: the single most similar training photo's position, and the training photos'
# mean position for every photo.
NEAREST, CENTROID = "nearest_photo", "centroid"
MIN_FOLDS = 3   # one fold answered, one to stop training and calibrate on, one to train on


class CrossValidationError(GeolocError, ValueError):
    """The data cannot be cut into the folds asked for."""


class TooFewDrives(CrossValidationError):
    """So few drives that no cross-validation can be made: the rest of the pipeline runs."""


def drive_folds(cities: pd.Series, units: pd.Series, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each photo, given its city and its unit (a drive, or a group
    of drives that must stay together)."""
    drives = units.nunique()
    if drives < MIN_FOLDS:
        raise TooFewDrives(f"cross-validation needs photos of at least {MIN_FOLDS} drives; "
                           f"the data has {drives}: set crossval.folds to 0")
    if folds > drives:
        raise CrossValidationError(f"crossval.folds is {folds} but the data has {drives} "
                                   f"drives: set crossval.folds to at most {drives}")
    frame = pd.DataFrame({"city": cities.to_numpy(), "unit": units.to_numpy()})
    # A unit's city is its first, as the split has it.
    city_of_unit = frame.sort_values(["unit", "city"]).groupby("unit")["city"].first()
    short = city_of_unit.value_counts().sort_index()
    short = short[short < folds]
    if len(short):
        city, count = short.idxmin(), int(short.min())   # the city with the fewest
        # Folds 1 and 2 are refused (params): below 3, the only setting left is off.
        setting = f"at most {count}" if count >= MIN_FOLDS else "0 (no cross-validation)"
        raise CrossValidationError(f"crossval.folds is {folds} but the city {city} has "
                                   f"{count} drives (and {len(short)} cities fewer than "
                                   f"{folds}): set crossval.folds to {setting}, or leave "
                                   f"that city out of the batches")
    sizes = frame.groupby("unit").size()
    rng = np.random.default_rng(seed)
    fold_of_unit = {}
    for _, city_units in city_of_unit.groupby(city_of_unit, sort=True):
        names = city_units.index.to_numpy()
        names = names[rng.permutation(len(names))]
        # Largest first (ties in the shuffled order), each to the emptiest fold of the city.
        names = names[np.argsort(-sizes.loc[names].to_numpy(), kind="stable")]
        filled = np.zeros(folds, dtype=np.int64)
        for name in names:
            fold = int(np.argmin(filled))
            fold_of_unit[name] = fold
            filled[fold] += sizes[name]
    return frame["unit"].map(fold_of_unit).to_numpy(dtype=np.int64)


@dataclass
class CrossValidation:
    """Every held-out photo answered once, by each candidate answer and each reference."""
    rows: pd.DataFrame              # the photos, with their `fold`
    errors: dict[str, np.ndarray]   # answer or reference name -> km per photo
    answers: list[Answer]           # the candidates, in the order `choose` breaks ties in
    unseen: int                     # photos whose cell had no training photo in their fold
    epochs: list[int]               # the epochs each fold's head trained before it stopped


def cross_validate(pool: FeatureSplit, cells: pd.DataFrame, params: Params) -> CrossValidation:
    """Answer every photo of `pool` (the split's train and val photos with their `unit`; test
    is never read) by models that never saw its drive.

    Fold f is answered by a head trained on the features of the folds other than f and f+1,
    early-stopped and calibrated on fold f+1, exactly as the train and evaluate stages use
    train and val; the class table's points and retrieval's index come from the same training
    photos, so nothing of fold f reaches its answer."""
    cfg = params.crossval
    rows = pool.rows.reset_index(drop=True)
    rows["fold"] = drive_folds(rows["city"], rows["unit"], cfg.folds, cfg.seed)
    errors: dict[str, np.ndarray] = {}
    answers, unseen, epochs = None, 0, []
    for fold in range(cfg.folds):
        held = rows["fold"] == fold
        val = rows["fold"] == (fold + 1) % cfg.folds
        parts = {name: rows[mask].reset_index(drop=True) for name, mask in
                 (("train", ~held & ~val), ("val", val), ("held", held))}
        log.info("fold %d of %d: %d photos answered, trained on %d, early-stopped on %d",
                 fold + 1, cfg.folds, len(parts["held"]), len(parts["train"]),
                 len(parts["val"]))
        fold_errors, answers, epochs_run = answer_fold(pool.features, parts, cells, params)
        epochs.append(epochs_run)
        for name, km in fold_errors.items():
            errors.setdefault(name, np.full(len(rows), np.nan))[held.to_numpy()] = km
        unseen += int((~parts["held"]["label"].isin(parts["train"]["label"])).sum())
    return CrossValidation(rows, errors, answers, unseen, epochs)


def answer_fold(features: np.ndarray, parts: dict[str, pd.DataFrame], cells: pd.DataFrame,
                params: Params) -> tuple[dict[str, np.ndarray], list[Answer], int]:
    """Fit on parts["train"] and ["val"], and answer parts["held"] every way; also the
    epochs the head trained."""
    train, val, held = parts["train"], parts["val"], parts["held"]
    fold_cells = with_points(cells, train)
    model, summary = fit_probe(FeatureSplit(features, train), FeatureSplit(features, val),
                               fold_cells, params)
    outputs = {name: Outputs(part, *split_outputs(model, FeatureSplit(features, part)),
                             features=np.array(features[part["feature_row"].to_numpy()]))
               for name, part in (("val", val), ("held", held))}
    index = RetrievalIndex.build(features[train["feature_row"].to_numpy()], train["lat"],
                                 train["lon"], train["label"], params.evaluate.retrieval.dims,
                                 places=view_places(train))
    recipe = Recipe(fold_cells, params.evaluate.top_k, index=index)
    if params.evaluate.calibrate:
        recipe.temperature, recipe.sequence_temperature = fit_temperatures(
            outputs["val"].logits, val)
    answers = candidates(recipe.modes(outputs["held"]), params.evaluate.auto)
    errors = answer_errors(recipe, answers, outputs["held"])
    errors[NEAREST] = nearest_photo_km(index, outputs["held"].features, held)
    centre = mean_point(train["lat"].to_numpy(), train["lon"].to_numpy(), np.ones(len(train)))
    errors[CENTROID] = haversine_km(held["lat"].to_numpy(), held["lon"].to_numpy(), *centre)
    return errors, answers, summary["epochs_run"]


def fit_probe(train: FeatureSplit, val: FeatureSplit, cells: pd.DataFrame, params: Params,
              ) -> tuple[GeoNet, dict]:
    """The model the train stage fits with model.freeze_backbone, on these photos (the head
    over the features stage's backbone, with the params' head, loss and training), and fit's
    summary of it."""
    frozen = replace(params.model, arch=params.features.backbone, pretrained=True,
                     weights_path=params.features.weights_path, freeze_backbone=True)
    seed_everything(params.train.seed, params.train.deterministic)
    # The backbone is never run: the head reads the features the backbone already made.
    model = build_model(frozen, len(cells), load_weights=False)
    summary = fit(model, train, val, cells, replace(params.train, resume=False), params.loss,
                  SilentLive())
    return model, summary


def crossval_metrics(result: CrossValidation, samples: int) -> dict:
    """metrics/crossval.json: per answer and reference, the distance figures over every
    photo, the median's 95% interval over drives and the paired median difference against
    the nearest photo with its interval (for place retrieval, also against photo retrieval at
    the same settings); the choice `auto` makes from them."""
    drives = result.rows["unit"].to_numpy()
    nearest = {NEAREST: result.errors[NEAREST]}

    def figures(km: np.ndarray, against: dict[str, np.ndarray]) -> dict:
        low, high = bootstrap_ci(km, drives, samples)
        return {**{k: v for k, v in distance_metrics(km).items()
                   if k in ("median_km", "p90_km", "p95_km", "within_1km", "far_200km",
                            "far_500km")},
                "median_km_ci_low": low, "median_km_ci_high": high,
                **paired_figures(km, against, drives, samples)}

    answers = {answer.name: figures(result.errors[answer.name], nearest)
               for answer in result.answers}
    # The views of a place answered together against each view alone, at the same settings.
    for answer in result.answers:
        if answer.mode == "place":
            photo = result.errors[replace(answer, mode="retrieval").name]
            answers[answer.name] |= paired_figures(result.errors[answer.name],
                                                   {"retrieval": photo}, drives, samples)
    chosen = choose(result.answers, {name: f["median_km"] for name, f in answers.items()})
    return {"folds": int(result.rows["fold"].max()) + 1, "photos": len(result.rows),
            "drives": int(result.rows["unit"].nunique()),
            "photos_in_cells_without_training_photos": result.unseen,
            "head_epochs": sum(result.epochs),
            "choice": chosen.name, "answers": answers,
            "references": {NEAREST: figures(result.errors[NEAREST], {}),
                           CENTROID: figures(result.errors[CENTROID], nearest)}}
