"""The project's promise, word for word: `dvc repro`, then `dvc exp run -S model.arch=efficientnet`,
`dvc metrics diff` and `dvc push`, typed as a user types them, in a temporary git repo holding a
tiny copy of the project (real DVC, a directory remote)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_pipeline import run, tiny_project
from test_remote import expected_objects

pytestmark = pytest.mark.slow

EXPERIMENT = ["dvc", "exp", "run", "-S", "model.arch=efficientnet"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def diff_rows(table: str, path: str) -> dict[str, tuple[str, str]]:
    """`dvc metrics diff`'s rows of one metrics file: {metric: (old, new)} as printed."""
    rows = {}
    for line in table.splitlines():
        cells = line.split()
        if cells and cells[0] == path:
            name, old, new = cells[1:4]
            rows[name] = (old, new)
    return rows


def changed_metrics(repo: Path, path: str) -> set[str]:
    """The metrics of `path` whose value in the workspace is not HEAD's."""
    old = json.loads(run(["git", "show", f"HEAD:{path}"], repo).stdout)
    new = json.loads((repo / path).read_text())
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}


def test_repro_exp_run_metrics_diff_and_push(tmp_path):
    repo = tiny_project(tmp_path / "project")   # after `dvc repro` (run once a session)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "the default run"], repo)
    baseline = md5(repo / "models/model.pt")

    run(EXPERIMENT, repo)
    # The experiment is in the workspace: a new model, recorded under the family's default
    # member, not under the alias typed.
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["arch"] == "efficientnet"
    assert md5(repo / "models/model.pt") != baseline
    checkpoint = torch.load(repo / "models/model.pt", map_location="cpu", weights_only=True)
    assert checkpoint["model"]["arch"] == checkpoint["params"]["model"]["arch"] == \
        "efficientnet_lite0"
    snapshot = json.loads((repo / "models/export/params.json").read_text())
    assert snapshot["model"]["arch"] == "efficientnet_lite0"
    assert "`efficientnet_lite0`" in (repo / "models/export/MODEL_CARD.md").read_text()
    export = json.loads((repo / "metrics/export.json").read_text())
    for runtime in ("onnx", "torchscript"):
        assert export[f"{runtime}_top1_agreement"] >= 0.999, runtime
        assert export[f"{runtime}_max_abs_diff"] < 1e-3, runtime

    table = run(["dvc", "metrics", "diff"], repo).stdout
    rows = diff_rows(table, "metrics/eval.json")
    assert rows, table
    assert set(rows) == changed_metrics(repo, "metrics/eval.json"), table
    assert all(old != new for old, new in rows.values()), table

    store = tmp_path / "store"
    run(["dvc", "remote", "add", "-d", "store", str(store)], repo)
    run(["dvc", "push"], repo)
    objects = store / "files/md5"
    assert {str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()} == \
        expected_objects(repo)
    model = md5(repo / "models/model.pt")
    assert (objects / model[:2] / model[2:]).read_bytes() == (repo / "models/model.pt").read_bytes()
