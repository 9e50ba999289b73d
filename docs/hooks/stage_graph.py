"""The pipeline page's stage graph: `dvc dag --mermaid` on the project's dvc.yaml, run at build
time (it reads dvc.yaml only, no data), so the drawing is the graph DVC runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def stage_graph_markdown(root: Path) -> str:
    # The venv's DVC, as `make docs` has it; no analytics call from a docs build.
    result = subprocess.run([sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=root,
                            capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"dvc dag --mermaid failed ({result.returncode}):\n{result.stderr}")
    return f"```mermaid\n{result.stdout.strip()}\n```"
