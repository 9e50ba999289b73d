"""The guard of `make bench`: this run's metrics/bench.json beside the committed one.

Prints every figure with the committed value and the change in percent, then lists each figure
more than --tolerance worse, in the direction that is worse for it (fewer images per second,
more milliseconds or megabytes), and exits 1 if there is any. Settings of a benchmark (its
concurrency, its photo count, the device) are shown when they changed but never judged.
Figures from another machine do not compare: the results name the machine they came from
(bench_machine), and where the committed ones came from another, the table is shown unjudged.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a benchmark was run with, not what it measured; first, so that the rules below never
# judge them (fetch_latency_ms is the stand-in server's injected latency, not a result).
SETTINGS = re.compile(r"^(bench_machine|serve_(concurrency|seconds|requests|photos|photo_kb_mean)"
                      r"|fetch_(concurrency|images|latency_ms)|features_(photos|size)"
                      r"|data_bench_.*|train_bench_.*)$")
HIGHER_IS_BETTER = re.compile(r"_per_s(_|$)|_per_second(_|$)|speedup|_over_")
LOWER_IS_BETTER = re.compile(r"(_ms|_seconds|_mb|errors)(_|$)")


def direction(key: str) -> int:
    """+1 where a larger value is better, -1 where a smaller one is, 0 for a setting."""
    if SETTINGS.search(key):
        return 0
    if HIGHER_IS_BETTER.search(key):
        return 1
    if LOWER_IS_BETTER.search(key):
        return -1
    return 0


def change(before: float, now: float) -> float:
    """The change in percent of `before` (inf where it grew from 0)."""
    if before == 0:
        return 0.0 if now == 0 else float("inf")
    return 100.0 * (now - before) / abs(before)


def worse(key: str, before, now, tolerance: float) -> bool:
    """Whether `now` is more than `tolerance` percent worse than `before` for this figure."""
    sign = direction(key)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, now))
    if sign == 0 or not numbers:
        return False
    return -sign * change(before, now) > tolerance


def compare(committed: dict, now: dict, tolerance: float) -> tuple[list[str], list[str]]:
    """(the table's lines, the keys of the figures more than `tolerance` percent worse)."""
    lines, flagged = [], []
    width = max(map(len, now), default=0)
    for key in sorted(now):
        value, before = now[key], committed.get(key)
        if before is None:
            lines.append(f"{key:{width}}  {_show(value):>12}  (new)")
            continue
        if not isinstance(value, int | float) or not isinstance(before, int | float):
            if value != before:
                lines.append(f"{key:{width}}  {_show(value):>12}  was {_show(before)}")
            continue
        mark = ""
        if worse(key, before, value, tolerance):
            flagged.append(key)
            mark = "  WORSE"
        elif direction(key) == 0:
            mark = "  (setting)"
        lines.append(f"{key:{width}}  {_show(value):>12}  was {_show(before):>12}  "
                     f"{change(before, value):+7.1f}%{mark}")
    return lines, flagged


def committed_results(repo: Path, path: str, ref: str) -> dict:
    """The results file as `ref` holds it (git), or {} where it holds none."""
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--results", default="metrics/bench.json", help="within the repo")
    parser.add_argument("--against", default="HEAD", help="the commit whose figures compare")
    parser.add_argument("--tolerance", type=float, default=15.0, help="percent")
    args = parser.parse_args()

    now = json.loads((args.repo / args.results).read_text())
    committed = committed_results(args.repo, args.results, args.against)
    if not committed:
        print(f"{args.against} has no {args.results}: nothing to compare with")
        return
    same_machine = committed.get("bench_machine") == now.get("bench_machine")
    if not same_machine:
        print(f"note: the committed figures come from another machine "
              f"({committed.get('bench_machine')}; this one: {now.get('bench_machine')}): "
              f"they do not compare, and nothing is judged")
    lines, flagged = compare(committed, now, args.tolerance)
    print("\n".join(lines))
    if flagged and same_machine:
        print(f"\n{len(flagged)} figure(s) more than {args.tolerance:g}% worse than at "
              f"{args.against}:")
        print("\n".join(f"  {key}" for key in flagged))
        sys.exit(1)
    print(f"\nno figure more than {args.tolerance:g}% worse than at {args.against}")


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
