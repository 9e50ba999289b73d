"""The manual and the README: the site builds with `mkdocs build --strict` (so a broken link or
anchor, or a page left out of the nav, fails the suite), its generated pages hold what they are
made from (every key of params.yaml, every stage of dvc.yaml, every path of the app's OpenAPI
schema), and the README stays short and gives the very commands the tests run."""

import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_own_photos
import test_promise
import yaml
from conftest import ROOT
from test_dvc_deps import leaves

README_MAX_LINES = 250
# What `make docs` runs (test_make_docs_is_this_build checks the Makefile), here into a folder
# of the test's own so that the workspace's site/ is left alone.
BUILD = ["build", "--strict"]
# `make demo` runs `dvc repro`, as the end-to-end tests do (tests/test_pipeline.py's
# tiny_project); that module has no constant for it, so its source is checked for the call.
REPRO = ["dvc", "repro"]


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *BUILD, "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True,
        # mkdocs-material's notice about its successor is not a build warning; keep it out.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(out)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def nav_pages(nav: list) -> list[str]:
    """The markdown files of mkdocs.yml's nav, at any depth."""
    pages = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def mkdocs_config() -> dict:
    # The config names a Python function (the mermaid fence) by a YAML tag: read it as text.
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)


def makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def code_commands(markdown: str) -> list[list[str]]:
    """Every command of the markdown's bash blocks, as argv (comments dropped, `\\` lines
    joined)."""
    commands = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", markdown, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def section(markdown: str, heading: str) -> str:
    """From the heading to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(f"\n{heading}\n")
    rest = markdown[start + len(heading) + 2:]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def test_make_docs_is_this_build():
    assert any(argv[-3].endswith("mkdocs") and argv[-2:] == BUILD
               for argv in map(shlex.split, makefile_recipe("docs")))


def test_every_nav_page_is_built(site):
    pages = nav_pages(mkdocs_config()["nav"])
    assert len(pages) == len(set(pages))
    for page in pages:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), page


def test_the_build_fails_on_a_page_out_of_the_nav_and_on_broken_links(tmp_path):
    """The strictness is real: a copy of the manual with an orphan page, a link to no page and
    a link to no anchor does not build, and the output names each."""
    docs = shutil.copytree(ROOT / "docs", tmp_path / "docs",
                           ignore=shutil.ignore_patterns("hooks", "__pycache__"))
    (docs / "orphan.md").write_text("# Not in the nav\n")
    with open(docs / "index.md", "a") as index:
        index.write("\n[a page](nowhere.md) and [an anchor](pipeline.md#nowhere)\n")
    hooks = "docs/hooks/generated_pages.py"
    config = (ROOT / "mkdocs.yml").read_text()
    assert f"- {hooks}" in config
    (tmp_path / "mkdocs.yml").write_text(config.replace(f"- {hooks}", f"- {ROOT / hooks}"))
    result = build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert result.returncode != 0
    for named in ("orphan.md", "nowhere.md", "#nowhere"):
        assert named in result.stderr, named


def test_the_params_page_lists_every_key_of_params_yaml(site):
    html = (site / "params/index.html").read_text()
    listed = re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", html)
    assert len(listed) == len(set(listed))
    assert set(listed) == leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))


def test_the_stage_graph_has_every_stage_of_dvc_yaml(site):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    batches = yaml.safe_load((ROOT / "params.yaml").read_text())["batches"]
    names = [f"{name}@{batch}" for name, stage in stages.items() if "foreach" in stage
             for batch in batches] + [name for name, stage in stages.items()
                                      if "foreach" not in stage]
    graph = re.search(r'class="mermaid"><code>(.*?)</code>',
                      (site / "pipeline/index.html").read_text(), re.DOTALL)
    assert graph, "no mermaid graph on the pipeline page"
    assert set(re.findall(r'\["(.+?)"\]', graph.group(1))) == set(names)


def test_the_api_page_has_every_path_of_the_apps_schema(site):
    schema = json.loads((site / "openapi.json").read_text())
    html = (site / "api/index.html").read_text()
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in html, (method, path)


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_the_readme_links_into_the_manual(site):
    """Its links to docs/ work on GitHub (the file exists) and in the site (the anchor does)."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(docs/([^)#]+\.md)(?:#([^)]+))?\)", readme)
    assert links and {page for page, _ in links} <= set(nav_pages(mkdocs_config()["nav"]))
    for page, anchor in links:
        assert (ROOT / "docs" / page).is_file(), page
        if anchor:
            html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
            assert f'id="{anchor}"' in html.read_text(), (page, anchor)


def test_the_readmes_two_commands_are_the_ones_the_tests_run():
    readme = (ROOT / "README.md").read_text()
    assert code_commands(section(readme, "## Two commands")) == [["make", "demo"],
                                                                 ["make", "test"]]
    # make demo runs the pipeline as the end-to-end tests do; make test runs this suite.
    assert any(shlex.split(line) == REPRO for line in makefile_recipe("demo"))
    assert 'run(["dvc", "repro"], template)' in (ROOT / "tests/test_pipeline.py").read_text()
    assert any(shlex.split(line)[-2:] == ["-m", "pytest"] for line in makefile_recipe("test"))


def test_the_readmes_experiment_is_the_one_the_tests_run():
    commands = code_commands(section((ROOT / "README.md").read_text(), "## Experiments"))
    assert test_promise.EXPERIMENT in commands
    promise = inspect.getsource(test_promise.test_repro_exp_run_metrics_diff_and_push)
    for argv in (["dvc", "metrics", "diff"], ["dvc", "push"]):
        assert argv in commands, argv
        assert f"run({json.dumps(argv)}, repo)" in promise, argv


@pytest.mark.parametrize("page", ["README.md", "docs/data-own-photos.md"])
def test_the_preset_is_the_one_the_tests_run(page):
    tested = ["dvc", "exp", "run", "-n", "own-photos",
              *[arg for override in test_own_photos.DATA + test_own_photos.PRESET
                for arg in ("-S", override)]]
    given = [argv for argv in code_commands((ROOT / page).read_text())
             if argv[:3] == ["dvc", "exp", "run"] and "own-photos" in argv]
    assert given == [tested]
