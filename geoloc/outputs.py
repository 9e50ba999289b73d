"""What a trained model says about images: logits (and the hybrid head's offsets), in batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from geoloc.data.cache import CachedSplit
from geoloc.data.features import FeatureSplit
from geoloc.models.geonet import GeoNet


def predict_outputs(model: torch.nn.Module, images: np.ndarray, positions=None, *,
                    device=None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits N x K, offsets N x K x 2 in km or None) for uint8 images (N x S x S x 3), or
    for those at `positions` only, in batches so memory stays bounded."""
    positions = np.arange(len(images)) if positions is None else np.asarray(positions)
    # An exported (TorchScript) model has `forward` only: logits, or (logits, offsets).
    forward = getattr(model, "forward_train", None) or (lambda batch: _pair(model(batch)))
    # Indexing with an array copies the batch out of the read-only memory map, which torch
    # could not wrap.
    return _batched(model, forward, images, positions, device, batch_size)


def split_outputs(model: GeoNet, split: CachedSplit | FeatureSplit, device=None,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, offsets) for the rows of a split: from its cached images or, for a model with
    a frozen backbone, from its features (what the backbone computes from the images)."""
    if isinstance(split, FeatureSplit):
        return _batched(model, model.head_forward, split.features,
                        split.rows["feature_row"].to_numpy(), device, batch_size=4096)
    return predict_outputs(model, split.images, split.rows["cache_row"], device=device)


def _pair(out) -> tuple:
    return tuple(out) if isinstance(out, tuple | list) else (out, None)


@torch.no_grad()
def _batched(model: torch.nn.Module, forward: Callable, inputs: np.ndarray,
             positions: np.ndarray, device, batch_size: int,
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """`forward` (inputs -> logits, offsets or None) over inputs[positions], in batches. The
    outputs stay on the device until the last batch: copying each batch back would make the
    host wait for the device at every batch."""
    model.eval()
    logits, offsets = [], []
    for start in range(0, len(positions), batch_size):
        batch = torch.from_numpy(np.array(inputs[positions[start:start + batch_size]]))
        out_logits, out_offsets = forward(batch if device is None
                                          else batch.to(device, non_blocking=True))
        logits.append(out_logits.float())
        if out_offsets is not None:
            offsets.append(out_offsets.float())
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), None
    return (torch.cat(logits).cpu().numpy(),
            torch.cat(offsets).cpu().numpy() if offsets else None)
