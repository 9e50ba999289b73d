"""`geoloc purge`: free the disk taken by raw JPEGs of batches whose images are in the resize
cache already.

A raw JPEG can exist three times: in the batch folder (data/raw/<batch>/images), in the download
store a resumed fetch reads (data/downloads), and in DVC's cache. They are often hard links of one
file, so the space comes back only when every copy goes: purge removes all three, and counts
each file (inode) once. The manifest, attribution and metrics of the batch stay.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from geoloc.data.cache import load_cache
from geoloc.data.cells import load_index
from geoloc.data.splits import SPLITS, load_split
from geoloc.errors import GeolocError

log = logging.getLogger(__name__)


class PurgeError(GeolocError):
    """A batch cannot be purged; the message says why."""


@dataclass
class BatchPurge:
    batch: str
    files: list[Path] = field(default_factory=list)   # every copy, in every place
    bytes: int = 0                                     # freed once all copies are gone


def plan(batches: Iterable[str], *, raw: Path, index: Path, splits: Path, cache: Path,
         sizes: list[int], store: Path, dvc_cache: Path | None, lock: Path) -> list[BatchPurge]:
    """What purging `batches` would delete; refuses a batch that is not in the resize cache.
    An empty `batches` means every batch that is."""
    cached = cached_batches(index, splits, cache, sizes)
    outs = _locked_outs(lock) if dvc_cache else {}
    purges = []
    for batch in batches or sorted(cached):
        if batch not in cached:
            raise PurgeError(
                f"{batch} is not in the resize cache ({cache}, sizes {sizes}): run `dvc repro "
                f"resize_cache` first, or its JPEGs would be needed again")
        images = sorted((raw / batch / "images").glob("*.jpg"))
        listing = outs.get(f"{raw}/{batch}")
        objects = _dvc_objects(dvc_cache, listing) if listing else []
        purges.append(BatchPurge(batch, images + objects))
    _add_store_links(purges, store)
    for purge in purges:
        purge.bytes = _unique_bytes(purge.files)
    return purges


def execute(purges: list[BatchPurge]) -> None:
    for purge in purges:
        for path in purge.files:
            path.unlink(missing_ok=True)
        log.info("%s: removed %d files, freed %.1f MB", purge.batch, len(purge.files),
                 purge.bytes / 1e6)


def cached_batches(index: Path, splits: Path, cache: Path, sizes: list[int]) -> set[str]:
    """Batches whose every indexed image is in a split whose cache arrays are complete."""
    try:
        images, _ = load_index(index)
        split_ids = set()
        for split in SPLITS:
            rows = load_split(splits, split)
            for size in sizes:
                load_cache(cache, split, size, rows)
            split_ids.update(rows["image_id"])
    except GeolocError:  # no index, splits or cache of these sizes: nothing is cached
        return set()
    # Images the index or split dropped (small cells, no train image) are not cached, but this
    # configuration does not use them either; a batch counts once its used images are cached.
    used = images[images["image_id"].isin(split_ids)]
    return set(used["batch"].unique())


def _locked_outs(lock: Path) -> dict[str, str]:
    """Output path -> hash, as dvc.lock records them."""
    if not lock.exists():
        return {}
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    return {o["path"]: o["md5"] for stage in stages.values() for o in stage.get("outs", [])}


def _dvc_objects(dvc_cache: Path, listing: str) -> list[Path]:
    """The DVC cache files of one output folder, from its .dir listing."""
    dir_file = dvc_cache / listing[:2] / listing[2:]
    if not dir_file.exists():
        return []
    entries = json.loads(dir_file.read_text())
    return [p for e in entries if e["relpath"].startswith("images/")
            if (p := dvc_cache / e["md5"][:2] / e["md5"][2:]).exists()]


def _add_store_links(purges: list[BatchPurge], store: Path) -> None:
    """Add the download store's hard links of the files being purged."""
    owner = {_inode(p): purge for purge in purges for p in purge.files}
    if not store.exists() or not owner:
        return
    for path in sorted(store.rglob("*.jpg")):
        purge = owner.get(_inode(path))
        if purge is not None:
            purge.files.append(path)


def _unique_bytes(paths: list[Path]) -> int:
    """Bytes freed when all paths go: each inode once, and only if no other link remains."""
    links: dict[tuple[int, int], list[os.stat_result]] = {}
    for path in paths:
        stat = path.stat()
        links.setdefault((stat.st_dev, stat.st_ino), []).append(stat)
    return sum(stats[0].st_size for stats in links.values() if stats[0].st_nlink <= len(stats))


def _inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino
