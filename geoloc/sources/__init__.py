"""Where images come from. Every source writes JPEGs under a batch folder and returns manifest
rows with the columns of geoloc.data.manifest.SCHEMA. A source's settings live in the params
section named after it (fetch.synthetic, ...)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geoloc.params import FetchParams
from geoloc.sources import synthetic

SOURCES = {
    "synthetic": synthetic.fetch,
}


def fetch_batch(cities: pd.DataFrame, cfg: FetchParams, batch: str,
                out_dir: Path) -> pd.DataFrame:
    """Fetch the images of one batch's cities into out_dir with the source named in params."""
    return SOURCES[cfg.source](cities, getattr(cfg, cfg.source), batch, out_dir)
