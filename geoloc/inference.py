"""From images to logits to points on the map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from geoloc.geo import haversine_km


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, positions=None,
                   batch_size: int = 256) -> np.ndarray:
    """Logits for uint8 images (N x S x S x 3), or for those at `positions` only, in batches
    so memory stays bounded."""
    model.eval()
    positions = np.arange(len(images)) if positions is None else np.asarray(positions)
    # Indexing with an array copies the batch out of the read-only memory map, which torch
    # could not wrap.
    out = [model(torch.from_numpy(images[positions[i:i + batch_size]])).numpy()
           for i in range(0, len(positions), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def argmax_points(logits: np.ndarray, cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of the representative point of each row's most likely cell."""
    points = cells.set_index("label").sort_index()
    best = logits.argmax(axis=1)
    return points["lat"].to_numpy()[best], points["lon"].to_numpy()[best]


def errors_km(logits: np.ndarray, cells: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    lat, lon = argmax_points(logits, cells)
    return haversine_km(rows["lat"].to_numpy(), rows["lon"].to_numpy(), lat, lon)
