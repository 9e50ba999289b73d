"""The training loop: AdamW, cosine decay, early stopping on validation median km."""

from __future__ import annotations

import copy
import logging
import random
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from geoloc.data.augment import BatchAugment
from geoloc.data.cache import CachedSplit
from geoloc.data.loader import cache_loader
from geoloc.inference import errors_km, predict_logits
from geoloc.models import GeoNet
from geoloc.params import LossParams, TrainParams

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def fit(model: GeoNet, train: CachedSplit, val: CachedSplit, cells: pd.DataFrame,
        cfg: TrainParams, loss_cfg: LossParams, live) -> dict:
    """Train in place and load the best epoch's weights back; returns that epoch's figures.

    `live` is a DVCLive Live (or anything with log_metric and next_step).
    """
    seed_everything(cfg.seed)
    loader = cache_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                          workers=cfg.workers)
    augment = BatchAugment() if cfg.augment else None
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * len(loader))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=loss_cfg.label_smoothing)

    best, best_state, stale = None, None, 0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        train_loss = _train_epoch(model, loader, augment, generator, optimizer, scheduler,
                                  criterion, epoch)
        figures = {"epoch": epoch, "train_loss": train_loss, **evaluate_split(model, val, cells)}
        for name, value in figures.items():
            if name != "epoch":
                live.log_metric(name, value)
        live.next_step()
        log.info("epoch %d: loss %.3f, val accuracy %.3f, val median %.2f km (%.1f s)", epoch,
                 train_loss, figures["val_accuracy"], figures["val_median_km"],
                 time.perf_counter() - start)
        if best is None or figures["val_median_km"] < best["val_median_km"]:
            best, best_state, stale = figures, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stop: no better val median km for %d epochs", cfg.patience)
                break
    model.load_state_dict(best_state)
    return {"best_epoch": best["epoch"], "epochs_run": epoch + 1,
            **{k: v for k, v in best.items() if k != "epoch"}}


def _train_epoch(model, loader, augment, generator, optimizer, scheduler, criterion,
                 epoch: int) -> float:
    model.train()
    total, count = 0.0, 0
    for images, labels in tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False,
                               mininterval=2):
        if augment is not None:
            images = augment(images, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / count


def evaluate_split(model: GeoNet, split: CachedSplit, cells: pd.DataFrame) -> dict:
    logits = predict_logits(model, split.images, split.rows["cache_row"])
    labels = split.rows["label"].to_numpy()
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    errors = errors_km(logits, cells, split.rows)
    return {"val_loss": float(loss), "val_accuracy": float(np.mean(logits.argmax(1) == labels)),
            "val_median_km": float(np.median(errors))}
