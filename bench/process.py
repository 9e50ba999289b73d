"""A command run in a fresh process, timed, with the peak resident memory of it and all its
descendants (sampled every 20 ms; shared pages counted in each process)."""

import subprocess
import time
from pathlib import Path


def run_measured(command: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """(seconds, peak resident MB of the process tree, stdout) of `command`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_kib(process.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return seconds, peak / 1024, process.stdout.read()


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB (0 once gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0
    return rss + sum(tree_rss_kib(child) for child in children)
