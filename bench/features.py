"""The features stage on the workspace's default world, timed (metrics/bench.json): run it
after `make demo` (or `dvc repro split`), as it reads data/splits and data/raw. It writes to a
temporary folder, never to data/features.

Figures: photos, seconds for the whole stage (exporting the backbone to ONNX included), photos
per second, and the peak resident memory of the stage and its decoding workers together.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process import run_measured  # noqa: E402
from results import record  # noqa: E402

from geoloc.data.splits import SPLITS  # noqa: E402
from geoloc.params import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--raw", default="data/raw")
    args = parser.parse_args()
    splits = [ROOT / args.splits / f"{split}.parquet" for split in SPLITS]
    if not all(path.exists() for path in splits):
        raise SystemExit(f"{args.splits} has no splits: run `make demo` (or `dvc repro split`)")
    photos = sum(len(pd.read_parquet(path)) for path in splits)
    cfg = load_params(ROOT / "params.yaml").features
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak_mb, _, _ = run_measured(
            [sys.executable, "stages/features.py", "--splits", args.splits, "--raw", args.raw,
             "--out", str(Path(tmp) / "features")], cwd=ROOT)
    record(args.out, {"features_photos": photos, "features_size": cfg.size,
                      "features_seconds": seconds, "features_photos_per_s": photos / seconds,
                      "features_peak_rss_mb": peak_mb})


if __name__ == "__main__":
    main()
