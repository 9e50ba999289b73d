"""`geoloc predict` on a real exported snapshot: the table's columns, and sequences whose
photos include several views of one place."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SNAPSHOT_SEQUENCE_TEMPERATURE, expected_retrieval, noisy_photo
from PIL import Image
from PIL.ExifTags import IFD, Base

from geoloc.predictor import RETRIEVAL_INDEX, Predictor
from geoloc.retrieval import RetrievalIndex


def write_photo(path, seed: int, when: str | None = None):
    """A noisy picture (distinct seeds give distinct model inputs), with a capture time."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    if when is not None:
        exif.get_ifd(IFD.Exif)[Base.DateTimeOriginal] = when
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", exif=exif)
    return path


def predict(snapshot, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoloc.cli", "predict", "--model",
                           str(snapshot), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_reader_that_stops_early_ends_the_table_quietly(tiny_snapshot, tmp_path):
    """`geoloc predict ... | head`: the pipe closes before the table is written; the command
    stops with SIGPIPE's status and no traceback."""
    photos = [write_photo(tmp_path / f"p{i}.jpg", i) for i in range(3)]
    process = subprocess.Popen([sys.executable, "-m", "geoloc.cli", "predict", "--model",
                                str(tiny_snapshot), *map(str, photos)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors


def test_columns_stay_aligned_for_long_paths(tiny_snapshot, tmp_path):
    deep = tmp_path / "a folder with a rather long name" / "and another one below it"
    photos = [write_photo(deep / "first photo of the street.jpg", 1),
              write_photo(tmp_path / "b.jpg", 2)]
    result = predict(tiny_snapshot, *photos)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert len(rows) == 2 and len(str(photos[0])) > 40
    column, near = header.index("lat"), header.index("near")
    for row, photo in zip(rows, photos, strict=True):
        assert row.startswith(str(photo))
        # lat is right-aligned in 9 characters: its last digit sits under the header's "t"
        assert row[column + 2] != " " and row[column + 3] == " "
        expected = Predictor(tiny_snapshot).predict([photo])[0]
        assert float(row[column - 6:column + 3]) == pytest.approx(expected.lat, abs=1e-5)
        # the nearest city starts under "near", as wide as the longest name and distance
        assert row[near:].startswith(f"{expected.city} {expected.city_km:.1f} km ")
        assert row[near - 1] == " " and row.index(expected.cell) == header.index("cell")


def test_a_sequence_counts_the_views_of_one_place_once(tiny_snapshot, tmp_path):
    """Three panoramas of four faces: each panorama's faces share a capture time. The answer
    is the predictor's places-first evidence over the snapshot's sequence temperature, not the
    plain sum of twelve frames."""
    faces = [write_photo(tmp_path / f"pano{p}_{f}.jpg", 10 * p + f, f"2024:05:01 12:0{p}:00")
             for p in range(3) for f in range(4)]
    result = predict(tiny_snapshot, *faces, "--sequence", "--json", "--top-k", "6")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    answer = json.loads(line)
    assert answer["path"] == "sequence of 12 photos"

    predictor = Predictor(tiny_snapshot)
    log_probs = predictor.recipe.log_probs(predictor.outputs(faces))
    places = log_probs.reshape(3, 4, -1).mean(axis=1).sum(axis=0) / SNAPSHOT_SEQUENCE_TEMPERATURE
    expected = np.exp(places - np.logaddexp.reduce(places))
    assert [t["probability"] for t in answer["top"]] == pytest.approx(
        sorted(expected, reverse=True), abs=1e-9)
    naive = log_probs.sum(axis=0) / SNAPSHOT_SEQUENCE_TEMPERATURE
    assert not np.allclose(np.exp(naive - np.logaddexp.reduce(naive)), expected, atol=1e-3)


def test_modes_of_one_photo_and_retrieval(retrieval_snapshot, tiny_snapshot, tmp_path):
    photo = tmp_path / "five.png"
    noisy_photo(5).save(photo)
    index = RetrievalIndex.load(retrieval_snapshot / RETRIEVAL_INDEX)
    result = predict(retrieval_snapshot, photo, "--mode", "retrieval", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["mode"] == "retrieval"
    assert (answer["lat"], answer["lon"]) == (index.lat[5], index.lon[5])
    result = predict(tiny_snapshot, photo, "--mode", "retrieval")
    assert result.returncode == 2
    assert "exported without its feature index" in result.stderr
    assert "it serves argmax, topk, topk_mean, hierarchical" in result.stderr


def test_retrieval_answers_with_the_snapshots_search(wide_retrieval_snapshot, tmp_path):
    """A snapshot evaluated with neighbours 3 within the 2 likeliest cells answers so."""
    photos = []
    for seed in range(20, 28):
        photos.append(tmp_path / f"query{seed}.png")
        noisy_photo(seed).save(photos[-1])
    result = predict(wide_retrieval_snapshot, *photos, "--mode", "retrieval", "--json")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["lat"], a["lon"]) for a in answers] == expected_retrieval(
        wide_retrieval_snapshot, photos, 3, 2)


def test_the_views_of_one_place_are_answered_together(retrieval_snapshot, tmp_path):
    """--place: one answer for the views (the snapshot's second training place, photos 4 to
    7), naming the mode and the number of views; an unreadable view is named and skipped."""
    views = []
    for seed in range(4, 8):
        views.append(tmp_path / f"view{seed}.png")
        noisy_photo(seed).save(views[-1])
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    result = predict(retrieval_snapshot, *views, tmp_path / "broken.jpg", "--place", "--json")
    assert result.returncode == 1 and "cannot read" in result.stderr
    answer = json.loads(result.stdout)
    places = RetrievalIndex.load(retrieval_snapshot / RETRIEVAL_INDEX).of_places()
    assert answer["path"] == "place of 4 views"
    assert (answer["mode"], answer["views"]) == ("place", 4)
    assert (answer["lat"], answer["lon"]) == (places.lat[1], places.lon[1])
    refused = predict(retrieval_snapshot, *views, "--place", "--mode", "argmax")
    assert refused.returncode == 2 and "--place answers in mode place" in refused.stderr
