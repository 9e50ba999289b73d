"""Scoring a model on the test split, in kilometres, next to a trivial baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoloc.data.cache import CachedSplit
from geoloc.geo import haversine_km
from geoloc.inference import predict_outputs, predicted_points
from geoloc.metrics import distance_metrics, topk_accuracy


def evaluate(model, test: CachedSplit, cells: pd.DataFrame, top_k: int,
             ) -> tuple[dict, pd.DataFrame]:
    """(metrics for metrics/eval.json, one prediction row per test image in the cache)."""
    rows = test.rows
    logits, offsets = predict_outputs(model, test.images, rows["cache_row"])
    labels = rows["label"].to_numpy()
    probs = _softmax(logits)
    lat, lon = predicted_points(logits, offsets, cells)
    errors = haversine_km(rows["lat"].to_numpy(), rows["lon"].to_numpy(), lat, lon)

    metrics = {
        "images": len(rows),
        "accuracy": float(np.mean(logits.argmax(1) == labels)),
        f"top{top_k}_accuracy": topk_accuracy(logits, labels, top_k),
        **distance_metrics(errors),
        "baseline_median_km": float(np.median(_baseline_errors(rows, cells))),
    }
    predictions = pd.DataFrame({
        "image_id": rows["image_id"],
        "sequence_id": rows["sequence_id"],
        "city": rows["city"],
        "lat": rows["lat"],
        "lon": rows["lon"],
        "label": labels,
        "pred_label": logits.argmax(1),
        "pred_lat": lat,
        "pred_lon": lon,
        "confidence": probs.max(1),
        "error_km": errors,
    })
    return metrics, predictions


def _baseline_errors(rows: pd.DataFrame, cells: pd.DataFrame) -> np.ndarray:
    """Errors of always answering the point of the cell with the most training images."""
    top = cells.loc[cells["n_train"].idxmax()]
    return haversine_km(rows["lat"].to_numpy(), rows["lon"].to_numpy(), top["lat"], top["lon"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def error_cdf(errors_km: np.ndarray, points: int = 200) -> pd.DataFrame:
    """The error CDF sampled at log-spaced distances, for `dvc plots`."""
    km = np.geomspace(0.01, 2000, points)
    share = np.searchsorted(np.sort(errors_km), km, side="right") / len(errors_km)
    return pd.DataFrame({"km": km, "share_within": share})
