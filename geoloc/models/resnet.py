"""ResNet-18 from torchvision, its ImageNet classifier removed: 512 features."""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights

from geoloc.errors import GeolocError
from geoloc.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, brief, load_state_file
from geoloc.params import ModelParams

WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
WHAT = "torchvision's resnet18"


def build_resnet18(cfg: ModelParams, pretrained: bool) -> Backbone:
    net = torchvision.models.resnet18(weights=None)
    if pretrained and cfg.weights_path is not None:
        load_state_file(net, cfg.weights_path, origin="model.weights_path", what=WHAT)
    elif pretrained:
        net.load_state_dict(_download())
    # The classifier goes after loading, so a full torchvision file (fc included) loads strictly.
    net.fc = nn.Identity()
    return Backbone(net, 512, IMAGENET_MEAN, IMAGENET_STD)


def _download() -> dict:
    """torchvision's ImageNet weights, from the torch hub cache ($TORCH_HOME) or the web."""
    file = WEIGHTS.url.rsplit("/", 1)[-1]
    try:
        return WEIGHTS.get_state_dict(progress=False)
    except Exception as exc:  # offline, a proxy, a truncated download: the same way out for all
        raise GeolocError(
            f"model.pretrained: torchvision's ImageNet weights for resnet18 could not be "
            f"downloaded ({brief(exc)}); fetch {file} (a state_dict of {WHAT}) on a machine "
            f"that can, and set model.weights_path to that file") from exc
