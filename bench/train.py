"""Training speed (`make bench`, metrics/bench.json): for each architecture, image size and
precision the device runs, in images per second,

- step: the model alone, forward, backward and AdamW on random uint8 batches already on the
  device (TrainLoop.steps);
- loop: whole epochs of the training loop (TrainLoop.epoch) over a memory-mapped cache this
  script writes where it runs (random pixels in the resize cache's layout, read back through
  load_cache): loader, transfer, augmentation on the device, step. The first epoch warms up
  (cuDNN's choices, torch.compile, the page cache) and is not counted;
- val and checkpoint, timed apart as the train stage runs them after each epoch: validation
  over the same cache (evaluate_split, in fp32 whatever the training precision) and the
  resume checkpoint (save_resume, with the best epoch's copy of the weights).

Everything else comes from params.yaml (model head, loss, train); the backbones start from
random weights (the speed is the same as pretrained). It needs the library only, not DVC or
DVCLive, so a bare GPU machine runs it as one command:

    python bench/train.py                     # every arch at 64 and 224 px
    python bench/train.py --archs efficientnet_lite0 --sizes 224 --precisions bf16 --compile
    python bench/train.py --archs cnn --sizes 32 --images 64 --batch-size 16 --steps 2  # tiny

Keys: train_{step,loop}_<arch>_<size>px_<precision>[_compile][_fast]_images_per_s,
train_loop_over_step_<...>, train_val_<arch>_<size>px_images_per_s and
train_checkpoint_<arch>_<size>px_seconds; _fast marks runs with train.deterministic off.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record  # noqa: E402

from geoloc.choices import ARCHS  # noqa: E402
from geoloc.data.cache import cache_path, ids_digest, load_cache, write_cache_index  # noqa: E402
from geoloc.models import build_model  # noqa: E402
from geoloc.params import load_params  # noqa: E402
from geoloc.train import (  # noqa: E402
    State,
    TrainLoop,
    evaluate_split,
    pick_device,
    resolve_precision,
    save_resume,
    seed_everything,
)

CELLS = 60          # about the default world's number of cells
WARMUP_STEPS = 3
# What a run on each kind of device measures by default: a GPU's figures need large batches
# and many of them; a CPU's take seconds each at these.
DEFAULTS = {"cuda": {"batch_size": 128, "images": 4096, "steps": 30},
            "cpu": {"batch_size": 32, "images": 128, "steps": 8}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"),
                        help="default: every one the device runs")
    parser.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 32 on a CPU")
    parser.add_argument("--images", type=int,
                        help="images in the loop's cache, an epoch (default: 4096 on CUDA, "
                             "128 on a CPU)")
    parser.add_argument("--steps", type=int, help="timed model-only steps (default: 30 on "
                                                  "CUDA, 8 on a CPU)")
    parser.add_argument("--epochs", type=int, default=2, help="timed loop epochs")
    parser.add_argument("--workers", type=int, help="loader processes (default: train.workers)")
    parser.add_argument("--compile", action="store_true", help="train.compile on")
    parser.add_argument("--fast", action="store_true", help="train.deterministic off")
    args = parser.parse_args()
    device = pick_device()
    for key, value in DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    precisions = args.precisions or device_precisions(device)

    params = load_params(ROOT / "params.yaml")
    figures = {"train_bench_device": device_name(device), "train_bench_torch": torch.__version__,
               "train_bench_batch_size": args.batch_size, "train_bench_images": args.images}
    suffix = "_compile" * args.compile + "_fast" * args.fast
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            cache, cells = write_random_cache(Path(tmp), args.images, size)
            for arch in args.archs:
                for precision in precisions:
                    name = f"{arch}_{size}px_{precision}{suffix}"
                    print(f"{name} ...", file=sys.stderr, flush=True)
                    measured = measure(params, arch, precision, cache, cells, args, Path(tmp))
                    figures.update({f"train_step_{name}_images_per_s": measured["step"],
                                    f"train_loop_{name}_images_per_s": measured["loop"],
                                    f"train_loop_over_step_{name}":
                                        measured["loop"] / measured["step"]})
                figures[f"train_val_{arch}_{size}px_images_per_s"] = measured["val"]
                figures[f"train_checkpoint_{arch}_{size}px_seconds"] = measured["checkpoint"]
    record(args.out, figures)


def device_precisions(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["fp32", "bf16"]
    # bf16 where training's `auto` would take it: native, not emulated.
    return ["fp32", *(["bf16"] if resolve_precision("auto", device) == "bf16" else []), "fp16"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def write_random_cache(folder: Path, images: int, size: int):
    """A train split of random pixels, written as the resize_cache stage writes one and read
    back through load_cache (a memory map); and a class table of CELLS cells for it."""
    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"label": np.arange(CELLS), "cell": [f"c{i}" for i in range(CELLS)],
                          "resolution": 7, "lat": rng.uniform(43, 50, CELLS),
                          "lon": rng.uniform(-1, 7, CELLS),
                          "parents": [[] for _ in range(CELLS)],
                          "neighbours": [[] for _ in range(CELLS)]})
    labels = np.arange(images) % CELLS
    rows = pd.DataFrame({"image_id": [f"b{i:07d}" for i in range(images)], "label": labels,
                         "lat": cells["lat"].to_numpy()[labels],
                         "lon": cells["lon"].to_numpy()[labels]})
    out = folder / f"cache_{size}"
    out.mkdir()
    array = np.lib.format.open_memmap(cache_path(out, "train", size), mode="w+", dtype=np.uint8,
                                      shape=(images, size, size, 3))
    for start in range(0, images, 256):
        array[start:start + 256] = rng.integers(0, 256, array[start:start + 256].shape,
                                                dtype=np.uint8)
    array.flush()
    del array
    write_cache_index({"train": {"rows": images, "ids_sha256": ids_digest(rows),
                                 "sizes": [size], "skipped": []}}, out)
    return load_cache(out, "train", size, rows), cells


def measure(params, arch: str, precision: str, cache, cells: pd.DataFrame, args,
            tmp: Path) -> dict:
    """Images per second of the model alone, of the loop, of validation; checkpoint seconds."""
    size = cache.images.shape[1]
    cfg = replace(params.train, batch_size=args.batch_size, precision=precision,
                  compile=args.compile, deterministic=not args.fast, epochs=args.epochs + 1,
                  workers=params.train.workers if args.workers is None else args.workers,
                  multiscale=False, resume=False)
    seed_everything(0, cfg.deterministic)
    # Each configuration compiles afresh: past its recompile limit dynamo would run the
    # model eagerly and the figure would not be compile's.
    torch._dynamo.reset()
    model = build_model(replace(params.model, arch=arch, pretrained=False, weights_path=None,
                                freeze_backbone=False), CELLS)
    loop = TrainLoop(model, {size: cache}, cells, cfg, params.loss)
    batch = (torch.randint(0, 256, (args.batch_size, size, size, 3), dtype=torch.uint8),
             torch.randint(0, CELLS, (args.batch_size,)),
             torch.zeros(args.batch_size, 2))
    batch = tuple(t.to(loop.device) for t in batch)
    loop.steps([batch] * WARMUP_STEPS, WARMUP_STEPS, 0)
    step = timed(lambda: loop.steps([batch] * args.steps, args.steps, 0))
    loop.epoch(0)
    epochs = [timed(lambda e=e: loop.epoch(e)) for e in range(1, args.epochs + 1)]
    evaluate_split(model, cache, cells, loop.device)       # warm-up: its shapes, its kernels
    val = timed(lambda: evaluate_split(model, cache, cells, loop.device))
    state = State(best_state=copy.deepcopy(model.state_dict()))
    checkpoint = timed(lambda: save_resume(tmp / "last.pt", "", loop, state))
    images = len(cache.rows)
    return {"step": args.steps * args.batch_size / step,
            "loop": images / statistics.median(epochs),
            "val": images / val, "checkpoint": checkpoint}


def timed(work) -> float:
    """Seconds `work` takes, the device's queue drained before and after."""
    synchronize()
    started = time.perf_counter()
    work()
    synchronize()
    return time.perf_counter() - started


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
