"""Writes that never leave a half-written file or folder under its final name."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name (not mkstemp, whose 0600 mode would stick to the final file).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A killed run (SIGKILL skips the cleanup below) leaves its temporary folder behind.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(data: dict, path: Path | str, rounded: bool = True) -> None:
    """Sorted keys, floats rounded to 6 significant places: stable, diff-friendly metrics;
    `rounded=False` keeps every digit (values a later stage computes with)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_rounded(data) if rounded else data, indent=2,
                                  sort_keys=True) + "\n")


def write_parquet(df: pd.DataFrame, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _rounded(value):
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def folder_bytes(folder: Path | str) -> int:
    """The bytes of every file under `folder` (0 where it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
