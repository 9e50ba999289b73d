"""Retrieval: the feature index (principal components, unit vectors), its search among all
training photos or among those of the top cells, the medoid of the neighbours' positions."""

import numpy as np
import pytest
from conftest import brute_force_search

from geoloc.errors import GeolocError
from geoloc.geo import haversine_km
from geoloc.retrieval import RetrievalIndex, _medoids, place_points, retrieval_points

PLACES = np.array([[48.85, 2.35], [43.30, 5.37], [45.76, 4.84]])   # Paris, Marseille, Lyon


def photos(n_per_place: int = 30, dim: int = 64, seed: int = 0):
    """Features that say where a photo was taken: one direction per place, plus noise; each
    photo a few hundred metres from its place's centre."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(0, 1, (len(PLACES), dim))
    label = np.repeat(np.arange(len(PLACES)), n_per_place)
    features = directions[label] * 3 + rng.normal(0, 1, (len(label), dim))
    lat = PLACES[label, 0] + rng.normal(0, 0.003, len(label))
    lon = PLACES[label, 1] + rng.normal(0, 0.003, len(label))
    return features.astype(np.float32), lat, lon, label, directions


def test_queries_find_the_photos_of_their_place():
    features, lat, lon, label, directions = photos()
    index = RetrievalIndex.build(features, lat, lon, label, dims=16)
    assert index.vectors.shape == (90, 16) and index.vectors.dtype == np.float16
    assert np.linalg.norm(index.vectors.astype(np.float32), axis=1) == pytest.approx(1, abs=1e-3)
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 40)
    queries = directions[truth] * 3 + rng.normal(0, 1, (40, 64))
    cell, qlat, qlon = retrieval_points(index, queries, None, neighbours=5, within_top_cells=0)
    assert (cell == truth).all()
    assert haversine_km(PLACES[truth, 0], PLACES[truth, 1], qlat, qlon).max() < 2


def test_the_medoid_stays_with_the_majority_of_the_neighbours():
    """Of 5 neighbours, the most similar one is in Marseille and four are in Paris: the point
    is one of Paris's, not Marseille nor anywhere between."""
    features, lat, lon, label, _ = photos(n_per_place=4)
    index = RetrievalIndex.build(features, lat, lon, label, dims=0)
    found = np.array([[4, 0, 1, 2, 3], [4, 5, 0, -1, -1]])   # photos 4, 5: Marseille's
    similarity = np.array([[0.9, 0.8, 0.8, 0.7, 0.7], [0.9, 0.8, 0.7, -np.inf, -np.inf]],
                          dtype=np.float32)
    chosen = _medoids(index, found, similarity)
    assert label[found[0, chosen[0]]] == 0 and chosen[0] != 0
    # Two of three valid neighbours in Marseille: the missing ones (-1) take no part.
    assert label[found[1, chosen[1]]] == 1


def test_within_top_cells_only_photos_of_those_cells_answer():
    features, lat, lon, label, directions = photos()
    index = RetrievalIndex.build(features, lat, lon, label, dims=16)
    query = directions[[0]] * 3                     # looks like Paris
    log_probs = np.log([[0.1, 0.6, 0.3]])           # the classifier prefers Marseille, Lyon
    cell, _, _ = retrieval_points(index, query, log_probs, neighbours=5, within_top_cells=2)
    assert cell.tolist() == [1] or cell.tolist() == [2]
    found, similarity = index.search(index.project(query), 5, np.array([[1, 2]]))
    assert set(label[found[0]]) <= {1, 2} and (np.diff(similarity[0]) <= 0).all()
    # In a cell with fewer photos than neighbours asked for, the rest is -1.
    found, _ = index.search(index.project(query), 40, np.array([[0]]))
    assert (found[0, :30] >= 0).all() and (found[0, 30:] == -1).all()


def test_the_index_is_the_same_from_the_same_features_and_survives_a_round_trip(tmp_path,
                                                                               monkeypatch):
    features, lat, lon, label, _ = photos()
    first = RetrievalIndex.build(features, lat, lon, label, dims=8)
    # An eigenvector's sign is arbitrary (another LAPACK may return the other one): the index
    # must not follow it.
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda m: (eigh(m)[0], -eigh(m)[1]))
    second = RetrievalIndex.build(features.copy(), lat, lon, label, dims=8)
    first.save(tmp_path / "a.npz")
    second.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = RetrievalIndex.load(tmp_path / "a.npz")
    for name in ("mean", "components", "vectors", "lat", "lon", "label", "place"):
        assert np.array_equal(getattr(loaded, name), getattr(first, name)), name
    with pytest.raises(GeolocError, match="not found: run the evaluate stage"):
        RetrievalIndex.load(tmp_path / "missing.npz")
    # An index of an older geoloc, without places, is named as such.
    with np.load(tmp_path / "a.npz") as arrays:
        np.savez(tmp_path / "old.npz", **{k: arrays[k] for k in arrays if k != "place"})
    with pytest.raises(GeolocError, match="old.npz lacks place: .* run the evaluate stage"):
        RetrievalIndex.load(tmp_path / "old.npz")


def test_the_index_built_a_chunk_at_a_time_is_the_full_computation(monkeypatch):
    """Centred and projected a few rows at a time (memory bounded at any size), the index
    equals a principal component analysis of all the features at once."""
    rng = np.random.default_rng(3)
    features = (rng.normal(size=(50, 12)) * np.arange(1, 13)).astype(np.float32)
    monkeypatch.setattr("geoloc.retrieval.BUILD_ROWS", 7)
    index = RetrievalIndex.build(features, np.zeros(50), np.zeros(50), np.zeros(50), dims=4)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, ::-1][:, :4]
    np.testing.assert_allclose(index.mean, features.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs(index.components), np.abs(top), atol=1e-5)
    projected = centred @ (top * np.sign((top * index.components).sum(axis=0)))
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    np.testing.assert_allclose(index.vectors, projected, atol=2e-3)


def places_of(n_places: int, views: int, seed: int):
    """`n_places` places around Paris, Marseille and Lyon, each seen in `views` views: a
    place's views share its position (to a few metres) and a direction of its own in feature
    space (the caller adds the noise that makes one view alone a poor match)."""
    rng = np.random.default_rng(seed)
    city = np.arange(n_places) % len(PLACES)
    centre = PLACES[city] + rng.normal(0, 0.05, (n_places, 2))
    place = np.repeat(np.arange(n_places), views)
    lat = centre[place, 0] + rng.normal(0, 0.00003, len(place))
    lon = centre[place, 1] + rng.normal(0, 0.00003, len(place))
    return place, lat, lon, city[place]


def test_a_place_of_one_view_is_its_photo():
    """Where every place, training or query, has one view, place retrieval is photo
    retrieval, at every setting."""
    features, lat, lon, label, directions = photos()
    index = RetrievalIndex.build(features, lat, lon, label, dims=16,
                                 places=[f"p{i}" for i in range(len(label))])
    rng = np.random.default_rng(2)
    queries = directions[rng.integers(0, 3, 40)] * 3 + rng.normal(0, 3, (40, 64))
    log_probs = np.log(rng.dirichlet(np.ones(3), 40))
    for neighbours, within in ((1, 0), (5, 0), (5, 2)):
        photo = retrieval_points(index, queries, log_probs, neighbours, within)
        place = place_points(index, queries, np.arange(40), log_probs, neighbours, within)
        for a, b in zip(photo, place, strict=True):
            assert np.array_equal(a, b), (neighbours, within)


def test_the_views_of_a_place_answered_together_beat_each_view_alone():
    """Four noisy views of each place: alone, a view often matches another place's views;
    their mean rarely does. Every view of a query place gets one answer: its place's."""
    dim = 64
    rng = np.random.default_rng(5)
    train_place, lat, lon, label = places_of(60, views=4, seed=5)
    signature = rng.normal(0, 1, (60, dim))
    features = signature[train_place] + rng.normal(0, 2.0, (len(train_place), dim))
    # The training photos in no order: a place's views are not next to each other.
    shuffle = rng.permutation(len(train_place))
    index = RetrievalIndex.build(features[shuffle], lat[shuffle], lon[shuffle],
                                 label[shuffle], dims=0,
                                 places=[f"p{p}" for p in train_place[shuffle]])
    places = index.of_places()
    assert len(places.label) == 60
    # Places are numbered in order of their first view; each is at its views' mean position.
    first = train_place[shuffle][np.sort(np.unique(train_place[shuffle], return_index=True)[1])]
    assert np.array_equal(places.label, label[::4][first])
    assert np.abs(places.lat - lat.reshape(60, 4).mean(axis=1)[first]).max() < 1e-6
    assert np.abs(places.lon - lon.reshape(60, 4).mean(axis=1)[first]).max() < 1e-6
    # Query: the same 60 places seen again, in 4 new views each.
    query_place = np.repeat(np.arange(60), 4)
    queries = signature[query_place] + rng.normal(0, 2.0, (240, dim))
    keys = np.array([f"q{p}" for p in query_place], dtype=object)
    _, plat, plon = place_points(index, queries, keys, None, neighbours=1, within_top_cells=0)
    _, rlat, rlon = retrieval_points(index, queries, None, neighbours=1, within_top_cells=0)
    truth_lat, truth_lon = lat[::4][query_place], lon[::4][query_place]
    place_km = haversine_km(truth_lat, truth_lon, plat, plon)
    photo_km = haversine_km(truth_lat, truth_lon, rlat, rlon)
    assert (place_km < 0.1).mean() > 0.95 > 0.5 > (photo_km < 0.1).mean()
    assert (plat.reshape(60, 4) == plat[::4, None]).all()   # one answer per place


def test_a_search_among_cells_pads_what_they_lack():
    """Cells holding 3, 1 and no photos, 3 neighbours asked for: each query gets what its
    cells hold, most similar first, then -1 with similarity -inf."""
    features, lat, lon, _, directions = photos(n_per_place=2)
    label = np.array([0, 0, 0, 1, 3, 3])          # cell 2 holds no photo
    index = RetrievalIndex.build(features, lat, lon, label, dims=8)
    queries = directions[[0, 1, 2, 0]] * 3
    cells = np.array([[0], [1], [2], [1]])
    found, similarity = index.search(index.project(queries), 3, cells)
    ids, sims = brute_force_search(index, queries, 3, cells)
    assert found.tolist() == ids.tolist() and found.dtype == np.int64
    assert similarity == pytest.approx(sims, abs=1e-3) and similarity.dtype == np.float32
    assert found[2].tolist() == [-1, -1, -1] and np.isneginf(similarity[2]).all()
    assert found[1].tolist() == [3, -1, -1]
    # among all photos, more neighbours than photos: the rest is -1 and -inf as well
    found, similarity = index.search(index.project(queries[:1]), 8)
    assert (found[0, 6:] == -1).all() and np.isneginf(similarity[0, 6:]).all()
    assert (found[0, :6] >= 0).all() and np.isfinite(similarity[0, :6]).all()
    # two cells: their photos together, the best first
    found, similarity = index.search(index.project(queries[:1]), 4, np.array([[3, 0]]))
    ids, sims = brute_force_search(index, queries[:1], 4, np.array([[3, 0]]))
    assert found.tolist() == ids.tolist()


def test_within_the_top_cell_skips_cells_without_photos():
    """The likeliest cell holds no training photo (nor does the last): the likeliest that holds
    some answers; with within_top_cells 1, only that one."""
    features, lat, lon, _, directions = photos(n_per_place=4)
    label = np.repeat([0, 1, 3], 4)               # cell 2 holds none
    index = RetrievalIndex.build(features, lat, lon, label, dims=8)
    query = directions[[0]] * 3                   # looks like cell 0's photos
    log_probs = np.log([[0.1, 0.2, 0.5, 0.1, 0.1]])   # cell 2 likeliest, then 1; 4 holds none
    cell, qlat, _ = retrieval_points(index, query, log_probs, neighbours=1, within_top_cells=1)
    ids, _ = brute_force_search(index, query, 1, np.array([[1]]))
    assert cell.tolist() == [1] and qlat[0] == lat[ids[0, 0]]
    assert retrieval_points(index, query, log_probs, 1, 0)[0].tolist() == [0]


def test_a_cell_with_one_training_photo_can_answer():
    """The likeliest cell holds a single training photo: within the top cell, that photo is
    the answer."""
    features, lat, lon, _, directions = photos(n_per_place=4)
    label = np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2])   # cell 1: photo 4 alone
    index = RetrievalIndex.build(features, lat, lon, label, dims=8)
    log_probs = np.log([[0.2, 0.5, 0.3]])
    cell, qlat, qlon = retrieval_points(index, directions[[0]] * 3, log_probs, neighbours=3,
                                        within_top_cells=1)
    assert cell.tolist() == [1] and (qlat[0], qlon[0]) == (lat[4], lon[4])


def test_the_medoid_weighs_each_neighbour_by_its_similarity():
    """Neighbours 0, 1 and 3 km along a meridian with similarities 0.9, 0.05 and 0.8: the
    first costs 0.05 x 1 + 0.8 x 3 = 2.45 km, the second 0.9 x 1 + 0.8 x 2 = 2.5 km; counted
    alike, the second would win. A negative similarity weighs nothing, and a missing
    neighbour (-1) neither costs nor counts."""
    km = 1 / 111.195
    lat = 45.0 + np.array([0.0, 1.0, 3.0, 50.0]) * km
    index = RetrievalIndex(np.zeros(2, np.float32), np.eye(2, dtype=np.float32),
                           np.zeros((4, 2), np.float16), lat, np.full(4, 5.0),
                           np.zeros(4, np.int64), np.arange(4))
    found = np.array([[0, 1, 2], [0, 1, 2], [0, 1, -1], [3, 1, 0]])
    similarity = np.array([[0.9, 0.05, 0.8], [0.9, -0.5, 0.8], [0.9, 0.8, -np.inf],
                           [0.05, 0.05, 0.05]], dtype=np.float32)
    assert _medoids(index, found, similarity).tolist() == [0, 0, 0, 1]
    # Two missing neighbours pull towards none of the three found: the middle one stays the
    # medoid (were they counted as copies of the first, the first would win).
    assert _medoids(index, np.array([[0, 1, 2, -1, -1]]), np.array(
        [[0.9, 0.8, 0.8, -np.inf, -np.inf]], dtype=np.float32)).tolist() == [1]
    with pytest.raises(GeolocError, match=r"^retrieval: a query found no training photo \(an "
                                          r"empty cell index\)$"):
        _medoids(index, np.array([[-1, -1]]), np.full((1, 2), -np.inf, np.float32))


def test_the_index_centres_on_the_float64_mean_and_stores_float32():
    """Features far from zero: summed in float32, 20,000 rows would move the mean by about
    1e-3; the index's mean is the float64 mean, stored (with the components) in float32."""
    rng = np.random.default_rng(0)
    features = (1000 + rng.normal(0, 1, (20_000, 4))).astype(np.float32)
    index = RetrievalIndex.build(features, np.zeros(20_000), np.zeros(20_000),
                                 np.zeros(20_000, np.int64), dims=2)
    assert index.mean.dtype == np.float32 and index.components.dtype == np.float32
    np.testing.assert_allclose(index.mean, features.astype(np.float64).mean(axis=0),
                               rtol=0, atol=1e-4)


def test_a_places_vector_is_the_unit_mean_of_its_views_summed_in_float32():
    """The views' vectors are stored in float16; a place's vector sums them in float32 (in
    float16, eight views would lose their third digit), whatever order the places come in."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    place = rng.permutation(np.repeat(np.arange(5), 8))
    index = RetrievalIndex(np.zeros(16, np.float32), np.eye(16, dtype=np.float32), vectors,
                           np.full(40, 45.0), np.full(40, 5.0), np.zeros(40, np.int64), place)
    expected = np.stack([vectors[place == p].astype(np.float64).sum(axis=0) for p in range(5)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    places = index.of_places().vectors
    assert places.dtype == np.float32
    np.testing.assert_allclose(places, expected, rtol=0, atol=2e-6)


def test_queries_are_answered_a_chunk_at_a_time_as_all_at_once(monkeypatch):
    features, lat, lon, label, directions = photos()
    index = RetrievalIndex.build(features, lat, lon, label, dims=16)
    rng = np.random.default_rng(2)
    queries = directions[rng.integers(0, 3, 10)] * 3 + rng.normal(0, 2, (10, 64))
    whole = retrieval_points(index, queries, None, 5, 0)
    monkeypatch.setattr("geoloc.retrieval.CHUNK", 3)
    assert all(np.array_equal(a, b) for a, b in zip(
        retrieval_points(index, queries, None, 5, 0), whole, strict=True))


def test_an_index_needs_photos_and_loads_no_pickles(tmp_path):
    features, lat, lon, label, _ = photos(n_per_place=1)
    with pytest.raises(GeolocError, match="^retrieval: no training photo has features$"):
        RetrievalIndex.build(features[:0], lat[:0], lon[:0], label[:0], dims=4)
    one = RetrievalIndex.build(features[:1], lat[:1], lon[:1], label[:1], dims=4)
    assert one.vectors.shape == (1, 1)
    index = RetrievalIndex.build(features, lat, lon, label, dims=2)
    arrays = {name: getattr(index, name) for name in ("mean", "components", "vectors", "lat",
                                                      "lon", "label")}
    np.savez(tmp_path / "pickled.npz", **arrays, place=np.array(["a", None, "c"], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        RetrievalIndex.load(tmp_path / "pickled.npz")
    del arrays["lat"]
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(GeolocError, match="old.npz lacks lat, place: it was written by an"):
        RetrievalIndex.load(tmp_path / "old.npz")
