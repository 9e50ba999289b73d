"""Mutation testing of the core modules (`make mutate`, metrics/mutation.json): mutmut changes
one thing at a time in a module (an operator, a constant, a call's argument, ...) and runs the
fast tests of that module on each change. A change no test notices (a surviving mutant) is a
line the tests do not pin down, unless it is equivalent: listed, with why, in
bench/equivalent_mutants.txt.

Each module runs against its own tests only, in a copy of the repository under
build/mutation/<module>: its core helpers are called by nearly every test of the suite, and a
surviving mutant would otherwise run them all.

    python bench/mutation.py                          # every module, about an hour on 2 cores
    python bench/mutation.py --modules geo losses     # some; their entries are replaced
    python bench/mutation.py --retest                 # after adding tests: the survivors only

--retest re-runs only the mutants the last run of a module left uncaught, against the tests as
they are now: the mutants are the same as long as the module is (where it changed, the module
runs in full).

Per module: mutants, killed, timeout (a mutant that makes the tests loop: caught), survived,
no_tests (a line no selected test runs), score (killed and timeout over mutants), the survivors
listed as equivalent and those left unexplained, and the seconds the full run took (and the
last --retest, retest_seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "bench" / "equivalent_mutants.txt"

# Each module and the fast tests that cover it.
MODULES = {
    "geo": ("geoloc/geo.py", ["tests/test_geo.py"]),
    "metrics": ("geoloc/metrics.py", ["tests/test_evaluate.py", "tests/test_crossval.py"]),
    "inference": ("geoloc/inference.py", ["tests/test_evaluate.py", "tests/test_predictor.py"]),
    "retrieval": ("geoloc/retrieval.py", ["tests/test_retrieval.py", "tests/test_evaluate.py"]),
    "losses": ("geoloc/losses.py", ["tests/test_losses.py"]),
    "cells": ("geoloc/data/cells.py", ["tests/test_index_and_splits.py"]),
    "splits": ("geoloc/data/splits.py", ["tests/test_index_and_splits.py"]),
}
# What the tests read besides geoloc/ and tests/.
ALSO_COPY = ["params.yaml", "dvc.yaml", "stages", "data/cities.csv"]
# mutmut's statuses, as `mutmut results --all true` prints them.
CAUGHT = {"killed", "timeout"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "mutation.json")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--retest", action="store_true",
                        help="re-run only the mutants the last run left uncaught")
    args = parser.parse_args()

    equivalent = equivalent_mutants(EQUIVALENT.read_text(encoding="utf-8"))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.modules:
        path, tests = MODULES[name]
        print(f"{path}: mutating, against {' '.join(tests)}", flush=True)
        results[name] = run_module(name, path, tests, args.workers, equivalent,
                                   results.get(name) if args.retest else None)
        print(f"{path}: {summary(results[name])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".json.partial")
        partial.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        partial.replace(args.out)


def run_module(name: str, path: str, tests: list[str], workers: int,
               equivalent: dict[str, str], last: dict | None) -> dict:
    """Mutate one module in a fresh copy of the repository and count what its tests caught;
    with the `last` result of a run whose copy is still there and whose module is unchanged,
    re-run only the mutants it left uncaught."""
    work = WORK / name
    retest = (last is not None and (work / path).exists()
              and (work / path).read_bytes() == (ROOT / path).read_bytes())
    if not retest:
        shutil.rmtree(work, ignore_errors=True)
    copy_repository(work)
    write_config(work / "pyproject.toml", path, tests)
    mutmut = Path(sys.executable).with_name("mutmut")
    again = last["equivalent"] + last["unexplained"] if retest else []
    started = time.monotonic()
    with open(work / "mutmut.log", "w") as log:
        # mutmut's exit status says nothing of the score; its log has what went wrong
        run = subprocess.run([str(mutmut), "run", "--max-children", str(workers), *again],
                             cwd=work, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    listed = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=work,
                            capture_output=True, text=True).stdout
    statuses = parse_results(listed)
    if run.returncode != 0 or not statuses:
        raise SystemExit(f"{path}: mutmut failed (exit {run.returncode}); see {work}/mutmut.log")
    result = tally(statuses, equivalent, seconds)
    if retest:   # `seconds` stays the full run's
        result |= {"seconds": last["seconds"], "retest_seconds": round(seconds)}
    return result


def copy_repository(work: Path) -> None:
    """The files git knows under geoloc/ and tests/, and ALSO_COPY; mutmut copies them again
    into work/mutants, where it writes the mutants."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z", "geoloc", "tests", *ALSO_COPY], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / name)
    # mutmut copies ALSO_COPY's files into mutants/ but not their folders
    for name in ALSO_COPY:
        (work / "mutants" / name).parent.mkdir(parents=True, exist_ok=True)


def write_config(pyproject: Path, path: str, tests: list[str]) -> None:
    """The repository's pyproject.toml with a [tool.mutmut] section for one module."""
    config = f"""
[tool.mutmut]
source_paths = ["geoloc"]
only_mutate = [{json.dumps(path)}]
also_copy = {json.dumps(ALSO_COPY)}
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = {json.dumps(tests)}
# torch and onnxruntime are not fork-safe once used: fork each mutant from a clean server
process_isolation = "forkserver"
"""
    shutil.copy2(ROOT / "pyproject.toml", pyproject)
    with open(pyproject, "a", encoding="utf-8") as file:
        file.write(config)


def parse_results(listed: str) -> dict[str, str]:
    """{mutant: status} from `mutmut results --all true` ("    name: status" lines)."""
    return dict(re.findall(r"^\s+(\S+): (.+)$", listed, flags=re.MULTILINE))


def equivalent_mutants(text: str) -> dict[str, str]:
    """{mutant: why} from the equivalent-mutants file: `name: why` lines, # comments."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, why = line.partition(":")
            found[name.strip()] = why.strip()
    return found


def tally(statuses: dict[str, str], equivalent: dict[str, str], seconds: float) -> dict:
    counts = {status: sum(s == status for s in statuses.values())
              for status in ("killed", "timeout", "survived", "no tests")}
    missed = sorted(name for name, status in statuses.items() if status not in CAUGHT)
    return {"mutants": len(statuses), "killed": counts["killed"], "timeout": counts["timeout"],
            "survived": counts["survived"], "no_tests": counts["no tests"],
            "other": len(statuses) - sum(counts.values()),
            "score": round(sum(s in CAUGHT for s in statuses.values()) / len(statuses), 4),
            "equivalent": sorted(name for name in missed if name in equivalent),
            "unexplained": [name for name in missed if name not in equivalent],
            "seconds": round(seconds)}


def summary(result: dict) -> str:
    return (f"{result['mutants']} mutants, {result['killed']} killed, {result['timeout']} "
            f"timed out, {result['survived']} survived, {result['no_tests']} without tests: "
            f"score {result['score']:.1%}; {len(result['equivalent'])} equivalent, "
            f"{len(result['unexplained'])} unexplained ({result['seconds']} s)")


if __name__ == "__main__":
    main()
