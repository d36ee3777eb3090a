"""DVC user stories, end to end through the real git, dvc and snakemake CLIs.

One reduced quick run is shared by the module: docs/versioning.md's "publish" block, run as
written in a temporary git repository holding a copy of the workflow (`dvc repro quick`, commit,
`dvc remote add -d store ../dvc-store`, `dvc push`; no edit of dvc.yaml). The other profile
stages (fashion_mnist_data, fashion, paper, example) never run, as in a repository where only some
profiles were ever run. Each story works on its own copy of that finished repository
(``copytree`` keeps mtimes, the DVC cache and Snakemake's ``.snakemake`` metadata), so the
stories do not depend on each other or on their order. Every block of docs/versioning.md tagged
``<!-- test: tests/test_dvc.py NAME -->`` is run here as written, through bash, with the
project's environment reachable as ``.venv`` (a symlink), the only substitutions being
placeholders in angle brackets and the Quickstart's install line (that symlink instead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from doc_blocks import block
from test_workflow import REDUCED as WORKFLOW_REDUCED

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this environment: dvc, snakemake, python3
COPIED = [
    "Snakefile", "rules", "schemas", "src", "config.yaml", "configs", "profiles", "dvc.yaml",
    ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", "examples",
]
REDUCED = dict(WORKFLOW_REDUCED, run_name="quick")  # tests/test_workflow.py's config
QUICK = ["--configfile", "configs/quick.yaml"]
GUIDE = "docs/versioning.md"
# the Quickstart's install (CI runs it, .ci/run); here the test's environment is linked instead
INSTALL = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.lock && "
           ".venv/bin/pip install -q --no-deps -e .")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # dvc.yaml runs Snakemake with $VIRTUAL_ENV's python, else .venv's, else python3 on PATH:
    # drop a foreign activated venv so that python3 on PATH (this interpreter's) is used.
    env.pop("VIRTUAL_ENV", None)
    env["DVC_NO_ANALYTICS"] = "1"
    for role in ("AUTHOR", "COMMITTER"):  # commits in the temporary repositories only
        env[f"GIT_{role}_NAME"] = "jacreg tests"
        env[f"GIT_{role}_EMAIL"] = "tests@jacreg.invalid"
    return env


ENV = _env()


def run(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's "Job stats" table; {} when nothing is planned."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in output, output
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3:]:  # skip the header and the rule
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


def plan(workdir: Path, *args: str) -> dict[str, int]:
    proc = run(workdir, "snakemake", "-n", "--cores", "1", *args)
    return job_counts(proc.stdout + proc.stderr)


def make_repo(dest: Path) -> Path:
    """A git repository holding the workflow, the DVC setup and a reduced quick profile."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in COPIED:
        src, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=ignore)
        else:
            shutil.copy2(src, target)
    (dest / "configs/quick.yaml").write_text(yaml.safe_dump(REDUCED, sort_keys=False))
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "workflow")
    return dest


def link_venv(repo: Path) -> None:
    """The test's environment as the repository's ``.venv`` (the Quickstart's location)."""
    if not (repo / ".venv").exists():
        (repo / ".venv").symlink_to(BIN.parent, target_is_directory=True)


def bare_env() -> dict[str, str]:
    """ENV without this environment's bin on PATH: only ``.venv/bin/…`` finds dvc and snakemake."""
    if sys.prefix == sys.base_prefix:  # not a virtualenv: nothing to hide
        return ENV
    return dict(ENV, PATH=os.pathsep.join(
        d for d in ENV["PATH"].split(os.pathsep) if Path(d) != BIN))


def run_doc(cwd: Path, name: str, **subs: str) -> subprocess.CompletedProcess:
    """Run the block of docs/versioning.md tagged ``test: tests/test_dvc.py NAME`` as written
    (``subs`` fill its ``<placeholders>``) in one bash, stopping at the first failing line."""
    text = block(GUIDE, name, "tests/test_dvc.py")
    return run_script(cwd, name, text, **subs)


def run_script(cwd: Path, name: str, text: str, **subs: str) -> subprocess.CompletedProcess:
    for placeholder, value in subs.items():
        assert f"<{placeholder}>" in text, (name, placeholder)
        text = text.replace(f"<{placeholder}>", value)
    if INSTALL in text:
        text = text.replace(INSTALL, f"ln -s {BIN.parent} .venv")
    assert "<" not in text.replace("<<", ""), f"unfilled placeholder in {name}: {text}"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=bare_env(),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{GUIDE} block {name!r} failed in {cwd}:\n{text}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(src: Path, dest: Path) -> Path:
    # copy2 keeps the mtimes Snakemake compares; .snakemake/ and .dvc/cache come along
    shutil.copytree(src, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/versioning.md's "publish" block, as written: run, commit, add a remote, push."""
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    link_venv(repo)
    run_doc(repo, "publish")
    return repo


def test_dvc_yaml_caches_every_large_output_and_needs_no_switch() -> None:
    # `dvc repro STAGE` then `dvc push` publishes a stage only if its large outputs are cached;
    # the reports stay in git (cache: false); every output persists (Snakemake's incremental
    # reruns). No `vars:` switch to edit before publishing.
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert not any(isinstance(entry, dict) and "cached" in entry
                   for entry in pipeline.get("vars", [])), "a publish switch is back in dvc.yaml"
    wrong = []
    for name, stage in pipeline["stages"].items():
        assert "cached" not in stage["cmd"], name
        for item in stage.get("outs", []) + stage.get("metrics", []):
            path, opts = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            opts = opts or {}
            in_git = path.startswith("reports/")
            if opts.get("cache", True) == in_git or opts.get("persist") is not True:
                wrong.append(f"{name}: {path}: {opts}")
    assert wrong == [], wrong


def test_example_stage_runs_the_worked_example(tmp_path: Path) -> None:
    """`dvc repro example` is examples/custom/run.sh with the profiles' guard: it writes the
    example's .npz (an output of the stage, so nothing is prepared by hand), then plans every job
    of examples/custom/config.yaml. Run as DVC would run it, with `-n` for Snakemake."""
    repo = make_repo(tmp_path / "repo")
    link_venv(repo)
    dry = run(repo, "dvc", "repro", "--dry", "example").stdout
    (cmd,) = [line[2:] for line in dry.splitlines() if line.startswith("> ")]
    assert "examples/custom/make_digits.py && " in cmd
    assert cmd.endswith("data/prepared/digits.pt --cores all --configfile "
                        "examples/custom/config.yaml")
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["example"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
    assert {"data/examples/digits.npz", "data/prepared/digits.pt", "results/example"} <= outs
    assert "examples/custom/digits_net.py" in stage["deps"]
    assert stage["params"] == [{"examples/custom/config.yaml": None}]
    proc = subprocess.run(["sh", "-c", f"{cmd} -n"], cwd=repo, env=bare_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / "data/examples/digits.npz").is_file()
    assert "running every job (--forceall)" in proc.stderr  # no Snakemake record here yet
    example = yaml.safe_load((repo / "examples/custom/config.yaml").read_text())
    models = len(example["lambdas"]) * len(example["seeds"])
    assert job_counts(proc.stdout + proc.stderr) == {
        "prepare_custom": 1, "train": models, "attack": models, "evaluate": models,
        "attack_suite": len(example["seeds"]), "aggregate": 1, "report": 1, "all": 1}
    # docs/custom.md's stage for your own configuration, added beside it, is a valid stage
    guide = (REPO / "docs/custom.md").read_text()
    (snippet,) = [text for text in guide.split("```yaml\n")[1:]
                  if "${snakemake} data/prepared/mine.pt" in text]
    snippet = snippet.split("```")[0]
    pipeline = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(pipeline.replace("\n  example:\n", f"\n{snippet}\n  example:\n"))
    listed = {line.split()[0] for line in run(repo, "dvc", "stage", "list").stdout.splitlines()}
    assert {"example", "mine"} <= listed
    assert "data/prepared/mine.pt --cores all --configfile my.yaml" in run(
        repo, "dvc", "repro", "--dry", "--single-item", "--force", "mine", check=False).stdout


@pytest.mark.workflow
def test_repro_tracks_outputs_and_records_params_and_metrics(finished_run: Path) -> None:
    locked = yaml.safe_load((finished_run / "dvc.lock").read_text())["stages"]
    assert set(locked) == {"quick"}  # the only profile run here
    lock = locked["quick"]
    hashed = {out["path"] for out in lock["outs"] if "md5" in out}
    assert {"data/prepared/mnist5k.pt", "results/quick"} <= hashed
    # `dvc push` uploaded them, with no edit of dvc.yaml
    assert run(finished_run, "git", "diff", "HEAD~2", "--stat", "--", "dvc.yaml").stdout == ""
    assert "everything is up to date" in run(finished_run, "dvc", "push").stdout.lower()
    assert sum(1 for p in (finished_run.parent / "dvc-store").rglob("*") if p.is_file()) >= 5
    assert lock["params"]["configs/quick.yaml"]["lambdas"] == [0.0, 1.0]
    outs = {out["path"] for out in lock["outs"]}
    assert {"data/prepared/mnist5k.pt", "results/quick", "reports/quick/metrics.json",
            "reports/quick/evasion_vs_eps.csv", "reports/quick/report.html",
            "reports/quick/figures"} <= outs
    # DVC holds the data and run outputs; git holds the lock and the reports (cache: false)
    assert run(finished_run, "git", "status", "--porcelain").stdout == ""
    tracked = run(finished_run, "git", "ls-files").stdout.split()
    assert "reports/quick/metrics.json" in tracked and "dvc.lock" in tracked
    assert not any(p.startswith(("results/", "data/")) for p in tracked)
    assert "up to date" in run(finished_run, "dvc", "status", "quick").stdout
    # DVC committed its outputs without making them look newer to Snakemake: nothing to redo
    assert plan(finished_run, *QUICK) == {}
    metrics = json.loads(run(finished_run, "dvc", "metrics", "show", "--json").stdout)
    shown = metrics[""]["data"]["reports/quick/metrics.json"]["data"]
    assert shown["run"] == "quick"
    plots = json.loads(run(finished_run, "dvc", "plots", "show", "--json",
                           "quick_evasion_vs_eps").stdout)
    (rendered,) = plots["data"]["quick_evasion_vs_eps"]
    spec = rendered["content"]
    points = spec["data"]["values"]
    assert {p["lambda"] for p in points} == {"0.0", "1.0"}
    assert {p["eps"] for p in points} == {"0.2", "0.3"}
    assert spec["spec"]["encoding"]["x"]["field"] == "eps"
    assert spec["spec"]["encoding"]["y"]["field"] == "uap_evasion_rate_mean"
    # the guide's metrics block, as written
    shown = run_doc(finished_run, "metrics").stdout
    assert "reports/quick/metrics.json" in shown and "quick" in shown
    assert (finished_run / "dvc_plots" / "index.html").is_file()


@pytest.mark.workflow
def test_collaborator_pulls_models_and_uaps_from_a_remote(finished_run: Path,
                                                          tmp_path: Path) -> None:
    origin = copy_repo(finished_run, tmp_path / "origin")
    shutil.copytree(finished_run.parent / "dvc-store", tmp_path / "dvc-store")  # ../dvc-store

    pulled = [p.relative_to(origin) for kind in ("models", "uaps")
              for p in sorted((origin / "results/quick" / kind).rglob("*.pt"))]
    assert len(pulled) == 4
    pulled.append(Path("data/prepared/mnist5k.pt"))

    # a plain `dvc pull` fails, as the guide says: fashion_mnist_data, fashion, paper and
    # example never ran, so dvc.lock has no hash for their outputs
    plain = tmp_path / "plain"
    run(tmp_path, "git", "clone", "-q", "origin", "plain")
    assert not (plain / "results").exists()
    proc = run(plain, "dvc", "pull", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Checkout failed for following targets" in out, out
    assert {"results/fashion", "results/paper", "data/prepared/fashion_mnist.pt"} <= {
        line.strip() for line in out.splitlines()}, out
    # `dvc pull quick` works, in that clone
    run(plain, "dvc", "pull", "quick")
    for rel in pulled:
        assert (plain / rel).read_bytes() == (origin / rel).read_bytes(), rel

    # The clone has no .snakemake/ metadata, and the pulled files carry fresh mtimes in
    # checkout order. Snakemake alone may then plan reruns of attacks (an input looks newer
    # than its output) and, worse, would not see a changed parameter (no record to compare
    # with). The stage command of dvc.yaml therefore reruns every job when Snakemake has no
    # record: run it as DVC would (from dvc.lock), as a dry run, from a shell where nothing
    # is activated and the interpreter is found as the project's .venv.
    stage_cmd = yaml.safe_load((plain / "dvc.lock").read_text())["stages"]["quick"]["cmd"]
    link_venv(plain)
    guarded = subprocess.run(["sh", "-c", f"{stage_cmd} -n"], cwd=plain, env=bare_env(),
                             capture_output=True, text=True, timeout=300)
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr
    assert "running every job (--forceall)" in guarded.stderr
    assert job_counts(guarded.stdout + guarded.stderr) == {
        "prepare_data": 1, "train": 2, "attack": 2, "evaluate": 2, "attack_suite": 1,
        "aggregate": 1, "report": 1, "all": 1}

    # the guide's collaborator block, as written: clone, install, `dvc pull --allow-missing`,
    # status, adopt (`snakemake --touch --forceall`), plan
    proc = run_doc(tmp_path, "collaborate", **{"repo-url": "origin"})
    clone = tmp_path / "jacreg"
    assert "Data and pipelines are up to date" in proc.stdout
    assert "Nothing to be done" in proc.stdout + proc.stderr  # the last line: plans nothing
    for rel in pulled:
        assert (clone / rel).read_bytes() == (origin / rel).read_bytes(), rel
    assert sorted(p.name for p in (clone / "results").iterdir()) == ["quick"]

    # the fashion profile's stages exist and validate without any of their data: fashion and
    # paper depend on fashion_mnist_data, which owns data/prepared/fashion_mnist.pt
    stages = run(clone, "dvc", "stage", "list").stdout
    assert {line.split()[0] for line in stages.splitlines()} == {
        "quick", "fashion_mnist_data", "fashion", "paper", "example"}
    status = {" ".join(line.split()) for line in
              run(clone, "dvc", "status", "fashion").stdout.splitlines()}
    assert {"deleted: results/fashion", "deleted: reports/fashion/metrics.json",
            "deleted: data/prepared/fashion_mnist.pt"} <= status  # the last: a dependency
    dag = run(clone, "dvc", "dag", "--dot").stdout.splitlines()
    assert {'"fashion_mnist_data" -> "fashion";', '"fashion_mnist_data" -> "paper";'} <= set(dag)
    dry = run(clone, "dvc", "repro", "--dry", "fashion_mnist_data")
    assert "data/prepared/fashion_mnist.pt data/prepared/fashion_mnist.pt --cores 1" in dry.stdout
    metrics = json.loads(run(clone, "dvc", "metrics", "show", "--json").stdout)
    assert metrics[""]["data"]["reports/quick/metrics.json"]["data"]["run"] == "quick"

    # Adopting the pulled outputs (DVC had just verified them against dvc.lock) recorded
    # metadata for every job and put mtimes in DAG order, without changing any content.
    stage_cmd = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["quick"]["cmd"]
    adopted = subprocess.run(["sh", "-c", f"{stage_cmd} -n"], cwd=clone, env=bare_env(),
                             capture_output=True, text=True, timeout=300)
    assert adopted.returncode == 0 and "--forceall" not in adopted.stderr
    assert job_counts(adopted.stdout + adopted.stderr) == {}
    assert "up to date" in run(clone, "dvc", "status", "quick").stdout
    assert run(clone, "git", "status", "--porcelain").stdout == ""  # .venv: git-ignored
    # and now a changed training setting retrains, because the metadata is there
    more_epochs = dict(REDUCED, train=dict(REDUCED["train"], epochs=3))
    (tmp_path / "epochs.yaml").write_text(yaml.safe_dump(more_epochs))
    assert plan(clone, "--configfile", str(tmp_path / "epochs.yaml"))["train"] == 2


@pytest.mark.workflow
def test_incremental_plans_only_what_a_change_touches(finished_run: Path,
                                                      tmp_path: Path) -> None:
    work = copy_repo(finished_run, tmp_path / "repo")

    def plan_with(**changes: object) -> dict[str, int]:
        variant = tmp_path / "variant.yaml"  # outside the repository: git stays clean
        variant.write_text(yaml.safe_dump(dict(REDUCED, **changes)))
        return plan(work, "--configfile", str(variant))

    assert plan_with() == {}
    # a new lambda: its model, and the one attack suite of the seed (it spans all lambdas)
    per_model = {"train": 1, "attack": 1, "evaluate": 1, "attack_suite": 1, "aggregate": 1,
                 "report": 1, "all": 1}
    assert plan_with(lambdas=[0.0, 1.0, 0.5]) == per_model
    assert plan_with(epsilons={"mnist5k": [0.1, 0.3]}) == {
        "attack": 2, "evaluate": 2, "attack_suite": 1, "aggregate": 1, "report": 1, "all": 1}
    report_only = dict(REDUCED["analysis"], report={"dpi": 72})
    assert plan_with(analysis=report_only) == {"report": 1, "all": 1}
    assert plan(work, *QUICK) == {}
    # the guide's block, as written: nothing changed, so nothing is planned or rerun
    proc = run_doc(work, "plan")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "Data and pipelines are up to date" in proc.stdout


@pytest.mark.workflow
def test_s3_remote_is_configured_as_the_guide_says(finished_run: Path, tmp_path: Path) -> None:
    work = copy_repo(finished_run, tmp_path / "repo")
    run_doc(work, "remote")  # writes the configuration only: nothing is uploaded
    assert "url = s3://my-bucket/jacreg" in (work / ".dvc/config").read_text()
    assert "profile = my-profile" in (work / ".dvc/config.local").read_text()
    assert run(work, "git", "status", "--porcelain").stdout == ""  # config.local: not in git
    assert run(work, "dvc", "remote", "default").stdout.strip() == "storage"


@pytest.mark.workflow
def test_experiment_is_listed_beside_the_baseline(finished_run: Path, tmp_path: Path) -> None:
    work = copy_repo(finished_run, tmp_path / "repo")
    # the guide's block, as written, up to the first line naming the experiment
    text = block(GUIDE, "experiment", "tests/test_dvc.py")
    lines = text.splitlines()
    first_named = next(i for i, line in enumerate(lines) if "<exp-name>" in line)
    proc = run_script(work, "experiment", "\n".join(lines[:first_named]))
    # persist: true kept the baseline's outputs, so Snakemake trained only the new lambda
    assert job_counts(proc.stdout + proc.stderr)["train"] == 1

    shown = json.loads(run(work, "dvc", "exp", "show", "--json").stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    experiments = [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    assert len(experiments) == 1
    (name,) = [exp["name"] for exp in baseline["experiments"]]
    rest = run_script(work, "experiment", "\n".join(lines[first_named:]), **{"exp-name": name})
    assert "lambda-0.5" in run(work, "git", "branch").stdout
    assert "created from experiment" in rest.stdout + rest.stderr

    def lambdas_and_metrics(entry: dict) -> tuple[list[float], dict]:
        data = entry["data"]
        params = data["params"]["configs/quick.yaml"]["data"]
        metrics = data["metrics"]["reports/quick/metrics.json"]["data"]
        return params["lambdas"], metrics

    base_lambdas, base_metrics = lambdas_and_metrics(baseline)
    exp_lambdas, exp_metrics = lambdas_and_metrics(experiments[0])
    assert base_lambdas == [0.0, 1.0] and exp_lambdas == [0.0, 0.5]
    # DVC shows the scalars of metrics.json (lists such as rows and claims are left out)
    assert base_metrics["run"] == exp_metrics["run"] == "quick"
    assert base_metrics["config_sha256"] != exp_metrics["config_sha256"]

    # the headline curve of both, overlaid
    revs = [baseline["rev"], experiments[0]["rev"]]  # revisions first: --targets takes a list
    diff = json.loads(run(work, "dvc", "plots", "diff", *revs, "--json", "--targets",
                          "quick_evasion_vs_eps").stdout)
    (rendered,) = diff["data"]["quick_evasion_vs_eps"]
    curves = {(p["rev"], p["lambda"]) for p in rendered["content"]["data"]["values"]}
    assert {lam for _, lam in curves} == {"0.0", "0.5", "1.0"}, curves
    assert len({rev for rev, _ in curves}) == 2 and "workspace" not in rendered["revisions"]
