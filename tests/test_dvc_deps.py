"""dvc.yaml's dependencies cannot drift from the code: each stage lists every module of geoloc/
its script imports (directly or not, lazily too) and no other, every file of geoloc/assets
those modules name and no other, and tracks every param its code reads; no stage tracks a
runtime knob, and where a section is listed key by key to leave its knobs out, every other key
is tracked."""

import ast
import shlex
import shutil
import subprocess
import sys
import textwrap
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
ASSETS = {path.relative_to(ROOT).as_posix()
          for path in (ROOT / "geoloc/assets").rglob("*") if path.is_file()}


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
        # Only absolute names are followed: what a relative import brings in would go unseen.
        assert not (isinstance(node, ast.ImportFrom) and node.level), (
            f"{path}:{node.lineno}: relative import; write `from geoloc.... import ...` so "
            f"that tests/test_dvc_deps.py can follow it")
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


def stage_files(stage: str) -> list[Path]:
    script = ROOT / f"stages/{stage}.py"
    return [script, *sorted(ROOT / path for path in import_closure(script))]


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(stage):
    deps = definition(stage)["deps"]
    needed = import_closure(ROOT / f"stages/{stage}.py")
    code = [d for d in deps if d.startswith("geoloc/") and not d.startswith("geoloc/assets")]

    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(f"{dep}/") for dep in code)

    assert f"stages/{stage}.py" in deps
    assert sorted(p for p in needed if not covered(p)) == [], "missing from dvc.yaml"
    unused = [dep for dep in code if not any(p == dep or p.startswith(f"{dep}/") for p in needed)]
    assert unused == [], "listed in dvc.yaml but not imported"


def test_a_relative_import_is_refused(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import geoloc.io\nfrom .cells import load_cells\n")
    with pytest.raises(AssertionError, match=r"stage.py:2: relative import"):
        import_closure(script)


def assets_read(path: Path) -> set[str]:
    """The files of geoloc/assets a module names: running its code may read them."""
    names = {Path(node.value).name for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return {asset for asset in ASSETS if Path(asset).name in names}


def asset_gaps(deps: list[str], needed: set[str]) -> tuple[list[str], list[str]]:
    """The assets in `needed` that `deps` leave out, and those `deps` track that are not needed
    (a folder dep tracks each file in it: one no code reads would re-run the stage for nothing)."""
    tracked = {asset for asset in ASSETS if any(asset == d or asset.startswith(f"{d}/")
                                                for d in deps)}
    return sorted(needed - tracked), sorted(tracked - needed)


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_depends_on_exactly_the_assets_its_code_reads(stage):
    needed = set().union(*map(assets_read, stage_files(stage)))
    missing, stale = asset_gaps(definition(stage)["deps"], needed)
    assert missing == [], "read by the stage's code but missing from dvc.yaml"
    assert stale == [], "listed in dvc.yaml but read by none of the stage's code"


def test_the_asset_check_sees_a_missing_and_a_stale_asset():
    needed = set().union(*map(assets_read, stage_files("index")))
    assert needed == {"geoloc/assets/france.geojson"}  # the base map of geoloc/data/plots.py
    deps = [d for d in definition("index")["deps"] if not d.startswith("geoloc/assets")]
    assert asset_gaps(deps, needed) == (["geoloc/assets/france.geojson"], [])
    assert asset_gaps([*deps, "geoloc/assets"], needed) == ([], ["geoloc/assets/cities.json"])


def leaves(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= leaves(value, f"{path}.") if isinstance(value, dict) else {path}
    return keys


PARAMS = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))


def inside(key: str, section: str) -> bool:
    return not section or key == section or key.startswith(f"{section}.")


def params_key(node: ast.AST, roots: dict[str, str]) -> str | None:
    """The key of the params an expression reads ('' for all of them), None for no params."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_params":
        base = ""
    elif isinstance(node, ast.Name) and node.id in roots:
        base = roots[node.id]
    else:
        return None
    return ".".join(filter(None, [base, *attrs]))


def aliases(tree: ast.Module) -> list[ast.Assign]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)]


def params_roots(tree: ast.Module) -> dict[str, str]:
    """The names bound to the params or a part of them, with the key each stands for: those
    assigned (`params = load_params()`, `cfg = params.cache`) and a function's `x: Params`.
    Scopes are not told apart, which can only find more reads."""
    roots = {node.arg: "" for node in ast.walk(tree) if isinstance(node, ast.arg)
             and getattr(node.annotation, "id", None) == "Params"}
    while new := {node.targets[0].id: key for node in aliases(tree)
                  if node.targets[0].id not in roots
                  and (key := params_key(node.value, roots)) is not None}:
        roots |= new
    return roots


def params_reads(trees: list[ast.Module]) -> set[str]:
    """The keys of the params some code reads, '' for all of them: each attribute chain off a
    root, whole (a section handed to a helper is read whole). The whole params may be handed
    only to a function of the code that takes them in a root, and so reads them in sight, or
    to as_dict, which records them (the checkpoint's copy, the resume fingerprint)."""
    roots = [params_roots(tree) for tree in trees]
    takers = {("as_dict", 0)}
    for tree, names in zip(trees, roots, strict=True):
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                args = fn.args
                takers |= {(fn.name, slot) for i, arg in enumerate(args.posonlyargs + args.args)
                           if names.get(arg.arg) == "" for slot in (i, arg.arg)}
                takers |= {(fn.name, arg.arg) for arg in args.kwonlyargs
                           if names.get(arg.arg) == ""}
    reads = set()
    for tree, names in zip(trees, roots, strict=True):
        passed, inner = {}, {id(node.value) for node in aliases(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                inner.add(id(node.value))
            elif isinstance(node, ast.Call):
                callee = getattr(node.func, "id", getattr(node.func, "attr", None))
                passed |= {id(arg): (callee, i) for i, arg in enumerate(node.args)}
                passed |= {id(kw.value): (callee, kw.arg) for kw in node.keywords}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Name | ast.Attribute | ast.Call) and id(node) not in inner
                    and not isinstance(getattr(node, "ctx", None), ast.Store | ast.Del)):
                key = params_key(node, names)
                if key is not None and not (key == "" and passed.get(id(node)) in takers):
                    reads.add(key)
    return reads


def stage_reads(stage: str) -> set[str]:
    # geoloc/params.py builds, checks and dumps every section: which ones a stage reads is
    # up to the code that asks for them.
    return params_reads([ast.parse(path.read_text()) for path in stage_files(stage)
                         if path != ROOT / "geoloc/params.py"])


def untracked(reads: set[str], tracked: list[str]) -> list[str]:
    """The reads that `tracked` leaves out: a section read whole needs each of its keys but the
    runtime knobs, and a read that names no param is reported too."""
    def covered(read: str) -> bool:
        keys = {key for key in PARAMS if inside(key, read) or inside(read, key)}
        return bool(keys) and all(key in RUNTIME or any(inside(key, str(t)) for t in tracked)
                                  for key in keys)
    return sorted(read for read in reads if not covered(read))


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_tracks_every_param_its_code_reads(stage):
    tracked = definition(stage).get("params", [])
    assert untracked(stage_reads(stage), tracked) == [], "read but not tracked in dvc.yaml"


def test_the_params_check_sees_a_read_left_untracked():
    source = ast.parse(textwrap.dedent("""
        def main():
            params = load_params()
            cfg = params.cache
            use(cfg.sizes[0], params.features, as_dict(params), helper(1, params=params))
            record(params)

        def helper(n, params: Params):
            return load_params().split.seed, params.evaluate.top_k
    """))
    assert params_reads([source]) == {"cache.sizes", "features", "split.seed",
                                      "evaluate.top_k", ""}
    # The gaps the evaluate stage had, and a key taken out of a section read whole.
    assert untracked(stage_reads("evaluate"), ["evaluate"]) == [
        "cache.sizes", "export.retrieval_index", "features"]
    train = definition("train")["params"]
    assert untracked(stage_reads("train"), train) == []
    assert untracked(stage_reads("train"), [p for p in train if p != "cache.sizes"]) == [
        "cache.sizes"]
    assert untracked(stage_reads("train"), [p for p in train if p != "train.lr"]) == ["train"]
    assert untracked({"fetch.source.lower", "fetch.max_disk_gb", "nope"}, ["fetch.source"]) == [
        "nope"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_tracks_every_param_of_its_sections_but_the_runtime_knobs(stage):
    """No runtime knob is tracked; in a section listed key by key to leave its runtime knobs
    out, every other key is tracked, so a key added to it later cannot be forgotten."""
    tracked = {str(p) for p in definition(stage).get("params", [])}
    covered = {p for p in PARAMS if any(p == t or p.startswith(f"{t}.") for t in tracked)}
    assert not covered & RUNTIME, "a runtime knob is tracked"
    trimmed = {t.split(".")[0] for t in tracked} & {r.split(".")[0] for r in RUNTIME}
    left_out = {p for p in PARAMS - covered if p.split(".")[0] in trimmed}
    assert left_out <= RUNTIME, "a param that can change outputs is not tracked"


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
