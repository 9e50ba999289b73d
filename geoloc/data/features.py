"""Features of a pretrained backbone at its native size, computed once per photo (the features
stage): the input of cheap heads (model.freeze_backbone), of retrieval, and of the feature
index an export ships.

The backbone is first written as features.onnx, then ONNX Runtime computes the features from
the photos decoded as the resize cache decodes them: on a CPU it runs EfficientNet-Lite0 about
four times as fast as eager PyTorch, and the same file goes into the export snapshot, so a
served photo gets the very features that evaluation used. Per split, one float32 array
(N x D) in the split's row order, and features.json saying what each holds.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from tqdm import tqdm

from geoloc.data.cache import decode_all, ids_digest, row_file, usable_rows
from geoloc.errors import GeolocError
from geoloc.io import write_json
from geoloc.params import FeaturesParams

log = logging.getLogger(__name__)

MODEL_NAME = "features.onnx"
INDEX_NAME = "features.json"
OPSET = 18
BATCH = 32           # photos per ONNX Runtime call (its buffers grow with the batch)
RELEASE_ROWS = 1024  # written rows between two hand-backs of the mapped pages


class FeaturesError(GeolocError):
    """The features are missing, stale, or of another backbone or size than params say."""


@dataclass
class FeatureSplit:
    """A split's features and the split's rows that have them; `rows["feature_row"]` is each
    row's position in `features`."""

    features: np.ndarray
    rows: pd.DataFrame


def features_path(features_dir: Path | str, split: str) -> Path:
    return Path(features_dir) / f"{split}.npy"


def export_backbone(cfg: FeaturesParams, out_dir: Path) -> ort.InferenceSession:
    """Write the backbone as out_dir/features.onnx and open it."""
    # Here, not at the top: the decoding workers import this module, and torch would cost
    # each of them most of a gigabyte.
    import torch

    from geoloc.models import feature_extractor
    from geoloc.models.to_onnx import write_onnx

    path = Path(out_dir) / MODEL_NAME
    example = torch.zeros((2, cfg.size, cfg.size, 3), dtype=torch.uint8)
    with torch.no_grad():
        write_onnx(feature_extractor(cfg), example, path, OPSET, ["features"])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def build_features(rows: pd.DataFrame, raw_dir: Path, size: int,
                   session: ort.InferenceSession, out_dir: Path, split: str,
                   workers: int) -> dict:
    """Write `split`'s features into out_dir/<split>.npy; return its features.json entry. A
    photo that does not decode is skipped and listed (its row stays zero, never read)."""
    paths = [str(Path(raw_dir) / p) for p in rows["path"]]
    dim = session.get_outputs()[0].shape[1]
    skipped, batch, positions = [], [], []
    with ExitStack() as stack:
        file = stack.enter_context(row_file(features_path(out_dir, split), (len(paths), dim),
                                            np.float32))
        decoded = decode_all(paths, [size], True, workers, stack)
        for i, result in enumerate(tqdm(decoded, total=len(paths), desc=f"{split} features",
                                        unit="img", mininterval=2)):
            if isinstance(result, str):
                skipped.append({"row": i, "image_id": rows["image_id"].iloc[i], "error": result})
            else:
                batch.append(result[0])
                positions.append(i)
            if len(batch) == BATCH or (i == len(paths) - 1 and batch):
                file.rows[positions] = session.run(None, {"images": np.stack(batch)})[0]
                batch, positions = [], []
            if (i + 1) % RELEASE_ROWS == 0:
                file.release()
    for entry in skipped:
        log.warning("%s: skipped image %s: %s", split, entry["image_id"], entry["error"])
    return {"rows": len(paths), "ids_sha256": ids_digest(rows), "skipped": skipped}


def write_features_index(cfg: FeaturesParams, dim: int, entries: dict[str, dict],
                         out_dir: Path) -> None:
    write_json({**asdict(cfg), "dim": dim, "splits": entries}, Path(out_dir) / INDEX_NAME)


def load_features(features_dir: Path | str, split: str, rows: pd.DataFrame,
                  cfg: FeaturesParams) -> FeatureSplit:
    """Memory-map `split`'s features, refusing those of another backbone or size than `cfg`,
    or computed from other rows (stale)."""
    features_dir = Path(features_dir)
    index_path = features_dir / INDEX_NAME
    if not index_path.exists():
        raise FeaturesError(f"{index_path} not found: run the features stage")
    index = json.loads(index_path.read_text())
    made_by = {k: index.get(k) for k in asdict(cfg)}
    if made_by != asdict(cfg):
        raise FeaturesError(f"{features_dir} holds the features of {made_by}, params say "
                            f"{asdict(cfg)}: run `dvc repro features`")
    entry = index["splits"].get(split)
    if entry is None or entry["rows"] != len(rows) or entry["ids_sha256"] != ids_digest(rows):
        raise FeaturesError(f"the {split} features in {features_dir} were computed from other "
                            f"rows than data/splits/{split}.parquet (stale): run "
                            f"`dvc repro features`")
    path = features_path(features_dir, split)
    try:
        features = np.load(path, mmap_mode="r")
    except (FileNotFoundError, ValueError) as exc:
        raise FeaturesError(f"{path} is missing or damaged ({exc}): run "
                            f"`dvc repro features`") from None
    if features.shape != (len(rows), index["dim"]) or features.dtype != np.float32:
        raise FeaturesError(f"{path} holds {features.dtype} {features.shape}, expected float32 "
                            f"{(len(rows), index['dim'])}: run `dvc repro features`")
    return FeatureSplit(features, usable_rows(rows, entry["skipped"], "feature_row"))


def features_of(split: FeatureSplit, rows: pd.DataFrame) -> np.ndarray:
    """The features of `rows` (a subset of the split's, in their order), read into memory."""
    where = pd.Series(split.rows["feature_row"].to_numpy(), index=split.rows["image_id"])
    missing = ~rows["image_id"].isin(where.index)
    if missing.any():
        raise FeaturesError(f"{int(missing.sum())} photos have no features (e.g. "
                            f"{rows.loc[missing, 'image_id'].iloc[0]}): they did not decode "
                            f"when the features stage ran")
    return np.array(split.features[where.loc[rows["image_id"]].to_numpy()])
