"""The training loop on a tiny in-memory split: precision, multi-scale, frozen backbones, the
learning-rate schedule. Resume and torchrun run end to end in test_pipeline.py."""

import logging
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params
from torch.optim.optimizer import register_optimizer_step_pre_hook

from geoloc.data.augment import BatchAugment
from geoloc.data.cache import CachedSplit
from geoloc.data.features import FeatureSplit
from geoloc.data.loader import cache_loader
from geoloc.errors import GeolocError
from geoloc.geo import haversine_km, shift_km
from geoloc.models import build_model
from geoloc.outputs import split_outputs
from geoloc.train import (
    Dist,
    _epoch_seed,
    _FeatureBatches,
    _ImageBatches,
    _warmup_cosine,
    fit,
    parameter_groups,
    resolve_precision,
    seed_everything,
)

PARAMS = tiny_params()
CELLS = pd.DataFrame({
    "label": [0, 1, 2], "cell": ["851f91dbfffffff", "851f93b7fffffff", "851f9353fffffff"],
    "resolution": 5, "lat": [45.0, 45.2, 45.4], "lon": [5.0, 5.1, 5.2],
    "parents": [[], [], []], "neighbours": [[], [], []]})


class Recorder:
    def __init__(self):
        self.steps = []

    def log_metric(self, name, value):
        if not self.steps or name in self.steps[-1]:
            self.steps.append({})
        self.steps[-1][name] = value

    def next_step(self):
        pass


def split(size: int, n: int = 48, seed: int = 0) -> CachedSplit:
    """Images whose colour says their cell, so a few epochs learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels] += 180
    rows = pd.DataFrame({"label": labels, "lat": CELLS["lat"].to_numpy()[labels] + 0.01,
                         "lon": CELLS["lon"].to_numpy()[labels], "cache_row": np.arange(n),
                         "image_id": [f"i{i}" for i in range(n)]})
    return CachedSplit(images, rows)


def features_of(model, images: CachedSplit) -> FeatureSplit:
    """What the features stage gives a frozen backbone: its features of every image."""
    with torch.no_grad():
        features = model.eval().features(torch.from_numpy(images.images)).numpy()
    return FeatureSplit(features, images.rows.rename(columns={"cache_row": "feature_row"}))


def train(model_changes=None, watch=None, **train_changes):
    """Train a tiny model 3 epochs; `watch(model)` sees it first (to hook it)."""
    model_cfg = replace(PARAMS.model, width=4, **(model_changes or {}))
    cfg = replace(PARAMS.train, epochs=3, batch_size=16, patience=10, **train_changes)
    seed_everything(0)
    model = build_model(model_cfg, len(CELLS))
    if watch is not None:
        watch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = [32, 40] if cfg.multiscale else [32]
    train_split, val = {size: split(size) for size in sizes}, split(32, seed=1)
    if model.frozen:
        train_split, val = features_of(model, train_split[32]), features_of(model, val)
    summary = fit(model, train_split, val, CELLS, cfg, PARAMS.loss, Recorder())
    return model, before, summary


def test_bf16_autocast_trains_on_a_cpu():
    """The classifier's matrix product runs in bf16 in the training steps (its output's dtype,
    seen from inside the forward), and in fp32 without the param."""
    def dtypes_seen(precision: str) -> set:
        seen = set()

        def watch(model):
            model.head.classifier.register_forward_hook(
                lambda module, inputs, output: seen.add(output.dtype) if module.training
                else None)

        model, before, summary = train(watch=watch, precision=precision)
        assert np.isfinite(summary["val_loss"]) and summary["val_accuracy"] > 0.5
        assert summary["precision"] == precision              # recorded as trained
        assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert not torch.equal(before["head.classifier.weight"], model.head_weight)
        return seen

    assert dtypes_seen("bf16") == {torch.bfloat16}
    assert dtypes_seen("fp32") == {torch.float32}


def test_auto_precision_is_bf16_where_a_gpu_runs_it_natively(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        # Emulated bf16 (an older GPU) is slower than fp32: auto takes only the native one.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native:
                            including_emulation or native)
        assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"


def test_batches_cross_to_the_device_as_uint8_and_are_augmented_there():
    """What the loader hands over crosses to the training device as it is (uint8), and the
    augmentation runs there: here on the meta device (shapes and dtypes, no data). Its draws
    come from the epoch's CPU generator whatever the device, so a CPU run augments exactly
    as augmenting the loader's batches with that generator does."""
    cfg = replace(PARAMS.train, batch_size=16)
    images = split(32)
    seen = []
    on_meta = _ImageBatches({32: images}, cfg, Dist(), torch.device("meta"))
    on_meta.augment.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].device.type, args[0].dtype)))
    batches = list(on_meta.of_epoch(0, 32))
    assert seen == [("meta", torch.uint8)] * 3
    assert {(t.device.type, t.dtype) for t, _, _ in batches} == {("meta", torch.float32)}

    on_cpu = _ImageBatches({32: images}, cfg, Dist())
    got = [b[0] for b in on_cpu.of_epoch(0, 32)]
    assert on_cpu.augment_generator.get_state().equal(on_meta.augment_generator.get_state())
    order = torch.Generator().manual_seed(_epoch_seed(cfg.seed, 0, 0))
    draws = torch.Generator().manual_seed(_epoch_seed(cfg.seed, 0, 1))
    expected = [BatchAugment()(batch, draws) for batch, _, _ in
                cache_loader(images, 16, shuffle=True, generator=order)]
    assert len(got) == len(expected) == 3
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_the_deterministic_switch(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")      # restored afterwards
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    try:
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        seed_everything(0)


def test_train_compile_trains_through_torch_compile():
    from torch._dynamo.utils import counters

    counters.clear()
    _, _, summary = train(compile=True)
    assert counters["frames"]["ok"] > 0          # dynamo compiled the step's forward
    assert summary["val_accuracy"] > 0.5


def test_fp16_trains_on_a_gpu_only():
    """fp16 needs CUDA's loss scaling: a CPU run refuses it before training; on a GPU it
    trains in it."""
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    if torch.cuda.is_available():
        _, _, summary = train(precision="fp16")
        assert (summary["device"], summary["precision"]) == ("cuda", "fp16")
        assert np.isfinite(summary["val_loss"])
    else:
        with pytest.raises(GeolocError, match="fp16 needs a CUDA device; use bf16"):
            train(precision="fp16")


def test_multiscale_epochs_cycle_through_the_cached_sizes(caplog):
    with caplog.at_level(logging.INFO, logger="geoloc.train"):
        train(multiscale=True)
    sizes = [r.getMessage().split("(")[1].split(" px")[0] for r in caplog.records
             if r.getMessage().startswith("epoch")]
    assert sizes == ["32", "40", "32"]


def test_a_frozen_backbone_trains_the_head_alone_on_the_features():
    model, before, _ = train({"freeze_backbone": True, "head": "mlp"}, augment=False)
    after = model.state_dict()
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == name.startswith("head."), name


def test_ddp_ranks_share_out_each_epoch():
    """What each of two torchrun ranks trains on in an epoch (the batches `fit` steps through,
    images and features alike): disjoint shares whose union is the epoch, in an order that
    changes with the epoch."""
    n = 96
    images = split(32, n=n)
    images.images[:, 0, 0, :2] = np.stack([np.arange(n) % 256, np.arange(n) // 256], axis=1)
    features = FeatureSplit(np.arange(n, dtype=np.float32)[:, None].repeat(4, axis=1),
                            images.rows.rename(columns={"cache_row": "feature_row"}))
    cfg = replace(PARAMS.train, batch_size=16, augment=False)

    def seen(batches, epoch: int, size) -> list[int]:
        rows = []
        for inputs, _, _ in batches.of_epoch(epoch, size):
            inputs = inputs.numpy()
            rows += (inputs[:, 0, 0, 0].astype(int) + 256 * inputs[:, 0, 0, 1].astype(int)
                     if inputs.ndim == 4 else inputs[:, 0].astype(int)).tolist()
        return rows

    for make, size in ((lambda dist: _ImageBatches({32: images}, cfg, dist), 32),
                       (lambda dist: _FeatureBatches(features, cfg, dist), None)):
        shares = [seen(make(Dist(rank, 2)), 0, size) for rank in range(2)]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == list(range(n))
        assert seen(make(Dist(0, 2)), 1, size) != shares[0]


def _frozen_epoch_on_rank(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as torch_dist

    from geoloc.train import Dist

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                  world_size=world)
    try:
        seed_everything(0)
        model = build_model(replace(PARAMS.model, width=4, freeze_backbone=True), len(CELLS))
        features = features_of(model, split(32, n=129))
        cfg = replace(PARAMS.train, epochs=2, batch_size=64, patience=10)
        fit(model, features, features_of(model, split(32, seed=1)), CELLS, cfg, PARAMS.loss,
            Recorder(), dist=Dist(rank, world))
        out.put(rank)
    finally:
        torch_dist.destroy_process_group()


def test_a_frozen_backbone_trains_under_ddp_with_an_uneven_split():
    """129 photos, 2 ranks, batches of 64: unpadded, rank 0 would take 2 steps and rank 1
    one, and DDP would wait for rank 1's second step for ever."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    ranks = [context.Process(target=_frozen_epoch_on_rank, args=(rank, 2, port, out))
             for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    hung = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        process.kill()
    assert not hung, "a rank is still waiting in a collective step"
    assert [process.exitcode for process in ranks] == [0, 0]
    assert sorted(out.get() for _ in range(2)) == [0, 1]


def test_weight_decay_spares_biases_and_norms():
    model = build_model(replace(PARAMS.model, width=4, head="mlp"), len(CELLS))
    decayed, spared = parameter_groups(model, 0.05)
    names = {id(p): name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    assert {names[id(p)] for p in spared["params"]} == {
        name for name, p in model.named_parameters() if name.endswith("bias") or
        ".1.weight" in name and p.ndim == 1}                 # BatchNorm scales, biases
    assert all(p.ndim >= 2 for p in decayed["params"]) and len(decayed["params"]) == 6
    assert len(decayed["params"]) + len(spared["params"]) == len(list(model.parameters()))


def test_gradients_are_clipped_to_train_grad_clip():
    """The global gradient norm the optimizer steps with, seen at each step."""
    norms = []

    def watch(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(watch)
    try:
        train(grad_clip=0.05)
        clipped, norms[:] = list(norms), []
        train()
    finally:
        handle.remove()
    assert max(clipped) <= 0.05 * (1 + 1e-4) and max(norms) > 0.05


def offset_error_km(model, photos: CachedSplit) -> float:
    """Mean km from each photo to its true cell's point moved by the offset the model predicts
    for that cell: what the offset loss trains."""
    _, offsets = split_outputs(model, photos)
    labels = photos.rows["label"].to_numpy()
    east, north = offsets[np.arange(len(labels)), labels].T
    cell = CELLS.set_index("label").loc[labels]
    lat, lon = shift_km(cell["lat"].to_numpy(), cell["lon"].to_numpy(), east, north)
    return float(np.mean(haversine_km(photos.rows["lat"], photos.rows["lon"], lat, lon)))


def test_the_hybrid_head_learns_offsets():
    """The photos lie 1.1 km north of their cells' points and the offsets start at zero: a
    working offset loss closes a good part of that gap, one that trains the wrong target, the
    wrong cell or nothing does not. lr 0.01: 3 epochs at the default move the offsets too
    little to tell (about 13 %)."""
    photos, seen = split(32), []
    model, _, _ = train({"hybrid": True}, lr=0.01,
                        watch=lambda model: seen.append(offset_error_km(model, photos)))
    (before,), after = seen, offset_error_km(model, photos)
    assert before == pytest.approx(1.11, abs=0.01)
    assert after < 0.75 * before, (before, after)


def test_warm_up_then_cosine():
    factor = _warmup_cosine(warmup=4, total=20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(12) == pytest.approx(0.5)
    assert factor(20) == pytest.approx(0.0, abs=1e-12)
    assert _warmup_cosine(0, 10)(0) == pytest.approx(1.0)


def _agree_on_rank(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as torch_dist

    from geoloc.train import Dist, _agreed

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                  world_size=world)
    try:
        out.put((rank, _agreed({"val_median_km": 1.0 + rank}, Dist(rank, world))))
    finally:
        torch_dist.destroy_process_group()


def test_ranks_agree_on_rank_0s_validation_figures():
    """Early stopping must be one decision for all DDP ranks, or one leaves the others hanging."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agree_on_rank, args=(2, port, out), nprocs=2)
    answers = dict(out.get() for _ in range(2))
    assert answers == {0: {"val_median_km": 1.0}, 1: {"val_median_km": 1.0}}
