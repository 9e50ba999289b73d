"""From images to logits (and offsets) to points on the map.

A point comes from the cell probabilities in one of several modes (the evaluate stage reports
them all; ../shared/reference/geolocation.md says where each comes from):
- argmax: the most likely cell's point;
- topk: of the k most likely cells' points, the one with the least expected distance to the
  others under their renormalised probabilities (a medoid: it stays on a cell's point);
- topk_mean: the probability-weighted mean of those k points on the sphere;
- hierarchical: coarse to fine, the likeliest parent at each coarser resolution (the cells'
  summed probabilities), then the likeliest cell inside it;
- hybrid: the argmax cell's point moved by the hybrid head's offset for that cell;
- sequence: every frame of a sequence gets the argmax of the sequence's summed
  log-probabilities; sequence_online sums only the frames captured up to this one. Photos of
  one place (a panorama's faces, a rig's cameras: one view group, or one sequence and one
  capture time) count as one frame: their log-probabilities are averaged first;
- retrieval: the medoid of the positions of the nearest training photos in a pretrained
  backbone's feature space (geoloc.retrieval);
- place: the same for the views of one place together (one view group, or one sequence and
  one capture time, as for the sequence modes), against the training places: every view gets
  its place's answer. Photos given together with no rows are the views of one place.

A Recipe holds what turns a model's Outputs into points (the class table, the temperatures,
retrieval's index): the evaluate stage builds it and scores with it, the export ships it, and
the predictor of a snapshot rebuilds it and answers with it. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from geoloc.choices import MODES, RETRIEVAL_MODES, SEQUENCE_MODES
from geoloc.data.cells import hierarchy_levels
from geoloc.errors import GeolocError
from geoloc.geo import haversine_km, mean_point, shift_km


@dataclass
class Outputs:
    """What inference starts from, for a split's rows (in order): the classifier's logits,
    the hybrid head's offsets (or None) and the backbone features retrieval searches with (or
    None). Only the sequence modes read the rows: a served photo in another mode has None."""
    rows: pd.DataFrame | None
    logits: np.ndarray
    offsets: np.ndarray | None = None
    features: np.ndarray | None = None


class ClassTable:
    """The class table ordered by label, with the arrays every mode reads, made once: a served
    photo then pays for none of it (the pandas work would hold the GIL the server's other
    threads need)."""

    def __init__(self, cells: pd.DataFrame):
        self.table = cells.set_index("label").sort_index()
        self.lat = self.table["lat"].to_numpy()
        self.lon = self.table["lon"].to_numpy()

    @cached_property
    def levels(self) -> dict[int, np.ndarray]:
        return hierarchy_levels(self.table.reset_index())


@dataclass
class Recipe:
    """What turns a model's outputs into points, fixed by the evaluate stage: the class table
    (labels, points, resolutions and parents), the number of cells the top-k modes weigh, the
    temperatures fitted on val, and retrieval's index (a geoloc.retrieval.RetrievalIndex, or
    None) and settings."""
    cells: pd.DataFrame
    top_k: int
    temperature: float = 1.0
    sequence_temperature: float = 1.0
    index: object = None
    neighbours: int = 10
    within_top_cells: int = 0
    classes: ClassTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.classes = ClassTable(self.cells)

    def settings(self) -> dict:
        """What the evaluate stage fixed, as a snapshot stores it (cells and index apart)."""
        return {"top_k": self.top_k, "temperature": self.temperature,
                "sequence_temperature": self.sequence_temperature,
                "neighbours": self.neighbours, "within_top_cells": self.within_top_cells}

    def modes(self, outputs: Outputs) -> tuple[str, ...]:
        return available_modes(outputs.offsets is not None,
                               self.index is not None and outputs.features is not None)

    def log_probs(self, outputs: Outputs) -> np.ndarray:
        # In float64 whatever the model gave: evaluate (float32 from torch) and the predictor
        # (from ONNX Runtime) then compute alike.
        return log_softmax(np.asarray(outputs.logits, dtype=np.float64) / self.temperature)

    def points(self, mode: str, outputs: Outputs, neighbours: int | None = None,
               within_top_cells: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, lat, lon) per row under `mode`, one of self.modes(outputs): see mode_points,
        retrieval_points and place_points. The retrieval modes search with the recipe's
        settings, or those given."""
        log_probs = self.log_probs(outputs)
        if mode in RETRIEVAL_MODES:
            # faiss loads only for retrieval
            from geoloc.retrieval import place_points, retrieval_points

            settings = (self.neighbours if neighbours is None else neighbours,
                        self.within_top_cells if within_top_cells is None else within_top_cells)
            if mode == "place":
                return place_points(self.index, outputs.features, query_places(outputs),
                                    log_probs, *settings)
            return retrieval_points(self.index, outputs.features, log_probs, *settings)
        return _mode_points(mode, log_probs, outputs.offsets, self.classes, outputs.rows,
                            self.top_k)

    def probabilities(self, mode: str, outputs: Outputs) -> np.ndarray:
        """N x K: the cell probabilities a mode's answer comes with. The sequence modes' are
        their evidence's under the sequence temperature; place's, the mean of its views'
        log-probabilities, renormalised; the others', each photo's own."""
        log_probs = self.log_probs(outputs)
        if mode in SEQUENCE_MODES:
            evidence = sequence_evidence(log_probs, outputs.rows,
                                         online=mode == "sequence_online")
            log_probs = log_softmax(evidence / self.sequence_temperature)
        if mode == "place":
            place = pd.factorize(query_places(outputs))[0]
            log_probs = log_softmax(pd.DataFrame(log_probs).groupby(place).transform("mean")
                                    .to_numpy())
        return np.exp(log_probs)


def errors_km(logits: np.ndarray, offsets: np.ndarray | None, cells: pd.DataFrame,
              rows: pd.DataFrame) -> np.ndarray:
    """Each row's error in km of the model's own point: the argmax cell's, moved by the
    hybrid head's offset where the model has one (what early stopping watches)."""
    mode = "argmax" if offsets is None else "hybrid"
    _, lat, lon = mode_points(mode, log_softmax(logits), offsets, cells, rows, top_k=1)
    return haversine_km(rows["lat"].to_numpy(), rows["lon"].to_numpy(), lat, lon)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(logits / T) on
    held-out rows (Guo et al. 2017): label smoothing and dropout leave a classifier under-
    confident, and the modes that weigh several cells need probabilities that mean what they
    say; a sequence's summed evidence is over-confident, its frames being far from
    independent. A search over log T (the NLL is convex in 1/T), to 0.1 % in T."""
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        scaled = log_softmax(logits / np.exp(log_t))
        return -float(scaled[np.arange(len(labels)), labels].mean())

    low, high = np.log(0.01), np.log(1000.0)
    golden = (np.sqrt(5) - 1) / 2
    while high - low > 1e-3:
        a, b = high - golden * (high - low), low + golden * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def available_modes(hybrid: bool, retrieval: bool) -> tuple[str, ...]:
    """The modes a model's outputs allow: hybrid needs the hybrid head's offsets, retrieval
    and place the features and their index."""
    needs = {"hybrid": hybrid, "retrieval": retrieval, "place": retrieval}
    return tuple(m for m in MODES if needs.get(m, True))


def mode_points(mode: str, log_probs: np.ndarray, offsets: np.ndarray | None,
                cells: pd.DataFrame, rows: pd.DataFrame, top_k: int,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, lat, lon) per row of `rows` (in the order of `log_probs`) under `mode`. The
    label is the cell whose point was chosen, or -1 where the point is no cell's (topk_mean)."""
    return _mode_points(mode, log_probs, offsets, ClassTable(cells), rows, top_k)


def _mode_points(mode: str, log_probs: np.ndarray, offsets: np.ndarray | None,
                 classes: ClassTable, rows: pd.DataFrame | None, top_k: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = classes.lat, classes.lon
    if mode == "topk_mean":
        top = _top(log_probs, top_k)
        weights = _renormalised(log_probs, top)
        lat, lon = mean_point(points[0][top], points[1][top], weights)
        return np.full(len(top), -1), lat, lon
    if mode == "hybrid":
        if offsets is None:
            raise GeolocError("evaluate.mode: hybrid needs a model trained with model.hybrid")
        best = log_probs.argmax(axis=1)
        east, north = offsets[np.arange(len(best)), best].T
        return best, *shift_km(points[0][best], points[1][best], east, north)
    label = _mode_labels(mode, log_probs, classes, rows, top_k)
    return label, points[0][label], points[1][label]


def _mode_labels(mode: str, log_probs: np.ndarray, classes: ClassTable,
                 rows: pd.DataFrame | None, top_k: int) -> np.ndarray:
    if mode == "argmax":
        return log_probs.argmax(axis=1)
    if mode == "topk":
        return topk_medoid(log_probs, classes.lat, classes.lon, top_k)
    if mode == "hierarchical":
        return hierarchical_labels(log_probs, classes.levels)
    if mode in SEQUENCE_MODES:
        return sequence_labels(log_probs, rows, online=mode == "sequence_online")
    if mode in RETRIEVAL_MODES:
        raise GeolocError(f"the {mode} mode needs the features and their index: "
                          f"Recipe.points makes its points")
    raise GeolocError(f"evaluate.mode: unknown mode {mode!r}; known: {', '.join(MODES)}")


def topk_medoid(log_probs: np.ndarray, lat: np.ndarray, lon: np.ndarray, k: int) -> np.ndarray:
    """The label, among each row's k likeliest, whose point minimises the expected distance to
    the k points under their renormalised probabilities."""
    top = _top(log_probs, k)
    weights = _renormalised(log_probs, top)
    km = haversine_km(lat[top][:, :, None], lon[top][:, :, None],
                      lat[top][:, None, :], lon[top][:, None, :])    # N x k x k
    expected = (km * weights[:, None, :]).sum(axis=2)
    return top[np.arange(len(top)), expected.argmin(axis=1)]


def hierarchical_labels(log_probs: np.ndarray, levels: dict[int, np.ndarray]) -> np.ndarray:
    """From the coarsest resolution down (`levels`: hierarchy_levels of the class table): keep
    the cells of the parent with the most summed probability among those still kept, then the
    likeliest cell left."""
    probs = np.exp(log_probs)
    kept = np.ones_like(probs, dtype=bool)
    for _, groups in sorted(levels.items()):
        mass = np.zeros((len(probs), groups.max() + 1))
        np.add.at(mass.T, groups, np.where(kept, probs, 0.0).T)
        kept &= groups[None, :] == mass.argmax(axis=1)[:, None]
    return np.where(kept, probs, -1.0).argmax(axis=1)


def sequence_labels(log_probs: np.ndarray, rows: pd.DataFrame, *, online: bool) -> np.ndarray:
    """Each frame's label: the argmax of its sequence's evidence (sequence_evidence)."""
    return sequence_evidence(log_probs, rows, online=online).argmax(axis=1)


def sequence_evidence(log_probs: np.ndarray, rows: pd.DataFrame, *, online: bool) -> np.ndarray:
    """For each frame, the summed log-probabilities of its sequence's places (N x K): all of
    them, or (online) those captured no later than its own, as a live client has them. The
    photos of one place (view_places) count as one frame: their log-probabilities are averaged
    first, so four faces of a panorama weigh what one photo does."""
    # A photo without a sequence (a local folder's) is a sequence of its own.
    sequence = rows["sequence_id"].fillna(rows["image_id"]).to_numpy()
    place = view_places(rows)
    per_place = pd.DataFrame(log_probs).groupby(place, sort=False).mean()
    frames = pd.DataFrame({"place": place, "sequence": sequence,
                           "time": rows["captured_at"].to_numpy(), "row": np.arange(len(rows))})
    meta = frames.groupby("place", sort=False).agg(sequence=("sequence", "first"),
                                                   time=("time", "min"), row=("row", "min"))
    # Places of one time (no time known: 0) come in the rows' order.
    meta = meta.loc[per_place.index].reset_index().sort_values(["sequence", "time", "row"],
                                                                kind="stable")
    scores = per_place.loc[meta["place"]].groupby(meta["sequence"].to_numpy(), sort=False)
    summed = (scores.cumsum() if online else scores.transform("sum"))
    summed.index = meta["place"].to_numpy()
    return summed.loc[place].to_numpy()


def query_places(outputs: Outputs) -> np.ndarray:
    """The place of each row of `outputs`: view_places of its rows or, without rows, one place
    for them all (the views a client sent together)."""
    if outputs.rows is None:
        return np.zeros(len(outputs.logits), dtype=object)
    return view_places(outputs.rows)


def view_places(rows: pd.DataFrame) -> np.ndarray:
    """A key per place a photo was taken from, within its sequence: its view group where a
    source gave one, else its capture time where known (> 0), else the photo itself. The
    position is never used: it is what is being predicted."""
    sequence = rows["sequence_id"].fillna(rows["image_id"]).astype(str)
    time = rows["captured_at"].astype("int64")
    own = "photo:" + rows["image_id"].astype(str)
    moment = ("moment:" + sequence + "@" + time.astype(str)).where(time > 0, own)
    group = rows["view_group"] if "view_group" in rows else pd.Series(pd.NA, index=rows.index)
    place = "group:" + sequence + "@" + group.astype("string")
    return place.fillna(moment).to_numpy(dtype=object)


def _top(log_probs: np.ndarray, k: int) -> np.ndarray:
    """N x k labels of each row's k likeliest cells, likeliest first."""
    k = min(k, log_probs.shape[1])
    top = np.argpartition(-log_probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(log_probs, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _renormalised(log_probs: np.ndarray, top: np.ndarray) -> np.ndarray:
    weights = np.exp(np.take_along_axis(log_probs, top, axis=1))
    return weights / weights.sum(axis=1, keepdims=True)
