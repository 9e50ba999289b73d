"""The ablation over the default world: queue one DVC experiment per configuration, run them all,
and write the table of `dvc exp show` (test median and p90 km with their 95% intervals over
drives, accuracy, training minutes, the snapshot's size) to experiments/ablation.md, which the
lab notebook quotes. Each row also gives the commit it ran on and its median's paired
difference against the baseline's on the same test photos, with a 95% interval that resamples
test drives: "no difference" where that interval spans zero.

    python experiments/ablation.py            # queue, run (hours on a 2-core CPU), tabulate
    python experiments/ablation.py --only effnet-pretrained   # run some of them, tabulate
    python experiments/ablation.py --table    # only tabulate experiments already run

Each experiment is HEAD's params plus the changes listed here, so run it from a clean commit.
A row whose experiment is no longer in `dvc exp show` (removed, or run in another clone) is
kept from the previous table.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from dvc.api import open as dvc_open

from geoloc.evaluate import drives
from geoloc.metrics import paired_difference_ci
from geoloc.params import load_params

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "experiments/ablation.md"

# name -> the params it changes from HEAD's; the first is the baseline.
CONFIGS = {
    "baseline-cnn": {},
    # Spatial units are blocks, and some cities hold only 2 in train and val: fewer than
    # cross-validation's 3 folds at least, so it is off (the CNN is chosen on val anyway).
    "baseline-cnn-spatial-split": {"split.protocol": "spatial", "crossval.folds": "0"},
    # The answer chosen on val (the CNN is not cross-validated): is auto worth the default?
    "cnn-auto": {"evaluate.mode": "auto"},
    "cnn-haversine": {"loss.name": "haversine"},
    "cnn-hierarchical": {"loss.name": "hierarchical"},
    "cnn-hybrid": {"model.hybrid": "true"},
    "cnn-adjacency": {"loss.adjacency_weight": "0.01"},
    "cnn-mlp-head": {"model.head": "mlp"},
    "resnet18-scratch": {"model.arch": "resnet18"},
    "effnet-scratch": {"model.arch": "efficientnet"},
    "effnet-pretrained": {"model.arch": "efficientnet", "model.pretrained": "true"},
    "lite1-pretrained": {"model.arch": "efficientnet_lite1", "model.pretrained": "true"},
    "lite2-pretrained": {"model.arch": "efficientnet_lite2", "model.pretrained": "true"},
    "effnet-pretrained-lr0.001": {"model.arch": "efficientnet_lite0",
                                  "model.pretrained": "true", "train.lr": "0.001"},
    "effnet-frozen-linear": {"model.arch": "efficientnet_lite0", "model.pretrained": "true",
                             "model.freeze_backbone": "true"},
    "effnet-frozen-mlp": {"model.arch": "efficientnet_lite0", "model.pretrained": "true",
                          "model.freeze_backbone": "true", "model.head": "mlp"},
    # The larger variants as the features stage's backbone (at their native 240 and 260 px).
    "lite1-frozen-linear": {"features.backbone": "efficientnet_lite1",
                            "model.arch": "efficientnet_lite1", "model.pretrained": "true",
                            "model.freeze_backbone": "true"},
    "lite2-frozen-linear": {"features.backbone": "efficientnet_lite2",
                            "model.arch": "efficientnet_lite2", "model.pretrained": "true",
                            "model.freeze_backbone": "true"},
    # The README's own-photos preset on the default world: the linear probe, with the answer
    # chosen on the cross-validation.
    "own-photos-preset": {"model.arch": "efficientnet_lite0", "model.pretrained": "true",
                          "model.freeze_backbone": "true", "evaluate.mode": "auto"},
}
# The headline mode's accuracy: `mode_accuracy` since it has a name of its own, `accuracy`
# in experiments run before.
COLUMNS = [("median km", "metrics/eval.json", "median_km"),
           ("median 95% low", "metrics/eval.json", "median_km_ci_low"),
           ("median 95% high", "metrics/eval.json", "median_km_ci_high"),
           ("p90 km", "metrics/eval.json", "p90_km"),
           ("p90 95% low", "metrics/eval.json", "p90_km_ci_low"),
           ("p90 95% high", "metrics/eval.json", "p90_km_ci_high"),
           ("accuracy", "metrics/eval.json", ("mode_accuracy", "accuracy")),
           ("nearest photo median km", "metrics/eval.json", "nearest_photo_median_km"),
           ("training minutes", "metrics/train_time.json", "train_minutes"),
           ("snapshot MB", "metrics/export.json", "snapshot_mb")]
BASELINE = next(iter(CONFIGS))
PREDICTIONS = "data/eval/predictions.parquet"


def dvc(*args: str) -> str:
    return subprocess.run(["dvc", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def queue_and_run(names: list[str]) -> None:
    for name in names:
        changes = CONFIGS[name]
        sets = [arg for key, value in changes.items() for arg in ("-S", f"{key}={value}")]
        dvc("exp", "run", "--queue", "-n", name, *sets)
        print(f"queued {name}", file=sys.stderr)
    # One at a time: two trainings would share two cores and both take twice as long.
    subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], cwd=ROOT, check=True)


def previous_rows() -> dict[str, dict[str, str]]:
    """The cells of the table written last time, by experiment name and column (a column
    added since is missing from them)."""
    if not TABLE.exists():
        return {}
    header, _, *rows = TABLE.read_text().splitlines()

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    names = cells(header)
    return {values[0]: dict(zip(names, values, strict=True))
            for values in map(cells, rows) if len(values) == len(names)}


class Run(NamedTuple):
    metrics: dict    # by metrics file
    rev: str         # the experiment's revision
    commit: str      # the short commit it ran on


def finished_runs(shown: list[dict]) -> dict[str, Run]:
    """Each configuration's latest finished run in `dvc exp show --all-commits --json`. The
    commits come newest first, so a configuration re-run after a change of code is tabulated
    from its latest run."""
    runs = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            name = experiment.get("name")
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data") or {}
            # A failed, queued or running experiment shows the metrics it started from; only
            # a finished run has been committed, with a timestamp.
            if (name not in CONFIGS or name in runs or revision.get("error")
                    or not data.get("timestamp")):
                continue
            files = data.get("metrics") or {}
            metrics = {path: (files.get(path) or {}).get("data", {})
                       for path in {c[1] for c in COLUMNS}}
            runs[name] = Run(metrics, revision.get("rev"), commit["rev"][:7])
    return runs


def table() -> str:
    runs = finished_runs(json.loads(dvc("exp", "show", "--all-commits", "--json")))
    baseline = predictions(runs[BASELINE].rev) if BASELINE in runs else None
    samples = load_params(ROOT / "params.yaml").evaluate.bootstrap_samples
    columns = [c[0] for c in COLUMNS] + ["vs baseline median km [95%]", "commit"]
    lines = ["| experiment | changes | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    kept = previous_rows()
    for name, changes in CONFIGS.items():
        described = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(HEAD's params)"
        metrics, rev, commit = runs.get(name, Run({}, None, None))
        values = [figure(metrics.get(path, {}), key) for _, path, key in COLUMNS]
        if any(v is not None for v in values):
            cells = ["n/a" if v is None else f"{v:.3g}" for v in values]
            if name == BASELINE:
                paired = "(the baseline)"
            elif baseline is None:
                paired = "n/a (no baseline run)"
            else:
                run = predictions(rev)
                paired = ("n/a (its predictions are not in the DVC cache)" if run is None
                          else against_baseline(run, baseline, samples))
            cells += [paired, commit]
        elif name in kept:   # as it was run then, with the changes it was run with
            described = kept[name]["changes"]
            cells = [kept[name].get(column, "n/a") for column in columns]
        else:
            continue
        lines.append(f"| {name} | {described} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def predictions(rev: str | None) -> pd.DataFrame | None:
    """An experiment's test predictions (evaluate's output) from the DVC cache, each photo with
    its drive; None where the cache no longer holds them (another clone, `dvc gc`)."""
    try:
        with dvc_open(PREDICTIONS, repo=str(ROOT), rev=rev, mode="rb") as file:
            table = pd.read_parquet(file)
    except Exception as error:   # dvc raises several kinds for a missing file or revision
        print(f"{rev}: no {PREDICTIONS} ({error})", file=sys.stderr)
        return None
    return pd.DataFrame({"image_id": table["image_id"], "drive": drives(table),
                         "error_km": table["error_km"]})


def against_baseline(run: pd.DataFrame, baseline: pd.DataFrame, samples: int) -> str:
    """The run's test median minus the baseline's on the same photos, with its 95% interval
    over test drives; a run scored on other test photos (another split) is not paired."""
    if sorted(run["image_id"]) != sorted(baseline["image_id"]):
        return "n/a (other test photos)"
    # In the photos' order, so the bootstrap draws the same drives whatever order they come in.
    both = run.merge(baseline[["image_id", "error_km"]], on="image_id",
                     suffixes=("", "_baseline")).sort_values("image_id")
    difference, low, high = paired_difference_ci(
        both["error_km"].to_numpy(), both["error_km_baseline"].to_numpy(),
        both["drive"].to_numpy(), samples)
    text = f"{difference:+.3g} [{low:+.3g}, {high:+.3g}]"
    return f"no difference: {text}" if low <= 0 <= high else text


def figure(data: dict, key: str | tuple[str, ...]):
    """The value of the first of the keys that `data` has, or None."""
    keys = (key,) if isinstance(key, str) else key
    return next((data[k] for k in keys if k in data), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), metavar="NAME",
                        help=f"run only these: {', '.join(CONFIGS)}")
    args = parser.parse_args()
    if not args.table:
        queue_and_run(args.only or list(CONFIGS))
    text = table()
    TABLE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
