"""Load benchmark of `geoloc serve` (metrics/bench.json).

Starts the real command on 127.0.0.1 with the exported snapshot, in its own process so that the
clients' Python does not share the server's interpreter, then POSTs real photos from data/raw to
/predict: first one request at a time (unloaded latency), then from `concurrency` threads for
`seconds`, each thread on its own keep-alive connection; then the same load in the retrieval
mode where the snapshot serves it. The server's peak resident memory is read at the end. A
request counts as an error unless it answers 200 with a prediction.
"""

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record  # noqa: E402

PHOTOS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="metrics/bench.json")
    parser.add_argument("--model", type=Path, default=ROOT / "models/export")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()

    bodies = photo_bodies(PHOTOS)
    with serve_command(args.model) as (port, process):
        load(port, bodies, concurrency=2, seconds=2.0)  # warm-up: sessions, caches, pools
        alone = load(port, bodies, concurrency=1, seconds=args.baseline_seconds)
        loaded = load(port, bodies, concurrency=args.concurrency, seconds=args.seconds)
        figures = {}
        if "retrieval" in served_modes(port):
            load(port, bodies, concurrency=2, seconds=2.0, mode="retrieval")
            retrieval = load(port, bodies, concurrency=args.concurrency, seconds=args.seconds,
                             mode="retrieval")
            figures = {"serve_retrieval_requests_per_second":
                       retrieval["requests"] / retrieval["seconds"],
                       "serve_retrieval_p50_ms": retrieval["p50_ms"],
                       "serve_retrieval_p99_ms": retrieval["p99_ms"],
                       "serve_retrieval_errors": retrieval["errors"]}
        figures["serve_peak_rss_mb"] = peak_rss_mb(process.pid)
    record(args.out, {
        "serve_concurrency": args.concurrency,
        "serve_seconds": loaded["seconds"],
        "serve_requests": loaded["requests"],
        "serve_requests_per_second": loaded["requests"] / loaded["seconds"],
        "serve_p50_ms": loaded["p50_ms"],
        "serve_p99_ms": loaded["p99_ms"],
        "serve_errors": loaded["errors"],
        "serve_photos": len(bodies),
        "serve_photo_kb_mean": np.mean([len(b) for b, _ in bodies]) / 1e3,
        "serve_p50_ms_concurrency_1": alone["p50_ms"],
        "serve_requests_per_second_concurrency_1": alone["requests"] / alone["seconds"],
        **figures,
    })


def photo_bodies(count: int) -> list[tuple[bytes, str]]:
    """Multipart bodies of `count` photos spread over data/raw's batches (built once, so the
    clients spend their time waiting on the server, not encoding)."""
    photos = sorted(ROOT.glob("data/raw/*/images/*.jpg"))
    if not photos:
        raise SystemExit("no photo under data/raw: run `dvc repro` first")
    chosen = photos[::max(1, len(photos) // count)][:count]
    return [encode_multipart_formdata({"image": (p.name, p.read_bytes(), "image/jpeg")})
            for p in chosen]


@contextlib.contextmanager
def serve_command(model: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """`geoloc serve` on a free port of 127.0.0.1 until the block ends; yields the port and
    the process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli", "serve", "--model", str(model), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("geoloc serve did not start")
            time.sleep(0.2)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


def served_modes(port: int) -> list[str]:
    """The modes the snapshot serves (GET /model; a server older than modes lists none)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/model")
    return json.loads(connection.getresponse().read()).get("modes", [])


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux's VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise SystemExit(f"no VmHWM in /proc/{pid}/status: peak memory is read on Linux only")


def load(port: int, bodies: list, concurrency: int, seconds: float,
         mode: str | None = None) -> dict:
    """`concurrency` threads POST photos in turn, in `mode` (default: the snapshot's), until
    `seconds` have passed."""
    target = "/predict?top_k=5" + (f"&mode={mode}" if mode else "")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = offset
        while time.perf_counter() < deadline:
            body, content_type = bodies[i % len(bodies)]
            i += concurrency
            sent = time.perf_counter()
            try:
                connection.request("POST", target, body=body,
                                   headers={"Content-Type": content_type})
                response = connection.getresponse()
                ok = response.status == 200 and "cell" in json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                connection.close()  # reconnects on the next request
                ok = False
            with lock:
                latencies.append(time.perf_counter() - sent)
                errors[0] += not ok

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start  # includes the requests in flight at the deadline
    milliseconds = np.array(latencies) * 1e3
    return {"seconds": elapsed, "requests": len(latencies), "errors": errors[0],
            "p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99))}


if __name__ == "__main__":
    main()
