"""Faults: SIGKILL mid-training resumes to identical numbers; kills and full disks mid-write
never leave a file a later step would accept; corrupted prepared data is moved aside."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_workflow import REDUCED, copy_workflow, snakemake

from jacreg import io
from jacreg.data import load_dataset, load_prepared, prepare_dataset
from jacreg.models import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"architecture": "cnn_small", "epochs": 4, "batch_size": 64, "optimizer": "adam",
            "lr": 0.001, "n_proj": 1, "schedule": "constant", "augment": False,
            "weight_decay": 0.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mnist5k.pt"
    prepare_dataset("mnist5k", path)
    return path


def train_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "jacreg.cli", "train", "--dataset", "mnist5k", "--lam", "0.1",
            "--seed", "3", "--data", str(data), "--settings", json.dumps(SETTINGS),
            "--device", "cpu", "--threads", "1", "--out", str(out)]


def test_sigkill_mid_training_resumes_to_identical_numbers(prepared: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.pt"
    subprocess.run(train_command(prepared, reference), check=True, capture_output=True,
                   timeout=600)

    killed = tmp_path / "killed.pt"
    state = killed.with_name("killed.resume.pt")
    proc = subprocess.Popen(train_command(prepared, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not state.exists():  # the first epoch's resumable state is on disk
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    resumed_epoch = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= resumed_epoch < SETTINGS["epochs"]

    rerun = subprocess.run(train_command(prepared, killed), check=True, capture_output=True,
                           text=True, timeout=600)
    assert re.search(rf"resuming from .* at epoch={resumed_epoch}/4", rerun.stderr)
    assert not state.exists()  # removed once the checkpoint is written

    a, b = load_checkpoint(reference), load_checkpoint(killed)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.checkpoint_meta["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"}
                     for h in b.checkpoint_meta["history"]]


WRITER = """
import sys, torch
from jacreg.io import save_torch
big = torch.arange(int(sys.argv[2]), dtype=torch.float32)
i = 0
while True:
    i += 1
    save_torch({"version": i, "data": big + i}, sys.argv[1])
"""


def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "uap.pt"
    n = 4_000_000  # 16 MB per write
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(n)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():  # whatever is there is a complete version
            payload = io.load_torch(target)
            assert torch.equal(payload["data"], torch.arange(n, dtype=torch.float32)
                               + payload["version"])


def test_disk_full_while_writing_keeps_the_good_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model.pt"
    io.save_torch({"w": torch.ones(3)}, target)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full_disk)
    with pytest.raises(OSError, match=r"could not write .*model\.pt.*No space left"):
        io.save_torch({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(io.load_torch(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_corrupted_prepared_file_is_moved_aside_and_rebuilt(prepared: Path,
                                                           tmp_path: Path) -> None:
    copy = tmp_path / "prepared" / "mnist5k.pt"
    copy.parent.mkdir()
    payload = torch.load(prepared, weights_only=True)
    payload["x_test"][0, 0, 0, 0] ^= 1  # one flipped bit; the recorded digest is the old one
    torch.save(payload, copy)
    with pytest.raises(ValueError, match="SHA-256"):
        load_prepared(copy)
    assert not copy.exists() and copy.with_name("mnist5k.pt.corrupt").exists()

    truncated = tmp_path / "prepared" / "truncated.pt"
    truncated.write_bytes(prepared.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pt: corrupted"):
        load_prepared(truncated)

    # the API path rebuilds it in place
    torch.save(payload, copy)
    x, _ = load_dataset("mnist5k", "test", root=tmp_path)
    assert torch.equal(x, load_dataset("mnist5k", "test", path=prepared)[0])


def test_shell_commands_quote_every_config_string() -> None:
    """No rule interpolates a config-derived string into its shell command unquoted."""
    numeric = {"params.lam", "wildcards.seed", "threads", "params.dpi", "JACREG"}
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:\s+\".*\"\n?)+)", text):
            for field in re.findall(r"\{([^{}]+)\}", block):
                name, _, spec = field.partition(":")
                assert spec == "q" or name in numeric, f"{smk.name}: {{{field}}} is unquoted"


@pytest.mark.workflow
def test_snakemake_killed_mid_training_then_the_same_command_recovers(tmp_path: Path) -> None:
    """README, failure modes: Snakemake itself killed (SIGKILL to its process group, as the OOM
    killer or a reboot would leave it) mid-training; the same command again finishes with the
    numbers of an uninterrupted run. A second Snakemake started while the first lives is refused.
    """
    config = dict(REDUCED, train=dict(REDUCED["train"], epochs=8))  # a window to kill it in
    reference = copy_workflow(tmp_path / "reference")
    (reference / "e2e.yaml").write_text(yaml.safe_dump(config))
    snakemake(reference, "--cores", "2", "--configfile", "e2e.yaml")

    workdir = copy_workflow(tmp_path / "killed")
    shutil.copytree(REPO / "profiles" / "default", workdir / "profiles" / "default")
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "e2e.yaml"]
    models = workdir / "results" / "e2e" / "models" / "mnist5k"
    train_logs = workdir / "logs" / "e2e" / "train" / "mnist5k"

    def wait_for(predicate, what: str) -> None:
        deadline = time.monotonic() + 600
        while not predicate():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=workdir, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(list(train_logs.glob("*.log"))) == 2, "both trainings to start")
        refused = snakemake(workdir, "--cores", "2", "--configfile", "e2e.yaml", check=False)
        assert refused.returncode != 0
        assert "LockException" in refused.stderr, refused.stderr
        assert "Another Snakemake process is running in this directory" in refused.stderr
        wait_for(lambda: list(models.glob("*.resume.pt")), "a saved epoch")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    unfinished = [p for p in models.glob("*.resume.pt")]
    assert unfinished, "both trainings had finished before the kill"
    assert list((workdir / ".snakemake" / "locks").glob("*.lock")), "no stale lock was left"

    again = snakemake(workdir, "--cores", "2", "--configfile", "e2e.yaml")  # the same command
    assert "stale Snakemake lock file(s)" in again.stderr, again.stderr
    for state in unfinished:
        log = (train_logs / state.name.replace(".resume.pt", ".log")).read_text()
        assert "resuming from" in log, log
    first_rows = json.loads((reference / "reports/e2e/metrics.json").read_text())["rows"]
    again_rows = json.loads((workdir / "reports/e2e/metrics.json").read_text())["rows"]
    assert again_rows == first_rows
