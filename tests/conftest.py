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
