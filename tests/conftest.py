import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from geoloc.params import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


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
                    budget=DiskBudget(store_dir, max_gb))


# Real H3 cells (resolution 5) around six cities: the tiny snapshot's classes.
SNAPSHOT_CITIES = [(48.8566, 2.3522), (43.2965, 5.3698), (45.7640, 4.8357), (43.6047, 1.4442),
                   (47.2184, -1.5536), (50.6292, 3.0573)]


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory) -> Path:
    """A real exported snapshot (model.onnx, cells.json, model.json) of an untrained tiny CNN,
    written by the export code the pipeline uses."""
    import h3
    import numpy as np
    import pandas as pd
    import torch

    from geoloc.export import export_model
    from geoloc.models import build_model

    cells = pd.DataFrame({"label": range(len(SNAPSHOT_CITIES)),
                          "cell": [h3.latlng_to_cell(lat, lon, 5) for lat, lon in SNAPSHOT_CITIES],
                          "lat": [lat for lat, _ in SNAPSHOT_CITIES],
                          "lon": [lon for _, lon in SNAPSHOT_CITIES]})
    torch.manual_seed(0)
    model = build_model(tiny_params(model={"width": 4}).model, len(cells))
    check = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("snapshot")
    export_model(model, cells, 32, check, out, load_params(ROOT / "params.yaml").export.opset)
    return out
