"""A command run in a fresh process, timed, with the peak memory of it and all its descendants
(sampled every 20 ms).

Two peaks: resident memory (RSS) summed over the processes, which counts a page shared by
several processes (a memory-mapped file, libraries) once in each, and proportional memory (PSS),
which splits each shared page among the processes that map it, so that the sum is what the
tree takes. Pages of a memory-mapped file count in both while they are resident; the kernel
can drop them under pressure, as it cannot drop anonymous memory.
"""

import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple


class Measured(NamedTuple):
    seconds: float
    peak_mb: float        # RSS of the process tree
    peak_pss_mb: float    # PSS of the process tree
    stdout: str


def run_measured(command: list[str] | str, cwd: Path | None = None,
                 env: dict | None = None) -> Measured:
    """Run `command` (a shell line if a string) and measure it; exit if it fails."""
    # stdout goes to a file: a pipe read only at the end would block a talkative command
    with tempfile.TemporaryFile("w+") as stdout:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, text=True,
                                   shell=isinstance(command, str))
        peak_rss = peak_pss = 0
        while process.poll() is None:
            rss, pss = tree_kib(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        stdout.seek(0)
        output = stdout.read()
    if process.returncode != 0:
        shown = command if isinstance(command, str) else " ".join(command)
        raise SystemExit(f"{shown} failed ({process.returncode})")
    return Measured(seconds, peak_rss / 1024, peak_pss / 1024, output)


def tree_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process and all its descendants, in KiB ((0, 0) once gone)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        rss, pss = (next(int(line.split()[1]) for line in rollup if line.startswith(key))
                    for key in ("Rss:", "Pss:"))
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError, StopIteration, PermissionError):
        return 0, 0
    for child in children:
        child_rss, child_pss = tree_kib(child)
        rss, pss = rss + child_rss, pss + child_pss
    return rss, pss
