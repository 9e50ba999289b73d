"""The predictor of an exported snapshot: each input size decodes a photo afresh."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from conftest import (
    SNAPSHOT_CITIES,
    SNAPSHOT_CITY_NAMES,
    SNAPSHOT_SEQUENCE_TEMPERATURE,
    SNAPSHOT_TEMPERATURE,
    expected_retrieval,
    noisy_photo,
)
from PIL import Image

from geoloc.data.preprocess import read_squares, to_square
from geoloc.errors import GeolocError
from geoloc.exif import written_exif
from geoloc.predictor import FEATURES_MODEL, MODEL_NAME, SPEC_NAME, Predictor


def test_each_input_size_decodes_the_photo_afresh(retrieval_snapshot, tmp_path):
    """The classifier takes 32 px, the backbone 48: the features are those of the photo
    decoded at 48, as the features stage decodes it, not of a JPEG already drafted small."""
    path = tmp_path / "big.jpg"
    # 600 x 300: the decoder drafts it at 1/8 (75 x 38) for 32 px, at 1/4 for 48 px.
    noisy_photo(3, size=(600, 300)).save(path, quality=90)
    session = ort.InferenceSession(str(retrieval_snapshot / FEATURES_MODEL))
    fresh = session.run(None, {"images": np.stack(read_squares(path, (48,)))})[0]
    predictor = Predictor(retrieval_snapshot)
    for photo in (path, path.read_bytes()):
        assert np.array_equal(predictor._features([photo]), fresh)
    with Image.open(path) as image:                      # one image decoded for both sizes
        to_square(image, 32)
        reused = np.stack([to_square(image, 48)])
    assert not np.array_equal(session.run(None, {"images": reused})[0], fresh)


def test_the_topk_modes_weigh_the_evaluated_number_of_cells(tiny_snapshot, tmp_path):
    """The snapshot's top_k (evaluate.top_k), not the number of cells a caller lists: the
    answer does not move with --top-k, as evaluate's would not."""
    path = tmp_path / "photo.png"
    noisy_photo(4).save(path)
    predictor = Predictor(tiny_snapshot)
    one, six = (predictor.predict([path], k, "topk_mean")[0] for k in (1, 6))
    assert (one.lat, one.lon) == (six.lat, six.lon) and len(one.top) == 1
    argmax = predictor.predict([path], 1, "argmax")[0]
    assert (one.lat, one.lon) != (argmax.lat, argmax.lon)


def test_a_snapshot_of_another_format_is_refused(tiny_snapshot, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_snapshot, old)
    spec = json.loads((old / SPEC_NAME).read_text())
    del spec["format"]                                 # what the first exports wrote
    (old / SPEC_NAME).write_text(json.dumps(spec))
    with pytest.raises(GeolocError, match="snapshot of format 1; this geoloc reads format 3: "
                                          r"export it again \(dvc repro export\)"):
        Predictor(old)


def test_a_server_predictor_runs_each_inference_on_its_callers_thread(retrieval_snapshot,
                                                                     tmp_path):
    """`geoloc serve` answers requests on a pool of one thread per core: its sessions must not
    each keep a pool of their own (they spin on the cores the other requests decode on)."""
    served, alone = Predictor(retrieval_snapshot, threads=1), Predictor(retrieval_snapshot)
    for session in (served.session, served.features_session):
        assert session.get_session_options().intra_op_num_threads == 1
    assert alone.session.get_session_options().intra_op_num_threads == 0   # one per core
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        noisy_photo(i).save(path, quality=90)
    for mode in ("argmax", "retrieval"):
        assert served.predict(paths, mode=mode) == alone.predict(paths, mode=mode)


def test_the_views_of_one_place_get_one_answer_and_far_apart_views_a_note(retrieval_snapshot,
                                                                          tmp_path):
    """The snapshot's index holds three training places of four views (photos 0-3, 4-7,
    8-11): photos 4 to 7 sent together are that place again, found whole, with the mean
    probabilities of the views. Views whose EXIF positions lie over PLACE_SPREAD_KM apart are
    answered, with a note that says how far."""
    from geoloc.predictor import PLACE_SPREAD_KM
    from geoloc.retrieval import RetrievalIndex

    paths = []
    for seed in range(4, 8):
        paths.append(tmp_path / f"view{seed}.png")
        noisy_photo(seed).save(paths[-1])
    predictor = Predictor(retrieval_snapshot)
    answer = predictor.predict_place(paths, top_k=3)
    places = RetrievalIndex.load(retrieval_snapshot / "retrieval.npz").of_places()
    assert (answer.lat, answer.lon, answer.mode, answer.views, answer.note) == (
        places.lat[1], places.lon[1], "place", 4, None)
    log_probs = predictor.recipe.log_probs(predictor.outputs(paths)).mean(axis=0)
    probs = np.exp(log_probs - np.logaddexp.reduce(log_probs))
    assert [t["probability"] for t in answer.top] == pytest.approx(
        sorted(probs, reverse=True)[:3], abs=1e-9)

    far = []
    for seed, lat in ((4, 45.0), (5, 45.0 + 2 * PLACE_SPREAD_KM / 111.2)):
        far.append(tmp_path / f"gps{seed}.jpg")
        noisy_photo(seed).save(far[-1], exif=written_exif(lat, 3.0, 1_600_000_000_000))
    note = predictor.predict_place(far).note
    assert note is not None and "lie up to 0.20 km apart" in note
    assert predictor.predict_place(far[:1] * 2).note is None


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_served_probabilities_are_calibrated_by_the_snapshots_temperatures(tiny_snapshot,
                                                                           tmp_path):
    """A photo's probabilities are softmax(logits / T), a drive's the softmax of its photos'
    summed log-probabilities over the sequence temperature, with the snapshot's T (1.5) and
    sequence T (3.0): a predictor that skips either division serves other probabilities."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"frame{i}.jpg")
        noisy_photo(i).save(paths[-1], exif=written_exif(45.0, 3.0, 1_600_000_000_000 + i * 60_000))
    session = ort.InferenceSession(str(tiny_snapshot / MODEL_NAME))
    squares = np.stack([read_squares(path, (32,))[0] for path in paths])
    logits = session.run(["logits"], {"images": squares})[0].astype(np.float64)
    photo = softmax(logits / SNAPSHOT_TEMPERATURE)
    drive = softmax(np.log(photo).sum(axis=0) / SNAPSHOT_SEQUENCE_TEMPERATURE)

    predictor = Predictor(tiny_snapshot)
    for answer, expected in zip(predictor.predict(paths, 6, "argmax"), photo, strict=True):
        assert [t["probability"] for t in answer.top] == pytest.approx(
            sorted(expected, reverse=True), abs=1e-6)
    for answer in predictor.predict(paths, 6, "sequence"):
        assert [t["probability"] for t in answer.top] == pytest.approx(
            sorted(drive, reverse=True), abs=1e-6)


def test_retrieval_searches_as_the_snapshot_was_evaluated(wide_retrieval_snapshot, tmp_path):
    """Neighbours 3 within the 2 likeliest cells, as the snapshot's recipe says: the answers
    are the brute-force ones, and differ from both the nearest photo and a search over every
    cell for some of the photos."""
    paths = []
    for seed in range(20, 28):
        paths.append(tmp_path / f"query{seed}.png")
        noisy_photo(seed).save(paths[-1])
    answers = [(p.lat, p.lon) for p in Predictor(wide_retrieval_snapshot).predict(
        paths, mode="retrieval")]
    assert answers == expected_retrieval(wide_retrieval_snapshot, paths, 3, 2)
    assert answers != expected_retrieval(wide_retrieval_snapshot, paths, 1, 0)
    assert answers != expected_retrieval(wide_retrieval_snapshot, paths, 3, 0)


def test_each_answer_names_the_snapshots_nearest_city(tiny_snapshot, tmp_path):
    """The nearest of the snapshot's cities to the answer, and its distance; a snapshot
    without cities (exported before they were kept) names none."""
    from geoloc.geo import haversine_km

    paths = []
    for seed in range(6):
        paths.append(tmp_path / f"{seed}.png")
        noisy_photo(seed).save(paths[-1])
    answers = Predictor(tiny_snapshot).predict(paths, mode="topk_mean")
    for answer in answers:
        km = [float(haversine_km(answer.lat, answer.lon, lat, lon))
              for lat, lon in SNAPSHOT_CITIES]
        assert answer.city == SNAPSHOT_CITY_NAMES[int(np.argmin(km))]
        assert answer.city_km == pytest.approx(min(km), abs=0.005)
    assert any(answer.city_km > 1 for answer in answers)   # topk_mean falls between cities

    old = tmp_path / "old"
    shutil.copytree(tiny_snapshot, old)
    spec = json.loads((old / SPEC_NAME).read_text())
    del spec["cities"]
    (old / SPEC_NAME).write_text(json.dumps(spec))
    (answer,) = Predictor(old).predict(paths[:1])
    assert (answer.city, answer.city_km) == (None, None)
