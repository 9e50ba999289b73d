"""The baseline: a small plain CNN, fast enough to train on a laptop CPU in minutes."""

from __future__ import annotations

from torch import nn

from geoloc.choices import FEATURE_BACKBONES
from geoloc.errors import GeolocError
from geoloc.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from geoloc.params import ModelParams


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks doubling the width, then global average pooling."""

    def __init__(self, width: int = 16):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        self.blocks = nn.Sequential(*(_block(cin, cout)
                                      for cin, cout in zip([3, *widths[:-1]], widths, strict=True)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]

    def forward(self, x):
        return self.pool(self.blocks(x)).flatten(1)


def build_cnn(cfg: ModelParams, pretrained: bool) -> Backbone:
    if pretrained:
        raise GeolocError(f"model.pretrained: the cnn baseline has no pretrained weights; set "
                          f"model.pretrained to false, or pick an arch that has: "
                          f"{', '.join(FEATURE_BACKBONES)}")
    net = SmallCNN(cfg.width)
    # It learns from scratch, so any fixed normalisation would do: ImageNet's keeps inputs
    # about zero-mean and unit-variance on photos.
    return Backbone(net, net.feature_dim, IMAGENET_MEAN, IMAGENET_STD)
