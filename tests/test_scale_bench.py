"""bench/scale.py on two tiny worlds: the figures it writes, the nested worlds, one test split
for every size, and nothing left in the workspace. The real sizes are a benchmark (`make
scale`), not a test."""

import json
import subprocess
import sys

import pandas as pd
from conftest import ROOT


def test_the_scale_benchmark_measures_nested_worlds_on_one_test_split(tmp_path):
    keep, out, plot = tmp_path / "clones", tmp_path / "scale.json", tmp_path / "scale.png"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    subprocess.run([sys.executable, "bench/scale.py", "--sequences", "1", "3", "--frames", "2",
                    "--through", "resize_cache", "--repeats", "2", "--repeat-below", "600",
                    "--keep", str(keep), "--out", str(out), "--plot", str(plot)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    results = json.loads(out.read_text())
    small, large = results["sizes"]
    assert (small["sequences_per_city"], large["sequences_per_city"]) == (1, 3)
    assert large["images"] > 2 * small["images"] > 0
    stages = ["fetch", "index", "split", "resize_cache"]
    for size in results["sizes"]:
        assert set(size["stages"]) == set(stages)
        for figures in size["stages"].values():
            assert len(figures["seconds_runs"]) == 2          # repeated, as asked
            assert min(figures["seconds_runs"]) <= figures["seconds"] <= max(
                figures["seconds_runs"])
            assert 0 < figures["peak_pss_mb"] <= figures["peak_rss_mb"]
            assert figures["disk_mb"] > 0
    (pair, exponents), = results["growth_exponents"].items()
    assert pair == f"{small['images']}-{large['images']}" and set(exponents) == set(stages)
    assert plot.stat().st_size > 0

    # nested worlds: the larger one holds the smaller one's photos
    def manifest(clone):
        return pd.concat(pd.read_parquet(p) for p in sorted(
            (keep / clone / "data/raw").glob("*/manifest.parquet")))
    assert set(manifest("sequences1")["image_id"]) < set(manifest("sequences3")["image_id"])
    # one test split for both sizes
    tests = [set(pd.read_parquet(keep / clone / "data/splits/test.parquet")["image_id"])
             for clone in ("sequences1", "sequences3")]
    assert tests[0] == tests[1] and tests[0]
    # the workspace is untouched
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                          text=True).stdout == status
