"""What every backbone builder returns, and the one way a weights file is loaded into one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from geoloc.errors import GeolocError

# ImageNet statistics in 0..255 units: torchvision's pretrained models were trained on
# (x / 255 - mean) / std, which is (x - 255 * mean) / (255 * std).
IMAGENET_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the input normalisation its weights expect.

    `module` maps normalised float images N x 3 x H x W to features N x feature_dim; `mean` and
    `std` are per channel (RGB) in 0..255 units, so GeoNet computes (pixel - mean) / std.
    """

    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_state_file(module: nn.Module, path: Path | str, *, origin: str, what: str) -> None:
    """Load the state_dict saved at `path` into `module`, every key and shape matched.

    `origin` says where the path came from (a params key, a package) and `what` the expected
    architecture, so a wrong or missing file is one message that names both.
    """
    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"{origin}: {path} not found (expected a state_dict of {what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, a pickle of arbitrary objects, not torch at all
        raise GeolocError(f"{origin}: {path} could not be read as a PyTorch state_dict "
                          f"({brief(exc)})") from exc
    if not isinstance(state, dict):
        raise GeolocError(f"{origin}: {path} holds a {type(state).__name__}, not a state_dict "
                          f"of {what}")
    expected = module.state_dict()
    problems = {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "of another shape": sorted(k for k in expected.keys() & state.keys()
                                   if getattr(state[k], "shape", None) != expected[k].shape),
    }
    if any(problems.values()):
        found = "; ".join(f"{len(keys)} keys {kind} (e.g. {', '.join(keys[:3])})"
                          for kind, keys in problems.items() if keys)
        raise GeolocError(f"{origin}: {path} is not a state_dict of {what}: {found}")
    module.load_state_dict(state)


def brief(exc: BaseException) -> str:
    """The exception's type and first line, short enough to sit inside another message."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
