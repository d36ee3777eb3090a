"""DVC user stories, end to end through the real git, dvc and snakemake CLIs.

One reduced quick run (`dvc repro quick` in a temporary git repository holding a copy of the
workflow) is shared by the module; each story works on its own copy of that finished repository
(``copytree`` keeps mtimes, the DVC cache and Snakemake's ``.snakemake`` metadata), so the
stories do not depend on each other or on their order.

The run is published the way docs/versioning.md says: ``cached: quick: true`` in dvc.yaml, so
that its data and models are cached, while the other profile stages (fashion_mnist_data,
fashion, paper) stay unpublished, as in a repository where only some profiles were ever run.
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
from test_workflow import REDUCED as WORKFLOW_REDUCED

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this environment: dvc, snakemake, python3
COPIED = [
    "Snakefile", "rules", "schemas", "src", "config.yaml", "configs", "dvc.yaml", ".dvcignore",
    ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvc/plots",
]
REDUCED = dict(WORKFLOW_REDUCED, run_name="quick")  # tests/test_workflow.py's config
QUICK = ["--configfile", "configs/quick.yaml"]


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


def publication_errors(root: Path) -> list[str]:
    """Where dvc.yaml's ``cached`` flags disagree with dvc.lock (docs/versioning.md).

    A published stage (``cached: STAGE: true``) caches its large outputs, so dvc.lock must hold
    the hash of each: a plain `dvc pull` fails ("Checkout failed") on one it has none for. An
    unpublished stage caches nothing and must have no dvc.lock entry: a committed run whose
    data and models never reach the remote is what publishing prevents.
    """
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    (cached,) = [entry["cached"] for entry in pipeline["vars"]
                 if isinstance(entry, dict) and "cached" in entry]
    lock_file = root / "dvc.lock"
    locked = yaml.safe_load(lock_file.read_text())["stages"] if lock_file.exists() else {}
    errors = []
    if set(cached) != set(pipeline["stages"]):
        errors.append(f"vars: cached: names {sorted(cached)}, the stages are "
                      f"{sorted(pipeline['stages'])}")
    for name, stage in pipeline["stages"].items():
        outs = {}
        for item in stage.get("outs", []) + stage.get("metrics", []):
            outs.update(item if isinstance(item, dict) else {item: None})
        in_cache = [path for path, opts in outs.items() if (opts or {}).get("cache", True)]
        hashed = {out["path"] for out in locked.get(name, {}).get("outs", []) if "md5" in out}
        if cached.get(name):
            if not in_cache:
                errors.append(f"{name}: published, but none of its outputs is cached")
            if missing := [path for path in in_cache if path not in hashed]:
                errors.append(f"{name}: published, but dvc.lock has no hash of {missing}: "
                              "a plain `dvc pull` fails; run `dvc repro` and commit dvc.lock")
        else:
            if in_cache:
                errors.append(f"{name}: not published, but caches {in_cache}")
            if name in locked:
                errors.append(f"{name}: dvc.lock holds its run, but it is not published: its "
                              "data and models stay out of `dvc push`; publish it")
    return errors


def publish(repo: Path, stage: str) -> None:
    """docs/versioning.md's publishing step: ``cached: STAGE: true`` in dvc.yaml."""
    pipeline = repo / "dvc.yaml"
    text = pipeline.read_text()
    anchor = f"&{stage}_cached"
    assert text.count(f"{anchor} false") == 1, stage
    pipeline.write_text(text.replace(f"{anchor} false", f"{anchor} true"))


def copy_repo(src: Path, dest: Path) -> Path:
    # copy2 keeps the mtimes Snakemake compares; .snakemake/ and .dvc/cache come along
    shutil.copytree(src, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    publish(repo, "quick")
    proc = run(repo, "dvc", "repro", "quick")
    assert "is not published" not in proc.stderr
    run(repo, "git", "add", "dvc.yaml", "dvc.lock", "reports/quick")
    run(repo, "git", "commit", "-qm", "quick run")
    return repo


def test_dvc_yaml_publishes_only_stages_with_a_lock_entry() -> None:
    # this repository as it is: a plain `dvc pull` of a clone must not fail on a stage that
    # claims cached outputs without their hashes, and no committed run may miss the remote
    assert publication_errors(REPO) == []


@pytest.mark.workflow
def test_repro_tracks_outputs_and_records_params_and_metrics(finished_run: Path) -> None:
    locked = yaml.safe_load((finished_run / "dvc.lock").read_text())["stages"]
    assert set(locked) == {"quick"}  # the only profile run here
    assert publication_errors(finished_run) == []
    lock = locked["quick"]
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


@pytest.mark.workflow
def test_collaborator_pulls_models_and_uaps_from_a_remote(finished_run: Path,
                                                          tmp_path: Path) -> None:
    origin = copy_repo(finished_run, tmp_path / "origin")
    run(origin, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run(origin, "git", "commit", "-qam", "local remote")
    run(origin, "dvc", "push")  # every published stage: here quick

    pulled = [p.relative_to(origin) for kind in ("models", "uaps")
              for p in sorted((origin / "results/quick" / kind).rglob("*.pt"))]
    assert len(pulled) == 4
    pulled.append(Path("data/prepared/mnist5k.pt"))

    # a plain `dvc pull`, although fashion_mnist_data, fashion and paper never ran: being
    # unpublished, they cache nothing, and pull has nothing to check out for them
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "results").exists()
    proc = run(clone, "dvc", "pull", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Checkout failed" not in proc.stdout + proc.stderr
    for rel in pulled:
        assert (clone / rel).read_bytes() == (origin / rel).read_bytes(), rel
    assert sorted(p.name for p in (clone / "results").iterdir()) == ["quick"]
    assert "up to date" in run(clone, "dvc", "status", "quick").stdout
    # `dvc pull quick` still works, in a clone of its own
    only_quick = tmp_path / "only-quick"
    run(tmp_path, "git", "clone", "-q", str(origin), str(only_quick))
    run(only_quick, "dvc", "pull", "quick")
    for rel in pulled:
        assert (only_quick / rel).read_bytes() == (origin / rel).read_bytes(), rel

    # the fashion profile's stages exist and validate without any of their data: fashion and
    # paper depend on fashion_mnist_data, which owns data/prepared/fashion_mnist.pt
    stages = run(clone, "dvc", "stage", "list").stdout
    assert {line.split()[0] for line in stages.splitlines()} == {
        "quick", "fashion_mnist_data", "fashion", "paper"}
    status = {" ".join(line.split()) for line in
              run(clone, "dvc", "status", "fashion").stdout.splitlines()}
    assert {"deleted: results/fashion", "deleted: reports/fashion/metrics.json",
            "deleted: data/prepared/fashion_mnist.pt"} <= status  # the last: a dependency
    dag = run(clone, "dvc", "dag", "--dot").stdout.splitlines()
    assert {'"fashion_mnist_data" -> "fashion";', '"fashion_mnist_data" -> "paper";'} <= set(dag)
    dry = run(clone, "dvc", "repro", "--dry", "fashion_mnist_data")
    assert "fashion_mnist_data false data/prepared/fashion_mnist.pt" in dry.stdout
    metrics = json.loads(run(clone, "dvc", "metrics", "show", "--json").stdout)
    assert metrics[""]["data"]["reports/quick/metrics.json"]["data"]["run"] == "quick"

    # The clone has no .snakemake/ metadata, and the pulled files carry fresh mtimes in
    # checkout order. Snakemake alone may then plan reruns of attacks (an input looks newer
    # than its output) and, worse, would not see a changed parameter (no record to compare
    # with). The stage command of dvc.yaml therefore reruns every job when Snakemake has no
    # record: run it as DVC would (from dvc.lock), as a dry run, from a shell where nothing
    # is activated and the interpreter is found as the project's .venv.
    stage_cmd = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["quick"]["cmd"]
    if sys.prefix != sys.base_prefix:  # a virtualenv: reachable as .venv only
        (clone / ".venv").symlink_to(sys.prefix, target_is_directory=True)
        bare = dict(ENV, PATH=os.pathsep.join(
            d for d in ENV["PATH"].split(os.pathsep) if Path(d) != BIN))
    else:
        bare = ENV
    guarded = subprocess.run(["sh", "-c", f"{stage_cmd} -n"], cwd=clone, env=bare,
                             capture_output=True, text=True, timeout=300)
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr
    assert "running every job (--forceall)" in guarded.stderr
    assert job_counts(guarded.stdout + guarded.stderr) == {
        "prepare_data": 1, "train": 2, "attack": 2, "evaluate": 2, "attack_suite": 1,
        "aggregate": 1, "report": 1, "all": 1}

    # Adopting the pulled outputs (DVC just verified them against dvc.lock) records
    # metadata for every job and puts mtimes in DAG order, without changing any content.
    run(clone, "snakemake", "--touch", "--forceall", "--cores", "1", *QUICK)
    assert plan(clone, *QUICK) == {}
    adopted = subprocess.run(["sh", "-c", f"{stage_cmd} -n"], cwd=clone, env=bare,
                             capture_output=True, text=True, timeout=300)
    assert adopted.returncode == 0 and "--forceall" not in adopted.stderr
    assert job_counts(adopted.stdout + adopted.stderr) == {}
    assert "up to date" in run(clone, "dvc", "status", "quick").stdout
    (clone / ".venv").unlink(missing_ok=True)  # a symlink: /.venv/ ignores directories only
    assert run(clone, "git", "status", "--porcelain").stdout == ""
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


@pytest.mark.workflow
def test_experiment_is_listed_beside_the_baseline(finished_run: Path, tmp_path: Path) -> None:
    work = copy_repo(finished_run, tmp_path / "repo")
    proc = run(work, "dvc", "exp", "run", "quick", "-S",
               "configs/quick.yaml:lambdas=[0.0,0.5]")
    # persist: true kept the baseline's outputs, so Snakemake trained only the new lambda
    assert job_counts(proc.stdout + proc.stderr)["train"] == 1

    shown = json.loads(run(work, "dvc", "exp", "show", "--json").stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    experiments = [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    assert len(experiments) == 1

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
