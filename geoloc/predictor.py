"""Predict from an exported snapshot (models/export) with ONNX Runtime: no training stack.

The points come from the functions the evaluate stage scores with (geoloc.inference,
geoloc.retrieval), under the temperatures it fitted; the snapshot's model.json names the mode
it evaluated, the default here where it is a mode of one photo. A photo is a file path or its
bytes: each input size decodes it afresh, as the resize cache and the features stage do (a
JPEG decoded small for the classifier cannot then give the backbone its 224 px).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from PIL import Image

from geoloc.data.preprocess import to_square
from geoloc.errors import GeolocError
from geoloc.exif import photo_time
from geoloc.inference import log_softmax, mode_points, sequence_evidence

MODEL_NAME = "model.onnx"
CELLS_NAME = "cells.json"
SPEC_NAME = "model.json"
FEATURES_MODEL = "features.onnx"     # the backbone whose features the retrieval index holds
RETRIEVAL_INDEX = "retrieval.npz"
# The modes of one photo a snapshot can serve; retrieval only with its feature index.
PHOTO_MODES = ("argmax", "topk", "topk_mean", "retrieval")

Photo = Path | str | bytes   # a file, or a file's bytes


def served_modes(has_index: bool) -> tuple[str, ...]:
    return tuple(m for m in PHOTO_MODES if m != "retrieval" or has_index)


def default_mode(evaluated: str, has_index: bool) -> str:
    """The mode a snapshot answers in unless asked: the evaluated one where it can serve it
    for one photo, else argmax."""
    return evaluated if evaluated in served_modes(has_index) else "argmax"


@dataclass(frozen=True)
class Prediction:
    lat: float
    lon: float
    cell: str
    confidence: float  # the probability of `cell`
    top: list[dict]    # the top-k cells: cell, lat, lon, probability
    mode: str


class Predictor:
    def __init__(self, snapshot: Path | str):
        snapshot = Path(snapshot)
        for name in (MODEL_NAME, CELLS_NAME, SPEC_NAME):
            if not (snapshot / name).exists():
                raise GeolocError(f"{snapshot / name} not found: run the export stage "
                                  f"(dvc repro export) or pass --model")
        self.spec = json.loads((snapshot / SPEC_NAME).read_text())
        self.cells = json.loads((snapshot / CELLS_NAME).read_text())
        self.table = pd.DataFrame(self.cells)
        self.session = onnx_session(snapshot / MODEL_NAME)
        self.retrieval = None
        if "retrieval" in self.spec:
            from geoloc.retrieval import RetrievalIndex  # faiss loads only with an index

            self.retrieval = (onnx_session(snapshot / FEATURES_MODEL),
                              RetrievalIndex.load(snapshot / RETRIEVAL_INDEX))
        self.modes = served_modes(self.retrieval is not None)
        self.mode = default_mode(self.spec["mode"], self.retrieval is not None)

    def predict(self, photos: list[Photo], top_k: int = 5,
                mode: str | None = None) -> list[Prediction]:
        """One prediction per photo, in `mode` (default: the evaluated one where it is a mode
        of one photo, else argmax)."""
        mode = self._mode(mode)
        log_probs = self.log_probs(photos)
        rows = pd.DataFrame(index=range(len(photos)))
        if mode == "retrieval":
            from geoloc.retrieval import retrieval_points

            features = self._features(photos)
            spec = self.spec["retrieval"]
            label, lat, lon = retrieval_points(self.retrieval[1], features, log_probs,
                                               spec["neighbours"], spec["within_top_cells"])
        else:
            label, lat, lon = mode_points(mode, log_probs, None, self.table, rows,
                                          self.spec["top_k"])
        return [self._prediction(np.exp(row), top_k, mode, (int(lb), float(a), float(o)))
                for row, lb, a, o in zip(log_probs, label, lat, lon, strict=True)]

    def predict_sequence(self, photos: list[Photo], top_k: int = 5) -> Prediction:
        """One prediction for photos of one drive: the cell with the most evidence, the
        log-probabilities summed over its places (the evaluate stage's `sequence` mode); photos
        with one EXIF capture time are views of one place and count as one frame. Confidence
        and top-k are the evidence's probabilities under the sequence temperature."""
        times = []
        for photo in photos:
            with _open(photo) as image:
                times.append(photo_time(image) or 0)
        rows = pd.DataFrame({"image_id": [str(i) for i in range(len(photos))],
                             "sequence_id": "query", "captured_at": times})
        evidence = sequence_evidence(self.log_probs(photos), rows, online=False)[0]
        probs = np.exp(log_softmax(evidence[None] / self.spec["sequence_temperature"]))[0]
        return self._prediction(probs, top_k, "sequence")

    def log_probs(self, photos: list[Photo]) -> np.ndarray:
        """N x K log-probabilities, the logits divided by the snapshot's temperature."""
        batch = _squares(photos, self.spec["image_size"])
        logits = self.session.run(["logits"], {"images": batch})[0].astype(np.float64)
        return log_softmax(logits / self.spec["temperature"])

    def _features(self, photos: list[Photo]) -> np.ndarray:
        batch = _squares(photos, self.spec["retrieval"]["image_size"])
        return self.retrieval[0].run(["features"], {"images": batch})[0]

    def _mode(self, mode: str | None) -> str:
        if mode is None:
            return self.mode
        if mode not in self.modes:
            more = (" (retrieval: this snapshot was exported without its feature index, "
                    "export.retrieval_index)" if mode == "retrieval" else "")
            raise GeolocError(f"mode {mode!r} is not one this snapshot serves for a photo; "
                              f"it serves {', '.join(self.modes)}{more}")
        return mode

    def _prediction(self, probs: np.ndarray, top_k: int, mode: str,
                    point: tuple[int, float, float] | None = None) -> Prediction:
        """The answer: `point` (label, lat, lon; label -1 where it is no cell's point) or the
        likeliest cell's point, and the top-k cells."""
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [{**self.cells[i], "probability": float(probs[i])} for i in order]
        label, lat, lon = point or (int(order[0]), top[0]["lat"], top[0]["lon"])
        cell = self.cells[label if label >= 0 else int(order[0])]
        return Prediction(lat, lon, cell["cell"], float(probs[cell["label"]]), top, mode)


def onnx_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _open(photo: Photo) -> Image.Image:
    return Image.open(photo if isinstance(photo, Path | str) else io.BytesIO(photo))


def _squares(photos: list[Photo], size: int) -> np.ndarray:
    """The photos at `size` (N x size x size x 3 uint8), each decoded afresh."""
    squares = []
    for photo in photos:
        with _open(photo) as image:
            squares.append(to_square(image, size))
    return np.stack(squares)
