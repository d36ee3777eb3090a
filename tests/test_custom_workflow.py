"""End to end with your own model and data: the worked example (examples/custom) on a reduced
configuration, incremental reruns, scoring checkpoints trained elsewhere, and bad data refused
before any job. The real Snakemake CLI in a temporary directory."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ["Snakefile", "rules", "schemas", "config.yaml", "configs", "examples"]
NPZ = "data/examples/digits.npz"
REDUCED = {
    "run_name": "ex",
    "datasets": ["digits"],
    "lambdas": [0.0, 1.0],
    "seeds": [0],
    "epsilons": {"digits": [0.3]},
    "data": {"custom": {"digits": {"format": "npz", "path": NPZ, "attack_holdout": 100}}},
    "models": {"code_dirs": ["examples/custom"]},
    "train": {"architecture": "digits_net:build", "arch_kwargs": {"width": 4, "dropout": 0.1},
              "epochs": 1, "batch_size": 64},
    "attack": {"n_images": 100, "epochs": 1, "batch_size": 100, "replicates": 1,
               "strong": {"restarts": 0, "epochs": 1, "n_images": 100, "check_epochs": 1,
                          "losses": ["ce"]}},
    "analysis": {"n_inputs": 30, "n_pairs": 40, "pairs_per_class_pair": 2, "batch_size": 100,
                 "pgd_inputs": 30, "pgd_steps": 2, "bootstrap": {"samples": 100, "seed": 0}},
}


def _example_module():
    spec = importlib.util.spec_from_file_location("make_digits",
                                                  ROOT / "examples/custom/make_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's "Job stats" table."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's workflow, run once on 1,000 of its digits with a tiny configuration."""
    root = tmp_path_factory.mktemp("custom")
    for name in FILES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, root / name)
    make_digits = _example_module()
    arrays = make_digits.digits()
    small = {"x_train": arrays["x_train"][:800], "y_train": arrays["y_train"][:800],
             "x_test": arrays["x_test"][:200], "y_test": arrays["y_test"][:200],
             "class_names": arrays["class_names"]}
    assert make_digits.write_if_changed(small, root / NPZ)
    assert not make_digits.write_if_changed(small, root / NPZ)  # same content: not rewritten
    (root / "ex.yaml").write_text(yaml.safe_dump(REDUCED))
    snakemake(root, "--cores", "2", "--configfile", "ex.yaml")
    return root


@pytest.mark.workflow
def test_example_runs_end_to_end_with_the_custom_rows(workdir: Path) -> None:
    metrics = json.loads((workdir / "reports/ex/metrics.json").read_text())
    grid = {(r["dataset"], r["lambda"], r["seed"], r["eps"]) for r in metrics["rows"]}
    assert grid == {("digits", 0.0, 0, 0.3), ("digits", 1.0, 0, 0.3)}
    assert {c["dataset"] for c in metrics["claims"]} == {"digits"}
    html = (workdir / "reports/ex/report.html").read_text()
    assert "digits" in html
    evaluation = json.loads((workdir / "results/ex/eval/digits/lam0_seed0.json").read_text())
    assert evaluation["class_names"][:3] == ["zero", "one", "two"]  # from the .npz
    checkpoint = torch.load(workdir / "results/ex/models/digits/lam1_seed0.pt",
                            weights_only=True)
    assert checkpoint["architecture"] == "digits_net:build"
    assert checkpoint["arch_kwargs"] == {"in_channels": 1, "num_classes": 10, "image_size": 28,
                                         "width": 4, "dropout": 0.1}


@pytest.mark.workflow
def test_adding_a_lambda_trains_only_the_new_models(workdir: Path) -> None:
    config = dict(REDUCED, lambdas=[0.0, 0.5, 1.0])
    (workdir / "more.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(workdir, "-n", "--configfile", "more.yaml").stdout)
    assert counts.get("train") == 1 and counts.get("attack") == 1, counts
    assert "prepare_custom" not in counts and "import_model" not in counts, counts


@pytest.mark.workflow
def test_checkpoints_trained_elsewhere_are_scored_without_training(workdir: Path) -> None:
    entries = []
    for lam in ("0", "1"):  # the state dicts of the example's models, as another tool saves them
        payload = torch.load(workdir / f"results/ex/models/digits/lam{lam}_seed0.pt",
                             weights_only=True)
        path = workdir / "weights" / f"mine_lam{lam}.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(payload["state_dict"], path)
        entries.append({"lambda": float(lam), "seed": 0, "path": f"weights/{path.name}"})
    config = dict(REDUCED, run_name="scored", models={
        "code_dirs": ["examples/custom"],
        "pretrained": {"digits": {"architecture": "digits_net:build",
                                  "arch_kwargs": {"width": 4, "dropout": 0.1},
                                  "checkpoints": entries}}})
    (workdir / "scored.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(snakemake(workdir, "-n", "--configfile", "scored.yaml").stdout)
    assert "train" not in counts and counts["import_model"] == 2, counts
    assert counts["attack"] == counts["evaluate"] == 2 and counts["report"] == 1, counts
    # the import job's command, run here: a jacreg checkpoint with the same weights
    from jacreg.cli import main
    from jacreg.user_code import trust, trusted

    imported = workdir / "imported.pt"
    before, threads = trusted(), torch.get_num_threads()
    try:
        main(["--allow-architecture", "digits_net:build", "--code-dir",
              str(workdir / "examples/custom"), "import-model", "--dataset", "digits",
              "--lam", "1", "--seed", "0", "--source", str(workdir / entries[1]["path"]),
              "--data", str(workdir / "data/prepared/digits.pt"),
              "--architecture", "digits_net:build", "--arch-kwargs",
              json.dumps({"width": 4, "dropout": 0.1}), "--out", str(imported)])
    finally:
        trust(before.architectures, before.code_dirs)
        torch.set_num_threads(threads)
    payload = torch.load(imported, weights_only=True)
    trained = torch.load(workdir / "results/ex/models/digits/lam1_seed0.pt", weights_only=True)
    assert payload["architecture"] == trained["architecture"]
    assert payload["arch_kwargs"] == trained["arch_kwargs"]
    assert payload["meta"]["pretrained"] and payload["meta"]["lambda"] == 1.0
    evaluation = json.loads((workdir / "results/ex/eval/digits/lam1_seed0.json").read_text())
    assert payload["meta"]["clean_accuracy"] == pytest.approx(
        evaluation["rows"][0]["clean_accuracy"])
    for key, value in trained["state_dict"].items():
        assert torch.equal(payload["state_dict"][key], value), key


@pytest.mark.workflow
def test_bad_data_is_refused_before_any_job(workdir: Path) -> None:
    with np.load(workdir / NPZ) as good:
        arrays = {k: good[k] for k in good.files}
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][5] = 10  # ten class names: labels 0..9
    np.savez(workdir / "data/examples/bad.npz", **arrays)
    config = dict(REDUCED, run_name="bad",
                  data={"custom": {"digits": {"format": "npz", "path": "data/examples/bad.npz"}}},
                  datasets=["digits"])
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    before = (workdir / "data/prepared/digits.pt").stat().st_mtime_ns
    proc = snakemake(workdir, "--cores", "1", "--configfile", "bad.yaml", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "data/examples/bad.npz: y_test: 1 labels outside 0..9" in output, output
    assert not (workdir / "results/bad").exists() and not (workdir / "logs/bad").exists()
    assert (workdir / "data/prepared/digits.pt").stat().st_mtime_ns == before
