"""What each stage costs as the data grows: the pipeline on synthetic worlds of growing size
(`make scale`), in fresh clones of HEAD under a temporary folder, never in this workspace or
its DVC cache. Writes metrics/scale.json and plots/scale.png.

    python bench/scale.py                                   # about 5k, 25k and 100k photos
    python bench/scale.py --sequences 2 4 --frames 2 --epochs 1   # a tiny run (the test's)

For each size (drives per city; the worlds are nested, a larger one holds the smaller one's
drives), every stage runs as dvc.yaml declares it, without DVC, measured on its own: wall time,
peak memory of the stage and all its processes (RSS and PSS, see bench/process.py), and the
disk its outputs take. Stages under --repeat-below seconds run --repeats times and report the
median. Training runs --epochs epochs: its figure is the time per epoch, and the full run's
time (train.epochs of params.yaml) is extrapolated from it, and labelled so. The cells follow
the data (the four index limits `auto`), and every size is split with the smallest size's test
sequences (`geoloc freeze-test`), so the clones can go on to the accuracy-vs-data experiment
(--keep) on one test set.

Growth exponents are the log-log slopes of time (and peak PSS) against the number of photos
between consecutive sizes: 1 is linear.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process import run_measured  # noqa: E402

from geoloc.data.splits import write_test_sequences  # noqa: E402
from geoloc.io import folder_bytes, write_json  # noqa: E402

STAGES = ("fetch", "index", "split", "resize_cache", "features", "train", "evaluate", "export")
AUTO_CELLS = {key: "auto" for key in ("coarsest_resolution", "finest_resolution",
                                      "max_images_per_cell", "min_images_per_cell")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[12, 59, 235],
                        help="drives per city of each world (12: the default world's 5,141 "
                             "photos; 59: about 25k; 235: about 100k)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per drive, fixed (default: the params' 5 to 12)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs measured")
    parser.add_argument("--through", choices=STAGES, default=STAGES[-1],
                        help="the last stage to run (default: all of them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-below", type=float, default=60.0,
                        help="repeat a stage that took fewer seconds than this")
    parser.add_argument("--keep", type=Path, default=None,
                        help="leave the clones in this folder (default: a temporary one, "
                             "removed at the end)")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/scale.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "plots/scale.png")
    args = parser.parse_args()
    if sorted(args.sequences) != args.sequences or len(set(args.sequences)) < 2:
        parser.error("--sequences: at least two sizes, smallest first")

    work = Path(args.keep or tempfile.mkdtemp(prefix="geoloc-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sizes, frozen = [], work / "test_sequences.txt"
        for drives in args.sequences:
            clone = make_clone(work / f"sequences{drives}", drives, args)
            sizes.append(measure_size(clone, drives, frozen, args))
            print(f"{sizes[-1]['images']} photos: "
                  + ", ".join(f"{name} {figures['seconds']:.1f} s"
                              for name, figures in sizes[-1]["stages"].items()), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results = summary(sizes, args)
    write_json(results, args.out)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")


def make_clone(dest: Path, drives: int, args) -> Path:
    """A fresh clone of HEAD with this size's params, outside any DVC repo of the user's."""
    if dest.exists():
        shutil.rmtree(dest)
    run(["git", "clone", "-q", str(ROOT), str(dest)], ROOT)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    synthetic = params["fetch"]["synthetic"]
    synthetic["sequences_per_city"] = drives
    if args.frames:
        synthetic["frames_min"] = synthetic["frames_max"] = args.frames
    params["index"].update(AUTO_CELLS)
    params["train"].update(epochs=args.epochs, patience=args.epochs)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def measure_size(clone: Path, drives: int, frozen: Path, args) -> dict:
    """Every stage of one size, in order; the first size also freezes the test split."""
    commands = stage_commands(clone)
    figures = {}
    for stage in STAGES[:STAGES.index(args.through) + 1]:
        if stage == "split":
            use_frozen_test(clone, commands, frozen)
        figures[stage] = measure_stage(commands[stage], clone, args)
        figures[stage]["disk_mb"] = round(outputs_bytes(clone, stage) / 1e6, 3)
    data = json.loads((clone / "metrics/data.json").read_text())
    if "train" in figures:
        train_time = json.loads((clone / "metrics/train_time.json").read_text())
        figures["train"]["seconds_per_epoch"] = round(train_time["minutes_per_epoch"] * 60, 3)
    return {"sequences_per_city": drives, "images": data["images"], "cells": data["cells"],
            "stages": figures}


def use_frozen_test(clone: Path, commands: dict, frozen: Path) -> None:
    """Before a size's split: give it the test split frozen in `frozen`, which the first size
    draws (its split run once, then frozen) and every larger size keeps."""
    if not frozen.exists():
        run_stage(commands["split"], clone)
        write_test_sequences(clone / "data/splits", frozen)
    shutil.copyfile(frozen, clone / "data/test_sequences.txt")


def stage_commands(clone: Path) -> dict[str, list[str]]:
    """Each stage's shell commands, as dvc.yaml declares them (fetch: one per batch)."""
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    batches = yaml.safe_load((clone / "params.yaml").read_text())["batches"]
    fetch = stages["fetch"]["do"]["cmd"]
    commands = {"fetch": [fetch.replace("${item}", batch) for batch in batches]}
    commands.update({name: [stages[name]["cmd"]] for name in STAGES if name != "fetch"})
    return commands


def measure_stage(commands: list[str], clone: Path, args) -> dict:
    """Seconds (the median of the runs), peak RSS and PSS (the largest of any run) of a
    stage's commands run one after the other."""
    runs = [run_stage(commands, clone)]
    if runs[0]["seconds"] < args.repeat_below:
        runs += [run_stage(commands, clone) for _ in range(args.repeats - 1)]
    return {"seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "seconds_runs": [round(r["seconds"], 3) for r in runs],
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            "peak_pss_mb": round(max(r["peak_pss_mb"] for r in runs), 1)}


def run_stage(commands: list[str], clone: Path) -> dict:
    seconds = peak_rss = peak_pss = 0.0
    for command in commands:
        measured = run_measured(command, cwd=clone, env=clone_env(clone))
        seconds += measured.seconds
        peak_rss, peak_pss = max(peak_rss, measured.peak_mb), max(peak_pss,
                                                                   measured.peak_pss_mb)
    return {"seconds": seconds, "peak_rss_mb": peak_rss, "peak_pss_mb": peak_pss}


def clone_env(clone: Path) -> dict:
    # Stage commands call `python`: this interpreter, importing the clone's geoloc.
    return {**os.environ, "PYTHONPATH": str(clone),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def outputs_bytes(clone: Path, stage: str) -> int:
    """Bytes of a stage's outputs (its `outs` in dvc.yaml; for fetch, every batch's)."""
    if stage == "fetch":
        return folder_bytes(clone / "data/raw")
    outs = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"][stage].get("outs", [])
    paths = [clone / (next(iter(out)) if isinstance(out, dict) else out) for out in outs]
    return sum(path.stat().st_size if path.is_file() else folder_bytes(path) for path in paths)


def summary(sizes: list[dict], args) -> dict:
    """sizes, with the growth exponents between consecutive ones and the extrapolations."""
    epochs = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["epochs"]
    exponents = {}
    for small, large in zip(sizes, sizes[1:], strict=False):
        ratio = math.log(large["images"] / small["images"])

        def slope(stage: str, key: str, small=small, large=large, ratio=ratio) -> float:
            return round(math.log(large["stages"][stage][key] / small["stages"][stage][key])
                         / ratio, 3)

        exponents[f"{small['images']}-{large['images']}"] = {
            stage: {"seconds": slope(stage, "seconds_per_epoch" if stage == "train"
                                     else "seconds"),
                    "peak_pss_mb": slope(stage, "peak_pss_mb")} for stage in small["stages"]}
    for size in sizes:
        if "train" in size["stages"]:
            train = size["stages"]["train"]
            train["extrapolated_minutes_for_params_epochs"] = round(
                train["seconds_per_epoch"] * epochs / 60, 2)
    return {"cpus": len(os.sched_getaffinity(0)), "commit": head_commit(),
            "epochs_measured": args.epochs, "params_epochs": epochs,
            "sizes": sizes, "growth_exponents": exponents}


def head_commit() -> str:
    return run(["git", "rev-parse", "--short", "HEAD"], ROOT).strip()


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [size["images"] for size in results["sizes"]]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    for stage in results["sizes"][0]["stages"]:
        key = "seconds_per_epoch" if stage == "train" else "seconds"
        label = "train (per epoch)" if stage == "train" else stage
        time_axis.plot(images, [s["stages"][stage][key] for s in results["sizes"]], "o-",
                       label=label)
        memory_axis.plot(images, [s["stages"][stage]["peak_pss_mb"] for s in results["sizes"]],
                         "o-", label=stage)
    for axis, title in ((time_axis, "wall time, s"), (memory_axis, "peak PSS, MB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("photos")
        axis.set_title(f"{title} ({results['cpus']} CPUs)")
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


if __name__ == "__main__":
    main()
