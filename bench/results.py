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
        print(f"{key:40} {figures[key]:.6g}")
