"""Inference modes, the distance figures and the evaluation of a model on a tiny test split.
The evaluate stage runs end to end (with `dvc plots`) in test_pipeline.py."""

from dataclasses import replace

import h3
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.special
from conftest import tiny_params

from geoloc import geo, inference, metrics
from geoloc.data.cache import CachedSplit
from geoloc.errors import GeolocError
from geoloc.evaluate import confusion_table, evaluate, extremes, fit_temperatures
from geoloc.inference import Outputs
from geoloc.models import build_model
from geoloc.outputs import split_outputs
from geoloc.retrieval import RetrievalIndex

PARAMS = tiny_params()
PARIS, NEAR_PARIS, MARSEILLE = (48.85, 2.35), (48.94, 2.35), (43.30, 5.37)


def cell_table(points, cells=None, parents=None) -> pd.DataFrame:
    n = len(points)
    cells = cells or [h3.latlng_to_cell(lat, lon, 5) for lat, lon in points]
    return pd.DataFrame({
        "label": range(n), "cell": cells, "resolution": [h3.get_resolution(c) for c in cells],
        "lat": [p[0] for p in points], "lon": [p[1] for p in points],
        "parents": parents or [[] for _ in range(n)], "neighbours": [[] for _ in range(n)],
        "n_train": [10 * (i + 1) for i in range(n)]})


def logs(*rows) -> np.ndarray:
    return np.log(np.array(rows, dtype=np.float64))


def test_topk_picks_the_point_nearest_the_probability_mass():
    cells = cell_table([PARIS, NEAR_PARIS, MARSEILLE])
    log_probs = logs([0.3, 0.3, 0.4])   # Marseille is likeliest, but Paris holds 0.6
    rows = pd.DataFrame(index=range(1))
    label, lat, _ = inference.mode_points("topk", log_probs, None, cells, rows, top_k=3)
    assert label.tolist() == [0] and lat[0] == PARIS[0]
    assert inference.mode_points("argmax", log_probs, None, cells, rows, 3)[0].tolist() == [2]
    # With k = 1 only the argmax is a candidate.
    assert inference.mode_points("topk", log_probs, None, cells, rows, top_k=1)[0].tolist() == [2]


def test_topk_mean_is_the_weighted_mean_on_the_sphere():
    cells = cell_table([(0.0, 179.0), (0.0, -179.0), MARSEILLE])
    label, lat, lon = inference.mode_points("topk_mean", logs([0.5, 0.5, 1e-9]), None, cells,
                                            pd.DataFrame(index=range(1)), top_k=2)
    # Across the antimeridian: a mean of degrees would land at longitude 0.
    assert label.tolist() == [-1]
    assert lat[0] == pytest.approx(0.0, abs=1e-9) and abs(lon[0]) == pytest.approx(180.0)


def test_hierarchical_follows_the_likeliest_parent_down():
    paris_r4 = h3.latlng_to_cell(*PARIS, 4)
    two = [c for c in h3.cell_to_children(paris_r4, 5)][:2]
    marseille = h3.latlng_to_cell(*MARSEILLE, 5)
    points = [h3.cell_to_latlng(c) for c in (*two, marseille)]
    cells = cell_table(points, cells=[*two, marseille],
                       parents=[[paris_r4], [paris_r4], [h3.cell_to_parent(marseille, 4)]])
    log_probs = logs([0.3, 0.25, 0.45], [0.1, 0.1, 0.8])
    rows = pd.DataFrame(index=range(2))
    label, _, _ = inference.mode_points("hierarchical", log_probs, None, cells, rows, 5)
    assert label.tolist() == [0, 2]   # Paris's parent holds 0.55 against 0.45


def test_sequence_modes_sum_the_frames_log_probabilities():
    cells = cell_table([PARIS, NEAR_PARIS, MARSEILLE])
    # Sequence s: frames t=2 and t=3 vote for cell 1, t=1 weakly for cell 0; frame order
    # in the table is shuffled. Sequence u (one frame) keeps its own argmax.
    rows = pd.DataFrame({"sequence_id": ["s", "u", "s", "s"], "captured_at": [3, 1, 1, 2],
                         "image_id": ["a", "b", "c", "d"]})
    log_probs = logs([0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1])
    full, _, _ = inference.mode_points("sequence", log_probs, None, cells, rows, 5)
    online, _, _ = inference.mode_points("sequence_online", log_probs, None, cells, rows, 5)
    assert full.tolist() == [1, 2, 1, 1]
    # Online, the first frame (c, t=1) has only itself; by t=2 cell 1 leads.
    assert online.tolist() == [1, 2, 0, 1]


def test_views_of_one_place_count_as_one_frame():
    """A panorama's four faces (one sequence, one capture time) weakly for cell 0 and a single
    photo of the next place strongly for cell 1: summed as five frames, the faces outvote it
    (what `geoloc predict --sequence` did); averaged into one place first, they do not."""
    cells = cell_table([PARIS, MARSEILLE])
    rows = pd.DataFrame({"sequence_id": ["s"] * 5, "captured_at": [7, 7, 7, 7, 9],
                         "image_id": list("abcde")})
    log_probs = logs(*[[0.6, 0.4]] * 4, [0.2, 0.8])
    assert log_probs.sum(axis=0).argmax() == 0
    full, _, _ = inference.mode_points("sequence", log_probs, None, cells, rows, 5)
    assert full.tolist() == [1] * 5
    evidence = inference.sequence_evidence(log_probs, rows, online=False)
    assert evidence[0] == pytest.approx(np.log([0.6 * 0.2, 0.4 * 0.8]))
    # Online: the faces (t=7) have only their own place; the last photo both places. Photos
    # with no time at all come in the rows' order, whatever their ids.
    shuffled = pd.DataFrame({"sequence_id": ["s"] * 12, "captured_at": [0] * 12,
                             "image_id": [str(i) for i in range(12)]})
    evidence = inference.sequence_evidence(np.log(np.full((12, 2), 0.5)) + np.arange(12)[:, None]
                                           * np.array([[1.0, 0.0]]), shuffled, online=True)
    assert np.allclose(evidence[:, 0] - evidence[:, 1], np.cumsum(np.arange(12)))
    online, _, _ = inference.mode_points("sequence_online", log_probs, None, cells, rows, 5)
    assert online.tolist() == [0, 0, 0, 0, 1]
    # A view group says so even when the times differ (a rig's cameras a few ms apart); with
    # no time (0) and no group, each photo is a place of its own.
    grouped = rows.assign(captured_at=[7, 8, 9, 10, 11], view_group=["p", "p", "p", "p", None])
    assert inference.mode_points("sequence", log_probs, None, cells, grouped, 5)[0].tolist() \
        == [1] * 5
    untimed = rows.assign(captured_at=0)
    assert inference.mode_points("sequence", log_probs, None, cells, untimed, 5)[0].tolist() \
        == [0] * 5
    assert len(set(inference.view_places(untimed))) == 5
    assert len(set(inference.view_places(rows))) == 2


def test_unknown_and_unavailable_modes_are_named():
    cells = cell_table([PARIS, MARSEILLE])
    rows = pd.DataFrame(index=range(1))
    with pytest.raises(GeolocError, match="unknown mode 'vote'; known: argmax, topk"):
        inference.mode_points("vote", logs([0.5, 0.5]), None, cells, rows, 5)
    with pytest.raises(GeolocError, match="hybrid needs a model trained with model.hybrid"):
        inference.mode_points("hybrid", logs([0.5, 0.5]), None, cells, rows, 5)


def test_hybrid_mode_moves_the_argmax_point_by_its_offset():
    cells = cell_table([PARIS, MARSEILLE])
    offsets = np.zeros((1, 2, 2))
    offsets[0, 1] = [3.0, 4.0]   # 5 km from Marseille's point
    label, lat, lon = inference.mode_points("hybrid", logs([0.2, 0.8]), offsets, cells,
                                            pd.DataFrame(index=range(1)), 5)
    assert label.tolist() == [1]
    assert geo.haversine_km(*MARSEILLE, lat[0], lon[0]) == pytest.approx(5.0, rel=1e-3)


def test_distance_metrics_name_every_threshold_and_score_geoguessr_points():
    figures = metrics.distance_metrics(np.array([0.0, 0.4, 1492.7]))
    assert figures["within_0_5km"] == pytest.approx(2 / 3)
    assert figures["within_1km"] == pytest.approx(2 / 3) and figures["within_100km"] < 1
    assert figures["geoscore"] == pytest.approx(
        (5000 + 5000 * np.exp(-0.4 / 1492.7) + 5000 / np.e) / 3)
    errors = np.arange(1, 101, dtype=float) * 10                  # 10, 20, ..., 1000 km
    tail = metrics.distance_metrics(errors)
    assert tail["p95_km"] == pytest.approx(np.percentile(errors, 95))
    assert tail["p95_km"] > tail["p90_km"]
    assert (tail["far_200km"], tail["far_500km"]) == (0.8, 0.5)   # above, not at, the distance


@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_a_weighted_percentile_is_the_percentile_of_the_repeated_values(q):
    rng = np.random.default_rng(q)
    for _ in range(500):
        n = int(rng.integers(1, 9))
        values = np.sort(rng.random(n))
        weights = rng.integers(0, 4, (1, n))
        if weights.sum() == 0:
            continue
        assert metrics.weighted_percentiles(values, weights, q)[0] == pytest.approx(
            np.percentile(np.repeat(values, weights[0]), q))


@pytest.mark.parametrize("q", [50, 90])
def test_bootstrap_resamples_sequences_not_frames(q):
    # 20 drives of 10 frames; a drive's frames share one error: 20, not 200, independent draws.
    rng = np.random.default_rng(1)
    errors = np.repeat(rng.lognormal(0, 1, 20), 10)
    drives = np.repeat(np.arange(20), 10)
    low, high = metrics.bootstrap_ci(errors, drives, samples=2000, q=q)
    frame_low, frame_high = metrics.bootstrap_ci(errors, np.arange(200), samples=2000, q=q)
    assert low <= np.percentile(errors, q) <= high
    assert high - low > 2 * (frame_high - frame_low)
    assert (low, high) == metrics.bootstrap_ci(errors, drives, samples=2000, q=q)


def test_calibration_error_is_small_when_confidence_matches_accuracy():
    rng = np.random.default_rng(2)
    confidence = rng.uniform(0.05, 1.0, 20_000)
    calibrated = rng.random(20_000) < confidence
    table = metrics.calibration_table(confidence, calibrated, np.ones(20_000))
    assert metrics.expected_calibration_error(table) < 0.02
    assert table["images"].sum() == 20_000 and len(table) == metrics.CALIBRATION_BINS
    overconfident = rng.random(20_000) < confidence / 2
    table = metrics.calibration_table(confidence, overconfident, np.ones(20_000))
    assert metrics.expected_calibration_error(table) > 0.2


def test_reference_answers_and_modes_of_a_model_on_a_test_split():
    cells = cell_table([PARIS, NEAR_PARIS, MARSEILLE])
    test = split(cells, n=30)
    model = build_model(replace(PARAMS.model, width=4), len(cells)).eval()
    cfg = replace(PARAMS.evaluate, mode="sequence", top_k=2, bootstrap_samples=200,
                  calibrate=True)
    val = outputs(model, split(cells, n=12))
    result = evaluate(outputs(model, test), cells, cfg, val=val)
    figures = result.metrics
    # The headline (sequence) mode's own accuracy has its own name; `accuracy` stays argmax's.
    assert figures["mode_accuracy"] == result.modes["sequence"]["accuracy"]
    assert figures["accuracy"] == result.modes["argmax"]["accuracy"]
    assert figures["p95_km"] == result.modes["sequence"]["p95_km"]
    # Calibrated on val, not on test (test_fit_temperatures_equal_a_direct_fit: how)
    assert (figures["temperature"], figures["sequence_temperature"]) == pytest.approx(
        fit_temperatures(val.logits, val.rows))
    assert 0 <= figures["sequence_expected_calibration_error"] <= 1
    uncalibrated = evaluate(outputs(model, test), cells, replace(cfg, calibrate=False))
    assert uncalibrated.metrics["temperature"] == 1.0 == uncalibrated.metrics[
        "sequence_temperature"]
    assert uncalibrated.modes["argmax"] == result.modes["argmax"]
    assert set(result.modes) == {"argmax", "topk", "topk_mean", "hierarchical",
                                     "sequence", "sequence_online"}
    assert figures["median_km"] == result.modes["sequence"]["median_km"]
    assert figures["median_km_ci_low"] <= figures["median_km"] <= figures["median_km_ci_high"]
    # Each photo is 1.1 km north of its cell's point: that is the floor.
    assert figures["floor_median_km"] == pytest.approx(1.11, abs=0.01)
    # Marseille has the most training images: the baseline answers it for all.
    marseille_km = geo.haversine_km(test.rows["lat"], test.rows["lon"], *MARSEILLE)
    assert figures["baseline_median_km"] == pytest.approx(np.median(marseille_km))
    predictions = result.predictions
    assert len(predictions) == 30 and predictions["image_id"].is_unique
    assert (predictions["error_km"] == predictions["error_km_sequence"]).all()
    assert predictions["top_labels"].map(len).eq(2).all()
    assert np.allclose(predictions["confidence"],
                       predictions["top_probabilities"].map(lambda p: p[0]))
    assert set(result.by_city["city"]) == {"A", "B"}
    assert result.by_city["images"].sum() == 30


def test_an_empty_test_split_and_an_unavailable_mode_are_clear_errors():
    cells = cell_table([PARIS, MARSEILLE])
    model = build_model(replace(PARAMS.model, width=4), len(cells)).eval()
    empty = split(cells, n=0)
    with pytest.raises(GeolocError, match="the test split has no images"):
        evaluate(outputs(model, empty), cells, PARAMS.evaluate)
    with pytest.raises(GeolocError, match="'hybrid' is not available for this model"):
        evaluate(outputs(model, split(cells, n=4)), cells, replace(PARAMS.evaluate, mode="hybrid"))
    with pytest.raises(GeolocError, match="'retrieval' is not available for this model"):
        evaluate(outputs(model, split(cells, n=4)), cells,
                 replace(PARAMS.evaluate, mode="retrieval"))


def test_confusion_keeps_the_most_frequent_cells_and_pools_the_rest(monkeypatch):
    monkeypatch.setattr("geoloc.evaluate.CONFUSION_CELLS", 2)
    cells = cell_table([PARIS, NEAR_PARIS, MARSEILLE])
    predictions = pd.DataFrame({"label": [0, 0, 0, 1, 1, 2], "pred_label": [0, 1, 2, 1, 0, 0]})
    table = confusion_table(predictions, cells)
    names = cells["cell"]
    assert table.to_dict("list") == {
        "actual": [names[0]] * 3 + [names[1]] * 2,
        "predicted": [names[0], names[1], "other", names[1], names[0]]}


def test_extremes_title_the_best_and_the_worst():
    predictions = pd.DataFrame({"image_id": list("abcde"), "error_km": [5.0, 1.0, 3.0, 9.0, 2.0]})
    table = extremes(predictions, 2)
    assert table["image_id"].tolist() == ["b", "e", "d", "a"]
    assert table["title"].tolist() == ["best 1", "best 2", "worst 1", "worst 2"]


def direct_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on these rows, by scipy's bounded
    search over log T (an implementation apart from geoloc's)."""
    def nll(log_t: float) -> float:
        scaled = scipy.special.log_softmax(logits / np.exp(log_t), axis=1)
        return -scaled[np.arange(len(labels)), labels].mean()

    fit = scipy.optimize.minimize_scalar(nll, bounds=(np.log(0.01), np.log(1000.0)),
                                         method="bounded", options={"xatol": 1e-6})
    return float(np.exp(fit.x))


def outputs(model, split: CachedSplit, features: np.ndarray | None = None) -> Outputs:
    return Outputs(split.rows, *split_outputs(model, split), features=features)


def split(cells: pd.DataFrame, n: int) -> CachedSplit:
    """n photos, 1.11 km north of their cell's points, in sequences of 3, cities A and B."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % len(cells)
    rows = pd.DataFrame({
        "image_id": [f"i{i:03d}" for i in range(n)],
        "sequence_id": [f"s{i // 3}" for i in range(n)],
        "captured_at": np.arange(n), "city": np.where(np.arange(n) % 2 == 0, "A", "B"),
        "label": labels, "lat": cells["lat"].to_numpy()[labels] + 0.01,
        "lon": cells["lon"].to_numpy()[labels], "cache_row": np.arange(n)})
    return CachedSplit(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), rows)


def test_the_sequence_temperature_undoes_the_evidence_of_repeated_frames():
    """Sequences of 8 frames that repeat one photo (calibrated on its own): their summed
    evidence is 8 times too sure, and the sequence temperature fitted on val says so."""
    rng = np.random.default_rng(4)
    photos = rng.normal(0, 2, (2_000, 6))
    labels = (np.exp(inference.log_softmax(photos)).cumsum(axis=1)
              < rng.random((len(photos), 1))).sum(axis=1)
    rows = pd.DataFrame({"image_id": [f"i{i}" for i in range(8 * len(photos))],
                         "sequence_id": np.repeat(np.arange(len(photos)), 8).astype(str),
                         "captured_at": np.tile(np.arange(1, 9), len(photos)),
                         "label": np.repeat(labels, 8)})
    temperature, sequence_temperature = fit_temperatures(np.repeat(photos, 8, axis=0), rows)
    assert temperature == pytest.approx(1.0, rel=0.05)
    assert sequence_temperature == pytest.approx(8.0, rel=0.05)


def test_fit_temperatures_equal_a_direct_fit():
    """150 drives of 4 frames, over-confident threefold: the photo temperature is a direct
    fit of the frames' logits, the sequence temperature a direct fit of each drive's summed
    log-probabilities under the photo temperature."""
    rng = np.random.default_rng(5)
    drive = rng.normal(0, 2, (150, 6))
    labels = np.repeat((np.exp(inference.log_softmax(drive)).cumsum(axis=1)
                        < rng.random((150, 1))).sum(axis=1), 4)
    logits = 3 * (np.repeat(drive, 4, axis=0) + rng.normal(0, 1, (600, 6)))
    rows = pd.DataFrame({"image_id": [f"i{i}" for i in range(600)],
                         "sequence_id": np.repeat(np.arange(150), 4).astype(str),
                         "captured_at": np.tile(np.arange(1, 5), 150), "label": labels})
    temperature, sequence_temperature = fit_temperatures(logits, rows)
    direct = direct_temperature(logits, labels)
    evidence = pd.DataFrame(scipy.special.log_softmax(logits / direct, axis=1)).groupby(
        rows["sequence_id"].to_numpy()).transform("sum").to_numpy()
    assert temperature == pytest.approx(direct, rel=2e-3) and temperature > 2
    assert sequence_temperature == pytest.approx(direct_temperature(evidence, labels), rel=2e-3)


def test_temperature_scaling_recovers_the_temperature_that_drew_the_labels():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (20_000, 8))
    for true_t in (0.5, 2.0):
        probs = np.exp(inference.log_softmax(logits / true_t))
        labels = (probs.cumsum(axis=1) < rng.random((len(probs), 1))).sum(axis=1)
        assert inference.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def places_world():
    """Three places, features that tell them apart (each place's direction plus noise), the
    training photos' index and an untrained classifier; `photos(n)` gives n photos' outputs."""
    cells = cell_table([PARIS, NEAR_PARIS, MARSEILLE])
    rng = np.random.default_rng(5)
    directions = rng.normal(0, 1, (3, 32))
    train_labels = np.repeat(np.arange(3), 20)
    index = RetrievalIndex.build(directions[train_labels] * 3 + rng.normal(0, 1, (60, 32)),
                                 cells["lat"].to_numpy()[train_labels] + 0.01,
                                 cells["lon"].to_numpy()[train_labels], train_labels, dims=8)
    model = build_model(replace(PARAMS.model, width=4), len(cells)).eval()

    def photos(n: int) -> Outputs:
        photos = split(cells, n)
        return outputs(model, photos, directions[photos.rows["label"]] * 3
                       + rng.normal(0, 1, (n, 32)))

    return cells, index, photos, rng


def test_retrieval_is_scored_beside_the_other_modes_with_the_nearest_photo():
    """Features that tell the three places apart, an untrained classifier: retrieval finds
    each test photo's place among the training photos, the classifier's modes do not."""
    cells, index, photos, _ = places_world()
    cfg = replace(PARAMS.evaluate, mode="retrieval", bootstrap_samples=200)
    result = evaluate(photos(30), cells, cfg, index=index)
    assert "retrieval" in result.modes and result.modes["retrieval"]["accuracy"] == 1.0
    assert result.metrics["median_km"] == result.modes["retrieval"]["median_km"] < 0.1
    assert result.metrics["nearest_photo_median_km"] < 0.1
    assert result.metrics["nearest_photo_p90_km"] >= result.metrics["nearest_photo_median_km"]
    assert result.modes["argmax"]["accuracy"] < 1.0
    assert (result.predictions["error_km"] == result.predictions["error_km_retrieval"]).all()
    # each photo's reference errors, beside its answers: for paired comparisons
    photos = result.predictions
    assert np.median(photos["nearest_photo_km"]) == result.metrics["nearest_photo_median_km"]
    assert np.median(photos["floor_km"]) == pytest.approx(result.metrics["floor_median_km"])
    np.testing.assert_allclose(photos["floor_km"], geo.haversine_km(
        photos["lat"], photos["lon"], cells.set_index("label").loc[photos["label"], "lat"],
        cells.set_index("label").loc[photos["label"], "lon"]))


def test_every_mode_is_read_against_argmax_and_the_nearest_photo_paired_photo_by_photo():
    """Each mode's median minus argmax's and the nearest photo's on the same test photos,
    with a paired interval: retrieval, which finds every photo's place, is far better than the
    untrained classifier (an interval below zero), and equal to the nearest photo (k 1: zero,
    no difference); place is also read against photo retrieval; the headline carries its own."""
    cells, index, photos, _ = places_world()
    cfg = replace(PARAMS.evaluate, mode="retrieval", bootstrap_samples=200)
    cfg = replace(cfg, retrieval=replace(cfg.retrieval, neighbours=1, within_top_cells=0))
    result = evaluate(photos(30), cells, cfg, index=index)
    table = result.predictions
    retrieval = result.modes["retrieval"]
    assert retrieval["vs_argmax_km"] == pytest.approx(
        np.median(table["error_km_retrieval"]) - np.median(table["error_km_argmax"]))
    assert retrieval["vs_argmax_km_ci_low"] <= retrieval["vs_argmax_km"] \
        <= retrieval["vs_argmax_km_ci_high"] < 0
    assert (retrieval["vs_nearest_photo_km"], retrieval["vs_nearest_photo_km_ci_low"],
            retrieval["vs_nearest_photo_km_ci_high"]) == (0, 0, 0)
    assert "vs_argmax_km" not in result.modes["argmax"]
    assert "vs_retrieval_km" in result.modes["place"]
    assert "vs_retrieval_km" not in retrieval
    assert result.metrics["vs_argmax_km"] == retrieval["vs_argmax_km"]


def test_test_intervals_resample_drives_so_a_twin_drive_counts_once():
    """30 photos of three places in 6 sequences, each of one place, uploaded by 3 drives (the
    split's `unit`: two sequences of two places each): the intervals, and the paired ones,
    are a bootstrap over the 3 drives, not the 6 sequences; the median per sequence stays per
    sequence; the predictions keep the unit."""
    cells, index, photos, _ = places_world()
    test = photos(30)
    place, half = np.arange(30) % 3, np.arange(30) // 3 % 2
    rows = test.rows.assign(sequence_id=[f"s{p}{h}" for p, h in zip(place, half, strict=True)],
                            unit=[f"u{u}" for u in (place + half) % 3])
    cfg = replace(PARAMS.evaluate, mode="argmax", bootstrap_samples=300)
    result = evaluate(Outputs(rows, test.logits, test.offsets, test.features), cells, cfg,
                      index=index)
    errors = result.predictions["error_km_argmax"].to_numpy()
    by_drive = metrics.bootstrap_ci(errors, rows["unit"], 300)
    assert (result.metrics["median_km_ci_low"], result.metrics["median_km_ci_high"]) == by_drive
    assert by_drive != metrics.bootstrap_ci(errors, rows["sequence_id"], 300)
    paired = metrics.paired_difference_ci(errors, result.predictions["nearest_photo_km"],
                                          rows["unit"], 300)
    assert (result.metrics["vs_nearest_photo_km"], result.metrics["vs_nearest_photo_km_ci_low"],
            result.metrics["vs_nearest_photo_km_ci_high"]) == paired
    assert result.metrics["sequence_median_km"] == metrics.sequence_median_km(
        errors, rows["sequence_id"])
    assert result.predictions["unit"].tolist() == rows["unit"].tolist()


def test_the_place_mode_answers_the_views_of_a_place_together():
    """Test photos as views of six places (one drive, a view group each): every view gets its
    place's answer, scored per photo beside photo-level retrieval."""
    cells, index, photos, _ = places_world()
    test = photos(24)
    groups = [f"v{i % 3}-{i // 12}" for i in range(24)]   # 4 views of one cell each
    rows = test.rows.assign(sequence_id="drive", view_group=groups)
    cfg = replace(PARAMS.evaluate, mode="place", bootstrap_samples=200)
    result = evaluate(Outputs(rows, test.logits, test.offsets, test.features), cells, cfg,
                      index=index)
    assert {"retrieval", "place"} <= set(result.modes)
    assert result.modes["place"]["images"] == 24 and result.modes["place"]["accuracy"] == 1.0
    answers = result.predictions.assign(group=groups).groupby("group")
    assert (answers[["pred_lat_place", "pred_lon_place"]].nunique() == 1).all().all()
    assert (result.predictions["error_km"] == result.predictions["error_km_place"]).all()


def test_auto_chooses_on_held_out_photos_and_never_on_test():
    """The same world as above: features that tell the places apart and an untrained
    classifier. Auto picks retrieval on val; scrambling the test photos' positions changes
    the test figures but not the choice; with cross-validated figures, it takes theirs."""
    cells, index, photos, rng = places_world()
    val_out, test_out = photos(30), photos(24)
    cfg = replace(PARAMS.evaluate, mode="auto", bootstrap_samples=200,
                  auto=replace(PARAMS.evaluate.auto, neighbours=[1, 5], within_top_cells=[0]))
    result = evaluate(test_out, cells, cfg, val_out, index)
    choice = result.metrics["choice"]
    assert (result.mode, choice["chosen_by"], choice["answer"]) == ("retrieval", "validation",
                                                                    "retrieval_k1_all")
    assert choice["held_out_median_km"] == min(choice["held_out_medians_km"].values()) < 0.1
    assert (result.recipe.neighbours, result.recipe.within_top_cells) == (1, 0)
    scrambled = test_out.rows.assign(lat=rng.permutation(test_out.rows["lat"].to_numpy()) + 1,
                                     lon=rng.permutation(test_out.rows["lon"].to_numpy()))
    again = evaluate(Outputs(scrambled, test_out.logits, test_out.offsets, test_out.features),
                     cells, cfg, val_out, index)
    assert again.metrics["median_km"] != result.metrics["median_km"]
    assert (again.mode, again.metrics["choice"]) == (result.mode, choice)
    # Cross-validated figures decide when there are some, even against val.
    crossval = {"folds": 5, "answers": {"argmax": {"median_km": 0.5},
                                        "retrieval_k1_all": {"median_km": 0.9}}}
    by_crossval = evaluate(test_out, cells, cfg, val_out, index, crossval)
    assert by_crossval.mode == "argmax"
    assert by_crossval.metrics["choice"]["chosen_by"] == "crossval"
    assert by_crossval.metrics["choice"]["held_out_medians_km"] == {"argmax": 0.5,
                                                                    "retrieval_k1_all": 0.9}
    off = evaluate(test_out, cells, cfg, val_out, index, {"folds": 0})
    assert off.metrics["choice"]["chosen_by"] == "validation"
    # A snapshot without the feature index cannot serve retrieval: auto does not choose it.
    bare = evaluate(test_out, cells, cfg, val_out, index, serves_retrieval=False)
    assert bare.mode != "retrieval"
    assert not any(name.startswith("retrieval") for name in
                   bare.metrics["choice"]["held_out_medians_km"])


# --- the scores themselves (geoloc.metrics), each against a direct computation -----------


def test_distance_metrics_of_known_errors():
    """101 errors of 0 to 100 km: the median, the percentiles, and each threshold counted
    inclusively (an error of exactly 1 km is within 1 km)."""
    errors = np.arange(101, dtype=np.float64)
    figures = metrics.distance_metrics(errors)
    assert set(figures) == {"median_km", "mean_km", "p90_km", "p95_km", "within_0_5km",
                            "within_1km", "within_5km", "within_25km", "within_100km",
                            "far_200km", "far_500km", "geoscore"}
    assert (figures["median_km"], figures["mean_km"]) == (50, 50)
    assert (figures["p90_km"], figures["p95_km"]) == (90, 95)
    assert figures["within_0_5km"] == pytest.approx(1 / 101)       # only the 0
    assert figures["within_1km"] == pytest.approx(2 / 101)
    assert figures["within_100km"] == 1.0
    assert metrics.distance_metrics([0.5, 200, 500, 501])["within_0_5km"] == 0.25
    assert metrics.distance_metrics([0.5, 200, 500, 501])["far_200km"] == 0.5
    assert figures["geoscore"] == pytest.approx(
        np.mean(5000 * np.exp(-errors / metrics.GEOSCORE_KM)))


def test_distance_metrics_score_one_error_refuse_none_and_work_in_float64():
    assert metrics.distance_metrics([3.0])["median_km"] == 3.0
    with pytest.raises(ValueError, match="^no predictions to score$"):
        metrics.distance_metrics([])
    # float32 errors (a model's) are summed in float64: 1e8 + 3 x 1 is not 1e8 there
    errors = np.array([1e8, 1, 1, 1], dtype=np.float32)
    assert metrics.distance_metrics(errors)["mean_km"] == 25_000_000.75


def test_topk_accuracy_counts_the_label_among_the_k_highest_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 12))
    labels = rng.integers(0, 12, 500)
    ranks = (logits > logits[np.arange(500), labels][:, None]).sum(axis=1)   # 0: the highest
    for k in (1, 3, 12, 20):
        assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(np.mean(ranks < k))
    assert 0 < metrics.topk_accuracy(logits, labels, 3) < 1


def reference_interval(errors, sequences, samples: int, q: float, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap over whole sequences, by repetition: every resample draws the
    sequences with one multinomial call, each photo is repeated as often as its sequence was
    drawn, and np.percentile takes the q-th percentile of that."""
    codes, _ = pd.factorize(np.asarray(sequences))
    drives = codes.max() + 1
    draws = np.random.default_rng(seed).multinomial(drives, np.full(drives, 1 / drives),
                                                    size=samples)
    values = [np.percentile(np.repeat(np.asarray(errors, np.float64), counts[codes]), q)
              for counts in draws]
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def test_a_paired_difference_is_the_reference_computation():
    """The paired difference and its interval are the reference computation's: both answers'
    percentiles over the same resampled drives, by repetition, for the median by default and
    the 90th percentile at another seed and level; float32 errors are taken in float64."""
    rng = np.random.default_rng(2)
    drives = np.repeat([f"d{i}" for i in range(30)], rng.integers(1, 6, 30))
    errors = rng.lognormal(0, 1, len(drives)).astype(np.float32)
    reference = (errors * rng.uniform(0.5, 2.0, len(drives))).astype(np.float32)

    def by_hand(q: float, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
        codes, _ = pd.factorize(drives)
        draws = np.random.default_rng(seed).multinomial(30, np.full(30, 1 / 30), size=300)
        ours, theirs = errors.astype(np.float64), reference.astype(np.float64)
        values = [np.percentile(np.repeat(ours, counts[codes]), q)
                  - np.percentile(np.repeat(theirs, counts[codes]), q) for counts in draws]
        low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
        return (float(np.percentile(ours, q) - np.percentile(theirs, q)), float(low),
                float(high))

    assert metrics.paired_difference_ci(errors, reference, drives, 300) == pytest.approx(
        by_hand(50), rel=1e-12)
    assert metrics.paired_difference_ci(errors, reference, drives, 300, q=90, seed=3,
                                        level=0.8) == pytest.approx(by_hand(90, 3, 0.8),
                                                                    rel=1e-12)


def test_bootstrap_intervals_resample_whole_sequences():
    """The interval is the reference computation's, for the median by default and for the
    90th percentile, at 95% by default and at another level; float32 errors are taken in
    float64."""
    rng = np.random.default_rng(1)
    sequences = np.repeat([f"s{i}" for i in range(30)], rng.integers(1, 6, 30))
    errors = rng.lognormal(0, 1, len(sequences)).astype(np.float32)
    assert metrics.bootstrap_ci(errors, sequences, 300) == pytest.approx(
        reference_interval(errors, sequences, 300, 50), rel=1e-12)
    assert metrics.bootstrap_ci(errors, sequences, 300, q=90, seed=3, level=0.8) == (
        pytest.approx(reference_interval(errors, sequences, 300, 90, 3, 0.8), rel=1e-12))


def test_drive_draws_come_in_chunks_that_add_up_to_every_resample():
    """100,001 photos: 119 resamples a chunk, three chunks for 300. Together they are the
    resamples of one multinomial call, each photo counted as its drive was drawn."""
    codes = np.arange(100_001) % 7
    chunks = list(metrics.drive_draws(codes, 300, seed=0))
    assert [len(c) for c in chunks] == [119, 119, 62]
    draws = np.random.default_rng(0).multinomial(7, np.full(7, 1 / 7), size=300)
    assert np.array_equal(np.concatenate(chunks), draws[:, codes])


def test_calibration_bins_are_tenths_and_a_certain_answer_is_in_the_last():
    confidence = np.array([0.0, 0.05, 0.55, 0.999, 1.0])
    table = metrics.calibration_table(confidence, np.array([0, 1, 1, 1, 0]),
                                      np.array([9.0, 1.0, 2.0, 3.0, 4.0]))
    assert table["bin_low"].tolist() == [0.0, 0.5, 0.9]
    assert table["images"].tolist() == [2, 1, 2]
    assert table["accuracy"].tolist() == [0.5, 1.0, 0.5]
    assert table["median_km"].tolist() == [5.0, 2.0, 3.5]
    assert metrics.expected_calibration_error(table) == pytest.approx(
        (2 * abs(0.025 - 0.5) + abs(0.55 - 1) + 2 * abs(0.9995 - 0.5)) / 5)


# --- the Recipe and the modes' edges ---------------------------------------------------------


def test_a_recipe_offers_the_modes_its_outputs_allow():
    cells = cell_table([PARIS, MARSEILLE])
    logits, offsets, features = np.zeros((1, 2)), np.zeros((1, 2, 2)), np.zeros((1, 4))
    plain = inference.Recipe(cells, top_k=2)
    assert "hybrid" in plain.modes(Outputs(None, logits, offsets))
    assert "hybrid" not in plain.modes(Outputs(None, logits))
    # retrieval needs both the index and the features
    assert "retrieval" not in plain.modes(Outputs(None, logits, features=features))
    _, index, _, _ = places_world()
    searching = inference.Recipe(cells, top_k=2, index=index)
    assert "retrieval" not in searching.modes(Outputs(None, logits))
    assert {"retrieval", "place"} <= set(searching.modes(Outputs(None, logits,
                                                                 features=features)))


def test_a_recipe_searches_with_its_settings_or_those_given():
    """Training photos spread around their places, so that the number of neighbours moves
    the medoid."""
    from geoloc.retrieval import retrieval_points

    cells, _, photos, rng = places_world()
    directions = rng.normal(0, 1, (3, 32))
    labels = np.repeat(np.arange(3), 20)
    index = RetrievalIndex.build(directions[labels] * 3 + rng.normal(0, 1, (60, 32)),
                                 cells["lat"].to_numpy()[labels] + rng.normal(0, 0.05, 60),
                                 cells["lon"].to_numpy()[labels], labels, dims=8)
    outputs = photos(12)
    outputs.features = directions[outputs.rows["label"]] * 3 + rng.normal(0, 1, (12, 32))
    recipe = inference.Recipe(cells, top_k=2, index=index, neighbours=1, within_top_cells=0)
    log_probs = recipe.log_probs(outputs)
    for settings in ((1, 0), (5, 2)):
        expected = retrieval_points(index, outputs.features, log_probs, *settings)
        given = recipe.points("retrieval", outputs, *settings)
        assert all(np.array_equal(a, b) for a, b in zip(given, expected, strict=True))
    assert not np.array_equal(recipe.points("retrieval", outputs, 5, 2)[1],
                              recipe.points("retrieval", outputs)[1])


def test_a_recipe_moves_the_hybrid_point_by_the_outputs_offsets():
    cells = cell_table([PARIS, MARSEILLE])
    offsets = np.zeros((1, 2, 2))
    offsets[0, 1] = [3.0, 4.0]
    outputs = Outputs(None, np.log(np.array([[0.2, 0.8]])), offsets)
    _, lat, lon = inference.Recipe(cells, top_k=2).points("hybrid", outputs)
    assert geo.haversine_km(*MARSEILLE, lat[0], lon[0]) == pytest.approx(5.0, rel=1e-3)


def test_online_probabilities_grow_with_the_frames_seen():
    """sequence_online: a frame's probabilities are those of the frames up to it, under the
    sequence temperature; sequence: every frame has the whole drive's."""
    cells = cell_table([PARIS, MARSEILLE])
    rows = pd.DataFrame({"sequence_id": ["s"] * 3, "captured_at": [1, 2, 3],
                         "image_id": list("abc")})
    log_probs = logs([0.6, 0.4], [0.3, 0.7], [0.2, 0.8])
    recipe = inference.Recipe(cells, top_k=2, sequence_temperature=2.0)
    outputs = Outputs(rows, log_probs)

    def softmax(x):
        return np.exp(x - np.logaddexp.reduce(x, axis=1, keepdims=True))

    online = recipe.probabilities("sequence_online", outputs)
    assert online == pytest.approx(softmax(np.cumsum(log_probs, axis=0) / 2.0))
    whole = recipe.probabilities("sequence", outputs)
    assert whole == pytest.approx(softmax(np.repeat(log_probs.sum(axis=0, keepdims=True), 3,
                                                    axis=0) / 2.0))


def test_flat_logits_fit_the_search_bound():
    """Logits that say nothing: the likelihood keeps rising with T, and the search stops
    within its last step (0.1% in T) of its bound, 1000."""
    assert 999 < inference.fit_temperature(np.zeros((50, 4)) + np.arange(4),
                                           np.arange(50) % 4) < 1000


def test_modes_that_cannot_answer_say_why():
    cells = cell_table([PARIS, MARSEILLE])
    rows = pd.DataFrame(index=range(1))
    with pytest.raises(GeolocError, match="^evaluate.mode: hybrid needs a model trained with "
                                          "model.hybrid$"):
        inference.mode_points("hybrid", logs([0.5, 0.5]), None, cells, rows, 5)
    with pytest.raises(GeolocError, match="^the retrieval mode needs the features and their "
                                          "index: Recipe.points makes its points$"):
        inference.mode_points("retrieval", logs([0.5, 0.5]), None, cells, rows, 5)


def test_topk_weighs_distances_by_probability():
    """A at 0 km (0.6), B at 10 km and C at 11 km (0.2 each): A's expected distance to the
    others is 4.2 km, B's 6.2: A, though B is nearer the middle of the three."""
    a = (45.0, 5.0)
    b, c = (45.0 + 10 / 111.2, 5.0), (45.0 + 11 / 111.2, 5.0)
    cells = cell_table([a, b, c])
    label, _, _ = inference.mode_points("topk", logs([0.6, 0.2, 0.2]), None, cells,
                                        pd.DataFrame(index=range(1)), 3)
    assert label.tolist() == [0]


def test_hierarchical_keeps_only_the_chosen_parents_cells_at_every_level():
    """Two levels: the coarse parent holding 0.6 wins; inside it, at the next level, the
    group holding 0.4 wins over 0.2, even though the other coarse parent's classes (0.1 in
    all) would be one group of their own there."""
    levels = {4: np.array([0, 0, 0, 1, 1, 1]), 5: np.array([0, 0, 1, 2, 2, 3])}
    probs = np.array([[0.05, 0.05, 0.30, 0.2, 0.2, 0.2]])
    assert inference.hierarchical_labels(np.log(probs), levels).tolist() == [3]


def test_photos_without_a_sequence_or_a_time_are_their_own():
    """A local folder's photo may have no sequence: it is a sequence of its own; two photos of
    one sequence without a time are two places, with one time one place."""
    rows = pd.DataFrame({"sequence_id": [None, None, "s", "s", "s"],
                         "captured_at": [5, 5, 0, 0, 9],
                         "image_id": ["a", "b", "c", "d", "e"]})
    places = inference.view_places(rows)
    assert len(set(places)) == 5
    log_probs = logs([0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5])
    evidence = inference.sequence_evidence(log_probs, rows, online=False)
    assert evidence[0] == pytest.approx(log_probs[0]) and evidence[1] == pytest.approx(
        log_probs[1])
    timed = rows.assign(sequence_id="s", captured_at=[5, 5, 5, 0, 9])
    assert len(set(inference.view_places(timed))) == 3


def test_errors_km_measure_the_models_own_point():
    """What early stopping watches: the argmax cell's point, or with offsets the hybrid
    point."""
    cells = cell_table([PARIS, MARSEILLE])
    rows = pd.DataFrame({"lat": [PARIS[0] + 0.1, MARSEILLE[0]], "lon": [PARIS[1], MARSEILLE[1]]})
    logits = np.array([[2.0, 0.0], [3.0, 0.0]])
    assert inference.errors_km(logits, None, cells, rows) == pytest.approx(
        [geo.haversine_km(*PARIS, PARIS[0] + 0.1, PARIS[1]),
         geo.haversine_km(*PARIS, *MARSEILLE)])
    offsets = np.zeros((2, 2, 2))
    offsets[0, 0] = [0.0, 0.1 * 111.195]
    assert inference.errors_km(logits, offsets, cells, rows)[0] == pytest.approx(0, abs=1e-3)


def test_log_softmax_is_stable_for_large_and_far_apart_logits():
    """Each row shifted by its own largest logit: logits of 1000 do not overflow, and a row far
    below another does not underflow to log 0."""
    logits = np.array([[1000.0, 999.0], [0.0, -1.0]])
    expected = np.log([1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))])
    assert inference.log_softmax(logits) == pytest.approx(np.stack([expected, expected]))
