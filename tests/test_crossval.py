"""Drive-disjoint folds and paired intervals over drives (geoloc.crossval)."""

import numpy as np
import pandas as pd
import pytest

from geoloc.crossval import CrossValidationError, drive_folds, paired_difference_ci


def drives(per_city: dict[str, list[int]]) -> pd.DataFrame:
    """Photos of drives of the given lengths, city by city."""
    rows = [(city, f"{city}-{i}") for city, lengths in per_city.items()
            for i, length in enumerate(lengths) for _ in range(length)]
    return pd.DataFrame(rows, columns=["city", "unit"])


def test_each_drive_is_in_one_fold_and_each_fold_has_every_city():
    photos = drives({"Lyon": [5, 9, 2, 7, 4, 6], "Nice": [3, 3, 8, 1, 5], "Pau": [4, 4, 4]})
    fold = drive_folds(photos["city"], photos["unit"], folds=3, seed=0)
    assert pd.Series(fold).groupby(photos["unit"]).nunique().max() == 1
    for city, group in pd.Series(fold).groupby(photos["city"]):
        assert set(group) == {0, 1, 2}, city
        sizes = group.value_counts()
        # Largest first, to the emptiest fold: no fold is more than a drive ahead.
        largest = photos.loc[photos["city"] == city, "unit"].value_counts().max()
        assert sizes.max() - sizes.min() <= largest
    assert np.array_equal(fold, drive_folds(photos["city"], photos["unit"], 3, seed=0))
    assert not np.array_equal(fold, drive_folds(photos["city"], photos["unit"], 3, seed=1))


@pytest.mark.parametrize(("per_city", "folds", "message"), [
    ({"Lyon": [4]}, 2, r"at least 2 drives; the data has 1: set crossval.folds to 0"),
    ({"Lyon": [4, 2], "Nice": [3]}, 5, r"folds is 5 but the data has 3 drives: set "
                                       r"crossval.folds to at most 3"),
    ({"Lyon": [4, 2, 2], "Nice": [3]}, 3, r"folds is 3 but the city Nice has 1 drives .*"
                                          r"set crossval.folds to at most 1"),
])
def test_folds_that_cannot_be_made_are_refused_with_the_numbers(per_city, folds, message):
    photos = drives(per_city)
    with pytest.raises(CrossValidationError, match=message):
        drive_folds(photos["city"], photos["unit"], folds, seed=0)


def test_a_paired_difference_resamples_drives_and_both_answers_together():
    rng = np.random.default_rng(3)
    # 30 drives of 8 photos; a drive's photos share most of their error.
    drive = np.repeat(np.arange(30), 8)
    reference = np.repeat(rng.lognormal(0, 1, 30), 8) * rng.uniform(0.9, 1.1, 240)
    better = reference * 0.8
    difference, low, high = paired_difference_ci(better, reference, drive, samples=2000)
    assert difference == pytest.approx(np.median(better) - np.median(reference))
    assert low <= difference <= high < 0          # better, and the interval says so
    _, photo_low, photo_high = paired_difference_ci(better, reference, np.arange(240), 2000)
    assert high - low > 1.5 * (photo_high - photo_low)   # photos of a drive are not independent
    same = paired_difference_ci(reference, reference, drive, samples=500)
    assert same == (0.0, 0.0, 0.0)                # the same answers: no difference, no doubt
    _, low90, high90 = paired_difference_ci(better, reference, drive, samples=2000, q=90)
    assert high90 < 0
