"""The fake Mapillary server itself: world, protocol and faults, over real HTTP."""

import io
import math
import struct
import time
from collections import defaultdict
from datetime import UTC, datetime
from http.client import HTTPConnection

import pandas as pd
import pytest
import requests
from mapillary_server import (
    FakeImage,
    Faults,
    MapillaryServer,
    make_world,
    tile_bounds,
    tile_of,
)
from PIL import Image

TOKEN = "MLY|1234|fake-secret"
AUTH = {"Authorization": f"OAuth {TOKEN}"}
CITIES = [("Paris", 48.8566, 2.3522, 2.0), ("Tokyo", 35.6812, 139.7671, 1.0)]
BOX = "2.0,48.0,2.01,48.01"
TOO_MUCH = "Please reduce the amount of data you're asking for, then retry your request"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def image(id: str, lon: float = 2.005, lat: float = 48.005, **fields) -> FakeImage:
    """A hand-placed image; the defaults sit in the middle of BOX."""
    values = dict(computed=(lon, lat), captured_at=ms("2020-03-01T12:00:00"),
                  sequence="A" * 22, compass_angle=90.0, creator="alice", creator_id="7",
                  is_pano=False, camera_type="perspective")
    return FakeImage(id=id, lon=lon, lat=lat, **{**values, **fields})


def metres(lat0: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance between two (lon, lat) points a few km apart."""
    east = (a[0] - b[0]) * 111_320 * math.cos(math.radians(lat0))
    return math.hypot(east, (a[1] - b[1]) * 111_320)


@pytest.fixture
def serve():
    """Start servers for a test and stop them after it."""
    servers = []

    def start(images, **kwargs) -> MapillaryServer:
        servers.append(MapillaryServer(images, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False   # a proxy from the environment must not see 127.0.0.1
        yield session


def graph(http, server, path, headers=AUTH, **params) -> requests.Response:
    return http.get(server.url + path, params=params, headers=headers, timeout=5)


def search(http, server, bbox=BOX, **params) -> requests.Response:
    return graph(http, server, "/images", bbox=bbox, **params)


def error_code(response: requests.Response) -> int:
    return response.json()["error"]["code"]


# -- the world ---------------------------------------------------------------------------------

def test_world_is_deterministic():
    world = make_world(CITIES, seed=7)
    assert world == make_world(CITIES, seed=7)
    assert world != make_world(CITIES, seed=8)
    frame = pd.DataFrame(CITIES, columns=["city", "lat", "lon", "radius_km"])
    assert make_world(frame, seed=7) == world


def test_world_shape():
    world = make_world(CITIES, seed=3, sequences_per_city=20, outside=5)
    ids = [im.id for im in world]
    assert len(set(ids)) == len(ids) and all(i.isdigit() and len(i) == 16 for i in ids)
    assert 0.1 < sum(im.computed is None for im in world) / len(world) < 0.3

    sequences = defaultdict(list)
    for im in world:
        sequences[im.sequence].append(im)
    pano_sequences = 0
    for seq_id, frames in sequences.items():
        assert len(seq_id) == 22 and seq_id.isalnum() and seq_id.isascii()
        assert len({(im.creator, im.is_pano, im.camera_type) for im in frames}) == 1
        assert (frames[0].camera_type == "spherical") == frames[0].is_pano
        pano_sequences += frames[0].is_pano
        days = {datetime.fromtimestamp(im.captured_at / 1000, UTC).date() for im in frames}
        assert len(days) == 1 and 2015 <= days.pop().year <= 2025
        for a, b in zip(frames, frames[1:], strict=False):
            assert 1000 <= b.captured_at - a.captured_at <= 5000
            assert 5 * 0.99 <= metres(a.lat, (a.lon, a.lat), (b.lon, b.lat)) <= 30 * 1.01
    assert 0 < pano_sequences < len(sequences) / 2

    for name, lat, lon, radius_km in CITIES:
        mine = [im for im in world if im.creator.startswith(name.lower())]
        assert 2 <= len({im.creator for im in mine}) <= 4
        distances = [metres(lat, (lon, lat), (im.lon, im.lat)) / 1000 for im in mine]
        assert sum(d > 1.2 * radius_km for d in distances) == 5
        assert all(d <= radius_km or d > 1.2 * radius_km for d in distances)
        for im in mine:
            if im.computed is not None:
                assert 0 < metres(lat, im.computed, (im.lon, im.lat)) < 15


def test_world_dense_spot():
    name, lat, lon, radius_km = CITIES[0]
    world = make_world([CITIES[0]], seed=1, dense_spot=300, frames=(3, 12))
    sizes = defaultdict(int)
    for im in world:
        sizes[im.sequence] += 1
    dense = [im for im in world if sizes[im.sequence] > 12]   # longer than any regular walk
    assert len(dense) == 300
    lons, lats = [im.lon for im in dense], [im.lat for im in dense]
    assert metres(lat, (min(lons), lat), (max(lons), lat)) <= 151
    assert metres(lat, (lon, min(lats)), (lon, max(lats))) <= 151
    assert metres(lat, (lon, lat), (lons[0], lats[0])) < 400


# -- authentication ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "OAuth MLY|1234|wrong"},
                                     {"Authorization": TOKEN},
                                     {"Authorization": f"Bearer {TOKEN}"}])
def test_bad_token_answers_401(serve, http, headers):
    server = serve([image("1")])
    response = search(http, server, headers=headers)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == 190 and error["type"] == "OAuthException"
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert error["fbtrace_id"]


def test_no_answer_echoes_the_token(serve, http):
    server = serve([image("1")])
    thumb = search(http, server, fields="thumb_256_url").json()["data"][0]["thumb_256_url"]
    answers = [search(http, server, headers={"Authorization": "OAuth " + TOKEN + "x"}),
               search(http, server, bbox="bad"), search(http, server, fields="nope"),
               graph(http, server, "/1", fields="creator"), graph(http, server, "/2"),
               graph(http, server, "/image_ids", sequence_id="A" * 22),
               http.get(thumb, timeout=5), http.get(thumb + "0", timeout=5)]
    for answer in answers:
        assert "fake-secret" not in answer.text and "fake-secret" not in str(answer.headers)


# -- search ------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, status, code", [
    (dict(bbox="35.68,139.76,35.69,139.77"), 400, 100),      # lat,lon order: lat 139 is invalid
    (dict(bbox="2.0,48.0,2.01"), 400, 100),
    (dict(bbox="2.0,48.0,east,48.01"), 400, 100),
    (dict(bbox="2.01,48.0,2.0,48.01"), 400, 100),           # min > max
    (dict(fields="geometry,colour"), 400, 100),
    (dict(limit="2001"), 400, 100),
    (dict(limit="many"), 400, 100),
    (dict(start_captured_at="March 2020"), 400, 100),
    (dict(is_pano="yes"), 400, 100),
    (dict(bbox="2.0,48.0,2.0101,48.01"), 500, 1),           # a side above 0.01 degree
])
def test_bad_searches(serve, http, params, status, code):
    server = serve([image("1")])
    response = search(http, server, **params)
    assert response.status_code == status
    assert error_code(response) == code
    if code == 1:
        assert response.json()["error"]["message"] == TOO_MUCH


def test_search_is_edge_first_with_exclusive_max(serve, http):
    server = serve([image("10", 2.005, 48.005), image("11", 2.0001, 48.005),
                    image("12", 2.005, 48.0098), image("13", 2.0, 48.005),
                    image("14", 2.01, 48.005)])
    assert [r["id"] for r in search(http, server).json()["data"]] == ["13", "11", "12", "10"]
    assert [r["id"] for r in search(http, server, limit=2).json()["data"]] == ["13", "11"]
    east = search(http, server, bbox="2.01,48.0,2.02,48.01").json()["data"]
    assert [r["id"] for r in east] == ["14"]


def test_dense_box_answers_code_1(serve, http):
    server = serve([image("1"), image("2"), image("3", is_pano=True, camera_type="spherical")],
                   faults=Faults(dense_rows=2))
    response = search(http, server)
    assert (response.status_code, error_code(response)) == (500, 1)
    assert len(search(http, server, is_pano="false").json()["data"]) == 2


def test_date_and_pano_filters(serve, http):
    server = serve([image("1", captured_at=ms("2019-12-31T23:59:59")),
                    image("2", captured_at=ms("2020-01-01T00:00:00")),
                    image("3", captured_at=ms("2020-06-01T00:00:00"), is_pano=True,
                          camera_type="spherical"),
                    image("4", captured_at=ms("2020-06-01T00:00:01"))])

    def ids(**params):
        return sorted(r["id"] for r in search(http, server, **params).json()["data"])

    assert ids(start_captured_at="2020-01-01") == ["2", "3", "4"]
    assert ids(start_captured_at="2020-01-01", end_captured_at="2020-06-01T00:00:00Z") == ["2", "3"]
    assert ids(end_captured_at="2020-01-01T01:00:00+01:00") == ["1", "2"]
    assert ids(is_pano="true") == ["3"]
    assert ids(is_pano="false", start_captured_at="2020-01-01") == ["2", "4"]


def test_fields_selection(serve, http):
    server = serve([image("1", computed=None),
                    image("2", lon=2.006, is_pano=True, camera_type="spherical")])
    rows = {r["id"]: r for r in search(http, server, fields="geometry,creator").json()["data"]}
    assert [set(row) for row in rows.values()] == [{"id", "geometry", "creator"}] * 2
    assert rows["1"]["creator"] == {"username": "alice", "id": "7"}
    assert rows["1"]["geometry"] == {"type": "Point", "coordinates": [2.005, 48.005]}
    assert set(search(http, server).json()["data"][0]) == {"id"}

    everything = ("id,geometry,computed_geometry,captured_at,compass_angle,"
                  "computed_compass_angle,sequence,is_pano,camera_type,creator,width,height,"
                  "quality_score,thumb_256_url,thumb_1024_url,thumb_2048_url,thumb_original_url")
    rows = {r["id"]: r for r in search(http, server, fields=everything).json()["data"]}
    assert "computed_geometry" not in rows["1"] and "computed_compass_angle" not in rows["1"]
    assert len(rows["2"]) == 17
    assert (rows["1"]["width"], rows["1"]["height"]) == (4032, 3024)
    assert (rows["2"]["width"], rows["2"]["height"]) == (5760, 2880)

    entity = graph(http, server, "/2", fields=everything).json()
    assert set(entity) == set(rows["2"])
    assert set(graph(http, server, "/2", fields="sequence").json()) == {"id", "sequence"}
    missing = graph(http, server, "/999", fields="sequence")
    assert (missing.status_code, error_code(missing)) == (404, 100)
    assert graph(http, server, "/2", fields="nope").status_code == 400


def test_image_ids_in_capture_order(serve, http):
    times = {"5": 3000, "6": 1000, "7": 2000}
    server = serve([image(i, captured_at=t) for i, t in times.items()]
                   + [image("8", sequence="B" * 22)])
    data = graph(http, server, "/image_ids", sequence_id="A" * 22).json()["data"]
    assert data == [{"id": "6"}, {"id": "7"}, {"id": "5"}]


# -- thumbnails --------------------------------------------------------------------------------

def test_thumbnail_download(serve, http):
    server = serve([image("1"), image("2", is_pano=True, camera_type="spherical")])
    rows = search(http, server, fields="thumb_1024_url,thumb_256_url").json()["data"]
    for row in rows:
        response = http.get(row["thumb_1024_url"], timeout=5)   # the CDN needs no token
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert int(response.headers["Content-Length"]) == len(response.content)
        assert response.content == server.jpeg_bytes(row["id"], 1024)
        picture = Image.open(io.BytesIO(response.content))
        assert picture.format == "JPEG"
        assert picture.size == ((64, 32) if row["id"] == "2" else (64, 48))
    assert server.jpeg_bytes("1", 256) != server.jpeg_bytes("2", 256)

    forged = rows[0]["thumb_256_url"][:-1] + ("0" if rows[0]["thumb_256_url"][-1] != "0" else "1")
    assert http.get(forged, timeout=5).status_code == 403
    assert server.downloads == {"1": 1, "2": 1}


def test_thumbnail_long_side_follows_size(serve, http):
    server = serve([image("1")], jpeg_long_side=512)
    row = search(http, server, fields="thumb_256_url,thumb_1024_url").json()["data"][0]
    sizes = [Image.open(io.BytesIO(http.get(row[f], timeout=5).content)).size
             for f in ("thumb_256_url", "thumb_1024_url")]
    assert sizes == [(256, 192), (512, 384)]


def test_expired_links_and_fresh_entity_links(serve, http):
    server = serve([image(str(i)) for i in range(1, 13)], faults=Faults(p_expired=1.0))
    rows = search(http, server, fields="thumb_256_url").json()["data"]
    statuses = {http.get(row["thumb_256_url"], timeout=5).status_code for row in rows}
    assert statuses == {403, 404, 410}
    fresh = graph(http, server, "/1", fields="thumb_256_url").json()["thumb_256_url"]
    assert http.get(fresh, timeout=5).content == server.jpeg_bytes("1", 256)


def test_short_lived_links_expire(serve, http):
    server = serve([image("1")], link_ttl_s=-5.0)
    url = graph(http, server, "/1", fields="thumb_256_url").json()["thumb_256_url"]
    assert http.get(url, timeout=5).status_code in (403, 404, 410)


# -- faults ------------------------------------------------------------------------------------

def attempt(call, *args, **kwargs):
    """The response of one try, or the requests exception when it got no answer."""
    try:
        return call(*args, **kwargs)
    except requests.RequestException as error:
        return error


def is_status(*statuses, code=None):
    def check(outcome) -> bool:
        return (isinstance(outcome, requests.Response) and outcome.status_code in statuses
                and (code is None or error_code(outcome) == code))
    return check


def is_reset(outcome) -> bool:
    return isinstance(outcome, requests.ConnectionError)


def is_rate_limit(outcome) -> bool:
    return is_status(429, code=4)(outcome) and outcome.headers["Retry-After"] == "3"


@pytest.mark.parametrize("faults, failed", [
    (Faults(p_429=1.0, retry_after_s=3), is_rate_limit),
    (Faults(p_5xx=1.0), is_status(500, 502, 503, code=2)),
    (Faults(p_timeout=1.0), is_status(400, code=-2)),
    (Faults(p_reset=1.0), is_reset),
])
def test_graph_faults_fail_then_succeed(serve, http, faults, failed):
    server = serve([image("1")], faults=faults)
    for path in ("/images", "/1", "/image_ids"):
        params = {"bbox": BOX} if path == "/images" else {"sequence_id": "A" * 22}
        tries = [attempt(graph, http, server, path, **params) for _ in range(3)]
        assert failed(tries[0]) and failed(tries[1])
        assert tries[2].status_code == 200
    assert server.statuses[200] == 3 and sum(server.statuses.values()) == 9
    assert server.statuses["reset"] == (6 if faults.p_reset else 0)


@pytest.mark.parametrize("faults, failed", [
    (Faults(p_429=1.0, retry_after_s=3), is_rate_limit),
    (Faults(p_5xx=1.0), is_status(500, 502, 503, code=2)),
    (Faults(p_reset=1.0), is_reset),
])
def test_thumbnail_faults_fail_then_succeed(serve, http, faults, failed):
    server = serve([image("1")], faults=faults)
    for _ in range(2):   # the search meets its own faults first
        attempt(search, http, server, fields="thumb_256_url")
    url = search(http, server, fields="thumb_256_url").json()["data"][0]["thumb_256_url"]
    tries = [attempt(http.get, url, timeout=5) for _ in range(3)]
    assert failed(tries[0]) and failed(tries[1])
    assert tries[2].content == server.jpeg_bytes("1", 256)
    assert server.downloads == {"1": 1}
    assert server.statuses[200] == 2 and sum(server.statuses.values()) == 6


def test_faults_only_where_they_apply(serve, http):
    timeouts = serve([image("1")], faults=Faults(p_timeout=1.0, max_consecutive=1))
    assert graph(http, timeouts, "/1", fields="thumb_256_url").status_code == 400
    url = graph(http, timeouts, "/1", fields="thumb_256_url").json()["thumb_256_url"]
    assert http.get(url, timeout=5).status_code == 200       # no query timeouts on the CDN

    truncations = serve([image("1")], faults=Faults(p_truncated=1.0))
    response = search(http, truncations, fields="geometry")    # graph answers are whole
    assert response.status_code == 200 and response.json()["data"][0]["id"] == "1"


def test_max_consecutive_bounds_failures(serve, http):
    server = serve([image("1")], faults=Faults(p_5xx=1.0, max_consecutive=4))
    tries = [search(http, server).status_code for _ in range(5)]
    assert all(t >= 500 for t in tries[:4]) and tries[4] == 200


def test_fault_draws_are_deterministic(serve, http):
    def outcomes(seed):
        server = serve([image("1")], faults=Faults(seed=seed, p_5xx=0.4, p_429=0.2,
                                                   max_consecutive=10))
        return [search(http, server, limit=n).status_code for n in range(1, 31)]

    first = outcomes(5)
    assert first == outcomes(5) and first != outcomes(6)
    assert 200 in first and 429 in first and {500, 502, 503} & set(first)


def test_slow_answers_and_latency(serve, http):
    server = serve([image("1")], faults=Faults(p_slow=1.0, slow_s=0.3))
    with pytest.raises(requests.ReadTimeout):
        http.get(server.url + "/images", params={"bbox": BOX}, headers=AUTH, timeout=0.1)
    started = time.monotonic()
    assert search(http, server).status_code == 200
    assert time.monotonic() - started >= 0.3
    # After max_consecutive slow answers to one request the next draws no fault: the server's
    # record says so (no upper time bound, which a loaded machine could break).
    assert search(http, server).status_code == 200
    assert "slow" in server.fired[-2] and server.fired[-1] == frozenset()

    delayed = serve([image("1")], faults=Faults(latency_s=0.2))
    started = time.monotonic()
    assert search(http, delayed, headers={}).status_code == 401
    assert time.monotonic() - started >= 0.2


def test_truncated_thumbnails_are_detectable(serve, http):
    images = [image(str(i)) for i in range(1, 9)]
    server = serve(images, faults=Faults(p_truncated=1.0, max_consecutive=2))
    rows = search(http, server, fields="thumb_256_url").json()["data"]
    assert len(rows) == 8                         # searches are never truncated
    seen = set()
    for row in rows:
        expected = server.jpeg_bytes(row["id"], 256)
        for _ in range(2):
            try:
                response = http.get(row["thumb_256_url"], timeout=5)
            except requests.exceptions.ChunkedEncodingError:
                seen.add("short of Content-Length")
                continue
            assert "Content-Length" not in response.headers
            assert response.content == expected[: len(expected) // 2]
            with pytest.raises(OSError):
                Image.open(io.BytesIO(response.content)).load()
            seen.add("undecodable")
        assert http.get(row["thumb_256_url"], timeout=5).content == expected
    assert seen == {"short of Content-Length", "undecodable"}
    assert server.downloads == {im.id: 1 for im in images}
    assert server.statuses[200] == 1 + 8 * 3


# -- coverage vector tiles --------------------------------------------------------------------
# A decoder written from the MVT 2.1 spec, independent of the server's encoder.

def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def fields(data: bytes):
    """(field number, wire type, value) of a protobuf message: an int or the raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            assert wire == 2
            size, pos = read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        assert pos <= len(data)
        yield number, wire, value


def packed(data: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = read_varint(data, pos)
        values.append(value)
    return values


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def decode_value(data: bytes):
    """A Layer.values entry as (Value field number, Python value)."""
    [(number, wire, raw)] = fields(data)
    decoders = {(1, 2): bytes.decode, (2, 5): lambda b: struct.unpack("<f", b)[0],
                (3, 1): lambda b: struct.unpack("<d", b)[0],
                (4, 0): lambda n: n - 2**64 if n >= 2**63 else n, (5, 0): int,
                (6, 0): unzigzag, (7, 0): bool}
    return number, decoders[number, wire](raw)


def decode_tile(data: bytes) -> dict[str, dict]:
    """Layer name -> {version, extent, features: [{id, type, geometry, properties, kinds}]}."""
    layers = {}
    for number, wire, raw in fields(data):
        assert (number, wire) == (3, 2)
        layer = {"features": []}
        keys, values, features = [], [], []
        for n, _, v in fields(raw):
            if n == 15:
                layer["version"] = v
            elif n == 1:
                layer["name"] = v.decode()
            elif n == 2:
                features.append(dict((fn, fv) for fn, _, fv in fields(v)))
            elif n == 3:
                keys.append(v.decode())
            elif n == 4:
                values.append(decode_value(v))
            elif n == 5:
                layer["extent"] = v
        for feature in features:
            tags = packed(feature[2])
            pairs = [(keys[k], values[v]) for k, v in zip(tags[::2], tags[1::2], strict=True)]
            layer["features"].append({
                "id": feature[1], "type": feature[3], "geometry": packed(feature[4]),
                "properties": {key: value for key, (_, value) in pairs},
                "kinds": {key: kind for key, (kind, _) in pairs}})
        layers[layer["name"]] = layer
    return layers


def tile_url(server, x: int, y: int, z: int = 14) -> str:
    return f"{server.url}/maps/vtp/mly1_public/2/{z}/{x}/{y}"


def fetch_tile(http, server, x, y, z=14, token=TOKEN, **kwargs) -> requests.Response:
    params = {} if token is None else {"access_token": token}
    return http.get(tile_url(server, x, y, z), params=params, timeout=5, **kwargs)


def tile_points(data: bytes, x: int, y: int, z: int = 14) -> dict[str, tuple]:
    """Image id -> ((lon, lat), properties) of a tile's image layer, with its format checked."""
    layer = decode_tile(data)["image"]
    assert (layer["version"], layer["extent"]) == (2, 4096)
    assert [f["id"] for f in layer["features"]] == sorted(f["id"] for f in layer["features"])
    n, points = 2**z, {}
    for feature in layer["features"]:
        assert feature["type"] == 1
        command, px, py = feature["geometry"]
        assert (command & 7, command >> 3) == (1, 1)             # one MoveTo
        px, py = unzigzag(px), unzigzag(py)
        assert 0 <= px < 4096 and 0 <= py < 4096
        lon = (x + px / 4096) / n * 360 - 180
        lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + py / 4096) / n))))
        points[str(feature["id"])] = ((lon, lat), feature["properties"])
    return points


def test_tile_of_is_the_slippy_map_tile():
    for lon, lat in [(2.3522, 48.8566), (139.7671, 35.6812), (-43.2, -22.9), (0.0, 0.0)]:
        n = 2**14
        y = (1 - math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / math.pi) / 2 * n
        assert tile_of(lon, lat) == (int((lon + 180) / 360 * n), int(y))
    assert tile_of(2.3522, 48.8566) == (8299, 5636)
    assert tile_of(0.0, 0.0, z=1) == (1, 1)              # the west and north edges belong
    assert tile_of(-180.0, 89.0, z=3) == (0, 0) and tile_of(180.0, -89.0, z=3) == (7, 7)

    west, south, east, north = tile_bounds(8299, 5636)
    assert west < 2.3522 < east and south < 48.8566 < north
    assert tile_of(west, (south + north) / 2) == (8299, 5636)
    assert tile_of(east, (south + north) / 2) == (8300, 5636)
    assert tile_of((west + east) / 2, south) == (8299, 5637)
    assert 1590 < metres(north, (west, north), (east, north)) < 1620     # z14 at Paris


def test_city_tiles_hold_exactly_the_world_images(serve, http):
    world = make_world([CITIES[0]], seed=4, sequences_per_city=12)
    server = serve(world)
    by_id = {im.id: im for im in world}
    xs, ys = zip(*(tile_of(im.lon, im.lat) for im in world), strict=True)
    seen: dict[str, tuple] = {}
    for x in range(min(xs) - 1, max(xs) + 2):
        for y in range(min(ys) - 1, max(ys) + 2):
            response = fetch_tile(http, server, x, y)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "application/x-protobuf"
            assert response.content == server.coverage_tile(14, x, y)
            mine = {im.id for im in world if tile_of(im.lon, im.lat) == (x, y)}
            points = tile_points(response.content, x, y) if mine else {}
            assert not mine or set(decode_tile(response.content)) == {"image"}
            assert set(points) == mine and not (mine & set(seen))
            seen.update(points)
    assert set(seen) == set(by_id)
    for image_id, (position, properties) in seen.items():
        im = by_id[image_id]
        assert metres(im.lat, position, (im.lon, im.lat)) < 1.0
        assert properties == {"id": int(im.id), "captured_at": im.captured_at,
                              "compass_angle": im.compass_angle, "sequence_id": im.sequence,
                              "is_pano": im.is_pano}


def test_tile_values_and_edges(serve, http):
    x, y = tile_of(2.3522, 48.8566)
    west, south, east, north = tile_bounds(x, y)
    images = [image("30", west, (south + north) / 2, compass_angle=0.0),
              image("4", east - 1e-9, north - 1e-9, is_pano=True, camera_type="spherical"),
              image("12", east, (south + north) / 2)]          # the east neighbour's west edge
    server = serve(images)
    layer = decode_tile(fetch_tile(http, server, x, y).content)["image"]
    assert [f["id"] for f in layer["features"]] == [4, 30]
    four, thirty = layer["features"]
    assert four["kinds"] == {"id": 4, "captured_at": 4, "compass_angle": 3, "sequence_id": 1,
                             "is_pano": 7}               # int64, int64, double, string, bool
    assert four["properties"]["is_pano"] is True and thirty["properties"]["is_pano"] is False
    assert [unzigzag(v) for v in four["geometry"][1:]] == [4095, 0]   # clamped into the tile
    assert unzigzag(thirty["geometry"][1]) == 0
    east_tile = tile_points(fetch_tile(http, server, x + 1, y).content, x + 1, y)
    assert list(east_tile) == ["12"]
    assert fetch_tile(http, server, x, y).content == server.coverage_tile(14, x, y)


def test_empty_and_other_zoom_tiles(serve, http):
    server = serve([image("1", 2.3522, 48.8566)])
    x, y = tile_of(2.3522, 48.8566)
    for z in (13, 15, 0):
        response = fetch_tile(http, server, *tile_of(2.3522, 48.8566, z), z=z)
        assert response.status_code == 200 and "image" not in decode_tile(response.content)
    empty = fetch_tile(http, server, x + 1, y)
    assert (empty.status_code, empty.content) == (200, b"")
    assert fetch_tile(http, server, 2**14, y).status_code == 404
    missing = http.get(server.url + "/maps/vtp/other/1/14/1/1", params={"access_token": TOKEN},
                       timeout=5)
    assert (missing.status_code, error_code(missing)) == (404, 100)


@pytest.mark.parametrize("token, headers", [(None, {}), ("MLY|1234|wrong", {}),
                                            (TOKEN + "x", {}), (None, AUTH)])
def test_tiles_need_the_access_token_parameter(serve, http, token, headers):
    server = serve([image("1", 2.3522, 48.8566)], faults=Faults(p_5xx=1.0))
    response = fetch_tile(http, server, *tile_of(2.3522, 48.8566), token=token, headers=headers)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert error_code(response) == 190 and response.json()["error"]["type"] == "OAuthException"
    assert "fake-secret" not in response.text and "fake-secret" not in str(response.headers)


def test_tile_token_is_never_logged(serve, http):
    server = serve([image("1", 2.3522, 48.8566)])
    x, y = tile_of(2.3522, 48.8566)
    assert fetch_tile(http, server, x, y).status_code == 200
    assert fetch_tile(http, server, x, y, token=TOKEN + "x").status_code == 401
    assert server.requests[0] == (f"/maps/vtp/mly1_public/2/14/{x}/{y}",
                                  {"access_token": "<token>"})
    assert "fake-secret" not in repr(server.requests)


@pytest.mark.parametrize("faults, failed", [
    (Faults(p_429=1.0, retry_after_s=3), is_rate_limit),
    (Faults(p_5xx=1.0), is_status(500, 502, 503, code=2)),
    (Faults(p_reset=1.0), is_reset),
])
def test_tile_faults_fail_then_succeed(serve, http, faults, failed):
    server = serve([image("1", 2.3522, 48.8566)], faults=faults)
    x, y = tile_of(2.3522, 48.8566)
    tries = [attempt(fetch_tile, http, server, x, y) for _ in range(3)]
    assert failed(tries[0]) and failed(tries[1])
    assert list(tile_points(tries[2].content, x, y)) == ["1"]
    # Each tile is its own request key.
    assert failed(attempt(fetch_tile, http, server, x + 1, y))


def test_tile_slowness_and_no_query_timeouts(serve, http):
    server = serve([image("1", 2.3522, 48.8566)],
                   faults=Faults(p_slow=1.0, slow_s=0.2, p_timeout=1.0, max_consecutive=1))
    x, y = tile_of(2.3522, 48.8566)
    started = time.monotonic()
    assert fetch_tile(http, server, x, y).status_code == 200   # code -2 is the graph's own
    assert time.monotonic() - started >= 0.2


# -- plumbing ----------------------------------------------------------------------------------

def test_requests_are_logged(serve, http):
    server = serve([image("1")])
    url = search(http, server, fields="thumb_256_url", limit=5).json()["data"][0]["thumb_256_url"]
    http.get(url, timeout=5)
    graph(http, server, "/1")
    assert [path for path, _ in server.requests] == ["/images", "/thumbs/256/1.jpg", "/1"]
    assert server.requests[0][1] == {"bbox": BOX, "fields": "thumb_256_url", "limit": "5"}
    assert set(server.requests[1][1]) == {"exp", "sig"}


def test_connections_are_kept_alive(serve):
    server = serve([image("1")])
    connection = HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    sockets = set()
    for path in ("/images?bbox=" + BOX, "/nowhere", "/1"):
        connection.request("GET", path, headers=AUTH)
        response = connection.getresponse()
        response.read()
        assert not response.will_close
        sockets.add(connection.sock)
    connection.close()
    assert len(sockets) == 1
    assert server.statuses == {200: 2, 404: 1}
