"""The HTTP API page: geoloc.serve's FastAPI app's own OpenAPI schema, rendered as tables.

The app is built at docs-build time without a trained model: the schema comes from its routes,
and the snapshot only answers requests, so a stand-in predictor with no cells (over an empty
snapshot folder) builds the very app `geoloc serve` runs, on a fresh clone with no pipeline
outputs and without PyTorch."""

from __future__ import annotations

import json
import tempfile
from unittest import mock


class _NoSnapshot:
    """What create_app reads of a Predictor before it serves: cells, modes, default mode."""

    def __init__(self, snapshot, threads=None):
        from geoloc.inference import MODES

        self.cells, self.modes, self.mode = [], list(MODES), MODES[0]


def openapi_schema() -> dict:
    from geoloc import serve

    with tempfile.TemporaryDirectory() as empty, mock.patch.object(serve, "Predictor",
                                                                   _NoSnapshot):
        return serve.create_app(empty).openapi()


def _type(schema: dict) -> str:
    """A schema in a few words: `string`, `array of Cell`, `integer or null`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if schema.get("format") == "binary":
        return "file"
    if "enum" in schema:
        return f"{kind}, one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    return kind


def _limits(schema: dict) -> str:
    """min, max and default, also of the alternatives of `X or null`."""
    words = [f"{name} {schema[key]}" for key, name in
             (("minimum", "min"), ("maximum", "max"), ("default", "default")) if key in schema]
    return ", ".join([*words, *filter(None, map(_limits, schema.get("anyOf", [])))])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _properties(schema: dict) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | type | required | limits | description |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        rows.append(f"| `{name}` | {_type(prop)} | {'yes' if name in required else 'no'} | "
                    f"{_limits(prop)} | {_cell(prop.get('description', ''))} |")
    return rows


def _operation(path: str, method: str, op: dict) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", "", op.get("summary", "")]
    if op.get("description"):
        lines += ["", op["description"]]
    params = op.get("parameters", [])
    if params:
        lines += ["", "Parameters:", "", "| name | in | type | required | limits |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | "
                  f"{'yes' if p.get('required') else 'no'} | {_limits(p.get('schema', {}))} |"
                  for p in params]
    for content_type, body in op.get("requestBody", {}).get("content", {}).items():
        lines += ["", f"Request body, `{content_type}`:", "", *_properties(body["schema"])]
    lines += ["", "Responses:", "", "| status | meaning | body |", "|---|---|---|"]
    for status, response in op.get("responses", {}).items():
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | "
                     f"{_type(schema) if schema else ''} |")
    return lines


def api_markdown(schema: dict) -> str:
    info = schema["info"]
    lines = [f"OpenAPI {schema['openapi']}, app `{info['title']}` {info.get('version', '')}: "
             f"{info.get('description', '')}", "", "## Endpoints", ""]
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            lines += [*_operation(path, method, op), ""]
    lines += ["## Schemas", ""]
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        lines += [f"### {name}", "", *_properties(component), ""]
    return "\n".join(lines)


def openapi_json(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
