"""docs/configuration-reference.md is generated from schemas/config.schema.yaml and kept current.

The generator is scripts/config-reference.py; these tests fail when the committed reference
differs from what the schema, config.yaml and configs/quick.yaml give today (the message names
the command that regenerates it), when a key has no description, and when the generator would
leave out a key, its type, its range or its default.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "config-reference.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_up_to_date() -> None:
    gen = generator()
    committed = gen.OUT.read_text() if gen.OUT.is_file() else ""
    assert committed == gen.render(*gen.load()), (
        f"docs/configuration-reference.md is out of date with schemas/config.schema.yaml "
        f"(or config.yaml, configs/quick.yaml); regenerate it: {gen.COMMAND}")


def test_check_option_reports_a_stale_reference(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                        text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    gen = generator()
    gen.OUT = tmp_path / "stale.md"
    gen.OUT.write_text("# Configuration reference\n")
    gen.REPO = tmp_path
    assert gen.main(["--check"]) == 1
    assert gen.OUT.read_text() == "# Configuration reference\n"  # --check writes nothing


def test_every_key_has_a_description() -> None:
    gen = generator()
    missing = [row.path for row in gen.rows(*gen.load()) if not row.description]
    assert missing == [], (f"add a description to these keys of schemas/config.schema.yaml, "
                           f"then run {gen.COMMAND}: {missing}")


def test_a_new_key_appears_with_type_range_default_and_description() -> None:
    gen = generator()
    schema, paper, quick = gen.load()
    schema = copy.deepcopy(schema)
    schema["properties"]["train"]["properties"]["warmup"] = {
        "type": "integer", "minimum": 0, "maximum": 9, "default": 2,
        "description": "warm-up epochs"}
    schema["properties"]["analysis"]["properties"]["mode"] = {
        "type": "string", "enum": ["fast", "exact"], "description": "how"}
    paper = dict(paper, analysis=dict(paper["analysis"], mode="exact"))
    quick = dict(quick, analysis=dict(quick["analysis"], mode="fast"))
    text = gen.render(schema, paper, quick)
    rows = {line.split(" | ")[0]: line for line in text.splitlines()}
    assert rows["| `train.warmup`"] == (
        "| `train.warmup` | integer | ≥ 0, ≤ 9 | `2` (schema) |  | warm-up epochs |")
    assert rows["| `analysis.mode`"] == ('| `analysis.mode` | string | one of `"fast"`, `"exact"` '
                                         '| `"exact"` (config.yaml) | `"fast"` | how |')
    # every key of the real schema has its row, nested ones included
    paths = {row.path for row in gen.rows(*gen.load())}
    assert {"run_name", "train.overrides.{dataset}.lr", "attack.strong.check_eps",
            "analysis.claims.min_correlation", "data.sources.{dataset}"} <= paths
