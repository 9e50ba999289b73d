"""metrics/bench.json: every benchmark adds or replaces its own figures, the others stay."""

import json
from pathlib import Path

from geoloc.io import write_json


def record(path: str | Path, figures: dict) -> None:
    path = Path(path)
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(figures)
    write_json(results, path)
    for key in sorted(figures):
        value = figures[key]
        print(f"{key:40} {value:.6g}" if isinstance(value, int | float) else f"{key:40} {value}")
