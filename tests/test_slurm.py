"""The workflow on a real (one-node, local) SLURM cluster through profiles/slurm.

Starts the cluster with scripts/local-slurm-cluster.sh (root; installs slurm-wlm and munge when
missing), runs a reduced quick profile with ``--profile profiles/slurm``, kills one training job
with SIGKILL mid-way, and checks that SLURM ran the jobs, that the retried job resumed from its
last epoch, and that the numbers equal a local run's. The cluster is stopped even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import REDUCED, copy_workflow, snakemake

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local-slurm-cluster.sh"
CONFIG = dict(REDUCED, train=dict(REDUCED["train"], epochs=3))
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2",
                "--seconds-between-status-checks", "3"]
SMALL_JOBS = ["--set-threads", "train=1", "attack=1", "evaluate=1",
              "--set-resources", "train:mem_mb=2000", "attack:mem_mb=2000",
              "evaluate:mem_mb=2000"]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None,
                       reason="the local SLURM cluster needs root and apt-get"),
]


@pytest.fixture(scope="module")
def cluster():
    env = dict(os.environ, JACREG_SLURM_DIR="/tmp/jacreg-slurm-test")
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, env=env, timeout=600)
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120)


def kill_first_training_midway(workdir: Path, stop: threading.Event, killed: list[str]) -> None:
    """SIGKILL the first training process once its first epoch's resume state is on disk."""
    models = workdir / "results" / "e2e" / "models" / "mnist5k"
    while not stop.is_set():
        states = sorted(models.glob("*.resume.pt")) if models.exists() else []
        if states:
            stem = states[0].name.replace(".resume.pt", "")
            proc = subprocess.run(["pgrep", "-f", rf"jacreg\.cli train .*/{stem}\.pt"],
                                  capture_output=True, text=True)
            pids = [int(p) for p in proc.stdout.split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(states[0].name)
            if killed:
                return
        time.sleep(0.05)


def test_workflow_runs_through_slurm_and_resumes_after_sigkill(cluster, tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "slurm").mkdir()
    local = copy_workflow(tmp_path / "local")
    (local / "e2e.yaml").write_text(yaml.safe_dump(CONFIG))
    snakemake(local, "--cores", "2", "--configfile", "e2e.yaml")

    remote = copy_workflow(tmp_path / "slurm")
    shutil.copytree(REPO / "profiles", remote / "profiles")
    (remote / "e2e.yaml").write_text(yaml.safe_dump(CONFIG))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_training_midway, args=(remote, stop, killed))
    killer.start()
    try:
        proc = snakemake(remote, "--profile", "profiles/slurm", "--configfile", "e2e.yaml",
                         *FAST_POLLING, *SMALL_JOBS)
    finally:
        stop.set()
        killer.join()
    out = proc.stdout + proc.stderr

    # every cluster job went through sbatch: 2 trainings + 2 attack/evaluate groups, plus the
    # retried training; preparation, aggregation and the report are local rules
    submitted = [line for line in out.splitlines() if "submitted with SLURM jobid" in line]
    assert len(submitted) >= 4, out
    assert any("rule_train" in line for line in submitted)
    assert any("group_uap_eval" in line or "uap_eval" in line for line in submitted), out
    assert (remote / "logs" / "slurm").is_dir()

    assert killed, "no training process was killed"
    stem = killed[0].replace(".resume.pt", "")
    train_log = (remote / f"logs/e2e/train/mnist5k/{stem}.log").read_text()
    assert "resuming from" in train_log and "at epoch=" in train_log, train_log

    metrics = json.loads((remote / "reports/e2e/metrics.json").read_text())
    reference = json.loads((local / "reports/e2e/metrics.json").read_text())
    assert metrics["rows"] == reference["rows"]
    assert (remote / "reports/e2e/report.html").stat().st_size > 10_000
