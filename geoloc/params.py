"""Typed view of params.yaml: the one place that reads it.

Every key must be present in params.yaml (it holds the defaults, and DVC tracks it), and every key
present must be known here. A wrong key, type or value stops with one ParamsError naming the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from geoloc.choices import (
    ALIASES,
    ARCHS,
    FEATURE_BACKBONES,
    HEADS,
    LOSSES,
    MODES,
    NATIVE_SIZES,
    PANORAMA_DETECTION,
    PRECISIONS,
    PROTOCOLS,
    RETRIEVAL_MODES,
    SOURCES,
)
from geoloc.data.cities import BATCH_PATTERN, BATCH_RULE
from geoloc.errors import GeolocError

PARAMS_FILE = Path("params.yaml")
AUTO = "auto"   # what a key that takes `auto` holds until the stage that knows the data decides


class ParamsError(GeolocError, ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


def knob(*, min=None, max=None, choices=None, auto=False,  # noqa: A002 - min/max read best
         aliases=None):
    """A required field with an optional range or set of allowed values; with `auto`, the
    value may also be "auto" (the field's type is then `int | str`, unless the class resolves
    it); `aliases` maps other names of a choice to it, and the field holds the choice."""
    return field(metadata={"min": min, "max": max, "choices": choices, "auto": auto,
                           "aliases": aliases or {}})


def is_auto(value) -> bool:
    return value == AUTO


@dataclass(frozen=True)
class SyntheticParams:
    seed: int = knob(min=0)
    sequences_per_city: int = knob(min=1, max=1000)
    frames_min: int = knob(min=1, max=1000)
    frames_max: int = knob(min=1, max=1000)
    image_size: int = knob(min=32, max=4096)
    jpeg_quality: int = knob(min=1, max=100)
    panorama_share: float = knob(min=0.0, max=1.0)
    workers: int | None = knob(min=1, max=256)

    def check(self, key: str) -> None:
        if self.frames_min > self.frames_max:
            raise ParamsError(
                f"{key}.frames_min ({self.frames_min}) is larger than "
                f"{key}.frames_max ({self.frames_max})"
            )


@dataclass(frozen=True)
class MapillaryParams:
    graph_url: str = knob()
    tiles_url: str = knob()
    coverage: str = knob(choices=("search", "tiles"))
    thumbnail: int = knob(choices=(256, 1024, 2048))
    skip_panoramas: bool = knob()
    start_date: str | None = knob()
    end_date: str | None = knob()
    max_images_per_city: int = knob(min=1)
    max_images_per_sequence: int = knob(min=1)
    box_deg: float = knob(min=0.0005, max=0.01)
    search_limit: int = knob(min=10, max=2000)
    concurrency: int = knob(min=1, max=64)
    requests_per_second: float = knob(min=0.1, max=10000.0)
    max_tries: int = knob(min=1, max=20)
    max_retry_s: float = knob(min=0.0, max=86400.0)
    timeout_s: float = knob(min=0.1, max=600.0)

    def check(self, key: str) -> None:
        for name in ("graph_url", "tiles_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise ParamsError(f"{key}.{name}: expected an http(s) URL, got {url!r}")
        start, end = (_iso_date(f"{key}.{name}", getattr(self, name))
                      for name in ("start_date", "end_date"))
        if start and end and start > end:
            raise ParamsError(f"{key}.start_date ({start}) is after {key}.end_date ({end})")


@dataclass(frozen=True)
class LocalParams:
    folder: str = knob()
    csv: str | None = knob()

    def check(self, key: str) -> None:
        # The fetch stage's DVC dependency is the folder: a CSV elsewhere would change without
        # DVC noticing.
        if self.csv is not None and not _inside(self.csv, self.folder):
            raise ParamsError(
                f"{key}.csv ({self.csv}) must lie inside {key}.folder ({self.folder}), which "
                f"DVC tracks as the fetch stage's input: move it there, e.g. to "
                f"{Path(self.folder) / Path(self.csv).name}")


@dataclass(frozen=True)
class PanoramaParams:
    """Which photos are 360 panoramas, and how one is cut into the views of one place
    (geoloc.panorama)."""
    detect: str = knob(choices=PANORAMA_DETECTION)
    views: int = knob(min=1, max=36)
    fov: float = knob(min=10.0, max=170.0)
    pitch: float = knob(min=-90.0, max=90.0)
    size: int = knob(min=64, max=4096)


@dataclass(frozen=True)
class FetchParams:
    source: str = knob(choices=SOURCES)
    max_disk_gb: float = knob(min=0.001)
    synthetic: SyntheticParams = knob()
    mapillary: MapillaryParams = knob()
    local: LocalParams = knob()


@dataclass(frozen=True)
class IndexParams:
    coarsest_resolution: int | str = knob(min=0, max=15, auto=True)
    finest_resolution: int | str = knob(min=0, max=15, auto=True)
    max_images_per_cell: int | str = knob(min=1, auto=True)
    min_images_per_cell: int | str = knob(min=1, auto=True)
    cap_images_per_cell: int | None = knob(min=1)

    def check(self, key: str) -> None:
        """Only what the values say on their own; `auto` ones are checked once resolved."""
        if _known(self.coarsest_resolution, self.finest_resolution) and \
                self.coarsest_resolution > self.finest_resolution:
            raise ParamsError(
                f"{key}.coarsest_resolution ({self.coarsest_resolution}) is finer than "
                f"{key}.finest_resolution ({self.finest_resolution}): H3 resolutions grow "
                f"finer as the number grows")
        if _known(self.min_images_per_cell, self.max_images_per_cell) and \
                self.min_images_per_cell > self.max_images_per_cell:
            raise ParamsError(
                f"{key}.min_images_per_cell ({self.min_images_per_cell}) is larger than "
                f"{key}.max_images_per_cell ({self.max_images_per_cell})")


@dataclass(frozen=True)
class SplitParams:
    seed: int = knob(min=0)
    val_fraction: float = knob(min=0.0, max=0.9)
    test_fraction: float = knob(min=0.0, max=0.9)
    twin_max_gap_s: float = knob(min=0.0, max=3600.0)
    twin_max_gap_m: float = knob(min=0.0, max=10000.0)
    protocol: str = knob(choices=PROTOCOLS)
    block_resolution: int | str = knob(min=0, max=15, auto=True)
    one_image_per_sequence: bool = knob()

    def check(self, key: str) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ParamsError(
                f"{key}.val_fraction + {key}.test_fraction must leave images for training "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )


@dataclass(frozen=True)
class CacheParams:
    sizes: list[int] = knob()
    workers: int | None = knob(min=1, max=256)

    def check(self, key: str) -> None:
        if not self.sizes:
            raise ParamsError(f"{key}.sizes: list at least one image size")
        for size in self.sizes:
            if not 16 <= size <= 1024:
                raise ParamsError(f"{key}.sizes: {size} is not a size from 16 to 1024 px")
        if len(set(self.sizes)) != len(self.sizes):
            raise ParamsError(f"{key}.sizes: a size is listed twice in {self.sizes}")


@dataclass(frozen=True)
class FeaturesParams:
    backbone: str = knob(choices=FEATURE_BACKBONES, aliases=ALIASES)
    size: int = knob(min=32, max=1024, auto=True)
    weights_path: str | None = knob()

    def __post_init__(self) -> None:
        # `auto`, the backbone's native size, follows from its name alone: resolved as the
        # params are built, so whatever reads them (the features stage and the index it writes,
        # training, the export, checkpoints, benchmarks) reads pixels, and `auto` and the
        # native size written out are the same features.
        if is_auto(self.size):
            object.__setattr__(self, "size", NATIVE_SIZES[self.backbone])


@dataclass(frozen=True)
class ModelParams:
    arch: str = knob(choices=ARCHS, aliases=ALIASES)
    width: int = knob(min=4, max=512)
    dropout: float = knob(min=0.0, max=0.9)
    pretrained: bool = knob()
    weights_path: str | None = knob()
    freeze_backbone: bool = knob()
    head: str = knob(choices=HEADS)
    hybrid: bool = knob()


@dataclass(frozen=True)
class LossParams:
    name: str = knob(choices=LOSSES)
    label_smoothing: float = knob(min=0.0, max=0.9)
    tau_km: float = knob(min=0.001, max=20000.0)
    hierarchy_weight: float = knob(min=0.0, max=100.0)
    offset_weight: float = knob(min=0.0, max=100.0)
    adjacency_weight: float = knob(min=0.0, max=100.0)


@dataclass(frozen=True)
class TrainParams:
    seed: int = knob(min=0)
    epochs: int = knob(min=1, max=10000)
    batch_size: int = knob(min=1, max=65536)
    lr: float = knob(min=0.0, max=10.0)
    weight_decay: float = knob(min=0.0, max=10.0)
    grad_clip: float | None = knob(min=1e-6)
    patience: int = knob(min=1)
    warmup_epochs: float = knob(min=0.0, max=100.0)
    augment: bool = knob()
    workers: int = knob(min=0, max=64)
    precision: str = knob(choices=PRECISIONS, auto=True)
    compile: bool = knob()
    deterministic: bool = knob()
    multiscale: bool = knob()
    resume: bool = knob()


@dataclass(frozen=True)
class RetrievalParams:
    neighbours: int = knob(min=1, max=1000)
    within_top_cells: int = knob(min=0, max=100)
    dims: int = knob(min=0, max=4096)


@dataclass(frozen=True)
class AutoParams:
    """The settings of the retrieval modes that `evaluate.mode: auto` tries, each with each."""
    neighbours: list[int] = knob()
    within_top_cells: list[int] = knob()

    def check(self, key: str) -> None:
        for name, low, high in (("neighbours", 1, 1000), ("within_top_cells", 0, 100)):
            values = getattr(self, name)
            if not values:
                raise ParamsError(f"{key}.{name}: list at least one value")
            for value in values:
                if not low <= value <= high:
                    raise ParamsError(f"{key}.{name}: {value} is not from {low} to {high}")


@dataclass(frozen=True)
class EvaluateParams:
    mode: str = knob(choices=(*MODES, AUTO))
    top_k: int = knob(min=1, max=100)
    bootstrap_samples: int = knob(min=100, max=100_000)
    calibrate: bool = knob()
    retrieval: RetrievalParams = knob()
    auto: AutoParams = knob()


@dataclass(frozen=True)
class CrossvalParams:
    folds: int = knob(min=0, max=100)
    seed: int = knob(min=0)

    def check(self, key: str) -> None:
        if self.folds in (1, 2):
            raise ParamsError(f"{key}.folds is {self.folds}: set it to 0 (no cross-validation) "
                              f"or at least 3 (one fold answered, one to stop training and "
                              f"calibrate on, the rest to train on)")


@dataclass(frozen=True)
class ExportParams:
    opset: int = knob(min=17, max=23)
    retrieval_index: bool = knob()


@dataclass(frozen=True)
class Params:
    batches: list[str] = knob()
    fetch: FetchParams = knob()
    panoramas: PanoramaParams = knob()
    index: IndexParams = knob()
    split: SplitParams = knob()
    cache: CacheParams = knob()
    features: FeaturesParams = knob()
    model: ModelParams = knob()
    loss: LossParams = knob()
    train: TrainParams = knob()
    crossval: CrossvalParams = knob()
    evaluate: EvaluateParams = knob()
    export: ExportParams = knob()

    def check(self, key: str) -> None:
        if not self.batches:
            raise ParamsError("batches: list at least one batch of data/cities.csv")
        if len(set(self.batches)) != len(self.batches):
            raise ParamsError(f"batches: a batch is listed twice in {self.batches}")
        for batch in self.batches:
            if not BATCH_PATTERN.match(batch):
                raise ParamsError(f"batches: {batch!r}: {BATCH_RULE}")
        if self.model.freeze_backbone:
            self._check_frozen()
        if self.evaluate.mode in RETRIEVAL_MODES and not self.export.retrieval_index:
            raise ParamsError(f"evaluate.mode {self.evaluate.mode} needs "
                              f"export.retrieval_index true: the snapshot would not serve the "
                              f"mode it was evaluated in")
        block, finest = self.split.block_resolution, self.index.finest_resolution
        if _known(block, finest) and block <= finest:
            raise ParamsError(
                f"split.block_resolution ({block}) must be finer than "
                f"index.finest_resolution ({finest}): a block as large as a cell would send the "
                f"whole cell to val or test, with no train image. Set it to auto (one level "
                f"finer than the finest cell) or above {finest}")


    def _check_frozen(self) -> None:
        """A frozen backbone trains on the features stage's features: the same network."""
        model, features = self.model, self.features
        if (model.arch, model.pretrained, model.weights_path) != (
                features.backbone, True, features.weights_path):
            raise ParamsError(
                f"model.freeze_backbone trains a head on the features of the features stage, "
                f"so the model must be that backbone: model.arch {features.backbone!r} (is "
                f"{model.arch!r}), model.pretrained true (is {str(model.pretrained).lower()}), "
                f"model.weights_path {features.weights_path!r} (is {model.weights_path!r}); "
                f"or change features.backbone")


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))


def parse_params(raw: object, source: str = "params") -> Params:
    try:
        return _build(Params, raw, key="")
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None


def _build(cls: type, raw: object, key: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"{key or 'top level'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean '{_join(key, close[0])}'?)" if close else ""
            raise ParamsError(f"unknown key '{_join(key, name)}'{hint}")
    values = {}
    for name, f in known.items():
        sub = _join(key, name)
        if name not in raw:
            raise ParamsError(f"missing key '{sub}'")
        values[name] = _convert(hints[name], raw[name], sub, f.metadata)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


def _convert(hint, value, key: str, meta) -> object:
    if meta.get("auto") and is_auto(value):
        return AUTO
    if isinstance(hint, types.UnionType):  # `X | None`: null in YAML; `int | str`: or auto
        if value is None and type(None) in typing.get_args(hint):
            return None
        skip = (type(None), str) if meta.get("auto") else (type(None),)
        (hint,) = (arg for arg in typing.get_args(hint) if arg not in skip)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    value = _scalar(hint, value, key, meta)
    value = meta.get("aliases", {}).get(value, value)
    _check_range(value, key, meta)
    return value


def _scalar(hint: type, value, key: str, meta):
    # YAML reads 1 as int and 1.0 as float; bool is an int subclass, so reject it explicitly.
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    expected = f"{hint.__name__} or {AUTO}" if meta.get("auto") else hint.__name__
    raise ParamsError(f"{key}: expected {expected}, got {value!r}")


def _check_range(value, key: str, meta) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        aliases = [f"{alias} (= {name})" for alias, name in meta.get("aliases", {}).items()]
        allowed = ", ".join(str(c) for c in (*choices, *aliases,
                                             *([AUTO] if meta.get("auto") else [])))
        raise ParamsError(f"{key}: {value!r} is not one of {allowed}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ParamsError(f"{key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ParamsError(f"{key}: {value!r} is above the maximum {meta['max']}")


def _iso_date(key: str, value: str | None) -> datetime.date | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ParamsError(f"{key}: expected a date like 2020-01-31, got {value!r}") from None


def _known(*values) -> bool:
    return not any(is_auto(v) for v in values)


def _inside(path: str, folder: str) -> bool:
    path, folder = (Path(os.path.abspath(p)) for p in (path, folder))
    return path.is_relative_to(folder) and path != folder


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def as_dict(params: Params) -> dict:
    """Plain nested dict of the params (stored inside checkpoints and exports)."""
    return dataclasses.asdict(params)

