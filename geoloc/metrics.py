"""Scores in kilometres and in cells (../shared/reference/geolocation.md, "Measures")."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Inside one country the useful thresholds are street, neighbourhood, city, region, far.
WITHIN_KM = (0.5, 1, 5, 25, 100)
# Far errors: the answer is in the wrong region (the rates the roadmap's README judges by).
FAR_KM = (200, 500)
GEOSCORE_KM = 1492.7   # GeoGuessr's scale: 5000 points at 0 km, 1/e of that at this distance
CALIBRATION_BINS = 10


def within_key(km: float) -> str:
    """`within_0_5km`, `within_1km`, ...: metric names without dots, which DVC would nest."""
    return f"within_{km:g}km".replace(".", "_")


def far_key(km: float) -> str:
    """`far_200km`, `far_500km`: the share of errors above that distance."""
    return f"far_{km:g}km"


def distance_metrics(errors_km: np.ndarray) -> dict:
    """Median, mean, 90th and 95th percentile error, the share of images within each
    threshold and of those farther than each far threshold, and the GeoScore."""
    errors_km = np.asarray(errors_km, dtype=np.float64)
    if errors_km.size == 0:
        raise ValueError("no predictions to score")
    metrics = {
        "median_km": float(np.median(errors_km)),
        "mean_km": float(np.mean(errors_km)),
        "p90_km": float(np.percentile(errors_km, 90)),
        "p95_km": float(np.percentile(errors_km, 95)),
    }
    for km in WITHIN_KM:
        metrics[within_key(km)] = float(np.mean(errors_km <= km))
    for km in FAR_KM:
        metrics[far_key(km)] = float(np.mean(errors_km > km))
    metrics["geoscore"] = float(np.mean(5000.0 * np.exp(-errors_km / GEOSCORE_KM)))
    return metrics


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def sequence_median_km(errors_km: np.ndarray, sequences) -> float:
    """The median over sequences of each sequence's median error: every drive counts once,
    however many frames it has."""
    return float(pd.Series(errors_km).groupby(np.asarray(sequences)).median().median())


def bootstrap_ci(errors_km: np.ndarray, sequences, samples: int, q: float = 50, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval for the q-th percentile of the errors (50: the median)
    that resamples whole sequences, since the frames of one drive are not independent draws.

    Each resample draws as many sequences as there are, with replacement; an image then
    weighs as often as its sequence was drawn.
    """
    errors_km = np.asarray(errors_km, dtype=np.float64)
    codes, _ = pd.factorize(np.asarray(sequences))
    order = np.argsort(errors_km, kind="stable")
    values = [weighted_percentiles(errors_km[order], counts[:, order], q)
              for counts in drive_draws(codes, samples, seed)]
    low, high = np.percentile(np.concatenate(values), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def paired_difference_ci(errors_km: np.ndarray, reference_km: np.ndarray, drives,
                         samples: int, q: float = 50, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high): the q-th percentile of `errors_km` minus that of
    `reference_km` (the same photos answered two ways), with a percentile bootstrap interval
    that draws whole drives, the same drives for both answers. An interval that spans zero is
    no difference."""
    errors_km = np.asarray(errors_km, dtype=np.float64)
    reference_km = np.asarray(reference_km, dtype=np.float64)
    codes, _ = pd.factorize(np.asarray(drives))
    by_error, by_reference = (np.argsort(errors_km, kind="stable"),
                              np.argsort(reference_km, kind="stable"))
    differences = [weighted_percentiles(errors_km[by_error], counts[:, by_error], q)
                   - weighted_percentiles(reference_km[by_reference], counts[:, by_reference], q)
                   for counts in drive_draws(codes, samples, seed)]
    low, high = np.percentile(np.concatenate(differences), [50 * (1 - level), 50 * (1 + level)])
    difference = float(np.percentile(errors_km, q) - np.percentile(reference_km, q))
    return difference, float(low), float(high)


def paired_figures(errors_km: np.ndarray, against: dict[str, np.ndarray], drives,
                   samples: int) -> dict:
    """`vs_<name>_km` with `_ci_low` and `_ci_high`: the median of `errors_km` minus that of
    each answer in `against` (the same photos answered another way), with its 95% interval
    that draws the same drives for both (paired_difference_ci)."""
    out = {}
    for name, reference_km in against.items():
        difference, low, high = paired_difference_ci(errors_km, reference_km, drives, samples)
        out |= {f"vs_{name}_km": difference, f"vs_{name}_km_ci_low": low,
                f"vs_{name}_km_ci_high": high}
    return out


def drive_draws(codes: np.ndarray, samples: int, seed: int):
    """Bootstrap resamples of whole drives (`codes`: each photo's drive, 0..D-1), in chunks:
    per resample, how often each photo's drive was drawn (D draws with replacement). Chunks
    keep the (chunk x photos) counts within ~100 MB at any size."""
    n_drives = codes.max() + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, 12_000_000 // len(codes))
    for start in range(0, samples, chunk):
        draws = rng.multinomial(n_drives, np.full(n_drives, 1 / n_drives),
                                size=min(chunk, samples - start))
        yield draws[:, codes]


def weighted_percentiles(sorted_values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per row of integer `weights` (R x N), the q-th percentile of `sorted_values`
    (ascending) repeated that many times, interpolated as np.percentile does (for q = 50, the
    mean of the lower and upper middle, as np.median)."""
    cumulative = np.cumsum(weights, axis=1)
    position = q / 100 * (cumulative[:, -1:] - 1)
    below, above = np.floor(position), np.ceil(position)
    # The k-th (from 0) of the repeated values is the first whose cumulative count exceeds k.
    lower = sorted_values[(cumulative <= below).sum(axis=1)]
    upper = sorted_values[(cumulative <= above).sum(axis=1)]
    return lower + (position[:, 0] - below[:, 0]) * (upper - lower)


def calibration_table(confidence: np.ndarray, correct: np.ndarray,
                      errors_km: np.ndarray) -> pd.DataFrame:
    """Test images binned by the model's confidence (equal-width bins over 0..1): per bin the
    mean confidence, the accuracy and the median error. Empty bins are left out."""
    bins = np.minimum((np.asarray(confidence) * CALIBRATION_BINS).astype(int),
                      CALIBRATION_BINS - 1)
    frame = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct,
                          "error_km": errors_km})
    table = frame.groupby("bin").agg(images=("correct", "size"),
                                     confidence=("confidence", "mean"),
                                     accuracy=("correct", "mean"),
                                     median_km=("error_km", "median")).reset_index()
    table["bin_low"] = table["bin"] / CALIBRATION_BINS
    return table[["bin_low", "images", "confidence", "accuracy", "median_km"]]


def expected_calibration_error(table: pd.DataFrame) -> float:
    """The images-weighted mean gap between confidence and accuracy over the bins."""
    weights = table["images"] / table["images"].sum()
    return float((weights * (table["confidence"] - table["accuracy"]).abs()).sum())
