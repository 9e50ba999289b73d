"""Accuracy versus data: one recipe on nested synthetic worlds of growing size, scored on one
fixed test set. Writes experiments/data_scale.json, experiments/data_scale.md (the README's
table) and plots/data_scale.png.

    python experiments/data_scale.py --work /tmp/scale          # 5k and 25k photos
    python experiments/data_scale.py --work /tmp/scale --sequences 12 59 235 --configs cnn

Each size is a clone of HEAD (bench/scale.py makes them; run that with --keep on the same
folder first and its data is reused). The cells follow the data (the four index limits
`auto`), and every size's test split is the smallest size's (`geoloc freeze-test`): the
photos are the same at every size, so the curve shows what more data does, not another test.
Each configuration trains with params.yaml's full recipe (epochs, patience) and is scored by
the evaluate stage; results accumulate in the JSON, so sizes and configurations can be run in
separate calls.

Every figure here is from the synthetic world.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from scale import STAGES, make_clone, run_stage, stage_commands  # noqa: E402

from geoloc.data.splits import write_test_sequences  # noqa: E402
from geoloc.io import write_json  # noqa: E402

# name -> params changed from HEAD's (dotted keys)
CONFIGS = {
    "cnn": {},
    "cnn-hierarchical": {"loss.name": "hierarchical"},
    "effnet-frozen-linear": {"model.arch": "efficientnet_lite0", "model.pretrained": True,
                             "model.freeze_backbone": True},
}
DATA_STAGES = STAGES[:STAGES.index("features") + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="the clones' folder (bench/scale.py --keep's, to reuse its data)")
    parser.add_argument("--sequences", type=int, nargs="+", default=[12, 59])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--results", type=Path, default=ROOT / "experiments/data_scale.json",
                        help="the figures, kept between calls; the table goes beside it (.md)")
    parser.add_argument("--plot", type=Path, default=ROOT / "plots/data_scale.png")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    frozen = args.work / "test_sequences.txt"
    for drives in sorted(args.sequences):
        clone = prepare(args.work / f"sequences{drives}", drives, frozen)
        for name in args.configs:
            figures = measure(clone, CONFIGS[name])
            results.setdefault(str(figures["images"]), {})[name] = figures
            write_json(results, args.results)
            print(f"{figures['images']} photos, {name}: median {figures['median_km']:.3g} km, "
                  f"p90 {figures['p90_km']:.3g} km", flush=True)
    args.results.with_suffix(".md").write_text(table(results))
    plot(results, args.plot)
    print(table(results))


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
        if stage == "split" and frozen.exists():
            (clone / "data/test_sequences.txt").write_bytes(frozen.read_bytes())
        run_stage(commands[stage], clone)
        if stage == "split" and not frozen.exists():
            write_test_sequences(clone / "data/splits", frozen)
            (clone / "data/test_sequences.txt").write_bytes(frozen.read_bytes())
            run_stage(commands[stage], clone)
    return clone


def measure(clone: Path, changes: dict) -> dict:
    """Train and evaluate one configuration in the clone; its figures and the data's."""
    base = yaml.safe_load((clone / "params.yaml").read_text())
    params = yaml.safe_load((clone / "params.yaml").read_text())
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
    keys = ("median_km", "p90_km", "accuracy", "far_200km", "far_500km", "floor_median_km",
            "nearest_photo_median_km", "nearest_photo_p90_km", "centroid_median_km",
            "sequence_median_km", "images")
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
    }


def table(results: dict) -> str:
    lines = ["| photos | cells (res.) | photos per cell min / median | largest cell | model | "
             "median km | p90 km | accuracy | beyond 200 / 500 km | floor km | nearest photo "
             "median / p90 km | training min |",
             "|---" * 12 + "|"]
    for images in sorted(results, key=int):
        for name, r in sorted(results[images].items()):
            lines.append(
                f"| {int(images):,} | {r['cells']} ({min(r['resolutions'])}-"
                f"{max(r['resolutions'])}) | {r['images_per_cell_min']} / "
                f"{r['images_per_cell_median']:g} | {r['largest_cell_share_of_train']:.1%} | "
                f"{name} | {r['median_km']:.3g} | {r['p90_km']:.3g} | {r['accuracy']:.3f} | "
                f"{r['far_200km']:.3f} / {r['far_500km']:.3f} | {r['floor_median_km']:.3g} | "
                f"{r['nearest_photo_median_km']:.3g} / {r['nearest_photo_p90_km']:.3g} | "
                f"{r['train_minutes']:.3g} |")
    return "\n".join(lines) + "\n"


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
        floor = [(int(s), next(iter(results[s].values()))["floor_median_km"]) for s in sizes]
        axis.plot(*zip(*floor, strict=True), "k--", label="cell floor (median)")
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
