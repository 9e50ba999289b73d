"""The `geoloc` command: predict where photos were taken with an exported model, serve it over
HTTP with a web page, purge raw JPEGs that the resize cache has made redundant, and freeze the
test split while the data grows."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from geoloc.choices import SEQUENCE_MODES
from geoloc.errors import GeolocError
from geoloc.panorama import PanoramaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
              PanoramaError)   # a broken XMP block, a panorama too small to cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geoloc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="predict the position of photos")
    predict.add_argument("paths", nargs="+", type=Path, help="JPEG or PNG files, or folders")
    predict.add_argument("--model", type=Path, default=Path("models/export"),
                         help="exported snapshot folder (default: models/export)")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--mode", help="how to make the point: argmax, topk, topk_mean, "
                                        "hierarchical, hybrid (hybrid models), retrieval, "
                                        "place, or with --sequence sequence or "
                                        "sequence_online (default: the mode the snapshot was "
                                        "evaluated in)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--sequence", action="store_true",
                         help="the photos are frames of one drive: one combined prediction "
                              "(mode sequence), or one per frame from the frames so far "
                              "(--mode sequence_online); photos with one EXIF capture time are "
                              "views of one place and count as one frame")
    predict.add_argument("--place", action="store_true",
                         help="the photos are views of one place (a panorama's crops, a "
                              "rig's cameras): one answer for them together (mode place)")
    purge = commands.add_parser(
        "purge", help="free the disk taken by raw JPEGs of batches already in the resize cache",
        description="Lists (dry run, the default) or deletes the raw JPEGs of batches whose "
                    "images are in the resize cache: in data/raw/<batch>/images, in the "
                    "download store and in DVC's cache.")
    purge.add_argument("batches", nargs="*",
                       help="batches to purge (default: every batch in the resize cache)")
    purge.add_argument("--delete", action="store_true", help="delete (default: list only)")
    freeze = commands.add_parser(
        "freeze-test", help="keep today's test split while the data grows",
        description="Lists the sequences of data/splits/test.parquet in "
                    "data/test_sequences.txt: the next split keeps exactly their images as "
                    "its test set, so figures measured before and after the data grows are "
                    "measured on the same photos. Commit the file; empty it to draw the test "
                    "split again.")
    freeze.add_argument("--splits", type=Path, default=Path("data/splits"))
    freeze.add_argument("--out", type=Path, default=Path("data/test_sequences.txt"))
    serve = commands.add_parser(
        "serve", help="serve predictions over HTTP, with a web page at /",
        description="Serves POST /predict, GET /health, GET /model, the API docs at /docs and "
                    "the web demo at / with uvicorn, from an exported snapshot.")
    serve.add_argument("--model", type=Path, default=Path("models/export"),
                       help="exported snapshot folder (default: models/export)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20.0,
                       help="largest photo accepted, in MB (default: 20)")
    serve.add_argument("--max-views", type=int, default=8,
                       help="most photos of one place in one request (default: 8)")
    serve.add_argument("--max-request-mb", type=float, default=None,
                       help="largest request, all its photos together, in MB (default: 50, "
                            "or --max-upload-mb where larger)")
    args = parser.parse_args(argv)
    try:
        status = {"predict": _predict, "purge": _purge, "freeze-test": _freeze_test,
                  "serve": _serve}[args.command](args)
        sys.stdout.flush()   # here, so that a closed pipe is met inside this try
        return status
    except GeolocError as exc:
        print(f"geoloc: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader stopped early (`geoloc predict ... | head`): stop quietly, as other
        # command-line tools do, with the status of a process ended by SIGPIPE. Python's own
        # last flush must not meet the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _predict(args) -> int:
    from geoloc.predictor import Predictor  # onnxruntime loads only when predicting

    if args.top_k < 1:
        raise GeolocError("--top-k must be at least 1")
    if args.sequence and args.mode not in (None, *SEQUENCE_MODES):
        raise GeolocError(f"--sequence takes --mode {' or '.join(SEQUENCE_MODES)}, not "
                          f"{args.mode!r}")
    if args.place and (args.sequence or args.mode not in (None, "place")):
        raise GeolocError("--place answers in mode place: it takes neither --sequence nor "
                          "another --mode")
    predictor = Predictor(args.model)
    paths = _image_paths(args.paths)
    names = [f"sequence of {len(paths)} photos", f"place of {len(paths)} views",
             *map(str, paths)]
    table = _Table(max(map(len, ["path", *names])), args.json,
                   max(map(len, ["near", *(_near(c["name"], 999.9) for c in predictor.cities)])))
    table.header()
    if args.sequence:
        return _predict_sequence(predictor, paths, args, table)
    if args.place:
        return _predict_place(predictor, paths, args, table)
    failed = 0
    for path in paths:
        try:
            # A panorama's views are answered together, unless another mode is asked for.
            if args.mode in (None, "place") and predictor.is_panorama(path):
                prediction = predictor.predict_place([path], args.top_k)
            else:
                (prediction,) = predictor.predict([path], args.top_k, args.mode)
        except UNREADABLE as exc:
            print(f"geoloc: cannot read {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        table.row(str(path), prediction)
    return 1 if failed else 0


def _predict_sequence(predictor, paths: list[Path], args, table: _Table) -> int:
    """One prediction from every readable photo; the unreadable ones are named and skipped."""
    readable = _readable(paths, "--sequence")
    mode = args.mode or "sequence"
    predictions = predictor.predict(readable, args.top_k, mode)
    if mode == "sequence":   # every frame has the drive's answer: print it once
        table.row(f"sequence of {len(readable)} photos", predictions[0])
    else:
        for path, prediction in zip(readable, predictions, strict=True):
            table.row(str(path), prediction)
    return 1 if len(readable) < len(paths) else 0


def _predict_place(predictor, paths: list[Path], args, table: _Table) -> int:
    """One answer for every readable photo together, as the views of one place."""
    readable = _readable(paths, "--place")
    prediction = predictor.predict_place(readable, args.top_k)
    table.row(f"place of {len(readable)} views", prediction)
    if prediction.note and not args.json:
        print(f"geoloc: note: {prediction.note}", file=sys.stderr)
    return 1 if len(readable) < len(paths) else 0


def _readable(paths: list[Path], option: str) -> list[Path]:
    """The photos that decode whole; the others are named and skipped."""
    readable = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # decodes it all: a truncated file fails here, not midway
            readable.append(path)
        except UNREADABLE as exc:
            print(f"geoloc: cannot read {path}: {exc}", file=sys.stderr)
    if not readable:
        raise GeolocError(f"{option}: none of the photos could be read")
    return readable


class _Table:
    """The predictions as aligned columns (the path column as wide as the longest path), or
    as JSON lines."""

    def __init__(self, path_width: int, as_json: bool, near_width: int):
        self.width, self.as_json, self.near_width = path_width, as_json, near_width

    def header(self) -> None:
        if not self.as_json:
            print(f"{'path':{self.width}} {'lat':>9} {'lon':>9} {'near':{self.near_width}} "
                  f"{'cell':16} {'confidence':>10} {'mode':9}  top-k")

    def row(self, name: str, prediction) -> None:
        if self.as_json:
            print(json.dumps({"path": name, **prediction.__dict__}))
            return
        top = " ".join(f"{t['cell']}:{t['probability']:.2f}" for t in prediction.top)
        near = "-" if prediction.city is None else _near(prediction.city, prediction.city_km)
        print(f"{name:{self.width}} {prediction.lat:9.5f} {prediction.lon:9.5f} "
              f"{near:{self.near_width}} {prediction.cell:16} {prediction.confidence:10.3f} "
              f"{prediction.mode:9}  {top}")


def _near(city: str, km: float) -> str:
    return f"{city} {km:.1f} km"


def _freeze_test(args) -> int:
    from geoloc.data.splits import write_test_sequences

    count = write_test_sequences(args.splits, args.out)
    print(f"{args.out}: the {count} test sequences of {args.splits}; the split stage keeps "
          f"them as the test set from now on")
    return 0


def _purge(args) -> int:
    from dvc.repo import Repo

    from geoloc import purge
    from geoloc.params import load_params
    from geoloc.sources.run import DOWNLOADS_DIR

    params = load_params()
    paths = {"raw": Path("data/raw"), "index": Path("data/index"), "splits": Path("data/splits"),
             "cache": Path("data/cache"), "store": DOWNLOADS_DIR}
    plan = purge.plan(args.batches, sizes=params.cache.sizes, lock=Path("dvc.lock"),
                      dvc_cache=Path(Repo(".").cache.local.path), **paths)
    if not plan:
        print("nothing to purge: no batch is in the resize cache")
        return 0
    print(f"{'batch':10} {'files':>8} {'MB':>10}")
    for item in plan:
        print(f"{item.batch:10} {len(item.files):8d} {item.bytes / 1e6:10.1f}")
    print(f"{'total':10} {sum(len(p.files) for p in plan):8d} "
          f"{sum(p.bytes for p in plan) / 1e6:10.1f}")
    if not args.delete:
        print("dry run: nothing was deleted; add --delete to remove these files")
        return 0
    purge.execute(plan)
    print("deleted. `dvc status` now lists these batches' raw folders as changed, and a "
          "`dvc repro` fetches them again; after a `dvc push`, `dvc pull` restores them instead")
    return 0


def _serve(args) -> int:
    from geoloc import serve  # fastapi and uvicorn load only when serving

    if args.max_upload_mb <= 0 or args.max_views < 1:
        raise GeolocError("--max-upload-mb must be positive and --max-views at least 1")
    if args.max_request_mb is not None and args.max_request_mb < args.max_upload_mb:
        raise GeolocError("--max-request-mb must be at least --max-upload-mb")
    serve.run(args.model, args.host, args.port,
              max_upload_bytes=round(args.max_upload_mb * serve.MB), max_views=args.max_views,
              max_request_bytes=(None if args.max_request_mb is None
                                 else round(args.max_request_mb * serve.MB)))
    return 0


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
