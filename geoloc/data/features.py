"""Features of a pretrained backbone at its native size, computed once per photo (the features
stage): the input of cheap heads (model.freeze_backbone), of retrieval, and of the feature
index an export ships.

The backbone is first written as features.onnx, then ONNX Runtime computes the features from
the photos decoded as the resize cache decodes them: on a CPU it runs EfficientNet-Lite0 about
four times as fast as eager PyTorch, and the same file goes into the export snapshot, so a
served photo gets the very features that evaluation used. Every fetched photo has one row of
one float32 array (N x D), in the order of image_ids.parquet, and features.json says what it
holds. Nothing here depends on the split: a split, a seed or a fold picks its rows by image id,
and a change of any of them computes no feature again.
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

from geoloc.data.cache import decode_all, row_file
from geoloc.errors import GeolocError
from geoloc.io import write_json, write_parquet
from geoloc.params import FeaturesParams

log = logging.getLogger(__name__)

MODEL_NAME = "features.onnx"
INDEX_NAME = "features.json"
ARRAY_NAME = "features.npy"
IDS_NAME = "image_ids.parquet"   # the photo of each row of features.npy
OPSET = 18
BATCH = 32           # photos per ONNX Runtime call (its buffers grow with the batch)
RELEASE_ROWS = 1024  # written rows between two hand-backs of the mapped pages


class FeaturesError(GeolocError):
    """The features are missing, stale, or of another backbone or size than params say."""


@dataclass
class FeatureSplit:
    """The features of every photo, and a split's rows that have them; `rows["feature_row"]`
    is each row's position in `features`."""

    features: np.ndarray
    rows: pd.DataFrame


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
                   session: ort.InferenceSession, out_dir: Path, workers: int) -> dict:
    """Write the features of `rows` (image_id, path under raw_dir) into out_dir/features.npy,
    a row each in their order, and their ids into image_ids.parquet; return what features.json
    says of them. A photo that does not decode is skipped and listed (its row stays zero, never
    read)."""
    paths = [str(Path(raw_dir) / p) for p in rows["path"]]
    dim = session.get_outputs()[0].shape[1]
    skipped, batch, positions = [], [], []
    with ExitStack() as stack:
        file = stack.enter_context(row_file(Path(out_dir) / ARRAY_NAME, (len(paths), dim),
                                            np.float32))
        decoded = decode_all(paths, [size], True, workers, stack)
        for i, result in enumerate(tqdm(decoded, total=len(paths), desc="features",
                                        unit="img", mininterval=2)):
            if isinstance(result, str):
                skipped.append({"image_id": rows["image_id"].iloc[i], "error": result})
            else:
                batch.append(result[0])
                positions.append(i)
            if len(batch) == BATCH or (i == len(paths) - 1 and batch):
                file.rows[positions] = session.run(None, {"images": np.stack(batch)})[0]
                batch, positions = [], []
            if (i + 1) % RELEASE_ROWS == 0:
                file.release()
    write_parquet(rows[["image_id"]].reset_index(drop=True), Path(out_dir) / IDS_NAME)
    for entry in skipped:
        log.warning("skipped image %s: %s", entry["image_id"], entry["error"])
    return {"rows": len(paths), "dim": dim, "skipped": skipped}


def write_features_index(cfg: FeaturesParams, entry: dict, out_dir: Path) -> None:
    write_json({**asdict(cfg), **entry}, Path(out_dir) / INDEX_NAME)


def load_features(features_dir: Path | str, split: str, rows: pd.DataFrame,
                  cfg: FeaturesParams) -> FeatureSplit:
    """Memory-map the features and find `split`'s `rows` among them by image id, refusing
    features of another backbone or size than `cfg`, or that lack some of the rows (stale).
    The rows whose photo did not decode are left out."""
    features_dir = Path(features_dir)
    index_path = features_dir / INDEX_NAME
    if not index_path.exists():
        raise FeaturesError(f"{index_path} not found: run the features stage")
    index = json.loads(index_path.read_text())
    made_by = {k: index.get(k) for k in asdict(cfg)}
    if made_by != asdict(cfg):
        raise FeaturesError(f"{features_dir} holds the features of {made_by}, params say "
                            f"{asdict(cfg)}: run `dvc repro features`")
    path = features_dir / ARRAY_NAME
    try:
        features = np.load(path, mmap_mode="r")
        ids = pd.read_parquet(features_dir / IDS_NAME)["image_id"]
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise FeaturesError(f"{features_dir} is missing a file or holds a damaged one ({exc}): "
                            f"run `dvc repro features`") from None
    if features.shape != (len(ids), index["dim"]) or features.dtype != np.float32:
        raise FeaturesError(f"{path} holds {features.dtype} {features.shape}, expected float32 "
                            f"{(len(ids), index['dim'])}: run `dvc repro features`")
    position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    unknown = ~rows["image_id"].isin(position.index)
    if unknown.any():
        raise FeaturesError(f"{int(unknown.sum())} photos of the {split} split have no row in "
                            f"{path} (e.g. {rows.loc[unknown, 'image_id'].iloc[0]}): the "
                            f"features are stale, run `dvc repro features`")
    skipped = rows["image_id"].isin([s["image_id"] for s in index["skipped"]])
    usable = rows[~skipped].reset_index(drop=True)
    return FeatureSplit(features, usable.assign(
        feature_row=position.loc[usable["image_id"]].to_numpy()))


def features_of(split: FeatureSplit, rows: pd.DataFrame) -> np.ndarray:
    """The features of `rows` (a subset of the split's, in their order), read into memory."""
    where = pd.Series(split.rows["feature_row"].to_numpy(), index=split.rows["image_id"])
    missing = ~rows["image_id"].isin(where.index)
    if missing.any():
        raise FeaturesError(f"{int(missing.sum())} photos have no features (e.g. "
                            f"{rows.loc[missing, 'image_id'].iloc[0]}): they did not decode "
                            f"when the features stage ran")
    return np.array(split.features[where.loc[rows["image_id"]].to_numpy()])
