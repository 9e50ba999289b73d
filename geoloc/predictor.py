"""Predict from an exported snapshot (models/export) with ONNX Runtime: no training stack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from PIL import Image

from geoloc.data.preprocess import to_square
from geoloc.errors import GeolocError
from geoloc.inference import sequence_evidence

MODEL_NAME = "model.onnx"
CELLS_NAME = "cells.json"
SPEC_NAME = "model.json"


@dataclass(frozen=True)
class Prediction:
    lat: float
    lon: float
    cell: str
    confidence: float
    top: list[dict]  # the top-k cells: cell, lat, lon, probability


class Predictor:
    def __init__(self, snapshot: Path | str):
        snapshot = Path(snapshot)
        for name in (MODEL_NAME, CELLS_NAME, SPEC_NAME):
            if not (snapshot / name).exists():
                raise GeolocError(f"{snapshot / name} not found: run the export stage "
                                  f"(dvc repro export) or pass --model")
        self.spec = json.loads((snapshot / SPEC_NAME).read_text())
        self.cells = json.loads((snapshot / CELLS_NAME).read_text())
        self.session = ort.InferenceSession(str(snapshot / MODEL_NAME),
                                            providers=["CPUExecutionProvider"])

    def predict(self, images: list[Image.Image], top_k: int = 5) -> list[Prediction]:
        """One prediction per photo."""
        return [self._prediction(np.exp(row), top_k) for row in self.log_probs(images)]

    def predict_sequence(self, images: list[Image.Image], top_k: int = 5,
                         captured_at: list[int | None] | None = None) -> Prediction:
        """One prediction for photos of one drive: the cell with the most evidence, the
        log-probabilities summed over its places (the evaluate stage's `sequence` mode); photos
        with one capture time (ms) are views of one place and count as one frame. Confidence
        and top-k are the evidence's probabilities under the sequence temperature."""
        times = [t or 0 for t in (captured_at or [None] * len(images))]
        rows = pd.DataFrame({"image_id": [str(i) for i in range(len(images))],
                             "sequence_id": "query", "captured_at": times})
        evidence = sequence_evidence(self.log_probs(images), rows, online=False)[0]
        scaled = evidence / self.spec.get("sequence_temperature", 1.0)
        return self._prediction(np.exp(scaled - np.logaddexp.reduce(scaled)), top_k)

    def log_probs(self, images: list[Image.Image]) -> np.ndarray:
        """N x K log-probabilities, the logits divided by the snapshot's temperature."""
        batch = np.stack([to_square(image, self.spec["image_size"]) for image in images])
        logits = self.session.run(["logits"], {"images": batch})[0].astype(np.float64)
        scaled = logits / self.spec.get("temperature", 1.0)
        return scaled - np.logaddexp.reduce(scaled, axis=1, keepdims=True)

    def _prediction(self, probs: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [{**self.cells[i], "probability": float(probs[i])} for i in order]
        best = top[0]
        return Prediction(best["lat"], best["lon"], best["cell"], best["probability"], top)
