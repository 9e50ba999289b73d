"""bench/train.py at a tiny size on this machine's device: every figure it promises, for every
architecture and precision asked, merged into the results file. The real sizes are a benchmark
(`make bench`, and one command on a GPU machine), not a test."""

import json
import math
import subprocess
import sys

from conftest import ROOT

from geoloc.choices import ARCHS


def test_the_training_benchmark_measures_the_model_and_the_loop(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"another_benchmark": 1.0}))
    subprocess.run([sys.executable, "bench/train.py", "--sizes", "32", "--images", "48",
                    "--batch-size", "16", "--steps", "2", "--epochs", "1",
                    "--precisions", "fp32", "bf16", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    figures = json.loads(out.read_text())
    assert figures.pop("another_benchmark") == 1.0      # the other benchmarks' figures stay
    assert figures.pop("bench_machine").endswith(" cores")
    assert figures.pop("train_bench_device").startswith(("cpu", "NVIDIA"))
    assert figures.pop("train_bench_torch") == __import__("torch").__version__
    assert (figures.pop("train_bench_batch_size"), figures.pop("train_bench_images")) == (16, 48)
    names = [f"{arch}_32px_{precision}" for arch in ARCHS for precision in ("fp32", "bf16")]
    expected = {f"train_{kind}_{name}_images_per_s" for name in names for kind in ("step", "loop")}
    expected |= {f"train_loop_over_step_{name}" for name in names}
    expected |= {f"train_{kind}_{arch}_32px_{unit}" for arch in ARCHS
                 for kind, unit in (("val", "images_per_s"), ("checkpoint", "seconds"))}
    assert set(figures) == expected
    assert all(math.isfinite(value) and value > 0 for value in figures.values())
