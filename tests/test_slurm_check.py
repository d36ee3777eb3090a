"""The SLURM pre-flight check, stuck-job reasons, orphans and stale Snakemake locks, without a
cluster: scontrol/squeue text as the commands print it, fake SLURM commands on PATH for the real
Snakemake CLI, and real processes holding (or no longer holding) the working directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import REDUCED, copy_workflow

from jacreg.config import format_lambda
from jacreg.workflow import slurm_check as sc
from jacreg.workflow import workdir_lock

REPO = Path(__file__).resolve().parents[1]

# scripts/local-slurm-cluster.sh on a 2-core, 24 GB machine (Debian slurm-wlm 22.05), `-o` form,
# as captured
LOCAL_PARTITION = (
    'PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL '
    'Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 '
    'Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO '
    'MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 RootOnly=NO '
    'ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 '
    'TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED '
    'MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=21736M,node=1,billing=2\n'
)
LOCAL_NODE = (
    'NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=1.71 '
    'AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:1 NodeAddr=vm NodeHostName=vm '
    'Version=22.05.8 OS=Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=21736 '
    'AllocMem=0 FreeMem=4871 Sockets=2 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 '
    'Weight=1 Owner=N/A MCS_label=N/A Partitions=debug  BootTime=2026-11-30T14:47:53 '
    'SlurmdStartTime=2026-11-30T16:00:24 LastBusyTime=2026-11-30T16:00:27 '
    'CfgTRES=cpu=2,mem=21736M,billing=2 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 '
    'ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s\n'
)

# a typical HPC site: CPU nodes without GPUs (default), A100 nodes, a short debug partition;
# the default (multi-line) scontrol form
SITE_PARTITIONS = textwrap.dedent("""\
    PartitionName=cpu
       AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL
       Default=YES QoS=N/A
       MaxNodes=4 MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
       Nodes=c[01-04]
       State=UP TotalCPUs=256 TotalNodes=4
       DefMemPerCPU=2000 MaxMemPerNode=UNLIMITED

    PartitionName=gpu
       AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL
       Default=NO QoS=N/A
       MaxNodes=UNLIMITED MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=32
       Nodes=g[1-2]
       State=UP TotalCPUs=128 TotalNodes=2
       DefMemPerNode=UNLIMITED MaxMemPerNode=240000

    PartitionName=short
       Default=NO MaxTime=00:30:00 MaxCPUsPerNode=UNLIMITED Nodes=c[01-04],g[1-2]
       State=DOWN TotalCPUs=384 TotalNodes=6 MaxMemPerNode=UNLIMITED
    """)
SITE_NODES = "".join(
    f"NodeName=c0{i} Arch=x86_64 CPUAlloc=0 CPUTot=64 Gres=(null) RealMemory=256000 "
    f"MemSpecLimit=4000 State=IDLE Partitions=cpu,short Reason=Not responding [slurm]\n"
    for i in range(1, 5)
) + "".join(
    f"NodeName=g{i} Arch=x86_64 CPUAlloc=0 CPUTot=64 CPUEfctv=62 Gres=gpu:a100:4(S:0-1) "
    f"RealMemory=512000 State=MIXED Partitions=gpu,short\n"
    for i in (1, 2)
)

PROFILE_TRAIN = {"_cores": 4, "gpu": 1, "mem_mb": 16000, "runtime": 180, "slurm_partition": ""}


def local() -> dict[str, sc.Partition]:
    return sc.parse_partitions(LOCAL_PARTITION, LOCAL_NODE)


def site() -> dict[str, sc.Partition]:
    return sc.parse_partitions(SITE_PARTITIONS, SITE_NODES)


def test_parse_records_reads_both_scontrol_forms() -> None:
    node = sc.parse_records(LOCAL_NODE)[0]
    assert node["NodeName"] == "vm" and node["Gres"] == "gpu:1"
    assert node["OS"] == "Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0"
    assert node["CfgTRES"] == "cpu=2,mem=21736M,billing=2" and node["AllocTRES"] == ""
    parts = sc.parse_records(SITE_PARTITIONS)
    assert [p["PartitionName"] for p in parts] == ["cpu", "gpu", "short"]
    assert parts[1]["MaxCPUsPerNode"] == "32" and parts[0]["Nodes"] == "c[01-04]"
    assert sc.parse_records(SITE_NODES)[0]["Reason"] == "Not responding [slurm]"


@pytest.mark.parametrize(("text", "minutes"), [
    ("UNLIMITED", None), ("INFINITE", None), ("30", 30), ("30:59", 30), ("01:00:00", 60),
    ("2-00:00:00", 2880), ("1-12", 2160), ("1-00:30", 1470),
])
def test_parse_time_minutes(text: str, minutes: int | None) -> None:
    assert sc.parse_time_minutes(text) == minutes


def test_parse_gres_and_hostlist() -> None:
    assert sc.parse_gres("(null)") == ()
    assert sc.parse_gres("gpu:1") == (("gpu", None, 1),)
    assert sc.parse_gres("gpu:a100:4(S:0-1),mps:100") == (("gpu", "a100", 4), ("mps", None, 100))
    assert sc.parse_gres("gpu") == (("gpu", None, 1),)
    assert sc.expand_hostlist("c[01-03,07],g1") == ["c01", "c02", "c03", "c07", "g1"]


def test_partitions_with_their_nodes_and_limits() -> None:
    parts = site()
    assert set(parts) == {"cpu", "gpu", "short"} and sc.default_partition(parts) == "cpu"
    cpu, gpu = parts["cpu"], parts["gpu"]
    assert [n.name for n in cpu.nodes] == ["c01", "c02", "c03", "c04"]
    assert cpu.nodes[0].mem_mb == 252000 and cpu.max_time == 2880 and cpu.max_nodes == 4
    assert gpu.nodes[0].cpus == 62 and gpu.nodes[0].gres_count("gpu") == 4
    assert gpu.nodes[0].gres_count("gpu", "a100") == 4
    assert gpu.nodes[0].gres_count("gpu", "v100") == 0
    assert gpu.max_mem_per_node == 240000 and gpu.mem_limit(gpu.nodes[0]) == 240000
    assert gpu.cpu_limit(gpu.nodes[0]) == 32
    # nodes come from the partition's host list when the nodes do not name their partitions
    bare = SITE_NODES.replace(" Partitions=cpu,short", "")
    assert [n.name for n in sc.parse_partitions(SITE_PARTITIONS, bare)["cpu"].nodes] == [
        "c01", "c02", "c03", "c04"]


def test_request_follows_the_plugins_sbatch_arguments() -> None:
    req = sc.request_from_resources(["train"], PROFILE_TRAIN)
    assert (req.cpus, req.mem_mb, req.gpus, req.runtime, req.partitions) == (4, 16000, 1, 180, ())
    req = sc.request_from_resources(["x"], {"_cores": 2, "cpus_per_task": 8, "mem_mb_per_cpu": 1000,
                                            "gres": "gpu:a100:2", "slurm_partition": "gpu,cpu"})
    assert (req.cpus, req.cpus_from, req.mem_mb) == (8, "cpus_per_task", 8000)
    assert (req.gpus, req.gpu_type, req.partitions) == (2, "a100", ("gpu", "cpu"))
    # unevaluated values (input sizes before the input exists) are no request
    req = sc.request_from_resources(["y"], {"_cores": 1, "mem_mb": "<TBD>", "runtime": None})
    assert req.mem_mb is None and req.runtime is None


def profile_requests() -> tuple[list[sc.Request], dict[str, sc.Request]]:
    """profiles/slurm's requests for train, the uap_eval group and attack_suite."""
    rules = {name: sc.request_from_resources([name], dict(PROFILE_TRAIN, runtime=rt))
             for name, rt in (("train", 180), ("attack", 60), ("evaluate", 60),
                              ("attack_suite", 60))}
    group = sc.request_from_resources(["attack", "evaluate"], dict(PROFILE_TRAIN, runtime=120),
                                      group="uap_eval", jobs=10)
    return [rules["train"], group, rules["attack_suite"]], rules


def test_profile_on_a_two_core_node_names_the_thread_override() -> None:
    requests, rules = profile_requests()
    result = sc.check_requests(requests, local(), rules)
    assert not result.ok and len(result.findings) == 3
    assert all([p.kind for p in f.problems] == ["cpus"] for f in result.findings)
    message = sc.format_findings(result, local())
    assert "rule train asks for 4 CPUs, 16000 MB memory, 1 GPU, 180 min in partition 'debug'" in (
        message)
    assert "group uap_eval (rules attack, evaluate) (10 jobs)" in message
    assert "offers at most 2 CPUs, 21736 MB memory and 1 gpu per node" in message
    assert "--set-threads train=2 attack=2 evaluate=2 attack_suite=2" in message
    assert "JACREG_SLURM_CAP=1" in message and "nothing was submitted" in message


def test_impossible_memory_names_the_resource_override() -> None:
    requests = [sc.request_from_resources(["train"], dict(PROFILE_TRAIN, _cores=1,
                                                          mem_mb=999999))]
    result = sc.check_requests(requests, local())
    assert [(p.kind, p.asked, p.offered) for p in result.findings[0].problems] == [
        ("mem", 999999, 21736)]
    assert "--set-resources train:mem_mb=21736" in sc.format_findings(result, local())


def test_gpu_request_on_a_cpu_partition_points_to_the_gpu_partition() -> None:
    parts = site()
    req = sc.request_from_resources(["train"], PROFILE_TRAIN)
    result = sc.check_requests([req], parts)
    finding = result.findings[0]
    assert finding.partition == "cpu" and [p.kind for p in finding.problems] == ["gpus"]
    assert finding.elsewhere == ("gpu",)  # not 'short': MaxTime 30 min, and it is DOWN
    message = sc.format_findings(result, parts)
    assert "export JACREG_SLURM_PARTITION=gpu" in message
    assert "--set-resources train:gpu=0" in message
    # the same request in the GPU partition fits; a down partition only warns
    ok = sc.check_requests([sc.request_from_resources(["train"], dict(
        PROFILE_TRAIN, slurm_partition="gpu"))], parts)
    assert ok.ok and not ok.warnings
    down = sc.check_requests([sc.request_from_resources(["t"], {
        "_cores": 1, "runtime": 10, "slurm_partition": "short"})], parts)
    assert down.ok and "partition 'short' is DOWN" in down.warnings[0]


def test_group_runtime_over_maxtime_scales_its_rules() -> None:
    parts = site()
    rules = {name: sc.request_from_resources([name], {"_cores": 4, "runtime": rt,
                                                      "slurm_partition": "gpu", "gpu": 1})
             for name, rt in (("attack", 1000), ("evaluate", 1000))}
    group = sc.request_from_resources(["attack", "evaluate"], {
        "_cores": 4, "runtime": 2000, "slurm_partition": "gpu", "gpu": 1}, group="uap_eval")
    result = sc.check_requests([group], parts, rules)
    assert [(p.kind, p.asked, p.offered) for p in result.findings[0].problems] == [
        ("runtime", 2000, 1440)]
    message = sc.format_findings(result, parts)
    assert "2000 min in total" in message
    assert "--set-resources attack:runtime=720 evaluate:runtime=720" in message
    caps = sc.cap_requests([group], rules, parts)
    assert caps == {"attack": {"runtime": 720}, "evaluate": {"runtime": 720}}


def test_unknown_partition_and_cpu_limit_per_node() -> None:
    parts = site()
    result = sc.check_requests([sc.request_from_resources(["train"], {
        "_cores": 1, "slurm_partition": "gpus"})], parts)
    assert result.findings[0].problems[0].kind == "partition"
    assert "partition 'gpus' does not exist; partitions: cpu, gpu, short" in sc.format_findings(
        result, parts)
    # MaxCPUsPerNode=32 of the GPU partition, although its nodes have 62
    result = sc.check_requests([sc.request_from_resources(["train"], dict(
        PROFILE_TRAIN, _cores=48, slurm_partition="gpu"))], parts)
    assert [(p.kind, p.offered) for p in result.findings[0].problems] == [("cpus", 32)]


def test_cap_lowers_each_rule_to_the_largest_node() -> None:
    requests, rules = profile_requests()
    caps = sc.cap_requests(requests, rules, local())
    assert caps == {name: {"_cores": 2} for name in ("train", "attack", "evaluate",
                                                      "attack_suite")}
    assert sc.describe_caps(caps, rules)[0] == "rule attack: 4 -> 2 CPUs"
    huge = sc.request_from_resources(["train"], dict(PROFILE_TRAIN, mem_mb=999999, gpu=3))
    assert sc.cap_requests([huge], {"train": huge}, local()) == {
        "train": {"_cores": 2, "mem_mb": 21736, "gpu": 1}}
    # on a site: the request goes to its own partition's best node, GPUs first
    caps = sc.cap_requests([sc.request_from_resources(["train"], dict(
        PROFILE_TRAIN, _cores=48, gpu=8, slurm_partition="gpu"))], {}, site())
    assert caps == {"train": {"_cores": 32, "gpu": 4}}


def test_reasons_that_never_clear() -> None:
    for reason in ("PartitionConfig", "ReqNodeNotAvail, UnavailableNodes:c01", "InvalidAccount",
                   "QOSMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit", "PartitionDown"):
        assert sc.never_clears(reason), reason
    for reason in ("Priority", "Resources", "Dependency", "QOSGrpCpuLimit", "None",
                   "BeginTime", "AssocGrpJobsLimit"):
        assert sc.never_clears(reason) is None, reason


def test_stuck_tracker_reports_each_job_once_after_the_threshold() -> None:
    rows = sc.parse_squeue(
        "101|PENDING|/w|run-uuid|rule_train_wildcards_mnist5k_0_0|PartitionConfig\n"
        "102|PENDING|/w|run-uuid|rule_uap_eval|Priority\n"
        "103|RUNNING|/w|run-uuid|rule_train_wildcards_mnist5k_1_0|None\n")
    tracker = sc.StuckTracker(after_seconds=60)
    assert tracker.update(0, rows) == []
    assert tracker.update(59, rows) == []
    (message,) = tracker.update(61, rows)
    assert message.startswith("SLURM job 101 (rule train, wildcards mnist5k_0_0) has been PENDING"
                              " for 61 s with reason PartitionConfig, which will not clear")
    assert tracker.update(500, rows) == []
    # the watcher names the job as Snakemake knows it when it can
    other = sc.StuckTracker(0)
    (named,) = other.update(5, rows, {"101": "rule train, dataset=mnist5k, lam=0, seed=0"})
    assert "SLURM job 101 (rule train, dataset=mnist5k, lam=0, seed=0)" in named
    assert sc.stuck_after_seconds({}) == 300 and sc.stuck_after_seconds(
        {"JACREG_SLURM_STUCK_AFTER": "5"}) == 5


def test_orphans_are_this_directorys_recorded_jobs_of_another_run(tmp_path: Path) -> None:
    uuid_a = "4ef05fd3-06d2-492f-81b3-aad66165a42c"
    uuid_b = "0b1c2d3e-06d2-492f-81b3-aad66165a42c"
    rows = sc.parse_squeue("\n".join([
        f"11|RUNNING|{tmp_path}|{uuid_a}|rule_train_wildcards_mnist5k_0_0|None",
        f"12|PENDING|{tmp_path}|{uuid_a}|rule_train_wildcards_mnist5k_1_0|Resources",
        f"13|RUNNING|/elsewhere|{uuid_a}|rule_train_wildcards_mnist5k_0_1|None",
        f"14|RUNNING|{tmp_path}|interactive|x|None",
        f"15|COMPLETED|{tmp_path}|{uuid_a}|rule_train|None",
        f"16|RUNNING|{tmp_path}|{uuid_b}|rule_train|None",
    ]))
    orphans = sc.select_orphans(rows, ["11", "12", "13", "14", "15", "16", "99"], str(tmp_path),
                                own_name=uuid_b)
    assert [o.jobid for o in orphans] == ["11", "12"]
    assert orphans[0].what == "rule train, wildcards mnist5k_0_0"


# ------------------------------------------------------------------------------------------------
# the real Snakemake CLI with fake SLURM commands

FAKE = {
    "scontrol": """case "$*" in
        "show config"*) printf 'MaxArraySize = 1001\\nMinJobAge = 600 sec\\n' ;;
        "show partition"*) cat "$FAKE_DIR/partition.txt" ;;
        "show node"*) cat "$FAKE_DIR/node.txt" ;;
        *) exit 1 ;;
    esac""",
    "sbatch": 'echo "sbatch: error: the fake cluster takes no jobs" >&2; exit 1',
    "squeue": "exit 0", "sinfo": "exit 0", "sacct": "exit 1", "sacctmgr": "exit 1",
    "sshare": "exit 1", "scancel": "exit 0",
}


@pytest.fixture()
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/bash\necho "{name} $*" >> "$FAKE_DIR/calls.log"\n{body}\n')
        script.chmod(0o755)
    (tmp_path / "partition.txt").write_text(LOCAL_PARTITION)
    (tmp_path / "node.txt").write_text(LOCAL_NODE)
    (tmp_path / "calls.log").write_text("")
    return dict(os.environ, FAKE_DIR=str(tmp_path),
                PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                     f"{os.environ.get('PATH', '')}")


@pytest.mark.parametrize("extra", [
    [],  # profiles/slurm's 4 CPUs on a 2-CPU node
    ["--set-threads", "train=1", "attack=1", "evaluate=1", "attack_suite=1",
     "--set-resources", "train:mem_mb=999999"],
])
def test_impossible_request_stops_before_any_sbatch(tmp_path: Path, fake_slurm, extra) -> None:
    (tmp_path / "wf").mkdir()
    work = copy_workflow(tmp_path / "wf")
    (work / "profiles").mkdir()
    for name in ("slurm", "default"):
        (work / "profiles" / name).mkdir()
        (work / "profiles" / name / "config.yaml").write_text(
            (REPO / "profiles" / name / "config.yaml").read_text())
    (work / "configs" / "quick.yaml").write_text(yaml.safe_dump(dict(REDUCED, run_name="quick")))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--configfile",
         "configs/quick.yaml", *extra], cwd=work, env=fake_slurm, capture_output=True, text=True,
        timeout=120)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and elapsed < 60, out
    calls = (tmp_path / "calls.log").read_text()
    assert "sbatch" not in calls and "scontrol show partition" in calls
    assert "could never start on this cluster; nothing was submitted" in out
    if extra:
        assert "rule train (2 jobs) asks for 1 CPU, 999999 MB memory" in out, out
        assert "--set-resources train:mem_mb=21736" in out
    else:
        assert "--set-threads train=2 attack=2 evaluate=2 attack_suite=2" in out, out
    assert not (work / "data" / "prepared").exists()  # not even the local rule ran


def test_custom_data_and_models_prepare_and_import_locally_and_submit_the_rest(
        tmp_path: Path, fake_slurm) -> None:
    """The worked example's dataset and model (reduced), one dataset trained here and one scored
    from checkpoints trained elsewhere, under profiles/slurm with fake SLURM commands whose
    sbatch records each submission and refuses it: preparing the data and importing the
    checkpoints run on the submitting host (local rules), before any sbatch; training and the
    attack/evaluate group are submitted, with the profile's requests."""
    import importlib.util

    import torch
    from test_custom_workflow import NPZ
    from test_custom_workflow import REDUCED as EXAMPLE

    (tmp_path / "wf").mkdir()
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(REPO / "examples", work / "examples")
    shutil.copytree(REPO / "profiles", work / "profiles")
    loader = importlib.util.spec_from_file_location(
        "make_digits", REPO / "examples/custom/make_digits.py")
    make_digits = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_digits)
    arrays = make_digits.digits()
    small = {"x_train": arrays["x_train"][:400], "y_train": arrays["y_train"][:400],
             "x_test": arrays["x_test"][:100], "y_test": arrays["y_test"][:100],
             "class_names": arrays["class_names"]}
    make_digits.write_if_changed(small, work / NPZ)
    sys.path.insert(0, str(REPO / "examples/custom"))
    try:
        import digits_net
    finally:
        sys.path.remove(str(REPO / "examples/custom"))
    kwargs = EXAMPLE["train"]["arch_kwargs"]
    (work / "weights").mkdir()
    checkpoints = []
    for lam in EXAMPLE["lambdas"]:  # state dicts as another tool saves them
        path = f"weights/scored_lam{format_lambda(lam)}.pt"
        torch.save(digits_net.build(1, 10, 28, **kwargs).state_dict(), work / path)
        checkpoints.append({"lambda": lam, "seed": 0, "path": path})
    entry = EXAMPLE["data"]["custom"]["digits"]
    config = dict(EXAMPLE, run_name="hpc", datasets=["digits", "scored"],
                  epsilons={"digits": [0.3], "scored": [0.3]},
                  data={"custom": {"digits": entry, "scored": entry}},
                  models={"code_dirs": ["examples/custom"], "pretrained": {"scored": {
                      "architecture": "digits_net:build", "arch_kwargs": kwargs,
                      "checkpoints": checkpoints}}})
    (work / "hpc.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "fakebin" / "sbatch").write_text(
        '#!/bin/bash\necho "sbatch $*" >> "$FAKE_DIR/calls.log"\n'
        'echo "sbatch: error: the fake cluster runs no jobs" >&2; exit 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--retries", "0",
         "--set-threads", "train=1", "attack=1", "evaluate=1", "attack_suite=1",
         "--configfile", "hpc.yaml"],
        cwd=work, env=fake_slurm, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # nothing submitted can finish on the fake cluster
    submitted = [line for line in (tmp_path / "calls.log").read_text().splitlines()
                 if line.startswith("sbatch ")]

    def option(line: str, name: str) -> list[str]:
        """The values of a Snakemake option in the job command sbatch was given (--wrap)."""
        values = line.split(f" --{name} ", 1)[1].split(" --", 1)[0]
        return [value.strip("'") for value in values.split()]

    jobs = sorted(tuple(sorted(option(line, "target-jobs"))) for line in submitted)
    lams = [format_lambda(lam) for lam in EXAMPLE["lambdas"]]
    # one training job per model of the trained dataset; the scored dataset's models go
    # straight to their attack/evaluate group job; the rest waits for these
    assert jobs == sorted(
        [(f"train:dataset=digits,lam={lam},seed=0",) for lam in lams]
        + [(f"attack:dataset=scored,lam={lam},seed=0", f"evaluate:dataset=scored,lam={lam},seed=0")
           for lam in lams]), jobs
    for line in submitted:
        rules = sorted(option(line, "allowed-rules"))
        assert rules in (["train"], ["attack", "evaluate"]), line
        comment = option(line, "comment")[0]
        # the profile's requests (threads lowered to the fake node's by --set-threads)
        runtime = "180" if rules == ["train"] else "120"  # the group: attack + evaluate
        assert comment.startswith("rule_train_wildcards_digits_" if rules == ["train"]
                                  else "rule_uap_eval"), line
        assert f"-t {runtime} --mem 16000" in line and "--cpus-per-task=1" in line, line
        assert "--gpus=1" in line, line
    # the local rules ran here: both datasets prepared, the scored checkpoints imported
    assert out.count("localrule prepare_custom:") == 2, out
    assert out.count("localrule import_model:") == len(lams), out
    for name in ("digits", "scored"):
        assert (work / f"data/prepared/{name}.pt").is_file(), out
    imported = sorted(p.name for p in (work / "results/hpc/models/scored").iterdir())
    assert imported == sorted(f"lam{lam}_seed0.pt" for lam in lams), out
    assert not (work / "results/hpc/models/digits").exists()  # training was submitted


# ------------------------------------------------------------------------------------------------
# stale Snakemake locks

HOLDER = """
import sys, time
from jacreg.workflow import workdir_lock
claim = workdir_lock.claim(sys.argv[1])
print("claimed" if claim else "no-flock", flush=True)
time.sleep(600)
"""


def start_holder(workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_claims_of_live_and_dead_processes(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        alive = workdir_lock.others_alive(tmp_path)
        assert [o["pid"] for o in alive] == [holder.pid]
        mine = workdir_lock.claim(tmp_path)
        assert mine is not None and [o["pid"] for o in mine.others] == [holder.pid]
        lock_dir = tmp_path / workdir_lock.LOCK_DIR
        lock_dir.mkdir(parents=True)
        (lock_dir / "0.output.lock").write_text("results/x.pt\n")
        assert workdir_lock.remove_stale_locks(tmp_path, mine) == []
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    mine = workdir_lock.claim(tmp_path)  # the same claim, looked at again
    assert mine.others == []
    assert [p.name for p in workdir_lock.remove_stale_locks(tmp_path, mine)] == ["0.output.lock"]
    assert sorted(p.name for p in (tmp_path / workdir_lock.LIVE_DIR).iterdir()) == [
        mine.path.name]
    mine.release()
    workdir_lock._claims.remove(mine)


TOY = f"""
include: {str(REPO / "rules" / "cluster.smk")!r}

rule all:
    output: "done.txt"
    shell: "echo ok > {{output}}"
"""


def test_snakemake_after_a_killed_snakemake_and_beside_a_live_one(tmp_path: Path) -> None:
    """A stale lock (its Snakemake is gone) is removed and the same command runs; while another
    Snakemake process is alive in the directory its lock is kept and Snakemake refuses to run."""
    (tmp_path / "Snakefile").write_text(TOY)
    lock_dir = tmp_path / ".snakemake" / "locks"
    lock_dir.mkdir(parents=True)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    holder = start_holder(tmp_path)
    try:
        (lock_dir / "0.output.lock").write_text("done.txt\n")
        refused = run()
        assert refused.returncode != 0
        assert "LockException" in refused.stderr or "cannot be locked" in refused.stderr
        assert f"Another Snakemake process is running in this directory: pid {holder.pid}" in (
            refused.stderr)
        assert (lock_dir / "0.output.lock").exists() and not (tmp_path / "done.txt").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    ran = run()
    assert ran.returncode == 0, ran.stderr
    assert "Removed 1 stale Snakemake lock file(s)" in ran.stderr
    assert (tmp_path / "done.txt").read_text() == "ok\n"
