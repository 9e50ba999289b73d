"""The ablation table's paired column (experiments/ablation.py)."""

import subprocess

import numpy as np
import pandas as pd
from conftest import load_script

ablation = load_script("experiments/ablation.py")


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


def test_an_experiments_predictions_are_read_from_dvc_with_their_drives(tmp_path, monkeypatch):
    """A real git and DVC repository: the predictions of a revision come out of the DVC cache,
    each photo with its drive (its unit, or else its sequence); a revision that is not there
    gives None."""
    def run_in(*command):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    run_in("git", "init", "-q")
    run_in("dvc", "init", "-q")
    (tmp_path / "data/eval").mkdir(parents=True)
    pd.DataFrame({"image_id": ["a", "b", "c"], "sequence_id": ["s1", "s2", None],
                  "unit": ["u1", None, None], "error_km": [1.0, 2.0, 3.0]}).to_parquet(
        tmp_path / "data/eval/predictions.parquet")
    run_in("dvc", "add", "-q", "data/eval/predictions.parquet")
    run_in("git", "add", "-A")
    run_in("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    (tmp_path / "data/eval/predictions.parquet").unlink()   # only the cache has it now
    monkeypatch.setattr(ablation, "ROOT", tmp_path)
    read = ablation.predictions("HEAD")
    assert read.to_dict("list") == {"image_id": ["a", "b", "c"], "drive": ["u1", "s2", "c"],
                                    "error_km": [1.0, 2.0, 3.0]}
    assert ablation.predictions("0" * 40) is None


def test_only_finished_runs_are_tabulated_and_the_newest_commit_wins():
    """`dvc exp show --all-commits --json` in the shape dvc 3 writes it: a running experiment
    (revision data "workspace", no timestamp) and a failed one show the metrics they started
    from, so neither is tabulated; a configuration run on two commits is taken from the newer."""
    def experiment(name, median, timestamp="2026-12-05T03:04:44", error=None, rev="r"):
        data = {"rev": rev if timestamp else "workspace", "timestamp": timestamp, "meta": {},
                "metrics": {"metrics/eval.json": {"data": {"median_km": median}}}}
        return {"name": name, "revs": [{"rev": rev, "name": name, "error": error,
                                        "experiments": None, "data": data}]}

    shown = [{"rev": "newer" + "0" * 35, "experiments": [
                 experiment("baseline-cnn", 1.06, rev="b"),
                 experiment("effnet-pretrained", 1.06, timestamp=None, rev="running"),
                 experiment("lite1-pretrained", 1.06, error={"msg": "failed"}, rev="failed"),
                 experiment("cnn-auto", 1.03, rev="auto-new")]},
             {"rev": "older" + "0" * 35, "experiments": [
                 experiment("effnet-pretrained", 0.954, rev="effnet-old"),
                 experiment("cnn-auto", 0.99, rev="auto-old"),
                 experiment("not-a-configuration", 5.0)]}]
    runs = ablation.finished_runs(shown)
    assert {name: (run[0]["metrics/eval.json"]["median_km"], run[1], run[2])
            for name, run in runs.items()} == {
        "baseline-cnn": (1.06, "b", "newer00"),
        "effnet-pretrained": (0.954, "effnet-old", "older00"),
        "cnn-auto": (1.03, "auto-new", "newer00")}
