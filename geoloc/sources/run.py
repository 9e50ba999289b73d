"""What a source gets besides its params: where to write, where to resume from, its disk budget,
and counters of what went wrong (reported in metrics/fetch/<batch>.json)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geoloc.errors import GeolocError
from geoloc.io import folder_bytes
from geoloc.params import PanoramaParams

GB = 1024**3
DOWNLOADS_DIR = Path("data/downloads")   # the default store; git-ignored, not a DVC output


class DiskBudgetError(GeolocError):
    """fetch.max_disk_gb is reached."""


class DiskBudget:
    """Bytes a fetch may keep under its download folder, shared by the download threads."""

    def __init__(self, folder: Path, max_gb: float):
        self.folder = Path(folder)
        self.limit = int(max_gb * GB)
        self.used = folder_bytes(self.folder)
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Count nbytes about to be written; raise if that passes the budget."""
        with self._lock:
            if self.used + nbytes > self.limit:
                raise DiskBudgetError(
                    f"fetch.max_disk_gb ({self.limit / GB:g} GB) reached: {self.folder} holds "
                    f"{self.used / GB:.2f} GB. Raise fetch.max_disk_gb, or free space with "
                    f"`geoloc purge` (batches already in the resize cache); the fetch resumes "
                    f"where it stopped.")
            self.used += nbytes


@dataclass
class FetchRun:
    batch: str
    out_dir: Path            # the batch folder being built; images go under out_dir/images
    store_dir: Path          # kept between runs so a killed fetch resumes; not a DVC output
    budget: DiskBudget
    panoramas: PanoramaParams   # how a source cuts a 360 panorama into views
    counts: collections.Counter = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def image_dir(self) -> Path:
        return self.out_dir / "images"

    def count(self, kind: str, n: int = 1) -> None:
        """Thread-safe counter of failures by kind and of retries."""
        with self._lock:
            self.counts[kind] += n

    def metrics(self, manifest: pd.DataFrame, seconds: float) -> dict:
        """The figures of metrics/fetch/<batch>.json."""
        counts = dict(self.counts)
        return {
            "images": len(manifest),
            "sequences": int(manifest["sequence_id"].nunique()),
            "cities": int(manifest["city"].nunique()),
            "bytes": folder_bytes(self.image_dir),
            "retries": counts.pop("retries", 0),
            "failures": counts,
            "seconds": round(seconds, 1),
        }

