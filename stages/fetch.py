"""fetch@<batch>: fetch one batch of data/cities.csv into data/raw/<batch> (images + manifest)."""

import argparse
import logging
import time
from pathlib import Path

from geoloc.data.cities import cities_of_batch, load_cities
from geoloc.data.manifest import write_manifest
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.sources import fetch_batch
from geoloc.sources.run import DOWNLOADS_DIR, DiskBudget, FetchRun
from geoloc.stage import run_stage

log = logging.getLogger("stages.fetch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", required=True, help="batch name, e.g. batch01")
    parser.add_argument("--cities", default="data/cities.csv")
    parser.add_argument("--out", required=True, help="the batch folder, e.g. data/raw/batch01")
    parser.add_argument("--store", default=DOWNLOADS_DIR, type=Path,
                        help="downloads kept between runs, so a killed fetch resumes")
    parser.add_argument("--metrics", required=True, help="e.g. metrics/fetch/batch01.json")
    args = parser.parse_args()

    params = load_params()
    cities = cities_of_batch(load_cities(args.cities), args.batch)
    started = time.monotonic()
    with atomic_dir(args.out) as tmp:
        run = FetchRun(batch=args.batch, out_dir=tmp,
                       store_dir=args.store / params.fetch.source,
                       budget=DiskBudget(args.store, params.fetch.max_disk_gb),
                       panoramas=params.panoramas)
        manifest = fetch_batch(cities, params.fetch, run)
        write_manifest(manifest, tmp)
        figures = run.metrics(manifest, time.monotonic() - started)
    write_json(figures, args.metrics)
    log.info("%s: %d images from %d cities", args.batch, len(manifest), len(cities))


if __name__ == "__main__":
    run_stage(main)
