"""Benchmark the Mapillary fetch against the local stand-in server with 100 ms per request:
images per second at the default concurrency and at concurrency 1 (metrics/bench.json)."""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the stand-in server lives with the tests

from mapillary_server import MapillaryServer, make_world  # noqa: E402
from results import record  # noqa: E402

from geoloc.params import load_params  # noqa: E402
from geoloc.sources import mapillary  # noqa: E402
from geoloc.sources.run import DiskBudget, FetchRun  # noqa: E402

TOKEN = "MLY|0|bench"
CITY = pd.DataFrame({"city": ["Annecy"], "lat": [45.8992], "lon": [6.1294], "radius_km": [0.6],
                     "batch": ["bench"]})


def images_per_second(cfg, concurrency: int) -> tuple[float, int]:
    cfg = dataclasses.replace(cfg, concurrency=concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "downloads"
        run = FetchRun("bench", Path(tmp) / "bench", store, DiskBudget(store, 10.0),
                       load_params(ROOT / "params.yaml").panoramas)
        started = time.perf_counter()
        manifest = mapillary.fetch(CITY, cfg, run)
        return len(manifest) / (time.perf_counter() - started), len(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()

    os.environ["MAPILLARY_TOKEN"] = TOKEN
    world = make_world(CITY, seed=0, sequences_per_city=12, frames=(8, 16), outside=0)
    defaults = load_params(ROOT / "params.yaml").fetch.mapillary
    concurrency = defaults.concurrency
    with MapillaryServer(world, token=TOKEN, jpeg_long_side=1024) as server:
        for image in world:  # encode the JPEGs once, before the clock runs
            server.jpeg_bytes(image.id, 1024)
        server.faults.latency_s = args.latency_ms / 1000
        cfg = dataclasses.replace(defaults, graph_url=server.url)
        parallel, images = images_per_second(cfg, concurrency)
        serial, _ = images_per_second(cfg, 1)
    record(args.out, {
        "fetch_images": images, "fetch_latency_ms": args.latency_ms,
        "fetch_concurrency": concurrency, "fetch_images_per_s": parallel,
        "fetch_images_per_s_concurrency_1": serial, "fetch_speedup": parallel / serial,
    })


if __name__ == "__main__":
    main()
