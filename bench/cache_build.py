"""One cache build, timed, with the builder's peak memory: bench/data.py runs it in a fresh
process and samples the memory of its workers too.

Kept apart from bench/data.py so that neither this process nor its spawned workers import
torch: the figures are the build's own.

usage: cache_build.py ROWS.parquet RAW_DIR OUT_DIR SIZE WORKERS DRAFT(0|1)
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd

from geoloc.data.cache import build_cache, write_cache_index


def main(rows_file: str, raw: str, out: str, size: str, workers: str, draft: str) -> None:
    rows = pd.read_parquet(rows_file)
    Path(out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    entry = build_cache(rows, Path(raw), [int(size)], Path(out), "train", int(workers),
                        draft=draft == "1")
    seconds = time.perf_counter() - started
    write_cache_index({"train": entry}, Path(out))
    # VmHWM, this process's own peak (getrusage's maxrss would also count the parent's
    # memory, which exec inherits).
    status = Path("/proc/self/status").read_text()
    hwm_kib = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"images_per_s": len(rows) / seconds, "seconds": seconds,
                      "builder_peak_rss_mb": hwm_kib / 1024}))


if __name__ == "__main__":
    main(*sys.argv[1:])
