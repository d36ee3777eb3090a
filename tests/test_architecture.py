"""The package's layering, as docs/architecture.md states it, holds for every import.

The layer table of docs/architecture.md is the single statement of the layers: every module of
``src/jacreg`` must be in it exactly once, a module may import (at the top or inside a function)
only modules of its own layer or of a lower-numbered one, ``jacreg.workflow`` imports nothing
else of the package and nothing outside it imports it, and the module-level imports have no
cycle. A new module fails the test until it is placed in the table.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "jacreg"
DOC = REPO / "docs" / "architecture.md"
WORKFLOW = "workflow"


def layers() -> dict[str, tuple[int, str]]:
    """module (relative to jacreg) -> (rank, layer name), from the table after the marker."""
    text = DOC.read_text()
    table = text.split("<!-- layers: tests/test_architecture.py -->", 1)[1].strip()
    found: dict[str, tuple[int, str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, modules = [cell.strip() for cell in line.strip("|").split("|")][:2]
        number = re.match(r"^(\d+) ", name)
        rank = int(number.group(1)) if number else 99  # the workflow layer: checked apart
        for module in re.findall(r"`([\w.]+)`", modules):
            assert module not in found, f"{module} is in two layers of {DOC.name}"
            found[module] = (rank, name)
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        out[".".join(parts)] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """jacreg modules ``path`` imports, relative to jacreg (``from jacreg import x`` -> x)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "jacreg" or node.module.startswith("jacreg.")):
            base = node.module.removeprefix("jacreg").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}".lstrip(".")
                found.add(full if (PACKAGE / f"{full.replace('.', '/')}.py").exists() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("jacreg.") for a in node.names
                      if a.name.startswith("jacreg.")}
    return {name for name in found if name}


def test_every_module_is_in_exactly_one_layer() -> None:
    table, present = layers(), modules()
    assert sorted(set(present) - set(table)) == [], (
        f"place these modules in the layer table of {DOC.relative_to(REPO)}")
    assert sorted(set(table) - set(present)) == [], "the table names modules that do not exist"


def test_no_module_imports_a_higher_layer() -> None:
    table = layers()
    wrong = []
    for module, path in modules().items():
        rank, _ = table[module]
        for used in imports(path):
            if used == WORKFLOW or used not in table:
                continue
            if module.startswith(f"{WORKFLOW}.") != used.startswith(f"{WORKFLOW}."):
                wrong.append(f"{module} -> {used} (across the workflow boundary)")
            elif table[used][0] > rank:
                wrong.append(f"{module} ({table[module][1]}) -> {used} ({table[used][1]})")
    assert wrong == [], wrong


def test_no_import_cycle() -> None:
    graph = {m: imports(p, top_level_only=True) & set(modules()) for m, p in modules().items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, " -> ".join([*stack[stack.index(node):], node])
        if node in done:
            return
        for nxt in graph[node]:
            visit(nxt, [*stack, node])
        done.add(node)

    for node in graph:
        visit(node, [])


def test_public_api_and_the_workflow_subpackage_import() -> None:
    code = ("from jacreg.jacobian import jacobian_penalty, stacked_spectral_norm\n"
            "from jacreg.uap import sgd_uap\n"
            "from jacreg.models import load_checkpoint\n"
            "from jacreg.data import load_dataset\n"
            "from jacreg.workflow import cluster_hooks, slurm_check, workdir_lock\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('jacreg.cluster_hooks') is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
