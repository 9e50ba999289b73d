"""Benchmark the data path against what a user would write by default (metrics/bench.json).

The source images are what the fetch stage downloads from Mapillary by default, 1024 px on the
long side, rendered by the synthetic world. Measured:
- the cache build with draft decoding and with a plain full decode (same pool of processes),
  each in a fresh process, with its peak memory; and the draft build again on twice the rows;
- the cached loader (memory-mapped batches + batch augmentation) against a torch Dataset that
  opens, crops and resizes each JPEG per item as an ImageFolder pipeline does, with the same
  size, batch and workers;
- the baseline CNN's training step on CPU, which the loader has to keep fed.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process import run_measured  # noqa: E402
from results import record  # noqa: E402

from geoloc.data.augment import BatchAugment  # noqa: E402
from geoloc.data.cache import load_cache  # noqa: E402
from geoloc.data.cities import load_cities  # noqa: E402
from geoloc.data.loader import cache_loader  # noqa: E402
from geoloc.models import build_model  # noqa: E402
from geoloc.params import load_params  # noqa: E402
from geoloc.sources import synthetic  # noqa: E402
from geoloc.sources.run import DiskBudget, FetchRun  # noqa: E402

SOURCE_SIZE = 1024   # thumb_1024_url, the fetch stage's default download
FRAMES_PER_DRIVE = 8


def render_benchmark_set(folder: Path, images: int) -> pd.DataFrame:
    """`images` synthetic photos of 1024 px: rows with image_id, label, lat, lon and path
    (under folder)."""
    cities = load_cities(ROOT / "data/cities.csv").head(10)
    drives = math.ceil(images / FRAMES_PER_DRIVE / len(cities))
    cfg = dict(seed=0, sequences_per_city=drives, frames_min=FRAMES_PER_DRIVE,
               frames_max=FRAMES_PER_DRIVE, image_size=SOURCE_SIZE, jpeg_quality=90,
               panorama_share=0.0, workers=None)
    store = folder / "downloads"
    run = FetchRun("bench", folder / "bench", store, DiskBudget(store, 100.0),
                   load_params(ROOT / "params.yaml").panoramas)
    manifest = synthetic.fetch(cities, argparse.Namespace(**cfg), run).head(images)
    codes = pd.factorize(manifest["city"], sort=True)[0]
    return pd.DataFrame({"image_id": manifest["image_id"], "label": codes,
                         "lat": manifest["lat"], "lon": manifest["lon"],
                         "path": "bench/" + manifest["path"]})


def timed_build(rows_file: Path, raw: Path, out: Path, size: int, workers: int,
                draft: bool) -> dict:
    """Build in a fresh process (bench/cache_build.py), with the peak memory of it and its
    workers together."""
    command = [sys.executable, str(Path(__file__).with_name("cache_build.py")), str(rows_file),
               str(raw), str(out), str(size), str(workers), "1" if draft else "0"]
    measured = run_measured(command)
    return {**json.loads(measured.stdout.strip().splitlines()[-1]),
            "peak_rss_mb": measured.peak_mb}


class JpegFiles(Dataset):
    """The default pipeline: open each JPEG, random-resized-crop it to size, jitter colours."""

    def __init__(self, raw: Path, rows: pd.DataFrame, size: int):
        self.paths = [raw / p for p in rows["path"]]
        self.labels = rows["label"].to_numpy()
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25)),
            transforms.ColorJitter(0.3, 0.3, 0.3),
            transforms.PILToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def images_per_second(batches, augment=None, epochs: int = 2) -> float:
    """Images per second over the epochs after a first one (which starts the workers)."""
    generator = torch.Generator().manual_seed(0)
    count, started = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:
            count, started = 0, time.perf_counter()
        for images, *_ in batches:
            if augment is not None:
                images = augment(images, generator)
            count += len(images)
    return count / (time.perf_counter() - started)


def train_step_images_per_s(size: int, batch_size: int, steps: int = 30) -> float:
    """The baseline CNN's forward, backward and AdamW step on batches already in memory."""
    params = load_params(ROOT / "params.yaml")
    torch.manual_seed(0)
    model = build_model(params.model, 60)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 60, (batch_size,))
    model.train()
    for step in range(steps + 5):
        if step == 5:  # after warm-up
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def measure(tmp: Path, rows: pd.DataFrame, size: int, workers: int, batch_size: int) -> dict:
    """Every figure at one cache size, over the benchmark set in tmp."""
    builds = {name: timed_build(tmp / file, tmp, tmp / f"{name}_{size}", size, workers, draft)
              for name, file, draft in (("plain", "rows.parquet", False),
                                        ("draft", "rows.parquet", True),
                                        ("doubled", "doubled.parquet", True))}
    cached = load_cache(tmp / f"draft_{size}", "train", size, rows)
    loader = cache_loader(cached, batch_size, shuffle=True, generator=torch.Generator(),
                          workers=workers)
    loader_cached = images_per_second(loader, BatchAugment())
    plain = DataLoader(JpegFiles(tmp, rows, size), batch_size=batch_size, shuffle=True,
                       num_workers=workers, persistent_workers=workers > 0)
    loader_plain = images_per_second(plain, epochs=1)
    train_step = train_step_images_per_s(size, batch_size)
    return {
        "cache_build_images_per_s": builds["draft"]["images_per_s"],
        "cache_build_plain_images_per_s": builds["plain"]["images_per_s"],
        "cache_build_speedup": builds["draft"]["images_per_s"] / builds["plain"]["images_per_s"],
        "cache_build_peak_rss_mb": builds["draft"]["peak_rss_mb"],
        "cache_build_peak_rss_mb_doubled": builds["doubled"]["peak_rss_mb"],
        "cache_build_builder_peak_rss_mb": builds["draft"]["builder_peak_rss_mb"],
        "cache_build_builder_peak_rss_mb_doubled": builds["doubled"]["builder_peak_rss_mb"],
        "loader_cached_images_per_s": loader_cached,
        "loader_plain_images_per_s": loader_plain,
        "loader_speedup": loader_cached / loader_plain,
        "train_step_images_per_s": train_step,
        "loader_cached_over_train_step": loader_cached / train_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="build and loader processes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="cache sizes (default: cache.sizes, then 224); figures of the "
                             "first get plain keys, the others a _<size> suffix")
    args = parser.parse_args()
    first = load_params(ROOT / "params.yaml").cache.sizes[0]
    sizes = args.sizes or sorted({first, 224}, key=lambda s: s != first)

    figures = {"data_bench_images": args.images, "data_bench_source_px": SOURCE_SIZE,
               "data_bench_cache_size": sizes[0], "data_bench_workers": args.workers,
               "data_bench_batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"rendering {args.images} photos of {SOURCE_SIZE} px ...", file=sys.stderr)
        rows = render_benchmark_set(tmp, args.images)
        rows.to_parquet(tmp / "rows.parquet")
        # Twice the rows (each photo twice): does the build's memory grow with the dataset?
        doubled = pd.concat([rows, rows.assign(image_id=rows["image_id"] + "b")])
        doubled.to_parquet(tmp / "doubled.parquet")
        for size in sizes:
            suffix = "" if size == sizes[0] else f"_{size}"
            measured = measure(tmp, rows, size, args.workers, args.batch_size)
            figures.update({f"{key}{suffix}": value for key, value in measured.items()})
    record(args.out, figures)


if __name__ == "__main__":
    main()
