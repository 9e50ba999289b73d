"""`geoloc serve`: predictions over HTTP and the web demo, from an exported snapshot.

The app reads a photo's upload into memory (bounded, never to disk), refuses what it cannot or
should not decode with a status and a message, and runs decoding and ONNX inference in a pool
of threads so the event loop keeps answering while a photo is being read. Several photos in
one request are the views of one place, answered together (mode place).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import h3
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from geoloc.errors import GeolocError
from geoloc.inference import MODES
from geoloc.panorama import PanoramaError
from geoloc.predictor import CELLS_NAME, Prediction, Predictor
from geoloc.upload import Form, Limits, UploadError, check_declared_length, read_form

log = logging.getLogger(__name__)

MB = 1_000_000
DEFAULT_REQUEST_BYTES = 50 * MB   # all the photos of one request together
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
# What a phone or a browser sends; Pillow's other decoders (TIFF, PSD, ...) are a larger attack
# surface for nothing a street photo needs. (A phone's MPO file opens through the JPEG one.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
WEB_DIR = Path(__file__).with_name("web")
ASSETS_DIR = Path(__file__).with_name("assets")
# The page loads nothing from elsewhere; the browser enforces it.
# Keys of GET /model that the app fills itself; a snapshot file of that name is not served.
RESERVED = ("cells", "limits", "modes", "default_mode")
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class Cell(BaseModel):
    label: int
    cell: str
    lat: float
    lon: float
    probability: float
    boundary: list[list[float]]  # the H3 hexagon, [[lat, lon], ...]


class Located(BaseModel):
    lat: float
    lon: float
    cell: str
    confidence: float
    top: list[Cell]
    osm_url: str
    mode: str     # how the point was made (geoloc.inference, geoloc.retrieval)
    views: int    # the views answered together, of one place (a panorama: its cut views)
    note: str | None = None   # e.g. views whose EXIF positions lie far apart
    city: str | None = None   # the snapshot's city nearest the answer
    city_km: float | None = None


class Problem(BaseModel):
    detail: str


UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "a JPEG, PNG or WebP; several: the views of one place, "
                                 "answered together in mode place"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K,
                  "default": DEFAULT_TOP_K, "description": "cells to return (or in the query)"},
        "mode": {"type": "string", "enum": list(MODES),
                 "description": "how to make the point (or in the query); default: the mode "
                                "the snapshot was evaluated in, see GET /model"},
    }}}}}}
ERRORS = {status: {"model": Problem, "description": text} for status, text in {
    400: "corrupt or truncated image, malformed body",
    413: "a photo over the byte limit, a request over the byte or file count limit, or an "
         "image over the pixel limit",
    415: "not multipart/form-data, or not a JPEG, PNG or WebP image",
    422: "missing 'image' field, top_k out of 1..50, a mode the snapshot does not serve, "
         "several photos in a mode other than place",
    504: "the prediction took longer than the timeout",
}.items()}


def create_app(snapshot: Path | str, *, max_upload_bytes: int = 20 * MB, max_views: int = 8,
               max_request_bytes: int | None = None, max_pixels: int = 50_000_000,
               timeout_s: float = 30.0) -> FastAPI:
    """The app; a request holds one photo of at most `max_upload_bytes`, or up to `max_views`
    views of one place of at most `max_request_bytes` together (None: 50 MB, or the photo
    limit where that is larger)."""
    if max_request_bytes is None:
        max_request_bytes = max(DEFAULT_REQUEST_BYTES, max_upload_bytes)
    if max_request_bytes < max_upload_bytes:
        raise GeolocError(f"the request limit ({max_request_bytes} bytes) is below the photo "
                          f"limit ({max_upload_bytes} bytes): raise it")
    snapshot = Path(snapshot)
    Image.init()  # registers every decoder, so that Image.open(formats=...) knows WEBP
    # Requests run in parallel on a pool of one thread per core, so each inference runs on its
    # request's thread alone (Predictor's `threads`).
    predictor = Predictor(snapshot, threads=1)
    boundaries = {c["cell"]: [list(p) for p in h3.cell_to_boundary(c["cell"])]
                  for c in predictor.cells}
    limits = {"max_upload_bytes": max_upload_bytes, "max_views": max_views,
              "max_request_bytes": max_request_bytes, "max_pixels": max_pixels,
              "timeout_s": timeout_s}
    upload = Limits(max_upload_bytes, max_views, max_request_bytes)
    about = {**snapshot_info(snapshot), "cells": len(predictor.cells), "limits": limits,
             "modes": list(predictor.modes), "default_mode": predictor.mode}
    base_map = map_data()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="predict")
        try:
            yield
        finally:
            # A prediction past its timeout may still be running: do not wait for it.
            app.state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="geoloc", lifespan=lifespan,
                  description="Where in France was this street photo taken?")
    app.add_exception_handler(UploadError, _upload_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    # Plain answers, on the event loop: they stay quick while the workers are all busy.
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return about

    @app.get("/map.json")
    async def base_map_json() -> dict:
        return base_map

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html",
                            headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.post("/predict", response_model=Located, responses=ERRORS, openapi_extra=UPLOAD_FORM)
    async def predict(request: Request,
                      top_k: Annotated[int | None, Query(ge=1, le=MAX_TOP_K)] = None,
                      mode: str | None = None) -> dict:
        check_declared_length(request.headers, upload)
        form = await read_form(request.headers.get("content-type"), request.stream(), upload)
        images, k = _image_field(form), _top_k(form, top_k)
        mode = _mode(form, mode, predictor, views=len(images))
        job = asyncio.get_running_loop().run_in_executor(
            request.app.state.pool, locate, predictor, images, k, max_pixels, mode)
        try:
            prediction = await asyncio.wait_for(job, timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"the prediction took longer than {timeout_s:g} s") from None
        return answer(prediction, boundaries)

    return app


def locate(predictor: Predictor, images: list[bytes], top_k: int, max_pixels: int,
           mode: str | None = None) -> Prediction:
    """Decode and predict one photo, or the views of one place together (in a worker thread);
    a bad photo raises HTTPException naming it (the first is photo 1)."""
    panoramas = []
    for number, data in enumerate(images, start=1):
        try:
            panoramas.append(check_image(data, max_pixels, predictor))
        except HTTPException as exc:
            if len(images) > 1:
                exc.detail = f"photo {number} of {len(images)}: {exc.detail}"
            raise
    try:
        # A panorama's views are answered together, unless another mode is asked for.
        if len(images) > 1 or (mode in (None, "place") and panoramas[0]):
            return predictor.predict_place(images, top_k)
        (prediction,) = predictor.predict(images, top_k, mode)
    except PanoramaError as exc:
        raise HTTPException(400, f"a 360 panorama that cannot be cut into views: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"corrupt or truncated image: {exc}") from None
    return prediction


def check_image(data: bytes, max_pixels: int, predictor: Predictor) -> bool:
    """Refuse what is not a photo this server reads, from its header alone; whether the
    predictor cuts it into views (a panorama), read from the same header."""
    if not data:
        raise HTTPException(400, "the file in 'image' is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise HTTPException(415, "not an image this server reads: send a JPEG, PNG or WebP "
                                 "photo") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, which fires on opening past twice Image.MAX_IMAGE_PIXELS.
        raise HTTPException(413, f"image too large to decode ({exc}); this server's limit is "
                                 f"{max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"corrupt image header: {exc}") from None
    with image:
        # The header gives the size: refuse a decompression bomb before decoding any pixel.
        width, height = image.size
        panorama = predictor.is_panorama(image)
    if width * height > max_pixels:
        raise HTTPException(413, f"image too large to decode: {width} x {height} = "
                                 f"{width * height} pixels, the limit is {max_pixels}")
    return panorama


def answer(prediction: Prediction, boundaries: dict[str, list]) -> dict:
    top = [{**cell, "boundary": boundaries[cell["cell"]]} for cell in prediction.top]
    return {"lat": prediction.lat, "lon": prediction.lon, "cell": prediction.cell,
            "confidence": prediction.confidence, "top": top,
            "osm_url": osm_url(prediction.lat, prediction.lon), "mode": prediction.mode,
            "views": prediction.views, "note": prediction.note, "city": prediction.city,
            "city_km": prediction.city_km}


def osm_url(lat: float, lon: float) -> str:
    lat, lon = round(lat, 5), round(lon, 5)
    return f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=15/{lat}/{lon}"


def snapshot_info(snapshot: Path) -> dict:
    """Every JSON file of the snapshot but the cell table, by name: model.json always, and what
    the export stage adds when it has it (metrics.json, params.json); an unreadable one is
    skipped, since the predictor does not need it."""
    info = {}
    for path in sorted(snapshot.glob("*.json")):
        if path.name == CELLS_NAME or path.stem in RESERVED:
            continue
        try:
            info[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: skipped, not readable JSON (%s)", path, exc)
    return info


def map_data() -> dict:
    """The page's base map: the outline of France and its neighbours (geoloc/assets, 3 decimals,
    about 50 kB: small enough to send as it is) and the project's cities."""
    return {"outline": json.loads((ASSETS_DIR / "france.geojson").read_text()),
            "cities": json.loads((ASSETS_DIR / "cities.json").read_text())}


def _image_field(form: Form) -> list[bytes]:
    if "image" in form.files:
        return form.files["image"]
    if "image" in form.fields:
        raise UploadError(422, "'image' must be a file upload (multipart with a filename), "
                               "not a text field")
    raise UploadError(422, "missing the file field 'image'")


def _top_k(form: Form, query: int | None) -> int:
    """top_k from the form, else the query (FastAPI checked that one), else the default."""
    if "top_k" not in form.fields:
        return DEFAULT_TOP_K if query is None else query
    text = form.fields["top_k"].strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_TOP_K:
        raise UploadError(422, f"top_k must be an integer from 1 to {MAX_TOP_K}, got {text!r}")
    return int(text)


def _mode(form: Form, query: str | None, predictor: Predictor, views: int) -> str | None:
    """The mode from the form, else the query (None: the snapshot's default); for several
    views of one place, place."""
    mode = form.fields["mode"].strip() if "mode" in form.fields else query
    if views > 1:
        if "place" not in predictor.modes:
            raise UploadError(422, f"{views} photos are answered together as the views of one "
                                   f"place, and this snapshot does not serve the place mode "
                                   f"(exported without its feature index): send one photo")
        if mode not in (None, "place"):
            raise UploadError(422, f"{views} photos are answered together as the views of one "
                                   f"place (mode place), not in mode {mode!r}")
        return "place"
    if mode is None:
        return None
    if mode not in predictor.modes:
        raise UploadError(422, f"mode must be one of {', '.join(predictor.modes)} (this "
                               f"snapshot's), got {mode!r}")
    return mode


async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with one sentence in `detail` like every other error of this app."""
    problems = [f"{'.'.join(str(p) for p in error['loc'][1:]) or 'request'}: {error['msg']}"
                for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


def run(snapshot: Path, host: str, port: int, **limits) -> None:
    """Serve until interrupted (the `geoloc serve` command)."""
    uvicorn.run(create_app(snapshot, **limits), host=host, port=port, log_level="info")


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on a free port; yield its base URL.
    The socket is bound here, before the server starts, so no other process can take the port
    in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
