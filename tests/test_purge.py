"""geoloc purge counts a JPEG once however many hard links it has, and removes every link."""

import os

import pytest

from geoloc import purge


def test_hard_links_are_counted_once_and_all_removed(tmp_path, monkeypatch):
    raw, store = tmp_path / "raw", tmp_path / "downloads"
    (raw / "batch01/images").mkdir(parents=True)
    (store / "mapillary/images/thumb_1024_url/23").mkdir(parents=True)
    (raw / "batch02/images").mkdir(parents=True)
    linked = store / "mapillary/images/thumb_1024_url/23/123.jpg"
    linked.write_bytes(b"\xff\xd8" + b"x" * 998)
    os.link(linked, raw / "batch01/images/123.jpg")
    (raw / "batch01/images/456.jpg").write_bytes(b"y" * 500)   # copied, not linked
    (raw / "batch02/images/789.jpg").write_bytes(b"z" * 300)
    monkeypatch.setattr(purge, "cached_batches", lambda *args: {"batch01", "batch02"})
    paths = dict(raw=raw, index=tmp_path, splits=tmp_path, cache=tmp_path, store=store,
                 sizes=[64], dvc_cache=None, lock=tmp_path / "dvc.lock")

    (plan,) = purge.plan(["batch01"], **paths)
    assert sorted(p.name for p in plan.files) == ["123.jpg", "123.jpg", "456.jpg"]
    assert plan.bytes == 1000 + 500
    purge.execute([plan])
    assert not linked.exists() and not list((raw / "batch01/images").iterdir())
    assert (raw / "batch02/images/789.jpg").exists()

    monkeypatch.setattr(purge, "cached_batches", lambda *args: set())
    with pytest.raises(purge.PurgeError, match="batch02 is not in the resize cache"):
        purge.plan(["batch02"], **paths)
