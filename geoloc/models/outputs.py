"""What a trained model says about images: logits (and the hybrid head's offsets), in batches."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, images: np.ndarray, positions=None, *,
                    device=None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits N x K, offsets N x K x 2 in km or None) for uint8 images (N x S x S x 3), or
    for those at `positions` only, in batches so memory stays bounded."""
    model.eval()
    positions = np.arange(len(images)) if positions is None else np.asarray(positions)
    logits, offsets = [], []
    for start in range(0, len(positions), batch_size):
        # Indexing with an array copies the batch out of the read-only memory map, which
        # torch could not wrap.
        batch = torch.from_numpy(images[positions[start:start + batch_size]])
        if device is not None:
            batch = batch.to(device)
        # An exported (TorchScript) model has `forward` only: logits, no offsets.
        forward_train = getattr(model, "forward_train", None)
        out_logits, out_offsets = (forward_train(batch) if forward_train is not None
                                   else (model(batch), None))
        logits.append(out_logits.float().cpu().numpy())
        if out_offsets is not None:
            offsets.append(out_offsets.float().cpu().numpy())
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), None
    return np.concatenate(logits), np.concatenate(offsets) if offsets else None


def predict_logits(model: torch.nn.Module, images: np.ndarray, positions=None) -> np.ndarray:
    return predict_outputs(model, images, positions)[0]
