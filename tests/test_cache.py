"""The resize cache, its loader and batch augmentation: real JPEGs, real memory maps, real
worker processes."""

import pickle
import time
from multiprocessing.pool import ThreadPool

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geoloc.data.augment import BatchAugment
from geoloc.data.cache import (
    CHUNK,
    CacheError,
    _ahead,
    build_cache,
    cache_path,
    load_cache,
    write_cache_index,
)
from geoloc.data.loader import CacheBatches, cache_loader
from geoloc.data.preprocess import read_squares, to_square


def photo(path, width=160, height=120, seed=0):
    """A JPEG with structure at several scales, so resizing mistakes show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture
def raw(tmp_path):
    """Twelve photos in raw/b/images, one of them truncated and one not a JPEG at all."""
    images = tmp_path / "raw/b/images"
    images.mkdir(parents=True)
    rows = []
    for i in range(12):
        photo(images / f"{i:02d}.jpg", seed=i)
        rows.append({"image_id": f"{i:02d}", "path": f"b/images/{i:02d}.jpg", "label": i % 3,
                     "lat": 45.0 + i / 100, "lon": 5.0})
    data = (images / "04.jpg").read_bytes()
    (images / "04.jpg").write_bytes(data[: len(data) // 3])
    (images / "09.jpg").write_text("not a photo")
    return tmp_path / "raw", pd.DataFrame(rows)


def build(raw_dir, rows, out, sizes=(32,), workers=1, draft=True):
    out.mkdir(parents=True, exist_ok=True)
    entry = build_cache(rows, raw_dir, list(sizes), out, "train", workers, draft)
    write_cache_index({"train": entry}, out)
    return entry


def test_corrupt_images_are_skipped_listed_and_never_read(raw, tmp_path):
    raw_dir, rows = raw
    entry = build(raw_dir, rows, tmp_path / "cache")
    assert [(s["row"], s["image_id"]) for s in entry["skipped"]] == [(4, "04"), (9, "09")]
    assert "OSError" in entry["skipped"][0]["error"]
    cached = load_cache(tmp_path / "cache", "train", 32, rows)
    assert cached.images.shape == (12, 32, 32, 3)
    assert cached.rows["image_id"].tolist() == [f"{i:02d}" for i in range(12) if i not in (4, 9)]
    for row in cached.rows.itertuples():
        (expected,) = read_squares(raw_dir / row.path, (32,))
        assert np.array_equal(cached.images[row.cache_row], expected)
    assert not cached.images[4].any() and not cached.images[9].any()


def test_the_build_is_deterministic_and_the_same_with_a_process_pool(raw, tmp_path):
    raw_dir, rows = raw
    build(raw_dir, rows, tmp_path / "one", sizes=(32, 48), workers=1)
    build(raw_dir, rows, tmp_path / "two", sizes=(32, 48), workers=2)
    build(raw_dir, rows, tmp_path / "alone", sizes=(48,), workers=2)
    for size in (32, 48):
        assert cache_path(tmp_path / "one", "train", size).read_bytes() == \
            cache_path(tmp_path / "two", "train", size).read_bytes()
    # a size's pixels do not depend on the other sizes cached with it
    assert cache_path(tmp_path / "one", "train", 48).read_bytes() == \
        cache_path(tmp_path / "alone", "train", 48).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "cache.json", "train_32.npy", "train_48.npy"]


def test_decoding_runs_a_bounded_number_of_chunks_ahead_of_a_slow_consumer():
    """The decoders never hold more than `chunks_ahead` chunks beyond what the consumer took,
    however slow it is (Pool.imap would decode everything ahead and hold it in memory)."""
    started = []

    def decode_chunk(paths):
        started.append(paths[0])
        return list(paths)

    paths = [str(i) for i in range(40 * CHUNK)]
    with ThreadPool(2) as pool:
        for i, path in enumerate(_ahead(pool, decode_chunk, paths, chunks_ahead=3)):
            assert path == paths[i]
            assert len(started) <= i // CHUNK + 3
            time.sleep(0.0005)
    assert len(started) == 40


def test_draft_decoding_stays_close_to_a_full_decode(tmp_path):
    photo(tmp_path / "big.jpg", width=1024, height=768)
    with Image.open(tmp_path / "big.jpg") as image:
        drafted = to_square(image, 64)
    with Image.open(tmp_path / "big.jpg") as image:
        image.draft("RGB", (64, 64))
        assert image.size == (128, 96)   # the decoder really scaled by 1/8
    with Image.open(tmp_path / "big.jpg") as image:
        full = to_square(image, 64, draft=False)
    assert not np.array_equal(drafted, full)
    assert np.abs(drafted.astype(int) - full).mean() < 4


@pytest.mark.parametrize("damage", ["stale", "reordered", "missing size", "truncated",
                                    "wrong shape", "no index"])
def test_a_cache_that_does_not_match_its_split_is_refused(raw, tmp_path, damage):
    raw_dir, rows = raw
    build(raw_dir, rows, tmp_path / "cache")
    size, message = 32, {"stale": "stale", "reordered": "stale", "missing size": "no train",
                         "truncated": "truncated", "wrong shape": "expected uint8",
                         "no index": "cache.json not found"}[damage]
    path = cache_path(tmp_path / "cache", "train", 32)
    if damage == "stale":
        rows = rows.assign(image_id=rows["image_id"].where(rows.index != 3, "new"))
    elif damage == "reordered":
        rows = rows.iloc[::-1].reset_index(drop=True)
    elif damage == "missing size":
        size = 48
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "wrong shape":
        np.save(path, np.zeros((12, 32, 32, 4), dtype=np.uint8))
    else:
        (tmp_path / "cache/cache.json").unlink()
    with pytest.raises(CacheError, match=message):
        load_cache(tmp_path / "cache", "train", size, rows)


def test_the_loader_reads_every_usable_row_once_per_epoch_with_or_without_workers(raw, tmp_path):
    raw_dir, rows = raw
    build(raw_dir, rows, tmp_path / "cache")
    cached = load_cache(tmp_path / "cache", "train", 32, rows)
    seen = {}
    for workers in (0, 2):
        loader = cache_loader(cached, batch_size=4, shuffle=True,
                              generator=torch.Generator().manual_seed(1), workers=workers)
        assert loader.persistent_workers == (workers > 0)
        for _ in range(2):   # a second epoch through the same (persistent) workers
            batches = list(loader)
            images = torch.cat([b[0] for b in batches])
            labels = torch.cat([b[1] for b in batches])
            points = torch.cat([b[2] for b in batches])
            assert torch.allclose(points[:, 0], 45.0 + labels_to_rows(cached, images) / 100)
            assert images.dtype == torch.uint8 and images.shape == (10, 32, 32, 3)
            by_label = sorted(zip(labels.tolist(), images.sum((1, 2, 3)).tolist(), strict=True))
            seen.setdefault("epoch", by_label)
            assert by_label == seen["epoch"]
    expected = sorted(zip(cached.rows["label"], [int(cached.images[r].sum())
                                                 for r in cached.rows["cache_row"]],
                          strict=True))
    assert seen["epoch"] == expected


def labels_to_rows(cached, images: torch.Tensor) -> torch.Tensor:
    """The cache row of each image in a batch, found by its pixels."""
    rows = [next(r for r in cached.rows["cache_row"] if np.array_equal(cached.images[r], image))
            for image in images.numpy()]
    return torch.tensor(rows, dtype=torch.float32)


def test_a_worker_gets_the_path_of_the_memory_map_not_a_copy(raw, tmp_path):
    raw_dir, rows = raw
    build(raw_dir, rows, tmp_path / "cache")
    cached = load_cache(tmp_path / "cache", "train", 32, rows)
    dataset = CacheBatches(cached.images, cached.rows["cache_row"], cached.rows["label"],
                           cached.rows[["lat", "lon"]].to_numpy())
    sent = pickle.dumps(dataset)
    assert len(sent) < 2000 < cached.images.nbytes
    images, labels, _ = pickle.loads(sent)[[0, 5, 2]]
    assert sorted(labels.tolist()) == sorted(cached.rows["label"].iloc[[0, 5, 2]].tolist())
    assert images.shape == (3, 32, 32, 3) and images.dtype == torch.uint8


def test_batch_augmentation_is_per_image_deterministic_and_exact_when_neutral():
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    neutral = BatchAugment(scale=(1, 1), ratio=(1, 1), brightness=0, contrast=0, saturation=0)
    out = neutral(batch, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert torch.allclose(out, batch.float(), atol=1e-3)

    augment = BatchAugment()
    same = batch[:1].expand(6, -1, -1, -1)
    first = augment(same, torch.Generator().manual_seed(3))
    again = augment(same, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert 0 <= first.min() and first.max() <= 255
    # one random crop and colour per image, not one for the batch
    assert all(not torch.allclose(first[0], first[i]) for i in range(1, 6))


def test_a_quarter_area_crop_magnifies_twice():
    """`scale` is the crop's share of the area, not of the side: a quarter of the area is half
    the width, so vertical stripes seen through it come out twice as wide."""
    x = (np.arange(32) // 2 % 2 * 255).astype(np.uint8)           # stripes 2 px wide
    batch = torch.from_numpy(np.broadcast_to(x[None, :, None], (32, 32, 3)).copy())[None]
    zoom = BatchAugment(scale=(0.25, 0.25), ratio=(1, 1), brightness=0, contrast=0,
                        saturation=0)
    row = zoom(batch, torch.Generator().manual_seed(0))[0, 16, :, 0]
    edges = int((torch.diff((row > 127).int()) != 0).sum())
    assert 6 <= edges <= 8   # 15 edges across the whole image, about 7 in half its width
