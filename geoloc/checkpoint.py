"""models/model.pt: the weights and everything needed to predict with them."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pandas as pd
import torch

from geoloc.errors import GeolocError
from geoloc.io import atomic_path
from geoloc.models import GeoNet, build_model
from geoloc.params import ModelParams

CHECKPOINT_CELLS = ["label", "cell", "lat", "lon", "n_train"]   # what a checkpoint keeps


def save_checkpoint(path: Path | str, model: GeoNet, cells: pd.DataFrame,
                    model_cfg: ModelParams, image_size: int, params: dict,
                    summary: dict) -> None:
    checkpoint = {
        "state_dict": model.state_dict(),
        # The model params rebuild the architecture; num_classes and image_size are what a
        # predictor needs besides.
        "model": {**dataclasses.asdict(model_cfg), "num_classes": len(cells),
                  "image_size": image_size},
        "cells": cells[CHECKPOINT_CELLS].to_dict(orient="list"),
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
    cfg = ModelParams(**{f.name: spec[f.name] for f in dataclasses.fields(ModelParams)})
    # The state_dict holds every weight: no download, no weights file.
    model = build_model(cfg, spec["num_classes"], load_weights=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    cells = pd.DataFrame(checkpoint["cells"])
    return model, cells, checkpoint


def check_cells(model_cells: pd.DataFrame, split_cells: pd.DataFrame, path: Path | str) -> None:
    """Refuse a model trained on another cell table than the split's: its labels would name
    other places, and every distance computed from them would be wrong."""
    ours = model_cells[["label", "cell"]].reset_index(drop=True)
    theirs = split_cells[["label", "cell"]].reset_index(drop=True)
    if not ours.astype(str).equals(theirs.astype(str)):
        raise GeolocError(f"{path} was trained on another cell table ({len(ours)} cells) than "
                          f"data/splits/cells.parquet ({len(theirs)} cells): retrain it with "
                          f"`dvc repro train`")
