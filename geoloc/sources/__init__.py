"""Where images come from. Every source writes JPEGs under the batch folder's images/ and returns
manifest rows with the columns of geoloc.data.manifest.SCHEMA. A source's settings live in the
params section named after it (fetch.synthetic, fetch.mapillary, fetch.local)."""

from __future__ import annotations

import pandas as pd

from geoloc.choices import SOURCES as CHOICES
from geoloc.choices import registry
from geoloc.data.cities import require_circles
from geoloc.params import FetchParams
from geoloc.sources import local, mapillary, synthetic
from geoloc.sources.run import FetchRun

SOURCES = registry(CHOICES, {
    "synthetic": synthetic.fetch,
    "mapillary": mapillary.fetch,
    "local": local.fetch,
})


def fetch_batch(cities: pd.DataFrame, cfg: FetchParams, run: FetchRun) -> pd.DataFrame:
    """Fetch the images of one batch's cities with the source named in params."""
    if cfg.source != "local":
        require_circles(cities, cfg.source)
    return SOURCES[cfg.source](cities, getattr(cfg, cfg.source), run)
