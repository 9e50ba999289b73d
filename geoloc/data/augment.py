"""Augmentation of whole uint8 batches, per image, on the batch's device.

Random resized crops (one affine sampling grid per image) and colour jitter (brightness,
contrast, saturation). No horizontal flip: a mirrored street swaps the side people drive on.
Colour jitter blurs each drive's camera signature, which a model could otherwise memorise
instead of the place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

# ITU-R 601 luma weights, as torchvision's grayscale uses.
LUMA = (0.299, 0.587, 0.114)


class BatchAugment(nn.Module):
    """uint8 B x S x S x 3 in, float32 B x S x S x 3 (0..255) out; the model normalises."""

    def __init__(self, scale=(0.5, 1.0), ratio=(0.8, 1.25), brightness=0.3, contrast=0.3,
                 saturation=0.3):
        super().__init__()
        self.scale, self.ratio = scale, ratio
        self.jitter = (brightness, contrast, saturation)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, size = images.shape[0], images.shape[1]
        # Drawn on the CPU whatever the device (the same draws everywhere); copied without
        # making the host wait for the device.
        draws = torch.rand(b, 7, generator=generator).to(images.device, non_blocking=True)
        x = images.permute(0, 3, 1, 2).float()
        x = F.grid_sample(x, self._crop_grids(draws[:, :4], b, size), mode="bilinear",
                          padding_mode="border", align_corners=False)
        x = self._colour(x, draws[:, 4:]).clamp_(0, 255)
        # A view: the model's permute back to N x 3 x S x S finds the memory already in order.
        return x.permute(0, 2, 3, 1)

    def _crop_grids(self, u: torch.Tensor, b: int, size: int) -> torch.Tensor:
        """Sampling grids of random crops: area share in `scale`, aspect in `ratio` (log
        uniform), placed uniformly where they fit, resized back to size x size."""
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_ratio = math.log(self.ratio[0]) + (math.log(self.ratio[1])
                                               - math.log(self.ratio[0])) * u[:, 1]
        width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        # In affine_grid's [-1, 1] coordinates a crop of width w has its centre in [w-1, 1-w].
        cx = (1 - width) * (2 * u[:, 2] - 1)
        cy = (1 - height) * (2 * u[:, 3] - 1)
        zero = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width, zero, cx], 1),
                             torch.stack([zero, height, cy], 1)], 1)
        return F.affine_grid(theta, [b, 3, size, size], align_corners=False)

    def _colour(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness b, then contrast c about the mean grey, then saturation s about each
        pixel's grey: all linear, so one 3 x 3 matrix and one offset per image, applied in a
        single batched product instead of a pass over the pixels per step.

        With A = s I + (1 - s) 1 luma^T (A 1 = 1, since the luma weights sum to 1) and m the
        mean grey of the input: out = c b A x + (1 - c) b m 1.
        """
        b, c, s = ((1 + strength * (2 * u[:, i] - 1)).view(-1, 1, 1)
                   for i, strength in enumerate(self.jitter))
        n, channels, height, width = x.shape
        eye = torch.eye(3, device=x.device)
        luma = self.luma.view(1, 1, 3)
        matrix = c * b * (s * eye + (1 - s) * luma.expand(n, 3, 3))
        mean_grey = (x.mean((2, 3)) * self.luma.view(1, 3)).sum(1).view(-1, 1, 1)
        offset = ((1 - c) * b * mean_grey).expand(n, 3, 1)
        out = torch.baddbmm(offset, matrix, x.reshape(n, channels, height * width))
        return out.view(n, channels, height, width)
