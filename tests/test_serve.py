"""`geoloc serve`: the real app under uvicorn on 127.0.0.1, over a tiny real ONNX snapshot."""

import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from conftest import ROOT, expected_retrieval, noisy_photo
from PIL import Image

from geoloc.data.cities import load_cities
from geoloc.predictor import RETRIEVAL_INDEX, Predictor
from geoloc.retrieval import RetrievalIndex
from geoloc.serve import create_app, serving
from geoloc.upload import FORM_OVERHEAD

BOUNDARY = "geoloc-test-boundary"


@pytest.fixture(scope="module")
def server(tiny_snapshot):
    with serving(create_app(tiny_snapshot)) as url:
        yield url


def photo(seed: int, fmt: str = "JPEG", size=(160, 120)) -> bytes:
    """A noisy gradient: distinct photos give distinct model inputs."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp * rng.uniform(0.2, 1, 3) + rng.normal(0, 40, (size[1], size[0], 3)),
                     0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def post(url: str, data: bytes, filename: str = "photo.jpg", fields=None, params=None):
    return requests.post(f"{url}/predict", files={"image": (filename, data)}, data=fields,
                         params=params, timeout=60)


def expected(snapshot: Path, data: bytes, top_k: int = 5):
    return Predictor(snapshot).predict([data], top_k)[0]


def assert_refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail


def test_health(server):
    assert requests.get(f"{server}/health", timeout=10).json() == {"status": "ok"}


def test_model_describes_the_snapshot_and_its_metrics(tiny_snapshot, tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in tiny_snapshot.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (snapshot / "eval.json").write_text(json.dumps({"median_km": 1.5}))
    (snapshot / "broken.json").write_text("{not json")
    with serving(create_app(snapshot, max_upload_bytes=1000)) as url:
        about = requests.get(f"{url}/model", timeout=10).json()
    assert about["model"] == json.loads((tiny_snapshot / "model.json").read_text())
    assert about["eval"] == {"median_km": 1.5}
    assert about["cells"] == 6
    assert about["limits"]["max_upload_bytes"] == 1000
    assert "broken" not in about  # an unreadable file is skipped


def test_model_without_metrics(server):
    about = requests.get(f"{server}/model", timeout=10).json()
    assert set(about) == {"model", "cells", "limits", "modes", "default_mode"}
    assert about["modes"] == ["argmax", "topk", "topk_mean", "hierarchical", "sequence",
                              "sequence_online"] and about["default_mode"] == "argmax"
    assert about["limits"] == {"max_upload_bytes": 20_000_000, "max_views": 8,
                               "max_request_bytes": 50_000_000, "max_pixels": 50_000_000,
                               "timeout_s": 30.0}


def test_docs_and_openapi(server):
    docs = requests.get(f"{server}/docs", timeout=10)
    assert docs.status_code == 200 and "openapi.json" in docs.text
    spec = requests.get(f"{server}/openapi.json", timeout=10).json()
    predict = spec["paths"]["/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    image = form["properties"]["image"]
    assert form["required"] == ["image"] and image["items"]["format"] == "binary"
    assert "views of one place" in image["description"]
    assert {"400", "413", "415", "422", "504"} <= set(predict["responses"])
    assert {"/health", "/model", "/map.json"} <= set(spec["paths"])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_prediction_matches_the_predictor(server, tiny_snapshot, fmt):
    data = photo(1, fmt)
    answer = post(server, data, f"photo.{fmt.lower()}").json()
    best = expected(tiny_snapshot, data)
    assert answer["cell"] == best.cell == answer["top"][0]["cell"]
    assert (answer["lat"], answer["lon"]) == (best.lat, best.lon)
    assert (answer["city"], answer["city_km"]) == (best.city, best.city_km) and best.city
    assert answer["confidence"] == pytest.approx(best.confidence, abs=1e-6)
    assert answer["osm_url"] == (f"https://www.openstreetmap.org/?mlat={round(best.lat, 5)}"
                                 f"&mlon={round(best.lon, 5)}#map=15/{round(best.lat, 5)}/"
                                 f"{round(best.lon, 5)}")
    hexagon = answer["top"][0]["boundary"]
    assert len(hexagon) == 6
    assert all(abs(lat - best.lat) < 0.5 and abs(lon - best.lon) < 0.5 for lat, lon in hexagon)


def test_modes_from_the_form_or_the_query_and_retrieval(retrieval_snapshot):
    """The answer names its mode; retrieval answers with the position of the most similar
    training photo of the snapshot's index (here the photo itself); a mode the snapshot does
    not serve is a 422 naming those it does."""
    png = io.BytesIO()
    noisy_photo(5).save(png, "PNG")
    data = png.getvalue()
    index = RetrievalIndex.load(retrieval_snapshot / RETRIEVAL_INDEX)
    with serving(create_app(retrieval_snapshot)) as url:
        about = requests.get(f"{url}/model", timeout=10).json()
        assert about["modes"][-2:] == ["retrieval", "place"] and "hybrid" not in about["modes"]
        default = post(url, data).json()
        by_form = post(url, data, fields={"mode": "retrieval"}).json()
        by_query = post(url, data, params={"mode": "retrieval"}).json()
        topk = post(url, data, params={"mode": "topk"}).json()
        refused = post(url, data, fields={"mode": "hybrid"})
    assert default["mode"] == "argmax" == about["default_mode"]
    assert by_form == by_query and by_form["mode"] == "retrieval"
    assert (by_form["lat"], by_form["lon"]) == (index.lat[5], index.lon[5])
    best = Predictor(retrieval_snapshot).predict([data], 5, "topk")[0]
    assert (topk["mode"], topk["lat"], topk["lon"]) == ("topk", best.lat, best.lon)
    assert_refused(refused, 422, "mode must be one of argmax, topk, topk_mean, hierarchical, "
                   "sequence, sequence_online, retrieval, place", "'hybrid'")


def test_retrieval_answers_with_the_snapshots_search(wide_retrieval_snapshot):
    """A snapshot evaluated with neighbours 3 within the 2 likeliest cells answers so."""
    photos = []
    for seed in range(20, 28):
        png = io.BytesIO()
        noisy_photo(seed).save(png, "PNG")
        photos.append(png.getvalue())
    with serving(create_app(wide_retrieval_snapshot)) as url:
        answers = [post(url, data, fields={"mode": "retrieval"}).json() for data in photos]
    assert [(a["lat"], a["lon"]) for a in answers] == expected_retrieval(
        wide_retrieval_snapshot, photos, 3, 2)


def test_the_views_of_one_place_in_one_request(retrieval_snapshot, tiny_snapshot):
    """Several files in one request are the views of one place: the predictor's place answer,
    naming the mode and the views. Over the file count or the request's bytes: 413 naming the
    limit; a bad view is named by its number; another mode, or a snapshot without the index:
    422."""
    views = []
    for seed in range(4, 8):
        png = io.BytesIO()
        noisy_photo(seed).save(png, "PNG")
        views.append(png.getvalue())

    def send(url, photos, **options):
        files = [("image", (f"view{i}.png", data)) for i, data in enumerate(photos)]
        return requests.post(f"{url}/predict", files=files, timeout=60, **options)

    place = Predictor(retrieval_snapshot).predict_place(views)
    request_limit = sum(map(len, views)) - 1
    with serving(create_app(retrieval_snapshot, max_views=4, max_upload_bytes=request_limit,
                            max_request_bytes=request_limit)) as url:
        too_much = send(url, views)
    assert_refused(too_much, 413, f"the limit is {request_limit / 1e6:g} MB ({request_limit} "
                                  f"bytes) per request")
    with serving(create_app(retrieval_snapshot, max_views=4)) as url:
        answer = send(url, views).json()
        too_many = send(url, views + views[:1])
        broken = send(url, views[:2] + [b"not a photo"])
        other_mode = send(url, views, data={"mode": "argmax"})
    assert (answer["mode"], answer["views"], answer["note"]) == ("place", 4, None)
    assert (answer["lat"], answer["lon"]) == (place.lat, place.lon)
    assert [c["cell"] for c in answer["top"]] == [c["cell"] for c in place.top]
    assert_refused(too_many, 413, "too many files: the limit is 4 photos per request")
    assert_refused(broken, 415, "photo 3 of 3: not an image")
    assert_refused(other_mode, 422, "views of one place (mode place), not in mode 'argmax'")
    with serving(create_app(tiny_snapshot)) as url:
        assert_refused(send(url, views[:2]), 422, "does not serve the place mode")


def test_top_k_from_the_query_or_the_form(server, tiny_snapshot):
    data = photo(2)
    best = expected(tiny_snapshot, data, top_k=6)
    assert len(post(server, data).json()["top"]) == 5  # the default
    assert [c["cell"] for c in post(server, data, params={"top_k": 2}).json()["top"]] == \
        [c["cell"] for c in best.top[:2]]
    assert len(post(server, data, fields={"top_k": "3"}).json()["top"]) == 3
    assert len(post(server, data, params={"top_k": 50}).json()["top"]) == 6  # every cell


@pytest.mark.parametrize("where, value", [("query", 0), ("query", 51), ("query", "x"),
                                          ("form", "0"), ("form", "51"), ("form", "x")])
def test_top_k_out_of_range_is_422(server, where, value):
    option = {"params": {"top_k": value}} if where == "query" else {"fields": {"top_k": value}}
    assert_refused(post(server, photo(3), **option), 422, "top_k")


def test_missing_image_field_is_422(server):
    response = requests.post(f"{server}/predict", files={"photo": ("a.jpg", photo(3))},
                             timeout=10)
    assert_refused(response, 422, "missing the file field 'image'")
    response = requests.post(f"{server}/predict", files={"image": (None, "text")}, timeout=10)
    assert_refused(response, 422, "file upload")


def test_not_multipart_is_415(server):
    response = requests.post(f"{server}/predict", data=photo(3),
                             headers={"Content-Type": "image/jpeg"}, timeout=10)
    assert_refused(response, 415, "multipart/form-data")


def test_text_file_named_jpg_is_415(server):
    assert_refused(post(server, b"just some text\n" * 20, "notes.jpg"), 415, "JPEG, PNG or WebP")


def test_other_image_formats_are_415(server):
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, "TIFF")
    assert_refused(post(server, out.getvalue(), "photo.tiff"), 415, "JPEG, PNG or WebP")


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_jpeg_is_400(server, keep):
    data = photo(4, size=(640, 480))
    response = post(server, data[:int(len(data) * keep)])
    assert_refused(response, 400, "truncated")


def test_empty_file_is_400(server):
    assert_refused(post(server, b""), 400, "empty")


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, and almost no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [100_000, 8_000])
def test_decompression_bomb_is_413(server, side):
    # 100000^2 trips Pillow's own guard on opening; 8000^2 passes it but not the server's limit.
    response = post(server, png_header(side, side), "bomb.png")
    assert_refused(response, 413, "too large to decode", "50000000")


def test_declared_length_over_the_limit_is_413_before_the_body_is_sent(server):
    """With `Expect: 100-continue` the client waits: the server answers from the headers."""
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(60_000_000))
    connection.putheader("Expect", "100-continue")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "50 MB (50000000 bytes) per request" in json.loads(response.read())["detail"]
    connection.close()


def chunked_upload(url: str, body: bytes, chunk: int = 16 * 1024) -> tuple[int, dict]:
    """POST `body` without Content-Length (chunked), so the server can only count bytes."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    try:
        for start in range(0, len(body), chunk):
            piece = body[start:start + chunk]
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end of the body: read its answer
    response = connection.getresponse()
    answer = (response.status, json.loads(response.read()))
    connection.close()
    return answer


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


def test_streamed_upload_over_the_limit_is_413(tiny_snapshot):
    limit = 100_000
    fits = photo(5, "PNG", size=(180, 180))
    assert 0.5 * limit < len(fits) < limit
    too_big = photo(6, "PNG", size=(300, 300))
    assert len(too_big) > limit + FORM_OVERHEAD
    with serving(create_app(tiny_snapshot, max_upload_bytes=limit)) as url:
        status, answer = chunked_upload(url, multipart(fits))
        assert status == 200 and answer["cell"] == expected(tiny_snapshot, fits).cell
        status, answer = chunked_upload(url, multipart(too_big))
        assert status == 413 and "0.1 MB (100000 bytes)" in answer["detail"]
        # Between the file limit and the body limit, the file part itself is refused.
        status, answer = chunked_upload(url, multipart(too_big[:limit + 10]))
        assert status == 413 and "upload too large" in answer["detail"]


def test_timeout_is_504(tiny_snapshot):
    with serving(create_app(tiny_snapshot, timeout_s=1e-9)) as url:
        # A large photo takes milliseconds to decode: the timeout always fires first.
        assert_refused(post(url, photo(7, size=(2400, 1800))), 504, "longer than")
        # The server survives its abandoned prediction.
        assert requests.get(f"{url}/health", timeout=10).status_code == 200


def test_concurrent_requests_are_all_answered_correctly(server, tiny_snapshot):
    photos = [photo(seed, fmt) for seed in range(4) for fmt in ("JPEG", "PNG")]
    cells = [expected(tiny_snapshot, data).cell for data in photos]

    def one(i: int) -> tuple[int, str]:
        response = post(server, photos[i % len(photos)], params={"top_k": 2})
        return response.status_code, response.json()["cell"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [(200, cells[i % len(photos)]) for i in range(64)]


def test_the_clients_filename_is_never_used(server, tiny_snapshot):
    """No file is created or overwritten where a client's filename points: the system's
    temporary folders themselves (TMPDIR can move tempfile's), the working folders, the
    snapshot's. A file already there keeps its bytes."""
    names = [f"evil-{os.getpid()}.jpg", f"evil-{os.getpid()}.png"]
    places = [Path.cwd(), Path.cwd().parent.parent, tiny_snapshot, tiny_snapshot.parent,
              Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), ROOT]

    def contents() -> dict[Path, bytes | None]:
        return {place / name: (place / name).read_bytes() if (place / name).exists() else None
                for place in places for name in names}

    planted = Path("/tmp") / names[0]
    planted.write_bytes(b"a file the server must leave alone")
    try:
        before = contents()
        for name, fmt in zip(names, ("JPEG", "PNG"), strict=True):
            for path in (f"../../{name}", f"/tmp/{name}", f"/var/tmp/{name}"):
                assert post(server, photo(8, fmt), path).status_code == 200
        assert contents() == before
    finally:
        planted.unlink()


def test_page_and_map_are_served_from_here(server):
    page = requests.get(server, timeout=10)
    assert page.status_code == 200 and "default-src 'self'" in page.headers[
        "Content-Security-Policy"]
    # Nothing from elsewhere: every script, stylesheet and image of the page is local.
    assert all(link.startswith("/static/")
               for link in re.findall(r'(?:src|href)="([^"#]+)"', page.text))
    script = requests.get(f"{server}/static/app.js", timeout=10).text
    assert set(re.findall(r"https?://[^\s\"'`]+", script)) == {"http://www.w3.org/2000/svg"}
    base = requests.get(f"{server}/map.json", timeout=10).json()
    france = [f for f in base["outline"]["features"] if f["properties"].get("focus")]
    assert [f["properties"]["name"] for f in france] == ["France"]
    assert len(base["cities"]) == len(load_cities(ROOT / "data/cities.csv"))


def test_city_asset_matches_the_city_list():
    """geoloc/assets/cities.json is data/cities.csv's markers (tools/cities_asset.py)."""
    cities = load_cities(ROOT / "data/cities.csv")
    asset = json.loads((ROOT / "geoloc/assets/cities.json").read_text())
    assert asset == [{"name": r.city, "lat": r.lat, "lon": r.lon} for r in cities.itertuples()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_serves(tiny_snapshot):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "geoloc.cli", "serve", "--model",
                                str(tiny_snapshot), "--port", str(port), "--max-upload-mb", "1"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        about = None
        deadline = time.monotonic() + 60
        while about is None and time.monotonic() < deadline and process.poll() is None:
            try:
                about = requests.get(f"http://127.0.0.1:{port}/model", timeout=5).json()
            except requests.ConnectionError:
                time.sleep(0.2)
        assert about is not None, process.stdout.read().decode() if process.poll() else "timeout"
        assert about["limits"]["max_upload_bytes"] == 1_000_000
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_command_refuses_a_missing_snapshot(tmp_path):
    result = subprocess.run([sys.executable, "-m", "geoloc.cli", "serve", "--model",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "not found" in result.stderr


def test_predicting_and_serving_do_not_load_the_training_stack():
    code = ("import sys, geoloc.cli, geoloc.predictor, geoloc.serve; "
            "print(sorted(m for m in ('torch', 'torchvision', 'dvc', 'geoloc.train') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_a_panorama_is_cut_into_views_and_answered_as_a_place(retrieval_snapshot, tmp_path):
    """A 360 panorama (2:1) sent alone is cut as the fetch stage cuts it (the local source's
    views, written to files, answered by `geoloc predict --place` give the same answer); its
    views are answered together, unless another mode is asked for. Too small to cut: 400,
    saying so; a photo whose broken XMP block cannot say is left to its shape."""
    from test_local_source import BREST, CITIES, make_run
    from test_panorama import XMP, equirectangular

    from geoloc.params import LocalParams
    from geoloc.sources import local

    folder = tmp_path / "photos"
    folder.mkdir()
    panorama = folder / "pano.jpg"
    equirectangular({(0, 0): (255, 0, 0), (90, 10): (0, 255, 0)}, width=512).save(panorama)
    run = make_run(tmp_path)
    csv = folder / "photos.csv"
    csv.write_text(f"image,lat,lon\npano.jpg,{BREST[0]},{BREST[1]}\n")
    fetched = local.fetch(CITIES, LocalParams(folder=str(folder), csv=str(csv)), run)
    assert len(fetched) == 4
    by_views = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "predict", "--model", str(retrieval_snapshot),
         "--place", "--json", *(str(run.out_dir / path) for path in fetched["path"])],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert by_views.returncode == 0, by_views.stderr
    expected_answer = json.loads(by_views.stdout)
    small, flat = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (200, 100)).save(small, "JPEG")
    Image.new("RGB", (160, 120)).save(flat, "JPEG", xmp=XMP.format(body="/>").encode()[:-20])
    with serving(create_app(retrieval_snapshot)) as url:
        answer = post(url, panorama.read_bytes()).json()
        whole = post(url, panorama.read_bytes(), params={"mode": "argmax"}).json()
        too_small = post(url, small.getvalue())
        broken_xmp = post(url, flat.getvalue())
    assert (answer["mode"], answer["views"]) == ("place", 4)
    assert (answer["lat"], answer["lon"]) == (expected_answer["lat"], expected_answer["lon"])
    assert answer["confidence"] == pytest.approx(expected_answer["confidence"], abs=1e-9)
    assert (whole["mode"], whole["views"]) == ("argmax", 1)
    assert_refused(too_small, 400, "a 360 panorama that cannot be cut into views",
                   "200 x 100 px is too small")
    assert broken_xmp.status_code == 200 and broken_xmp.json()["views"] == 1
