"""A fake Mapillary Graph API v4, coverage tiles and thumbnail CDN: a real HTTP server on 127.0.0.1.

It speaks the contract of /work/shared/reference/mapillary-api.md (auth, bbox search, entity,
sequence ids, zoom-14 coverage vector tiles, signed thumbnail links) over a deterministic world
from ``make_world``, and injects deterministic faults (``Faults``) so that retry, split and
verification logic can be tested and benchmarked offline.

One ``url`` serves all three hosts: graph endpoints need the OAuth header, coverage tiles
(``/maps/vtp/mly1_public/2/{z}/{x}/{y}``) the ``access_token`` query parameter, and
``/thumbs/...`` (the CDN) nothing.  Fault draws depend only on (seed, request key, attempt
number), never on timing or thread scheduling, so a run with the same requests meets the same
faults.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import io
import itertools
import json
import math
import re
import secrets
import socket
import string
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------

METRES_PER_DEGREE = 111_320.0
FIRST_IMAGE_ID = 1_000_000_000_000_000       # 16-digit ids, like Mapillary's
FIRST_CREATOR_ID = 100_000_000_000_000
SEQUENCE_ALPHABET = np.array(list(string.ascii_letters + string.digits))
STEP_M = (5.0, 30.0)                         # distance between consecutive frames
FRAME_GAP_MS = (1_000, 5_000)
FIRST_DAY = datetime(2015, 1, 1, tzinfo=UTC)
DAYS = (datetime(2026, 1, 1, tzinfo=UTC) - FIRST_DAY).days
MISSING_COMPUTED = 0.2                       # share of images without computed_geometry
COMPUTED_OFFSET_M = 2.0                      # SfM moves the GPS position by a few metres
FISHEYE_SHARE = 0.2                          # of the non-pano sequences
DENSE_HALF_SIDE_M = 75.0                     # the dense spot is a 150 m square
OUTSIDE_RADII = (1.25, 1.45)                 # "just beyond 1.2x the radius"


@dataclass(frozen=True)
class FakeImage:
    """One image of the fake world, with what the API derives its fields from."""

    id: str
    lon: float
    lat: float
    computed: tuple[float, float] | None     # (lon, lat) of computed_geometry, None when missing
    captured_at: int                         # ms since epoch, UTC
    sequence: str
    compass_angle: float
    creator: str
    creator_id: str
    is_pano: bool
    camera_type: str                         # spherical iff is_pano


@dataclass(frozen=True)
class _City:
    name: str
    lat: float
    lon: float
    radius_m: float

    def lonlat(self, east_m: float, north_m: float) -> tuple[float, float]:
        """Local metres around the centre to (lon, lat); exact enough over a city."""
        lon = self.lon + east_m / (METRES_PER_DEGREE * math.cos(math.radians(self.lat)))
        return float(lon), float(self.lat + north_m / METRES_PER_DEGREE)


def make_world(cities, seed: int = 0, sequences_per_city: int = 6,
               frames: tuple[int, int] = (3, 12), pano_share: float = 0.15,
               dense_spot: int = 0, outside: int = 5) -> list[FakeImage]:
    """A deterministic set of images around each city.

    ``cities``: (name, lat, lon, radius_km) tuples or a DataFrame with those columns.  Per city:
    ``sequences_per_city`` random walks starting within the radius, ``dense_spot`` extra images
    in a 150 m square near the centre, and ``outside`` single images 1.25-1.45 radii away.
    """
    builder = _WorldBuilder(seed, frames, pano_share)
    for city in _read_cities(cities):
        builder.add_city(city, sequences_per_city, dense_spot, outside)
    return builder.images


def _read_cities(cities) -> list[_City]:
    if hasattr(cities, "itertuples"):  # a pandas DataFrame, e.g. data/cities.csv
        cities = cities[["city", "lat", "lon", "radius_km"]].itertuples(index=False, name=None)
    return [_City(str(name), float(lat), float(lon), float(radius_km) * 1000.0)
            for name, lat, lon, radius_km in cities]


class _WorldBuilder:
    """Draws every city from one generator, so the whole world is a function of the seed."""

    def __init__(self, seed: int, frames: tuple[int, int], pano_share: float):
        self.rng = np.random.default_rng(seed)
        self.frames = frames
        self.pano_share = pano_share
        self.image_ids = itertools.count(FIRST_IMAGE_ID)
        self.creator_ids = itertools.count(FIRST_CREATOR_ID)
        self.images: list[FakeImage] = []

    def add_city(self, city: _City, sequences: int, dense_spot: int, outside: int) -> None:
        rng = self.rng
        slug = re.sub(r"\W+", "_", city.name.lower())
        creators = [(f"{slug}_mapper{k}", str(next(self.creator_ids)))
                    for k in range(rng.integers(2, 5))]

        def in_city(x: float, y: float) -> bool:
            return math.hypot(x, y) <= city.radius_m

        for _ in range(sequences):
            start = _polar(city.radius_m * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi))
            count = int(rng.integers(self.frames[0], self.frames[1] + 1))
            self._sequence(city, creators, self._walk(start, count, (0.0, 0.0), in_city))

        if dense_spot:
            self._dense_spot(city, creators, dense_spot)

        for _ in range(outside):
            distance = city.radius_m * rng.uniform(*OUTSIDE_RADII)
            x, y = _polar(distance, rng.uniform(0, 2 * math.pi))
            self._sequence(city, creators, [(x, y, rng.uniform(0, 360))])

    def _dense_spot(self, city: _City, creators, count: int) -> None:
        """``count`` images in a few sequences that stay inside a 150 m square near the centre."""
        rng = self.rng
        offset = min(200.0, 0.2 * city.radius_m)
        cx, cy = rng.uniform(-offset, offset, size=2)

        def in_square(x: float, y: float) -> bool:
            return abs(x - cx) <= DENSE_HALF_SIDE_M and abs(y - cy) <= DENSE_HALF_SIDE_M

        # At most 500 frames (under 42 minutes) a sequence, so that each stays within one day.
        parts = max(min(3, count), math.ceil(count / 500))
        for part in np.array_split(np.arange(count), parts):
            start = np.array((cx, cy)) + rng.uniform(-DENSE_HALF_SIDE_M, DENSE_HALF_SIDE_M, size=2)
            self._sequence(city, creators, self._walk(tuple(start), len(part), (cx, cy), in_square))

    def _walk(self, start, count: int, centre, inside) -> list[tuple[float, float, float]]:
        """(east, north, heading) of ``count`` frames 5-30 m apart.

        A step that would leave the area goes straight towards its centre instead: from inside,
        that lands inside for any convex area holding a 30 m disc around its centre.
        """
        rng = self.rng
        x, y = start
        heading = rng.uniform(0, 360)
        points = [(x, y, heading)]
        while len(points) < count:
            heading = (heading + rng.normal(0, 20)) % 360
            step = rng.uniform(*STEP_M)
            if not inside(*_advance(x, y, heading, step)):
                heading = math.degrees(math.atan2(centre[0] - x, centre[1] - y)) % 360
            x, y = _advance(x, y, heading, step)
            points.append((x, y, heading))
        return points

    def _sequence(self, city: _City, creators, points) -> None:
        rng = self.rng
        sequence = "".join(rng.choice(SEQUENCE_ALPHABET, 22))
        creator, creator_id = creators[rng.integers(len(creators))]
        is_pano = bool(rng.random() < self.pano_share)
        if is_pano:
            camera = "spherical"
        else:
            camera = "fisheye" if rng.random() < FISHEYE_SHARE else "perspective"
        day = FIRST_DAY.timestamp() + 86_400 * int(rng.integers(DAYS))
        captured = int((day + rng.uniform(7, 18) * 3600) * 1000)  # daytime, UTC
        for x, y, heading in points:
            lon, lat = city.lonlat(x, y)
            computed = None
            if rng.random() >= MISSING_COMPUTED:
                computed = city.lonlat(*(np.array((x, y)) + rng.normal(0, COMPUTED_OFFSET_M, 2)))
            self.images.append(FakeImage(
                id=str(next(self.image_ids)), lon=lon, lat=lat, computed=computed,
                captured_at=captured, sequence=sequence,
                compass_angle=_bearing(heading + rng.normal(0, 5)),
                creator=creator, creator_id=creator_id, is_pano=is_pano, camera_type=camera,
            ))
            captured += int(rng.integers(*FRAME_GAP_MS, endpoint=True))


def _polar(distance: float, angle: float) -> tuple[float, float]:
    return distance * math.cos(angle), distance * math.sin(angle)


def _bearing(degrees: float) -> float:
    """A compass angle in [0, 360) with two decimals (rounding can reach 360: wrap again)."""
    return round(float(degrees) % 360, 2) % 360


def _advance(x: float, y: float, heading_deg: float, step: float) -> tuple[float, float]:
    """Move ``step`` metres along a compass heading (0 = north, clockwise)."""
    heading = math.radians(heading_deg)
    return x + step * math.sin(heading), y + step * math.cos(heading)


# ----------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------

@dataclass
class Faults:
    """Injected faults.  Attempt n of a request key (path and sorted query, without exp and sig)
    meets fault kind k when unit(seed, key, n, k) < p_k, and never once n >= max_consecutive:
    every request succeeds when retried often enough."""

    seed: int = 0
    p_429: float = 0.0
    retry_after_s: int = 1
    p_5xx: float = 0.0
    p_timeout: float = 0.0       # HTTP 400 with code -2, transient
    p_reset: float = 0.0         # TCP reset instead of an answer
    p_slow: float = 0.0
    slow_s: float = 1.0
    p_truncated: float = 0.0     # thumbnails: half the body, then the connection closes
    p_expired: float = 0.0       # share of images whose search-answer thumbnail links are expired
    dense_rows: int = 10**9      # a search box matching more images than this answers code 1
    max_consecutive: int = 2     # attempts 0 .. max_consecutive-1 of a request key may fail
    latency_s: float = 0.0       # before every answer

    def probability(self, kind: str) -> float:
        return getattr(self, f"p_{kind}")


# Checked in this order; the first that fires decides the answer.  "slow" only delays.
GRAPH_FAULTS = ("slow", "reset", "429", "5xx", "timeout")
TILE_FAULTS = ("slow", "reset", "429", "5xx")
CDN_FAULTS = ("slow", "reset", "429", "5xx", "truncated")


def _hash(*parts) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _unit(*parts) -> float:
    """A stable pseudo-random number in [0, 1)."""
    return _hash(*parts) / 2**64


@dataclass(frozen=True)
class _Draw:
    """The faults drawn for one arrival of a request key."""
    salt: tuple                  # (seed, key, attempt): the source of every choice below
    fired: frozenset[str]

    def pick(self, kind: str, options: tuple):
        return options[_hash(*self.salt, kind, "pick") % len(options)]


# ----------------------------------------------------------------------------------------------
# Coverage vector tiles: Web Mercator tile math and a hand-written Mapbox Vector Tile encoder
# ----------------------------------------------------------------------------------------------

TILE_ZOOM = 14                       # the only zoom whose tiles hold the "image" layer
TILE_EXTENT = 4096
MAX_TILE_ZOOM = 22
MAX_LAT = math.degrees(math.atan(math.sinh(math.pi)))   # 85.0511...: the Web Mercator square


def _tile_xy(lon: float, lat: float, z: int) -> tuple[float, float]:
    """Fractional slippy-map tile coordinates: (0, 0) is the world's north-west corner."""
    n = 2**z
    lat = min(max(lat, -MAX_LAT), MAX_LAT)
    x = (lon + 180.0) * n / 360.0    # multiply first: tile edges on exact longitudes stay exact
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return x, y


def tile_of(lon: float, lat: float, z: int = TILE_ZOOM) -> tuple[int, int]:
    """The (x, y) of the zoom-``z`` tile holding a point: a tile holds its west and north edges,
    not its east and south ones, so that every point lies in exactly one tile."""
    n = 2**z
    x, y = _tile_xy(lon, lat, z)
    return min(max(math.floor(x), 0), n - 1), min(max(math.floor(y), 0), n - 1)


def tile_bounds(x: int, y: int, z: int = TILE_ZOOM) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of tile (x, y) at zoom ``z``."""
    n = 2**z

    def lat(row: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))

    return x * 360.0 / n - 180.0, lat(y + 1), (x + 1) * 360.0 / n - 180.0, lat(y)


# Protobuf field numbers of vector_tile.proto (MVT spec 2.1):
#   Tile:    layers = 3
#   Layer:   version = 15, name = 1, features = 2, keys = 3, values = 4, extent = 5
#   Feature: id = 1, tags = 2 (packed), type = 3 (POINT = 1), geometry = 4 (packed)
#   Value:   string = 1, float = 2, double = 3, int = 4, uint = 5, sint = 6, bool = 7
VARINT, FIXED64, LENGTH_DELIMITED = 0, 1, 2       # protobuf wire types
POINT, MOVE_TO = 1, 1


def _varint(n: int) -> bytes:
    n &= 2**64 - 1                   # a negative int64 goes out as its two's complement
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    """sint32 to uint32: 0, -1, 1, -2 ... to 0, 1, 2, 3 ..."""
    return (n << 1) ^ (n >> 31)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _uint_field(number: int, value: int) -> bytes:
    return _tag(number, VARINT) + _varint(value)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _tag(number, LENGTH_DELIMITED) + _varint(len(data)) + data


def _packed_field(number: int, values) -> bytes:
    return _bytes_field(number, b"".join(map(_varint, values)))


def _mvt_value(value) -> bytes:
    """A Layer.values entry: bool, int (int64), float (double) or str."""
    if isinstance(value, bool):
        return _uint_field(7, value)
    if isinstance(value, int):
        return _uint_field(4, value)
    if isinstance(value, float):
        return _tag(3, FIXED64) + struct.pack("<d", value)
    return _bytes_field(1, value.encode())


def _mvt_points(layer_name: str, points) -> bytes:
    """A Tile message with one layer of Point features, from (id, x, y, properties) in order."""
    keys: dict[str, int] = {}
    values: dict[tuple, int] = {}    # keyed by (type, value): True and 1 are different values
    features = []
    for feature_id, x, y, properties in points:
        tags = []
        for key, value in properties.items():
            tags += [keys.setdefault(key, len(keys)),
                     values.setdefault((type(value), value), len(values))]
        geometry = (MOVE_TO | 1 << 3, _zigzag(x), _zigzag(y))   # one MoveTo from (0, 0)
        features.append(_bytes_field(2, _uint_field(1, feature_id) + _packed_field(2, tags)
                                     + _uint_field(3, POINT) + _packed_field(4, geometry)))
    layer = b"".join([_uint_field(15, 2), _bytes_field(1, layer_name.encode()), *features,
                      *(_bytes_field(3, key.encode()) for key in keys),
                      *(_bytes_field(4, _mvt_value(value)) for _, value in values),
                      _uint_field(5, TILE_EXTENT)])
    return _bytes_field(3, layer)


def _tile_properties(image: FakeImage) -> dict:
    """What a real tile carries for an image; organization_id is absent, as for most images."""
    return {"id": int(image.id), "captured_at": image.captured_at,
            "compass_angle": float(image.compass_angle), "sequence_id": image.sequence,
            "is_pano": image.is_pano}


# ----------------------------------------------------------------------------------------------
# The protocol
# ----------------------------------------------------------------------------------------------

MAX_LIMIT = 2000
MAX_SIDE_DEG = 0.01 + 1e-9
TOO_MUCH = "Please reduce the amount of data you're asking for, then retry your request"
BAD_TOKEN = "Invalid OAuth access token - Cannot parse access token"
ORIGINAL_SIZES = {"perspective": (4032, 3024), "fisheye": (4000, 3000),
                  "spherical": (5760, 2880)}
THUMB_FIELDS = {"thumb_256_url": 256, "thumb_1024_url": 1024, "thumb_2048_url": 2048,
                "thumb_original_url": 2048}


def _point(lon: float, lat: float) -> dict:
    return {"type": "Point", "coordinates": [lon, lat]}


def _computed_compass(image: FakeImage) -> float | None:
    """SfM corrects the compass by a few degrees, and only where it placed the image."""
    if image.computed is None:
        return None
    return _bearing(image.compass_angle + 10 * (_unit("compass", image.id) - 0.5))


# Field name -> value for an image; None leaves the key out of the answer.
FIELD_VALUES = {
    "id": lambda im: im.id,
    "geometry": lambda im: _point(im.lon, im.lat),
    "computed_geometry": lambda im: im.computed and _point(*im.computed),
    "captured_at": lambda im: im.captured_at,
    "compass_angle": lambda im: im.compass_angle,
    "computed_compass_angle": _computed_compass,
    "sequence": lambda im: im.sequence,
    "is_pano": lambda im: im.is_pano,
    "camera_type": lambda im: im.camera_type,
    "creator": lambda im: {"username": im.creator, "id": im.creator_id},
    "width": lambda im: ORIGINAL_SIZES[im.camera_type][0],
    "height": lambda im: ORIGINAL_SIZES[im.camera_type][1],
    "quality_score": lambda im: round(_unit("quality", im.id), 3),
}
KNOWN_FIELDS = FIELD_VALUES.keys() | THUMB_FIELDS.keys()
ENTITY_PATH = re.compile(r"/(\d+)")
THUMB_PATH = re.compile(r"/thumbs/(\d+)/(\d+)\.jpg")
TILE_PREFIX = "/maps/vtp/"
TILE_PATH = re.compile(r"/maps/vtp/mly1_public/2/(\d+)/(\d+)/(\d+)")


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, 100, message)


def _too_much_data() -> _ApiError:
    # Code 1 comes back as HTTP 500 although retrying the same box never helps.
    return _ApiError(500, 1, TOO_MUCH)


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    thumbnail_of: str | None = None   # image id of a thumbnail body, to count complete downloads
    truncate: str | None = None       # "length": full Content-Length; "close": none, EOF ends it
    reset: bool = False


def _json(status: int, payload: dict, headers: dict | None = None) -> _Answer:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Answer(status, body, headers=headers or {})


def _parse_bbox(text: str | None) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in (text or "").split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(map(math.isfinite, box)):
        raise _bad_request("bbox must be minLon,minLat,maxLon,maxLat")
    min_lon, min_lat, max_lon, max_lat = box
    if min_lon > max_lon or min_lat > max_lat:
        raise _bad_request("bbox minimum exceeds its maximum")
    if not (-90 <= min_lat and max_lat <= 90 and -180 <= min_lon and max_lon <= 180):
        raise _bad_request("bbox out of range: the order is minLon,minLat,maxLon,maxLat")
    return box


def _parse_fields(params: dict) -> list[str]:
    fields = [name.strip() for name in params.get("fields", "").split(",") if name.strip()]
    for name in fields:
        if name not in KNOWN_FIELDS:
            raise _bad_request(f"(#100) Tried accessing nonexisting field ({name}) "
                               "on node type (Image)")
    return fields


def _parse_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise _bad_request("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad_request(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _parse_time_ms(params: dict, name: str) -> int | None:
    """An ISO-8601 date (midnight) or datetime, UTC unless it says otherwise, as ms."""
    if name not in params:
        return None
    try:
        when = datetime.fromisoformat(params[name])
    except ValueError:
        raise _bad_request(f"{name} must be an ISO-8601 date or datetime") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _parse_pano(params: dict) -> bool | None:
    value = params.get("is_pano")
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _bad_request("is_pano must be true or false")
    return value == "true"


def _render_jpeg(image_id: str, long_side: int, is_pano: bool) -> bytes:
    """A small JPEG unique to the image: a background colour and three shapes from its id."""
    rng = np.random.default_rng(_hash("jpeg", image_id))
    width, height = long_side, long_side // 2 if is_pano else long_side * 3 // 4
    picture = Image.new("RGB", (width, height), tuple(rng.integers(0, 256, 3).tolist()))
    draw = ImageDraw.Draw(picture)
    for _ in range(3):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x1, y1), fill=tuple(rng.integers(0, 256, 3).tolist()))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


class MapillaryServer:
    """Graph API and CDN on one ephemeral port of 127.0.0.1; start() or use as a context manager.

    Observations for tests: ``requests`` (path, query params) in arrival order, with any
    ``access_token`` value logged as "<token>"; ``statuses`` (HTTP status, or "reset", -> count)
    and ``downloads`` (image id -> complete thumbnails sent).
    """

    def __init__(self, images: list[FakeImage], token: str = "MLY|1234|fake-secret",
                 faults: Faults | None = None, jpeg_long_side: int = 64,
                 link_ttl_s: float = 600.0):
        self.faults = faults or Faults()
        self.jpeg_long_side = jpeg_long_side
        self.link_ttl_s = link_ttl_s
        self._authorization = f"OAuth {token}".encode()
        self._token = token.encode()
        self._secret = secrets.token_bytes(32)   # signs CDN links; clients cannot forge them
        self._images = list(images)
        self._by_id = {image.id: image for image in self._images}
        self._index_world()

        self.requests: list[tuple[str, dict]] = []
        self.statuses: collections.Counter = collections.Counter()
        self.downloads: collections.Counter = collections.Counter()
        self._attempts: collections.Counter = collections.Counter()
        self.fired: list[frozenset[str]] = []   # the faults drawn for each request, in order
        self._traces = itertools.count()
        self._lock = threading.Lock()
        self._jpegs: dict[tuple[str, int], bytes] = {}
        self._jpeg_lock = threading.Lock()   # separate: encoding must not stall the counters
        self._tiles: dict[tuple[int, int], list[FakeImage]] | None = None   # built on first use
        self._tile_lock = threading.Lock()

        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread: threading.Thread | None = None

    def _index_world(self) -> None:
        """Column arrays for vectorised box searches, and each sequence's ids in capture order."""
        images = self._images
        self._lon = np.array([im.lon for im in images], dtype=float)
        self._lat = np.array([im.lat for im in images], dtype=float)
        self._captured = np.array([im.captured_at for im in images], dtype=np.int64)
        self._pano = np.array([im.is_pano for im in images], dtype=bool)
        self._ids = np.array([im.id for im in images], dtype=str)
        self._sequences: dict[str, list[str]] = collections.defaultdict(list)
        for image in sorted(images, key=lambda im: (im.captured_at, im.id)):
            self._sequences[image.sequence].append(image.id)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> MapillaryServer:
        # A short poll interval keeps stop() fast: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="mapillary-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> MapillaryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- observations -----------------------------------------------------------------------

    def jpeg_bytes(self, image_id: str, size: int) -> bytes:
        """The exact body served for thumbnail ``size`` of a known image (memoised)."""
        key = (image_id, min(size, self.jpeg_long_side))
        with self._jpeg_lock:
            if key not in self._jpegs:
                self._jpegs[key] = _render_jpeg(image_id, key[1], self._by_id[image_id].is_pano)
            return self._jpegs[key]

    def coverage_tile(self, z: int, x: int, y: int) -> bytes:
        """The exact body served for coverage tile z/x/y: at zoom 14, an "image" layer with one
        Point per image in the tile, by id; otherwise, or without images, an empty tile."""
        if z != TILE_ZOOM:
            return b""
        with self._tile_lock:
            if self._tiles is None:
                self._tiles = collections.defaultdict(list)
                for image in sorted(self._images, key=lambda im: int(im.id)):
                    self._tiles[tile_of(image.lon, image.lat)].append(image)
            images = self._tiles.get((x, y), [])
        if not images:
            return b""
        points = []
        for image in images:
            fx, fy = _tile_xy(image.lon, image.lat, z)
            px, py = (min(max(round((f - t) * TILE_EXTENT), 0), TILE_EXTENT - 1)
                      for f, t in ((fx, x), (fy, y)))
            points.append((int(image.id), px, py, _tile_properties(image)))
        return _mvt_points("image", points)

    def _record(self, path: str, params: dict) -> None:
        with self._lock:
            self.requests.append((path, params))

    def _count(self, outcome, image_id: str | None = None) -> None:
        with self._lock:
            self.statuses[outcome] += 1
            if image_id is not None:
                self.downloads[image_id] += 1

    # -- answering --------------------------------------------------------------------------

    def _answer(self, target: str, authorization: str | None) -> _Answer:
        parts = urlsplit(target)
        path, params = parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
        self._record(path, {k: "<token>" if k == "access_token" else v
                            for k, v in params.items()})
        time.sleep(self.faults.latency_s)
        if path.startswith("/thumbs/"):
            return self._cdn(path, params)
        if path.startswith(TILE_PREFIX):
            return self._coverage(path, params)
        return self._graph(path, params, authorization)

    def _graph(self, path: str, params: dict, authorization: str | None) -> _Answer:
        # The token check comes before any fault: a bad token is never transient.
        if not hmac.compare_digest((authorization or "").encode(), self._authorization):
            return self._error(401, 190, BAD_TOKEN)
        injected = self._injected(self._draw(path, params, GRAPH_FAULTS))
        if injected is not None:
            return injected
        try:
            return _json(200, self._route(path, params))
        except _ApiError as error:
            return self._error(error.status, error.code, error.message)

    def _coverage(self, path: str, params: dict) -> _Answer:
        token = params.pop("access_token", "").encode()
        if not hmac.compare_digest(token, self._token):
            return self._error(401, 190, BAD_TOKEN)
        # The fault key is the path and the other parameters: never the token.
        injected = self._injected(self._draw(path, params, TILE_FAULTS))
        if injected is not None:
            return injected
        match = TILE_PATH.fullmatch(path)
        z, x, y = map(int, match.groups()) if match else (MAX_TILE_ZOOM + 1, 0, 0)
        if z > MAX_TILE_ZOOM or x >= 2**z or y >= 2**z:
            return self._error(404, 100, "Not found")
        return _Answer(200, self.coverage_tile(z, x, y), "application/x-protobuf")

    def _route(self, path: str, params: dict) -> dict:
        if path == "/images":
            return self._search(params)
        if path == "/image_ids":
            return self._sequence_ids(params)
        entity = ENTITY_PATH.fullmatch(path)
        if entity:
            return self._entity(entity[1], params)
        raise _ApiError(404, 100, "Unknown path components")

    def _search(self, params: dict) -> dict:
        min_lon, min_lat, max_lon, max_lat = _parse_bbox(params.get("bbox"))
        fields = _parse_fields(params)
        limit = _parse_limit(params.get("limit", str(MAX_LIMIT)))
        start = _parse_time_ms(params, "start_captured_at")
        end = _parse_time_ms(params, "end_captured_at")
        pano = _parse_pano(params)
        if max_lon - min_lon > MAX_SIDE_DEG or max_lat - min_lat > MAX_SIDE_DEG:
            raise _too_much_data()

        # Inclusive min, exclusive max: adjacent boxes never both return an image.
        lon, lat = self._lon, self._lat
        mask = (lon >= min_lon) & (lon < max_lon) & (lat >= min_lat) & (lat < max_lat)
        if start is not None:
            mask &= self._captured >= start
        if end is not None:
            mask &= self._captured <= end
        if pano is not None:
            mask &= self._pano == pano
        rows = np.flatnonzero(mask)
        if len(rows) > self.faults.dense_rows:
            raise _too_much_data()

        # Edge-first like the real API, so a truncated answer is spatially biased.
        edge = np.minimum.reduce([lon[rows] - min_lon, max_lon - lon[rows],
                                  lat[rows] - min_lat, max_lat - lat[rows]])
        rows = rows[np.lexsort((self._ids[rows], edge))][:limit]
        return {"data": [self._row(self._images[i], fields, self._search_expiry(self._images[i]))
                         for i in rows]}

    def _entity(self, image_id: str, params: dict) -> dict:
        fields = _parse_fields(params)
        image = self._by_id.get(image_id)
        if image is None:
            raise _ApiError(404, 100, f"Unsupported get request. Object with ID '{image_id}' "
                                      "does not exist")
        return self._row(image, fields, self._fresh_expiry())

    def _sequence_ids(self, params: dict) -> dict:
        if not params.get("sequence_id"):
            raise _bad_request("sequence_id is required")
        return {"data": [{"id": i} for i in self._sequences.get(params["sequence_id"], [])]}

    def _row(self, image: FakeImage, fields: list[str], expiry: int) -> dict:
        row = {"id": image.id}
        for name in fields:
            if name in THUMB_FIELDS:
                value = self._thumb_url(image.id, THUMB_FIELDS[name], expiry)
            else:
                value = FIELD_VALUES[name](image)
            if value is not None:
                row[name] = value
        return row

    # -- signed CDN links -------------------------------------------------------------------

    def _fresh_expiry(self) -> int:
        return math.ceil(time.time() + self.link_ttl_s)

    def _search_expiry(self, image: FakeImage) -> int:
        """Search answers hand out already-expired links for the p_expired share of images."""
        if _unit(self.faults.seed, "expired", image.id) < self.faults.p_expired:
            return int(time.time()) - 60
        return self._fresh_expiry()

    def _sign(self, size: int, image_id: str, expiry: int) -> str:
        return hmac.new(self._secret, f"{size}/{image_id}/{expiry}".encode(), "sha256").hexdigest()

    def _thumb_url(self, image_id: str, size: int, expiry: int) -> str:
        query = urlencode({"exp": expiry, "sig": self._sign(size, image_id, expiry)})
        return f"{self.url}/thumbs/{size}/{image_id}.jpg?{query}"

    def _cdn(self, path: str, params: dict) -> _Answer:
        match = THUMB_PATH.fullmatch(path)
        if not match:
            return self._error(404, 100, "Not found")
        draw = self._draw(path, params, CDN_FAULTS)
        injected = self._injected(draw)
        if injected is not None:
            return injected
        size, image_id = int(match[1]), match[2]
        status = self._link_status(size, image_id, params)
        if status != 200:
            return self._error(status, 100, "URL signature expired or invalid")
        answer = _Answer(200, self.jpeg_bytes(image_id, size), "image/jpeg",
                         thumbnail_of=image_id)
        if "truncated" in draw.fired:
            answer.truncate = draw.pick("truncated", ("length", "close"))
        return answer

    def _link_status(self, size: int, image_id: str, params: dict) -> int:
        try:
            expiry = int(params.get("exp", ""))
        except ValueError:
            return 403
        if not hmac.compare_digest(params.get("sig", ""), self._sign(size, image_id, expiry)):
            return 403
        if expiry < time.time():
            return (403, 410, 404)[_hash("expired", image_id) % 3]
        return 200

    # -- faults and errors ------------------------------------------------------------------

    def _draw(self, path: str, params: dict, kinds: tuple[str, ...]) -> _Draw:
        """Count this arrival of the request key and draw its faults."""
        # exp and sig change when a client resolves a link again: the key ignores them.
        query = sorted((k, v) for k, v in params.items() if k not in ("exp", "sig"))
        key = f"{path}?{urlencode(query)}"
        with self._lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
        salt = (self.faults.seed, key, attempt)
        fired = frozenset() if attempt >= self.faults.max_consecutive else frozenset(
            kind for kind in kinds if _unit(*salt, kind) < self.faults.probability(kind))
        with self._lock:
            self.fired.append(fired)
        return _Draw(salt, fired)

    def _injected(self, draw: _Draw) -> _Answer | None:
        """The answer a fault gives instead of the real one; None to answer normally."""
        if "slow" in draw.fired:
            time.sleep(self.faults.slow_s)
        if "reset" in draw.fired:
            return _Answer(0, reset=True)
        if "429" in draw.fired:
            return self._error(429, 4, "Application request limit reached",
                               {"Retry-After": str(self.faults.retry_after_s)})
        if "5xx" in draw.fired:
            return self._error(draw.pick("5xx", (500, 502, 503)), 2,
                               "An unexpected error has occurred. Please retry your request later.")
        if "timeout" in draw.fired:
            return self._error(400, -2, "Query timeout, please retry your request")
        return None

    def _error(self, status: int, code: int, message: str, headers: dict | None = None) -> _Answer:
        trace = f"{_hash('trace', next(self._traces)):016x}"[:11]
        return _json(status, {"error": {"message": message, "type": "OAuthException",
                                        "code": code, "fbtrace_id": trace}}, headers)


# ----------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True        # open keep-alive connections must not block stop()
    request_queue_size = 128     # benchmarks open many connections at once
    app: MapillaryServer

    def handle_error(self, request, client_address) -> None:
        # Clients that give up (read timeouts, their own resets) are part of the tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"    # with Content-Length, clients reuse connections
    timeout = 30                     # an idle keep-alive connection frees its thread eventually
    # Headers and body go out in separate writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK (40 ms a request on Linux).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        app = self.server.app
        answer = app._answer(self.path, self.headers.get("Authorization"))
        # Counted before writing: a client may look at the counters as soon as it has the answer.
        if answer.reset:
            app._count("reset")
            self._reset()
            return
        app._count(answer.status, answer.thumbnail_of if answer.truncate is None else None)
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        body = answer.body
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.truncate == "close":
            # No length: the close is the only end-of-body mark, so only a decoder can tell.
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if answer.truncate:
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection: with SO_LINGER on and a zero timeout, close() sends an RST."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()   # the reader holds a reference that would defer the real close
        self.connection.close()
        self.close_connection = True

    def log_message(self, format, *args) -> None:
        """Silent: the default writes every request to stderr."""
