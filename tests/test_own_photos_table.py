"""The table experiments/own_photos.py writes, from the metrics files one preset run leaves
(the default world's committed ones stand in for a region's)."""

import json

from conftest import ROOT, load_script

own_photos = load_script("experiments/own_photos.py")


def test_every_answer_has_a_row_and_the_nearest_photo_is_the_reference():
    run = {name: json.loads((ROOT / f"metrics/{name}.json").read_text())
           for name in ("crossval", "eval", "eval_modes", "split", "data")}
    crossval = run["crossval"]
    assert "vs_nearest_photo_km_ci_high" not in crossval["references"]["nearest_photo"]
    rows = {line.split("|")[1].strip(): line for line in own_photos.table({0: run, 1: run})
            .splitlines() if line.startswith("| ")}
    for name in [*crossval["answers"], *crossval["references"]]:
        assert name in rows
    assert rows["nearest_photo"].endswith("| (the reference) |")
    centroid = crossval["references"]["centroid"]
    worse = centroid["vs_nearest_photo_km_ci_low"] > 0
    assert rows["centroid"].endswith("| 0 / 0 / 2 |" if worse else "| 0 / 2 / 0 |")
    chosen = crossval["answers"][crossval["choice"]]
    assert f"| {crossval['choice']} | {chosen['median_km']:.2f} [" in rows["0"]
