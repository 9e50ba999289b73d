import dataclasses
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from geoloc.params import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str):
    """A script of the repository (experiments/ are scripts, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the tests in the reverse of their order (each must pass alone)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture
def default_params() -> Params:
    return load_params(ROOT / "params.yaml")


def params_with(**sections) -> dict:
    """The repo's params.yaml as a dict, with some sections' keys replaced."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            _merge(raw[section], values)
        else:
            raw[section] = values
    return raw


def _merge(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(target[key], value)
        else:
            target[key] = value


def tiny_params(**sections) -> Params:
    return parse_params(params_with(**sections))


def copy_project(dest: Path) -> Path:
    """Copy the files git knows (tracked or not ignored) into dest; no data, no venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def fetch_run(out_dir: Path, batch: str = "batch01", store_dir: Path | None = None,
              max_gb: float = 1.0):
    """A FetchRun writing the batch into out_dir, its downloads beside it."""
    from geoloc.sources.run import DiskBudget, FetchRun

    store_dir = store_dir or Path(out_dir).parent / "downloads"
    return FetchRun(batch=batch, out_dir=Path(out_dir), store_dir=store_dir,
                    budget=DiskBudget(store_dir, max_gb),
                    panoramas=load_params(ROOT / "params.yaml").panoramas)


# The tiny snapshot's calibration, as the evaluate stage would have fitted it: neither is 1, so
# a served answer that skips a division by either differs from what the tests expect.
SNAPSHOT_TEMPERATURE, SNAPSHOT_SEQUENCE_TEMPERATURE = 1.5, 3.0

# Real H3 cells (resolution 5) around six cities: the tiny snapshot's classes, and the cities
# it names its answers after.
SNAPSHOT_CITY_NAMES = ["Paris", "Marseille", "Lyon", "Toulouse", "Nantes", "Lille"]
SNAPSHOT_CITIES = [(48.8566, 2.3522), (43.2965, 5.3698), (45.7640, 4.8357), (43.6047, 1.4442),
                   (47.2184, -1.5536), (50.6292, 3.0573)]


def snapshot_cells():
    """The tiny snapshot's class table: one resolution-5 cell per SNAPSHOT_CITIES city, with
    its resolution-4 parent, as the export writes cells.json from."""
    import h3
    import pandas as pd

    cells = pd.DataFrame({"label": range(len(SNAPSHOT_CITIES)),
                          "cell": [h3.latlng_to_cell(lat, lon, 5) for lat, lon in SNAPSHOT_CITIES],
                          "lat": [lat for lat, _ in SNAPSHOT_CITIES],
                          "lon": [lon for _, lon in SNAPSHOT_CITIES], "resolution": 5})
    cells["parents"] = [[h3.latlng_to_cell(lat, lon, 4)] for lat, lon in SNAPSHOT_CITIES]
    return cells


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory) -> Path:
    """A real exported snapshot (model.onnx, cells.json, model.json) of an untrained tiny CNN,
    written by the export code the pipeline uses, calibrated with SNAPSHOT_TEMPERATURE and
    SNAPSHOT_SEQUENCE_TEMPERATURE."""
    import numpy as np
    import torch

    from geoloc.export import export_model
    from geoloc.inference import Recipe
    from geoloc.models import build_model

    cells = snapshot_cells()
    torch.manual_seed(0)
    model = build_model(tiny_params(model={"width": 4}).model, len(cells))
    check = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("snapshot")
    recipe = Recipe(cells, top_k=5, temperature=SNAPSHOT_TEMPERATURE,
                    sequence_temperature=SNAPSHOT_SEQUENCE_TEMPERATURE)
    cities = [{"name": name, "lat": lat, "lon": lon}
              for name, (lat, lon) in zip(SNAPSHOT_CITY_NAMES, SNAPSHOT_CITIES, strict=True)]
    export_model(model, cells, 32, check, out, load_params(ROOT / "params.yaml").export.opset,
                 {"recipe": recipe.settings(), "cities": cities})
    return out


def noisy_photo(seed: int, size=(64, 48)) -> Image.Image:
    """A noisy picture: distinct seeds give distinct model inputs and features."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def retrieval_snapshot(tiny_snapshot, tmp_path_factory) -> Path:
    """The tiny snapshot with a feature index, as the export stage adds it: a backbone as
    features.onnx (an untrained tiny CNN's, at 48 px where the classifier takes 32) and the
    index of 12 photos (noisy_photo(0..11)), each placed at one of the snapshot's cells, as
    three places of four views (photos 0-3, 4-7, 8-11)."""
    import json

    import numpy as np
    import torch

    from geoloc.data.preprocess import to_square
    from geoloc.models import FeatureExtractor, build_model
    from geoloc.models.to_onnx import write_onnx
    from geoloc.predictor import FEATURES_MODEL, RETRIEVAL_INDEX, SPEC_NAME
    from geoloc.retrieval import RetrievalIndex

    out = tmp_path_factory.mktemp("retrieval_snapshot")
    shutil.copytree(tiny_snapshot, out, dirs_exist_ok=True)
    torch.manual_seed(1)
    extractor = FeatureExtractor(build_model(tiny_params(model={"width": 4}).model, 1))
    write_onnx(extractor, torch.zeros((2, 48, 48, 3), dtype=torch.uint8), out / FEATURES_MODEL,
               18, ["features"])
    images = np.stack([to_square(noisy_photo(seed), 48) for seed in range(12)])
    with torch.no_grad():
        features = extractor(torch.from_numpy(images)).numpy()
    labels = np.arange(12) % len(SNAPSHOT_CITIES)
    lat = np.array([SNAPSHOT_CITIES[i][0] for i in labels]) + 0.01 * np.arange(12)
    lon = np.array([SNAPSHOT_CITIES[i][1] for i in labels])
    RetrievalIndex.build(features, lat, lon, labels, dims=8,
                         places=np.arange(12) // 4).save(out / RETRIEVAL_INDEX)
    spec = json.loads((out / SPEC_NAME).read_text())
    spec["retrieval"] = {"image_size": 48, "photos": 12, "panoramas": dataclasses.asdict(
        load_params(ROOT / "params.yaml").panoramas)}
    spec["recipe"].update(neighbours=1, within_top_cells=0)
    (out / SPEC_NAME).write_text(json.dumps(spec))
    return out


@pytest.fixture(scope="session")
def wide_retrieval_snapshot(retrieval_snapshot, tmp_path_factory) -> Path:
    """The retrieval snapshot as evaluated with retrieval_k3_top2: the medoid of the 3 nearest
    training photos, among those of the 2 likeliest cells."""
    import json

    from geoloc.predictor import SPEC_NAME

    out = tmp_path_factory.mktemp("wide_retrieval_snapshot")
    shutil.copytree(retrieval_snapshot, out, dirs_exist_ok=True)
    spec = json.loads((out / SPEC_NAME).read_text())
    spec["recipe"].update(neighbours=3, within_top_cells=2)
    (out / SPEC_NAME).write_text(json.dumps(spec))
    return out


def brute_force_search(index, queries, k: int, cells=None):
    """(ids, similarities) of the k most similar training photos, among those of each query's
    cells, padded with -1 and -inf: the search by hand."""
    import numpy as np

    vectors = index.vectors.astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids, sims = np.full((len(queries), k), -1), np.full((len(queries), k), -np.inf)
    for q, query in enumerate(index.project(queries)):
        allowed = (np.arange(len(vectors)) if cells is None
                   else np.flatnonzero(np.isin(index.label, cells[q])))
        similarity = vectors[allowed] @ query
        best = np.argsort(-similarity, kind="stable")[:k]
        ids[q, :len(best)], sims[q, :len(best)] = allowed[best], similarity[best]
    return ids, sims


def expected_retrieval(snapshot: Path, photos: list, neighbours: int, within_top_cells: int):
    """(lat, lon) per photo as retrieval defines it, computed here by brute force: the training
    photos of the `within_top_cells` likeliest cells that hold any (0: all), the `neighbours`
    most cosine-similar of them, and the one whose distance to the others, each weighed by its
    similarity, is least. Only the model's outputs come from the code under test."""
    import numpy as np

    from geoloc.geo import haversine_km
    from geoloc.predictor import RETRIEVAL_INDEX, Predictor
    from geoloc.retrieval import RetrievalIndex

    outputs = Predictor(snapshot).outputs(photos, features=True)
    index = RetrievalIndex.load(snapshot / RETRIEVAL_INDEX)
    held = np.unique(index.label)
    cells = None
    if within_top_cells:
        cells = np.stack([held[np.argsort(-logits[held], kind="stable")][:within_top_cells]
                          for logits in outputs.logits])
    answers = []
    for found, similarity in zip(*brute_force_search(index, outputs.features, neighbours, cells),
                                 strict=True):
        found, similarity = found[found >= 0], similarity[found >= 0]
        weights = np.clip(similarity, 0, None) + 1e-6
        km = haversine_km(index.lat[found][:, None], index.lon[found][:, None],
                          index.lat[found][None, :], index.lon[found][None, :])
        best = found[(km * weights[None, :]).sum(axis=1).argmin()]
        answers.append((index.lat[best], index.lon[best]))
    return answers
