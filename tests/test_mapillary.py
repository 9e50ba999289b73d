"""The Mapillary source against a real HTTP server on 127.0.0.1 that speaks the Graph API v4 and
injects the failures of a real network (tests/mapillary_server.py)."""

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, fetch_run, params_with, tiny_params
from mapillary_server import Faults, MapillaryServer, make_world
from PIL import Image

from geoloc.geo import haversine_km
from geoloc.sources import mapillary
from geoloc.sources.run import DiskBudgetError

TOKEN = "MLY|4242|fake-test-secret-6b1f"
# One batch of five cities, with small circles to keep the test short.
CITIES = pd.DataFrame({
    "city": ["Annecy", "Vannes", "Colmar", "Arles", "Albi"],
    "lat": [45.8992, 47.6582, 48.0794, 43.6768, 43.9289],
    "lon": [6.1294, -2.7608, 7.3585, 4.6303, 2.1464],
    "radius_km": [0.9, 0.7, 0.6, 0.5, 0.5], "batch": "batch01",
})
# Every failure the reference lists, often enough that each one happens in a small world.
ALL_FAULTS = Faults(seed=3, p_429=0.05, retry_after_s=1, p_5xx=0.1, p_timeout=0.08,
                    p_reset=0.08, p_slow=0.03, slow_s=1.5, p_truncated=0.12, p_expired=0.2,
                    dense_rows=60)


IMAGES = make_world(CITIES, seed=1, sequences_per_city=5, frames=(3, 12), dense_spot=60)


def expected_ids(images, cities=CITIES) -> set[str]:
    """What a complete fetch must return: every non-panorama image inside a city's circle."""
    return {im.id for im in images if not im.is_pano and any(
        haversine_km(*(im.computed or (im.lon, im.lat))[::-1], c.lat, c.lon) <= c.radius_km
        for c in cities.itertuples())}


def mapillary_cfg(server: MapillaryServer, **changes):
    return tiny_params(fetch={"source": "mapillary", "mapillary": {
        "graph_url": server.url, "search_limit": 50, "concurrency": 8, "timeout_s": 1.0,
        "max_tries": 10, "max_images_per_sequence": 1000, **changes}}).fetch.mapillary


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("MAPILLARY_TOKEN", TOKEN)


@pytest.fixture
def server():
    with MapillaryServer(IMAGES, token=TOKEN, faults=ALL_FAULTS) as server:
        yield server


@pytest.mark.slow
def test_downloads_every_image_through_every_fault(server, token, tmp_path):
    run = fetch_run(tmp_path / "batch01")
    manifest = mapillary.fetch(CITIES, mapillary_cfg(server), run)

    assert set(manifest["image_id"]) == expected_ids(IMAGES)
    assert manifest["image_id"].is_unique
    for row in manifest.itertuples():
        body = (run.out_dir / row.path).read_bytes()
        assert body == server.jpeg_bytes(row.image_id, 1024)
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            assert image.size == (row.width, row.height)
    # Each failure kind was met and survived.
    for kind in ("http_429", "http_500", "query_timeout", "connection", "timeout", "truncated",
                 "expired_link", "too_much_data"):
        assert run.counts[kind] > 0, kind
    assert run.counts["retries"] > 0
    by_id = {im.id: im for im in IMAGES}
    for row in manifest.itertuples():
        image = by_id[row.image_id]
        assert (row.lon, row.lat) == (image.computed or (image.lon, image.lat))
        assert (row.sequence_id, row.creator, row.captured_at) == (
            image.sequence, image.creator, image.captured_at)
    credits = pd.read_csv(run.out_dir / mapillary.ATTRIBUTION_NAME, dtype=str)
    assert credits["image_id"].tolist() == manifest["image_id"].tolist()
    assert set(credits["licence"]) == {"CC BY-SA 4.0"}
    assert credits["url"][0] == f"https://www.mapillary.com/app/?pKey={credits['image_id'][0]}"
    searches = [q for path, q in server.requests if path == "/images"]
    for query in searches:
        west, south, east, north = map(float, query["bbox"].split(","))
        assert 0 < east - west <= 0.01 + 1e-9 and 0 < north - south <= 0.01 + 1e-9
    # The dense spot (more than `dense_rows`, and than `limit`) was split into smaller boxes.
    assert min(float(q["bbox"].split(",")[2]) - float(q["bbox"].split(",")[0])
               for q in searches) < 0.005


def test_a_second_run_reuses_answers_and_images(token, tmp_path):
    store = tmp_path / "downloads"
    server = MapillaryServer(IMAGES, token=TOKEN).start()
    first = mapillary.fetch(CITIES, mapillary_cfg(server),
                            fetch_run(tmp_path / "a", store_dir=store))
    requests_before, downloads_before = len(server.requests), dict(server.downloads)
    second = mapillary.fetch(CITIES, mapillary_cfg(server),
                             fetch_run(tmp_path / "b", store_dir=store))
    server.stop()
    pd.testing.assert_frame_equal(first, second)
    assert len(server.requests) == requests_before and dict(server.downloads) == downloads_before


@pytest.mark.slow
def test_coverage_tiles_find_what_searches_find(token, tmp_path, caplog):
    """Listing by z14 vector tiles, then one lookup per image, gives the same batch; the token,
    which travels in the tile URLs, stays out of logs and files."""
    caplog.set_level(logging.DEBUG)
    with MapillaryServer(IMAGES, token=TOKEN) as server:
        searched = mapillary.fetch(CITIES, mapillary_cfg(server),
                                   fetch_run(tmp_path / "searched"))
    with MapillaryServer(IMAGES, token=TOKEN, faults=ALL_FAULTS) as server:
        run = fetch_run(tmp_path / "tiled", store_dir=tmp_path / "tiled_downloads")
        tiled = mapillary.fetch(CITIES, mapillary_cfg(server, tiles_url=server.url,
                                                      coverage="tiles"), run)
        tile_requests = [q for path, q in server.requests if path.startswith("/maps/vtp/")]
    pd.testing.assert_frame_equal(tiled, searched)
    assert tile_requests and run.counts["retries"] > 0
    assert list((tmp_path / "tiled_downloads").rglob("*.mvt"))
    assert "/maps/vtp/mly1_public/2/14/" in caplog.text
    assert_secret_nowhere(tmp_path, caplog.text)


def test_filters_and_caps(token, tmp_path, caplog):
    with MapillaryServer(IMAGES, token=TOKEN) as server:
        # The stand-in's 64 px panoramas are too small to cut: each named and counted.
        run = fetch_run(tmp_path / "small")
        small = mapillary.fetch(CITIES, mapillary_cfg(server, skip_panoramas=False), run)
        assert run.counts["panorama_too_small"] > 0 and small["view_group"].isna().all()
        assert "is too small to cut into views" in caplog.text
    with MapillaryServer(IMAGES, token=TOKEN, jpeg_long_side=256) as server:
        run = fetch_run(tmp_path / "all", store_dir=tmp_path / "downloads256")
        everything = mapillary.fetch(CITIES, mapillary_cfg(server, skip_panoramas=False), run)
        # Each panorama kept is cut into four views of one place, facing its compass angle
        # and every 90 degrees from it.
        views = everything[everything["view_group"].notna()]
        cut = views.groupby("view_group")
        panos = {im.id for im in IMAGES if im.is_pano}
        assert set(cut.groups) and {g.removeprefix("mapillary:") for g in cut.groups} <= panos
        assert (cut.size() == 4).all() and (views["width"] == 64).all()   # 256 px x 90 / 360
        compass = {im.id: im.compass_angle for im in IMAGES}
        for group, rows in cut:
            start = compass[group.removeprefix("mapillary:")]
            assert sorted(rows["compass_angle"]) == sorted((start + 90 * i) % 360
                                                           for i in range(4))
            assert rows["image_id"].str.startswith(group.removeprefix("mapillary:")).all()
        assert set(everything["image_id"]) >= expected_ids(IMAGES)
        panos = set(views["image_id"])

        capped = mapillary.fetch(CITIES, mapillary_cfg(
            server, max_images_per_sequence=2, max_images_per_city=12),
            fetch_run(tmp_path / "capped"))
        assert capped.groupby("sequence_id").size().max() <= 2
        plain = everything[~everything["image_id"].isin(panos)]
        expected = (plain.groupby(["city", "sequence_id"]).size().clip(upper=2)
                    .groupby("city").sum().clip(upper=12))
        assert capped.groupby("city").size().to_dict() == expected.to_dict()
        assert expected.max() == 12

        days = pd.to_datetime(everything["captured_at"], unit="ms").dt.strftime("%Y-%m-%d")
        start, end = sorted(days)[len(days) // 4], sorted(days)[len(days) // 2]
        dated = mapillary.fetch(CITIES, mapillary_cfg(server, start_date=start, end_date=end),
                                fetch_run(tmp_path / "dated"))
        kept = pd.to_datetime(dated["captured_at"], unit="ms").dt.strftime("%Y-%m-%d")
        assert len(dated) and kept.between(start, end).all()
        assert set(dated["image_id"]) == set(
            everything.loc[days.between(start, end).to_numpy(), "image_id"]) - panos


def test_disk_budget_stops_the_download_and_a_larger_one_resumes(token, tmp_path):
    store = tmp_path / "downloads"
    with MapillaryServer(IMAGES, token=TOKEN, jpeg_long_side=256) as server:
        tiny = fetch_run(tmp_path / "b", store_dir=store, max_gb=150_000 / 1024**3)
        with pytest.raises(DiskBudgetError, match=r"fetch.max_disk_gb .* reached"):
            mapillary.fetch(CITIES, mapillary_cfg(server), tiny)
        kept = sum(p.stat().st_size for p in store.rglob("*.jpg"))
        assert 0 < kept <= 150_000
        stored, downloaded = len(list(store.rglob("*.jpg"))), sum(server.downloads.values())
        full = mapillary.fetch(CITIES, mapillary_cfg(server),
                               fetch_run(tmp_path / "b", store_dir=store))
        assert sum(server.downloads.values()) - downloaded == len(full) - stored


# ------------------------------------------------------------------ the stage, as a subprocess

def project(tmp_path: Path, server: MapillaryServer, **mapillary_changes) -> Path:
    """A folder to run stages/fetch.py in: params.yaml for the server and data/cities.csv."""
    raw = params_with(fetch={"source": "mapillary", "mapillary": {
        "graph_url": server.url, "search_limit": 50, "concurrency": 8, "timeout_s": 1.0,
        "max_tries": 10, "max_images_per_sequence": 1000, **mapillary_changes}})
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    CITIES.to_csv(tmp_path / "data/cities.csv", index=False)
    return tmp_path


def stage(repo: Path, token: str | None = TOKEN) -> subprocess.Popen:
    """stages/fetch.py in repo, its output in a log file beside the project: a pipe nobody
    reads while the test waits would fill up and stall the stage."""
    env = {k: v for k, v in os.environ.items() if k != "MAPILLARY_TOKEN"}
    env.update(PYTHONPATH=str(ROOT), GEOLOC_LOG_LEVEL="DEBUG")
    if token is not None:
        env["MAPILLARY_TOKEN"] = token
    log = repo.parent / f"{repo.name}-{len(list(repo.parent.glob(repo.name + '-*.log')))}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "stages/fetch.py"), "--batch", "batch01",
             "--out", "data/raw/batch01", "--metrics", "metrics/fetch/batch01.json"],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def finish(process: subprocess.Popen) -> tuple[int, str]:
    process.wait(timeout=300)
    return process.returncode, process.log.read_text()


def batch_files(repo: Path) -> dict[str, bytes]:
    batch = repo / "data/raw/batch01"
    return {str(p.relative_to(batch)): p.read_bytes() for p in sorted(batch.rglob("*"))
            if p.is_file()}


def assert_secret_nowhere(folder: Path, *texts: str) -> None:
    secret = TOKEN.split("|")[-1]
    assert not any(secret in text for text in texts)
    for path in folder.rglob("*"):
        assert path.is_dir() or secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_killed_twice_then_resumed_equals_an_uninterrupted_run(tmp_path):
    """Also: with DEBUG logs on, the token is in no output and no file of any of these runs."""
    logs = []
    with MapillaryServer(IMAGES, token=TOKEN, faults=ALL_FAULTS) as server:
        whole = project(tmp_path / "whole", server)
        code, log = finish(stage(whole))
        assert code == 0, log
        logs.append(log)
    with MapillaryServer(IMAGES, token=TOKEN, faults=ALL_FAULTS) as server:
        killed = project(tmp_path / "killed", server)
        store = killed / "data/downloads/mapillary/images"
        # Two random moments mid-download, from a seed printed (pytest shows it with a failure)
        # and named in every assertion: KILL_SEED=<seed> replays them.
        seed = int(os.environ.get("KILL_SEED") or random.SystemRandom().randrange(2**32))
        moments = sorted(random.Random(seed).sample(
            range(1, len(expected_ids(IMAGES)) * 4 // 5), 2))
        replay = f"KILL_SEED={seed}: killed after {moments} JPEGs"
        print(replay)
        for stop_after in moments:   # JPEGs in the store when the kill comes
            process = stage(killed)
            while len(list(store.rglob("*.jpg"))) < stop_after and process.poll() is None:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            logs.append(finish(process)[1])
            assert not (killed / "data/raw/batch01").exists()
        # Answers the dead process asked for (a slow one outlives its client) land first.
        time.sleep(ALL_FAULTS.slow_s + 0.5)
        downloaded = dict(server.downloads)
        stored = {p.stem for p in store.rglob("*.jpg")}
        code, log = finish(stage(killed))
        assert code == 0, log
        logs.append(log)
        # Finished images were not downloaded again.
        assert all(server.downloads[i] == downloaded[i] for i in stored), replay
    assert batch_files(killed) == batch_files(whole), replay
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    metrics = json.loads((killed / "metrics/fetch/batch01.json").read_text())
    assert metrics["images"] == len(expected_ids(IMAGES))
    assert metrics["bytes"] == sum(len(b) for k, b in batch_files(whole).items()
                                   if k.startswith("images/"))
    assert metrics["retries"] > 0 and metrics["failures"]["truncated"] > 0
    assert_secret_nowhere(tmp_path, *logs)


def test_a_refused_token_stops_with_one_message(tmp_path):
    with MapillaryServer(IMAGES, token=TOKEN + "-current") as server:
        repo = project(tmp_path / "project", server)
        code, log = finish(stage(repo))
    assert code == 2 and "Traceback" not in log
    (line,) = [ln for ln in log.splitlines() if "ERROR" in ln]
    assert "HTTP 401" in line and "MAPILLARY_TOKEN" in line
    assert not (repo / "data/raw/batch01").exists()
    assert_secret_nowhere(tmp_path, log)


def test_no_token_stops_before_any_request(tmp_path):
    with MapillaryServer(IMAGES, token=TOKEN) as server:
        repo = project(tmp_path / "project", server)
        code, log = finish(stage(repo, token=None))
        assert server.requests == []
    assert code == 2 and "Traceback" not in log
    (line,) = [ln for ln in log.splitlines() if "ERROR" in ln]
    assert "MAPILLARY_TOKEN is not set" in line
    assert not (repo / "data/raw/batch01").exists()
