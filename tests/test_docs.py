"""The README and the guide in docs/: short, linked, and every command in them is one that runs.

- README.md is at most 200 lines, keeps the two Quickstart lines byte for byte (line 2 is what
  .ci/run runs), links every page of docs/, and its headline block equals what
  scripts/headline.py makes of the committed reports;
- docs/README.md (the guide's contents) links every page; every relative link resolves (files
  and, within Markdown files, heading anchors);
- every shell block (```bash / ```sh) of README.md and docs/*.md is either tagged
  ``<!-- test: tests/test_x.py NAME -->`` and run as written by that test file (which this test
  checks reads it), or tagged ``<!-- long: why -->`` (a whole profile, a GPU, a cluster, root or
  the network: measured by hand, the reason in the tag), or each of its commands appears in a
  test, a script or .ci/run;
- the blocks tagged for this file run here as written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from doc_blocks import Block, block, blocks, commands
from test_workflow import copy_workflow

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
PAGES = ["README.md", *DOCS]
SHELL = {"bash", "sh", "shell", "console"}
QUICKSTART = [
    "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.lock && .venv/bin/pip "
    "install -q --no-deps -e . && .venv/bin/snakemake --cores all --configfile configs/quick.yaml"
    " && ls reports/quick/report.html",
    "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.lock && .venv/bin/pip "
    "install -q --no-deps -e . && .venv/bin/python -m pytest -q",
]
# where a command shown in the docs may be found being run
CORPUS_DIRS = ["tests", "scripts", "benchmarks", ".ci"]
WORKFLOW = ["Snakefile", "rules", "schemas", "config.yaml", "configs", "profiles"]


def normalized(command: str) -> str:
    """A command as a test or script would spell it: without the .venv/bin/ prefix or sudo."""
    command = re.sub(r"(^|\s|&&\s*)sudo\s+", r"\1", command)
    return re.sub(r"(^|[\s=(])\.venv/bin/", r"\1", command).strip()


def corpus() -> str:
    texts = []
    for name in CORPUS_DIRS:
        for path in sorted((REPO / name).rglob("*")):
            if path.is_file() and path.suffix in {"", ".py", ".sh"} and path.name not in {
                    "test_docs.py", "doc_blocks.py"}:
                texts.append(path.read_text(errors="replace"))
    return normalized("\n".join(texts))


def test_readme_is_short_and_keeps_the_quickstart_lines() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200, len(text.splitlines())
    (quick,) = [b for b in blocks("README.md") if "pip install" in b.text]
    assert quick.text.splitlines() == QUICKSTART
    assert "--configfile configs/quick.yaml" in QUICKSTART[0]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert QUICKSTART[1] in ci, ".ci/run must run Quickstart line 2 verbatim"


def test_readme_and_contents_link_every_guide_page() -> None:
    readme = (REPO / "README.md").read_text()
    contents = (REPO / "docs" / "README.md").read_text()
    for page in DOCS:
        assert f"]({page})" in readme or f"]({page}#" in readme, f"README.md does not link {page}"
        name = page.removeprefix("docs/")
        if name != "README.md":
            assert f"]({name})" in contents, f"docs/README.md does not link {name}"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        source = REPO / page
        text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (source.parent / path).resolve() if path else source
            if not resolved.exists():
                broken.append(f"{page}: {target}")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page}: {target} (no such heading)")
    assert broken == [], broken


def shell_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang in SHELL]


def test_every_shell_command_is_run_by_a_test_or_a_script() -> None:
    known = corpus()
    problems = []
    for b in shell_blocks():
        if b.tag == "test":
            test_file, _, name = b.tag_value.partition(" ")
            path = REPO / test_file
            if not path.is_file():
                problems.append(f"{b.doc}: tagged for missing {test_file}")
                continue
            source = path.read_text()
            if f'"{name}"' not in source or (b.doc not in source
                                             and f'"{b.doc}"' not in source):
                problems.append(f"{b.doc}: block {name!r} is not read by {test_file}")
        elif b.tag == "long":
            if len(b.tag_value.strip()) < 10:
                problems.append(f"{b.doc}: a long block must say why no test runs it")
        else:
            for command in commands(b.text):
                if normalized(command) not in known:
                    problems.append(f"{b.doc}: no test or script runs `{command}`")
    assert problems == [], "\n".join(problems)


def test_headline_block_matches_the_committed_reports() -> None:
    proc = subprocess.run([sys.executable, "scripts/headline.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------
# the blocks tagged for this file, run as written


def workflow_copy(dest: Path) -> Path:
    copy_workflow(dest, WORKFLOW)
    (dest / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    return dest


def run_block(cwd: Path, text: str) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert proc.returncode == 0, f"{text}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def planned(output: str) -> dict[str, int]:
    lines = output.splitlines()
    counts: dict[str, int] = {}
    for line in lines[lines.index("Job stats:") + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_quick_plan_as_getting_started_shows_it(tmp_path: Path) -> None:
    work = workflow_copy(tmp_path)
    out = run_block(work, block("docs/getting-started.md", "plan", "tests/test_docs.py"))
    quick = yaml.safe_load((REPO / "configs/quick.yaml").read_text())
    models = len(quick["lambdas"]) * len(quick["seeds"]) * len(quick["datasets"])
    assert planned(out)["train"] == models


def test_paper_plan_as_profiles_shows_it(tmp_path: Path) -> None:
    work = workflow_copy(tmp_path)
    text = block("docs/profiles.md", "paper-plan", "tests/test_docs.py")
    (stated,) = re.findall(r"(\d+) training jobs", text)
    assert planned(run_block(work, text))["train"] == int(stated)


def test_own_configuration_file_as_profiles_shows_it(tmp_path: Path) -> None:
    work = workflow_copy(tmp_path)
    page = blocks("docs/profiles.md")
    name = "override"
    (i,) = [k for k, b in enumerate(page) if b.tag_value == f"tests/test_docs.py {name}"]
    example = page[i - 1]  # the YAML file the command reads
    assert example.lang == "yaml" and "my.yaml" in example.text
    (work / "my.yaml").write_text(example.text)
    out = run_block(work, page[i].text)
    mine = yaml.safe_load(example.text)
    quick = yaml.safe_load((REPO / "configs/quick.yaml").read_text())
    assert planned(out)["train"] == len(quick["lambdas"]) * len(mine["seeds"])


def test_digest_commands_of_datasets_give_the_content_sha256(tmp_path: Path) -> None:
    payload = os.urandom(3000)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload))
    batch = os.urandom(2000)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    out = run_block(tmp_path, block("docs/datasets.md", "digests", "tests/test_docs.py"))
    digests = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert digests == [hashlib.sha256(payload).hexdigest(), hashlib.sha256(batch).hexdigest()]
