"""End-to-end: the real Snakemake CLI on a reduced quick profile in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "schemas", "config.yaml", "configs"]
REQUIRED_ROW_KEYS = {
    "dataset", "lambda", "seed", "eps", "clean_accuracy", "uap_evasion_rate",
    "uap_fooling_rate", "random_evasion_rate", "jacobian_frobenius",
    "stacked_jacobian_spectral", "shared_metric_mean", "checkpoint", "uap",
}
REDUCED = {
    "run_name": "e2e",
    "datasets": ["mnist5k"],
    "lambdas": [0.0, 1.0],
    "seeds": [0],
    "epsilons": {"mnist5k": [0.2, 0.3]},
    "train": {"architecture": "cnn_small", "epochs": 2, "batch_size": 64},
    "attack": {"n_images": 1000, "epochs": 2, "batch_size": 128, "replicates": 2,
               "strong": {"restarts": 1, "epochs": 1, "n_images": 500, "check_epochs": 1}},
    "analysis": {"n_inputs": 60, "n_pairs": 100, "pairs_per_class_pair": 4, "pgd_inputs": 100,
                 "bootstrap": {"samples": 200, "seed": 0}},
}


def copy_workflow(dest: Path, names: Sequence[str] = tuple(WORKFLOW_FILES)) -> Path:
    """Copy the repository's files and folders ``names`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
        capture_output=True, text=True, timeout=1200,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(REDUCED))
    snakemake(workdir, "--cores", "2", "--configfile", "e2e.yaml")
    return workdir


@pytest.mark.workflow
def test_metrics_json_follows_the_contract(finished_run: Path) -> None:
    metrics = json.loads((finished_run / "reports/e2e/metrics.json").read_text())
    assert {"run", "git_commit", "config_sha256", "environment", "rows", "claims"} <= set(metrics)
    assert metrics["run"] == "e2e"
    assert len(metrics["config_sha256"]) == 64
    rows = metrics["rows"]
    grid = {(r["dataset"], r["lambda"], r["seed"], r["eps"]) for r in rows}
    assert grid == {("mnist5k", lam, 0, eps) for lam in (0.0, 1.0) for eps in (0.2, 0.3)}
    assert len(rows) == 4
    for row in rows:
        assert REQUIRED_ROW_KEYS <= set(row)
        for key in ("clean_accuracy", "uap_evasion_rate", "uap_fooling_rate",
                    "random_evasion_rate"):
            assert 0.0 <= row[key] <= 1.0
        # paths relative to the workflow root, pointing at the files that were measured
        assert not Path(row["checkpoint"]).is_absolute()
        assert (finished_run / row["checkpoint"]).is_file()
        assert (finished_run / row["uap"]).is_file()
        assert f"lam{row['lambda']:g}_seed0" in row["checkpoint"]
        # the bound chain of DESIGN §2 holds on real models
        assert row["linearized_logit_change"] <= row["spectral_bound"] * (1 + 1e-5)
        assert row["spectral_bound"] <= row["frobenius_bound"] * (1 + 1e-5)
        assert row["clean_accuracy"] > 0.7  # two epochs on 4,000 real digits
        # the per-input contrast on the first 100 test inputs: PGD is at least as strong as
        # the universal perturbation on the same inputs
        assert row["pgd_n_inputs"] == 100 and row["pgd_steps"] == 20
        assert 0.0 <= row["pgd_evasion_rate"] <= 1.0
        assert row["pgd_evasion_rate"] >= row["uap_evasion_rate_pgd_inputs"]
    claims = metrics["claims"]
    assert sorted((c["attack"], c["id"]) for c in claims) == [
        (a, c) for a in ("paper", "worst") for c in ("C1", "C2", "C3", "C4")]
    for claim in claims:
        assert {"id", "dataset", "value", "threshold", "holds", "verdict"} <= set(claim)
        assert isinstance(claim["holds"], bool)
        assert claim["verdict"] in ("holds", "fails", "inconclusive")
    c1 = next(c for c in claims if c["id"] == "C1" and c["attack"] == "paper")
    assert set(c1["detail"]["per_seed"]["values"]) == {"0"}
    kept = c1["detail"]["gain_at_accuracy_preserving_lambda"]
    assert {"lambda", "per_eps"} <= set(kept)
    assert kept["lambda"] in (None, 1.0)
    assert set(kept["per_eps"]) == (set() if kept["lambda"] is None else {"0.2", "0.3"})


@pytest.mark.workflow
def test_attack_suite_worst_case_and_transfer_in_metrics(finished_run: Path) -> None:
    metrics = json.loads((finished_run / "reports/e2e/metrics.json").read_text())
    record = json.loads((finished_run / "results/e2e/suite/mnist5k/seed0.json").read_text())
    assert record["lambdas"] == [0.0, 1.0] and record["eps"] == 0.3
    transfer = metrics["transfer"]["mnist5k"]
    assert transfer["lambdas"] == [0.0, 1.0] and transfer["eps"] == 0.3
    assert transfer["seeds"] == [0]
    assert transfer["per_seed"]["0"] == record["matrix"]
    assert transfer["matrix_mean"] == record["matrix"]
    # the diagonal is each model's own paper UAP (replicate 0): the evaluate stage's rate of
    # that replicate, bit for bit
    own = {r["lambda"]: r["uap_evasion_rate_replicates"][0] for r in metrics["rows"]
           if r["eps"] == 0.3}
    assert [record["matrix"][i][i] for i in range(2)] == [own[0.0], own[1.0]]
    assert all(0.0 <= v <= 1.0 for line in record["matrix"] for v in line)
    for row in metrics["rows"]:
        members = row["member_evasion_rates"]
        other = "transfer:1" if row["lambda"] == 0.0 else "transfer:0"
        warm = other.replace("transfer:", "warm:")  # the warm start from that transfer
        assert set(members) == {"paper", "strong", other, warm}
        # two attack replicates: the row's paper rate is their mean, the suite scored the same
        # two UAPs on the same test split as the evaluate stage
        assert row["uap_replicates"] == 2
        replicates = row["member_replicate_evasion_rates"]
        assert replicates["paper"] == row["uap_evasion_rate_replicates"]
        assert len(replicates["strong"]) == 2
        assert members["paper"] == row["uap_evasion_rate"] == sum(replicates["paper"]) / 2
        if row["lambda"] == 0.0:  # the batch order changes where SGD-UAP ends
            assert replicates["paper"][0] != replicates["paper"][1]
        # the worst member (replicate included) is the attack-split maximum over all members
        # of all replicates; its test rate is the worst case
        chosen = row["member_attack_split_rates"]
        assert set(chosen) == {"paper#0", "paper#1", "strong#0", "strong#1", other, warm}
        assert chosen[warm] >= chosen[other]  # never below its transfer on the attack split
        assert row["warm_gain_over_transfer"] == pytest.approx(members[warm] - members[other])
        assert chosen[row["worst_uap_member"]] == max(chosen.values())
        family, _, rep = row["worst_uap_member"].partition("#")
        assert row["worst_uap_evasion_rate"] == (replicates[family][int(rep)] if rep
                                                 else members[family])
    names = {(c["lambda"], c["seed"]): {k["name"] for k in c["checks"]}
             for c in metrics["checks"]}
    assert names == {(lam, 0): {"monotone_in_eps", "transfer_below_strong", "above_random",
                                "large_budget"} for lam in (0.0, 1.0)}
    intervals = metrics["intervals"]["mnist5k"]
    assert intervals["samples"] == 200 and len(intervals["rates"]) == 2 * 2 * 2
    assert intervals["replicates"] == 2 and intervals["method"] == "percentile"  # one seed
    assert (finished_run / "logs/e2e/suite/mnist5k/seed0.log").is_file()
    assert (finished_run / "results/e2e/benchmarks/suite/mnist5k/seed0.tsv").is_file()


@pytest.mark.workflow
def test_second_machine_check_reruns_at_two_threads_and_compares(finished_run: Path) -> None:
    """scripts/second-machine-check.sh on the reduced profile: the finished 1-thread run is
    reused, a 2-thread run is made from scratch into e2e-threads2, and the comparison is
    written; its exit status is 1 exactly when a claim x attack pair disagrees."""
    (finished_run / "scripts").mkdir(exist_ok=True)
    shutil.copy2(REPO / "scripts" / "second-machine-check.sh", finished_run / "scripts")
    env = {**os.environ, "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "scripts/second-machine-check.sh", "e2e.yaml"],
                          cwd=finished_run, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    result = json.loads((finished_run / "reports/e2e-second-machine-check.json").read_text())
    assert result["a"]["run"] == "e2e" and result["b"]["run"] == "e2e-threads2"
    assert result["claims_total"] == 8 and result["rows"]["matched_rows"] == 4
    assert proc.returncode == (1 if result["claims_agree"] < 8 else 0), out
    assert "claim x attack pairs that agree" in out and "uap_evasion_rate" in out
    rows = json.loads((finished_run / "reports/e2e-threads2/metrics.json").read_text())["rows"]
    assert {r["eval_threads"] for r in rows} == {2} and {r["train_threads"] for r in rows} == {2}


@pytest.mark.workflow
def test_regularized_model_has_smaller_jacobian(finished_run: Path) -> None:
    rows = json.loads((finished_run / "reports/e2e/metrics.json").read_text())["rows"]
    frob = {r["lambda"]: r["jacobian_frobenius"] for r in rows}
    spectral = {r["lambda"]: r["stacked_jacobian_spectral"] for r in rows}
    assert frob[1.0] < frob[0.0]
    assert spectral[1.0] < spectral[0.0]


@pytest.mark.workflow
def test_report_and_figures_written(finished_run: Path) -> None:
    html = (finished_run / "reports/e2e/report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 9
    for claim_id in ("C1", "C2", "C3", "C4"):
        assert claim_id in html
    assert "<h2>Differences from the paper</h2>" in html
    assert "PGD evasion ε=0.3 (first 100)" in html
    figures = sorted(p.name for p in (finished_run / "reports/e2e/figures").glob("*.png"))
    assert len(figures) == 9
    assert {"uap_vs_pgd.png", "uap_transfer.png"} <= set(figures)
    # every rule wrote its log and benchmark
    assert (finished_run / "logs/e2e/train/mnist5k/lam1_seed0.log").read_text().count("epoch=") == 2
    assert (finished_run / "results/e2e/benchmarks/train/mnist5k/lam0_seed0.tsv").is_file()


@pytest.mark.workflow
def test_rerun_plans_nothing_and_eps_change_plans_no_training(finished_run: Path) -> None:
    proc = snakemake(finished_run, "-n", "--cores", "1", "--configfile", "e2e.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    changed = dict(REDUCED, epsilons={"mnist5k": [0.1, 0.3]})
    (finished_run / "eps.yaml").write_text(yaml.safe_dump(changed))
    proc = snakemake(finished_run, "-n", "--cores", "1", "--configfile", "eps.yaml")
    out = proc.stdout + proc.stderr
    assert "attack" in out
    assert not any(line.split()[:1] == ["train"] for line in out.splitlines())


def test_bad_config_fails_before_any_job(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    bad = dict(REDUCED, lambdas=[0.0, -0.5])
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake(workdir, "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "lambdas[1]" in proc.stdout + proc.stderr
    assert not (workdir / "data").exists() and not (workdir / "results").exists()


def test_paper_profile_dry_run_plans_the_full_grid(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    proc = snakemake(workdir, "-n", "--cores", "1")
    out = proc.stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train"] == 3 * 6 * 3
    assert counts["attack"] == 54 and counts["evaluate"] == 54
    assert counts["attack_suite"] == 3 * 3  # one per (dataset, seed)
    assert counts["prepare_data"] == 3


@pytest.mark.workflow
def test_evasion_curve_csv_matches_metrics(finished_run: Path) -> None:
    import csv

    rows = json.loads((finished_run / "reports/e2e/metrics.json").read_text())["rows"]
    with open(finished_run / "reports/e2e/evasion_vs_eps.csv") as handle:
        curve = list(csv.DictReader(handle))
    assert len(curve) == 4
    by_key = {(r["lambda"], r["eps"]): r["uap_evasion_rate"] for r in rows}  # one seed
    for record in curve:
        key = (float(record["lambda"]), float(record["eps"]))
        assert float(record["uap_evasion_rate_mean"]) == pytest.approx(by_key[key])
        assert float(record["uap_evasion_rate_std"]) == 0.0


@pytest.mark.workflow
def test_one_core_run_gives_identical_metrics(finished_run: Path, tmp_path: Path) -> None:
    """Determinism and concurrency: a --cores 1 run equals the --cores 2 run, row for row.

    Each job sets torch's thread count from its ``threads:`` and keeps its scratch next to its
    own output, so two jobs running at once cannot change each other's numbers.
    """
    workdir = copy_workflow(tmp_path)
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(REDUCED))
    snakemake(workdir, "--cores", "1", "--configfile", "e2e.yaml")
    first = json.loads((finished_run / "reports/e2e/metrics.json").read_text())
    second = json.loads((workdir / "reports/e2e/metrics.json").read_text())
    assert first["rows"] == second["rows"]
    assert first["claims"] == second["claims"]
    assert first["config_sha256"] == second["config_sha256"]
    assert {r["train_threads"] for r in first["rows"]} == {1}


def test_paper_fashion_profile_validates_and_plans_the_paper_grid(tmp_path: Path) -> None:
    """configs/paper-fashion.yaml: the paper grid on Fashion-MNIST (18 models of the paper CNN,
    20 epochs), prepared from a local directory; a dry run needs no data and no GPU."""
    workdir = copy_workflow(tmp_path)
    source = tmp_path / "fashion-mnist"
    source.mkdir()  # a local source must exist; the dry run reads none of its files
    (workdir / "here.yaml").write_text(yaml.safe_dump(
        {"data": {"sources": {"fashion_mnist": str(source)}}}))
    proc = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile",
                     "configs/paper-fashion.yaml", "here.yaml")
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train"] == 6 * 3 and counts["attack"] == 18 and counts["evaluate"] == 18
    assert counts["attack_suite"] == 3 and counts["prepare_data"] == 1
    assert "results/paper-fashion/models/fashion_mnist/lam0.05_seed2.pt" in proc.stdout
    train_cmds = [ln for ln in proc.stdout.splitlines() if "jacreg.cli train" in ln]
    assert len(train_cmds) == 18
    assert all('"architecture": "cnn"' in ln and '"epochs": 20' in ln for ln in train_cmds)
