"""The params page's reference: every key of params.yaml, made from the typed params
(geoloc/params.py: type, range, choices, `auto`), params.yaml itself (defaults and comments) and
dvc.yaml (which stages each key re-runs), so the page cannot drift from any of them."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from geoloc.params import AUTO, Params


def leaf_keys(cls: type = Params, prefix: str = "") -> list[tuple[str, dataclasses.Field, object]]:
    """(dotted key, field, type hint) of every leaf of the typed params, in declaration order;
    a field holding another params class is a section, not a leaf."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{key}.")
        else:
            keys.append((key, f, hints[f.name]))
    return keys


def flat_keys(raw: dict, prefix: str = "") -> dict[str, object]:
    """params.yaml as {dotted key: value}; lists are values, as the typed params read them."""
    flat = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            flat.update(flat_keys(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def stage_params(dvc_yaml: dict) -> dict[str, list[str]]:
    """{stage: the params keys it lists} from dvc.yaml (a foreach stage's from its `do`)."""
    listed = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        keys = []
        for entry in body.get("params", []):
            # `- key` reads params.yaml; `- file.yaml: [keys]` reads another file, not this one.
            if isinstance(entry, str):
                keys.append(entry)
        listed[name] = keys
    return listed


def tracked_by(key: str, listed: dict[str, list[str]]) -> list[str]:
    """The stages that track `key` (they list it or a section above it): a change re-runs
    them and what follows them."""
    return [stage for stage, keys in listed.items()
            if any(key == k or key.startswith(f"{k}.") for k in keys)]


def type_name(hint, meta) -> str:
    """The YAML-side type: `int or auto`, `float or null`, `list of int`."""
    args = typing.get_args(hint)
    nullable = isinstance(hint, types.UnionType) and type(None) in args
    if isinstance(hint, types.UnionType):
        skip = (type(None), str) if meta.get("auto") else (type(None),)
        (hint,) = (arg for arg in args if arg not in skip)
    if typing.get_origin(hint) is list:
        name = f"list of {typing.get_args(hint)[0].__name__}"
    else:
        name = hint.__name__
    if meta.get("auto"):
        name += f" or {AUTO}"
    return name + (" or null" if nullable else "")


def allowed(meta) -> str:
    """The range or the choices geoloc.params checks."""
    parts = []
    if meta.get("choices") is not None:
        parts.append(", ".join(f"`{c}`" for c in meta["choices"]))
    for alias, name in meta.get("aliases", {}).items():
        parts.append(f"`{alias}` (= `{name}`)")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    return "; ".join(parts)


def yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def section_text(lines: list[str], section: str) -> str:
    """The lines of params.yaml for one top-level section, as they are written: the comment
    just above it, the section and every line indented under it."""
    key = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    start = key
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    end = next((i for i in range(key + 1, len(lines))
                if lines[i][:1] not in ("", " ", "#")), len(lines))
    # What is left above the next section (blank lines, its own comment) is not this one's.
    while not lines[end - 1].strip() or lines[end - 1].startswith("#"):
        end -= 1
    return "\n".join(lines[start:end])


def params_markdown(root: Path) -> str:
    """One part per top-level section: its lines of params.yaml, then a table of its keys."""
    text = (root / "params.yaml").read_text()
    lines = text.splitlines()
    defaults = flat_keys(yaml.safe_load(text))
    listed = stage_params(yaml.safe_load((root / "dvc.yaml").read_text()))
    parts = []
    for section in (f.name for f in dataclasses.fields(Params)):
        rows = ["| key | default | type | allowed | tracked by |", "|---|---|---|---|---|"]
        for key, f, hint in leaf_keys():
            if key != section and not key.startswith(f"{section}."):
                continue
            stages = tracked_by(key, listed)
            rerun = ", ".join(f"`{s}`" for s in stages) or "no stage: untracked"
            rows.append(f"| `{key}` | `{yaml_value(defaults[key])}` | {type_name(hint, f.metadata)}"
                        f" | {allowed(f.metadata)} | {rerun} |")
        parts.append(f"## `{section}`\n\n```yaml\n{section_text(lines, section)}\n```\n\n"
                     + "\n".join(rows))
    return "\n\n".join(parts)
