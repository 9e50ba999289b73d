"""End to end: the real `dvc repro` in a temporary git repo holding a copy of the project."""

import atexit
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import copy_project, params_with
from PIL import Image

pytestmark = pytest.mark.slow

TINY = {
    "batches": ["batch01", "batch02"],
    # A share of the drives taken with a 360 camera: the panorama path, end to end.
    "fetch": {"synthetic": {"sequences_per_city": 4, "frames_min": 4, "frames_max": 8,
                            "image_size": 64, "panorama_share": 0.1}},
    "index": {"min_images_per_cell": 3},
    "cache": {"sizes": [32]},
    "model": {"width": 4},
    "train": {"epochs": 2, "batch_size": 32},
    "crossval": {"folds": 3},   # four drives per city, one of them may be in test
}
REPRODUCIBLE_STAGES = ["fetch@batch01", "fetch@batch02", "index", "split", "resize_cache",
                       "features", "crossval", "train", "evaluate"]


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        # stage commands call `python`: make it this interpreter, importing the copied geoloc
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def write_params(repo: Path, **sections) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params_with(**sections), sort_keys=False))


def out_hashes(repo: Path, stages: list[str]) -> dict:
    """The hashes of the stages' outputs, but for those that record seconds taken."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    timed = ("metrics/fetch/", "metrics/train_time.json")
    return {stage: [(o["path"], o["md5"]) for o in lock[stage]["outs"]
                    if not o["path"].startswith(timed)] for stage in stages}


def tiny_project(dest: Path) -> Path:
    """A copy of the project in its own git repo, with TINY params, after `dvc repro`. The
    repro runs once per session, in a folder of its own that no test changes; each caller
    gets a copy of it (git history, DVC cache and outputs), as `workspace` copies one."""
    if not _TEMPLATE:
        template = copy_project(Path(tempfile.mkdtemp(prefix="geoloc-tiny-")) / "project")
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        (template / "dvc.lock").unlink(missing_ok=True)
        write_params(template, **TINY)
        run(["git", "init", "-q"], template)
        run(["git", "add", "-A"], template)
        run(["git", "commit", "-q", "-m", "copy"], template)
        run(["dvc", "repro"], template)
        _TEMPLATE.append(template)
    return shutil.copytree(_TEMPLATE[0], dest, symlinks=True, dirs_exist_ok=True)


_TEMPLATE: list[Path] = []   # the one tiny project built this session


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The tiny project after `dvc repro`, shared by the module's tests: they only read it, and
    a test that changes a project changes its own copy (`workspace`), so each test passes alone
    and in any order (`pytest --reverse` runs them backwards)."""
    return tiny_project(tmp_path_factory.mktemp("project"))


def workspace(repo: Path, tmp_path: Path) -> Path:
    """A copy of the shared project for a test to change."""
    return shutil.copytree(repo, tmp_path / "work", symlinks=True)


def test_repro_writes_every_metric(repo):
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    for key in ("accuracy", "top5_accuracy", "median_km", "mean_km", "p90_km", "within_0_5km",
                "within_1km", "within_5km", "within_25km", "within_100km", "geoscore",
                "floor_median_km", "baseline_median_km", "centroid_median_km",
                "median_km_ci_low", "median_km_ci_high", "p90_km_ci_low", "p90_km_ci_high",
                "expected_calibration_error",
                "p95_km", "far_200km", "far_500km", "mode_accuracy"):
        assert math.isfinite(evaluation[key]), key
    assert evaluation["median_km"] <= evaluation["p90_km"]
    for name in ("median_km", "p90_km"):
        assert evaluation[f"{name}_ci_low"] <= evaluation[f"{name}_ci_high"]
    modes = json.loads((repo / "metrics/eval_modes.json").read_text())
    assert set(modes) == {"argmax", "topk", "topk_mean", "hierarchical", "sequence",
                          "sequence_online", "retrieval", "place"}
    # The world's 360 cameras: their frames' views are places of four views.
    manifest = pd.concat(pd.read_parquet(path)
                         for path in sorted(repo.glob("data/raw/*/manifest.parquet")))
    assert (manifest.groupby("view_group").size() == 4).all()
    assert 0 < manifest["view_group"].notna().mean() < 1
    assert 0 < evaluation["nearest_photo_median_km"] <= evaluation["nearest_photo_p90_km"]
    assert modes["argmax"]["median_km"] == evaluation["median_km"]
    cities = pd.read_csv(repo / "plots/eval/cities.csv")
    assert cities["images"].sum() == evaluation["images"]
    predictions = pd.read_parquet(repo / "data/eval/predictions.parquet")
    assert len(predictions) == evaluation["images"]
    for plot in ("error_map", "predictions"):
        with Image.open(repo / f"plots/eval/{plot}.png") as image:
            assert image.format == "PNG", plot
    data = json.loads((repo / "metrics/data.json").read_text())
    fetched = sum(len(pd.read_parquet(repo / f"data/raw/{b}/manifest.parquet"))
                  for b in TINY["batches"])
    assert data["images"] + data["images_dropped_small_cells"] == fetched
    assert data["cities"] == 10
    assert 0 <= data["cell_imbalance"]["gini"] < 1
    assert 0 < data["cell_imbalance"]["normalised_entropy"] <= 1
    split = json.loads((repo / "metrics/split.json").read_text())
    assert split["shared_sequences"] == 0 == split["shared_twin_groups"]
    assert split["images"]["test"] == evaluation["images"]
    assert 0 <= split["nearest_train_km"]["test"]["min"] <= split["nearest_train_km"]["test"][
        "median"]
    for plot in ("coverage", "images_per_cell", "test_to_train_km"):
        with Image.open(repo / f"plots/data/{plot}.png") as image:
            assert image.format == "PNG" and min(image.size) > 400, plot
    crossval = json.loads((repo / "metrics/crossval.json").read_text())
    assert crossval["photos"] == split["images"]["train"] + split["images"]["val"]
    assert crossval["choice"] in crossval["answers"]
    for name, figures in {**crossval["answers"], **crossval["references"]}.items():
        assert figures["median_km_ci_low"] <= figures["median_km"] <= \
            figures["median_km_ci_high"], name
        if name != "nearest_photo":   # the lookup the others are read against
            assert figures["vs_nearest_photo_km_ci_low"] <= figures["vs_nearest_photo_km_ci_high"]
    assert evaluation["choice"] == {"chosen_by": "params"}   # the params name argmax
    train_log = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert "val_median_km" in train_log
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["onnx_top1_agreement"] >= 0.999
    assert export["onnx_max_abs_diff"] < 1e-3
    assert export["torchscript_top1_agreement"] >= 0.999
    assert (repo / "models/export/model.onnx").stat().st_size / 1e6 == pytest.approx(
        export["onnx_mb"], rel=1e-3)
    assert len(json.loads((repo / "models/export/cells.json").read_text())) == \
        export["num_classes"]


def test_cli_predicts_from_the_exported_snapshot(repo):
    cells = {c["cell"]: c for c in json.loads((repo / "models/export/cells.json").read_text())}
    photo = next((repo / "data/raw/batch01/images").glob("*.jpg"))
    result = run([sys.executable, "-m", "geoloc.cli", "predict", str(photo), "--json",
                  "--top-k", "3"], repo)
    (line,) = result.stdout.splitlines()
    prediction = json.loads(line)
    assert prediction["cell"] in cells
    assert prediction["lat"] == pytest.approx(cells[prediction["cell"]]["lat"])
    assert len(prediction["top"]) == 3
    assert prediction["top"][0]["probability"] == pytest.approx(prediction["confidence"])
    assert sum(t["probability"] for t in prediction["top"]) <= 1.0 + 1e-6


def test_cli_combines_the_frames_of_a_sequence(repo, tmp_path):
    from geoloc.predictor import Predictor

    raw = repo / "data/raw/batch01"
    manifest = pd.read_parquet(raw / "manifest.parquet")
    first = manifest["sequence_id"].iloc[0]
    frames = [raw / p for p in manifest.loc[manifest["sequence_id"] == first, "path"]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(frames[0].read_bytes()[:300])
    result = run([sys.executable, "-m", "geoloc.cli", "predict", *map(str, frames), str(broken),
                  "--sequence", "--json"], repo, check=False)
    assert result.returncode == 1 and f"cannot read {broken}" in result.stderr
    (line,) = result.stdout.splitlines()
    prediction = json.loads(line)
    assert prediction["path"] == f"sequence of {len(frames)} photos"

    # The renders carry no capture time: each frame is a place of its own, and the answer is
    # the sum of the frames' log-probabilities under the sequence temperature.
    predictor = Predictor(repo / "models/export")
    log_probs = predictor.recipe.log_probs(predictor.outputs(frames))
    joint = log_probs.sum(axis=0) / predictor.recipe.sequence_temperature
    cells = json.loads((repo / "models/export/cells.json").read_text())
    assert prediction["cell"] == cells[int(joint.argmax())]["cell"]
    assert prediction["confidence"] == pytest.approx(
        float(np.exp(joint.max() - np.logaddexp.reduce(joint))))


def test_export_snapshot_stands_alone_and_is_timed(repo):
    snapshot = repo / "models/export"
    assert {p.name for p in snapshot.iterdir()} == {
        "model.onnx", "model.ts", "cells.json", "model.json", "params.json", "metrics.json",
        "MODEL_CARD.md", "features.onnx", "retrieval.npz"}
    assert (snapshot / "features.onnx").read_bytes() == (
        repo / "data/features/features.onnx").read_bytes()
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    spec = json.loads((snapshot / "model.json").read_text())
    recipe = json.loads((repo / "models/recipe.json").read_text())
    assert spec["recipe"] == recipe["recipe"] and spec["format"] == 3
    assert spec["recipe"]["temperature"] == pytest.approx(evaluation["temperature"], rel=1e-5)
    assert spec["mode"] == "argmax" and spec["recipe"]["neighbours"] == 10
    # answers are named after the training photos' cities
    train = pd.read_parquet(repo / "data/splits/train.parquet")
    assert [c["name"] for c in spec["cities"]] == sorted(train["city"].unique())
    assert json.loads((snapshot / "metrics.json").read_text())["evaluate"] == evaluation
    assert json.loads((snapshot / "params.json").read_text())["model"]["arch"] == "cnn"
    card = (snapshot / "MODEL_CARD.md").read_text()
    assert f"{evaluation['median_km']:.3g} km" in card and "synthetic world" in card
    trained = json.loads((repo / "metrics/train_time.json").read_text())
    # train.precision auto: bf16 on a CUDA device that runs it natively, else fp32
    expected = ("cpu", "fp32")
    if torch.cuda.is_available():
        expected = ("cuda", "bf16" if torch.cuda.is_bf16_supported(including_emulation=False)
                    else "fp32")
    assert (trained["device"], trained["precision"]) == expected
    assert (f"trained on {trained['device']} in {trained['precision']} (train.precision "
            f"`auto`)") in " ".join(card.split())
    assert "The feature index holds the training photos' positions" in card
    assert f"{spec['retrieval']['photos']:,} of them" in card
    export = json.loads((repo / "metrics/export.json").read_text())
    for runtime in ("eager", "torchscript", "onnx"):
        for batch in (1, 32):
            assert export[f"latency_ms_{runtime}_batch{batch}"] > 0


def served_points(repo: Path, modes: list[str]) -> dict:
    """Each mode's points from the exported snapshot for the test photos (the raw JPEGs, with
    the test split's drives), beside the evaluate stage's for the same photos."""
    from geoloc.predictor import Predictor

    evaluated = pd.read_parquet(repo / "data/eval/predictions.parquet")
    test = (pd.read_parquet(repo / "data/splits/test.parquet").set_index("image_id")
            .loc[evaluated["image_id"]].reset_index())
    photos = [repo / "data/raw" / path for path in test["path"]]
    predictor = Predictor(repo / "models/export")
    assert set(modes) <= set(predictor.modes)
    points = {}
    for mode in modes:
        answers = predictor.predict(photos, 1, mode, rows=test)
        points[mode] = (np.array([[a.lat, a.lon] for a in answers]),
                        evaluated[[f"pred_lat_{mode}", f"pred_lon_{mode}"]].to_numpy())
    return points


def test_what_is_served_is_what_was_evaluated(repo):
    """Every mode evaluate scored, from the snapshot alone (ONNX Runtime, the exported class
    table, temperatures and index), gives evaluate's points for the test photos."""
    modes = ["argmax", "topk", "topk_mean", "hierarchical", "sequence", "sequence_online",
             "retrieval", "place"]
    for mode, (served, evaluated) in served_points(repo, modes).items():
        assert np.allclose(served, evaluated, atol=1e-6, rtol=0), mode


def test_a_hybrid_model_serves_its_offsets(repo, tmp_path):
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "model": {"width": 4, "hybrid": True},
                          "evaluate": {"mode": "hybrid"}})
    run(["dvc", "repro", "export"], work)
    spec = json.loads((work / "models/export/model.json").read_text())
    assert spec["outputs"] == ["logits", "offsets"] and spec["mode"] == "hybrid"
    export = json.loads((work / "metrics/export.json").read_text())
    assert export["onnx_offsets_max_abs_diff"] < 1e-3
    points = served_points(work, ["hybrid", "argmax"])
    for mode, (served, evaluated) in points.items():
        assert np.allclose(served, evaluated, atol=1e-6, rtol=0), mode
    assert not np.allclose(points["hybrid"][0], points["argmax"][0])   # the offsets move them


def test_auto_serves_the_answer_cross_validation_chose(repo, tmp_path):
    """A head on the features, evaluate.mode auto: the answer with the lowest cross-validated
    median is the headline, and the snapshot serves it with its retrieval settings."""
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "model": {"arch": "efficientnet_lite0", "pretrained": True,
                                            "freeze_backbone": True},
                          "evaluate": {"mode": "auto"}})
    run(["dvc", "repro", "export"], work)
    crossval = json.loads((work / "metrics/crossval.json").read_text())
    medians = {name: f["median_km"] for name, f in crossval["answers"].items()}
    choice = json.loads((work / "metrics/eval.json").read_text())["choice"]
    assert choice["chosen_by"] == "crossval" and choice["answer"] == crossval["choice"]
    assert choice["held_out_median_km"] == min(medians.values())
    spec = json.loads((work / "models/export/model.json").read_text())
    assert spec["choice"] == choice
    card = (work / "models/export/MODEL_CARD.md").read_text()
    assert f"chosen as `{choice['answer']}` for the lowest held-out median" in card
    assert "under cross-validation by drive" in card
    from geoloc.predictor import Predictor

    predictor = Predictor(work / "models/export")
    answer = crossval["choice"]
    assert predictor.mode == answer.split("_k")[0]
    if predictor.mode in ("retrieval", "place"):
        k, among = answer.removeprefix(f"{predictor.mode}_k").split("_")
        assert predictor.recipe.neighbours == int(k)
        assert predictor.recipe.within_top_cells == (0 if among == "all" else int(among[3:]))


def test_an_export_without_the_feature_index(repo, tmp_path):
    """export.retrieval_index false: no training photo's position leaves with the snapshot,
    and the snapshot does not offer the retrieval mode."""
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "export": {"retrieval_index": False}})
    run([sys.executable, "stages/export.py", "--out", "models/bare", "--metrics",
         "metrics/bare.json"], work)
    names = {p.name for p in (work / "models/bare").iterdir()}
    assert "retrieval.npz" not in names and "features.onnx" not in names
    assert "No feature index" in (work / "models/bare/MODEL_CARD.md").read_text()
    from geoloc.predictor import Predictor

    assert "retrieval" not in Predictor(work / "models/bare").modes


def test_runtime_knobs_rerun_nothing(repo, tmp_path):
    """Processes, resuming, the disk budget and the Mapillary client's politeness change how a
    stage runs, not what it makes: DVC does not track them."""
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "cache": {**TINY["cache"], "workers": 1},
                          "train": {**TINY["train"], "workers": 1, "resume": False},
                          "fetch": {**TINY["fetch"], "max_disk_gb": 7,
                                    "synthetic": {**TINY["fetch"]["synthetic"], "workers": 1},
                                    "mapillary": {"concurrency": 2, "requests_per_second": 5,
                                                  "timeout_s": 9, "max_tries": 2,
                                                  "max_retry_s": 11}}})
    assert "Data and pipelines are up to date" in run(["dvc", "status"], work).stdout
    write_params(work, **{**TINY, "train": {**TINY["train"], "lr": 0.001}})
    assert "train" in run(["dvc", "status"], work).stdout


def test_second_repro_does_nothing(repo):
    result = run(["dvc", "repro"], repo)
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_forced_rerun_reproduces_the_hashes(repo, tmp_path):
    repo = workspace(repo, tmp_path)
    before = out_hashes(repo, REPRODUCIBLE_STAGES)
    onnx_before = (repo / "models/export/model.onnx").read_bytes()
    run(["dvc", "repro", "--force"], repo)
    assert out_hashes(repo, REPRODUCIBLE_STAGES) == before
    assert (repo / "models/export/model.onnx").read_bytes() == onnx_before


def test_changed_param_reruns_only_what_depends_on_it(repo, tmp_path):
    repo = workspace(repo, tmp_path)
    write_params(repo, **{**TINY, "train": {"epochs": 3, "batch_size": 32}})
    result = run(["dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in result.stdout.splitlines()
           if line.startswith("Running stage")}
    # The features are not computed again; cross-validation trains its heads as train does.
    assert ran == {"crossval", "train", "evaluate", "export"}
    diff = run(["dvc", "params", "diff"], repo).stdout
    assert "train.epochs" in diff


def test_a_new_split_computes_no_feature_again(repo, tmp_path):
    """The features are every photo's, keyed by image id: another split seed re-runs the split
    and what learns or scores on it, and the new split finds its photos' features."""
    repo = workspace(repo, tmp_path)
    features = (repo / "data/features/features.npy").read_bytes()
    write_params(repo, **{**TINY, "split": {"seed": 1}})
    result = run(["dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in result.stdout.splitlines()
           if line.startswith("Running stage")}
    assert ran == {"split", "resize_cache", "crossval", "train", "evaluate", "export"}
    assert (repo / "data/features/features.npy").read_bytes() == features


def test_metrics_and_plots_diff_show_every_mode_and_plot(repo, tmp_path):
    repo = workspace(repo, tmp_path)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "the default run"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["mode"] = "sequence"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], repo)
    assert "Running stage 'evaluate'" in result.stdout
    assert "Running stage 'train'" not in result.stdout

    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo).stdout)
    modes = diff["metrics/eval_modes.json"]
    for mode in ("argmax", "topk", "topk_mean", "hierarchical", "sequence", "sequence_online",
                 "retrieval"):
        for key in ("median_km", "p90_km", "median_km_ci_low", "sequence_median_km"):
            assert f"{mode}.{key}" in modes, (mode, key)
    headline = diff["metrics/eval.json"]
    assert headline["median_km"]["new"] == pytest.approx(modes["sequence.median_km"]["new"])
    assert headline["median_km"]["old"] == pytest.approx(modes["argmax.median_km"]["old"])
    assert "floor_median_km" in headline and "temperature" in headline

    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo).stdout)["data"]
    for title in ("error CDF", "calibration", "median error against confidence", "confusion",
                  "median error per city"):
        (name,) = [name for name in plots if name.startswith(title)]
        (plot,) = plots[name]
        assert set(plot["revisions"]) == {"HEAD", "workspace"}, name
    (cdf,) = [p for name, p in plots.items() if name.startswith("error CDF")]
    assert cdf[0]["content"]["encoding"]["x"]["scale"] == {"type": "log"}
    for image in ("plots/eval/error_map.png", "plots/eval/predictions.png"):
        assert {rev for p in plots[image] for rev in p["revisions"]} == {"HEAD", "workspace"}


def test_bad_params_stop_the_stage_with_one_message(tmp_path):
    repo = copy_project(tmp_path)
    write_params(repo, train={"epocs": 3})
    result = run([sys.executable, "stages/fetch.py", "--batch", "batch01",
                  "--out", "data/raw/batch01", "--metrics", "metrics/fetch/batch01.json"],
                 repo, check=False)
    assert result.returncode == 2
    assert "unknown key 'train.epocs' (did you mean 'train.epochs'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((repo / "data").glob("raw/*batch01*"))


def train_command(name: str) -> list[str]:
    return ["stages/train.py", "--out", f"models/{name}.pt", "--live", f"metrics/{name}",
            "--resume", f"models/checkpoints/{name}.pt"]


def test_training_resumes_after_a_kill_and_ends_where_it_would_have(repo, tmp_path):
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "train": {"epochs": 6, "patience": 10, "batch_size": 32}})
    run([sys.executable, *train_command("whole")], work)

    env = {**os.environ, "PYTHONPATH": str(work)}
    killed = subprocess.Popen([sys.executable, *train_command("killed")], cwd=work, env=env,
                              stderr=subprocess.PIPE, text=True)
    for line in killed.stderr:
        if " epoch 2 (" in line:
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert (work / "models/checkpoints/killed.pt").exists()
    resumed = run([sys.executable, *train_command("killed")], work)
    assert "resuming from models/checkpoints/killed.pt" in resumed.stderr
    assert not (work / "models/checkpoints/killed.pt").exists()

    whole = torch.load(work / "models/whole.pt", weights_only=True)
    again = torch.load(work / "models/killed.pt", weights_only=True)
    trained_in = ("device", "precision")
    assert [again["summary"].pop(key) for key in trained_in] == [
        whole["summary"].pop(key) for key in trained_in]
    assert again["summary"] == pytest.approx(whole["summary"], rel=1e-4)
    for name, tensor in whole["state_dict"].items():
        assert torch.allclose(tensor.float(), again["state_dict"][name].float(), atol=1e-5), name
    # every epoch is in the resumed run's DVCLive log, the killed ones replayed
    logged = (work / "metrics/killed/plots/metrics/val_median_km.tsv").read_text().splitlines()
    assert len(logged) == 1 + whole["summary"]["epochs_run"]


def test_a_resume_checkpoint_of_other_params_is_refused(repo, tmp_path):
    work = workspace(repo, tmp_path)
    write_params(work, **{**TINY, "train": {"epochs": 1, "batch_size": 32}})
    (work / "models/checkpoints").mkdir(parents=True, exist_ok=True)
    run([sys.executable, *train_command("first")], work)
    shutil.copy(work / "models/first.pt", work / "models/checkpoints/other.pt")
    result = run([sys.executable, *train_command("other")], work)
    assert "not resuming from models/checkpoints/other.pt" in result.stderr


def test_torchrun_trains_on_two_cpu_processes_with_gloo(repo, tmp_path):
    work = workspace(repo, tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run([str(torchrun), "--standalone", "--nproc_per_node=2", *train_command("ddp")],
                 work)
    checkpoint = torch.load(work / "models/ddp.pt", weights_only=True)
    assert checkpoint["summary"]["epochs_run"] >= 1
    # rank 0 alone logs and writes
    assert result.stderr.count("epoch 0 (") == 1
    assert not (work / "models/checkpoints/ddp.pt").exists()


def test_purge_frees_raw_jpegs_of_cached_batches(repo, tmp_path):
    repo = workspace(repo, tmp_path)
    images = sorted((repo / "data/raw/batch01/images").glob("*.jpg"))
    listing = next(o["md5"] for o in yaml.safe_load((repo / "dvc.lock").read_text())
                   ["stages"]["fetch@batch01"]["outs"] if o["path"] == "data/raw/batch01")
    cache = repo / ".dvc/cache/files/md5"
    objects = [cache / e["md5"][:2] / e["md5"][2:]
               for e in json.loads((cache / listing[:2] / listing[2:]).read_text())
               if e["relpath"].startswith("images/")]
    expected_mb = sum(p.stat().st_size for p in images + objects) / 1e6

    listed = run([sys.executable, "-m", "geoloc.cli", "purge", "batch01"], repo).stdout
    assert "dry run" in listed and all(p.exists() for p in images + objects)
    row = next(line.split() for line in listed.splitlines() if line.startswith("batch01"))
    assert row == ["batch01", str(len(images) + len(objects)), f"{expected_mb:.1f}"]

    run([sys.executable, "-m", "geoloc.cli", "purge", "batch01", "--delete"], repo)
    assert not any(p.exists() for p in images + objects)
    assert (repo / "data/raw/batch01/manifest.parquet").exists()
    assert list((repo / "data/raw/batch02/images").glob("*.jpg"))
    assert "data/raw/batch01" in run(["dvc", "status"], repo).stdout

    write_params(repo, **{**TINY, "cache": {"sizes": [24]}})
    refused = run([sys.executable, "-m", "geoloc.cli", "purge", "batch02"], repo, check=False)
    assert refused.returncode == 2 and "not in the resize cache" in refused.stderr
