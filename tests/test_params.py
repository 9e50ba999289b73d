import dataclasses

import pytest
from conftest import params_with

from geoloc.params import ParamsError, as_dict, load_params, parse_params


def test_repo_params_load(default_params):
    assert default_params.fetch.source == "synthetic"
    assert len(default_params.batches) == 10
    # features.size auto: Lite0's 224, the size the default features were computed at.
    assert default_params.features.size == 224


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"epocs": 3}}, "unknown key 'train.epocs' (did you mean 'train.epochs'?)"),
    ({"train": {"epochs": "ten"}}, "train.epochs: expected int, got 'ten'"),
    ({"train": {"epochs": True}}, "train.epochs: expected int, got True"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 is below the minimum 1"),
    ({"split": {"val_fraction": 0.5, "test_fraction": 0.5}}, "split.val_fraction + "),
    ({"fetch": {"source": "flickr"}}, "fetch.source: 'flickr' is not one of synthetic"),
    ({"fetch": {"synthetic": {"frames_min": 9, "frames_max": 3}}},
     "fetch.synthetic.frames_min (9) is larger than fetch.synthetic.frames_max (3)"),
    ({"batches": []}, "batches: list at least one batch"),
    ({"fetch": {"mapillary": {"start_date": "2020-13-01"}}},
     "fetch.mapillary.start_date: expected a date like 2020-01-31, got '2020-13-01'"),
    ({"fetch": {"mapillary": {"start_date": "2021-01-01", "end_date": "2020-01-01"}}},
     "fetch.mapillary.start_date (2021-01-01) is after fetch.mapillary.end_date (2020-01-01)"),
    ({"fetch": {"mapillary": {"thumbnail": 512}}},
     "fetch.mapillary.thumbnail: 512 is not one of 256, 1024, 2048"),
    ({"fetch": {"mapillary": {"graph_url": "graph.mapillary.com"}}},
     "fetch.mapillary.graph_url: expected an http(s) URL"),
    ({"fetch": {"mapillary": {"box_deg": 0.02}}}, "fetch.mapillary.box_deg: 0.02 is above"),
    ({"cache": 64}, "cache: expected a mapping, got int"),
    ({"cache": {"sizes": []}}, "cache.sizes: list at least one image size"),
    ({"cache": {"sizes": [64, 0]}}, "cache.sizes: 0 is not a size from 16 to 1024 px"),
    ({"cache": {"sizes": [64, 64]}}, "cache.sizes: a size is listed twice in [64, 64]"),
    ({"cache": {"sizes": 64}}, "cache.sizes: expected a list, got 64"),
    ({"index": {"min_images_per_cell": 200, "max_images_per_cell": 100}},
     "index.min_images_per_cell (200) is larger than index.max_images_per_cell (100)"),
    ({"index": {"coarsest_resolution": 6, "finest_resolution": 4}},
     "index.coarsest_resolution (6) is finer than index.finest_resolution (4)"),
    ({"index": {"cap_images_per_cell": 0}}, "index.cap_images_per_cell: 0 is below the minimum 1"),
    ({"split": {"block_resolution": 5}},
     "split.block_resolution (5) must be finer than index.finest_resolution (5)"),
    ({"split": {"block_resolution": "coarse"}}, "split.block_resolution: expected int or auto"),
    ({"index": {"max_images_per_cell": "many"}},
     "index.max_images_per_cell: expected int or auto, got 'many'"),
    ({"index": {"finest_resolution": 16}}, "index.finest_resolution: 16 is above the maximum"),
    ({"batches": ["batch01", "cap ferret"]}, "batches: 'cap ferret': a batch name is letters"),
    ({"fetch": {"local": {"folder": "data/photos", "csv": "data/photos.csv"}}},
     "fetch.local.csv (data/photos.csv) must lie inside fetch.local.folder (data/photos)"),
    ({"model": {"freeze_backbone": True}},
     "model.freeze_backbone trains a head on the features of the features stage"),
    ({"features": {"backbone": "cnn"}}, "features.backbone: 'cnn' is not one of"),
    ({"model": {"arch": "efficientnet_b0"}},
     "model.arch: 'efficientnet_b0' is not one of cnn, resnet18, efficientnet_lite0, "
     "efficientnet_lite1, efficientnet_lite2, efficientnet (= efficientnet_lite0)"),
    ({"features": {"size": "native"}}, "features.size: expected int or auto, got 'native'"),
    ({"features": {"size": 16}}, "features.size: 16 is below the minimum 32"),
    ({"evaluate": {"mode": "retrieval"}, "export": {"retrieval_index": False}},
     "evaluate.mode retrieval needs export.retrieval_index true"),
    ({"train": {"grad_clip": 0}}, "train.grad_clip: 0.0 is below the minimum"),
    ({"split": {"protocol": "random"}}, "split.protocol: 'random' is not one of sequence, spatial"),
    ({"loss": {"name": "focal"}},
     "loss.name: 'focal' is not one of cross_entropy, haversine, hierarchical"),
    ({"evaluate": {"mode": "vote"}}, "evaluate.mode: 'vote' is not one of argmax, topk"),
    ({"model": {"head": "deep"}}, "model.head: 'deep' is not one of linear, mlp"),
    ({"crossval": {"folds": 2}}, "crossval.folds is 2: set it to 0 (no cross-validation) or "
                                 "at least 3"),
    ({"evaluate": {"auto": {"neighbours": []}}}, "evaluate.auto.neighbours: list at least one"),
    ({"evaluate": {"auto": {"within_top_cells": [0, 101]}}},
     "evaluate.auto.within_top_cells: 101 is not from 0 to 100"),
    ({"evaluate": {"mode": "place"}, "export": {"retrieval_index": False}},
     "evaluate.mode place needs export.retrieval_index true"),
    ({"panoramas": {"detect": "sometimes"}},
     "panoramas.detect: 'sometimes' is not one of auto, always, never"),
    ({"panoramas": {"views": 0}}, "panoramas.views: 0 is below the minimum 1"),
])
def test_bad_params_name_the_key(change, message):
    with pytest.raises(ParamsError) as info:
        parse_params(params_with(**change), source="params.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_auto_follows_the_data_and_explicit_values_are_still_checked():
    """Finer cells no longer clash with a block resolution that follows them; an explicit
    block resolution is still checked against an explicit finest resolution."""
    params = parse_params(params_with(index={"finest_resolution": 8}))
    assert params.split.block_resolution == "auto" and params.index.finest_resolution == 8
    params = parse_params(params_with(index={"finest_resolution": "auto",
                                             "max_images_per_cell": "auto"},
                                      split={"block_resolution": 6}))
    assert params.index.max_images_per_cell == "auto" and params.split.block_resolution == 6
    frozen = parse_params(params_with(model={"arch": "efficientnet_lite0", "pretrained": True,
                                             "freeze_backbone": True}))
    assert frozen.model.freeze_backbone


def test_the_family_name_is_its_default_member_in_every_record():
    """`efficientnet` is read as efficientnet_lite0, so what the params record (checkpoints,
    model cards, snapshots and the resume fingerprint all store as_dict) is the same run."""
    alias = parse_params(params_with(model={"arch": "efficientnet"},
                                     features={"backbone": "efficientnet"}))
    named = parse_params(params_with(model={"arch": "efficientnet_lite0"},
                                     features={"backbone": "efficientnet_lite0"}))
    assert alias.model.arch == alias.features.backbone == "efficientnet_lite0"
    assert as_dict(alias) == as_dict(named)
    # The frozen-backbone check compares the resolved names.
    frozen = parse_params(params_with(model={"arch": "efficientnet", "pretrained": True,
                                             "freeze_backbone": True}))
    assert frozen.model.arch == frozen.features.backbone


@pytest.mark.parametrize(("backbone", "size"), [
    ("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260),
    ("resnet18", 224), ("efficientnet", 224)])
def test_features_size_auto_is_the_backbones_native_size(backbone, size):
    params = parse_params(params_with(features={"backbone": backbone, "size": "auto"}))
    assert params.features.size == size
    assert as_dict(params)["features"]["size"] == size
    explicit = parse_params(params_with(features={"backbone": backbone, "size": 96}))
    assert explicit.features.size == 96


def test_missing_key_is_named(tmp_path):
    raw = params_with()
    del raw["index"]["min_images_per_cell"]
    with pytest.raises(ParamsError, match="missing key 'index.min_images_per_cell'"):
        parse_params(raw)


def test_optional_values_take_null_or_their_type():
    params = parse_params(params_with(fetch={"local": {"csv": "data/photos/photos.csv"}}))
    assert params.fetch.local.csv == "data/photos/photos.csv"
    assert parse_params(params_with()).fetch.mapillary.start_date is None
    with pytest.raises(ParamsError, match="fetch.local.csv: expected str, got 3"):
        parse_params(params_with(fetch={"local": {"csv": 3}}))


def test_ints_are_accepted_for_floats():
    params = parse_params(params_with(train={"lr": 1}))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_params_and_registries_read_one_list_per_choice():
    from geoloc import choices
    from geoloc.models import BACKBONES
    from geoloc.params import FetchParams, ModelParams, TrainParams
    from geoloc.sources import SOURCES
    from geoloc.train import PRECISIONS

    def allowed(cls, name):
        return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["choices"]

    assert allowed(FetchParams, "source") is choices.SOURCES == tuple(SOURCES)
    assert allowed(ModelParams, "arch") is choices.ARCHS == tuple(BACKBONES)
    assert allowed(TrainParams, "precision") is choices.PRECISIONS == tuple(PRECISIONS)
    with pytest.raises(RuntimeError, match="a registry of .* has"):
        choices.registry(choices.HEADS, {"linear": 1})
