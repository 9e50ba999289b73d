"""The ablation table's paired column (experiments/ablation.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "experiments/ablation.py"
spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def run(errors_km: np.ndarray, photos: int = 120) -> pd.DataFrame:
    """An experiment's predictions as `predictions` reads them: 20 drives of 6 photos."""
    return pd.DataFrame({"image_id": [f"p{i}" for i in range(photos)],
                         "drive": [f"d{i // 6}" for i in range(photos)],
                         "error_km": errors_km})


def test_a_run_is_paired_with_the_baseline_on_the_same_photos():
    """Better on every photo: the difference and an interval below zero; the baseline against
    itself: no difference; in another order, the photos are matched by id; another test split
    is not paired."""
    errors = np.random.default_rng(0).gamma(2.0, 1.0, 120)
    baseline = run(errors)
    better = ablation.against_baseline(run(errors * 0.5), baseline, 1000)
    difference = float(np.median(errors * 0.5) - np.median(errors))
    assert better.startswith(f"{difference:+.3g} [") and not better.startswith("no difference")
    low, high = (float(x) for x in better.split("[")[1].rstrip("]").split(","))
    assert low <= difference <= high < 0
    assert ablation.against_baseline(baseline, baseline, 1000) == "no difference: +0 [+0, +0]"
    shuffled = run(errors * 0.5).sample(frac=1, random_state=0)
    assert ablation.against_baseline(shuffled, baseline, 1000) == better
    other = run(errors).assign(image_id=lambda t: "q" + t["image_id"])
    assert ablation.against_baseline(other, baseline, 1000) == "n/a (other test photos)"


def test_predictions_no_longer_in_the_cache_are_none():
    assert ablation.predictions("0" * 40) is None
