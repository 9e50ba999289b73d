"""The own-photos preset on rendered regions: the README's "Your own photos" walk-through
(geoloc.demo_photos: 25 drives of 4 panoramas of 4 faces, 400 photos of a 20 km circle of the
Atlantic coast, auto cells) in a fresh clone of HEAD, once per seed, then the preset as one
`dvc exp run`. Writes experiments/own_photos.md, which the README quotes: seed by seed, auto's
choice with its cross-validated interval beside one split's test interval and the mode best on
test; then every answer of the cross-validation against the nearest photo; then place retrieval
(each stop's four faces answered together) against photo retrieval, seed by seed.

    python experiments/own_photos.py                 # seeds 0 to 5
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
# The own-photos preset of the README (beyond DATA): the probe, cross-validated, with the answer
# chosen on the cross-validation.
PRESET = {**PROBE, "evaluate.mode": "auto", "crossval.folds": "5"}


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


def measure(repo: Path) -> dict:
    """The preset's figures on one region: the cross-validation's, evaluate's on test (every
    mode's too) and the split's."""
    # `dvc exp run` leaves its params in the workspace: start from HEAD's.
    run(["git", "checkout", "--", "params.yaml"], repo)
    sets = [arg for key, value in {**DATA, **PRESET}.items() for arg in ("-S", f"{key}={value}")]
    run(["dvc", "exp", "run", "evaluate", *sets], repo)
    return {name: json.loads((repo / f"metrics/{name}.json").read_text())
            for name in ("crossval", "eval", "eval_modes", "split", "data")}


def seed_table(results: dict[int, dict]) -> list[str]:
    """Seed by seed: auto's choice with its cross-validated interval, the same answer on the
    test split with one split's interval, and the mode that was best on test."""
    lines = ["| seed | test photos (drives) | auto's choice | cross-validated median km "
             "[95%] | width | its test median km [95%] | width | best mode on test (km) |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, r in sorted(results.items()):
        cv, test, modes = r["crossval"], r["eval"], r["eval_modes"]
        chosen = cv["answers"][cv["choice"]]
        best = min(modes, key=lambda mode: modes[mode]["median_km"])
        lines.append(
            f"| {seed} | {test['images']} ({test['sequences']}) | {cv['choice']} | "
            f"{chosen['median_km']:.2f} [{chosen['median_km_ci_low']:.2f}, "
            f"{chosen['median_km_ci_high']:.2f}] | "
            f"{chosen['median_km_ci_high'] - chosen['median_km_ci_low']:.2f} | "
            f"{test['median_km']:.2f} [{test['median_km_ci_low']:.2f}, "
            f"{test['median_km_ci_high']:.2f}] | "
            f"{test['median_km_ci_high'] - test['median_km_ci_low']:.2f} | "
            f"{best} ({modes[best]['median_km']:.2f}) |")
    return lines


def answers_table(results: dict[int, dict]) -> list[str]:
    """Every answer the cross-validation scores, against the nearest photo: the mean median
    over the seeds, and on how many seeds the paired interval says better, no difference or
    worse."""
    seeds = sorted(results)
    first = results[seeds[0]]["crossval"]
    lines = ["| answer | median km, mean over seeds | p90 km, mean | vs nearest photo: better / "
             "no difference / worse (seeds) |", "|---|---|---|---|"]
    for name in [*first["answers"], *first["references"]]:
        figures = [{**results[s]["crossval"]["answers"], **results[s]["crossval"][
            "references"]}[name] for s in seeds]
        # The nearest photo is the reference: cross-validation does not pair it with itself.
        verdicts = [("better" if f["vs_nearest_photo_km_ci_high"] < 0 else
                     "worse" if f["vs_nearest_photo_km_ci_low"] > 0 else "same")
                    for f in figures if "vs_nearest_photo_km_ci_high" in f]
        against = (f"{verdicts.count('better')} / {verdicts.count('same')} / "
                   f"{verdicts.count('worse')}" if verdicts else "(the reference)")
        lines.append(f"| {name} | {np.mean([f['median_km'] for f in figures]):.2f} | "
                     f"{np.mean([f['p90_km'] for f in figures]):.2f} | {against} |")
    return lines


def places_table(results: dict[int, dict]) -> list[str]:
    """Place retrieval against photo retrieval at each setting, seed by seed: the paired
    median difference over drives with its 95% interval ("=" where it spans zero)."""
    seeds = sorted(results)
    names = [name for name in results[seeds[0]]["crossval"]["answers"]
             if name.startswith("place_")]
    lines = ["| place answer | place median km, mean | photo median km, mean | "
             + " | ".join(f"seed {s}: place - photo km [95%]" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for name in names:
        photo = name.replace("place_", "retrieval_", 1)
        cells = []
        for seed in seeds:
            f = results[seed]["crossval"]["answers"][name]
            low, high = f["vs_retrieval_km_ci_low"], f["vs_retrieval_km_ci_high"]
            mark = "" if high < 0 or low > 0 else " ="
            cells.append(f"{f['vs_retrieval_km']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}")
        place = np.mean([results[s]["crossval"]["answers"][name]["median_km"] for s in seeds])
        alone = np.mean([results[s]["crossval"]["answers"][photo]["median_km"] for s in seeds])
        lines.append(f"| {name} | {place:.2f} | {alone:.2f} | " + " | ".join(cells) + " |")
    return lines


def table(results: dict[int, dict]) -> str:
    seeds = sorted(results)
    first = results[seeds[0]]
    head = [f"Rendered regions (seeds {', '.join(map(str, seeds))}): {first['data']['images']} "
            f"photos each, {first['data']['cells']} cells for seed {seeds[0]}. The preset: the "
            f"EfficientNet-Lite0 probe, {first['crossval']['folds']}-fold cross-validation by "
            f"drive over the train and val photos ({first['crossval']['photos']} for seed "
            f"{seeds[0]}), evaluate.mode auto. Intervals are 95%, resampling drives.", ""]
    return "\n".join([*head, *seed_table(results), "", *answers_table(results), "",
                      *places_table(results)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(f"seed {seed}", file=sys.stderr)
            results[seed] = measure(region(Path(tmp), seed))
    text = table(results)
    TABLE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
