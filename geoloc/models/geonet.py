"""The model as it is trained, evaluated and exported: uint8 photos in, cell logits out."""

import torch
from torch import nn

# ImageNet statistics: standard for the pretrained backbones, harmless for the baseline.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class GeoNet(nn.Module):
    """Backbone + dropout + linear head over cells.

    Takes uint8 images as N x H x W x 3 (the cache's layout, and what a decoded photo is), so
    normalisation travels inside exported TorchScript and ONNX files.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.head(self.dropout(self.backbone(x)))
