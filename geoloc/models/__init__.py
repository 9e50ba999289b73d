"""Architecture registry: `model.arch` in params.yaml names a builder here."""

from __future__ import annotations

from torch import nn

from geoloc.errors import GeolocError
from geoloc.models.cnn import SmallCNN
from geoloc.models.geonet import GeoNet

BACKBONES = {
    "cnn": SmallCNN,
}


def build_model(arch: str, num_classes: int, width: int, dropout: float) -> GeoNet:
    try:
        backbone_cls = BACKBONES[arch]
    except KeyError:
        raise GeolocError(f"model.arch: unknown architecture {arch!r}; "
                         f"known: {', '.join(BACKBONES)}") from None
    backbone: nn.Module = backbone_cls(width=width)
    return GeoNet(backbone, backbone.feature_dim, num_classes, dropout)
