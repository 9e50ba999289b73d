"""Drive-disjoint cross-validation: the folds, and the intervals that respect drives.

A fold holds whole units of the split (a twin group of sequences, or a block under the spatial
protocol), so no photo is answered by a model that saw its drive; each city's units are dealt
out over the folds, largest first, to the fold with the fewest of that city's photos, so every
fold holds a share of every city. Photos of one drive are not independent draws: an interval
resamples drives, and a comparison of two answers resamples the same drives for both (paired).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.metrics import drive_draws, weighted_percentiles


class CrossValidationError(GeolocError, ValueError):
    """The data cannot be cut into the folds asked for."""


def drive_folds(cities: pd.Series, units: pd.Series, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each photo, given its city and its unit (a drive, or a group
    of drives that must stay together)."""
    drives = units.nunique()
    if drives < 2:
        raise CrossValidationError(f"cross-validation needs photos of at least 2 drives; the "
                                   f"data has {drives}: set crossval.folds to 0")
    if folds > drives:
        raise CrossValidationError(f"crossval.folds is {folds} but the data has {drives} "
                                   f"drives: set crossval.folds to at most {drives}")
    frame = pd.DataFrame({"city": cities.to_numpy(), "unit": units.to_numpy()})
    # A unit's city is its first, as the split has it.
    city_of_unit = frame.sort_values(["unit", "city"]).groupby("unit")["city"].first()
    short = city_of_unit.value_counts().sort_index()
    short = short[short < folds]
    if len(short):
        city, count = short.index[0], int(short.iloc[0])
        raise CrossValidationError(f"crossval.folds is {folds} but the city {city} has "
                                   f"{count} drives (and {len(short)} cities fewer than "
                                   f"{folds}): set crossval.folds to at most {count}, or "
                                   f"leave that city out of the batches")
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
