"""Scoring a model on the test split in kilometres: every inference mode, next to the floor of
cell classification and two trivial baselines, overall and per city."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from geoloc.choice import CROSSVAL, VALIDATION, Answer, answer_errors, candidates, choose
from geoloc.choices import RETRIEVAL_MODES
from geoloc.errors import GeolocError
from geoloc.geo import haversine_km, mean_point
from geoloc.inference import (
    MODES,
    Outputs,
    Recipe,
    fit_temperature,
    log_softmax,
    sequence_evidence,
)
from geoloc.metrics import (
    bootstrap_ci,
    calibration_table,
    distance_metrics,
    expected_calibration_error,
    paired_figures,
    sequence_median_km,
    topk_accuracy,
)
from geoloc.params import AUTO, EvaluateParams
from geoloc.retrieval import RetrievalIndex, retrieval_points

CONFUSION_CELLS = 10   # the confusion plot shows the test's most frequent cells, the rest as one


@dataclass
class Evaluation:
    metrics: dict               # metrics/eval.json: the headline mode's figures, references
    modes: dict                 # metrics/eval_modes.json: every mode's figures
    recipe: Recipe              # what made the points: the export ships it
    predictions: pd.DataFrame   # one row per test image, every mode's point and error
    by_city: pd.DataFrame       # the headline figures per city
    calibration: pd.DataFrame   # accuracy and error per confidence bin (argmax)
    mode: str                   # the headline mode (auto's choice, or params')


def evaluate(test: Outputs, cells: pd.DataFrame, cfg: EvaluateParams,
             val: Outputs | None = None, index: RetrievalIndex | None = None,
             crossval: dict | None = None, serves_retrieval: bool = True) -> Evaluation:
    """Score a model's outputs on the test split; with `cfg.calibrate`, its probabilities are
    first rescaled by a temperature fitted on its `val` outputs. With a retrieval `index` (and
    the test photos' features), the retrieval and place modes and the nearest photo are
    scored too.

    With `cfg.mode` auto, the headline is the answer (geoloc.choice) with the lowest median
    km in `crossval` (metrics/crossval.json of this very model's kind) or, without it, on
    `val`: the test split is never read for it. Without `serves_retrieval` (a snapshot that
    ships no feature index) it never chooses retrieval nor place."""
    rows = test.rows.reset_index(drop=True)
    if len(rows) == 0:
        raise GeolocError("the test split has no images: nothing to evaluate (see "
                          "metrics/split.json and split.test_fraction)")
    test = Outputs(rows, test.logits, test.offsets, test.features)
    logits = test.logits
    recipe = Recipe(cells, cfg.top_k, index=index, neighbours=cfg.retrieval.neighbours,
                    within_top_cells=cfg.retrieval.within_top_cells)
    modes = recipe.modes(test)
    if cfg.mode != AUTO and cfg.mode not in modes:
        raise GeolocError(f"evaluate.mode: {cfg.mode!r} is not available for this model; "
                          f"available: {', '.join(modes)} (all modes: {', '.join(MODES)})")
    if cfg.calibrate and val is not None and len(val.rows):
        recipe.temperature, recipe.sequence_temperature = fit_temperatures(val.logits,
                                                                           val.rows)
    choice = {"chosen_by": "params"}
    if cfg.mode == AUTO:
        servable = tuple(m for m in modes if serves_retrieval or m not in RETRIEVAL_MODES)
        answer, choice = choose_answer(recipe, candidates(servable, cfg.auto), val, crossval)
        if answer.mode in RETRIEVAL_MODES:
            recipe.neighbours, recipe.within_top_cells = (answer.neighbours,
                                                          answer.within_top_cells)
        cfg = replace(cfg, mode=answer.mode)
    log_probs = recipe.log_probs(test)
    guesses = {mode: recipe.points(mode, test) for mode in modes}
    errors = {mode: haversine_km(rows["lat"], rows["lon"], lat, lon)
              for mode, (_, lat, lon) in guesses.items()}
    # Each photo's error under the answers that need no model, for paired comparisons.
    references = {"floor_km": floor_km(rows, cells)}
    if "retrieval" in modes:
        references["nearest_photo_km"] = nearest_photo_km(index, test.features, rows)
    predictions = prediction_table(rows, log_probs, guesses, errors, cfg).assign(**references)

    labels = rows["label"].to_numpy()
    calibration = calibration_table(predictions["confidence"],
                                    predictions["pred_label"] == labels,
                                    errors["argmax"])
    sequence_probs = recipe.probabilities("sequence", test)
    sequence_calibration = calibration_table(sequence_probs.max(axis=1),
                                             sequence_probs.argmax(axis=1) == labels,
                                             errors["sequence"])
    drive = drives(rows)
    mode_figures = {mode: figures(errors[mode], guesses[mode][0], rows, cfg.bootstrap_samples)
                    | paired_figures(errors[mode], comparisons(mode, errors, references), drive,
                                     cfg.bootstrap_samples)
                    for mode in modes}
    headline = mode_figures[cfg.mode]
    metrics = {
        "images": len(rows),
        "sequences": int(rows["sequence_id"].nunique()),
        # The headline mode's figures are the distance figures below, and its share of photos
        # in their true cell is `mode_accuracy`; `accuracy` stays the classifier's (argmax).
        **{("mode_accuracy" if k == "accuracy" else k): v for k, v in headline.items()},
        "accuracy": float(np.mean(logits.argmax(1) == labels)),
        f"top{cfg.top_k}_accuracy": topk_accuracy(logits, labels, cfg.top_k),
        "temperature": recipe.temperature,
        "expected_calibration_error": expected_calibration_error(calibration),
        "sequence_temperature": recipe.sequence_temperature,
        "sequence_expected_calibration_error": expected_calibration_error(sequence_calibration),
        **reference_medians(rows, cells),
        **({"nearest_photo_median_km": float(np.median(references["nearest_photo_km"])),
            "nearest_photo_p90_km": float(np.percentile(references["nearest_photo_km"], 90))}
           if "nearest_photo_km" in references else {}),
    }
    by_city = pd.DataFrame([
        {"city": city, **figures(errors[cfg.mode][group.index], guesses[cfg.mode][0][group.index],
                                 group, cfg.bootstrap_samples),
         **reference_medians(group, cells)}
        for city, group in rows.groupby("city", sort=True)])
    metrics["choice"] = choice
    return Evaluation(metrics, mode_figures, recipe, predictions, by_city, calibration, cfg.mode)


def choose_answer(recipe: Recipe, answers: list[Answer], val: Outputs | None,
                  crossval: dict | None) -> tuple[Answer, dict]:
    """The answer `auto` serves, and what it was chosen on with the medians behind it."""
    if crossval is not None and crossval.get("folds"):
        medians = {name: figures["median_km"] for name, figures in crossval["answers"].items()}
        answers, chosen_by = [a for a in answers if a.name in medians], CROSSVAL
    elif val is not None and len(val.rows):
        medians = {name: float(np.median(km))
                   for name, km in answer_errors(recipe, answers, val).items()}
        chosen_by = VALIDATION
    else:
        raise GeolocError("evaluate.mode auto chooses on held-out photos, and there are none: "
                          "the val split is empty and cross-validation is off (crossval.folds "
                          "0); set split.val_fraction above 0, or name a mode")
    if not answers:
        raise GeolocError("evaluate.mode auto: no answer of metrics/crossval.json is one this "
                          "model has: run `dvc repro crossval`")
    answer = choose(answers, medians)
    return answer, {"chosen_by": chosen_by, "answer": answer.name,
                    "held_out_median_km": medians[answer.name],
                    "held_out_medians_km": {a.name: medians[a.name] for a in answers}}


def fit_temperatures(val_logits: np.ndarray, val_rows: pd.DataFrame) -> tuple[float, float]:
    """(the photo temperature, the sequence temperature), fitted on the validation split: the
    second rescales a sequence's summed evidence, computed from photo probabilities already
    rescaled by the first."""
    labels = val_rows["label"].to_numpy()
    temperature = fit_temperature(val_logits, labels)
    evidence = sequence_evidence(log_softmax(val_logits / temperature), val_rows, online=False)
    return temperature, fit_temperature(evidence, labels)


def figures(errors_km: np.ndarray, labels: np.ndarray, rows: pd.DataFrame,
            bootstrap_samples: int) -> dict:
    """The distance figures of one set of predictions, with the 95% intervals of the median
    and the p90 (resampling drives), the median per sequence and, where every point is a
    cell's, the share of images put in their true cell."""
    intervals, drive = {}, drives(rows)
    for name, q in (("median_km", 50), ("p90_km", 90)):
        low, high = bootstrap_ci(errors_km, drive, bootstrap_samples, q)
        intervals |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    sequences = rows["sequence_id"].fillna(rows["image_id"]).to_numpy()
    out = {"images": len(rows), **distance_metrics(errors_km), **intervals,
           "sequence_median_km": sequence_median_km(errors_km, sequences)}
    if (labels >= 0).all():
        out["accuracy"] = float(np.mean(labels == rows["label"].to_numpy()))
    return out


def comparisons(mode: str, errors: dict[str, np.ndarray],
                references: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The answers a mode's test errors are read against, paired photo by photo: the
    classifier's argmax, the nearest photo (where there is an index) and, for place, the photo
    retrieval whose views it answers together."""
    against = {"argmax": errors["argmax"]}
    if "nearest_photo_km" in references:
        against["nearest_photo"] = references["nearest_photo_km"]
    if mode == "place":
        against["retrieval"] = errors["retrieval"]
    return {name: km for name, km in against.items() if name != mode}


def drives(rows: pd.DataFrame) -> np.ndarray:
    """Each photo's drive, the unit the test intervals resample: the split's `unit` (its twin
    group, so a drive uploaded as two sequences counts once; under the spatial protocol its
    block) where the rows have one, else its sequence, else the photo itself."""
    drive = rows["sequence_id"]
    if "unit" in rows:
        drive = rows["unit"].fillna(drive)
    return drive.fillna(rows["image_id"]).to_numpy()


def nearest_photo_km(index: RetrievalIndex, features: np.ndarray,
                     rows: pd.DataFrame) -> np.ndarray:
    """Each photo's error under a lookup with no model: the position of the single most
    similar training photo in the feature index (the backbone's features, reduced to the
    index's principal components), the reference a real-photo model must beat."""
    _, lat, lon = retrieval_points(index, features, None, neighbours=1, within_top_cells=0)
    return haversine_km(rows["lat"], rows["lon"], lat, lon)


def floor_km(rows: pd.DataFrame, cells: pd.DataFrame) -> np.ndarray:
    """Each photo's distance to its true cell's point: the error of a perfect classifier."""
    true = cells.set_index("label").loc[rows["label"]]
    return haversine_km(rows["lat"].to_numpy(), rows["lon"].to_numpy(), true["lat"].to_numpy(),
                        true["lon"].to_numpy())


def reference_medians(rows: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """Median km of answers that need no model, to read the model's error against:
    - floor: the true cell's point, what a perfect cell classifier would answer;
    - baseline: the point of the cell with the most training images, for every photo;
    - centroid: the mean position of all training images, for every photo."""
    table = cells.set_index("label").sort_index()
    lat, lon = rows["lat"].to_numpy(), rows["lon"].to_numpy()
    top = table.loc[table["n_train"].idxmax()]
    centre = mean_point(table["lat"].to_numpy(), table["lon"].to_numpy(),
                        table["n_train"].to_numpy())
    return {
        "floor_median_km": float(np.median(floor_km(rows, cells))),
        "baseline_median_km": float(np.median(haversine_km(lat, lon, top["lat"], top["lon"]))),
        "centroid_median_km": float(np.median(haversine_km(lat, lon, *centre))),
    }


def prediction_table(rows: pd.DataFrame, log_probs: np.ndarray, guesses: dict, errors: dict,
                     cfg: EvaluateParams) -> pd.DataFrame:
    """One row per test image: the truth, the argmax cell and its probability (`confidence`),
    the top-k cells and probabilities, each mode's point and error, and the headline mode's
    again as pred_lat / pred_lon / error_km."""
    k = min(cfg.top_k, log_probs.shape[1])
    top = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    probs = np.exp(np.take_along_axis(log_probs, top, axis=1))
    table = pd.DataFrame({
        "image_id": rows["image_id"], "sequence_id": rows["sequence_id"],
        **({"unit": rows["unit"]} if "unit" in rows else {}),
        "captured_at": rows["captured_at"], "city": rows["city"],
        "lat": rows["lat"], "lon": rows["lon"], "label": rows["label"],
        "pred_label": top[:, 0], "confidence": probs[:, 0],
        "top_labels": list(top), "top_probabilities": list(probs),
    })
    for mode, (_, lat, lon) in guesses.items():
        table[f"pred_lat_{mode}"], table[f"pred_lon_{mode}"] = lat, lon
        table[f"error_km_{mode}"] = errors[mode]
    _, table["pred_lat"], table["pred_lon"] = guesses[cfg.mode]
    table["error_km"] = errors[cfg.mode]
    return table


def error_cdf(predictions: pd.DataFrame, modes, points: int = 200) -> pd.DataFrame:
    """Share of test images within each distance (log-spaced km), one column per mode."""
    km = np.geomspace(0.01, 2000, points)
    table = {"km": km}
    for mode in modes:
        errors = np.sort(predictions[f"error_km_{mode}"].to_numpy())
        table[mode] = np.searchsorted(errors, km, side="right") / len(errors)
    return pd.DataFrame(table)


def confusion_table(predictions: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """(actual, predicted) cell names of the test images whose true cell is among the
    CONFUSION_CELLS most frequent; a prediction outside those is "other"."""
    names = cells.set_index("label")["cell"]
    frequent = predictions["label"].value_counts(sort=True).index[:CONFUSION_CELLS]
    kept = predictions[predictions["label"].isin(frequent)]
    predicted = kept["pred_label"].where(kept["pred_label"].isin(frequent))
    return pd.DataFrame({
        "actual": names.loc[kept["label"]].to_numpy(),
        "predicted": predicted.map(names).fillna("other").to_numpy(),
    })


def cell_errors(predictions: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell of the class table: its test images and their median headline error (NaN for
    a cell without test images)."""
    per_cell = predictions.groupby("label")["error_km"].agg(["size", "median"])
    table = cells[["label", "cell"]].join(per_cell, on="label")
    return table.rename(columns={"size": "test_images", "median": "median_km"})


def extremes(predictions: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n best and n worst predictions by headline error, titled, best first."""
    ranked = predictions.sort_values(["error_km", "image_id"], kind="stable")
    best = ranked.head(n).assign(title=[f"best {i + 1}" for i in range(min(n, len(ranked)))])
    worst = ranked.tail(n)[::-1]
    worst = worst.assign(title=[f"worst {i + 1}" for i in range(len(worst))])
    return pd.concat([best, worst])
