"""The manifest: one row per downloaded image, the same columns whatever the source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geoloc.errors import GeolocError
from geoloc.io import write_parquet

MANIFEST_NAME = "manifest.parquet"

# column -> pandas dtype; nullable columns use pandas' nullable dtypes.
SCHEMA = {
    "image_id": "string",
    "lat": "float64",
    "lon": "float64",
    "captured_at": "int64",
    "sequence_id": "string",
    "compass_angle": "Float64",
    "creator": "string",
    "source": "string",
    "city": "string",
    "batch": "string",
    "path": "string",
    "width": "int64",
    "height": "int64",
    # Photos taken together at one place (the faces of a panorama, the cameras of a rig):
    # sequence inference counts them as one frame. Null where no source says so; frames of one
    # sequence with one capture time count as one place too.
    "view_group": "string",
}


class ManifestError(GeolocError, ValueError):
    """A manifest does not have the agreed columns or values."""


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Check the columns, cast to the schema and sort by image_id (deterministic files)."""
    missing = [c for c in SCHEMA if c not in df.columns]
    extra = [c for c in df.columns if c not in SCHEMA]
    if missing or extra:
        raise ManifestError(f"manifest columns: missing {missing}, unexpected {extra}")
    df = df[list(SCHEMA)].astype(SCHEMA)
    if df["image_id"].duplicated().any():
        dupes = df.loc[df["image_id"].duplicated(), "image_id"].head(3).tolist()
        raise ManifestError(f"manifest has duplicate image ids, e.g. {dupes}")
    bad = ~df["lat"].between(-90, 90) | ~df["lon"].between(-180, 180)
    if bad.any():
        examples = df.loc[bad, ["image_id", "lat", "lon"]].head(3).to_dict("records")
        raise ManifestError(f"{int(bad.sum())} manifest rows have missing or invalid "
                            f"coordinates, e.g. {examples}")
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def write_manifest(df: pd.DataFrame, batch_dir: Path) -> Path:
    path = Path(batch_dir) / MANIFEST_NAME
    write_parquet(conform(df), path)
    return path


def read_batches(raw_dir: Path, batches: list[str]) -> pd.DataFrame:
    """All rows of the listed batches, with `path` made relative to raw_dir."""
    frames = []
    for batch in batches:
        path = Path(raw_dir) / batch / MANIFEST_NAME
        if not path.exists():
            raise ManifestError(f"{path} not found: run the fetch stage for {batch}")
        df = pd.read_parquet(path)
        df["path"] = batch + "/" + df["path"]
        frames.append(df)
    return conform(pd.concat(frames, ignore_index=True))
