"""dvc.yaml's dependencies cannot drift from the code: each stage lists every module of geoloc/
its script imports (directly or not, lazily too) and no other; no stage tracks a runtime knob,
and where a section is listed key by key to leave its knobs out, every other key is tracked."""

import ast
import shlex
import shutil
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Knobs of speed, politeness and disk: what a stage makes does not depend on them.
RUNTIME = {"fetch.max_disk_gb", "fetch.mapillary.concurrency",
           "fetch.mapillary.requests_per_second", "fetch.mapillary.timeout_s",
           "fetch.mapillary.max_tries", "fetch.mapillary.max_retry_s", "cache.workers",
           "train.workers", "train.resume", "fetch.synthetic.workers"}


def definition(stage: str) -> dict:
    return STAGES[stage].get("do", STAGES[stage])


def module_file(name: str) -> Path | None:
    for path in (ROOT / f"{name.replace('.', '/')}.py",
                 ROOT / name.replace(".", "/") / "__init__.py"):
        if path.exists():
            return path
    return None


def geoloc_imports(path: Path) -> set[str]:
    """Every geoloc module a file imports, at the top or inside a function, with the packages
    on the way (importing geoloc.data.cells runs geoloc/data/__init__.py)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "geoloc":
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return found


def import_closure(script: Path) -> set[str]:
    """The files of geoloc/ that running `script` may import, relative to the root."""
    files, todo = set(), [script]
    while todo:
        for name in geoloc_imports(todo.pop()):
            path = module_file(name)
            if path is not None and path not in files:
                files.add(path)
                todo.append(path)
    return {path.relative_to(ROOT).as_posix() for path in files}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(stage):
    deps = definition(stage)["deps"]
    needed = import_closure(ROOT / f"stages/{stage}.py")
    code = [d for d in deps if d.startswith("geoloc/") and d != "geoloc/assets"]

    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(f"{dep}/") for dep in code)

    assert f"stages/{stage}.py" in deps
    assert sorted(p for p in needed if not covered(p)) == [], "missing from dvc.yaml"
    unused = [dep for dep in code if not any(p == dep or p.startswith(f"{dep}/") for p in needed)]
    assert unused == [], "listed in dvc.yaml but not imported"


def leaves(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= leaves(value, f"{path}.") if isinstance(value, dict) else {path}
    return keys


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_tracks_every_param_of_its_sections_but_the_runtime_knobs(stage):
    """No runtime knob is tracked; in a section listed key by key to leave its runtime knobs
    out, every other key is tracked, so a key added to it later cannot be forgotten."""
    params = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    tracked = {str(p) for p in definition(stage).get("params", [])}
    covered = {p for p in params if any(p == t or p.startswith(f"{t}.") for t in tracked)}
    assert not covered & RUNTIME, "a runtime knob is tracked"
    trimmed = {t.split(".")[0] for t in tracked} & {r.split(".")[0] for r in RUNTIME}
    untracked = {p for p in params - covered if p.split(".")[0] in trimmed}
    assert untracked <= RUNTIME, "a param that can change outputs is not tracked"


def test_a_stage_runs_the_code_of_its_own_copy(tmp_path):
    """`dvc exp run --queue` runs each experiment in a copy of the repo while geoloc stays
    installed (editable) from the workspace; a stage must import the copy's geoloc, or an edit
    made in the workspace while the queue runs would leak into every queued experiment."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copytree(ROOT / "geoloc", tmp_path / "geoloc")
    with open(tmp_path / "geoloc/__init__.py", "a") as init:
        init.write("\nprint('geoloc from', __file__)\n")
    # The command up to its first option: `python -m stages.<name>`.
    commands = {name: list(takewhile(lambda word: not word.startswith("--"),
                                     shlex.split(definition(name)["cmd"])))
                for name in STAGES}
    runs = {name: subprocess.Popen([sys.executable, *command[1:], "--help"], cwd=tmp_path,
                                   stdout=subprocess.PIPE, text=True)
            for name, command in commands.items()}
    for name, run in runs.items():
        assert f"geoloc from {tmp_path / 'geoloc/__init__.py'}" in run.communicate()[0], name
