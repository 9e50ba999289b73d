"""Accuracy versus data: one recipe on nested synthetic worlds of growing size, scored on one
fixed test set. Writes into experiments/data_scale/: results.json (each run's figures on its
own test split, as the evaluate stage reports them), one parquet of per-photo errors per run,
and table.md (the README's table); and plots/data_scale.png.

    python experiments/data_scale.py --work /tmp/scale          # 5k and 25k photos
    python experiments/data_scale.py --work /tmp/scale --sequences 12 59 235 --configs cnn

Each size is a clone of HEAD (bench/scale.py makes them; run that with --keep on the same
folder first and its data is reused). The cells follow the data (the four index limits
`auto`), and every size's test split is the smallest size's (`geoloc freeze-test`). The index
drops a few photos of places too sparse for a cell, more at larger sizes, so the table scores
every run on the test photos that all sizes kept: the same photos at every size, so the curve
shows what more data does, not another test.
Each configuration trains with params.yaml's full recipe (epochs, patience) and is scored by
the evaluate stage; results accumulate in the JSON, so sizes and configurations can be run in
separate calls.

Every figure here is from the synthetic world.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from scale import STAGES, make_clone, run_stage, stage_commands, use_frozen_test  # noqa: E402

from geoloc.io import write_json  # noqa: E402

# name -> params changed from HEAD's (dotted keys)
CONFIGS = {
    "cnn": {},
    "cnn-hierarchical": {"loss.name": "hierarchical"},
    "effnet-frozen-linear": {"model.arch": "efficientnet_lite0", "model.pretrained": True,
                             "model.freeze_backbone": True},
}
DATA_STAGES = STAGES[:STAGES.index("features") + 1]
PHOTO_COLUMNS = ["image_id", "label", "pred_label", "error_km_argmax", "error_km_sequence",
                 "floor_km", "nearest_photo_km"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="the clones' folder (bench/scale.py --keep's, to reuse its data)")
    parser.add_argument("--sequences", type=int, nargs="+", default=[12, 59])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--results", type=Path, default=ROOT / "experiments/data_scale",
                        help="the folder of the figures, kept between calls, and the table")
    parser.add_argument("--plot", type=Path, default=ROOT / "plots/data_scale.png")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    summary = args.results / "results.json"
    results = json.loads(summary.read_text()) if summary.exists() else {}
    frozen = args.work / "test_sequences.txt"
    for drives in sorted(args.sequences):
        clone = prepare(args.work / f"sequences{drives}", drives, frozen)
        for name in args.configs:
            figures, photos = measure(clone, CONFIGS[name])
            results.setdefault(str(figures["images"]), {})[name] = figures
            photos.to_parquet(args.results / f"{figures['images']}_{name}.parquet", index=False)
            write_json(results, summary)
            print(f"{figures['images']} photos, {name}: median {figures['median_km']:.3g} km, "
                  f"p90 {figures['p90_km']:.3g} km", flush=True)
    common = on_common_photos(results, args.results)
    (args.results / "table.md").write_text(table(results, common))
    plot(common, args.plot)
    print(table(results, common))


def prepare(clone: Path, drives: int, frozen: Path) -> Path:
    """The size's clone with its data stages run (skipped where bench/scale.py ran them), the
    full training recipe, and the smallest size's test sequences."""
    if not (clone / "data/features").exists():
        make_clone(clone, drives, argparse.Namespace(frames=None, epochs=1))
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"] = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if (clone / "data/features").exists():
        return clone
    commands = stage_commands(clone)
    for stage in DATA_STAGES:
        if stage == "split":
            use_frozen_test(clone, commands, frozen)
        run_stage(commands[stage], clone)
    return clone


def measure(clone: Path, changes: dict) -> tuple[dict, pd.DataFrame]:
    """Train and evaluate one configuration in the clone: its figures and the data's, and
    each test photo's errors."""
    base = yaml.safe_load((clone / "params.yaml").read_text())
    params = copy.deepcopy(base)
    for key, value in changes.items():
        section, name = key.split(".")
        params[section][name] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        commands = stage_commands(clone)
        for stage in ("train", "evaluate"):
            run_stage(commands[stage], clone)
    finally:
        (clone / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    data = json.loads((clone / "metrics/data.json").read_text())
    train_time = json.loads((clone / "metrics/train_time.json").read_text())
    cells = pd.read_parquet(clone / "data/splits/cells.parquet")
    photos = pd.read_parquet(clone / "data/eval/predictions.parquet", columns=PHOTO_COLUMNS)
    keys = ("median_km", "p90_km", "accuracy", "far_200km", "far_500km", "floor_median_km",
            "nearest_photo_median_km", "nearest_photo_p90_km", "centroid_median_km",
            "sequence_median_km")
    return {
        **{key: evaluation[key] for key in keys},
        "test_images": evaluation["images"],
        "images": data["images"], "cells": data["cells"],
        "resolutions": sorted(int(r) for r in data["cells_per_resolution"]),
        "images_per_cell_min": data["images_per_cell"]["min"],
        "images_per_cell_median": data["images_per_cell"]["median"],
        "largest_cell_share_of_train": round(float(cells["n_train"].max()
                                                   / cells["n_train"].sum()), 4),
        "train_minutes": train_time["train_minutes"], "epochs_run": train_time["epochs_run"],
    }, photos


def on_common_photos(results: dict, folder: Path) -> dict:
    """Each run's figures on the test photos that every size's split kept."""
    photos = {(size, name): pd.read_parquet(folder / f"{size}_{name}.parquet")
              for size in results for name in results[size]}
    common = set.intersection(*(set(p["image_id"]) for p in photos.values()))
    figures = {}
    for (size, name), table in photos.items():
        table = table[table["image_id"].isin(common)]
        errors = table["error_km_argmax"].to_numpy()
        figures.setdefault(size, {})[name] = {
            "photos": len(table),
            "median_km": float(np.median(errors)),
            "p90_km": float(np.percentile(errors, 90)),
            "accuracy": float(np.mean(table["pred_label"] == table["label"])),
            "far_200km": float(np.mean(errors > 200)), "far_500km": float(np.mean(errors > 500)),
            "sequence_median_km": float(np.median(table["error_km_sequence"])),
            "floor_median_km": float(np.median(table["floor_km"])),
            "nearest_photo_median_km": float(np.median(table["nearest_photo_km"])),
            "nearest_photo_p90_km": float(np.percentile(table["nearest_photo_km"], 90)),
        }
    return figures


def table(results: dict, common: dict) -> str:
    """The README's table: the data's cells and gates from each run, its figures on the
    common test photos."""
    lines = ["| photos | cells (res.) | photos per cell min / median | largest cell | model | "
             "median km | p90 km | accuracy | beyond 200 / 500 km | sequence mode median km | "
             "floor km | nearest photo median / p90 km | training min |",
             "|---" * 13 + "|"]
    for size in sorted(results, key=int):
        for name, r in sorted(results[size].items()):
            c = common[size][name]
            lines.append(
                f"| {int(size):,} | {r['cells']} ({min(r['resolutions'])}-"
                f"{max(r['resolutions'])}) | {r['images_per_cell_min']} / "
                f"{r['images_per_cell_median']:g} | {r['largest_cell_share_of_train']:.1%} | "
                f"{name} | {c['median_km']:.3g} | {c['p90_km']:.3g} | {c['accuracy']:.3f} | "
                f"{c['far_200km']:.3f} / {c['far_500km']:.3f} | {c['sequence_median_km']:.3g} | "
                f"{c['floor_median_km']:.3g} | {c['nearest_photo_median_km']:.3g} / "
                f"{c['nearest_photo_p90_km']:.3g} | {r['train_minutes']:.3g} |")
    photos = {c["photos"] for runs in common.values() for c in runs.values()}
    return "\n".join(lines) + f"\n\nScored on the {photos.pop()} test photos every size kept.\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results, key=int)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    names = sorted({name for size in sizes for name in results[size]})
    for axis, key in zip(axes, ("median_km", "p90_km"), strict=True):
        for name in names:
            points = [(int(s), results[s][name][key]) for s in sizes if name in results[s]]
            axis.plot(*zip(*points, strict=True), "o-", label=name)
        references = [("nearest_photo_" + key, "k:", "nearest photo")]
        if key == "median_km":
            references.append(("floor_median_km", "k--", "cell floor"))
        for reference, style, label in references:
            points = [(int(s), next(iter(results[s].values()))[reference]) for s in sizes]
            axis.plot(*zip(*points, strict=True), style, label=label)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("photos (synthetic world)")
        axis.set_title(key.replace("_", " "))
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
