"""The features stage's library: every photo's features row by row across ONNX Runtime
batches, read by any split through its image ids, photos that do not decode skipped and listed,
stale or foreign features refused."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import noisy_photo, tiny_params

from geoloc.data import features as feats
from geoloc.data.preprocess import read_squares
from geoloc.models import FeatureExtractor, build_model
from geoloc.models.to_onnx import write_onnx
from geoloc.params import FeaturesParams

CFG = FeaturesParams(backbone="efficientnet_lite0", size=32, weights_path=None)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A real ONNX backbone: an untrained tiny CNN's features, as the stage exports one."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(build_model(tiny_params(model={"width": 4}).model, 1))
    path = tmp_path_factory.mktemp("onnx") / feats.MODEL_NAME
    write_onnx(extractor, torch.zeros((2, 32, 32, 3), dtype=torch.uint8), path, feats.OPSET,
               ["features"])
    return feats.ort.InferenceSession(str(path))


def photo_rows(raw, n: int, broken: int) -> pd.DataFrame:
    (raw / "images").mkdir(parents=True)
    for i in range(n):
        path = raw / f"images/{i:03d}.jpg"
        if i == broken:
            path.write_text("not a photo")
        else:
            noisy_photo(i).save(path)
    return pd.DataFrame({"image_id": [f"{i:03d}" for i in range(n)],
                         "path": [f"images/{i:03d}.jpg" for i in range(n)]})


def test_features_follow_the_rows_across_batches_and_skip_what_does_not_decode(session,
                                                                                tmp_path):
    rows = photo_rows(tmp_path / "raw", 130, broken=70)    # 130 > 2 batches of 64
    out = tmp_path / "features"
    out.mkdir()
    entry = feats.build_features(rows, tmp_path / "raw", 32, session, out, workers=1)
    assert [s["image_id"] for s in entry["skipped"]] == ["070"]
    feats.write_features_index(CFG, entry, out)

    split = feats.load_features(out, "train", rows, CFG)
    assert len(split.rows) == 129 and 70 not in set(split.rows["feature_row"])
    for row in (0, 63, 64, 69, 71, 129):
        square = np.stack(read_squares(tmp_path / "raw" / rows["path"][row], (32,)))
        expected = session.run(None, {"images": square})[0][0]
        assert np.allclose(split.features[row], expected, atol=1e-6), row
    wanted = split.rows.iloc[[5, 2]]
    assert np.array_equal(feats.features_of(split, wanted), split.features[[5, 2]])


def test_any_split_finds_its_photos_features_by_image_id(session, tmp_path):
    """The features are the photos', not a split's: a split of other rows, in another order
    (a new seed, a fold), reads them where they are, and computes nothing."""
    rows = photo_rows(tmp_path / "raw", 6, broken=3)
    out = tmp_path / "features"
    out.mkdir()
    feats.write_features_index(CFG, feats.build_features(rows, tmp_path / "raw", 32, session,
                                                         out, workers=1), out)
    everything = feats.load_features(out, "train", rows, CFG)
    split = feats.load_features(out, "val", rows.iloc[[5, 3, 0]], CFG)
    assert split.rows["image_id"].tolist() == ["005", "000"]   # 003 did not decode
    assert np.array_equal(feats.features_of(split, split.rows),
                          feats.features_of(everything, split.rows))
    assert split.rows["feature_row"].tolist() == [5, 0]


def test_stale_or_foreign_features_are_refused(session, tmp_path):
    rows = photo_rows(tmp_path / "raw", 4, broken=-1)
    out = tmp_path / "features"
    out.mkdir()
    feats.write_features_index(CFG, feats.build_features(rows, tmp_path / "raw", 32, session,
                                                         out, workers=1), out)
    newer = pd.concat([rows, pd.DataFrame({"image_id": ["new"], "path": ["images/new.jpg"]})])
    with pytest.raises(feats.FeaturesError, match=r"1 photos of the val split have no row .*"
                                                  r"\(e.g. new\): the features are stale"):
        feats.load_features(out, "val", newer, CFG)
    with pytest.raises(feats.FeaturesError, match="holds the features of .*'size': 32"):
        feats.load_features(out, "val", rows, FeaturesParams("efficientnet_lite0", 224, None))
    with pytest.raises(feats.FeaturesError, match="run the features stage"):
        feats.load_features(tmp_path / "nowhere", "val", rows, CFG)
    (out / feats.IDS_NAME).unlink()
    with pytest.raises(feats.FeaturesError, match="missing a file or holds a damaged one"):
        feats.load_features(out, "val", rows, CFG)


def test_features_of_size_auto_are_those_of_the_native_size(session, tmp_path):
    """`auto` is resolved as the params are built: the index written under it says 224 for
    Lite0, as it did when params.yaml said 224, so either setting reads those features."""
    rows = photo_rows(tmp_path / "raw", 2, broken=-1)
    out = tmp_path / "features"
    out.mkdir()
    entry = feats.build_features(rows, tmp_path / "raw", 32, session, out, workers=1)
    auto = FeaturesParams("efficientnet_lite0", "auto", None)
    feats.write_features_index(auto, entry, out)
    assert json.loads((out / feats.INDEX_NAME).read_text())["size"] == 224
    for cfg in (auto, FeaturesParams("efficientnet_lite0", 224, None)):
        assert len(feats.load_features(out, "val", rows, cfg).rows) == 2
