"""models/model.pt: the weights and everything needed to predict with them."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import torch

from geoloc.errors import GeolocError
from geoloc.io import atomic_path
from geoloc.models import GeoNet, build_model

CELL_COLUMNS = ["label", "cell", "lat", "lon", "n_train"]


def save_checkpoint(path: Path | str, model: GeoNet, cells: pd.DataFrame, *, arch: str,
                    width: int, dropout: float, image_size: int, params: dict,
                    summary: dict) -> None:
    checkpoint = {
        "state_dict": model.state_dict(),
        "model": {"arch": arch, "width": width, "dropout": dropout,
                  "num_classes": len(cells), "image_size": image_size},
        "cells": cells[CELL_COLUMNS].to_dict(orient="list"),
        "params": params,
        "summary": summary,
    }
    # Through a buffer: torch.save names the zip's folder after the file, and the temporary
    # name would make each run's bytes differ.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path | str) -> tuple[GeoNet, pd.DataFrame, dict]:
    """(model in eval mode, cell table, the checkpoint's metadata)."""
    path = Path(path)
    if not path.exists():
        raise GeolocError(f"{path} not found: run the train stage")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    spec = checkpoint["model"]
    model = build_model(spec["arch"], spec["num_classes"], spec["width"], spec["dropout"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    cells = pd.DataFrame(checkpoint["cells"])
    return model, cells, checkpoint
