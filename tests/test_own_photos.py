"""The README's "Your own photos" walk-through, for real: a folder of 400 geotagged photos of one
coastal region (100 panoramas of 4 faces, EXIF GPS and capture times, a CSV with columns this
project does not read, and a few bad inputs), a city line with a batch of its own name, and
`dvc exp run` with the own-photos preset in a temporary git repo."""

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, copy_project
from PIL import Image
from test_pipeline import run

from geoloc.demo_photos import write_demo_folder
from geoloc.predictor import Predictor

pytestmark = pytest.mark.slow

REGION = "Cap-Ferret,44.68,-1.24,10,capferret"   # a 20 km circle of the Atlantic coast
DATA = ["fetch.source=local", "fetch.local.csv=data/photos/capferret/photos.csv",
        "batches=[capferret]"]
# The preset, exactly as the README gives it.
PRESET = ["index.coarsest_resolution=auto", "index.finest_resolution=auto",
          "index.max_images_per_cell=auto", "index.min_images_per_cell=auto",
          "model.arch=efficientnet_lite0", "model.pretrained=true",
          "model.freeze_backbone=true", "evaluate.mode=auto"]


def test_the_readme_gives_the_preset_tested_here():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Your own photos"):]
    for override in PRESET + DATA:
        assert f"-S {override}" in section or f"-S '{override}'" in section, override


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """The project in its own git repo with the region's photos, after the preset's run."""
    repo = copy_project(tmp_path_factory.mktemp("own"))
    (repo / "dvc.lock").unlink(missing_ok=True)
    with open(repo / "data/cities.csv", "a") as cities:
        cities.write(REGION + "\n")
    photos = repo / "data/photos/capferret"
    csv = write_demo_folder(photos, "Cap-Ferret", drives=25, stops=4,
                            cities=repo / "data/cities.csv")
    # What a real folder also holds: a photo without any position, a row of a photo since
    # deleted, and a photo taken far outside the region.
    Image.new("RGB", (64, 48), "grey").save(photos / "no_gps.jpg")
    Image.new("RGB", (64, 48), "navy").save(photos / "paris.jpg")
    with open(csv, "a") as rows:
        rows.write("drive99/deleted.jpg,44.68,-1.24,drive99,1620000000000,99-00,0\n")
        rows.write("paris.jpg,48.85,2.35,paris,1620000000000,paris-00,0\n")
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project and the region's city"], repo)
    run(["dvc", "exp", "run", "-n", "own-photos",
         *[arg for override in DATA + PRESET for arg in ("-S", override)]], repo)
    return repo


def test_the_photos_run_through_the_pipeline_with_the_preset(region):
    fetch = json.loads((region / "metrics/fetch/capferret.json").read_text())
    # The 400 faces; each bad input named in the log, skipped and counted.
    assert fetch["images"] == 400
    assert fetch["failures"] == {"no_position": 1, "missing_file": 1, "outside_cities": 1}
    data = json.loads((region / "metrics/data.json").read_text())
    assert 10 <= data["cells"] < 100          # tens of cells for a 20 km region
    assert all(isinstance(v, int) for k, v in data["index"].items() if k != "cap_images_per_cell")
    split = json.loads((region / "metrics/split.json").read_text())
    assert split["shared_sequences"] == 0 and split["block_resolution"] > max(
        int(r) for r in data["cells_per_resolution"])
    # The answer is the one with the lowest cross-validated median, served as chosen.
    crossval = json.loads((region / "metrics/crossval.json").read_text())
    assert crossval["folds"] == 5 and crossval["drives"] >= 15
    evaluation = json.loads((region / "metrics/eval.json").read_text())
    choice = evaluation["choice"]
    assert choice["chosen_by"] == "crossval" and choice["answer"] == crossval["choice"]
    modes = json.loads((region / "metrics/eval_modes.json").read_text())
    spec = json.loads((region / "models/export/model.json").read_text())
    assert evaluation["median_km"] == modes[spec["mode"]]["median_km"]
    assert spec["choice"] == choice and spec["image_size"] == 224
    assert "nearest_photo_median_km" in evaluation


def test_panorama_faces_are_one_place_in_a_sequence(region):
    manifest = pd.read_parquet(region / "data/raw/capferret/manifest.parquet")
    per_place = manifest.groupby(["sequence_id", "captured_at"]).size()
    assert per_place.max() == 4 and per_place.median() == 4
    faces = sorted((region / "data/photos/capferret/drive03").glob("stop01_face*.jpg"))
    result = run([sys.executable, "-m", "geoloc.cli", "predict", *map(str, faces), "--sequence",
                  "--json"], region)
    answer = json.loads(result.stdout)
    assert answer["mode"] == "sequence" and answer["path"] == "sequence of 4 photos"
    # One place (the faces share their EXIF capture time): its evidence is the faces' mean.
    predictor = Predictor(region / "models/export")
    log_probs = predictor.recipe.log_probs(predictor.outputs(faces))
    place = log_probs.mean(axis=0) / predictor.recipe.sequence_temperature
    assert answer["confidence"] == pytest.approx(
        float(np.exp(place.max() - np.logaddexp.reduce(place))), rel=1e-6)


def test_the_snapshot_answers_places_as_evaluate_did(region):
    """The place mode from the snapshot alone gives evaluate's points for the test photos
    (each stop's four faces one place, by their shared capture time), and `geoloc predict
    --place` on one stop's faces gives that stop's evaluated answer."""
    evaluated = pd.read_parquet(region / "data/eval/predictions.parquet")
    test = (pd.read_parquet(region / "data/splits/test.parquet").set_index("image_id")
            .loc[evaluated["image_id"]].reset_index())
    photos = [region / "data/raw" / path for path in test["path"]]
    served = Predictor(region / "models/export").predict(photos, 1, "place", rows=test)
    expected = evaluated[["pred_lat_place", "pred_lon_place"]].to_numpy()
    assert np.allclose([[a.lat, a.lon] for a in served], expected, atol=1e-6, rtol=0)
    stop = test.groupby(["sequence_id", "captured_at"]).indices
    faces = next(rows for rows in stop.values() if len(rows) == 4)
    result = run([sys.executable, "-m", "geoloc.cli", "predict", "--place", "--json",
                  *(str(photos[i]) for i in faces)], region)
    answer = json.loads(result.stdout)
    assert (answer["mode"], answer["views"]) == ("place", 4)
    assert np.allclose([answer["lat"], answer["lon"]], expected[faces[0]], atol=1e-6, rtol=0)


def test_photos_are_ignored_by_git_and_a_changed_photo_or_csv_reruns_the_fetch(region):
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], region).stdout
    assert "data/photos/capferret" not in status
    assert "Data and pipelines are up to date" in run(["dvc", "status"], region).stdout
    csv = region / "data/photos/capferret/photos.csv"
    rows = csv.read_bytes()
    csv.write_bytes(re.sub(rb"^(drive01/stop00_face0\.jpg),([0-9.]+)", rb"\1,44.70", rows,
                           count=1, flags=re.M))
    assert "fetch@capferret" in run(["dvc", "status"], region).stdout
    csv.write_bytes(rows)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], region).stdout
    photo = region / "data/photos/capferret/drive02/stop03_face2.jpg"
    kept = photo.read_bytes()
    photo.unlink()
    assert "fetch@capferret" in run(["dvc", "status"], region).stdout
    photo.write_bytes(kept)
    # Versioned with DVC instead: the .dvc file is for git, the photos are not.
    run(["dvc", "add", "data/photos/capferret"], region)
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], region).stdout
    assert "data/photos/capferret.dvc" in status and "stop03" not in status


# Two ends of France, 840 km apart, as lines of one batch without a radius: every photo of the
# folder goes to its nearest city, and no circle is drawn by hand.
COUNTRY = ["Morlaix,48.58,-3.83,,france", "Haguenau,48.82,7.79,,france"]


def test_a_batch_spread_over_a_country_needs_no_circles(tmp_path):
    """One folder of photos taken at both ends of the country, with EXIF positions only,
    goes through `dvc repro` with the preset: each photo goes to its nearest city, the cells
    follow the photos, and answers are named after the two cities."""
    repo = copy_project(tmp_path / "country")
    (repo / "dvc.lock").unlink(missing_ok=True)
    # The photos are rendered around circles of a scratch list; the project's has none.
    scratch = tmp_path / "render.csv"
    scratch.write_text("city,lat,lon,radius_km,batch\n" + "".join(
        line.replace(",,", ",5,") + "\n" for line in COUNTRY))
    folder = repo / "data/photos/france"
    for city in ("Morlaix", "Haguenau"):
        csv = write_demo_folder(folder / city.lower(), city, drives=6, stops=2, width=128,
                                cities=scratch)
        csv.unlink()   # EXIF alone: each drive's subfolder is a drive
    with open(repo / "data/cities.csv", "a") as cities:
        cities.write("".join(line + "\n" for line in COUNTRY))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["fetch"].update(source="local", local={**params["fetch"]["local"],
                                                  "folder": "data/photos/france", "csv": None})
    params["batches"] = ["france"]
    for override in PRESET:
        key, value = override.split("=")
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "a batch over the country"], repo)
    run(["dvc", "repro"], repo)

    fetch = json.loads((repo / "metrics/fetch/france.json").read_text())
    assert fetch["images"] == 2 * 6 * 2 * 4 and not fetch["failures"]
    manifest = pd.read_parquet(repo / "data/raw/france/manifest.parquet")
    west = manifest["lon"] < 2.0
    assert (manifest.loc[west, "city"] == "Morlaix").all()
    assert (manifest.loc[~west, "city"] == "Haguenau").all() and west.sum() == 48
    spec = json.loads((repo / "models/export/model.json").read_text())
    assert [c["name"] for c in spec["cities"]] == ["Haguenau", "Morlaix"]
    photo = next((folder / "haguenau").rglob("*.jpg"))
    answer = json.loads(run([sys.executable, "-m", "geoloc.cli", "predict", "--json",
                             str(photo)], repo).stdout)
    assert answer["city"] == "Haguenau" and answer["city_km"] < 50
