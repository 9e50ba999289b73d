"""Predict from an exported snapshot (models/export) with ONNX Runtime: no training stack.

The snapshot carries what the evaluate stage scored with: the model's outputs (logits, and
the hybrid head's offsets), the whole class table, the temperatures, the number of cells the
top-k modes weigh, retrieval's backbone and index. The predictor rebuilds that Recipe
(geoloc.inference) and answers with it, in any mode evaluate reported; the default is the
evaluated one. A photo is a file path or its bytes: each input size decodes it afresh, as the
resize cache and the features stage do (a JPEG decoded small for the classifier cannot then
give the backbone its 224 px). The views of one place (a rig's cameras, a burst) get one
answer together: predict_place; a 360 panorama is first cut into views, as the fetch stage cuts
them (the snapshot keeps how), and answered the same way. Each answer names the nearest of the
snapshot's cities (where its training photos were taken), and how far it is.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from PIL import Image

from geoloc.choices import RETRIEVAL_MODES, SEQUENCE_MODES
from geoloc.data.cities import nearest_city
from geoloc.data.preprocess import to_square
from geoloc.errors import GeolocError
from geoloc.exif import photo_position, photo_time
from geoloc.geo import pairwise_km
from geoloc.inference import Outputs, Recipe, available_modes
from geoloc.panorama import is_panorama, views_of
from geoloc.params import PanoramaParams

MODEL_NAME = "model.onnx"
CELLS_NAME = "cells.json"
SPEC_NAME = "model.json"
FEATURES_MODEL = "features.onnx"     # the backbone whose features the retrieval index holds
RETRIEVAL_INDEX = "retrieval.npz"
# What this code reads: 2 added the offsets, the class table's parents and the recipe; 3 the
# places of the retrieval index.
SNAPSHOT_FORMAT = 3
CELL_COLUMNS = ("label", "cell", "lat", "lon", "resolution", "parents")
# Views of one place whose EXIF positions lie further apart than this are answered, with a note:
# they are likely not of one place, and the answer is then of none of them.
PLACE_SPREAD_KM = 0.1

Photo = Path | str | bytes   # a file, or a file's bytes


@dataclass(frozen=True)
class Prediction:
    lat: float
    lon: float
    cell: str
    confidence: float  # the probability of `cell`
    top: list[dict]    # the top-k cells: cell, lat, lon, probability
    mode: str
    views: int = 1     # the views the answer is for, of one place (a panorama: its cut views)
    note: str | None = None
    city: str | None = None        # the snapshot's city nearest the answer (None: it has none)
    city_km: float | None = None   # and how far from it


class Predictor:
    def __init__(self, snapshot: Path | str, threads: int | None = None):
        """`threads`: ONNX Runtime's threads per inference (None: one per core). A server that
        answers requests in parallel wants 1: a session's own pool of threads then spins
        between a request's runs on the cores the other requests are decoding on."""
        snapshot = Path(snapshot)
        for name in (MODEL_NAME, CELLS_NAME, SPEC_NAME):
            if not (snapshot / name).exists():
                raise GeolocError(f"{snapshot / name} not found: run the export stage "
                                  f"(dvc repro export) or pass --model")
        self.spec = json.loads((snapshot / SPEC_NAME).read_text())
        self.cities = self.spec.get("cities", [])
        found = self.spec.get("format", 1)
        if found != SNAPSHOT_FORMAT:
            what = ("export it again (dvc repro export)" if found < SNAPSHOT_FORMAT
                    else "update geoloc to read it")
            raise GeolocError(f"{snapshot} is a snapshot of format {found}; this geoloc reads "
                              f"format {SNAPSHOT_FORMAT}: {what}")
        self.cells = json.loads((snapshot / CELLS_NAME).read_text())
        self.session = onnx_session(snapshot / MODEL_NAME, threads)
        retrieval = self.spec.get("retrieval")
        index, self.features_session, self.panoramas = None, None, None
        if retrieval is not None:
            self.panoramas = PanoramaParams(**retrieval["panoramas"])
            from geoloc.retrieval import RetrievalIndex  # faiss loads only with an index

            index = RetrievalIndex.load(snapshot / RETRIEVAL_INDEX)
            self.features_session = onnx_session(snapshot / FEATURES_MODEL, threads)
        self.recipe = Recipe(pd.DataFrame(self.cells), index=index, **self.spec["recipe"])
        self.modes = available_modes("offsets" in self.spec["outputs"], index is not None)
        self.mode = self._mode(self.spec["mode"])

    def predict(self, photos: list[Photo], top_k: int = 5, mode: str | None = None,
                rows: pd.DataFrame | None = None) -> list[Prediction]:
        """One prediction per photo in `mode` (default: the evaluated one), with the top_k
        likeliest cells. The sequence modes take the photos' `rows` (sequence_id,
        captured_at, view_group; image_id) or, without them, the photos as one drive, their
        EXIF capture times telling views of one place apart from the drive's other places.
        The place mode takes the places from `rows` or, without them, the photos as the views
        of one place (each gets the place's answer): pass one photo at a time otherwise."""
        mode = self._mode(mode)
        if rows is None and mode in SEQUENCE_MODES:
            rows = drive_rows(photos)
        outputs = self.outputs(photos, rows, features=mode in RETRIEVAL_MODES)
        label, lat, lon = self.recipe.points(mode, outputs)
        probs = self.recipe.probabilities(mode, outputs)
        return [self._prediction(p, top_k, mode, int(lb), float(a), float(o))
                for p, lb, a, o in zip(probs, label, lat, lon, strict=True)]

    def predict_place(self, photos: list[Photo], top_k: int = 5) -> Prediction:
        """One answer for the views of one place (mode place), a panorama among them cut into
        its views first, saying how many views it is for and, where the photos' EXIF
        positions lie more than PLACE_SPREAD_KM apart, that they seem not to be of one
        place."""
        views = [view for photo in photos for view in self._views(photo)]
        answer = self.predict(views, top_k, "place")[0]
        return replace(answer, views=len(views), note=spread_note(photos))

    def is_panorama(self, photo: Photo | Image.Image) -> bool:
        """Whether this snapshot cuts the photo (or an image already open) into views: a 360
        panorama as the training photos were told (panoramas.detect: by its XMP, or its 2:1
        shape), to a snapshot that serves the place mode. A broken XMP block leaves the shape
        to decide."""
        if self.panoramas is None:
            return False
        if isinstance(photo, Image.Image):
            return is_panorama(photo, self.panoramas.detect, strict=False)
        with _open(photo) as image:
            return self.is_panorama(image)

    def _views(self, photo: Photo) -> list[Photo]:
        """The photo, or a panorama's views as the fetch stage writes them (JPEG bytes)."""
        with _open(photo) as image:
            if not self.is_panorama(image):
                return [photo]
            return [view.data for view in views_of(image, None, self.panoramas)]

    def outputs(self, photos: list[Photo], rows: pd.DataFrame | None = None,
                features: bool = False) -> Outputs:
        """The model's outputs for the photos, with their `rows` (None: only the modes that
        read no rows can use them), and the backbone's features if asked."""
        results = _run(self.session, photos, self.spec["image_size"])
        return Outputs(rows, results[0],
                       results[1] if len(results) > 1 else None,
                       self._features(photos) if features else None)

    def _features(self, photos: list[Photo]) -> np.ndarray:
        if self.features_session is None:
            raise GeolocError("this snapshot was exported without its feature index "
                              "(export.retrieval_index): it does not serve retrieval")
        return _run(self.features_session, photos, self.spec["retrieval"]["image_size"])[0]

    def _mode(self, mode: str | None) -> str:
        if mode is None:
            return self.mode
        if mode not in self.modes:
            bare = (" (this snapshot was exported without its feature index, "
                    "export.retrieval_index)")
            more = {"retrieval": bare, "place": bare,
                    "hybrid": " (hybrid needs a model trained with model.hybrid)"}.get(mode, "")
            raise GeolocError(f"mode {mode!r} is not one this snapshot serves; it serves "
                              f"{', '.join(self.modes)}{more}")
        return mode

    def _prediction(self, probs: np.ndarray, top_k: int, mode: str, label: int, lat: float,
                    lon: float) -> Prediction:
        """The answer at (lat, lon), its cell (`label`, or the likeliest cell where the point is
        no cell's: -1) with that cell's probability, and the top-k cells."""
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [{**self._cell(i), "probability": float(probs[i])} for i in order]
        cell = self.cells[label if label >= 0 else int(np.argmax(probs))]
        city, km = nearest_city(self.cities, lat, lon) or (None, None)
        return Prediction(lat, lon, cell["cell"], float(probs[cell["label"]]), top, mode,
                          city=city, city_km=None if km is None else round(km, 2))

    def _cell(self, label: int) -> dict:
        return {k: self.cells[label][k] for k in ("label", "cell", "lat", "lon")}


def drive_rows(photos: list[Photo]) -> pd.DataFrame:
    """The photos as frames of one drive, with their EXIF capture times (0 where none)."""
    times = []
    for photo in photos:
        with _open(photo) as image:
            times.append(photo_time(image) or 0)
    return pd.DataFrame({"image_id": [str(i) for i in range(len(photos))],
                         "sequence_id": "query", "captured_at": times})


def spread_note(photos: list[Photo]) -> str | None:
    """A note where the photos' EXIF positions lie more than PLACE_SPREAD_KM apart."""
    positions = []
    for photo in photos:
        with _open(photo) as image:
            positions.append(photo_position(image))
    known = np.array([p for p in positions if p is not None]).reshape(-1, 2)
    spread = pairwise_km(known[:, 0], known[:, 1], known[:, 0], known[:, 1]).max(initial=0)
    if spread <= PLACE_SPREAD_KM:
        return None
    return (f"the views' EXIF positions lie up to {spread:.2f} km apart (more than "
            f"{PLACE_SPREAD_KM} km): they may not be of one place")


def onnx_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0   # 0: ONNX Runtime's default, one per core
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _open(photo: Photo) -> Image.Image:
    return Image.open(photo if isinstance(photo, Path | str) else io.BytesIO(photo))


def _run(session: ort.InferenceSession, photos: list[Photo], size: int,
         batch_size: int = 64) -> list[np.ndarray]:
    """Each of a session's outputs for the photos at `size`, in batches (a long drive's
    photos never all in memory at once)."""
    parts = [session.run(None, {"images": _squares(photos[i:i + batch_size], size)})
             for i in range(0, len(photos), batch_size)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def _squares(photos: list[Photo], size: int) -> np.ndarray:
    """The photos at `size` (N x size x size x 3 uint8), each decoded afresh."""
    squares = []
    for photo in photos:
        with _open(photo) as image:
            squares.append(to_square(image, size))
    return np.stack(squares)
