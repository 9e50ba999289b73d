"""mkdocs hooks (mkdocs.yml `hooks:`): the parts of the manual made from the project at build
time, so they cannot drift from it.

A page asks for a part with a marker line, `<!-- generated: NAME -->`; on GitHub the marker
is invisible and the page's own text says what the built site shows there. The plots a page
shows are the git-tracked PNGs of plots/, linked as `../plots/...` so that the same link works
on GitHub; the build copies them into the site and points the links at the copies.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from http_api import api_markdown, openapi_json, openapi_schema
from mkdocs.structure.files import File
from params_reference import params_markdown
from stage_graph import stage_graph_markdown

ROOT = Path(__file__).resolve().parents[2]   # the project: params.yaml, dvc.yaml, geoloc/
MARKER = re.compile(r"^<!-- generated: ([a-z_]+) -->$", re.MULTILINE)
PLOT_LINK = re.compile(r"\]\(((?:\.\./)*)\.\./plots/")
OPENAPI_FILE = "openapi.json"


@functools.cache
def _schema() -> dict:
    return openapi_schema()


GENERATORS = {
    "params": lambda: params_markdown(ROOT),
    "stage_graph": lambda: stage_graph_markdown(ROOT),
    "http_api": lambda: api_markdown(_schema()),
}


def on_files(files, config):
    for png in sorted((ROOT / "plots").rglob("*.png")):
        files.append(File.generated(config, png.relative_to(ROOT).as_posix(),
                                    abs_src_path=str(png)))
    files.append(File.generated(config, OPENAPI_FILE, content=openapi_json(_schema())))
    return files


def on_page_markdown(markdown, page, config, files):
    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: no generator named {name!r} "
                             f"(known: {', '.join(GENERATORS)})")
        return GENERATORS[name]()

    # One `../` less: the site keeps plots/ beside the pages, as docs/ sits beside plots/.
    return PLOT_LINK.sub(r"](\1plots/", MARKER.sub(generate, markdown))
