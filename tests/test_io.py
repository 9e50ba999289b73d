import json

import pytest

from geoloc.io import atomic_dir, atomic_path, write_json


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_folder_keeps_the_old_one(tmp_path):
    folder = tmp_path / "batch01"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["batch01"]
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    with atomic_dir(folder) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.txt"]


def test_folder_left_by_a_killed_run_is_removed_on_the_next(tmp_path):
    stale = tmp_path / ".batch01.abc123.tmp"
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"\xff\xd8")
    other = tmp_path / ".batch02.abc123.tmp"
    other.mkdir()
    with atomic_dir(tmp_path / "batch01") as tmp:
        (tmp / "done.txt").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".batch02.abc123.tmp", "batch01"]


def test_json_is_sorted_and_rounded(tmp_path):
    write_json({"b": 1.23456789, "a": {"z": float("nan"), "y": 2}}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": {"y": 2, "z": None}, "b": 1.23457}
    assert text.index('"a"') < text.index('"b"')
