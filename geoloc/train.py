"""The training loop: AdamW with a linear warm-up and a cosine decay, distance-aware losses,
early stopping on validation median km, mixed precision, a checkpoint after every epoch to
resume from, and DDP when started by torchrun.

Every epoch seeds its own randomness (shuffling, augmentation, dropout) from (seed, epoch), so
a run resumed after epoch k repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from geoloc import choices
from geoloc.choices import registry
from geoloc.data.augment import BatchAugment
from geoloc.data.cache import CachedSplit, ids_digest
from geoloc.data.features import FeatureSplit
from geoloc.data.loader import cache_loader
from geoloc.errors import GeolocError
from geoloc.inference import errors_km
from geoloc.io import atomic_path
from geoloc.losses import build_loss
from geoloc.models import GeoNet
from geoloc.outputs import split_outputs
from geoloc.params import LossParams, TrainParams, is_auto

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
PRECISIONS = registry(choices.PRECISIONS,
                      {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16})


@dataclass
class Dist:
    """This process's place in a DDP run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class State:
    """What a resumed run needs besides the model and optimizer."""

    epoch: int = 0                  # the next epoch to run
    best: dict | None = None
    best_state: dict | None = None
    stale: int = 0
    history: list[dict] = field(default_factory=list)


class SilentLive:
    """A DVCLive logger that logs nothing: for a DDP rank other than 0 (rank 0 logs for all)
    and for the folds of a cross-validation."""

    def log_metric(self, *args, **kwargs) -> None:
        pass

    def next_step(self) -> None:
        pass


def start_distributed() -> Dist:
    """Join the DDP group torchrun set up (WORLD_SIZE > 1), or stay alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Dist(torch.distributed.get_rank(), world)


def stop_distributed(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every generator; with `deterministic`, ask for deterministic kernels (cuDNN's and
    cuBLAS's included), else let cuDNN time its kernels and keep the fastest."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace, set before its first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision training runs in. `auto` is bf16 on a CUDA device that runs it natively (half
    precision's speed without fp16's loss scaling) and fp32 on a CPU, where bf16's speed
    depends on the chip's instructions (AMX makes it faster, see metrics/bench.json) and fp32
    keeps CPU runs comparable with each other; `bf16` asks for it there."""
    if is_auto(name):
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise GeolocError("train.precision fp16 needs a CUDA device; use bf16 on a CPU")
    return name


def fingerprint(params: dict, train_rows: pd.DataFrame, val_rows: pd.DataFrame,
                cells: pd.DataFrame) -> str:
    """What a resume checkpoint must have been written for: the params that shape training,
    the data it saw and the cell table it predicts."""
    shaping = {section: params[section] for section in ("model", "loss", "train")}
    shaping["train"] = {k: v for k, v in shaping["train"].items() if k not in ("resume", "workers")}
    # `auto` is one precision on a GPU and another on a CPU: a run resumes in the one it began.
    shaping["precision"] = resolve_precision(params["train"]["precision"], pick_device())
    shaping["inputs"] = (params["features"] if params["model"]["freeze_backbone"]
                         else params["cache"]["sizes"])
    shaping["train_ids"] = ids_digest(train_rows)
    shaping["val_ids"] = ids_digest(val_rows)
    shaping["cells"] = cells[["label", "cell"]].astype(str).values.tolist()
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def fit(model: GeoNet, train: dict[int, CachedSplit] | FeatureSplit,
        val: CachedSplit | FeatureSplit, cells: pd.DataFrame,
        cfg: TrainParams, loss_cfg: LossParams, live, *, resume_path: Path | None = None,
        stamp: str = "", dist: Dist | None = None) -> dict:
    """Train in place and load the best epoch's weights back; returns that epoch's figures,
    with the device and the precision it trained in.

    `train` holds the train split cached at each size (the first is the model's input size)
    or, for a frozen backbone, its features (the features stage's), and `val` likewise; `live`
    is a DVCLive Live (or anything with log_metric and next_step); `resume_path` is where the
    per-epoch checkpoint lives, `stamp` the fingerprint it must carry.
    """
    loop = TrainLoop(model, train, cells, cfg, loss_cfg, dist)
    dist = loop.dist
    # A frozen backbone never changes: the best epoch is its head's weights.
    trained = model.head if model.frozen else model
    state = State()
    if cfg.resume and resume_path is not None:
        state = _resume(resume_path, stamp, loop, live)
    for epoch in range(state.epoch, cfg.epochs):
        started = time.perf_counter()
        train_loss = loop.epoch(epoch)
        figures = _agreed({"epoch": epoch, "train_loss": train_loss,
                           **evaluate_split(model, val, cells, loop.device)}, dist)
        state.history.append(figures)
        _log_epoch(live, figures, dist)
        if dist.main:
            size = loop.size(epoch)
            log.info("epoch %d (%s): loss %.3f, val accuracy %.3f, val median %.2f km "
                     "(%.1f s)", epoch, "features" if size is None else f"{size} px", train_loss,
                     figures["val_accuracy"],
                     figures["val_median_km"], time.perf_counter() - started)
        if state.best is None or figures["val_median_km"] < state.best["val_median_km"]:
            state.best, state.stale = figures, 0
            state.best_state = copy.deepcopy(trained.state_dict())
        else:
            state.stale += 1
        state.epoch = epoch + 1
        if dist.main and resume_path is not None:
            save_resume(resume_path, stamp, loop, state)
        if state.stale >= cfg.patience:
            log.info("early stop: no better val median km for %d epochs", cfg.patience)
            break
    trained.load_state_dict(state.best_state)
    model.to("cpu", memory_format=torch.contiguous_format)
    return {"best_epoch": state.best["epoch"], "epochs_run": state.epoch,
            "device": loop.device.type, "precision": loop.precision,
            **{k: v for k, v in state.best.items() if k != "epoch"}}


class TrainLoop:
    """What training epochs need on the training device: the batches that come to it, the
    model's step, AdamW and its schedule. `fit` adds validation, early stopping and checkpoints
    around it; bench/train.py times it alone."""

    def __init__(self, model: GeoNet, train: dict[int, CachedSplit] | FeatureSplit,
                 cells: pd.DataFrame, cfg: TrainParams, loss_cfg: LossParams,
                 dist: Dist | None = None):
        self.model, self.dist, self.seed = model, dist or Dist(), cfg.seed
        self.device = pick_device()
        self.precision = resolve_precision(cfg.precision, self.device)
        model.to(self.device)
        if self.device.type == "cuda":
            # Every backbone is convolutional: NHWC weights let cuDNN take its fastest kernels,
            # and the uint8 batches are NHWC already.
            model.to(memory_format=torch.channels_last)
        self.criterion = build_loss(loss_cfg, cells).to(self.device)
        if model.frozen:
            self.batches, self.sizes = _FeatureBatches(train, cfg, self.dist, self.device), [None]
        else:
            self.batches = _ImageBatches(train, cfg, self.dist, self.device)
            self.sizes = list(train)
        self.multiscale, self.grad_clip = cfg.multiscale, cfg.grad_clip
        self.outputs = _Outputs(model)
        if self.dist.world > 1:
            self.outputs = nn.parallel.DistributedDataParallel(self.outputs)
        if cfg.compile:
            self.outputs = torch.compile(self.outputs)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
        steps = self.batches.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _warmup_cosine(round(cfg.warmup_epochs * steps), cfg.epochs * steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def size(self, epoch: int) -> int | None:
        """The image size of the epoch (None: features)."""
        return self.sizes[epoch % len(self.sizes)] if self.multiscale else self.sizes[0]

    def epoch(self, epoch: int) -> float:
        """Train one epoch, in its own order and with its own draws; its mean loss."""
        batches = self.batches.of_epoch(epoch, self.size(epoch))
        return self.steps(batches, self.batches.steps_per_epoch, epoch)

    def steps(self, batches, count: int, epoch: int) -> float:
        """A step on each (inputs, labels, points) batch, already on the device; the mean
        loss. The loss adds up on the device: reading it each step would make the host wait
        for the device every step."""
        torch.manual_seed(_epoch_seed(self.seed, epoch, 2) + 7 * self.dist.rank)   # dropout
        self.model.train()
        dtype = PRECISIONS[self.precision]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        images = 0
        for inputs, labels, points in tqdm(batches, total=count, desc=f"epoch {epoch}",
                                           unit="batch", leave=False, mininterval=2):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                logits, offsets = self.outputs(inputs)
            loss, _ = self.criterion(logits.float(), labels, points,
                                     None if offsets is None else offsets.float(),
                                     self.model.head_weight)
            self.scaler.scale(loss).backward()
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)   # clip the true gradients, not scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.detach().double() * len(labels)
            images += len(labels)
        return total.item() / max(images, 1)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on the weights of rank 2 and more (convolutions, linear
    layers), none on biases and normalisation scales, which decay would only pull towards zero
    (as torchvision's and nanoGPT's training scripts do). Frozen parameters are left out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trained if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}]


def _agreed(figures: dict, dist: Dist) -> dict:
    """Rank 0's figures, on every rank. Each rank's BatchNorm statistics follow its own last
    batches, so their val figures can differ in the last digits; early stopping on those would
    let one rank leave while another waits in a collective step."""
    if dist.world == 1:
        return figures
    shared = [figures]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch) * 8 + stream


def _to(device: torch.device, batch: tuple) -> tuple:
    # Without blocking: on CUDA the loader's batches are in pinned memory, so the copy runs
    # beside the host's work on the next batch (from pageable memory it is merely staged).
    return tuple(t.to(device, non_blocking=True) for t in batch)


class _ImageBatches:
    """Batches of cached images at the epoch's size, moved to the training device and
    augmented there. The augmentation's draws come from a CPU generator seeded per epoch, so
    they are the same on every device, and a resumed run makes the same ones."""

    def __init__(self, train: dict[int, CachedSplit], cfg: TrainParams, dist: Dist,
                 device: torch.device = CPU):
        self.device = device
        self.generator = torch.Generator()
        self.loaders = {size: cache_loader(split, cfg.batch_size, shuffle=True,
                                           generator=self.generator, workers=cfg.workers,
                                           rank=dist.rank, world=dist.world)
                        for size, split in train.items()}
        self.augment = BatchAugment().to(device) if cfg.augment else None
        self.augment_generator = torch.Generator()
        self.seed, self.rank = cfg.seed, dist.rank
        self.steps_per_epoch = len(next(iter(self.loaders.values())))

    def of_epoch(self, epoch: int, size: int):
        # The order is one for all ranks (each takes its share); crops differ per rank.
        self.generator.manual_seed(_epoch_seed(self.seed, epoch, 0))
        self.augment_generator.manual_seed(_epoch_seed(self.seed, epoch, 1) + 7 * self.rank)
        for batch in self.loaders[size]:
            images, labels, points = _to(self.device, batch)
            if self.augment is not None:
                images = self.augment(images, self.augment_generator)
            yield images, labels, points


class _FeatureBatches:
    """With a frozen backbone: the features stage's features of the train images (no
    augmentation: they are computed once), served in shuffled batches. Under DDP every rank
    gets as many batches (the order is padded by wrapping), as the image batches do."""

    def __init__(self, train: FeatureSplit, cfg: TrainParams, dist: Dist,
                 device: torch.device = CPU):
        self.device = device
        rows = train.rows
        # On the device once (a few hundred MB at 100k photos), so a batch is an index there.
        self.features, self.labels, self.points = _to(device, (
            torch.from_numpy(np.array(train.features[rows["feature_row"]])),
            torch.tensor(rows["label"].to_numpy()),
            torch.tensor(rows[["lat", "lon"]].to_numpy(np.float32))))
        self.batch_size, self.seed, self.dist = cfg.batch_size, cfg.seed, dist
        self.share = -(-len(self.labels) // dist.world)
        self.steps_per_epoch = -(-self.share // self.batch_size)

    def of_epoch(self, epoch: int, size: None):
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch, 0))
        order = torch.randperm(len(self.labels), generator=generator)
        order = torch.cat([order, order[:self.share * self.dist.world - len(order)]])
        order = order[self.dist.rank::self.dist.world].to(self.device)
        for start in range(0, len(order), self.batch_size):
            take = order[start:start + self.batch_size]
            yield self.features[take], self.labels[take], self.points[take]


class _Outputs(nn.Module):
    """What a training step calls: the model's (logits, offsets) from images, or from features
    when the backbone is frozen. A module of its own so DDP can wrap it."""

    def __init__(self, model: GeoNet):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):
        if self.model.frozen:
            return self.model.head_forward(inputs)
        return self.model.forward_train(inputs)


def evaluate_split(model: GeoNet, split: CachedSplit | FeatureSplit, cells: pd.DataFrame,
                   device=None) -> dict:
    """Validation figures, from the split's images or, for a frozen backbone, its features."""
    logits, offsets = split_outputs(model, split, device)
    rows = split.rows
    labels = rows["label"].to_numpy()
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(labels))
    errors = errors_km(logits, offsets, cells, rows)
    return {"val_loss": float(loss), "val_accuracy": float(np.mean(logits.argmax(1) == labels)),
            "val_median_km": float(np.median(errors))}


def _log_epoch(live, figures: dict, dist: Dist) -> None:
    if not dist.main:
        return
    for name, value in figures.items():
        if name != "epoch":
            live.log_metric(name, value)
    live.next_step()


def save_resume(path: Path, stamp: str, loop: TrainLoop, state: State) -> None:
    checkpoint = {"fingerprint": stamp, "model": loop.model.state_dict(),
                  "optimizer": loop.optimizer.state_dict(),
                  "scheduler": loop.scheduler.state_dict(), "scaler": loop.scaler.state_dict(),
                  "state": state.__dict__}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def _resume(path: Path, stamp: str, loop: TrainLoop, live) -> State:
    """The state saved after the last finished epoch, when it was written for this very run;
    a checkpoint of other params, data or cells is refused (and left for its own run)."""
    if not path.exists():
        return State()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("fingerprint") != stamp:
        log.warning("not resuming from %s: it was written for other params, data or cells; "
                    "training from the start", path)
        return State()
    loop.model.load_state_dict(checkpoint["model"])
    loop.optimizer.load_state_dict(checkpoint["optimizer"])
    loop.scheduler.load_state_dict(checkpoint["scheduler"])
    loop.scaler.load_state_dict(checkpoint["scaler"])
    state = State(**checkpoint["state"])
    for figures in state.history:   # DVC removed the metrics of the killed run: replay them
        _log_epoch(live, figures, Dist())
    log.info("resuming from %s after epoch %d", path, state.epoch - 1)
    return state
