"""Retrieval: the nearest training photos in a pretrained backbone's feature space, and one
point made from their positions (../shared/reference/geolocation.md, "Retrieval and
refinement").

The index keeps the training photos' features reduced to their principal components and made
unit length (so the inner product is the cosine similarity), with each photo's position and
cell. It therefore holds the training photos' positions: whoever has the index can read them.
A query's neighbours come from all training photos or, with `within_top_cells`, only from
those of the classifier's likeliest cells (PIGEON refines inside its top cells the same way).
Their positions make one point, the medoid: the neighbour with the least similarity-weighted
distance to the others, so that neighbours split between two places pick one of them rather
than a point between.

Places: the views of one place (a panorama's crops, a rig's cameras, a burst) answered together.
The index knows each training photo's place; a training place's vector is the mean of its
views' unit vectors made unit length, its position their mean position. A query place is made
the same way from its views, and all its views get the medoid of its nearest training places.
A place of one view is its photo: place retrieval over one-view places is photo retrieval.

Exact search over the stored vectors with faiss (inner product, flat indexes: one over every
photo and one per cell), built when first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from geoloc.errors import GeolocError
from geoloc.geo import group_mean_points, haversine_km
from geoloc.io import atomic_path

INDEX_NAME = "retrieval.npz"
ARRAYS = ("mean", "components", "vectors", "lat", "lon", "label", "place")
BUILD_ROWS = 8192   # training photos whose features are centred and projected at once
CHUNK = 1024   # queries whose neighbours' distances are held at once (chunk x k x k)


@dataclass
class RetrievalIndex:
    mean: np.ndarray         # D: the training features' mean
    components: np.ndarray   # D x d: their principal components, the largest first
    vectors: np.ndarray      # N x d float16: each training photo, projected, unit length
    lat: np.ndarray          # N
    lon: np.ndarray          # N
    label: np.ndarray        # N: each photo's cell
    place: np.ndarray        # N: each photo's place, numbered 0.. in order of first view
    _searchers: dict = field(default_factory=dict, repr=False)
    _places: RetrievalIndex | None = field(default=None, repr=False)

    @classmethod
    def build(cls, features: np.ndarray, lat, lon, label, dims: int,
              places=None) -> RetrievalIndex:
        """The index of training photos with these features (N x D), keeping `dims`
        principal components (0: all D); `places` keys each photo's place (None: every photo
        a place of its own)."""
        if len(features) == 0:
            raise GeolocError("retrieval: no training photo has features")
        # In float64, but a chunk of rows at a time: a float64 copy of every training photo's
        # features would take gigabytes from about 100k photos on.
        chunks = [slice(start, start + BUILD_ROWS)
                  for start in range(0, len(features), BUILD_ROWS)]
        mean = sum(np.asarray(features[rows], np.float64).sum(axis=0) for rows in chunks)
        mean /= len(features)
        scatter = np.zeros((features.shape[1], features.shape[1]))
        for rows in chunks:
            centred = np.asarray(features[rows], np.float64) - mean
            scatter += centred.T @ centred
        keep = features.shape[1] if dims == 0 else min(dims, *features.shape)
        values, vectors = np.linalg.eigh(scatter)
        components = vectors[:, ::-1][:, :keep]
        # An eigenvector's sign is arbitrary: fix it, so the same features give the same index.
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(keep)])
        components = (components * signs).astype(np.float32)
        place = (np.arange(len(features)) if places is None
                 else pd.factorize(np.asarray(places, dtype=object))[0])
        index = cls(mean.astype(np.float32), components, np.zeros((0, keep), np.float16),
                    np.asarray(lat, np.float64), np.asarray(lon, np.float64),
                    np.asarray(label, np.int64), place.astype(np.int64))
        index.vectors = np.concatenate([index.project(features[rows]).astype(np.float16)
                                        for rows in chunks])
        return index

    def project(self, features: np.ndarray) -> np.ndarray:
        """Features (Q x D) as unit vectors in the index's space (Q x d, float32)."""
        projected = ((np.asarray(features, np.float32) - self.mean) @ self.components)
        projected = np.ascontiguousarray(projected, dtype=np.float32)
        faiss.normalize_L2(projected)
        return projected

    def of_places(self) -> RetrievalIndex:
        """The index of the training places (made once): one vector per place, the unit mean
        of its views' vectors, at their mean position, in its first view's cell."""
        if self._places is None:
            vectors = unit_means(self.vectors, self.place)
            first = np.unique(self.place, return_index=True)[1]
            lat, lon = group_mean_points(self.lat, self.lon, self.place)
            # A place of one view is where its photo is, exactly (no trip through 3-D).
            alone = _views(self.place) == 1
            lat, lon = (np.where(alone, self.lat[first], lat),
                        np.where(alone, self.lon[first], lon))
            self._places = RetrievalIndex(self.mean, self.components, vectors, lat, lon,
                                          self.label[first], np.arange(len(vectors)))
        return self._places

    def save(self, path: Path | str) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            np.savez(file, **{name: getattr(self, name) for name in ARRAYS})

    @classmethod
    def load(cls, path: Path | str) -> RetrievalIndex:
        path = Path(path)
        if not path.exists():
            raise GeolocError(f"{path} not found: run the evaluate stage")
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ARRAYS if name not in arrays]
            if missing:
                raise GeolocError(f"{path} lacks {', '.join(missing)}: it was written by an "
                                  f"older geoloc; run the evaluate stage again")
            return cls(**{name: arrays[name] for name in ARRAYS})

    def search(self, queries: np.ndarray, k: int, cells: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """(photo numbers Q x k, similarities Q x k), most similar first, of the k nearest
        training photos of each query (projected vectors); with `cells` (Q x c labels), among
        the photos of those cells only. Where fewer than k photos qualify, the rest is -1."""
        if cells is None:
            return self._search_in(None, queries, k)
        found = np.full((len(queries), cells.shape[1] * k), -1, dtype=np.int64)
        similarity = np.full(found.shape, -np.inf, dtype=np.float32)
        for column in range(cells.shape[1]):
            for label in np.unique(cells[:, column]):
                rows = np.flatnonzero(cells[:, column] == label)
                ids, sims = self._search_in(int(label), queries[rows], k)
                found[rows, column * k:(column + 1) * k] = ids
                similarity[rows, column * k:(column + 1) * k] = np.where(ids >= 0, sims, -np.inf)
        best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(found, best, axis=1),
                np.take_along_axis(similarity, best, axis=1))

    def _search_in(self, label: int | None, queries: np.ndarray, k: int):
        """Search the photos of cell `label` (None: every photo), as photo numbers."""
        if label not in self._searchers:
            members = (np.arange(len(self.label)) if label is None
                       else np.flatnonzero(self.label == label))
            searcher = faiss.IndexFlatIP(self.vectors.shape[1])
            # Unit length again in float32 (float16 storage leaves them off by ~1e-3), so a
            # place of one view and its photo score alike.
            vectors = np.array(self.vectors[members], dtype=np.float32)
            faiss.normalize_L2(vectors)
            searcher.add(vectors)
            self._searchers[label] = (searcher, members)
        searcher, members = self._searchers[label]
        if searcher.ntotal == 0:
            return (np.full((len(queries), k), -1, np.int64),
                    np.full((len(queries), k), -np.inf, np.float32))
        sims, found = searcher.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return (np.where(found >= 0, members[np.maximum(found, 0)], -1),
                np.where(found >= 0, sims, -np.inf))


def retrieval_points(index: RetrievalIndex, features: np.ndarray, log_probs: np.ndarray | None,
                     neighbours: int, within_top_cells: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, lat, lon) per query: the medoid of the positions of its `neighbours` nearest
    training photos, among those of its `within_top_cells` likeliest cells under `log_probs`
    (0: among all); the label is the chosen photo's cell. Cells without a training photo are
    never among the top cells: the likeliest cells that have photos are."""
    return _nearest_medoids(index, index.project(features), log_probs, neighbours,
                            within_top_cells)


def place_points(index: RetrievalIndex, features: np.ndarray, places, log_probs: np.ndarray | None,
                 neighbours: int, within_top_cells: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, lat, lon) per query photo: its place's answer. The photos whose `places` key is
    the same are the views of one place; the place's vector is their unit mean, its cells'
    log-probabilities their mean, and its answer the medoid of the positions of its
    `neighbours` nearest training places (RetrievalIndex.of_places)."""
    place = pd.factorize(np.asarray(places, dtype=object))[0]
    queries = unit_means(index.project(features), place)
    place_log_probs = (None if log_probs is None else
                       _grouped_sums(np.asarray(log_probs, np.float64), place)
                       / _views(place)[:, None])
    label, lat, lon = _nearest_medoids(index.of_places(), queries, place_log_probs, neighbours,
                                       within_top_cells)
    return label[place], lat[place], lon[place]


def unit_means(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group (numbered 0..G-1), the mean of its rows' vectors made unit length (G x d,
    float32); a group of one row is that row, made unit length."""
    means = _grouped_sums(np.asarray(vectors, np.float32), groups).astype(np.float32)
    faiss.normalize_L2(means)
    return means


def _grouped_sums(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])
    return np.add.reduceat(values[order], starts, axis=0)


def _views(groups: np.ndarray) -> np.ndarray:
    """The number of rows of each group."""
    return np.bincount(groups).astype(np.float64)


def _nearest_medoids(index: RetrievalIndex, queries: np.ndarray, log_probs: np.ndarray | None,
                     neighbours: int, within_top_cells: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """retrieval_points for queries already projected and unit length."""
    cells = None
    if within_top_cells > 0:
        k = min(within_top_cells, log_probs.shape[1])
        held = np.bincount(index.label, minlength=log_probs.shape[1]) > 0
        ranked = np.where(held, log_probs, -np.inf)
        cells = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    photos = np.full(len(queries), -1, dtype=np.int64)   # -1: none left unanswered unseen
    for start in range(0, len(queries), CHUNK):
        part = slice(start, start + CHUNK)
        found, similarity = index.search(queries[part], neighbours,
                                         None if cells is None else cells[part])
        photos[part] = found[np.arange(len(found)), _medoids(index, found, similarity)]
    return index.label[photos], index.lat[photos], index.lon[photos]


def _medoids(index: RetrievalIndex, found: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Per query, the column of the neighbour whose similarity-weighted distance to the other
    neighbours is least (the most similar one on a tie)."""
    valid = found >= 0
    if not valid[:, 0].all():
        raise GeolocError("retrieval: a query found no training photo (an empty cell index)")
    ids = np.where(valid, found, found[:, :1])
    lat, lon = index.lat[ids], index.lon[ids]
    km = haversine_km(lat[:, :, None], lon[:, :, None], lat[:, None, :], lon[:, None, :])
    weights = np.where(valid, np.clip(similarity, 0, None) + 1e-6, 0.0)
    cost = (km * weights[:, None, :]).sum(axis=2)
    cost[~valid] = np.inf
    return cost.argmin(axis=1)
