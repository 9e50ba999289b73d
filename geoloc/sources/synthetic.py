"""The embedded offline world: a deterministic synthetic source of street-level photos.

It writes exactly what the Mapillary fetcher writes (JPEGs under ``images/`` and one manifest
row per image), so the whole pipeline runs offline and reproducibly.

Generative model
----------------
* Streets.  Each city is a street grid around its centre (orientation and block sizes of
  80-150 m drawn per city).  Both sides of every street are cut into plots of fixed width; a
  plot's building (height, colour, windows, shutters, shop) or hedge is a hash of
  (seed, city, street, side, plot), so every drive past the same place sees the same houses.
* Appearance at three scales:
  - region, from the city's position (north, south/Mediterranean, Atlantic/Channel coast,
    mountains): facade materials, roofs, sky, vegetation, building height, street width,
    distant mountain ridges;
  - city, from the city-name hash: facade palette (3 of the region's 4 base colours,
    jittered), shutter and sign colours (2 each from shared lists, so cities overlap);
  - neighbourhood: smooth fields over the city, sums of random plane waves with 300-1500 m
    wavelengths, set building height, density, greenery, facade hue and window pattern.
* Drives.  A sequence is a random walk along the streets: 10-26 m steps (5-30 m chords), a
  turn at some intersections, a U-turn near the radius; compass angle = street heading plus
  the camera's yaw and jitter; frames 1-6 s apart from a random daytime start in 2015-2025;
  one creator per sequence among 2-5 per city.  As on Mapillary, coverage is uneven and
  repeated: most drives start near one of a few popular spots of the city, so drives share
  streets; and some drives are uploaded in two parts (two sequences, one creator, no gap),
  the twins a sequence-disjoint split must keep together.
* Camera.  Per sequence: focal length, height, lane, pitch, roll, yaw, exposure, white
  balance, contrast, saturation, vignetting, blur, fixed-pattern noise, sometimes a car
  bonnet, weather and sun; per frame small shifts, exposure jitter and shot noise.  Frames of
  a sequence share this signature: a split that leaks sequences shows inflated scores.
* Rendering: per-pixel ray casting of the street "corridor" (two facade planes and the
  ground) in numpy, then trees and signs drawn with PIL, then the camera effects.
* 360 cameras.  A share of the drives (`panorama_share`) is taken with a 360 camera: each
  frame an equirectangular panorama, every column cast in the corridor of the street
  direction nearest its heading (no trees or signs), then cut into the views of one place as
  every source cuts panoramas (geoloc.panorama, params `panoramas`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import multiprocessing
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from geoloc.data.manifest import SCHEMA, conform
from geoloc.io import atomic_path
from geoloc.panorama import PanoramaError, view_size, views_of
from geoloc.params import PanoramaParams
from geoloc.sources.run import FetchRun

log = logging.getLogger(__name__)

SOURCE = "synthetic"

EARTH_RADIUS_M = 6_371_008.8

# Steps along the street.  A step that turns a corner covers two legs, so the chord between
# frames is at least STEP_M[0] / sqrt(2); with the GPS noise the chord stays within 5-30 m.
STEP_M = (10.0, 26.0)
GPS_NOISE_M = 0.7          # per axis, uniform
TURN_PROB = 0.35           # chance to turn at an intersection the step crosses
START_FRACTION = 0.6       # drives start within this share of the radius
EDGE_FRACTION = 0.95       # a step ending beyond this share of the radius turns back instead
HOTSPOTS = 3               # popular spots per city, within START_FRACTION / 2 of the radius
HOTSPOT_SHARE = 0.6        # chance that a drive starts near a popular spot
HOTSPOT_RADIUS_M = 300.0   # ... within this distance of it
TWIN_SHARE = 0.15          # chance that a drive of 4 frames or more is uploaded in two parts

TIME_START_MS = 1_420_070_400_000   # 2015-01-01T00:00Z
N_DAYS = 4018                       # up to 2025-12-31
DAY_MS = 86_400_000

Z_FAR = 400.0      # m: ray casting stops here (the fog has swallowed everything by then)
TREE_FAR = 150.0   # m: trees and signs beyond are below a pixel

N_FIELDS, N_WAVES = 5, 4                  # neighbourhood fields, plane waves per field
F_HEIGHT, F_DENSITY, F_GREEN, F_HUE, F_WINDOW = range(N_FIELDS)
WAVELENGTH_M = (300.0, 1500.0)

# Hash tags: keep the hashed streams of plots, streets, trees and signs apart.
TAG_STREET, TAG_PLOT, TAG_TREE = 1, 2, 3
# Tags of the numpy generators derived per city.
RNG_CITY, RNG_SEQUENCE, RNG_NOISE, RNG_CAMERA_KIND = 0, 1, 2, 3

DIRS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # +u, +v, -u, -v

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _Style:
    """What a region looks like; cities draw their palette from it."""
    name: str
    sky_top: tuple
    sky_horizon: tuple
    cloudiness: float
    facades: tuple          # 4 base facade colours
    roof: tuple
    roof_m: float           # visible roof band above the cornice
    floors: tuple           # typical floor count range (low, high)
    floor_m: float
    ground_m: float         # ground-floor height (shops)
    half_width: tuple       # facade-to-centre distance range, m
    road: tuple
    sidewalk: tuple
    garden: tuple
    vegetation: tuple
    tree: str               # round, olive or conifer
    tree_share: float
    crown_m: tuple
    window: tuple           # window width share of the pitch, height share of the floor
    shutter_prob: float
    fog_m: float
    mountain: tuple


STYLES = {
    "north": _Style(
        "north", sky_top=(0.45, 0.57, 0.76), sky_horizon=(0.80, 0.83, 0.87), cloudiness=0.6,
        facades=((0.86, 0.81, 0.69), (0.60, 0.32, 0.24), (0.72, 0.70, 0.66), (0.78, 0.71, 0.57)),
        roof=(0.33, 0.36, 0.42), roof_m=2.5, floors=(3, 6), floor_m=3.1, ground_m=3.8,
        half_width=(8.0, 13.0), road=(0.29, 0.29, 0.31), sidewalk=(0.60, 0.59, 0.58),
        garden=(0.30, 0.38, 0.22), vegetation=(0.22, 0.42, 0.18), tree="round",
        tree_share=0.35, crown_m=(2.5, 4.0), window=(0.42, 0.58), shutter_prob=0.2,
        fog_m=350.0, mountain=(0.50, 0.55, 0.62)),
    "south": _Style(
        "south", sky_top=(0.18, 0.43, 0.86), sky_horizon=(0.70, 0.82, 0.95), cloudiness=0.1,
        facades=((0.91, 0.74, 0.48), (0.92, 0.66, 0.54), (0.95, 0.88, 0.68), (0.82, 0.52, 0.42)),
        roof=(0.74, 0.38, 0.22), roof_m=1.0, floors=(2, 4), floor_m=3.0, ground_m=3.4,
        half_width=(5.5, 9.0), road=(0.38, 0.37, 0.35), sidewalk=(0.80, 0.75, 0.66),
        garden=(0.55, 0.50, 0.35), vegetation=(0.36, 0.45, 0.22), tree="olive",
        tree_share=0.3, crown_m=(2.5, 4.5), window=(0.34, 0.50), shutter_prob=0.8,
        fog_m=700.0, mountain=(0.55, 0.58, 0.66)),
    "coast": _Style(
        "coast", sky_top=(0.38, 0.60, 0.86), sky_horizon=(0.86, 0.90, 0.95), cloudiness=0.75,
        facades=((0.94, 0.94, 0.91), (0.66, 0.66, 0.64), (0.86, 0.82, 0.74), (0.58, 0.62, 0.67)),
        roof=(0.24, 0.26, 0.31), roof_m=2.2, floors=(1, 3), floor_m=2.9, ground_m=3.0,
        half_width=(6.0, 10.0), road=(0.33, 0.34, 0.36), sidewalk=(0.68, 0.68, 0.67),
        garden=(0.32, 0.48, 0.25), vegetation=(0.30, 0.50, 0.27), tree="round",
        tree_share=0.2, crown_m=(1.8, 3.0), window=(0.48, 0.45), shutter_prob=0.35,
        fog_m=260.0, mountain=(0.55, 0.60, 0.68)),
    "mountains": _Style(
        "mountains", sky_top=(0.14, 0.34, 0.76), sky_horizon=(0.66, 0.78, 0.92),
        cloudiness=0.35,
        facades=((0.60, 0.58, 0.55), (0.50, 0.35, 0.23), (0.82, 0.78, 0.70), (0.54, 0.49, 0.41)),
        roof=(0.21, 0.21, 0.24), roof_m=2.2, floors=(2, 4), floor_m=2.9, ground_m=3.2,
        half_width=(6.0, 10.0), road=(0.31, 0.31, 0.32), sidewalk=(0.56, 0.56, 0.55),
        garden=(0.25, 0.40, 0.20), vegetation=(0.10, 0.28, 0.14), tree="conifer",
        tree_share=0.25, crown_m=(1.8, 3.0), window=(0.34, 0.42), shutter_prob=0.5,
        fog_m=550.0, mountain=(0.30, 0.36, 0.42)),
}

# Shared across cities, so palettes overlap: each city takes two of each.
SHUTTER_COLOURS = np.array([
    (0.20, 0.45, 0.30), (0.25, 0.40, 0.65), (0.55, 0.20, 0.18), (0.55, 0.58, 0.60),
    (0.92, 0.92, 0.88), (0.62, 0.55, 0.75), (0.20, 0.55, 0.58), (0.85, 0.72, 0.30),
])
ACCENT_COLOURS = np.array([
    (0.80, 0.12, 0.12), (0.10, 0.30, 0.70), (0.95, 0.75, 0.10), (0.15, 0.55, 0.25),
    (0.55, 0.15, 0.50), (0.95, 0.45, 0.10), (0.10, 0.60, 0.70), (0.20, 0.20, 0.22),
    (0.90, 0.90, 0.90), (0.85, 0.35, 0.55),
])


def fetch(cities: pd.DataFrame, cfg, run: FetchRun) -> pd.DataFrame:
    """Render every city of `cities` (the rows of one batch) into the batch's
    images/<image_id>.jpg and return the manifest rows (one per image).

    Drives are rendered in `cfg.workers` processes (None: one per core). Each drive draws from
    generators of its own, so the bytes do not depend on the number of processes, and a world
    with more sequences per city holds the smaller one's drives unchanged."""
    settings = _settings(cfg)
    if settings["panorama_share"] > 0:
        try:   # the world's panoramas are four photos wide
            view_size(4 * settings["image_size"], 2 * settings["image_size"], run.panoramas)
        except PanoramaError as exc:
            raise PanoramaError(f"fetch.synthetic.panorama_share: the world's panoramas, "
                                f"{exc}: raise fetch.synthetic.image_size or panoramas.fov"
                                ) from None
    if cities["city"].duplicated().any():
        raise ValueError(f"duplicate city names in batch {run.batch}: ids would collide")
    run.image_dir.mkdir(parents=True, exist_ok=True)
    places = [_Place(str(row.city), float(row.lat), float(row.lon), float(row.radius_km))
              for row in cities.itertuples(index=False)]
    drives = [(place, s) for place in places for s in range(settings["sequences_per_city"])]
    render = partial(_render_drive, settings=settings, batch=run.batch, image_dir=run.image_dir,
                     cutting=run.panoramas)
    workers = min(cfg.workers or len(os.sched_getaffinity(0)), max(len(drives), 1))
    rows = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # fork: the renderer holds no threads or torch, and spawn's fresh interpreters
            # would cost seconds per batch
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            rendered = pool.imap(render, drives, chunksize=1)
        else:
            rendered = map(render, drives)
        for drive_rows in rendered:
            rows.extend(drive_rows)
    return _manifest(rows)


class _Place(NamedTuple):
    """A row of data/cities.csv, as the rendering processes get it."""
    city: str
    lat: float
    lon: float
    radius_km: float


def _settings(cfg) -> dict:
    keys = ("seed", "sequences_per_city", "frames_min", "frames_max", "image_size",
            "jpeg_quality")
    settings = {key: int(getattr(cfg, key)) for key in keys}
    settings["panorama_share"] = float(cfg.panorama_share)
    if not 1 <= settings["frames_min"] <= settings["frames_max"]:
        raise ValueError(f"need 1 <= frames_min <= frames_max, got {settings}")
    return settings


def _manifest(rows: list[dict]) -> pd.DataFrame:
    return conform(pd.DataFrame(rows, columns=list(SCHEMA)))


# --------------------------------------------------------------------------- hashing and seeds

def _digest(*parts) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wraps silently, unlike numpy scalars)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(key: int, *parts) -> np.ndarray:
    """A uint64 hash per element of the broadcast integer arrays `parts`, salted by key."""
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=np.int64)) for p in parts))
    h = np.full(arrays[0].shape, key & _MASK64, dtype=np.uint64)
    for a in arrays:
        h = _mix64(h ^ a.astype(np.uint64))
    return h


def _uniforms(h: np.ndarray, n: int) -> np.ndarray:
    """n independent uniforms in [0, 1) per hash: shape (len(h), n)."""
    salts = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    x = _mix64(h[:, None] + salts[None, :])
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --------------------------------------------------------------------------------- the city

@dataclass(frozen=True, eq=False)
class _City:
    name: str
    lat: float
    lon: float
    radius_m: float
    seed: int
    key: int                 # salt of the per-plot hashes
    words: tuple             # seed material of the city's numpy generators
    style: _Style
    theta: float             # grid orientation, rad (u axis, counter-clockwise from east)
    spacing: np.ndarray      # (2,) distance between cross streets along u and along v, m
    offset: np.ndarray       # (2,) grid coordinates of the city centre
    plot_m: float
    tree_m: float
    facades: np.ndarray      # (3, 3) city facade palette
    facade_cdf: np.ndarray   # (3,) cumulative shares of the palette
    shutters: np.ndarray     # (2, 3)
    accents: np.ndarray      # (2, 3) shop awnings and signs
    roof: np.ndarray         # (3,)
    road: np.ndarray         # (3,) asphalt
    sidewalk: np.ndarray     # (3,) paving
    vegetation: np.ndarray   # (3,) leaves and hedges
    window: np.ndarray       # (2,) window width share of the pitch, height share of the floor
    wave_k: np.ndarray       # (2, N_FIELDS * N_WAVES) wave vectors, rad/m
    wave_phase: np.ndarray   # (N_FIELDS * N_WAVES,)
    field_bias: np.ndarray   # (N_FIELDS,) the city's overall lean (taller, greener...)
    ridge: np.ndarray | None  # (720,) tan(elevation) of the skyline per half degree, or None
    creators: tuple
    hotspots: np.ndarray     # (HOTSPOTS, 2) popular spots, ENU metres

    def rng(self, *tags: int) -> np.random.Generator:
        """A generator of its own per (seed, city, tags): nothing else shifts its stream."""
        return np.random.default_rng([*self.words, *tags])

    def to_enu(self, g: np.ndarray) -> np.ndarray:
        """Grid coordinates (m) -> east/north metres from the centre."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v = g[..., 0] - self.offset[0], g[..., 1] - self.offset[1]
        return np.stack([c * u - s * v, s * u + c * v], axis=-1)

    def to_grid(self, enu: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.theta), math.sin(self.theta)
        e, n = enu[..., 0], enu[..., 1]
        return np.stack([c * e + s * n + self.offset[0], -s * e + c * n + self.offset[1]], axis=-1)

    def direction(self, d: int) -> np.ndarray:
        """East/north unit vector of grid direction d."""
        return self.to_enu(DIRS[d] + self.offset)

    def heading(self, d: int) -> float:
        """Compass angle (deg, clockwise from north) of grid direction d."""
        east, north = self.direction(d)
        return math.degrees(math.atan2(east, north)) % 360.0

    def to_latlon(self, enu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local tangent plane: fine within a few tens of km."""
        metres_per_lon_rad = EARTH_RADIUS_M * math.cos(math.radians(self.lat))
        return (self.lat + np.degrees(enu[..., 1] / EARTH_RADIUS_M),
                self.lon + np.degrees(enu[..., 0] / metres_per_lon_rad))


def _region(lat: float, lon: float) -> str:
    """Coarse French regions from the position alone (the cities' rows carry no region)."""
    alps = lon > 5.6 and 44.0 < lat < 46.5
    pyrenees = lat < 43.35 and -1.3 < lon < 2.6
    massif_central = 44.4 < lat < 46.0 and 2.0 < lon < 4.3
    if alps or pyrenees or massif_central:
        return "mountains"
    if (lat < 44.3 and lon > 2.5) or (lat < 44.0 and lon > 0.5):
        return "south"
    if lon < -0.4 or (lat > 49.0 and lon < 1.9) or (lat > 50.5 and lon < 2.6):
        return "coast"
    return "north"


def _ridge_height(lat: float, lon: float) -> float:
    """Typical elevation (tan) of the skyline: high Alps and Pyrenees, low Massif Central."""
    if lon > 5.6 or lat < 43.35:
        return 0.28
    return 0.12


def _make_city(row, seed: int) -> _City:
    name = str(row.city)
    digest = _digest(seed, "city", name)
    words = tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))
    rng = np.random.default_rng([*words, RNG_CITY])
    lat, lon = float(row.lat), float(row.lon)
    style = STYLES[_region(lat, lon)]

    spacing = rng.uniform(80.0, 150.0, size=2)
    picks = rng.choice(4, size=3, replace=False)
    facades = np.array([_jitter_colour(style.facades[i], rng) for i in picks])
    shares = rng.dirichlet([2.0, 2.0, 2.0])
    wavelengths = np.exp(rng.uniform(*np.log(WAVELENGTH_M), size=N_FIELDS * N_WAVES))
    angles = rng.uniform(0, 2 * np.pi, size=N_FIELDS * N_WAVES)
    n_creators = int(rng.integers(2, 6))
    return _City(
        name=name, lat=lat, lon=lon, radius_m=float(row.radius_km) * 1000.0, seed=seed,
        key=int.from_bytes(digest[16:24], "little"), words=words, style=style,
        theta=float(rng.uniform(0, np.pi / 2)), spacing=spacing,
        offset=rng.uniform(0, 1, size=2) * spacing,
        plot_m=float(rng.uniform(8.0, 14.0)), tree_m=float(rng.uniform(7.0, 14.0)),
        facades=facades, facade_cdf=np.cumsum(shares),
        shutters=SHUTTER_COLOURS[rng.choice(len(SHUTTER_COLOURS), size=2, replace=False)],
        accents=ACCENT_COLOURS[rng.choice(len(ACCENT_COLOURS), size=2, replace=False)],
        roof=_tint(style.roof, rng, 0.2),
        road=_tint(style.road, rng, 0.15),
        sidewalk=_tint(style.sidewalk, rng, 0.15),
        vegetation=_tint(style.vegetation, rng, 0.15),
        window=np.array(style.window) * rng.uniform(0.8, 1.2, size=2),
        wave_k=2 * np.pi / wavelengths * np.stack([np.cos(angles), np.sin(angles)]),
        wave_phase=rng.uniform(0, 2 * np.pi, size=N_FIELDS * N_WAVES),
        field_bias=rng.normal(0.0, 0.3, size=N_FIELDS),
        ridge=_ridge(rng, _ridge_height(lat, lon)) if style.name == "mountains" else None,
        creators=tuple(f"user_{_digest(seed, 'creator', name, i).hex()[:6]}"
                       for i in range(n_creators)),
        # Drawn last, so the city's look does not depend on them.
        hotspots=np.array([_in_disc(rng, START_FRACTION / 2 * float(row.radius_km) * 1000.0)
                           for _ in range(HOTSPOTS)]),
    )


def _in_disc(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A point drawn uniformly in the disc of this radius around the origin."""
    r, a = radius * math.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    return np.array([r * math.cos(a), r * math.sin(a)])


def _jitter_colour(rgb, rng: np.random.Generator) -> np.ndarray:
    """A city's take on a regional facade colour: same family, shifted hue and brightness."""
    return np.clip(_hue_rotate(np.array([rgb]), rng.normal(0, 0.2))[0]
                   * rng.uniform(0.85, 1.15), 0, 1)


def _tint(rgb, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A city's own shade of a regional material: each channel scaled by 1 +- amount."""
    return np.clip(np.array(rgb) * rng.uniform(1 - amount, 1 + amount, size=3), 0, 1)


def _ridge(rng: np.random.Generator, height: float) -> np.ndarray:
    """Mountain skyline around the city, as tan(elevation) every half degree of azimuth."""
    az = np.radians(np.arange(720) / 2.0)
    orders = np.arange(1, 9)
    amps = rng.uniform(0.3, 1.0, size=8) / orders**0.8
    phases = rng.uniform(0, 2 * np.pi, size=8)
    wave = (amps[:, None] * np.cos(orders[:, None] * az + phases[:, None])).sum(0) / amps.sum()
    return (height * np.clip(0.55 + 0.9 * wave, 0.05, None)).astype(np.float32)


def _hue_rotate(rgb: np.ndarray, angle) -> np.ndarray:
    """Rotate hues (rad) of (n, 3) colours in YIQ space: a cheap linear hue shift."""
    yiq = rgb @ _RGB2YIQ.T
    c, s = np.cos(angle), np.sin(angle)
    i, q = yiq[:, 1].copy(), yiq[:, 2].copy()
    yiq[:, 1], yiq[:, 2] = c * i - s * q, s * i + c * q
    return np.clip(yiq @ _YIQ2RGB.T, 0, 1)


_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _fields(city: _City, pos: np.ndarray) -> np.ndarray:
    """Neighbourhood fields at grid positions (n, 2) -> (n, N_FIELDS) in (-1, 1)."""
    waves = np.cos(pos @ city.wave_k + city.wave_phase).reshape(len(pos), N_FIELDS, N_WAVES)
    return np.tanh(0.8 * waves.sum(-1) * math.sqrt(2.0 / N_WAVES) + city.field_bias)


# ------------------------------------------------------------------------------- the drives

@dataclass(frozen=True)
class _Shot:
    """One frame: where the car is and the per-frame camera jitter."""
    g: np.ndarray    # grid position on a street centre line, m
    d: int           # travel direction, index into DIRS
    shift_px: tuple  # (x, y) jitter of the principal point, px at 256
    roll: float      # extra roll, rad
    gain: float


def _drive(city: _City, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, int]]:
    """A random walk along the streets: n (grid position, direction) pairs."""
    if rng.random() < HOTSPOT_SHARE:
        start = city.hotspots[rng.integers(HOTSPOTS)] + _in_disc(rng, HOTSPOT_RADIUS_M)
    else:
        start = _in_disc(rng, START_FRACTION * city.radius_m)
    g = city.to_grid(start)
    axis = int(rng.integers(2))
    line = city.spacing[1 - axis]
    g[1 - axis] = round(g[1 - axis] / line) * line      # snap onto the nearest street
    d = axis + 2 * int(rng.integers(2))
    path = [(g, d)]
    limit = EDGE_FRACTION * city.radius_m
    for _ in range(n - 1):
        step = rng.uniform(*STEP_M)
        turn, left = rng.random() < TURN_PROB, rng.random() < 0.5
        g2, d2 = _advance(city, g, d, step, turn, left)
        if np.hypot(*city.to_enu(g2)) > limit:
            # Turn back along the same street, whichever way points inwards: the distance
            # then grows by at most step^2 / (2 r), so drives never leave the radius.
            if np.dot(city.direction(d), city.to_enu(g)) > 0:
                d = (d + 2) % 4
            g2, d2 = g + step * DIRS[d], d
        g, d = g2, d2
        path.append((g, d))
    return path


def _advance(city: _City, g: np.ndarray, d: int, step: float, turn: bool, left: bool):
    axis, sgn = d % 2, (1 if d < 2 else -1)
    spacing, a = city.spacing[axis], g[axis]
    if sgn > 0:   # the next intersection ahead
        corner = (math.floor(a / spacing) + 1) * spacing
    else:
        corner = (math.ceil(a / spacing) - 1) * spacing
    dist = abs(corner - a)
    if turn and dist <= step:
        g = g.copy()
        g[axis] = corner
        d = (d + (1 if left else 3)) % 4
        return g + (step - dist) * DIRS[d], d
    return g + step * DIRS[d], d


def _capture_times(rng: np.random.Generator, steps_m: np.ndarray) -> tuple[np.ndarray, float]:
    """ms timestamps (UTC) of the frames and the local hour of the start (for the sun)."""
    hour = rng.uniform(7.0, 19.0)
    utc_hour = hour - 1.0   # France: UTC+1 (+2 in summer, close enough)
    start = TIME_START_MS + int(rng.integers(N_DAYS)) * DAY_MS + int(utc_hour * 3_600_000)
    speed = rng.uniform(4.0, 12.0)                                   # m/s
    gaps = np.maximum(steps_m / speed * 1000.0 * rng.uniform(0.9, 1.1, len(steps_m)), 500.0)
    return start + np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64), hour


# ------------------------------------------------------------------------------- the camera

@dataclass(frozen=True, eq=False)
class _Camera:
    focal: float         # px
    height: float        # m above the road
    lane: float          # m right of the street's centre line
    horizon_px: float    # pitch, as a shift of the horizon
    roll: float          # rad
    yaw: float           # rad, to the right of the street axis
    sun_az: float        # deg
    sun: float           # direct light strength
    ambient: float
    cloud: float
    cloud_phase: np.ndarray
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    fog_m: float
    contrast: float
    saturation: float
    blur_px: float
    mult: np.ndarray     # (3, H, W) exposure x white balance x vignetting
    fpn: np.ndarray      # (3, H, W) fixed-pattern noise
    noise: np.ndarray    # (3, H + NOISE_MARGIN, W + NOISE_MARGIN) shot noise, cropped per frame
    bonnet: np.ndarray | None  # (H, W) alpha of the car's bonnet at the bottom, or None
    bonnet_rgb: np.ndarray


NOISE_MARGIN = 16


def _camera(city: _City, rng: np.random.Generator, noise_rng: np.random.Generator,
            hour: float, width: int, height: int) -> _Camera:
    style, scale = city.style, width / 256.0
    cloud = float(np.clip(style.cloudiness + rng.normal(0, 0.2), 0, 1))
    grey = np.array([0.74, 0.76, 0.79])
    # Low sun in the morning and evening: weaker, from the east or west.
    sun_elevation = max(0.15, math.cos((hour - 13.5) / 7.0 * math.pi / 2))
    hfov = math.radians(rng.uniform(60.0, 90.0))
    gain = math.exp(rng.normal(0, 0.15))
    white_balance = np.exp(rng.normal(0, 0.04, size=3))
    vignette = rng.uniform(0.0, 0.45)
    camera = dict(
        focal=width / 2 / math.tan(hfov / 2),
        height=rng.uniform(1.3, 2.6),
        lane=rng.uniform(1.0, 3.0),
        horizon_px=rng.uniform(-0.08, 0.08) * height,
        roll=math.radians(float(np.clip(rng.normal(0, 1.5), -4, 4))),
        yaw=math.radians(rng.normal(0, 2.5)),
        sun_az=180.0 + (hour - 13.5) * 15.0,
        sun=(1 - cloud) * 0.5 * sun_elevation,
        ambient=0.62 + 0.18 * cloud,
        cloud=cloud,
        cloud_phase=rng.uniform(0, 2 * np.pi, size=4),
        sky_top=np.array(style.sky_top) + (grey - np.array(style.sky_top)) * 0.7 * cloud,
        sky_horizon=(np.array(style.sky_horizon)
                     + (grey - np.array(style.sky_horizon)) * 0.5 * cloud),
        fog_m=style.fog_m * (1.3 - 0.6 * cloud) * rng.uniform(0.8, 1.2),
        contrast=rng.uniform(0.85, 1.15),
        saturation=rng.uniform(0.8, 1.15),
        blur_px=(rng.uniform(0.3, 1.3) if rng.random() < 0.6 else 0.0) * scale,
    )
    noise_sd, fpn_sd = rng.uniform(0.004, 0.03), rng.uniform(0.003, 0.012)
    bonnet = _bonnet(rng, width, height) if rng.random() < 0.35 else None
    bonnet_rgb = rng.uniform(0.05, 0.6) * rng.uniform(0.8, 1.2, size=3)
    # Pixel maps last, from their own generator: the scalars above, the drive and the ids
    # must not depend on the image size.
    fpn = noise_rng.standard_normal((3, height, width), dtype=np.float32) * np.float32(fpn_sd)
    noise = noise_rng.standard_normal((3, height + NOISE_MARGIN, width + NOISE_MARGIN),
                                      dtype=np.float32) * np.float32(noise_sd)
    mult = _vignette(width, height, vignette)[None] * _planar(gain * white_balance)
    return _Camera(**camera, mult=mult, fpn=fpn, noise=noise, bonnet=bonnet,
                   bonnet_rgb=_planar(np.clip(bonnet_rgb, 0, 1)))


def _planar(rgb) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 array, to broadcast over (3, H, W) images."""
    return np.asarray(rgb, dtype=np.float32).reshape(3, 1, 1)


def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    x = (np.arange(width, dtype=np.float32) + 0.5) / (width / 2) - 1
    y = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (width / 2)
    return 1 - np.float32(strength * 0.6) * (x[None, :] ** 2 + y[:, None] ** 2)


def _bonnet(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Alpha of a car bonnet: a shallow arc over the bottom rows, the same all sequence."""
    depth = rng.uniform(0.05, 0.15) * height
    bulge = rng.uniform(0.02, 0.06) * height
    x = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    top = height - depth - bulge * (1 - x**2)
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    return np.clip(y - top[None, :], 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------ rendering

@dataclass(frozen=True)
class _Street:
    axis: int        # grid axis the street runs along
    sgn: int         # +1 when driving towards increasing coordinates
    a: float         # position along the street
    q: float         # coordinate of the street's centre line on the other axis
    k: int           # index of that line
    half_w: float    # centre line to facade, m
    road_half: float  # centre line to kerb, m
    left: int        # which side (+1/-1 along the other axis) is on the driver's left


def _street_widths(city: _City, axis: int, lines) -> tuple[np.ndarray, np.ndarray]:
    """(half width, road half width) of the streets running along `axis` at line indices."""
    u = _uniforms(_hash(city.key, TAG_STREET, axis, lines), 2)
    half_w = city.style.half_width[0] + u[:, 0] * np.subtract(*city.style.half_width[::-1])
    road_half = np.maximum(half_w - 1.5 - 2.5 * u[:, 1], 2.8)
    return half_w, road_half


def _street(city: _City, g: np.ndarray, d: int) -> _Street:
    axis = d % 2
    q = float(g[1 - axis])
    k = round(q / city.spacing[1 - axis])
    half_w, road_half = _street_widths(city, axis, k)
    return _Street(axis=axis, sgn=1 if d < 2 else -1, a=float(g[axis]), q=q, k=k,
                   half_w=float(half_w[0]), road_half=float(road_half[0]),
                   left=1 if d in (0, 3) else -1)


def _render(city: _City, cam: _Camera, shot: _Shot, width: int, height: int,
            noise_rng: np.random.Generator) -> np.ndarray:
    st = _street(city, shot.g, shot.d)
    lane = min(cam.lane, st.road_half - 0.8)
    heading = city.heading(shot.d)
    dx, dy, view = _rays(cam, shot, width, height)
    scene = _scene(city, cam, st, lane, heading, dx, dy)
    image = Image.fromarray(_interleaved(_to_uint8(scene)))
    _draw_props(ImageDraw.Draw(image), city, cam, st, lane, heading, view)
    return _camera_effects(image, cam, shot, noise_rng)


def _rays(cam: _Camera, shot: _Shot, width: int, height: int):
    """Per-pixel ray slopes in the street frame: dx (right) and dy (up) per metre of depth,
    and the parameters to project points back (for the props)."""
    scale = width / 256.0
    cx = width / 2 + shot.shift_px[0] * scale
    cy = height / 2 + cam.horizon_px + shot.shift_px[1] * scale
    roll = cam.roll + shot.roll
    c, s = np.float32(math.cos(roll)), np.float32(math.sin(roll))
    x = np.arange(width, dtype=np.float32) + np.float32(0.5 - cx)
    y = np.arange(height, dtype=np.float32) + np.float32(0.5 - cy)
    focal, tan_yaw = np.float32(cam.focal), np.float32(math.tan(cam.yaw))
    dx = (x[None, :] * c + y[:, None] * s) / focal + tan_yaw
    dy = (x[None, :] * s - y[:, None] * c) / focal
    return dx, dy, _View(cx, cy, float(c), float(s), cam.focal, float(tan_yaw))


class _View(NamedTuple):
    """What _rays used, to project points back onto the image (for the props)."""
    cx: float
    cy: float
    cos_roll: float
    sin_roll: float
    focal: float
    tan_yaw: float

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """Street-frame point (m right of, up from and ahead of the camera) -> pixel."""
        px = (x / z - self.tan_yaw) * self.focal
        py = y / z * self.focal
        return (self.cx + px * self.cos_roll + py * self.sin_roll,
                self.cy + px * self.sin_roll - py * self.cos_roll)


class _Pal:
    """Layout of the per-frame colour table: blocks of one entry per plot, then fixed ones."""
    FACADE, ROOF, HEDGE, SHUTTER, AWNING, GLASS = range(6)
    ROAD, SIDEWALK, MARKING, GARDEN, SHOP_GLASS, MOUNTAIN, SNOW, SKY = range(8)


def _plots(city: _City, st: _Street, first: int, n: int) -> dict:
    """Attributes of plots first..first+n-1 on the left (rows 0..n-1) then right side."""
    idx = np.tile(np.arange(first, first + n), 2)
    side = np.repeat([st.left, -st.left], n)
    draws = _uniforms(_hash(city.key, TAG_PLOT, st.axis, st.k, side, idx), len(_PLOT_DRAWS))
    u = dict(zip(_PLOT_DRAWS, draws.T, strict=True))
    pos = np.empty((2 * n, 2))
    pos[:, st.axis] = (idx + 0.5) * city.plot_m
    pos[:, 1 - st.axis] = st.q + side * (st.half_w + 6.0)
    f = _fields(city, pos)
    sty = city.style
    dense, green, tall = f[:, F_DENSITY], f[:, F_GREEN], 0.5 + 0.5 * f[:, F_HEIGHT]
    window = 0.5 + 0.5 * f[:, F_WINDOW]

    building = u["building"] < 0.75 + 0.22 * dense - 0.1 * np.maximum(green, 0)
    floors = np.clip(np.rint(sty.floors[0] + (sty.floors[1] - sty.floors[0]) * tall
                             + (u["floors"] - 0.5) * 1.6), 1, sty.floors[1] + 1)
    height = sty.ground_m + (floors - 1) * sty.floor_m
    pick = np.searchsorted(city.facade_cdf, u["facade"] * city.facade_cdf[-1]).clip(0, 2)
    facade = _hue_rotate(city.facades[pick], 0.15 * f[:, F_HUE] + 0.1 * (u["hue"] - 0.5))
    is_hedge = u["hedge"] < 0.45 + 0.45 * green   # else a low wall
    hedge = np.where(is_hedge[:, None], city.vegetation * (0.8 + 0.4 * u["leaves"])[:, None],
                     city.sidewalk * 0.8)
    geometry = {   # looked up per pixel: float32 halves the memory traffic
        "height": np.where(building, height, 0.0),
        "top": np.where(building, height + sty.roof_m, 0.8 + 1.4 * u["hedge_m"]),
        # detached houses in sparse neighbourhoods: the end of the plot stays open
        "open": np.where(building, np.clip((0.2 - dense) * 0.45 * u["open"], 0, 0.4), 0.0),
        "per_pitch": 1 / (2.2 + 1.8 * window + 0.4 * (u["pitch"] - 0.5)),
        "win_w": city.window[0] * (1.15 - 0.3 * window),
    }
    return {
        **{k: v.astype(np.float32) for k, v in geometry.items()},
        "building": building,
        "shutter": u["shutter"] < sty.shutter_prob,
        "shop": building & (u["shop"] < 0.1 + 0.3 * (0.5 + 0.5 * dense)),
        "facade": facade * (0.88 + 0.24 * u["shade"])[:, None],
        "hedge": hedge,
        "shutter_rgb": city.shutters[(u["shutter_rgb"] < 0.6).astype(int)],
        "awning_rgb": city.accents[(u["awning_rgb"] < 0.5).astype(int)],
        "glass": (0.10 + 0.12 * u["glass"])[:, None] + np.array([0.02, 0.04, 0.07]),
    }


_PLOT_DRAWS = ("building", "floors", "facade", "hue", "shade", "hedge", "hedge_m", "leaves",
               "open", "pitch", "shutter", "shutter_rgb", "shop", "awning_rgb", "glass")


def _lights(cam: _Camera, heading: float) -> tuple[float, float, float]:
    """Light on the left wall, the right wall and horizontal surfaces."""
    def wall(normal_az):
        return cam.ambient + cam.sun * max(0.0, math.cos(math.radians(normal_az - cam.sun_az)))
    return wall(heading + 90), wall(heading - 90), cam.ambient + 0.6 * cam.sun


def _palette(city: _City, cam: _Camera, pl: dict, n: int, heading: float) -> np.ndarray:
    """The frame's colour table, (3, entries): lit plot colours, then the fixed materials."""
    left, right, flat = _lights(cam, heading)
    side = np.repeat([left, right], n)[:, None]
    sty = city.style
    roof = np.tile(city.roof, (2 * n, 1)) * (flat * 0.9)
    fixed = np.array([city.road, city.sidewalk, (0.92, 0.92, 0.90), sty.garden,
                      (0.08, 0.08, 0.10), sty.mountain, (0.95, 0.96, 0.98), (0, 0, 0)])
    fixed[:4] *= flat
    blocks = [pl["facade"] * side, roof, pl["hedge"] * side, pl["shutter_rgb"] * side,
              pl["awning_rgb"] * side, pl["glass"] + 0.2 * cam.sky_horizon, fixed]
    return np.ascontiguousarray(np.concatenate(blocks).T, dtype=np.float32)


def _scene(city: _City, cam: _Camera, st: _Street, lane: float, heading: float,
           dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Ray-cast the street corridor: float32 (3, H, W) colours in [0, 1].

    Images are kept channel-first: numpy broadcasts a colour over (3, H, W) ten times faster
    than over (H, W, 3)."""
    P = city.plot_m
    n = int(Z_FAR / P) + 4
    first = math.floor(min(st.a, st.a + st.sgn * Z_FAR) / P) - 1
    pl = _plots(city, st, first, n)
    pal = _palette(city, cam, pl, n, heading)
    fixed = 6 * 2 * n  # index of the first fixed palette entry

    # Walls: the facade planes at the left and right of the street, hit at depth t_w.
    right = dx >= 0
    wall_x = np.where(right, np.float32(st.half_w - lane), np.float32(-st.half_w - lane))
    t_w = np.minimum(wall_x / np.where(right, np.maximum(dx, 1e-6), dx), np.float32(Z_FAR))
    y_w = cam.height + dy * t_w
    along = st.a + st.sgn * t_w
    cell = np.floor(along * np.float32(1 / P))
    in_plot = along * np.float32(1 / P) - cell
    plot = right * n + np.clip(cell.astype(np.int32) - first, 0, n - 1)
    cross_d, _, cross_half = _cross_streets(city, st, along)
    solid = ((y_w >= 0) & (y_w < pl["top"][plot]) & (in_plot < 1 - pl["open"][plot])
             & (cross_d >= cross_half) & (t_w < Z_FAR))
    wall = _wall_materials(city, pl, plot, y_w, in_plot * P, n)

    # Ground: the plane 'height' metres below the camera, hit at depth t_g.
    below = dy < 0
    t_g = np.minimum(cam.height / -np.minimum(dy, np.float32(-1e-4)), np.float32(4 * Z_FAR))
    x_g = lane + dx * t_g
    along_g = st.a + st.sgn * t_g
    ground = _ground_materials(st, x_g, along_g, *_cross_streets(city, st, along_g)) + fixed

    material = np.where(solid, wall, np.where(below, ground, fixed + _Pal.SKY))
    depth = np.where(solid, t_w, t_g)
    sky = ~solid & ~below
    # Sky and mountains only show above the horizon: work on the rows that reach it.
    up = slice(0, int(np.flatnonzero(~below.all(axis=1)).max(initial=-1)) + 1)
    if city.ridge is not None:
        rock = _mountain_materials(city, heading, dx[up], dy[up]) * sky[up]  # 0: no mountain
        mountain = rock > 0
        material[up] = np.where(mountain, fixed + rock, material[up])
        depth[up] = np.where(mountain, np.float32(cam.fog_m * 0.35), depth[up])
        sky[up] &= ~mountain

    colour = np.take(pal, material, axis=1)
    keep = np.exp(depth * np.float32(-1 / cam.fog_m))
    haze = _planar(cam.sky_horizon)
    colour = haze + (colour - haze) * keep
    colour[:, up] = np.where(sky[up], _sky(cam, heading, dx[up], dy[up]), colour[:, up])
    return colour


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)   # much faster than x % 1 on float arrays


def _cross_streets(city: _City, st: _Street, along: np.ndarray):
    """Distance from `along` to the nearest cross street's centre line, and that street's
    road half width and half width (per pixel)."""
    spacing = city.spacing[st.axis]
    j = np.rint(along * np.float32(1 / spacing))
    j0 = int(j.min())
    half_w, road_half = _street_widths(city, 1 - st.axis, np.arange(j0, int(j.max()) + 1))
    i = (j - j0).astype(np.int32)
    return (np.abs(along - j * np.float32(spacing)), road_half.astype(np.float32)[i],
            half_w.astype(np.float32)[i])


def _wall_materials(city: _City, pl: dict, plot: np.ndarray, y: np.ndarray,
                    x: np.ndarray, n: int) -> np.ndarray:
    """Palette index of each wall pixel: facade, roof, windows, shutters, shop, hedge."""
    sty = city.style
    m = 2 * n
    height = pl["height"][plot]
    win_w = pl["win_w"][plot] * 0.5
    col = np.abs(_frac(x * pl["per_pitch"][plot]) - 0.5)      # 0 on a window column's axis
    floor_y = (y - sty.ground_m) * np.float32(1 / sty.floor_m)
    row = np.abs(_frac(floor_y) - 0.45)                    # 0 at a window's middle
    window_row = (floor_y >= 0) & (y < height - 0.4) & (row < city.window[1] * 0.5)
    window = window_row & (col < win_w)
    shutter = window_row & ~window & (col < win_w * 1.9) & pl["shutter"][plot]
    ground_floor = y < sty.ground_m
    shop = ground_floor & pl["shop"][plot]
    awning = shop & (y > 0.76 * sty.ground_m) & (y < 0.94 * sty.ground_m)
    shop_glass = shop & (y > 0.15) & (y < 0.72 * sty.ground_m) & (col < 0.42)
    door_or_window = ground_floor & ~shop & (col < win_w) & (y > 0.9) & (y < 0.8 * sty.ground_m)

    out = np.where(y >= height, _Pal.ROOF * m + plot, _Pal.FACADE * m + plot)
    out = np.where(window | door_or_window, _Pal.GLASS * m + plot, out)
    out = np.where(shutter, _Pal.SHUTTER * m + plot, out)
    out = np.where(awning, _Pal.AWNING * m + plot, out)
    out = np.where(shop_glass, 6 * m + _Pal.SHOP_GLASS, out)
    return np.where(pl["building"][plot], out, _Pal.HEDGE * m + plot)


def _ground_materials(st: _Street, x: np.ndarray, along: np.ndarray, cross_d: np.ndarray,
                      cross_road: np.ndarray, cross_half: np.ndarray) -> np.ndarray:
    """Fixed-palette index of each ground pixel: road, markings, sidewalk, garden."""
    ax = np.abs(x)
    road = (ax < st.road_half) | (cross_d < cross_road)
    pavement = (ax < st.half_w) | (cross_d < cross_half)
    centre_line = (ax < 0.08) & (_frac(along * np.float32(1 / 9)) < 0.45) & (cross_d > cross_half)
    zebra = ((ax < st.road_half) & (cross_d > cross_road) & (cross_d < cross_half)
             & (_frac(x) < 0.5))
    out = np.where(road, _Pal.ROAD, np.where(pavement, _Pal.SIDEWALK, _Pal.GARDEN))
    return np.where(centre_line | zebra, _Pal.MARKING, out)


def _mountain_materials(city: _City, heading: float, dx: np.ndarray,
                        dy: np.ndarray) -> np.ndarray:
    """Fixed-palette index of the distant ridges (snow on the high ones), 0 elsewhere."""
    turns = (np.float32(heading) + np.degrees(np.arctan(dx))) * np.float32(1 / 360)
    ridge = city.ridge[(_frac(turns) * len(city.ridge)).astype(np.int32) % len(city.ridge)]
    snow = (ridge > 0.18) & (dy > 0.85 * ridge)
    return np.where((dy >= 0) & (dy < ridge), np.where(snow, _Pal.SNOW, _Pal.MOUNTAIN), 0)


def _sky(cam: _Camera, heading: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Gradient from the horizon up, with soft clouds anchored to the compass direction."""
    top, horizon = _planar(cam.sky_top), _planar(cam.sky_horizon)
    sky = horizon + (top - horizon) * np.clip(dy * 2.2, 0, 1)
    if cam.cloud < 0.05:
        return sky
    az = np.float32(math.radians(heading)) + dx * np.float32(0.8)   # ~ arctan, cheap
    p = cam.cloud_phase.astype(np.float32)
    wave = (np.sin(az * 3 + p[0]) * np.sin(dy * 9 + p[1])
            + 0.6 * np.sin(az * 7 + dy * 5 + p[2]) + 0.3 * np.sin(az * 13 + p[3]))
    amount = np.clip(wave * 0.6 + (cam.cloud - 0.5) * 1.5, 0, 1) * np.float32(cam.cloud)
    cloud_grey = np.float32(0.92 - 0.2 * cam.cloud)
    return sky + (cloud_grey - sky) * amount


def _draw_props(draw: ImageDraw.ImageDraw, city: _City, cam: _Camera, st: _Street,
                lane: float, heading: float, view: _View) -> None:
    """Street trees and signs on the pavements, drawn far to near."""
    sty = city.style
    first = math.floor(min(st.a, st.a + st.sgn * TREE_FAR) / city.tree_m)
    n = int(TREE_FAR / city.tree_m) + 2
    idx = np.tile(np.arange(first, first + n), 2)
    side = np.repeat([st.left, -st.left], n)
    u = _uniforms(_hash(city.key, TAG_TREE, st.axis, st.k, side, idx), 6)
    pos = np.empty((2 * n, 2))
    pos[:, st.axis] = (idx + 0.5) * city.tree_m
    pos[:, 1 - st.axis] = st.q + side * st.half_w
    green = _fields(city, pos)[:, F_GREEN]
    along = (idx + 0.3 + 0.4 * u[:, 0]) * city.tree_m
    depth = st.sgn * (along - st.a)
    cross_d, _, cross_half = _cross_streets(city, st, along)
    is_tree = u[:, 1] < sty.tree_share + 0.35 * green
    is_sign = ~is_tree & (u[:, 1] > 0.93)
    keep = (is_tree | is_sign) & (depth > 3.0) & (depth < TREE_FAR) & (cross_d > cross_half + 1.5)
    x = np.where(side == st.left, -1.0, 1.0) * (st.road_half + 0.6 + 0.4 * u[:, 2]) - lane
    light = _lights(cam, heading)[2]
    for i in np.flatnonzero(keep)[np.argsort(-depth[keep], kind="stable")]:
        paint = partial(_shade, light=light, haze=cam.sky_horizon,
                        keep=math.exp(-depth[i] / cam.fog_m))
        if is_tree[i]:
            _draw_tree(draw, view, city, cam.height, x[i], depth[i], u[i, 3:], paint)
        else:
            _draw_sign(draw, view, cam.height, x[i], depth[i], city.accents[int(u[i, 3] * 2)],
                       paint)


def _shade(rgb, light: float, haze: np.ndarray, keep: float) -> tuple[int, int, int]:
    """PIL colour of a lit prop seen through the fog."""
    rgb = haze + (np.asarray(rgb) * light - haze) * keep
    return tuple(int(v) for v in np.clip(rgb * 255 + 0.5, 0, 255))


def _draw_tree(draw, view: _View, city: _City, cam_height: float, x, z, u, paint) -> None:
    sty = city.style
    crown = sty.crown_m[0] + (sty.crown_m[1] - sty.crown_m[0]) * u[0]
    trunk = 1.8 + 1.5 * u[1]
    y0 = -cam_height
    r = view.focal * crown / z
    draw.line([view.project(x, y0, z), view.project(x, y0 + trunk, z)],
              fill=paint((0.28, 0.22, 0.16)), width=max(1, round(view.focal * 0.3 / z)))
    leaves = paint(city.vegetation * (0.75 + 0.5 * u[2]))
    if sty.tree == "conifer":
        tip = view.project(x, y0 + trunk + 3.2 * crown, z)
        lx, ly = view.project(x, y0 + 0.6 * trunk, z)
        draw.polygon([tip, (lx - r, ly), (lx + r, ly)], fill=leaves)
        return
    cx, cy = view.project(x, y0 + trunk + crown * 0.8, z)
    rx, ry = (1.3 * r, 0.75 * r) if sty.tree == "olive" else (r, 1.1 * r)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=leaves)


def _draw_sign(draw, view: _View, cam_height: float, x, z, rgb, paint) -> None:
    y0 = -cam_height
    cx, cy = view.project(x, y0 + 2.6, z)
    draw.line([view.project(x, y0, z), (cx, cy)], fill=paint((0.35, 0.35, 0.37)),
              width=max(1, round(view.focal * 0.08 / z)))
    half = view.focal * 0.35 / z
    rim = paint((0.95, 0.95, 0.95)) if half >= 3 else None   # a rim only where it shows
    draw.rectangle([cx - half, cy - 2 * half, cx + half, cy], fill=paint(rgb), outline=rim)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)


def _interleaved(planar: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (H, W, 3), the layout PIL wants."""
    return np.ascontiguousarray(planar.transpose(1, 2, 0))


def _camera_effects(image: Image.Image, cam: _Camera, shot: _Shot,
                    noise_rng: np.random.Generator) -> np.ndarray:
    """Optics (blur, bonnet) then sensor (exposure, white balance, vignetting, colour
    response, fixed-pattern and shot noise): (H, W, 3) uint8."""
    if cam.blur_px > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(cam.blur_px))
    x = np.asarray(image).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    if cam.bonnet is not None:
        x = x + (cam.bonnet_rgb - x) * cam.bonnet
    x = x * (cam.mult * np.float32(shot.gain))
    luma = _LUMA[0] * x[0] + _LUMA[1] * x[1] + _LUMA[2] * x[2]
    x = luma + (x - luma) * np.float32(cam.saturation)
    x = (x - np.float32(0.45)) * np.float32(cam.contrast) + np.float32(0.45)
    # Shot noise: a random crop of the sequence's noise bank, much cheaper than new draws.
    _, height, width = x.shape
    oy, ox = noise_rng.integers(NOISE_MARGIN + 1, size=2)
    x += cam.fpn + cam.noise[:, oy:oy + height, ox:ox + width]
    return _interleaved(_to_uint8(x))


# ------------------------------------------------------------------------- ids and writing

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _image_id(city: _City, sequence: int, frame: int) -> str:
    """16 digits, like Mapillary's numeric image ids."""
    h = int.from_bytes(_digest(city.seed, "image", city.name, sequence, frame)[:8], "little")
    return str(10**15 + h % (9 * 10**15))


def _sequence_id(city: _City, sequence: int, part: int = 0) -> str:
    """22 alphanumeric characters, like Mapillary's sequence keys."""
    key = (sequence,) if part == 0 else (sequence, "part", part)
    h = int.from_bytes(_digest(city.seed, "sequence", city.name, *key), "little")
    chars = []
    for _ in range(22):
        h, r = divmod(h, 62)
        chars.append(_BASE62[r])
    return "".join(chars)


@functools.lru_cache(maxsize=64)
def _city_of(place: _Place, seed: int) -> _City:
    return _make_city(place, seed)


def _render_drive(drive: tuple[_Place, int], settings: dict, batch: str,
                  image_dir: Path, cutting: PanoramaParams) -> list[dict]:
    """Render drive s of a city: its JPEGs, and its manifest rows in frame order."""
    place, s = drive
    city = _city_of(place, settings["seed"])
    # Drawn from a stream of its own: turning 360 cameras on leaves the other drives as
    # they were.
    if city.rng(RNG_CAMERA_KIND, s).random() < settings["panorama_share"]:
        return _render_panorama_drive(city, s, settings, batch, image_dir, cutting)
    width = settings["image_size"]
    height = round(width * 3 / 4)
    rng = city.rng(RNG_SEQUENCE, s)
    noise_rng = city.rng(RNG_NOISE, s)
    n = int(rng.integers(settings["frames_min"], settings["frames_max"] + 1))
    # A drive uploaded in two parts: frames from `cut` on form a second sequence.
    cut = int(rng.integers(2, n - 1)) if n >= 4 and rng.random() < TWIN_SHARE else n
    path = _drive(city, rng, n)
    enu = city.to_enu(np.array([g for g, _ in path]))
    steps = np.hypot(*np.diff(enu, axis=0).T)
    times, hour = _capture_times(rng, steps)
    creator = city.creators[int(rng.integers(len(city.creators)))]
    parts = (_sequence_id(city, s), _sequence_id(city, s, part=1))
    cam = _camera(city, rng, noise_rng, hour, width, height)
    # What a GPS and a compass would report: the true pose plus noise.
    lat, lon = city.to_latlon(enu + rng.uniform(-GPS_NOISE_M, GPS_NOISE_M, size=enu.shape))
    rows = []
    for f, (g, d) in enumerate(path):
        shot = _Shot(g=g, d=d, shift_px=tuple(rng.normal(0, 1.5, size=2)),
                     roll=math.radians(rng.normal(0, 0.3)), gain=math.exp(rng.normal(0, 0.03)))
        compass = (city.heading(d) + math.degrees(cam.yaw) + rng.normal(0, 2.0)) % 360.0
        image_id = _image_id(city, s, f)
        pixels = _render(city, cam, shot, width, height, noise_rng)
        relative = f"images/{image_id}.jpg"
        with atomic_path(image_dir / f"{image_id}.jpg") as tmp:
            Image.fromarray(pixels).save(tmp, format="JPEG",
                                         quality=settings["jpeg_quality"])
        rows.append({
            "image_id": image_id, "lat": float(lat[f]), "lon": float(lon[f]),
            "captured_at": int(times[f]), "sequence_id": parts[f >= cut],
            "compass_angle": float(compass), "creator": creator, "source": SOURCE,
            "city": city.name, "batch": batch, "path": relative,
            "width": width, "height": height,
        })
    return rows


def _render_panorama_drive(city: _City, s: int, settings: dict, batch: str, image_dir: Path,
                           cutting: PanoramaParams) -> list[dict]:
    """Drive s of a city taken with a 360 camera: each frame's panorama (four times the
    photos' width, so that views of 90 degrees are as sharp as they are) cut into views,
    their JPEGs and manifest rows, one view group per frame."""
    width = 4 * settings["image_size"]
    rng, noise_rng = city.rng(RNG_SEQUENCE, s), city.rng(RNG_NOISE, s)
    n = int(rng.integers(settings["frames_min"], settings["frames_max"] + 1))
    path = _drive(city, rng, n)
    enu = city.to_enu(np.array([g for g, _ in path]))
    times, hour = _capture_times(rng, np.hypot(*np.diff(enu, axis=0).T))
    creator = city.creators[int(rng.integers(len(city.creators)))]
    cam = dataclasses.replace(_camera(city, rng, noise_rng, hour, width, width // 2),
                              bonnet=None, yaw=0.0, roll=0.0, horizon_px=0.0)
    lat, lon = city.to_latlon(enu + rng.uniform(-GPS_NOISE_M, GPS_NOISE_M, size=enu.shape))
    sequence = _sequence_id(city, s)
    rows = []
    for f, (g, d) in enumerate(path):
        shot = _Shot(g=g, d=d, shift_px=(0.0, 0.0), roll=0.0, gain=1.0)
        panorama = Image.fromarray(_render_panorama(city, cam, shot, width, noise_rng))
        compass = (city.heading(d) + rng.normal(0, 2.0)) % 360.0
        frame = _image_id(city, s, f)
        for v, view in enumerate(views_of(panorama, compass, cutting)):
            image_id = f"{frame}-{v}"
            with atomic_path(image_dir / f"{image_id}.jpg") as tmp:
                tmp.write_bytes(view.data)
            rows.append({
                "image_id": image_id, "lat": float(lat[f]), "lon": float(lon[f]),
                "captured_at": int(times[f]), "sequence_id": sequence,
                "compass_angle": float(view.heading), "creator": creator, "source": SOURCE,
                "city": city.name, "batch": batch, "path": f"images/{image_id}.jpg",
                "width": view.size, "height": view.size, "view_group": f"{SOURCE}:{frame}",
            })
    return rows


def _render_panorama(city: _City, cam: _Camera, shot: _Shot, width: int,
                     noise_rng: np.random.Generator) -> np.ndarray:
    """An equirectangular panorama (width x width / 2, H x W x 3 uint8) taken at shot.g, its
    centre column facing street direction shot.d: each column is cast in the corridor of the
    street direction nearest its heading (the corridors meet at 45 degrees), each row at its
    elevation (the poles, which no corridor reaches, clamped to 80 degrees)."""
    height = width // 2
    heading = (np.arange(width, dtype=np.float32) + np.float32(0.5)) / np.float32(width)
    heading = (heading - np.float32(0.5)) * np.float32(2 * math.pi)   # clockwise, from d
    elevation = np.float32(math.pi / 2) - ((np.arange(height, dtype=np.float32)
                                           + np.float32(0.5)) / np.float32(height)
                                          * np.float32(math.pi))
    elevation = np.clip(elevation, np.float32(-1.4), np.float32(1.4))
    colour = np.empty((3, height, width), dtype=np.float32)
    turn = np.rint(heading / np.float32(math.pi / 2)).astype(np.int64) % 4
    for quarter in range(4):
        columns = np.flatnonzero(turn == quarter)
        off = heading[columns] - np.float32(quarter * math.pi / 2)
        off = (off + np.float32(math.pi)) % np.float32(2 * math.pi) - np.float32(math.pi)
        dx = np.broadcast_to(np.tan(off)[None, :], (height, len(columns)))
        dy = np.tan(elevation)[:, None] / np.cos(off)[None, :]
        d = (shot.d - quarter) % 4   # the next direction to the right is d - 1
        st = _street(city, shot.g, d)
        lane = min(cam.lane, st.road_half - 0.8)
        colour[:, :, columns] = _scene(city, cam, st, lane, city.heading(d),
                                       np.ascontiguousarray(dx), dy.astype(np.float32))
    return _camera_effects(Image.fromarray(_interleaved(_to_uint8(colour))), cam, shot,
                           noise_rng)


# ------------------------------------------------------------------ panoramas of one place

# The faces of a panorama camera, as (direction turn, yaw): front, right, back, left. The
# corridor renderer looks along a street, so the side faces look 60 degrees off its axis.
FACES = ((0, 0.0), (0, math.radians(60)), (2, 0.0), (2, math.radians(60)))


@dataclass(frozen=True)
class PanoramaView:
    drive: int
    stop: int
    face: int
    lat: float
    lon: float
    captured_at: int      # ms UTC, one per stop: the faces are taken together
    pixels: np.ndarray    # H x W x 3 uint8


def panorama_views(city_row, seed: int, drives: int, stops: int, width: int):
    """Drives through one city of data/cities.csv that stop `stops` times and take the four
    faces of a panorama at each stop (FACES): photos as a user with a 360 camera has them,
    for trying and testing the local source. Yields PanoramaView, drive by drive."""
    city = _make_city(city_row, seed)
    height = round(width * 3 / 4)
    for s in range(drives):
        rng, noise_rng = city.rng(RNG_SEQUENCE, s), city.rng(RNG_NOISE, s)
        path = _drive(city, rng, stops)
        enu = city.to_enu(np.array([g for g, _ in path]))
        times, hour = _capture_times(rng, np.hypot(*np.diff(enu, axis=0).T))
        cam = _camera(city, rng, noise_rng, hour, width, height)
        lat, lon = city.to_latlon(enu + rng.uniform(-GPS_NOISE_M, GPS_NOISE_M, size=enu.shape))
        for f, (g, d) in enumerate(path):
            for face, (turn, yaw) in enumerate(FACES):
                shot = _Shot(g=g, d=(d + turn) % 4, shift_px=(0.0, 0.0), roll=0.0, gain=1.0)
                pixels = _render(city, dataclasses.replace(cam, yaw=cam.yaw + yaw), shot,
                                 width, height, noise_rng)
                yield PanoramaView(s, f, face, float(lat[f]), float(lon[f]), int(times[f]),
                                   pixels)
