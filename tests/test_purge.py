"""geoloc purge counts a JPEG once however many hard links it has, removes every link, and
refuses a batch whose images the resize cache does not hold: decided by the real index, splits
and cache, as the stages write them."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoloc import purge
from geoloc.data.cache import build_cache, write_cache_index
from geoloc.data.splits import SPLITS


def jpeg(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)


def indexed(tmp_path, rows: pd.DataFrame, split_of: dict[str, str]) -> dict:
    """The index of `rows`, splits of the batches `split_of` names (batch -> split), and the
    resize cache of every split at 16 px."""
    (tmp_path / "index").mkdir()
    rows.to_parquet(tmp_path / "index/images.parquet")
    pd.DataFrame({"label": [0], "cell": ["851f91dbfffffff"]}).to_parquet(
        tmp_path / "index/cells.parquet")
    (tmp_path / "splits").mkdir()
    for split in SPLITS:
        rows[rows["batch"].map(split_of) == split].to_parquet(
            tmp_path / f"splits/{split}.parquet")
    (tmp_path / "cache").mkdir()
    write_cache_index({split: build_cache(pd.read_parquet(tmp_path / f"splits/{split}.parquet"),
                                          tmp_path / "raw", [16], tmp_path / "cache", split,
                                          workers=1)
                       for split in SPLITS}, tmp_path / "cache")
    return dict(raw=tmp_path / "raw", index=tmp_path / "index", splits=tmp_path / "splits",
                cache=tmp_path / "cache", sizes=[16], dvc_cache=None,
                lock=tmp_path / "dvc.lock")


@pytest.fixture
def photos(tmp_path) -> pd.DataFrame:
    """batch01: 123.jpg (hard-linked from the download store) and 456.jpg; batch02: 789.jpg."""
    store = tmp_path / "downloads/mapillary/images/thumb_1024_url/23"
    jpeg(store / "123.jpg", 1)
    (tmp_path / "raw/batch01/images").mkdir(parents=True)
    os.link(store / "123.jpg", tmp_path / "raw/batch01/images/123.jpg")
    jpeg(tmp_path / "raw/batch01/images/456.jpg", 2)      # copied, not linked
    jpeg(tmp_path / "raw/batch02/images/789.jpg", 3)
    return pd.DataFrame({"image_id": ["123", "456", "789"],
                         "batch": ["batch01", "batch01", "batch02"],
                         "path": ["batch01/images/123.jpg", "batch01/images/456.jpg",
                                  "batch02/images/789.jpg"]})


def test_hard_links_are_counted_once_and_all_removed(tmp_path, photos):
    paths = indexed(tmp_path, photos, {"batch01": "train", "batch02": "test"})
    linked = tmp_path / "downloads/mapillary/images/thumb_1024_url/23/123.jpg"
    sizes = {name: (tmp_path / "raw/batch01/images" / name).stat().st_size
             for name in ("123.jpg", "456.jpg")}

    (plan,) = purge.plan(["batch01"], store=tmp_path / "downloads", **paths)
    assert sorted(p.name for p in plan.files) == ["123.jpg", "123.jpg", "456.jpg"]
    assert plan.bytes == sum(sizes.values())
    purge.execute([plan])
    assert not linked.exists() and not list((tmp_path / "raw/batch01/images").iterdir())
    assert (tmp_path / "raw/batch02/images/789.jpg").exists()


def test_a_batch_the_resize_cache_does_not_hold_is_refused(tmp_path, photos):
    """batch02 is indexed but in no split, so not in the cache: its JPEGs would be needed
    again the day it joins a split. batch01's are cached and may go."""
    paths = indexed(tmp_path, photos, {"batch01": "train"})
    with pytest.raises(purge.PurgeError, match="batch02 is not in the resize cache"):
        purge.plan(["batch02"], store=tmp_path / "downloads", **paths)
    assert [p.batch for p in purge.plan([], store=tmp_path / "downloads", **paths)] == [
        "batch01"]
    assert (tmp_path / "raw/batch02/images/789.jpg").exists()
