"""fetch@<batch>: fetch one batch of data/cities.csv into data/raw/<batch> (images + manifest)."""

import argparse
import logging

from geoloc.data.cities import cities_of_batch, load_cities
from geoloc.data.manifest import write_manifest
from geoloc.io import atomic_dir
from geoloc.params import load_params
from geoloc.sources import fetch_batch
from geoloc.stage import run_stage

log = logging.getLogger("stages.fetch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", required=True, help="batch name, e.g. batch01")
    parser.add_argument("--cities", default="data/cities.csv")
    parser.add_argument("--out", required=True, help="the batch folder, e.g. data/raw/batch01")
    args = parser.parse_args()

    params = load_params()
    cities = cities_of_batch(load_cities(args.cities), args.batch)
    with atomic_dir(args.out) as tmp:
        manifest = fetch_batch(cities, params.fetch, args.batch, tmp)
        write_manifest(manifest, tmp)
    log.info("%s: %d images from %d cities", args.batch, len(manifest), len(cities))


if __name__ == "__main__":
    run_stage(main)
