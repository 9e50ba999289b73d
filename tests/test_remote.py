"""`dvc push` and `dvc pull` for real: to a local directory remote and to S3 (moto's server on
127.0.0.1, through dvc-s3), each time into a fresh `git clone` that has no data and no cache."""

import json
import logging
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from test_pipeline import run, tiny_project

pytestmark = pytest.mark.slow

# Stage outputs of every kind that a pull must restore byte for byte.
PULLED = ["data/raw/batch01/manifest.parquet", "data/index/cells.parquet",
          "data/splits/test.parquet", "data/cache/train_32.npy", "models/model.pt",
          "models/export/model.onnx"]
BUCKET = "geoloc-test"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project after `dvc repro`, everything (dvc.lock included) committed."""
    repo = tiny_project(tmp_path_factory.mktemp("project"))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "repro"], repo)
    return repo


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1, with fake credentials in the environment
    (never in a file) and no AWS config of this machine's user read."""
    none = tmp_path_factory.mktemp("aws") / "none"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(none),
           "AWS_SHARED_CREDENTIALS_FILE": str(none)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield endpoint, client
        finally:
            server.stop()


def add_remote(repo: Path, name: str, url: str, **options: str) -> None:
    """Add a default remote and commit .dvc/config, so that a clone knows it."""
    run(["dvc", "remote", "add", "-d", "--force", name, url], repo)
    for key, value in options.items():
        run(["dvc", "remote", "modify", name, key, value], repo)
    run(["git", "add", ".dvc/config"], repo)
    run(["git", "commit", "-q", "-m", f"remote {name}"], repo)


def expected_objects(repo: Path) -> set[str]:
    """The cache objects (`xx/yyyy...` under files/md5/) of every stage output that DVC caches:
    dvc.lock's outputs but those with `cache: false`, which git tracks instead (the run cache
    keeps copies of those too, but `dvc push` leaves them out)."""
    tracked = set(run(["git", "ls-files"], repo).stdout.splitlines())
    cache = repo / ".dvc/cache/files/md5"
    objects = set()
    for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            path = out["path"].rstrip("/")
            if path in tracked or any(name.startswith(path + "/") for name in tracked):
                continue
            digests = [out["md5"]]
            if out["md5"].endswith(".dir"):
                listing = cache / out["md5"][:2] / out["md5"][2:]
                digests += [entry["md5"] for entry in json.loads(listing.read_text())]
            objects |= {f"{d[:2]}/{d[2:]}" for d in digests}
    return objects


def push(repo: Path, remote: str) -> str:
    result = run(["dvc", "push", "-r", remote], repo)
    return result.stdout + result.stderr


def clone_and_pull(project: Path, dest: Path, remote: str) -> Path:
    run(["git", "clone", "-q", str(project), str(dest)], dest.parent)
    assert not (dest / ".dvc/cache").exists()
    assert not any((dest / path).exists() for path in PULLED)
    run(["dvc", "pull", "-r", remote], dest)
    return dest


def assert_restored(project: Path, clone: Path) -> None:
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    repro = run(["dvc", "repro"], clone).stdout
    assert "Running stage" not in repro
    assert "Data and pipelines are up to date" in repro
    for path in PULLED:
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    photos = sorted(p.relative_to(project) for p in (project / "data/raw").rglob("*.jpg"))
    assert photos
    assert sorted(p.relative_to(clone) for p in (clone / "data/raw").rglob("*.jpg")) == photos
    for photo in photos:
        assert (clone / photo).read_bytes() == (project / photo).read_bytes(), photo


def test_push_and_pull_through_a_local_directory_remote(project, tmp_path):
    store = tmp_path / "store"
    add_remote(project, "local", str(store))
    push(project, "local")
    objects = store / "files/md5"
    assert {str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()} == \
        expected_objects(project)
    assert "Everything is up to date" in push(project, "local")

    clone = clone_and_pull(project, tmp_path / "clone", "local")
    assert_restored(project, clone)


def test_push_and_pull_through_s3(project, s3, tmp_path):
    endpoint, client = s3
    add_remote(project, "s3", f"s3://{BUCKET}/geo-locate-ml", endpointurl=endpoint)
    config = (project / ".dvc/config").read_text()
    assert "testing" not in config and endpoint in config

    push(project, "s3")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="geo-locate-ml/") for o in page.get("Contents", [])]
    assert keys and all(k.startswith("geo-locate-ml/files/md5/") for k in keys)
    assert {k.removeprefix("geo-locate-ml/files/md5/") for k in keys} == \
        expected_objects(project)
    assert "Everything is up to date" in push(project, "s3")

    clone = clone_and_pull(project, tmp_path / "clone", "s3")
    assert_restored(project, clone)
