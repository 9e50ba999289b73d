"""The features stage on the workspace's default world, timed (metrics/bench.json): run it
after `make demo` (or `dvc repro fetch`), as it reads data/raw. It writes to a temporary folder,
never to data/features.

Figures: photos, seconds for the whole stage (exporting the backbone to ONNX included), photos
per second, and the peak resident memory of the stage and its decoding workers together.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process import run_measured  # noqa: E402
from results import record  # noqa: E402

from geoloc.data.manifest import ManifestError, read_batches  # noqa: E402
from geoloc.params import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--raw", default="data/raw")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    try:
        photos = len(read_batches(ROOT / args.raw, params.batches))
    except ManifestError as exc:
        raise SystemExit(f"{exc} (or run `make demo`)") from None
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak_mb, _, _ = run_measured(
            [sys.executable, "stages/features.py", "--raw", args.raw,
             "--out", str(Path(tmp) / "features")], cwd=ROOT)
    record(args.out, {"features_photos": photos, "features_size": params.features.size,
                      "features_seconds": seconds, "features_photos_per_s": photos / seconds,
                      "features_peak_rss_mb": peak_mb})


if __name__ == "__main__":
    main()
