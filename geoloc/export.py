"""Export a trained model to TorchScript and ONNX, check both against eager PyTorch, and time
all three on this machine's CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geoloc.inference import Recipe
from geoloc.models import Exported
from geoloc.models.to_onnx import write_onnx
from geoloc.outputs import predict_outputs
from geoloc.params import PanoramaParams
from geoloc.predictor import (
    CELL_COLUMNS,
    CELLS_NAME,
    FEATURES_MODEL,
    MODEL_NAME,
    RETRIEVAL_INDEX,
    SNAPSHOT_FORMAT,
    SPEC_NAME,
    onnx_session,
)

log = logging.getLogger(__name__)

TORCHSCRIPT_NAME = "model.ts"
LATENCY_BATCHES = (1, 32)
LATENCY_SECONDS = 1.0   # per runtime and batch size, after a warm-up


def without_debug_info(path: Path) -> None:
    """Rewrite a TorchScript archive without its debug pickles, which hold the absolute paths
    of the traced source files (the bytes would depend on where the repository is checked
    out, and a fresh clone could not `dvc checkout` a committed export), and with a
    serialization id made from what is left: the same model gives the same bytes in any
    clone. torch.jit.load needs neither."""
    def is_id(info: zipfile.ZipInfo) -> bool:
        return info.filename.endswith(".data/serialization_id")

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()
                   if not info.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256(b"".join(data for info, data in entries if not is_id(info)))
    new_id = str(int.from_bytes(digest.digest()[:16], "big")).zfill(40).encode()   # 40 digits
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            archive.writestr(info, new_id if is_id(info) else data)
    path.write_bytes(buffer.getvalue())


def export_model(model: torch.nn.Module, cells: pd.DataFrame, image_size: int,
                 check_images: np.ndarray, out_dir: Path, opset: int,
                 inference: dict | None = None) -> dict:
    """Write model.ts, model.onnx (logits, and the hybrid head's offsets where the model has
    one), cells.json (the class table: points, resolutions, parents) and model.json (the
    snapshot's format and preprocessing, and `inference`: what the evaluate stage wrote to
    models/recipe.json, the headline `mode` and the Recipe's settings, its temperatures among
    them, and the retrieval files' description; defaults otherwise) into out_dir; return sizes
    and parity."""
    exported = Exported(model)
    example = torch.from_numpy(np.array(check_images[:2]))
    with torch.no_grad(), _torchscript_deprecation_quiet():
        torch.jit.trace(exported, example).save(str(out_dir / TORCHSCRIPT_NAME))
    without_debug_info(out_dir / TORCHSCRIPT_NAME)
    write_onnx(exported, example, out_dir / MODEL_NAME, opset, exported.outputs)
    write_cells(cells, out_dir / CELLS_NAME)
    spec = {"format": SNAPSHOT_FORMAT, "image_size": image_size, "num_classes": len(cells),
            "opset": opset, "outputs": exported.outputs, "mode": "argmax",
            "recipe": Recipe(cells, top_k=5).settings(), **(inference or {}),
            "input": "images: uint8, N x size x size x 3, RGB",
            "preprocess": "EXIF orientation applied, shorter side resized to image_size "
                          "(bicubic), centre crop; the model normalises its input itself",
            "output": "logits: float32, N x num_classes (cells.json gives each label's point); "
                      "probabilities = softmax(logits / temperature); offsets (hybrid models): "
                      "float32, N x num_classes x 2, km east and north of each cell's point"}
    (out_dir / SPEC_NAME).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")

    eager = predict_outputs(model, check_images)
    figures = {
        "image_size": image_size,
        "num_classes": len(cells),
        "torchscript_mb": _mb(out_dir / TORCHSCRIPT_NAME),
        "onnx_mb": _mb(out_dir / MODEL_NAME),
        "parity_images": len(check_images),
    }
    for name, outputs in (("torchscript", _torchscript_outputs(out_dir, check_images)),
                          ("onnx", onnx_outputs(out_dir / MODEL_NAME, check_images))):
        figures[f"{name}_max_abs_diff"] = float(np.abs(outputs[0] - eager[0]).max())
        figures[f"{name}_top1_agreement"] = float(np.mean(outputs[0].argmax(1)
                                                          == eager[0].argmax(1)))
        if exported.hybrid:
            figures[f"{name}_offsets_max_abs_diff"] = float(np.abs(outputs[1] - eager[1]).max())
    return figures


def latency_figures(model: torch.nn.Module, out_dir: Path, images: np.ndarray) -> dict:
    """Median CPU milliseconds per image of eager PyTorch, TorchScript and ONNX Runtime at each
    of LATENCY_BATCHES (timings: they go to metrics, never into the snapshot)."""
    with _torchscript_deprecation_quiet():
        scripted = torch.jit.load(str(out_dir / TORCHSCRIPT_NAME))
    session = onnx_session(out_dir / MODEL_NAME)
    exported = Exported(model)   # the same outputs in all three
    runtimes = {
        "eager": lambda batch: exported(torch.from_numpy(batch)),
        "torchscript": lambda batch: scripted(torch.from_numpy(batch)),
        "onnx": lambda batch: session.run(None, {"images": batch}),
    }
    figures = {}
    for name, run in runtimes.items():
        for size in LATENCY_BATCHES:
            batch = np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])))
            with torch.no_grad():
                figures[f"latency_ms_{name}_batch{size}"] = _median_ms(run, batch) / size
    return figures


def _median_ms(run, batch: np.ndarray) -> float:
    for _ in range(3):
        run(batch)
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < LATENCY_SECONDS or len(times) < 5:
        tick = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - tick)
    return 1000 * float(np.median(times))


def add_retrieval(out_dir: Path, features_dir: Path, index_path: Path, size: int,
                  panoramas: PanoramaParams) -> dict:
    """Copy the backbone that computes the features (features.onnx, at `size` px) and the
    training photos' feature index (retrieval.npz) into out_dir; return what model.json says
    of them, with how a 360 panorama is cut into the views the place mode answers."""
    shutil.copyfile(features_dir / FEATURES_MODEL, out_dir / FEATURES_MODEL)
    shutil.copyfile(index_path, out_dir / RETRIEVAL_INDEX)
    with np.load(index_path) as index:
        photos = len(index["label"])
    return {"image_size": size, "photos": photos, "panoramas": dataclasses.asdict(panoramas)}


def write_cells(cells: pd.DataFrame, path: Path) -> None:
    """The class table the modes need: each label's cell, point, resolution and parents."""
    table = cells[list(CELL_COLUMNS)].sort_values("label")
    records = [{**row, "label": int(row["label"]), "resolution": int(row["resolution"]),
                "parents": [str(p) for p in row["parents"]]}
               for row in table.to_dict(orient="records")]
    path.write_text(json.dumps(records, indent=1) + "\n")


def onnx_outputs(path: Path, images: np.ndarray, batch_size: int = 256,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, offsets or None) of an exported ONNX model, in batches."""
    session = onnx_session(path)
    parts = [session.run(None, {"images": np.ascontiguousarray(images[i:i + batch_size])})
             for i in range(0, len(images), batch_size)]
    logits = np.concatenate([part[0] for part in parts])
    return logits, np.concatenate([part[1] for part in parts]) if len(parts[0]) > 1 else None


def _torchscript_outputs(out_dir: Path, images: np.ndarray):
    with _torchscript_deprecation_quiet():
        model = torch.jit.load(str(out_dir / TORCHSCRIPT_NAME))
    return predict_outputs(model, images)


@contextlib.contextmanager
def _torchscript_deprecation_quiet():
    """TorchScript is deprecated upstream but still what C++ and mobile runtimes load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        yield


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6
