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
    return pd.DataFrame({"image_id": [f"p{i}" for i in range(photos)],
                         "sequence_id": [f"s{i // 6}" for i in range(photos)],
                         "error_km": errors_km})


def test_a_run_is_paired_with_the_baseline_on_the_same_photos():
    """Better on every photo: the difference and an interval below zero; the baseline against
    itself: no difference; in another order, the photos are matched by id; another test split
    is not paired."""
    errors = np.random.default_rng(0).gamma(2.0, 1.0, 120)
    baseline = run(errors)
    better = ablation.against_baseline(run(errors * 0.5), baseline)
    difference = float(np.median(errors * 0.5) - np.median(errors))
    assert better.startswith(f"{difference:+.3g} [") and not better.startswith("no difference")
    low, high = (float(x) for x in better.split("[")[1].rstrip("]").split(","))
    assert low <= difference <= high < 0
    assert ablation.against_baseline(baseline, baseline) == "no difference: +0 [+0, +0]"
    shuffled = run(errors * 0.5).sample(frac=1, random_state=0)
    assert ablation.against_baseline(shuffled, baseline) == better
    other = run(errors).assign(image_id=lambda t: "q" + t["image_id"])
    assert ablation.against_baseline(other, baseline) == "n/a (other test photos)"
