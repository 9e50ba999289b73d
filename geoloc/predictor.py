"""Predict from an exported snapshot (models/export) with ONNX Runtime: no training stack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from geoloc.data.preprocess import to_square
from geoloc.errors import GeolocError

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
        batch = np.stack([to_square(image, self.spec["image_size"]) for image in images])
        logits = self.session.run(["logits"], {"images": batch})[0]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return [self._prediction(p, top_k) for p in probs]

    def _prediction(self, probs: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [{**self.cells[i], "probability": float(probs[i])} for i in order]
        best = top[0]
        return Prediction(best["lat"], best["lon"], best["cell"], best["probability"], top)
