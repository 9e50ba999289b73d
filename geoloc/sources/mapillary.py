"""Mapillary Graph API v4 source: search each city's area box by box, then resolve and download
every image's thumbnail, verified, into a download store that survives a killed run.

The contract is ../shared/reference/mapillary-api.md. In short:
* a city is the circle (centre, radius_km) of data/cities.csv; its bounding square is cut into
  boxes of at most `box_deg` a side on a global grid (so neighbouring cities share boxes and their
  cached answers); a box that answers `search_limit` rows, or the code-1 "reduce the amount of
  data" error, is split into quadrants, since a bbox search does not page;
* or, with `coverage: tiles`, list the z14 coverage vector tiles over each city instead (the
  pattern for large areas; tiles have a tight daily quota) and look each image up once;
* every search answer, tile and lookup is cached under the store, so a resumed run repeats
  no request;
* one unit of work per image: take the thumbnail link from the search answer, download, verify
  (status, type, length, full JPEG decode), write under a temporary name and rename into place;
  an expired link (403/404/410) is resolved again once through the entity endpoint;
* transient failures (429 honouring Retry-After, 5xx, code -2 timeouts, resets, slow answers,
  truncated bodies) back off exponentially with jitter; 401 stops everything at once;
* the token comes only from $MAPILLARY_TOKEN, goes only into the Authorization header (and the
  query of tile URLs, as that host requires), and is scrubbed from any text raised or logged;
* 360 panoramas are skipped (`skip_panoramas`) or, kept, cut into the views of one place
  (geoloc.panorama), each view a photo `<image id>-<n>` of the batch.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import backoff
import numpy as np
import pandas as pd
import requests
from PIL import Image
from tqdm import tqdm

from geoloc.data.cities import nearest_cities
from geoloc.data.manifest import SCHEMA, conform
from geoloc.errors import GeolocError
from geoloc.geo import haversine_km
from geoloc.io import atomic_path
from geoloc.panorama import PanoramaError, views_of
from geoloc.params import MapillaryParams
from geoloc.sources.run import FetchRun
from geoloc.sources.vector_tile import decode_points, tiles_over

log = logging.getLogger(__name__)

SOURCE = "mapillary"
TOKEN_ENV = "MAPILLARY_TOKEN"
LICENCE = "CC BY-SA 4.0"
ATTRIBUTION_NAME = "attribution.csv"
SEARCH_FIELDS = ("id", "geometry", "computed_geometry", "captured_at", "sequence",
                 "compass_angle", "creator", "is_pano", "camera_type")
MIN_BOX_DEG = 1e-4          # ~11 m: a box this small that is still full is taken as it is
KM_PER_DEG_LAT = 111.195    # great-circle km per degree on the sphere of geoloc.geo
EXPIRED_STATUSES = (403, 404, 410)
TILE_ZOOM = 14              # the only zoom whose tiles hold the `image` layer


class MapillaryError(GeolocError):
    """The Mapillary source cannot go on; the message says why and what to do."""


class _Transient(Exception):
    """A failure worth retrying; `kind` names it in metrics/fetch."""

    def __init__(self, kind: str, retry_after: float = 0.0):
        super().__init__(kind)
        self.kind = kind
        self.retry_after = retry_after


class _TooMuchData(Exception):
    """The code-1 error: this box must be split, retrying it does not help."""


class _ExpiredLink(Exception):
    """A signed thumbnail link is no longer valid."""


class _Gone(Exception):
    """The image no longer exists or cannot be had; it is skipped and counted."""


# ------------------------------------------------------------------------------------ entry point

def fetch(cities: pd.DataFrame, cfg: MapillaryParams, run: FetchRun) -> pd.DataFrame:
    """Search the batch's cities, download their images and return the manifest rows."""
    client = Client(cfg, read_token(), run)
    remove_temporaries(run.store_dir)
    found = (search_cities if cfg.coverage == "search" else tile_cities)(client, cities, cfg)
    rows = select(found, cities, cfg)
    log.info("%s: %d images to download from %d cities", run.batch, len(rows), len(cities))
    run.image_dir.mkdir(parents=True, exist_ok=True)
    circles = {c.city: (c.lat, c.lon, c.radius_km) for c in cities.itertuples()}
    done = parallel(lambda row: download(client, row, run, circles), rows, cfg.concurrency,
                    desc=f"{run.batch} download")
    kept = [row for row in done if row is not None]
    write_attribution(kept, run.out_dir / ATTRIBUTION_NAME)
    return conform(pd.DataFrame([view for row in kept for view in manifest_rows(row, run.batch)],
                                columns=list(SCHEMA)))


def read_token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MapillaryError(
            f"fetch.source is mapillary but {TOKEN_ENV} is not set: create a client token at "
            f"https://www.mapillary.com/dashboard/developers and run "
            f"`export {TOKEN_ENV}='MLY|...'` (it is read from the environment only, never from "
            f"params.yaml)")
    return token


def remove_temporaries(store: Path) -> None:
    """Drop half-written files a killed run left (DVC runs one stage of a workspace at a time)."""
    for stale in store.rglob(".*.tmp") if store.exists() else []:
        stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- HTTP client

class Client:
    """Graph API and tile requests: a rate limit, retries, and the token only where it is due."""

    def __init__(self, cfg: MapillaryParams, token: str, run: FetchRun):
        self.cfg = cfg
        self.run = run
        self.base = cfg.graph_url.rstrip("/")
        self.tiles_base = cfg.tiles_url.rstrip("/")
        self.thumb_field = f"thumb_{cfg.thumbnail}_url"
        self._token = token
        # Tile URLs carry the token, URL-encoded, and urllib3 logs request URLs at DEBUG.
        _SCRUBBER.tokens.update({token, urllib.parse.quote(token, safe=""),
                                 urllib.parse.quote_plus(token)})
        logging.getLogger("urllib3.connectionpool").addFilter(_SCRUBBER)  # once: a set
        self._limiter = RateLimiter(cfg.requests_per_second)
        self._local = threading.local()
        self._retry = backoff.on_exception(
            backoff.expo, _Transient, max_tries=cfg.max_tries, max_time=cfg.max_retry_s,
            jitter=backoff.full_jitter, on_backoff=self._on_backoff, on_giveup=self._on_giveup,
            logger=None)

    def graph(self, path: str, params: dict) -> dict:
        """GET a Graph API path and return its JSON, retrying transient failures."""
        return self._retrying(self._graph_once, f"GET /{path}", path, params)

    def tile(self, z: int, x: int, y: int) -> bytes:
        """GET one coverage vector tile (protobuf bytes; empty for an empty tile)."""
        return self._retrying(self._tile_once, f"the coverage tile {z}/{x}/{y}", z, x, y)

    def thumbnail(self, url: str) -> bytes:
        """GET a signed thumbnail link and return a verified JPEG body."""
        return self._retrying(self._thumbnail_once, "a thumbnail download", url)

    def _retrying(self, once: Callable, what: str, *args):
        try:
            return self._retry(once)(*args)
        except _Transient as exc:
            raise MapillaryError(
                f"{what} still failed ({exc.kind}) after {self.cfg.max_tries} tries or "
                f"{self.cfg.max_retry_s:g} s; finished downloads are kept, run the stage again "
                f"to resume") from None


    def _session(self) -> requests.Session:
        # One session per thread: connection reuse without sharing a Session across threads.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _get(self, url: str, params: dict | None, headers: dict) -> requests.Response:
        try:
            return self._session().get(url, params=params, headers=headers,
                                       timeout=self.cfg.timeout_s)
        except requests.Timeout:
            raise _Transient("timeout") from None
        except requests.exceptions.ChunkedEncodingError:
            raise _Transient("truncated") from None
        except requests.ConnectionError:
            raise _Transient("connection") from None

    def _graph_once(self, path: str, params: dict) -> dict:
        self._limiter.wait()
        response = self._get(f"{self.base}/{path}", params,
                             {"Authorization": f"OAuth {self._token}"})
        error = _error_of(response)
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise _Transient("bad_json") from None
        if response.status_code == 401:
            raise self._refused(error)
        if error.get("code") == 1:
            raise _TooMuchData()
        if response.status_code == 429:
            raise _Transient("http_429", _retry_after(response))
        if response.status_code >= 500:
            raise _Transient(f"http_{response.status_code}")
        if response.status_code == 400 and error.get("code") == -2:
            raise _Transient("query_timeout")
        if response.status_code == 404:
            raise _Gone()
        raise MapillaryError(
            f"Mapillary rejected GET /{path} (HTTP {response.status_code}, code "
            f"{error.get('code')}): {_SCRUBBER.scrub(error.get('message', response.text[:200]))}")

    def _tile_once(self, z: int, x: int, y: int) -> bytes:
        self._limiter.wait()
        response = self._get(f"{self.tiles_base}/maps/vtp/mly1_public/2/{z}/{x}/{y}",
                             {"access_token": self._token}, {})
        if response.status_code == 200:
            return response.content
        if response.status_code == 404:  # no coverage there
            return b""
        if response.status_code == 401:
            raise self._refused(_error_of(response))
        if response.status_code == 429:
            raise _Transient("http_429", _retry_after(response))
        if response.status_code >= 500:
            raise _Transient(f"http_{response.status_code}")
        raise MapillaryError(f"Mapillary refused the coverage tile {z}/{x}/{y} "
                             f"(HTTP {response.status_code})")

    def _refused(self, error: dict) -> MapillaryError:
        return MapillaryError(
            f"Mapillary refused the token (HTTP 401: {_SCRUBBER.scrub(error.get('message', ''))}). "
            f"Set {TOKEN_ENV} to a valid client token (MLY|...) from "
            f"https://www.mapillary.com/dashboard/developers")

    def _thumbnail_once(self, url: str) -> bytes:
        response = self._get(url, None, {})
        if response.status_code in EXPIRED_STATUSES:
            raise _ExpiredLink()
        if response.status_code == 429:
            raise _Transient("http_429", _retry_after(response))
        if response.status_code != 200:
            raise _Transient(f"http_{response.status_code}")
        if not response.headers.get("Content-Type", "").startswith("image/"):
            raise _Transient("not_an_image")
        body = response.content
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) != len(body) or not _is_complete_jpeg(body):
            raise _Transient("truncated")
        return body

    def _on_backoff(self, details: dict) -> None:
        exc = details["exception"]
        self.run.count(exc.kind)
        self.run.count("retries")
        # Retry-After is a floor on the wait; backoff's own jittered wait comes on top.
        time.sleep(exc.retry_after)

    def _on_giveup(self, details: dict) -> None:
        self.run.count(details["exception"].kind)


class _TokenScrubber(logging.Filter):
    """Blanks tokens out of urllib3's DEBUG lines, which print request URLs with their query."""

    def __init__(self):
        super().__init__()
        self.tokens: set[str] = set()

    def scrub(self, text: str) -> str:
        for token in self.tokens:
            text = text.replace(token, "<token>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


_SCRUBBER = _TokenScrubber()


def _error_of(response: requests.Response) -> dict:
    if response.status_code == 200:
        return {}
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", 0)))
    except ValueError:
        return 1.0


class RateLimiter:
    """At most `rate` calls per second across threads: each caller gets the next free slot."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


# ---------------------------------------------------------------------------------------- search

@dataclass(frozen=True)
class Box:
    """A search box in degrees: min_lon, min_lat, max_lon, max_lat."""
    west: float
    south: float
    east: float
    north: float

    @property
    def side(self) -> float:
        return max(self.east - self.west, self.north - self.south)

    def bbox(self) -> str:
        return ",".join(f"{v:.7f}" for v in (self.west, self.south, self.east, self.north))

    def quadrants(self) -> list[Box]:
        mid_lon = round((self.west + self.east) / 2, 7)
        mid_lat = round((self.south + self.north) / 2, 7)
        return [Box(self.west, self.south, mid_lon, mid_lat),
                Box(mid_lon, self.south, self.east, mid_lat),
                Box(self.west, mid_lat, mid_lon, self.north),
                Box(mid_lon, mid_lat, self.east, self.north)]


def city_boxes(lat: float, lon: float, radius_km: float, box_deg: float) -> list[Box]:
    """Boxes of a global box_deg grid that touch the circle around (lat, lon)."""
    dlat, dlon = _half_sides(lat, radius_km)
    boxes = []
    for i in range(math.floor((lon - dlon) / box_deg), math.floor((lon + dlon) / box_deg) + 1):
        for j in range(math.floor((lat - dlat) / box_deg), math.floor((lat + dlat) / box_deg) + 1):
            box = Box(*(round(v, 7) for v in (i * box_deg, j * box_deg,
                                                (i + 1) * box_deg, (j + 1) * box_deg)))
            # The box point nearest to the centre decides whether the box touches the circle.
            near_lat = min(max(lat, box.south), box.north)
            near_lon = min(max(lon, box.west), box.east)
            if haversine_km(lat, lon, near_lat, near_lon) <= radius_km:
                boxes.append(box)
    return boxes


def _half_sides(lat: float, radius_km: float) -> tuple[float, float]:
    """Half the sides, in degrees of latitude and longitude, of the square around a circle."""
    dlat = radius_km / KM_PER_DEG_LAT
    return dlat, dlat / max(math.cos(math.radians(lat)), 1e-6)


def search_cities(client: Client, cities: pd.DataFrame, cfg: MapillaryParams) -> list[dict]:
    """Every image in the boxes over the cities' circles, deduplicated by id."""
    boxes = sorted({box for row in cities.itertuples()
                    for box in city_boxes(row.lat, row.lon, row.radius_km, cfg.box_deg)},
                   key=Box.bbox)
    found: dict[str, dict] = {}
    while boxes:
        answers = parallel(lambda box: search_box(client, box, cfg), boxes, cfg.concurrency,
                           desc=f"{client.run.batch} search ({boxes[0].side:.4f} deg boxes)")
        boxes = [q for box, rows in answers if rows is None for q in box.quadrants()]
        for _, rows in answers:
            for row in rows or []:
                found.setdefault(str(row["id"]), row)
    return [found[key] for key in sorted(found)]


def search_box(client: Client, box: Box, cfg: MapillaryParams) -> tuple[Box, list[dict] | None]:
    """The rows of one box, or None when it must be split; answers are cached under the store."""
    params = {"bbox": box.bbox(), "fields": ",".join(SEARCH_FIELDS + (client.thumb_field,)),
              "limit": str(cfg.search_limit), **_date_filters(cfg)}
    cache = _search_cache_path(client, params)
    if cache.exists():
        answer = json.loads(cache.read_text())
    else:
        try:
            rows = client.graph("images", params).get("data", [])
            full = len(rows) >= cfg.search_limit
        except _TooMuchData:
            rows, full = [], True
            client.run.count("too_much_data")
        if full and box.side / 2 >= MIN_BOX_DEG:
            answer = {"split": True}
        else:
            if full:
                client.run.count("box_truncated")
                log.warning("box %s still answers %d rows at %.5f deg; kept as it is",
                            box.bbox(), len(rows), box.side)
            answer = {"split": False, "data": rows}
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(answer))
    return box, (None if answer["split"] else answer["data"])


def _search_cache_path(client: Client, params: dict) -> Path:
    # The server is part of the key: answers of a local stand-in never mix with the real API's.
    key = json.dumps([client.base, sorted(params.items())])
    return client.run.store_dir / "search" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def tile_cities(client: Client, cities: pd.DataFrame, cfg: MapillaryParams) -> list[dict]:
    """Every image point of the z14 coverage tiles over the cities, deduplicated by id."""
    tiles = set()
    for row in cities.itertuples():
        dlat, dlon = _half_sides(row.lat, row.radius_km)
        tiles.update(tiles_over(row.lon - dlon, row.lat - dlat, row.lon + dlon, row.lat + dlat,
                                TILE_ZOOM))
    answers = parallel(lambda tile: tile_rows(client, *tile), sorted(tiles), cfg.concurrency,
                       desc=f"{client.run.batch} coverage tiles")
    found = {row["id"]: row for rows in answers for row in rows}
    return [found[key] for key in sorted(found)]


def tile_rows(client: Client, x: int, y: int) -> list[dict]:
    """The image points of one tile as search-like rows; the tile is cached under the store."""
    server = hashlib.sha256(client.tiles_base.encode()).hexdigest()[:16]
    cache = client.run.store_dir / "tiles" / server / f"{TILE_ZOOM}_{x}_{y}.mvt"
    if cache.exists():
        data = cache.read_bytes()
    else:
        data = client.tile(TILE_ZOOM, x, y)
        with atomic_path(cache) as tmp:
            tmp.write_bytes(data)
    return [{"id": str(p.properties.get("id", p.id)),
             "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
             "captured_at": p.properties.get("captured_at", 0),
             "compass_angle": p.properties.get("compass_angle"),
             "sequence": p.properties.get("sequence_id"),
             "is_pano": bool(p.properties.get("is_pano", False)), "from_tile": True}
            for p in decode_points(data, "image", TILE_ZOOM, x, y)]


def _date_filters(cfg: MapillaryParams) -> dict:
    filters = {}
    if cfg.start_date:
        filters["start_captured_at"] = f"{cfg.start_date}T00:00:00Z"
    if cfg.end_date:
        filters["end_captured_at"] = f"{cfg.end_date}T23:59:59.999Z"
    return filters


# ------------------------------------------------------------------------------------- selection

def select(found: list[dict], cities: pd.DataFrame, cfg: MapillaryParams) -> list[dict]:
    """Filter the search rows and cap them, deterministically; rows get lat, lon and city."""
    rows = [row for row in map(_position, found) if row is not None]
    if cfg.skip_panoramas:
        rows = [r for r in rows if not _is_panorama(r)]
    rows = [r for r in rows if _in_dates(r, cfg)]
    rows = _assign_cities(rows, cities)
    rows = _cap_sequences(rows, cfg.max_images_per_sequence)
    by_city: dict[str, list[dict]] = {}
    for row in rows:
        by_city.setdefault(row["city"], []).append(row)
    kept = []
    for city_rows in by_city.values():
        # A hash order is a uniform, reproducible sample of the city's images.
        city_rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        kept += city_rows[:cfg.max_images_per_city]
    return sorted(kept, key=lambda r: r["id"])


def _position(row: dict) -> dict | None:
    """The row with lat/lon: the structure-from-motion position when there is one, else GPS."""
    for key in ("computed_geometry", "geometry"):
        coords = (row.get(key) or {}).get("coordinates")
        if coords and len(coords) == 2 and -180 <= coords[0] <= 180 and -90 <= coords[1] <= 90:
            return dict(row, id=str(row["id"]), lon=float(coords[0]), lat=float(coords[1]))
    return None


def _in_dates(row: dict, cfg: MapillaryParams) -> bool:
    day = datetime.datetime.fromtimestamp(int(row.get("captured_at", 0)) / 1000,
                                          tz=datetime.UTC).date().isoformat()
    return (cfg.start_date is None or day >= cfg.start_date) and (
        cfg.end_date is None or day <= cfg.end_date)


def _assign_cities(rows: list[dict], cities: pd.DataFrame) -> list[dict]:
    """Each row goes to the nearest city whose circle holds it; rows outside every circle go."""
    names = nearest_cities([r["lat"] for r in rows], [r["lon"] for r in rows], cities)
    return [dict(r, city=name) for r, name in zip(rows, names, strict=True) if name]


def _cap_sequences(rows: list[dict], cap: int) -> list[dict]:
    """At most `cap` frames per sequence, evenly spaced along the drive."""
    sequences: dict[str, list[dict]] = {}
    for row in rows:
        sequences.setdefault(str(row.get("sequence") or f"image:{row['id']}"), []).append(row)
    kept = []
    for sequence_id, frames in sequences.items():
        frames.sort(key=lambda r: (int(r.get("captured_at", 0)), r["id"]))
        picks = np.unique(np.linspace(0, len(frames) - 1, min(cap, len(frames))).round()
                          .astype(int))
        kept += [dict(frames[i], sequence=sequence_id) for i in picks]
    return kept


# -------------------------------------------------------------------------------------- download

def store_path(run: FetchRun, thumbnail_field: str, image_id: str) -> Path:
    # Sharded by the id's last digits: no folder grows past a few thousand files at 1M images.
    return run.store_dir / "images" / thumbnail_field / image_id[-2:] / f"{image_id}.jpg"


def download(client: Client, row: dict, run: FetchRun,
             circles: dict[str, tuple[float, float, float]]) -> dict | None:
    """Put the image's verified JPEG in the store and link it into the batch (a 360 panorama:
    its views, cut as params `panoramas` says); return its row with the JPEG's size (and a
    panorama's `views`), or None when Mapillary no longer serves it."""
    stored = store_path(run, client.thumb_field, row["id"])
    try:
        if row.get("from_tile"):
            row = _complete(client, row)
            lat, lon, radius = circles[row["city"]]
            if haversine_km(row["lat"], row["lon"], lat, lon) > radius:
                return None  # its refined position left the circle its GPS point was in
        if not stored.exists():
            body = _fetch_verified(client, row)
            run.budget.reserve(len(body))
            with atomic_path(stored) as tmp:
                tmp.write_bytes(body)
    except _Gone:
        run.count("gone")
        log.warning("image %s is no longer available; skipped", row["id"])
        return None
    if _is_panorama(row):
        try:
            return dict(row, views=_write_views(stored, row, run))
        except PanoramaError as exc:
            run.count("panorama_too_small")
            log.warning("panorama %s skipped: %s", row["id"], exc)
            return None
    _link(stored, run.image_dir / f"{row['id']}.jpg")
    with Image.open(stored) as image:
        return dict(row, width=image.width, height=image.height)


def _is_panorama(row: dict) -> bool:
    return bool(row.get("is_pano")) or row.get("camera_type") == "spherical"


def _write_views(stored: Path, row: dict, run: FetchRun) -> list[dict]:
    """Cut a stored panorama into its views, write them into the batch, and return each
    view's id, compass heading and size."""
    with Image.open(stored) as image:
        views = views_of(image, row.get("compass_angle"), run.panoramas)
    described = []
    for number, view in enumerate(views):
        image_id = f"{row['id']}-{number}"
        run.budget.reserve(len(view.data))
        with atomic_path(run.image_dir / f"{image_id}.jpg") as tmp:
            tmp.write_bytes(view.data)
        described.append({"id": image_id, "compass_angle": view.heading, "width": view.size,
                          "height": view.size})
    return described


def _complete(client: Client, row: dict) -> dict:
    """A tile point carries no creator or refined position: look the image up (once; cached)."""
    cache = client.run.store_dir / "entities" / row["id"][-2:] / f"{row['id']}.json"
    if cache.exists():
        entity = json.loads(cache.read_text())
    else:
        entity = client.graph(row["id"], {"fields": ",".join(SEARCH_FIELDS
                                                              + (client.thumb_field,))})
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(entity))
    # The city and the sequence caps were decided on the tile's point; keep them.
    completed = _position(entity) or row
    return dict(completed, city=row["city"], sequence=row["sequence"])


def _fetch_verified(client: Client, row: dict) -> bytes:
    """The JPEG through the link the listing gave; once more through a fresh link if expired."""
    try:
        return client.thumbnail(row.get(client.thumb_field) or _resolve(client, row["id"]))
    except _ExpiredLink:
        client.run.count("expired_link")
    try:
        return client.thumbnail(_resolve(client, row["id"]))
    except _ExpiredLink:
        client.run.count("expired_link")
        raise _Gone() from None


def _resolve(client: Client, image_id: str) -> str:
    url = client.graph(image_id, {"fields": client.thumb_field}).get(client.thumb_field)
    if not url:
        raise _Gone()
    return url


def _is_complete_jpeg(body: bytes) -> bool:
    """The body decodes in full as a JPEG (a body cut short fails to load)."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            return image.format == "JPEG"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _link(src: Path, dest: Path) -> None:
    """Hard-link the stored JPEG into the batch (no second copy on disk), else copy it."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(src.read_bytes())


def parallel(fn: Callable, items: Iterable, workers: int, desc: str) -> list:
    """fn over items on a bounded thread pool, results in input order, with a progress bar. The
    first error cancels what has not started and is raised (after running units finish)."""
    items = list(items)
    results = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                               desc=desc, unit="req", leave=False):
                results[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


# ------------------------------------------------------------------------------- manifest, credit

def manifest_rows(row: dict, batch: str) -> list[dict]:
    """The image's manifest row, or a panorama's: one per view, the views one place."""
    creator = row.get("creator") or {}
    common = {"lat": row["lat"], "lon": row["lon"], "captured_at": int(row.get("captured_at", 0)),
              "sequence_id": row["sequence"], "creator": creator.get("username"),
              "source": SOURCE, "city": row["city"], "batch": batch}
    if "views" not in row:
        return [{**common, "image_id": row["id"], "compass_angle": row.get("compass_angle"),
                 "path": f"images/{row['id']}.jpg", "width": row["width"],
                 "height": row["height"]}]
    return [{**common, "image_id": view["id"], "compass_angle": view["compass_angle"],
             "path": f"images/{view['id']}.jpg", "width": view["width"],
             "height": view["height"], "view_group": f"{SOURCE}:{row['id']}"}
            for view in row["views"]]


def write_attribution(rows: list[dict], path: Path) -> None:
    """CC BY-SA 4.0 asks for credit: creator, image and link for every image of the batch."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "creator", "captured_at", "url", "licence"])
        for row in sorted(rows, key=lambda r: r["id"]):
            captured = datetime.datetime.fromtimestamp(int(row.get("captured_at", 0)) / 1000,
                                                       tz=datetime.UTC)
            writer.writerow([row["id"], (row.get("creator") or {}).get("username", ""),
                             captured.strftime("%Y-%m-%dT%H:%M:%SZ"),
                             f"https://www.mapillary.com/app/?pKey={row['id']}", LICENCE])
