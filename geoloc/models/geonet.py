"""The model as it is trained, evaluated and exported: uint8 photos in, cell logits out."""

from __future__ import annotations

import torch
from torch import nn

from geoloc.models.backbone import Backbone
from geoloc.models.heads import Head


class GeoNet(nn.Module):
    """Normalisation, backbone, head.

    Takes uint8 images as N x H x W x 3 (the cache's layout, and what a decoded photo is), so
    normalisation travels inside exported TorchScript and ONNX files. `forward` returns the
    logits only; `forward_train` adds the hybrid head's offsets, which training, evaluation and
    the export (`Exported`) use; with a frozen backbone, training and evaluation call
    `head_forward` on the features stage's features.
    """

    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))
        self.frozen = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.features(images))

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits B x K, offsets B x K x 2 in km or None); dropout is in the head."""
        return self.head_forward(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(images))

    def head_forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(features)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) N x H x W x 3 -> float N x 3 x H x W as the backbone's
        weights expect."""
        return (images.permute(0, 3, 1, 2).float() - self.mean) / self.std

    @property
    def head_weight(self) -> torch.Tensor:
        """The classifier's weights, K x D: one row per cell (what an adjacency loss pulls)."""
        return self.head.classifier.weight

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def freeze_backbone(self) -> GeoNet:
        """Train the head only: the backbone's parameters stop taking gradients and the
        backbone stays in eval mode through `train()`, so its BatchNorm statistics (and any
        stochastic depth) stay as loaded. The features are then a fixed function of the image,
        which is what lets the trainer compute them once."""
        self.backbone.requires_grad_(False)
        self.frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> GeoNet:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


class Exported(nn.Module):
    """What an export ships: uint8 images in, logits out, and the hybrid head's offsets too
    where the model has one (`forward_train` in eval mode), so a snapshot serves every mode
    evaluation scored."""

    def __init__(self, net: GeoNet):
        super().__init__()
        self.net = net
        self.hybrid = net.head.offsets is not None
        self.eval()

    @property
    def outputs(self) -> list[str]:
        return ["logits", "offsets"] if self.hybrid else ["logits"]

    def forward(self, images: torch.Tensor):
        return self.net.forward_train(images) if self.hybrid else self.net(images)


class FeatureExtractor(nn.Module):
    """uint8 images in, the backbone's features out: the model the features stage exports and
    runs, and the one an export snapshot ships for retrieval."""

    def __init__(self, net: GeoNet):
        super().__init__()
        self.net = net
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(images)
