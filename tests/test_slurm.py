"""The workflow on a real (one-node, local) SLURM cluster, as docs/cluster.md tells a new user.

One cluster (scripts/local-slurm-cluster.sh; root, installs slurm-wlm and munge when missing) for
the module, stopped even on failure. Every run is the guide's "Try it on one machine" command,
read from docs/cluster.md (the block tagged ``test: tests/test_slurm.py trial``) and run as
written in a copy of the workflow whose `configs/quick.yaml` is a reduced quick profile
(2 models, 4 epochs) so that CI stays short; nothing else is overridden:

- an impossible request (`--set-resources train:mem_mb=999999`, without the guide's cap) stops
  within 60 s before any sbatch, naming the override; sbatch itself refuses such a job;
- the guide's command reaches the report (the reference run);
- Snakemake's process group killed with SIGKILL mid-training: a second Snakemake started while
  the first was alive is refused; after the kill the same command again cancels the jobs the dead
  one left, resumes, survives a training job killed mid-way (retried, resumed), and ends with the
  reference run's numbers;
- a job pending for a reason that never clears is reported; Ctrl-C, and a second SIGTERM,
  leave none of the run's jobs queued.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from doc_blocks import block, commands
from test_workflow import REDUCED, copy_workflow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local-slurm-cluster.sh"
CONFIG = dict(REDUCED, run_name="quick", train=dict(REDUCED["train"], epochs=4))
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"}

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None,
                       reason="the local SLURM cluster needs root and apt-get"),
]


def readme_trial() -> list[str]:
    """The command lines of docs/cluster.md's "Try it on one machine" block."""
    return commands(block("docs/cluster.md", "trial", "tests/test_slurm.py"))


def readme_snakemake() -> str:
    (line,) = [c for c in readme_trial() if "snakemake" in c]
    return line


@pytest.fixture(scope="module")
def cluster():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JACREG_")}
    start, stop = readme_trial()[0], readme_trial()[-1]
    assert start == "scripts/local-slurm-cluster.sh start", start
    assert stop == "scripts/local-slurm-cluster.sh stop", stop
    # OMP_NUM_THREADS=1 as a shell may have it: the node must still offer the CPUs this
    # process may use (GNU nproc alone would say 1)
    cluster_env = dict(env, JACREG_SLURM_DIR="/tmp/jacreg-slurm-test", OMP_NUM_THREADS="1")
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, env=cluster_env, timeout=600)
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=cluster_env, timeout=120)


def trial_copy(dest: Path) -> Path:
    """A checkout as the README assumes it: workflow, profiles, scripts and `.venv`."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_workflow(dest)
    shutil.copytree(REPO / "profiles", dest / "profiles")
    shutil.copytree(REPO / "scripts", dest / "scripts")
    (dest / ".venv").symlink_to(Path(sys.prefix))
    (dest / "configs" / "quick.yaml").write_text(yaml.safe_dump(CONFIG))
    return dest


def run_line(workdir: Path, line: str, env: dict, timeout: float = 900,
             check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{line} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_line(workdir: Path, line: str, env: dict, log: Path) -> subprocess.Popen:
    """Start ``line`` in its own process group (a terminal's foreground job), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(["bash", "-c", line], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def snakemake_pid(shell: subprocess.Popen) -> int:
    """The Snakemake process that the shell running a README line started."""
    def child():
        if b"snakemake" in Path(f"/proc/{shell.pid}/cmdline").read_bytes():
            return shell.pid  # bash ran the single command in its own place (exec)
        out = subprocess.run(["pgrep", "-P", str(shell.pid), "-f", "snakemake"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None
    return wait_for(child, 30, "the Snakemake process")


def queued(workdir: Path) -> list[dict]:
    """This working directory's jobs that SLURM still has queued or running."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%Z|%k|%r"], capture_output=True,
                         text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        jobid, state, wd, comment, reason = line.split("|", 4)
        if os.path.realpath(wd) == os.path.realpath(workdir) and state in ACTIVE:
            jobs.append({"id": jobid, "state": state, "comment": comment, "reason": reason})
    return jobs


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rows(workdir: Path) -> list[dict]:
    return json.loads((workdir / "reports/quick/metrics.json").read_text())["rows"]


def test_readme_trial_commands() -> None:
    lines = readme_trial()
    assert lines[0] == "scripts/local-slurm-cluster.sh start"
    assert re.fullmatch(r"JACREG_SLURM_CAP=1 \.venv/bin/snakemake --profile profiles/slurm "
                        r"--configfile configs/quick\.yaml && ls reports/quick/report\.html",
                        lines[1]), lines[1]
    assert lines[-1] == "scripts/local-slurm-cluster.sh stop"


def test_impossible_request_fails_fast_and_sbatch_refuses_it(cluster, tmp_path: Path) -> None:
    work = trial_copy(tmp_path / "w")
    line = (readme_snakemake().split(" && ")[0].replace("JACREG_SLURM_CAP=1 ", "")
            + " --set-resources train:mem_mb=999999")
    start = time.monotonic()
    proc = run_line(work, line, cluster, timeout=120, check=False)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and elapsed < 60, out
    assert "could never start on this cluster; nothing was submitted" in out
    assert "999999 MB > " in out and re.search(r"--set-resources train:mem_mb=\d+", out), out
    assert "submitted with SLURM jobid" not in out and not (work / "logs" / "slurm").exists()
    assert queued(work) == []
    # the controller itself refuses such a job at submission (EnforcePartLimits=ALL)
    for request in (["--mem=999999"], [f"--cpus-per-task={len(os.sched_getaffinity(0)) + 1}"]):
        sbatch = subprocess.run(["sbatch", "--parsable", *request, "--wrap", "true"],
                                capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert sbatch.returncode != 0, (request, sbatch.stdout, sbatch.stderr)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's command, run as written: the uninterrupted reference."""
    work = trial_copy(tmp_path_factory.mktemp("reference"))
    start = time.monotonic()
    proc = run_line(work, readme_snakemake(), cluster)
    print(f"README trial on the local cluster: {time.monotonic() - start:.0f} s")
    return work, proc.stderr + proc.stdout  # Snakemake's log, then the `ls` of the report


def test_readme_trial_reaches_the_report(reference) -> None:
    work, out = reference
    assert out.rstrip().endswith("reports/quick/report.html")
    assert "JACREG_SLURM_CAP=1: requests lowered" in out or len(os.sched_getaffinity(0)) >= 4
    assert "SLURM pre-flight check: every cluster job fits its partition" in out
    submitted = [line for line in out.splitlines() if "submitted with SLURM jobid" in line]
    # 2 trainings, 2 attack/evaluate groups, 1 attack suite; the rest are local rules
    assert len(submitted) == 5, out
    assert sum("rule_train" in line for line in submitted) == 2
    assert sum("group_uap_eval" in line for line in submitted) == 2
    assert (work / "logs" / "slurm").is_dir()
    # the cap reached the jobs themselves: each training used the CPUs SLURM gave it
    cpus = min(4, len(os.sched_getaffinity(0)))  # the node's CPUs: the script uses nproc
    # sbatch asked for the lowered CPUs, and the training ran one thread on each CPU SLURM let
    # it see (the job step's `--cores all` limits Snakemake's threads to those)
    logs = sorted((work / "logs/quick/train/mnist5k").glob("*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        granted = re.search(r" threads=(\d+) visible_cpus=(\d+) slurm_job=\d+ "
                            r"slurm_cpus_per_task=(\d+) ", text)
        assert granted, text
        threads, visible, per_task = map(int, granted.groups())
        assert per_task == cpus, text
        assert threads == min(per_task, visible), text
    assert (work / "reports/quick/report.html").stat().st_size > 10_000
    assert queued(work) == []


def process_start(pid: int) -> float:
    """When process ``pid`` started (epoch seconds), from /proc."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def kill_one_training(work: Path, log: Path, stop: threading.Event, killed: list[str]) -> None:
    """Once the run writing ``log`` submits, SIGKILL the first training it started that has saved
    an epoch (its python process and the shell around it)."""
    while not stop.is_set() and "submitted with SLURM jobid" not in log.read_text():
        time.sleep(0.1)
    since = time.time()
    while not stop.is_set():
        procs = subprocess.run(["pgrep", "-af", r"jacreg\.cli train "], capture_output=True,
                               text=True).stdout
        by_model: dict[str, list[int]] = {}
        for line in procs.splitlines():
            pid, _, cmd = line.partition(" ")
            try:  # only this run's trainings: other tests may train at the same time (xdist)
                if Path(f"/proc/{pid}/cwd").resolve() != work.resolve():
                    continue
            except OSError:
                continue
            match = re.search(r"--out '?([^' ]+)\.pt", cmd)
            if match:
                by_model.setdefault(match.group(1), []).append(int(pid))
        for model, pids in by_model.items():
            try:
                started = min(process_start(pid) for pid in pids)
                saved = (work / f"{model}.resume.pt").stat().st_mtime
            except (OSError, ValueError, IndexError):
                continue
            if started > since and saved > started:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed.append(Path(model).name)
                return
        time.sleep(0.05)


def test_snakemake_killed_then_the_same_command_recovers(cluster, reference,
                                                         tmp_path: Path) -> None:
    work = trial_copy(tmp_path / "w")
    line = readme_snakemake()
    first = start_line(work, line, cluster, tmp_path / "first.log")
    try:
        log = tmp_path / "first.log"
        wait_for(lambda: "submitted with SLURM jobid" in log.read_text(), 300, "a submission")
        # a second Snakemake while the first one lives: refused, the first one untouched
        second = run_line(work, line, cluster, timeout=120, check=False)
        out = second.stdout + second.stderr
        assert second.returncode != 0, out
        assert "LockException" in out and "Another Snakemake process is running" in out, out
        assert first.poll() is None and queued(work)
        # mid-training: the first epoch of a model is saved
        models = work / "results/quick/models/mnist5k"
        wait_for(lambda: list(models.glob("*.resume.pt")), 300, "a saved epoch")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    left = queued(work)
    assert left, "the killed Snakemake left no job in the queue"
    assert (work / ".snakemake" / "locks").is_dir()

    # the README's words: rerun the same command
    log = tmp_path / "again.log"
    log.write_text("")
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_one_training, args=(work, log, stop, killed))
    killer.start()
    try:
        again = start_line(work, line, cluster, log)
        again.wait(timeout=900)
    finally:
        stop.set()
        killer.join()
    out = log.read_text()
    assert again.returncode == 0, out
    assert re.search(r"Removed \d+ stale Snakemake lock file\(s\)", out), out
    # the jobs the dead Snakemake left (at least the training still pending) are cancelled
    cancelled = re.search(r"Cancelling \d+ SLURM job\(s\) that a Snakemake process that is "
                          r"gone left.*", out)
    assert cancelled, out
    ids = re.findall(r"(\d+) \(rule train", cancelled.group(0))
    assert ids and set(ids) <= {j["id"] for j in left}, (cancelled.group(0), left)
    assert killed and "Trying to restart job" in out, out
    train_log = (work / f"logs/quick/train/mnist5k/{killed[0]}.log").read_text()
    assert "resuming from" in train_log and "at epoch=" in train_log, train_log
    assert rows(work) == rows(reference[0])
    assert queued(work) == []


def test_stuck_job_is_reported_and_interrupts_leave_no_job(cluster, tmp_path: Path) -> None:
    work = trial_copy(tmp_path / "w")
    env = dict(cluster, JACREG_SLURM_STUCK_AFTER="3")
    line = readme_snakemake().split(" && ")[0]
    partition = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], check=True)
    try:
        for how in ("ctrl-c", "sigterm twice"):
            log = tmp_path / f"{how}.log"
            proc = start_line(work, line, env, log)
            try:
                text = wait_for(lambda log=log: re.search(
                    r"SLURM job (\d+) \((rule train[^)]*)\) has been PENDING for \d+ s with "
                    r"reason PartitionDown, which will not clear by itself", log.read_text()),
                    180, f"the stuck-job report ({how})")
                assert text.group(1) in {j["id"] for j in queued(work)}
                assert f"partition '{partition}' is DOWN" in log.read_text()
                if how == "ctrl-c":
                    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
                else:  # `kill PID`, twice
                    pid = snakemake_pid(proc)
                    os.kill(pid, signal.SIGTERM)
                    wait_for(lambda log=log: "Send SIGTERM again" in log.read_text(), 30,
                             "the SIGTERM notice")
                    time.sleep(3)
                    assert proc.poll() is None and queued(work), log.read_text()
                    os.kill(pid, signal.SIGTERM)
                proc.wait(timeout=90)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            assert proc.returncode != 0
            assert queued(work) == [], log.read_text()
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=UP"],
                       check=True)
