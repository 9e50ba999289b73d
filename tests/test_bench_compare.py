"""bench/compare.py, the guard of `make bench`: each figure judged in its own direction, settings
never judged, and a run with a slowdown flagged against the committed figures of a git repo."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from compare import compare, direction, worse  # noqa: E402

MACHINE = "Some CPU, 2 cores"


@pytest.mark.parametrize(("key", "sign"), [
    ("serve_requests_per_second", 1), ("loader_cached_images_per_s_224", 1),
    ("cache_build_speedup", 1), ("train_loop_over_step_cnn_64px_fp32", 1),
    ("serve_p99_ms", -1), ("serve_p50_ms_concurrency_1", -1), ("features_seconds", -1),
    ("serve_peak_rss_mb", -1), ("serve_errors", -1),
    # settings of a benchmark, not results
    ("serve_concurrency", 0), ("serve_seconds", 0), ("fetch_latency_ms", 0),
    ("train_bench_device", 0), ("bench_machine", 0), ("features_size", 0),
])
def test_each_figure_has_the_direction_that_is_better_for_it(key, sign):
    assert direction(key) == sign


def test_a_figure_is_worse_only_past_the_tolerance_in_its_own_direction():
    assert worse("serve_requests_per_second", 100.0, 84.0, tolerance=15)
    assert not worse("serve_requests_per_second", 100.0, 86.0, tolerance=15)
    assert not worse("serve_requests_per_second", 100.0, 300.0, tolerance=15)
    assert worse("serve_p99_ms", 10.0, 11.6, tolerance=15)
    assert not worse("serve_p99_ms", 10.0, 5.0, tolerance=15)
    assert worse("serve_errors", 0, 3, tolerance=15)
    assert not worse("serve_concurrency", 8, 1, tolerance=15)


def test_the_table_shows_every_figure_beside_the_committed_one():
    lines, flagged = compare({"serve_p99_ms": 10.0, "serve_concurrency": 8},
                             {"serve_p99_ms": 20.0, "serve_concurrency": 4, "new_per_s": 1.0},
                             tolerance=15)
    assert flagged == ["serve_p99_ms"]
    table = "\n".join(lines)
    assert "+100.0%  WORSE" in table and "-50.0%  (setting)" in table and "(new)" in table


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                        "PATH": "/usr/bin:/bin"})


def _guard(repo, results: dict) -> subprocess.CompletedProcess:
    (repo / "bench.json").write_text(json.dumps(results))
    return subprocess.run([sys.executable, str(ROOT / "bench/compare.py"), "--repo", str(repo),
                           "--results", "bench.json"], capture_output=True, text=True)


def test_the_guard_flags_a_slowdown_against_the_committed_figures(tmp_path):
    committed = {"bench_machine": MACHINE, "serve_requests_per_second": 500.0,
                 "serve_p99_ms": 20.0}
    _git(tmp_path, "init", "-q")
    (tmp_path / "bench.json").write_text(json.dumps(committed))
    _git(tmp_path, "add", "bench.json")
    _git(tmp_path, "commit", "-q", "-m", "figures")

    steady = _guard(tmp_path, {**committed, "serve_requests_per_second": 480.0})
    assert steady.returncode == 0, steady.stdout
    assert "no figure more than 15% worse" in steady.stdout

    slower = _guard(tmp_path, {**committed, "serve_requests_per_second": 250.0,
                               "serve_p99_ms": 45.0})
    assert slower.returncode == 1
    flagged = slower.stdout.split("worse than at HEAD:")[1].split()
    assert flagged == ["serve_p99_ms", "serve_requests_per_second"]

    elsewhere = _guard(tmp_path, {**committed, "bench_machine": "Another CPU, 64 cores",
                                  "serve_requests_per_second": 250.0})
    assert elsewhere.returncode == 0 and "another machine" in elsewhere.stdout
