"""The own-photos preset against the alternatives, on rendered regions: the README's "Your own
photos" walk-through (geoloc.demo_photos: 25 drives of 4 panoramas of 4 faces, 400 photos of a
20 km circle of the Atlantic coast, auto cells) in a fresh clone of HEAD, once per seed, then
one `dvc exp run` per configuration. Writes experiments/own_photos.md, which the README quotes.

    python experiments/own_photos.py                 # seeds 0 1 2; about 10 minutes
    python experiments/own_photos.py --seeds 0

Every figure here is from the synthetic world: renders, not photos. They say what the
pipeline does with a folder of one region; which model wins on real photos they cannot say.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc.demo_photos import write_demo_folder  # noqa: E402

TABLE = ROOT / "experiments/own_photos.md"
REGION = "Cap-Ferret,44.68,-1.24,10,capferret"
DATA = {"fetch.source": "local", "fetch.local.csv": "data/photos/capferret/photos.csv",
        "batches": "[capferret]", "index.coarsest_resolution": "auto",
        "index.finest_resolution": "auto", "index.max_images_per_cell": "auto",
        "index.min_images_per_cell": "auto"}
PROBE = {"model.arch": "efficientnet_lite0", "model.pretrained": "true",
         "model.freeze_backbone": "true"}
# The own-photos preset of the README (beyond DATA): the probe, and retrieval among all
# training photos as the headline.
PRESET = {**PROBE, "evaluate.mode": "retrieval", "evaluate.retrieval.within_top_cells": "0"}
# name -> (params beyond DATA, the modes of its eval_modes.json to report)
CONFIGS = {
    "cnn (the default model)": ({}, ("argmax", "sequence")),
    "probe-linear": (PROBE, ("argmax", "sequence", "retrieval")),
    "probe-mlp": ({**PROBE, "model.head": "mlp"}, ("argmax",)),
    "preset: retrieval among all, k=10": (PRESET, ("retrieval", "sequence")),
    "retrieval among all, k=5": ({**PRESET, "evaluate.retrieval.neighbours": "5"},
                                 ("retrieval",)),
    "retrieval among all, k=20": ({**PRESET, "evaluate.retrieval.neighbours": "20"},
                                  ("retrieval",)),
}
FIGURES = ("median_km", "p90_km", "accuracy")


def run(args: list[str], cwd: Path) -> str:
    # The clone's own geoloc, not the one the environment has installed (this checkout's).
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return result.stdout


def region(tmp: Path, seed: int) -> Path:
    """A clone of HEAD with the region's city and its rendered photos, committed."""
    repo = tmp / f"region{seed}"
    run(["git", "clone", "-q", str(ROOT), str(repo)], tmp)
    with open(repo / "data/cities.csv", "a") as cities:
        cities.write(REGION + "\n")
    write_demo_folder(repo / "data/photos/capferret", "Cap-Ferret", drives=25, stops=4,
                      seed=seed, cities=repo / "data/cities.csv")
    run(["git", "commit", "-q", "-am", "the region's city"], repo)
    return repo


def measure(repo: Path, changes: dict) -> dict:
    """The test figures of one configuration (HEAD's params, DATA and `changes`): every mode's,
    and the references."""
    # `dvc exp run` leaves its params in the workspace: start each run from HEAD's.
    run(["git", "checkout", "--", "params.yaml"], repo)
    sets = [arg for key, value in {**DATA, **changes}.items() for arg in ("-S", f"{key}={value}")]
    run(["dvc", "exp", "run", "evaluate", *sets], repo)
    return {"modes": json.loads((repo / "metrics/eval_modes.json").read_text()),
            "eval": json.loads((repo / "metrics/eval.json").read_text()),
            "split": json.loads((repo / "metrics/split.json").read_text()),
            "data": json.loads((repo / "metrics/data.json").read_text())}


def table(results: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(results)
    # Every configuration sees the same data; the probe's run gives the references.
    probe = {s: results[s]["probe-linear"] for s in seeds}
    tests = ", ".join(str(probe[s]["split"]["images"]["test"]) for s in seeds)
    lines = [f"Rendered regions (seeds {', '.join(map(str, seeds))}): 400 photos each, "
             f"{probe[seeds[0]]['data']['cells']} cells for seed {seeds[0]}; test photos per "
             f"seed {tests}. Mean over the seeds (each seed's figure in brackets).", "",
             "| configuration | mode | median km | p90 km | accuracy |", "|---|---|---|---|---|"]

    def cell(values: list) -> str:
        if any(v is None for v in values):
            return "–"
        each = ", ".join(f"{v:.3g}" for v in values)
        return f"{np.mean(values):.3g} [{each}]" if len(values) > 1 else f"{values[0]:.3g}"

    def reference(key: str) -> str:
        return cell([probe[s]["eval"][key] for s in seeds])

    for name, (_, modes) in CONFIGS.items():
        for mode in modes:
            figures = [[results[s][name]["modes"][mode].get(k) for s in seeds] for k in FIGURES]
            lines.append(f"| {name} | {mode} | " + " | ".join(map(cell, figures)) + " |")
    lines += [f"| nearest photo (no model) | – | {reference('nearest_photo_median_km')} | "
              f"{reference('nearest_photo_p90_km')} | – |",
              f"| cell floor | – | {reference('floor_median_km')} | – | – |",
              f"| train centroid | – | {reference('centroid_median_km')} | – | – |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            repo = region(Path(tmp), seed)
            results[seed] = {}
            for name, (changes, _) in CONFIGS.items():
                print(f"seed {seed}: {name}", file=sys.stderr)
                results[seed][name] = measure(repo, changes)
    text = table(results)
    TABLE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
