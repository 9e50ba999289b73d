"""The `geoloc` command: predict where photos were taken with an exported model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from geoloc.errors import GeolocError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geoloc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="predict the position of photos")
    predict.add_argument("paths", nargs="+", type=Path, help="JPEG or PNG files, or folders")
    predict.add_argument("--model", type=Path, default=Path("models/export"),
                         help="exported snapshot folder (default: models/export)")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        return _predict(args)
    except GeolocError as exc:
        print(f"geoloc: error: {exc}", file=sys.stderr)
        return 2


def _predict(args) -> int:
    from geoloc.predictor import Predictor  # onnxruntime loads only when predicting

    if args.top_k < 1:
        raise GeolocError("--top-k must be at least 1")
    predictor = Predictor(args.model)
    failed = 0
    if not args.json:
        print(f"{'path':40} {'lat':>9} {'lon':>9} {'cell':16} {'confidence':>10}")
    for path in _image_paths(args.paths):
        try:
            with Image.open(path) as image:
                (prediction,) = predictor.predict([image], args.top_k)
        except (UnidentifiedImageError, OSError) as exc:
            print(f"geoloc: cannot read {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"path": str(path), **prediction.__dict__}))
        else:
            print(f"{str(path):40} {prediction.lat:9.5f} {prediction.lon:9.5f} "
                  f"{prediction.cell:16} {prediction.confidence:10.3f}")
    return 1 if failed else 0


def _image_paths(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise GeolocError(f"{path}: no such file or folder")
    return found


if __name__ == "__main__":
    sys.exit(main())
