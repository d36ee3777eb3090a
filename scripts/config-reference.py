#!/usr/bin/env python3
"""Write docs/configuration-reference.md from schemas/config.schema.yaml.

    .venv/bin/python scripts/config-reference.py            # (re)write the reference
    .venv/bin/python scripts/config-reference.py --check    # exit 1 when it is out of date

Every key of the schema becomes one row: its path (``{dataset}`` for a key that is any dataset
name, ``[]`` for the items of a list), type, allowed values, default and description. The
default is the schema's ``default`` where it has one, else the value in ``config.yaml`` (the
paper profile, which every run reads first and which ``--configfile`` files override key by
key); the quick column shows what ``configs/quick.yaml`` sets on top. The script reads whatever
the schema contains: keys added to it appear on the next run (tests/test_config_reference.py
fails while the committed file is out of date).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"
PAPER = REPO / "config.yaml"
QUICK = REPO / "configs" / "quick.yaml"
OUT = REPO / "docs" / "configuration-reference.md"
COMMAND = ".venv/bin/python scripts/config-reference.py"
MISSING = object()
MAX_VALUE = 60  # characters of a value shown in a cell


@dataclass(frozen=True)
class Row:
    path: str
    required: bool
    type: str
    allowed: str
    default: str
    quick: str
    description: str


def resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with its local ``$ref`` merged in (the referring node's own keys win)."""
    node = dict(node)
    while "$ref" in node:
        ref = node.pop("$ref")
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref are supported: {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **node}
    return node


def type_of(node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(type_of(resolve(n, root), root) for n in node.get("oneOf", [])
                           + node.get("anyOf", []))
    kinds = node.get("type")
    if kinds is None:
        return "object" if "properties" in node else "any"
    kinds = kinds if isinstance(kinds, list) else [kinds]
    names = []
    for kind in kinds:
        if kind == "array":
            items = resolve(node.get("items") or {}, root)
            names.append(f"list of {type_of(items, root)}")
        elif kind == "object" and ("patternProperties" in node
                                   or isinstance(node.get("additionalProperties"), dict)):
            values = (list((node.get("patternProperties") or {}).values())
                      or [node["additionalProperties"]])
            names.append(f"mapping to {type_of(resolve(values[0], root), root)}")
        else:
            names.append(kind)
    return " or ".join(names)


def constraints(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"]))
    if "const" in node:
        out.append(f"`{json.dumps(node['const'])}`")
    bounds = [(key, sign) for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                            ("maximum", "≤"), ("exclusiveMaximum", "<"))
              if key in node]
    if bounds:
        out.append(", ".join(f"{sign} {node[key]}" for key, sign in bounds))
    if "not" in node and "const" in node["not"]:
        out.append(f"≠ {json.dumps(node['not']['const'])}")
    if "pattern" in node:
        out.append(f"matches `{node['pattern']}`")
    if "minLength" in node:
        out.append(f"at least {node['minLength']} character(s)")
    for key, text in (("minItems", "at least {} item(s)"), ("maxItems", "at most {} item(s)"),
                      ("minProperties", "at least {} key(s)")):
        if key in node:
            out.append(text.format(node[key]))
    if node.get("uniqueItems"):
        out.append("no duplicates")
    if node.get("type") == "array" or "items" in node:
        items = resolve(node.get("items") or {}, root)
        inner = constraints(items, root)
        if inner and "properties" not in items:
            out.append("each item: " + "; ".join(inner))
    for alt in node.get("oneOf", []) + node.get("anyOf", []):
        inner = constraints(resolve(alt, root), root)
        if inner:
            out.append(f"{type_of(resolve(alt, root), root)}: " + "; ".join(inner))
    return out


def lookup(config: Any, parts: list[str]) -> Any:
    for part in parts:
        if part.startswith("{") or part.endswith("[]") or not isinstance(config, Mapping):
            return MISSING
        if part not in config:
            return MISSING
        config = config[part]
    return config


def show(value: Any) -> str:
    if value is MISSING:
        return ""
    text = json.dumps(value, separators=(", ", ": "))
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE - 1] + "…"
    return f"`{text}`"


def walk(node: Mapping[str, Any], root: Mapping[str, Any], parts: list[str],
         required: bool, paper: Any, quick: Any) -> Iterator[Row]:
    node = resolve(node, root)
    if parts:
        if "default" in node:
            default = f"{show(node['default'])} (schema)"
            value = lookup(paper, parts)
            if value is not MISSING and value != node["default"]:
                default += f"; config.yaml sets {show(value)}"
        elif any(p.startswith("{") or p == "[]" for p in parts):
            default = ""  # one of many keys or items: the enclosing key's row shows the value
        elif "properties" in node:
            default = ""  # its keys' rows show the values
        else:
            value = lookup(paper, parts)
            default = f"{show(value)} (config.yaml)" if value is not MISSING else "not set"
        quick_value = "" if "properties" in node else show(lookup(quick, parts))
        yield Row(".".join(parts).replace(".[]", "[]"), required, type_of(node, root),
                  "; ".join(constraints(node, root)), default, quick_value,
                  " ".join(str(node.get("description", "")).split()))
    needed = set(node.get("required", []))
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, root, [*parts, name], name in needed, paper, quick)
    for pattern, child in (node.get("patternProperties") or {}).items():
        yield from walk(child, root, [*parts, placeholder(pattern)], False, paper, quick)
    items = node.get("items")
    if isinstance(items, Mapping) and "properties" in resolve(items, root):
        yield from walk(items, root, [*parts, "[]"], False, paper, quick)


def placeholder(pattern: str) -> str:
    """The name shown for any key matching ``pattern``: ``{dataset}`` where the keys are
    dataset names (every pattern property of this schema), else ``{name}``."""
    return "{dataset}" if pattern == "^[A-Za-z][A-Za-z0-9_]*$" else "{name}"


def rows(schema: Mapping[str, Any], paper: Any, quick: Any) -> list[Row]:
    return list(walk(schema, schema, [], True, paper, quick))


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(schema: Mapping[str, Any], paper: Any, quick: Any) -> str:
    lines = [
        "# Configuration reference",
        "",
        f"<!-- generated by `{COMMAND}` from schemas/config.schema.yaml: do not edit -->",
        "",
        "Every key of the workflow configuration, generated from "
        "[`schemas/config.schema.yaml`](../schemas/config.schema.yaml), which the workflow "
        "checks every configuration against before any job runs. A run reads `config.yaml` "
        "(the paper profile) first; each `--configfile` file overrides it key by key (nested "
        "keys merge, lists replace). **default**: the schema's `default` where it has one "
        "(marked *schema*; where `config.yaml` sets another value, that one too), else the value "
        "in `config.yaml`; *not set* means the key is "
        "optional and absent from both (its description says what happens then). **quick**: "
        "the value `configs/quick.yaml` sets, where it sets one. `{dataset}` stands for a "
        "dataset name, `[]` for each item of a list. How the profiles use these keys: "
        "[profiles.md](profiles.md).",
        "",
    ]
    every = rows(schema, paper, quick)
    sections: dict[str, list[Row]] = {}
    for r in every:  # top-level keys without keys of their own share the first table
        top = r.path.split(".")[0].split("[")[0].split("{")[0]
        sections.setdefault(top, []).append(r)
    plain = [r for group in sections.values() if len(group) == 1 for r in group]
    tables = [("Top-level keys", plain)] + [
        (f"`{name}`", group) for name, group in sections.items() if len(group) > 1]
    for title, section_rows in tables:
        lines += [f"## {title}", ""]
        lines += ["| key | type | allowed | default | quick | description |",
                  "|---|---|---|---|---|---|"]
        for r in section_rows:
            key = f"`{r.path}`" + (" (required)" if r.required else "")
            lines.append("| " + " | ".join(cell(c) for c in (
                key, r.type, r.allowed, r.default, r.quick, r.description)) + " |")
        lines.append("")
    return "\n".join(lines)


def load() -> tuple[dict[str, Any], Any, Any]:
    return (yaml.safe_load(SCHEMA.read_text()), yaml.safe_load(PAPER.read_text()),
            yaml.safe_load(QUICK.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1, writing nothing, when the committed reference differs")
    args = parser.parse_args(argv)
    text = render(*load())
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(REPO)} is out of date; regenerate it: {COMMAND}",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
