"""The workflow's hooks for runs that must survive a cluster and the death of Snakemake itself.

``rules/cluster.smk`` calls them:

- :func:`on_parse`, while the Snakefile is read, in the main Snakemake process only: claims the
  working directory (:mod:`jacreg.workflow.workdir_lock`) and, when no other Snakemake process
  is alive there, removes the ``.snakemake/locks`` that a killed one left, so that rerunning the
  same command works after SIGKILL, an OOM kill or a reboot.
- :func:`on_start`, from ``onstart:`` (after the DAG is built, before the first job), only with
  ``--executor slurm``: the pre-flight check of every cluster job's request against its partition
  (:mod:`jacreg.workflow.slurm_check`; ``JACREG_SLURM_CAP=1`` lowers requests instead of stopping),
  cancelling the jobs that a dead Snakemake left running for outputs this run makes, a thread that
  reports jobs pending for a reason that never clears (``JACREG_SLURM_STUCK_AFTER`` seconds,
  default 300), a second SIGTERM that cancels, and a last sweep of this run's jobs at exit.

These functions reach into Snakemake objects (the DAG's jobs and groups, the executor's active
jobs, the resource overrides that are passed on to the jobs); Snakemake is pinned in
``requirements.lock``.
"""

from __future__ import annotations

import atexit
import getpass
import os
import signal
import sys
import threading
import time
from pathlib import Path

from jacreg.workflow import slurm_check as sc
from jacreg.workflow import workdir_lock

SLURM_EXECUTORS = {"slurm"}


def _logger():
    from snakemake.logging import logger

    return logger


def _workflow_error(message: str) -> Exception:
    from snakemake.exceptions import WorkflowError

    return WorkflowError(message)


# ------------------------------------------------------------------------------------------------
# parse time


def on_parse(workflow) -> None:
    """Claim the working directory; remove stale Snakemake locks when no other Snakemake lives."""
    if not workflow.is_main_process:
        return
    log = _logger()
    workdir = Path.cwd()
    claim = workdir_lock.claim(workdir)
    if claim is None:
        return
    if claim.others:
        others = "; ".join(workdir_lock.describe_other(o) for o in claim.others)
        if workdir_lock.stale_locks(workdir):
            log.warning(
                f"Another Snakemake process is running in this directory: {others}. Its locks "
                "stay: if this run needs the same files, Snakemake refuses it (LockException). "
                "Wait for that process or stop it; do not --unlock while it runs.")
        return
    removed = workdir_lock.remove_stale_locks(workdir, claim)
    if removed:
        log.warning(
            f"Removed {len(removed)} stale Snakemake lock file(s) in .snakemake/locks: the "
            "Snakemake process that wrote them is gone (killed, out of memory, or the machine "
            "rebooted) and no other Snakemake is running in this directory.")


# ------------------------------------------------------------------------------------------------
# onstart


def _resources(obj) -> dict:
    return dict(obj.resources.items())


def _describe_job(job) -> str:
    try:
        if job.is_group():
            members = sorted(job.jobs, key=lambda j: j.rule.name)
            return f"group {job.groupid}: " + "; ".join(_describe_job(j) for j in members)
        wildcards = ", ".join(f"{k}={v}" for k, v in job.wildcards_dict.items())
        return f"rule {job.rule.name}" + (f", {wildcards}" if wildcards else "")
    except AttributeError:
        return str(job)


def _group_rules(group) -> list[str]:
    names: list[str] = []
    for layer in group.toposorted:
        for job in layer:
            if job.rule.name not in names:
                names.append(job.rule.name)
    return names


def cluster_requests(workflow):
    """``(requests, per-rule requests, cluster jobs)`` of the jobs this run will submit."""
    dag = workflow.dag
    requests, rule_requests, jobs, groups = [], {}, [], {}
    for job in dag.needrun_jobs():
        if job.is_local:
            continue
        jobs.append(job)
        own = sc.request_from_resources([job.rule.name], _resources(job))
        rule_requests[job.rule.name] = sc.merge_requests(
            [r for r in (rule_requests.get(job.rule.name), own) if r is not None])[0]
        group = dag.get_job_group(job)
        if group is None:
            requests.append(own)
        elif id(group) not in groups:
            groups[id(group)] = group
            requests.append(sc.request_from_resources(_group_rules(group), _resources(group),
                                                      group=group.groupid))
    _forget_resources(jobs, groups.values())
    order = {rule.name: i for i, rule in enumerate(workflow.rules)}
    merged = sorted(sc.merge_requests(requests),
                    key=lambda r: min(order.get(name, len(order)) for name in r.rules))
    return merged, rule_requests, jobs


def _forget_resources(jobs, groups) -> None:
    """Drop resources computed early, so that the scheduler computes them as it always does."""
    for obj in [*jobs, *groups]:
        for attr in ("_resources", "_scheduler_resources"):
            if hasattr(obj, attr):
                setattr(obj, attr, None)


def apply_caps(workflow, caps) -> None:
    """Lower rule resources in the main process and in the arguments passed to every job."""
    from snakemake.resources import Resource, Resources

    settings = workflow.resource_settings
    threads = settings._parsed_overwrite_threads
    resources = settings._parsed_overwrite_resources
    for rule_name, cap in caps.items():
        rule = workflow.get_rule(rule_name)
        for key, value in cap.items():
            rule.resources[key] = Resource(key, value)
            if key == "_cores":
                threads[rule_name] = Resource("_cores", value)
            else:
                resources.setdefault(rule_name, Resources())[key] = Resource(key, value)


def _summary(requests) -> str:
    return "; ".join(f"{r.label}: {r.describe()}"
                     + (f" in {','.join(r.partitions)}" if r.partitions else "")
                     for r in requests)


def preflight(workflow, log) -> None:
    if os.environ.get(sc.CHECK_ENV, "1").strip() == "0":
        log.info(f"SLURM pre-flight check skipped ({sc.CHECK_ENV}=0).")
        return
    requests, rule_requests, _ = cluster_requests(workflow)
    if not requests:
        return
    try:
        partitions = sc.query_partitions()
    except RuntimeError as error:
        log.warning(f"SLURM pre-flight check skipped: cannot read the partitions ({error}).")
        return
    result = sc.check_requests(requests, partitions, rule_requests)
    if not result.ok and os.environ.get(sc.CAP_ENV, "").strip() not in ("", "0"):
        caps = sc.cap_requests([f.request for f in result.findings], rule_requests, partitions)
        if caps:
            apply_caps(workflow, caps)
            log.warning(f"{sc.CAP_ENV}=1: requests lowered to the largest node of their "
                        "partition: " + "; ".join(sc.describe_caps(caps, rule_requests)))
            requests, rule_requests, _ = cluster_requests(workflow)
            result = sc.check_requests(requests, partitions, rule_requests)
    for warning in result.warnings:
        log.warning(f"SLURM pre-flight check: {warning}.")
    if not result.ok:
        settings = workflow.resource_settings
        raise _workflow_error(sc.format_findings(
            result, partitions, dict(settings.overwrite_threads),
            {rule: dict(res.items()) for rule, res in settings.overwrite_resources.items()}))
    log.info("SLURM pre-flight check: every cluster job fits its partition "
             f"({_summary(requests)}).")


def cancel_orphans(workflow, log, jobs, own_name: str | None) -> None:
    """Cancel queued jobs that a Snakemake process that is gone submitted for this run's outputs.

    Their ids are in Snakemake's incomplete-markers (``.snakemake/incomplete``) of the outputs this
    run will make. They are cancelled only while no other Snakemake process is alive here: then no
    one else can own them. The run submits those jobs again (training resumes from its last
    completed epoch)."""
    recorded = set()
    for job in jobs:
        try:
            recorded.update(workflow.persistence.external_jobids(job))
        except Exception:  # noqa: BLE001 - a missing marker is no orphan
            continue
    if not recorded:
        return
    workdir = Path.cwd()
    own = workdir_lock.own_claim(workdir)
    others = workdir_lock.others_alive(workdir, own=own.path if own else None)
    if others:
        log.warning("Not cancelling the jobs recorded for this run's outputs ("
                    + ", ".join(sorted(recorded)) + "): another Snakemake process is alive here: "
                    + "; ".join(workdir_lock.describe_other(o) for o in others))
        return
    try:
        queued = sc.query_jobs(user=getpass.getuser())
    except RuntimeError as error:
        log.warning(f"Cannot look for jobs left by an earlier Snakemake: {error}")
        return
    orphans = sc.select_orphans(queued, recorded, str(workdir), own_name)
    if not orphans:
        return
    log.warning(
        f"Cancelling {len(orphans)} SLURM job(s) that a Snakemake process that is gone left in "
        "the queue for outputs of this run: "
        + "; ".join(f"{j.jobid} ({j.what}, {j.state})" for j in orphans)
        + ". They are submitted again now; training resumes from its last completed epoch.")
    ids = [j.jobid for j in orphans]
    try:
        sc.run_command(["scancel", *ids])
    except RuntimeError as error:
        log.warning(f"scancel failed: {error}")
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            left = [j for j in sc.query_jobs(user=getpass.getuser())
                    if j.jobid in ids and j.state in sc.ACTIVE_STATES]
        except RuntimeError:
            break
        if not left:
            break
        time.sleep(1)


def start_watcher(executor, log, own_name: str | None, after: float) -> threading.Thread:
    """Every ``min(60, after/2)`` s: warn once per job pending ``after`` s or more for a reason
    that will not clear by itself."""
    tracker = sc.StuckTracker(after)
    interval = max(1.0, min(60.0, after / 2))
    user = getpass.getuser()
    workdir = os.path.realpath(os.getcwd())

    def describe() -> dict[str, str]:
        if executor is None:
            return {}
        with executor.lock:
            active = list(executor.active_jobs)
        return {info.external_jobid: _describe_job(info.job) for info in active
                if info.external_jobid}

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                jobs = sc.query_jobs(user=user, name=own_name)
            except RuntimeError as error:
                log.debug(f"stuck-job watcher: {error}")
                continue
            if own_name is None:
                jobs = [j for j in jobs if os.path.realpath(j.workdir or "/") == workdir]
            try:
                names = describe()
            except Exception:  # noqa: BLE001 - descriptions are a nicety
                names = {}
            for message in tracker.update(time.monotonic(), jobs, names):
                log.warning(message)

    thread = threading.Thread(target=loop, daemon=True, name="jacreg-slurm-stuck-jobs")
    thread.start()
    return thread


def escalate_sigterm(log, executor) -> None:
    """First SIGTERM: Snakemake's own (submit nothing more, wait for submitted jobs); a second
    one cancels them like Ctrl-C."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        if count[0] > 1:
            raise KeyboardInterrupt
        n = len(executor.active_jobs) if executor is not None else 0
        log.warning(
            f"SIGTERM: no new jobs are submitted; Snakemake waits for the {n} submitted "
            "job(s) to finish. Send SIGTERM again, or press Ctrl-C, to cancel them (scancel) "
            "and stop now.")
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def sweep_at_exit(own_name: str | None) -> None:
    """At exit, cancel jobs of this run that are still queued (none after a normal end)."""
    if not own_name:
        return

    def sweep() -> None:
        try:
            jobs = sc.query_jobs(user=getpass.getuser(), name=own_name)
        except RuntimeError:
            return
        left = [j.jobid for j in jobs if j.state in sc.ACTIVE_STATES - {"COMPLETING"}]
        if left:
            try:
                sc.run_command(["scancel", *left])
                print(f"jacreg: cancelled {len(left)} SLURM job(s) of this run still queued at "
                      f"exit: {', '.join(left)}", file=sys.stderr)
            except RuntimeError as error:
                print(f"jacreg: could not cancel this run's jobs {left}: {error}",
                      file=sys.stderr)

    atexit.register(sweep)


def on_start(workflow) -> None:
    if not workflow.is_main_process or workflow.dryrun:
        return
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name not in SLURM_EXECUTORS:
        return
    log = _logger()
    preflight(workflow, log)
    executor = getattr(getattr(workflow, "scheduler", None), "_executor", None)
    own_name = getattr(executor, "run_uuid", None)
    _, _, jobs = cluster_requests(workflow)
    cancel_orphans(workflow, log, jobs, own_name)
    start_watcher(executor, log, own_name, sc.stuck_after_seconds())
    escalate_sigterm(log, executor)
    if not workflow.remote_execution_settings.immediate_submit:
        sweep_at_exit(own_name)
