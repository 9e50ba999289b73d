"""Scores in kilometres and in cells."""

from __future__ import annotations

import numpy as np

WITHIN_KM = (1, 5, 25, 100)


def distance_metrics(errors_km: np.ndarray) -> dict:
    """Median, mean and 90th percentile error, and the share of images within thresholds."""
    errors_km = np.asarray(errors_km, dtype=np.float64)
    if errors_km.size == 0:
        raise ValueError("no predictions to score")
    metrics = {
        "median_km": float(np.median(errors_km)),
        "mean_km": float(np.mean(errors_km)),
        "p90_km": float(np.percentile(errors_km, 90)),
    }
    for km in WITHIN_KM:
        metrics[f"within_{km}km"] = float(np.mean(errors_km <= km))
    return metrics


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))
