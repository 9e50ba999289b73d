"""metrics/bench.json: every benchmark adds or replaces its own figures, the others stay, and
the file names the machine they were measured on (bench/compare.py compares only like with
like)."""

import json
import os
import platform
from pathlib import Path

from geoloc.io import write_json


def record(path: str | Path, figures: dict) -> None:
    path = Path(path)
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(figures)
    results["bench_machine"] = machine()
    write_json(results, path)
    for key in sorted(figures):
        value = figures[key]
        print(f"{key:40} {value:.6g}" if isinstance(value, int | float) else f"{key:40} {value}")


def machine() -> str:
    """The processor's model and the cores this process may use: what the figures depend on
    beyond the code."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {len(os.sched_getaffinity(0))} cores"
